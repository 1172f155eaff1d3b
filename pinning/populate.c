/*
 * pinning/populate.c — background population of guest RAM in address order.
 * See populate.h.
 *
 * Threads claim chunks in order from one cursor under a mutex and fault
 * each in with MADV_POPULATE_WRITE, which allocates what is missing and
 * leaves present pages and their contents alone: a receiver may be writing
 * the same pages at the same time.  (A loop that touched each page would
 * have to write, and could overwrite what was just received; without
 * MADV_POPULATE_WRITE, Linux < 5.14, start fails and the caller populates
 * before anything is received.)  The watermark is the start of the lowest
 * chunk still being populated, or the cursor when none is.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/fault.h"
#include "common/log.h"
#include "pinning/populate.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define DEFAULT_CHUNK (4ul << 20)
#define DEFAULT_MAX_THREADS 4u
#define IDLE UINT64_MAX
/* Population is background work: on a busy host it must not take the CPU
 * from the threads that receive (which fault in what it has not reached). */
#define WORKER_NICE 10

struct rm_populator {
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* the watermark moved, or a pause ended */
	unsigned nspans, nthreads;
	size_t chunk;
	const char *fault_side;
	struct rm_populate_span span[RM_POPULATE_MAX_SPANS];

	/* Under lock: the next chunk to claim, and what each thread holds. */
	unsigned next_span;
	size_t next_off;
	uint64_t next_pos;		/* next_span/next_off as one offset */
	uint64_t busy[RM_POPULATE_MAX_THREADS];	/* start of its chunk, IDLE */
	uint64_t claimed;		/* chunks handed out */
	bool pausing;			/* a thread is held at the pause point */
	unsigned running;		/* worker threads not yet out */
	int err;

	uint64_t total, t0;
	_Atomic uint64_t done;		/* the watermark */
	_Atomic uint64_t ns;
	atomic_int stop;
	pthread_t th[RM_POPULATE_MAX_THREADS];
	bool started[RM_POPULATE_MAX_THREADS];
};

struct worker {
	struct rm_populator *p;
	unsigned idx;
};

/* Recompute the watermark; called under lock. */
static void advance(struct rm_populator *p)
{
	uint64_t w = p->next_pos;

	for (unsigned i = 0; i < p->nthreads; i++)
		if (p->busy[i] < w)
			w = p->busy[i];
	atomic_store(&p->done, w);
	if (w == p->total && !atomic_load(&p->ns))
		atomic_store(&p->ns, rm_now_ns() - p->t0 + 1);
	pthread_cond_broadcast(&p->cond);
}

/* Claim the next chunk for thread idx: false when there is none left, the
 * populator stops, or an error ended it.  Called under lock. */
static bool claim(struct rm_populator *p, unsigned idx, void **addr, size_t *len)
{
	while (p->pausing && !atomic_load(&p->stop))
		pthread_cond_wait(&p->cond, &p->lock);
	if (atomic_load(&p->stop) || p->err || p->next_span >= p->nspans)
		return false;
	if (p->claimed == 1 && p->fault_side) {
		/* The test's hold: the first chunk is out, the rest waits.
		 * Unlocked, so that readers of the watermark go on. */
		p->pausing = true;
		pthread_mutex_unlock(&p->lock);
		rm_fault_point(p->fault_side, "populate", &p->stop);
		pthread_mutex_lock(&p->lock);
		p->pausing = false;
		pthread_cond_broadcast(&p->cond);
		if (atomic_load(&p->stop) || p->err)
			return false;
	}
	struct rm_populate_span *s = &p->span[p->next_span];

	*addr = (char *)s->addr + p->next_off;
	*len = s->size - p->next_off < p->chunk ? s->size - p->next_off : p->chunk;
	p->busy[idx] = p->next_pos;
	p->next_pos += *len;
	p->next_off += *len;
	if (p->next_off == s->size) {
		p->next_span++;
		p->next_off = 0;
	}
	p->claimed++;
	return true;
}

static void *worker(void *arg)
{
	struct worker *w = arg;
	struct rm_populator *p = w->p;
	unsigned idx = w->idx;
	void *addr;
	size_t len;

	free(w);
	/* Per thread on Linux; failing leaves it at the caller's priority. */
	setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), WORKER_NICE);
	pthread_mutex_lock(&p->lock);
	while (claim(p, idx, &addr, &len)) {
		pthread_mutex_unlock(&p->lock);
		int err = madvise(addr, len, MADV_POPULATE_WRITE) ? -errno : 0;

		pthread_mutex_lock(&p->lock);
		if (err) {
			if (!p->err) {
				p->err = err;
				rm_err("populate: %zu bytes at %p: %s", len, addr, strerror(-err));
			}
			/* busy[idx] stays: the watermark never passes this chunk. */
			pthread_cond_broadcast(&p->cond);
			break;
		}
		p->busy[idx] = IDLE;
		advance(p);
	}
	/* The last one out ends population, whole or cancelled. */
	if (!--p->running && !atomic_load(&p->ns))
		atomic_store(&p->ns, rm_now_ns() - p->t0 + 1);
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

