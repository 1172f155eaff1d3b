/*
 * tests/test-kvm-populate.c — a destination created on demand populates its
 * RAM behind the migration, not before it (pinning/populate.h, issue 13).
 *
 * The populator is held at its pause point ("populate", common/fault.h)
 * once its first chunk is out: nothing here depends on how fast population
 * or the transfer runs.  Held there, the populator's watermark is provably
 * below the pages the test looks at, and still:
 *   - populator: pages written ahead of the watermark keep their contents
 *     when population reaches them, and every page is resident at the end;
 *   - migration: a bare destination (the built-in KVM VMM, no --mem) takes a
 *     whole migration over TCP — pages far above the watermark arrive and
 *     the RAM digests match — before its population completes, and loading
 *     the state ends population (it would otherwise go on beside the guest:
 *     kvm/vmm.c, vmm_load_state).
 *
 * The migration case needs /dev/kvm (skips, saying why, without it).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvm/vmm.h"
#include "pinning/populate.h"
#include "rdmamig.h"

#define MiB (1ull << 20)
#define CHUNK (4 * MiB)
#define KEY "test-kvm-populate's pre-shared key"

static char hold[64];

/* Hold the destination's populator; returns once it is held. */
static void hold_population(void)
{
	char spec[128];

	snprintf(hold, sizeof(hold), "/tmp/rdmamig-populate-%d", (int)getpid());
	unlink(hold);
	snprintf(spec, sizeof(spec), "pause:dst:populate:%s", hold);
	setenv("RDMAMIG_FAULT", spec, 1);
}

static void wait_held(void)
{
	/* Bounded: the populator reaches its first claim within its start. */
	for (int i = 0; i < 6000 && access(hold, F_OK); i++)
		usleep(10000);
	cr_assert_eq(access(hold, F_OK), 0, "the populator never reached its pause point");
}

static void release_population(void)
{
	unlink(hold);
	unsetenv("RDMAMIG_FAULT");
}

/* Pages of [addr, addr + len) resident now. */
static size_t resident(void *addr, size_t len)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE), n = len / pg, count = 0;
	unsigned char *vec = malloc(n);

	cr_assert_not_null(vec);
	cr_assert_eq(mincore(addr, len, vec), 0, "mincore: %s", strerror(errno));
	for (size_t i = 0; i < n; i++)
		count += vec[i] & 1;
	free(vec);
	return count;
}

