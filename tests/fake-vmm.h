/*
 * tests/fake-vmm.h — a VMM without KVM, for engine tests on any host: RAM in
 * anonymous memory, a "guest" thread that stamps pages at a chosen rate and
 * records them in a software dirty log, and a small device state (the
 * guest's counter).  It implements struct rdmamig_vmm_ops exactly as a real
 * VMM must, so the engine cannot tell.
 */
#ifndef RDMAMIG_TESTS_FAKE_VMM_H
#define RDMAMIG_TESTS_FAKE_VMM_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "rdmamig.h"

#define FAKE_PAGE 4096u
#define FAKE_MAX_REGIONS 4

struct fake_vmm {
	unsigned nregions;
	uint64_t region_size;
	uint8_t *ram[FAKE_MAX_REGIONS];
	uint32_t nr_vcpus;
	const char *cpu_model;

	/* The guest: writes `rate` pages/s (0: idle) into the first
	 * `hot_pages` pages of every region (0: all pages). */
	uint64_t rate;
	uint64_t hot_pages;
	pthread_t thread;
	bool thread_started;
	atomic_bool stop, paused, running;
	atomic_uint_fast64_t counter;

	pthread_mutex_t lock;
	bool logging;
	uint64_t *dirty[FAKE_MAX_REGIONS];	/* marked since the last sync */
	uint64_t *reported[FAKE_MAX_REGIONS];	/* the last sync's, the engine reads */

	/* Pages the "guest" is guaranteed to have written by each dirty_sync
	 * while it runs (written and marked there): makes a guest that cannot
	 * converge independent of how the scheduler treats the guest thread. */
	uint64_t sync_writes;

	unsigned throttle, max_throttle;
	int pause_calls, resume_calls, dirty_stop_calls;
	bool fail_load;			/* destination: refuse the state */
	uint64_t loaded_counter;

	/* What the engine asked of the VM's shape (destination: nothing may
	 * be asked for a source that has not authenticated). */
	atomic_int describe_calls, prepare_calls;
	int prepare_err;		/* prepare() refuses with it, logging why */
	bool bad_describe;		/* describe() reports bad_page_size */
	uint32_t bad_page_size;
};

static inline uint64_t fake_pages(const struct fake_vmm *v)
{
	return v->region_size / FAKE_PAGE;
}

static inline void fake_mark(struct fake_vmm *v, unsigned r, uint64_t pg)
{
	pthread_mutex_lock(&v->lock);
	if (v->logging)
		v->dirty[r][pg / 64] |= 1ull << (pg % 64);
	pthread_mutex_unlock(&v->lock);
}