static unsigned default_threads(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		return 1;
	return n > (long)DEFAULT_MAX_THREADS ? DEFAULT_MAX_THREADS : (unsigned)n;
}

int rm_populate_start(struct rm_populator **out, const struct rm_populate_span *spans, unsigned n,
		      const struct rm_populate_opts *opts)
{
	struct rm_populate_opts o = opts ? *opts : (struct rm_populate_opts){ 0 };
	struct rm_populator *p;
	int err;

	*out = NULL;
	if (!spans || !n || n > RM_POPULATE_MAX_SPANS || o.threads > RM_POPULATE_MAX_THREADS)
		return -EINVAL;
	if (!o.threads)
		o.threads = default_threads();
	if (!o.chunk)
		o.chunk = DEFAULT_CHUNK;
	/* Without MADV_POPULATE_WRITE the only way to populate is to write,
	 * which a receiver's data would not survive: say so before starting.
	 * A zero length asks the kernel whether it knows the advice and
	 * populates nothing (a page here could be a whole 1 GiB one). */
	if (madvise(spans[0].addr, 0, MADV_POPULATE_WRITE))
		return -errno;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);	/* waits are bounded on it */
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, &ca);
	pthread_condattr_destroy(&ca);
	p->nspans = n;
	p->nthreads = o.threads;
	p->chunk = o.chunk;
	p->fault_side = o.fault_side;
	memcpy(p->span, spans, n * sizeof(spans[0]));
	for (unsigned i = 0; i < n; i++)
		p->total += spans[i].size;
	for (unsigned i = 0; i < RM_POPULATE_MAX_THREADS; i++)
		p->busy[i] = IDLE;
	p->t0 = rm_now_ns();
	for (unsigned i = 0; i < p->nthreads; i++) {
		struct worker *w = malloc(sizeof(*w));

		if (!w) {
			err = -ENOMEM;
			goto stop;
		}
		*w = (struct worker){ .p = p, .idx = i };
		pthread_mutex_lock(&p->lock);
		p->running++;
		pthread_mutex_unlock(&p->lock);
		err = -pthread_create(&p->th[i], NULL, worker, w);
		if (err) {
			free(w);
			pthread_mutex_lock(&p->lock);
			p->running--;
			pthread_mutex_unlock(&p->lock);
			goto stop;
		}
		p->started[i] = true;
	}
	*out = p;
	return 0;
stop:
	rm_populate_stop(p);
	return err;
}

uint64_t rm_populate_done(const struct rm_populator *p)
{
	return atomic_load(&((struct rm_populator *)p)->done);
}

uint64_t rm_populate_total(const struct rm_populator *p)
{
	return p->total;
}

uint64_t rm_populate_ns(const struct rm_populator *p)
{
	uint64_t ns = atomic_load(&((struct rm_populator *)p)->ns);

	return ns ? ns - 1 : 0;
}

int rm_populate_wait(struct rm_populator *p, uint64_t bytes, int timeout_ms)
{
	struct timespec until;
	int err = 0;

	if (bytes > p->total)
		bytes = p->total;
	clock_gettime(CLOCK_MONOTONIC, &until);
	if (timeout_ms >= 0) {
		until.tv_sec += timeout_ms / 1000;
		until.tv_nsec += (long)(timeout_ms % 1000) * 1000000l;
		if (until.tv_nsec >= 1000000000l) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000l;
		}
	}
	pthread_mutex_lock(&p->lock);
	while (atomic_load(&p->done) < bytes && !p->err && !err && p->running) {
		if (timeout_ms < 0)
			pthread_cond_wait(&p->cond, &p->lock);
		else
			err = -pthread_cond_timedwait(&p->cond, &p->lock, &until);
	}
	if (atomic_load(&p->done) >= bytes)
		err = 0;
	else if (p->err)
		err = p->err;
	else if (!p->running)
		err = -ECANCELED;
	pthread_mutex_unlock(&p->lock);
	return err;
}

void rm_populate_cancel(struct rm_populator *p)
{
	if (!p)
		return;
	atomic_store(&p->stop, 1);
	pthread_mutex_lock(&p->lock);
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

int rm_populate_stop(struct rm_populator *p)
{
	int err;

	if (!p)
		return 0;
	rm_populate_cancel(p);
	for (unsigned i = 0; i < p->nthreads; i++)
		if (p->started[i])
			pthread_join(p->th[i], NULL);
	err = p->err;
	pthread_cond_destroy(&p->cond);
	pthread_mutex_destroy(&p->lock);
	free(p);
	return err;
}