Test(populate, held_in_order_and_keeps_what_was_written)
{
	const size_t size = 64 * MiB, pg = (size_t)sysconf(_SC_PAGESIZE);
	char *ram = mmap(NULL, 2 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct rm_populate_span spans[2];
	struct rm_populator *p;

	cr_assert_neq(ram, MAP_FAILED);
	/* Residency is counted in 4 KiB pages: no huge page may round it up. */
	madvise(ram, 2 * size, MADV_NOHUGEPAGE);
	/* Two spans, as a VMM's memslots: the second is populated after the first. */
	spans[0] = (struct rm_populate_span){ .addr = ram + size, .size = size };
	spans[1] = (struct rm_populate_span){ .addr = ram, .size = size };
	/* What a receiver wrote ahead of the populator. */
	strcpy(ram + size + size - pg, "received before population");
	strcpy(ram + 17 * pg, "also received");

	hold_population();
	struct rm_populate_opts o = { .threads = 2, .chunk = CHUNK, .fault_side = "dst" };
	cr_assert_eq(rm_populate_start(&p, spans, 2, &o), 0);
	wait_held();

	uint64_t w = rm_populate_done(p);
	cr_assert_leq(w, CHUNK, "held after the first chunk, the watermark is %llu", (unsigned long long)w);
	cr_assert_eq(rm_populate_wait(p, 2 * size, 0), -ETIMEDOUT);
	/* Order: nothing of the second span is populated while the first is
	 * held (only the one page written above is there). */
	cr_assert_eq(resident(ram, size), 1, "the second span was populated before the first");
	cr_assert_eq(rm_populate_ns(p), 0);

	release_population();
	cr_assert_eq(rm_populate_wait(p, UINT64_MAX, 120000), 0);
	cr_assert_eq(rm_populate_done(p), 2 * size);
	cr_assert_gt(rm_populate_ns(p), 0);
	cr_assert_eq(resident(ram, 2 * size), 2 * size / pg, "not every page is resident");
	cr_assert_str_eq(ram + size + size - pg, "received before population");
	cr_assert_str_eq(ram + 17 * pg, "also received");
	cr_assert_eq(rm_populate_stop(p), 0);
	munmap(ram, 2 * size);
}

/* A populator of threads over 32 MiB at *ram, held after its first chunk. */
static struct rm_populator *held_populator(unsigned threads, char **ram)
{
	struct rm_populate_opts o = { .threads = threads, .chunk = CHUNK, .fault_side = "dst" };
	struct rm_populate_span span;
	struct rm_populator *p;

	*ram = mmap(NULL, 32 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(*ram, MAP_FAILED);
	span = (struct rm_populate_span){ .addr = *ram, .size = 32 * MiB };
	hold_population();
	cr_assert_eq(rm_populate_start(&p, &span, 1, &o), 0);
	wait_held();
	cr_assert_leq(rm_populate_done(p), CHUNK);
	return p;
}

Test(populate, stop_releases_a_held_populator)
{
	char *ram;
	struct rm_populator *p = held_populator(3, &ram);

	/* Returns with the file still there: stop cancels the pause (which
	 * then removes the file itself). */
	cr_assert_eq(rm_populate_stop(p), 0);
	release_population();
	munmap(ram, 32 * MiB);
}

Test(populate, cancel_ends_population_without_joining)
{
	char *ram;
	struct rm_populator *p = held_populator(2, &ram);

	rm_populate_cancel(p);
	/* The held thread lets go, no thread claims another chunk, and a
	 * waiter learns that the end is short of the total. */
	cr_assert_eq(rm_populate_wait(p, UINT64_MAX, 120000), -ECANCELED);
	cr_assert_leq(rm_populate_done(p), CHUNK, "population went on after the cancel");
	cr_assert_gt(rm_populate_ns(p), 0, "population ended but has no end time");
	cr_assert_eq(rm_populate_wait(p, CHUNK / 2, 0), rm_populate_done(p) >= CHUNK / 2 ? 0 : -ECANCELED);
	rm_populate_cancel(p);	/* twice is harmless */
	cr_assert_eq(rm_populate_stop(p), 0);
	release_population();
	munmap(ram, 32 * MiB);
}

Test(populate, refuses_bad_arguments)
{
	char buf[8192] __attribute__((aligned(4096)));
	struct rm_populate_span span = { .addr = buf, .size = sizeof(buf) };
	struct rm_populate_opts o = { .threads = RM_POPULATE_MAX_THREADS + 1 };
	struct rm_populator *p;

	cr_assert_eq(rm_populate_start(&p, &span, 0, NULL), -EINVAL);
	cr_assert_eq(rm_populate_start(&p, NULL, 1, NULL), -EINVAL);
	cr_assert_eq(rm_populate_start(&p, &span, 1, &o), -EINVAL);
	cr_assert_null(p);
	cr_assert_eq(rm_populate_stop(NULL), 0);
}

/* ------------------------------------------------------------------------ */

struct kside {
	struct rm_kvm_vmm *vmm;
	rdmamig_t *m;
	pthread_t thread;
	int rc;
	struct rdmamig_stats stats;
};

static void *run_kside(void *arg)
{
	struct kside *s = arg;

	s->rc = rdmamig_run(s->m);
	rdmamig_get_stats(s->m, &s->stats);
	return NULL;
}

static void quiet_log(void *o, enum rdmamig_log_level l, const char *msg)
{
	if (l <= RDMAMIG_LOG_WARN || getenv("RDMAMIG_TEST_VERBOSE"))
		fprintf(stderr, "  [%s] %s\n", (const char *)o, msg);
}

Test(populate_kvm, bare_destination_takes_data_before_population_ends_and_stops_it_at_load,
     .timeout = 240)
{
	const size_t ram = 128 * MiB;
	struct rm_kvm_vm_opts vo = {
		.nr_vcpus = 1, .ram_size = ram,
		.backing = { .kind = RM_BACKING_ANON, .numa_node = -1, .prefault = true },
	};
	struct rm_backing_opts backing = vo.backing;
	struct rm_kvm_workload idle = { .kind = RM_GUEST_IDLE };
	struct kside src = { 0 }, dst = { 0 };
	char port[16];
	static const char stamp[] = "written by the source, far above the watermark";

	if (access("/dev/kvm", R_OK | W_OK))
		cr_skip_test("no /dev/kvm here (%s): make test runs this case where KVM works", strerror(errno));
	rdmamig_set_log(quiet_log, "engine", RDMAMIG_LOG_DEBUG);
	hold_population();

	src.vmm = rm_kvm_vmm_new_source(&vo, &idle, RM_DIRTY_CLEAR);
	cr_assert_not_null(src.vmm, "source guest: %s", strerror(errno));
	/* Stamp the last page of every memslot: the bulk pass sends them, and
	 * they lie far above where the destination's population is held. */
	struct rm_kvm_vm *svm = rm_kvm_vmm_vm(src.vmm);
	unsigned nr = rm_kvm_vm_nr_regions(svm);

	for (unsigned r = 0; r < nr; r++) {
		const struct rm_kvm_region *reg = rm_kvm_vm_region(svm, r);

		memcpy((char *)reg->hva + reg->size - 4096, stamp, sizeof(stamp));
	}

	dst.vmm = rm_kvm_vmm_new_dest(&backing, NULL);
	cr_assert_not_null(dst.vmm);
	struct rdmamig_opts dopts = {
		.role = RDMAMIG_DESTINATION, .transport = RDMAMIG_TRANSPORT_TCP, .addr = "127.0.0.1",
		.port = "0", .timeout_ms = 60000, .psk = KEY, .psk_len = sizeof(KEY) - 1, .verify = 1,
	};
	dst.m = rdmamig_new(&dopts, &rm_kvm_vmm_ops, dst.vmm);
	cr_assert_not_null(dst.m);
	cr_assert_eq(pthread_create(&dst.thread, NULL, run_kside, &dst), 0);
	int p = -1;
	for (int i = 0; i < 12000 && (p = rdmamig_listen_port(dst.m)) <= 0; i++)
		usleep(10000);
	cr_assert_gt(p, 0, "destination never listened");
	snprintf(port, sizeof(port), "%d", p);
	struct rdmamig_opts sopts = {
		.role = RDMAMIG_SOURCE, .transport = RDMAMIG_TRANSPORT_TCP, .addr = "127.0.0.1", .port = port,
		.timeout_ms = 60000, .channels = 2, .psk = KEY, .psk_len = sizeof(KEY) - 1, .verify = 1,
	};
	src.m = rdmamig_new(&sopts, &rm_kvm_vmm_ops, src.vmm);
	cr_assert_not_null(src.m);
	cr_assert_eq(pthread_create(&src.thread, NULL, run_kside, &src), 0);
	pthread_join(src.thread, NULL);
	pthread_join(dst.thread, NULL);

	/* The whole migration is over with the population held throughout;
	 * loading the state ended it there (the held thread let go, none
	 * claimed more). */
	cr_assert_eq(src.rc, 0, "source: %s", rdmamig_strerror(src.rc));
	cr_assert_eq(dst.rc, 0, "destination: %s", rdmamig_strerror(dst.rc));
	cr_assert_eq(src.stats.verified, 1, "the RAM digests differ");
	struct rm_populator *pop = rm_kvm_vmm_populator(dst.vmm);

	cr_assert_not_null(pop, "the bare destination populated before the migration");
	cr_assert_eq(rm_populate_total(pop), ram);
	cr_assert_eq(rm_populate_wait(pop, UINT64_MAX, 30000), -ECANCELED,
		     "population did not end at the state load");
	cr_assert_leq(rm_populate_done(pop), CHUNK, "population went past its hold");
	cr_assert_gt(rm_populate_ns(pop), 0);
	struct rm_kvm_vm *dvm = rm_kvm_vmm_vm(dst.vmm);

	cr_assert_eq(rm_kvm_vm_nr_regions(dvm), nr);
	/* The watermark counts the slots' bytes in order. */
	uint64_t end = 0;

	for (unsigned r = 0; r < nr; r++) {
		const struct rm_kvm_region *reg = rm_kvm_vm_region(dvm, r);

		end += reg->size;
		cr_assert_gt(end - 4096, rm_populate_done(pop));
		cr_assert_str_eq((char *)reg->hva + reg->size - 4096, stamp, "slot %u's last page", r);
	}

	release_population();
	rdmamig_free(src.m);
	rdmamig_free(dst.m);
	rm_kvm_vmm_free(src.vmm);
	rm_kvm_vmm_free(dst.vmm);
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_ERR);
}