static void *fake_guest(void *arg)
{
	struct fake_vmm *v = arg;
	uint64_t x = 0x2545f4914f6cdd1dull, n = 0;
	struct timespec t0;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (!atomic_load(&v->stop)) {
		if (atomic_load(&v->paused) || !v->rate) {
			atomic_store(&v->running, false);
			/* 1 ms: a resume is seen within it, and a paused guest
			 * does not cost the nested bed a timer wakeup every
			 * 200 us (the fault matrix keeps a dozen of them). */
			struct timespec ts = { 0, 1000000 };
			nanosleep(&ts, NULL);
			clock_gettime(CLOCK_MONOTONIC, &t0);
			n = 0;
			continue;
		}
		atomic_store(&v->running, true);
		uint64_t span = v->hot_pages ? v->hot_pages : fake_pages(v);
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		unsigned r = (unsigned)(x % v->nregions);
		uint64_t pg = (x >> 8) % span;
		uint64_t c = atomic_fetch_add(&v->counter, 1) + 1;

		/* Write first, then mark: a sync between the two misses the
		 * mark now and reports it next time, so no write is lost.  (The
		 * other order loses a write that lands after a sync has taken
		 * the mark and the page has been sent.) */
		memcpy(v->ram[r] + pg * FAKE_PAGE + (c % 500) * 8, &c, 8);
		fake_mark(v, r, pg);
		n++;
		/* Pace to `rate`, slowed by the throttle, in bursts: asleep
		 * once it is 5 ms ahead, so ~200 wakeups a second whatever
		 * the rate (one a write cost the nested bed an emulated timer
		 * interrupt each: 2000 a second for each of a dozen guests). */
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		double el = (double)(now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9;
		double due = (double)n / (double)v->rate * 100.0 / (100.0 - v->throttle);
		if (due > el + 0.005) {
			struct timespec ts = { 0, (long)((due - el) * 1e9) };
			if (ts.tv_nsec < 1000000000l)
				nanosleep(&ts, NULL);
		}
	}
	atomic_store(&v->running, false);
	return NULL;
}

static inline int fake_vmm_init(struct fake_vmm *v, unsigned nregions, uint64_t region_size,
				uint64_t rate)
{
	memset(v, 0, sizeof(*v));
	v->nregions = nregions;
	v->region_size = region_size;
	v->nr_vcpus = 2;
	v->cpu_model = "fake-cpu";
	v->rate = rate;
	pthread_mutex_init(&v->lock, NULL);
	for (unsigned r = 0; r < nregions; r++) {
		v->ram[r] = mmap(NULL, region_size, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (v->ram[r] == MAP_FAILED)
			return -errno;
		v->dirty[r] = calloc(fake_pages(v) / 64 + 1, 8);
		v->reported[r] = calloc(fake_pages(v) / 64 + 1, 8);
		if (!v->dirty[r] || !v->reported[r])
			return -ENOMEM;
	}
	return 0;
}

/* Fill RAM with something (half the pages non-zero) and start the guest. */
static inline int fake_vmm_start(struct fake_vmm *v)
{
	for (unsigned r = 0; r < v->nregions; r++)
		for (uint64_t pg = 0; pg < fake_pages(v); pg += 2)
			memset(v->ram[r] + pg * FAKE_PAGE, (int)(1 + (pg + r) % 250), FAKE_PAGE);
	v->thread_started = pthread_create(&v->thread, NULL, fake_guest, v) == 0;
	return v->thread_started ? 0 : -EAGAIN;
}

static inline void fake_vmm_destroy(struct fake_vmm *v)
{
	atomic_store(&v->stop, true);
	if (v->thread_started)
		pthread_join(v->thread, NULL);
	for (unsigned r = 0; r < v->nregions; r++) {
		if (v->ram[r] && v->ram[r] != MAP_FAILED)
			munmap(v->ram[r], v->region_size);
		free(v->dirty[r]);
		free(v->reported[r]);
	}
	pthread_mutex_destroy(&v->lock);
}

static int fake_describe(void *o, struct rdmamig_vm_desc *d)
{
	struct fake_vmm *v = o;

	atomic_fetch_add(&v->describe_calls, 1);
	memset(d, 0, sizeof(*d));
	d->page_size = v->bad_describe ? v->bad_page_size : FAKE_PAGE;
	d->nr_vcpus = v->nr_vcpus;
	snprintf(d->cpu_model, sizeof(d->cpu_model), "%s", v->cpu_model);
	d->payload_version = 1;
	d->nr_regions = v->nregions;
	for (unsigned r = 0; r < v->nregions; r++)
		d->regions[r] = (struct rdmamig_ram_region){
			.id = 10 + r, .host_addr = v->ram[r], .size = v->region_size,
			.gpa = (uint64_t)r * v->region_size,
		};
	return 0;
}

/* The VM is made up front (fake_vmm_init): only count, or refuse. */
static int fake_prepare(void *o, const struct rdmamig_vm_desc *src)
{
	struct fake_vmm *v = o;

	atomic_fetch_add(&v->prepare_calls, 1);
	if (v->prepare_err)
		rdmamig_log(RDMAMIG_LOG_ERR, "fake: no room for %u vCPUs here", src->nr_vcpus);
	return v->prepare_err;
}

static int fake_dirty_start(void *o)
{
	struct fake_vmm *v = o;

	pthread_mutex_lock(&v->lock);
	v->logging = true;
	pthread_mutex_unlock(&v->lock);
	return 0;
}

/* As a VMM must: the marks since the last sync become the report by a swap,
 * counted exactly, handed to the engine in place. */
static long fake_dirty_sync(void *o, const uint64_t **bitmaps)
{
	struct fake_vmm *v = o;
	long n = 0;

	if (!atomic_load(&v->paused)) {
		for (uint64_t i = 0; i < v->sync_writes; i++) {
			unsigned r = (unsigned)(i % v->nregions);
			uint64_t pg = (i / v->nregions) % fake_pages(v);
			uint64_t c = atomic_fetch_add(&v->counter, 1) + 1;

			memcpy(v->ram[r] + pg * FAKE_PAGE + (c % 500) * 8, &c, 8);
			fake_mark(v, r, pg);
		}
	}
	pthread_mutex_lock(&v->lock);
	for (unsigned r = 0; r < v->nregions; r++) {
		uint64_t *report = v->dirty[r];

		v->dirty[r] = v->reported[r];
		v->reported[r] = report;
		memset(v->dirty[r], 0, (fake_pages(v) / 64 + 1) * 8);
	}
	pthread_mutex_unlock(&v->lock);
	for (unsigned r = 0; r < v->nregions; r++) {
		for (uint64_t w = 0; w < fake_pages(v) / 64 + 1; w++)
			n += __builtin_popcountll(v->reported[r][w]);
		bitmaps[r] = v->reported[r];
	}
	return n;
}

static void fake_dirty_stop(void *o)
{
	struct fake_vmm *v = o;

	pthread_mutex_lock(&v->lock);
	v->logging = false;
	v->dirty_stop_calls++;
	pthread_mutex_unlock(&v->lock);
}

static int fake_pause(void *o)
{
	struct fake_vmm *v = o;

	v->pause_calls++;
	atomic_store(&v->paused, true);
	while (atomic_load(&v->running))
		sched_yield();
	return 0;
}

static int fake_resume(void *o)
{
	struct fake_vmm *v = o;

	v->resume_calls++;
	atomic_store(&v->paused, false);
	return 0;
}

static int fake_save_state(void *o, void **buf, size_t *len)
{
	struct fake_vmm *v = o;
	uint64_t *s = malloc(2 * sizeof(uint64_t));

	if (!s)
		return -ENOMEM;
	s[0] = 0xfa4e57a7e0000001ull;
	s[1] = atomic_load(&v->counter);
	*buf = s;
	*len = 2 * sizeof(uint64_t);
	return 0;
}

static int fake_load_state(void *o, const void *buf, size_t len)
{
	struct fake_vmm *v = o;
	uint64_t s[2];

	if (v->fail_load || len != sizeof(s))
		return -EINVAL;
	memcpy(s, buf, sizeof(s));
	if (s[0] != 0xfa4e57a7e0000001ull)
		return -EINVAL;
	v->loaded_counter = s[1];
	atomic_store(&v->counter, s[1]);
	return 0;
}

static int fake_throttle(void *o, unsigned percent)
{
	struct fake_vmm *v = o;

	v->throttle = percent;
	if (percent > v->max_throttle)
		v->max_throttle = percent;
	return 0;
}

static const struct rdmamig_vmm_ops fake_ops = {
	.version = RDMAMIG_VMM_OPS_VERSION,
	.describe = fake_describe,
	.prepare = fake_prepare,
	.dirty_start = fake_dirty_start,
	.dirty_sync = fake_dirty_sync,
	.dirty_stop = fake_dirty_stop,
	.pause = fake_pause,
	.resume = fake_resume,
	.save_state = fake_save_state,
	.load_state = fake_load_state,
	.throttle = fake_throttle,
};

#endif
