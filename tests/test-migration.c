/*
 * tests/test-migration.c — the engine end to end, both roles in one process,
 * with the fake VMM (tests/fake-vmm.h): a busy guest migrates and the
 * destination holds the same RAM; refusals, cancels, a vanishing
 * destination and a failed state load all leave the source guest running;
 * a guest that can't converge reaches the iteration cap or the deadline.
 * The handover (handover suites): a lost RESUMED, a link cut after LOADED or
 * GO, an early RESUMED, and a destination that vanishes after GO never leave
 * two running copies, nor none without a way back.
 * The iterate pass alone (ram suite): exactly the reported pages reach the
 * transport, in maximal ranges, each after dirty_clear() named it.
 *
 * TCP cases run everywhere; RDMA cases run on the soft-RoCE bed (they skip,
 * saying so, where RDMAMIG_RXE_ADDR is not set — make test runs them there).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/fault.h"
#include "common/log.h"
#include "fake-vmm.h"
#include "migration/engine.h"
#include "migration/policy.h"
#include "migration/protocol.h"
#include "transport/priv.h"

#define MiB (1ull << 20)
#define KEY "test-migration's pre-shared key"
/* How long a side waits on a silent peer: keep-alives flow every 250 ms,
 * but a loaded nested bed can stall a process for seconds, so only a dead
 * peer reaches this. */
#define SILENCE_MS 60000

struct side {
	struct fake_vmm vmm;
	struct rdmamig_opts opts;
	rdmamig_t *m;
	pthread_t thread;
	int rc;
	atomic_bool done;
	struct rdmamig_stats stats;
};

static void log_to_stderr(void *o, enum rdmamig_log_level l, const char *msg)
{
	if (l <= RDMAMIG_LOG_WARN || getenv("RDMAMIG_TEST_VERBOSE"))
		fprintf(stderr, "  [%s] %s\n", (const char *)o, msg);
}

static void *run_side(void *arg)
{
	struct side *s = arg;

	s->rc = rdmamig_run(s->m);
	rdmamig_get_stats(s->m, &s->stats);
	atomic_store(&s->done, true);
	return NULL;
}

static enum rdmamig_transport want_transport(enum rdmamig_transport t)
{
	if (t == RDMAMIG_TRANSPORT_RDMA && !getenv("RDMAMIG_RXE_ADDR"))
		cr_skip_test("RDMA cases run on the soft-RoCE test bed (make test runs them there)");
	return t;
}

static const char *bed_addr(enum rdmamig_transport t)
{
	return t == RDMAMIG_TRANSPORT_RDMA ? getenv("RDMAMIG_RXE_ADDR") : "127.0.0.1";
}

/* The next pair_setup()'s destination cap on guest RAM (0: the default). */
static uint64_t next_max_mem;

/* Destination listening on an ephemeral port; source options ready; both
 * sides with timeout_ms. */
static void pair_setup_timeout(struct side *src, struct side *dst, enum rdmamig_transport tr,
			       uint64_t region_size, uint64_t rate, int timeout_ms)
{
	static char port[16];

	rdmamig_set_log(log_to_stderr, "engine", RDMAMIG_LOG_DEBUG);
	cr_assert_eq(fake_vmm_init(&src->vmm, 2, region_size, rate), 0);
	cr_assert_eq(fake_vmm_init(&dst->vmm, 2, region_size, 0), 0);
	cr_assert_eq(fake_vmm_start(&src->vmm), 0);

	dst->opts = (struct rdmamig_opts){
		.role = RDMAMIG_DESTINATION, .transport = tr, .addr = bed_addr(tr), .port = "0",
		.timeout_ms = timeout_ms, .psk = KEY, .psk_len = sizeof(KEY) - 1, .max_mem = next_max_mem,
	};
	next_max_mem = 0;
	dst->m = rdmamig_new(&dst->opts, &fake_ops, &dst->vmm);
	cr_assert_not_null(dst->m);
	cr_assert_eq(pthread_create(&dst->thread, NULL, run_side, dst), 0);
	int p = -1;
	for (int i = 0; i < 12000 && (p = rdmamig_listen_port(dst->m)) <= 0; i++)
		usleep(10000);
	cr_assert_gt(p, 0, "destination never listened");
	snprintf(port, sizeof(port), "%d", p);
	src->opts = (struct rdmamig_opts){
		.role = RDMAMIG_SOURCE, .transport = tr, .addr = bed_addr(tr), .port = port,
		.timeout_ms = timeout_ms, .channels = 2, .psk = KEY, .psk_len = sizeof(KEY) - 1,
	};
}

static void pair_setup(struct side *src, struct side *dst, enum rdmamig_transport tr,
		       uint64_t region_size, uint64_t rate)
{
	pair_setup_timeout(src, dst, tr, region_size, rate, SILENCE_MS);
}

static void start_source(struct side *src)
{
	src->m = rdmamig_new(&src->opts, &fake_ops, &src->vmm);
	cr_assert_not_null(src->m);
	cr_assert_eq(pthread_create(&src->thread, NULL, run_side, src), 0);
}

static void pair_join(struct side *src, struct side *dst)
{
	pthread_join(src->thread, NULL);
	pthread_join(dst->thread, NULL);
}

static void pair_free(struct side *src, struct side *dst)
{
	rdmamig_free(src->m);
	rdmamig_free(dst->m);
	fake_vmm_destroy(&src->vmm);
	fake_vmm_destroy(&dst->vmm);
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_ERR);
}

/* The source guest still runs: its counter moves. */
static void assert_source_runs(struct side *src)
{
	uint64_t c0 = atomic_load(&src->vmm.counter);

	cr_assert(!atomic_load(&src->vmm.paused), "source guest left paused");
	for (int i = 0; i < 6000 && atomic_load(&src->vmm.counter) == c0; i++)
		usleep(5000);
	cr_assert_gt(atomic_load(&src->vmm.counter), c0, "source guest does not run");
	cr_assert_eq(src->vmm.dirty_stop_calls, 1, "dirty logging left on");
}

/* Cancelled before dirty logging started: the guest ran throughout. */
static void assert_source_runs_no_logging(struct side *src)
{
	uint64_t c0 = atomic_load(&src->vmm.counter);

	cr_assert(!atomic_load(&src->vmm.paused), "source guest left paused");
	for (int i = 0; i < 200 && atomic_load(&src->vmm.counter) == c0; i++)
		usleep(5000);
	cr_assert_gt(atomic_load(&src->vmm.counter), c0, "source guest does not run");
}

static void busy_guest_migrates(enum rdmamig_transport tr)
{
	struct side src = { 0 }, dst = { 0 };

	pair_setup(&src, &dst, want_transport(tr), 8 * MiB, 3000);
	src.opts.verify = 1;
	src.opts.downtime_ms = 300;
	start_source(&src);
	pair_join(&src, &dst);

	cr_assert_eq(src.rc, 0, "source: %s", rdmamig_strerror(src.rc));
	cr_assert_eq(dst.rc, 0, "destination: %s", rdmamig_strerror(dst.rc));
	cr_assert_eq(src.stats.verified, 1);
	cr_assert_eq(dst.stats.verified, 1);
	for (unsigned r = 0; r < 2; r++)
		cr_assert_eq(memcmp(src.vmm.ram[r], dst.vmm.ram[r], src.vmm.region_size), 0,
			     "region %u differs", r);
	cr_assert_eq(dst.vmm.loaded_counter, atomic_load(&src.vmm.counter));
	cr_assert_eq(src.vmm.pause_calls, 1);
	cr_assert_eq(src.vmm.resume_calls, 0, "source resumed after a successful migration");
	cr_assert_eq(dst.vmm.resume_calls, 1);
	cr_assert_gt(src.stats.zero_pages_skipped, 0);
	cr_assert_geq(src.stats.iterations, 2);
	cr_assert_eq(src.stats.switchover, RDMAMIG_SWITCH_CONVERGED);
	cr_assert_gt(src.stats.downtime_ns, 0);
	/* The split accounts for the downtime: its parts are timed back to
	 * back on the source, so only the code between them (microseconds, or
	 * a preemption there) is left over. */
	const struct rdmamig_stats *st = &src.stats;
	uint64_t parts = st->pause_ns + st->final_sync_ns + st->final_send_ns + st->state_ns +
			 st->handover_ns + st->go_ns + st->recover_ns;
	printf("migration (%s): %u iterations, %llu pages, %llu zero skipped, downtime %.2f ms = pause %.2f + "
	       "final sync %.2f + final send %.2f + state %.2f + handover %.2f (load %.2f) + GO to RESUMED "
	       "%.2f (resume %.2f) + unaccounted %.2f, + source verify\n",
	       tr == RDMAMIG_TRANSPORT_TCP ? "tcp" : "rdma", st->iterations, (unsigned long long)st->pages,
	       (unsigned long long)st->zero_pages_skipped, st->downtime_ns / 1e6, st->pause_ns / 1e6,
	       st->final_sync_ns / 1e6, st->final_send_ns / 1e6, st->state_ns / 1e6, st->handover_ns / 1e6,
	       st->load_ns / 1e6, st->go_ns / 1e6, st->resume_ns / 1e6, st->unaccounted_ns / 1e6);
	cr_assert_gt(st->handover_ns, 0);
	cr_assert_gt(st->go_ns, 0);
	cr_assert_leq(parts, st->downtime_ns, "the parts overlap: %llu ns of parts in %llu ns",
		      (unsigned long long)parts, (unsigned long long)st->downtime_ns);
	cr_assert_leq(st->unaccounted_ns * 4, st->downtime_ns + 4000000,
		      "%.2f of %.2f ms of downtime unaccounted", st->unaccounted_ns / 1e6, st->downtime_ns / 1e6);
	pair_free(&src, &dst);
}

static void mismatch_is_refused(enum rdmamig_transport tr)
{
	struct side src = { 0 }, dst = { 0 };

	pair_setup(&src, &dst, want_transport(tr), 4 * MiB, 2000);
	dst.vmm.nr_vcpus = 3;
	start_source(&src);
	pair_join(&src, &dst);
	cr_assert_eq(src.rc, RDMAMIG_E_REFUSED, "source: %s", rdmamig_strerror(src.rc));
	cr_assert_eq(dst.rc, RDMAMIG_E_REFUSED, "destination: %s", rdmamig_strerror(dst.rc));
	cr_assert_eq(src.vmm.pause_calls, 0);
	cr_assert(!atomic_load(&src.vmm.paused));
	cr_assert_eq(dst.vmm.resume_calls, 0);
	pair_free(&src, &dst);
}

/* Cancel one side mid-iteration: the source is held at the pause point
 * after iteration 0 (RDMAMIG_FAULT, common/fault.h) — guest running,
 * switchover not decided — however fast the link.  A cancelled source ends
 * its pause itself; after cancelling the destination, the test releases
 * the source, which must then find the destination gone. */
static void cancel_mid_iteration(enum rdmamig_transport tr, bool cancel_source)
{
	struct side src = { 0 }, dst = { 0 };
	char hold[128], fault[192];

	snprintf(hold, sizeof(hold), "/tmp/rdmamig-migration-%d-hold", getpid());
	snprintf(fault, sizeof(fault), "pause:src:iteration-0:%s", hold);
	unlink(hold);
	pair_setup(&src, &dst, want_transport(tr), 8 * MiB, 3000);
	setenv("RDMAMIG_FAULT", fault, 1);
	start_source(&src);
	for (int i = 0; i < 24000 && access(hold, F_OK); i++)
		usleep(10000);
	unsetenv("RDMAMIG_FAULT");
	cr_assert_eq(access(hold, F_OK), 0, "the source never reached its pause point after iteration 0");
	rdmamig_get_stats(src.m, &src.stats);
	cr_assert_eq(src.stats.iterations, 1, "held after iteration 0, yet %u iterations", src.stats.iterations);
	uint64_t t_cancel = rm_now_ns();
	rdmamig_cancel(cancel_source ? src.m : dst.m);
	if (!cancel_source) {
		pthread_join(dst.thread, NULL);
		unlink(hold);
		pthread_join(src.thread, NULL);
	} else {
		pair_join(&src, &dst);
		cr_assert_neq(access(hold, F_OK), 0, "the cancelled source left its pause file");
		/* Half the pause point's own bound: the cancel, not the
		 * bound, ended the pause. */
		cr_assert_lt(rm_now_ns() - t_cancel, RM_FAULT_MAX_PAUSE_S / 2 * 1000000000ull,
			     "the cancel did not end the pause");
	}
	cr_assert_lt(src.rc, 0, "source succeeded despite the cancel");
	cr_assert_lt(dst.rc, 0, "destination succeeded despite the cancel");
	if (cancel_source)
		cr_assert_eq(src.rc, RDMAMIG_E_ABORTED, "source: %s", rdmamig_strerror(src.rc));
	cr_assert_eq(dst.vmm.resume_calls, 0, "destination ran a guest from incomplete state");
	assert_source_runs(&src);
	pair_free(&src, &dst);
}

static void load_failure_resumes_source(enum rdmamig_transport tr)
{
	struct side src = { 0 }, dst = { 0 };

	pair_setup(&src, &dst, want_transport(tr), 4 * MiB, 2000);
	dst.vmm.fail_load = true;
	start_source(&src);
	pair_join(&src, &dst);
	cr_assert_eq(src.rc, RDMAMIG_E_REFUSED, "source: %s", rdmamig_strerror(src.rc));
	cr_assert_lt(dst.rc, 0);
	cr_assert_eq(src.vmm.pause_calls, 1);
	cr_assert_eq(src.vmm.resume_calls, 1, "source guest not resumed after the failure");
	cr_assert_eq(dst.vmm.resume_calls, 0);
	assert_source_runs(&src);
	pair_free(&src, &dst);
}

static void nonconverging(enum rdmamig_transport tr, bool deadline)
{
	struct side src = { 0 }, dst = { 0 };
	bool rdma = tr == RDMAMIG_TRANSPORT_RDMA;
	/* Every sync finds all of RAM rewritten: converging within 1 ms
	 * would take a 64 GB/s TCP link (over TCP a pass "ends" when the
	 * kernel has the bytes, so passes measure memcpy speed) or a 16 GB/s
	 * RDMA one (passes end at completions) — faster than rxe and than a
	 * 100 GbE NIC.  RDMA moves less per pass, so that rxe in the nested
	 * bed (5 MB/s under load) still fits several passes in the deadline.
	 * Over TCP 2 x 16 MiB would need 32 GB/s to converge (a host moves
	 * 2-3 GB/s), and the loaded bed's bulk pass (15-25 MB/s) ends 5x
	 * inside the deadline below: the first decision always precedes it. */
	uint64_t region = rdma ? 8 * MiB : 16 * MiB;

	pair_setup(&src, &dst, want_transport(tr), region, 100000);
	src.vmm.hot_pages = 1024;
	src.vmm.sync_writes = 2 * region / FAKE_PAGE;
	src.opts.downtime_ms = 1;
	src.opts.verify = 1;
	if (deadline) {
		/* Room for several iterations after setup and the bulk pass:
		 * ~10 on the loaded nested bed, hundreds on a host. */
		src.opts.deadline_ms = rdma ? 30000 : 12000;
		src.opts.max_iterations = 100000;
	} else {
		src.opts.max_iterations = 4;
	}
	start_source(&src);
	pair_join(&src, &dst);
	if (src.rc) {
		unsigned shown = 0;

		for (unsigned r = 0; r < 2; r++)
			for (uint64_t pg = 0; pg < fake_pages(&src.vmm) && shown < 8; pg++)
				if (memcmp(src.vmm.ram[r] + pg * 4096, dst.vmm.ram[r] + pg * 4096, 4096))
					fprintf(stderr, "  region %u page %llu differs\n", r,
						(unsigned long long)pg), shown++;
	}
	cr_assert_eq(src.rc, 0, "source: %s", rdmamig_strerror(src.rc));
	cr_assert_eq(dst.rc, 0);
	cr_assert_eq(src.stats.verified, 1);
	if (deadline) {
		cr_assert_eq(src.stats.switchover, RDMAMIG_SWITCH_DEADLINE, "switchover %d",
			     src.stats.switchover);
		cr_assert_gt(src.vmm.max_throttle, 0, "a deadline must throttle a guest that does not converge");
		cr_assert_eq(src.vmm.throttle, 0, "throttle not lifted after the migration");
		cr_assert_lt(src.stats.total_ns, (src.opts.deadline_ms + 8000) * 1000000ull);
	} else {
		cr_assert_eq(src.stats.switchover, RDMAMIG_SWITCH_MAX_ITERATIONS);
		cr_assert_eq(src.stats.iterations, 5, "4 iterations + the final pass");
	}
	pair_free(&src, &dst);
}

/* --max-bandwidth: the RAM passes take at least bytes / cap. */
static void bandwidth_cap(enum rdmamig_transport tr)
{
	struct side src = { 0 }, dst = { 0 };
	const uint64_t cap = 8 * MiB;

	pair_setup(&src, &dst, want_transport(tr), 8 * MiB, 0);
	src.opts.max_bandwidth = cap;
	start_source(&src);
	pair_join(&src, &dst);
	cr_assert_eq(src.rc, 0, "source: %s", rdmamig_strerror(src.rc));
	uint64_t ns = 0;
	for (unsigned i = 0; i < src.stats.iterations; i++)
		ns += src.stats.iter[i].duration_ns;
	double floor_s = (double)src.stats.bytes / (double)cap;
	cr_assert_geq(ns / 1e9, floor_s * 0.95, "%llu bytes in %.2f s: faster than the %llu B/s cap",
		      (unsigned long long)src.stats.bytes, ns / 1e9, (unsigned long long)cap);
	printf("bandwidth cap (%s): %.1f MiB in %.2f s at a %.0f MiB/s cap\n",
	       tr == RDMAMIG_TRANSPORT_TCP ? "tcp" : "rdma", src.stats.bytes / 1048576.0, ns / 1e9,
	       cap / 1048576.0);
	pair_free(&src, &dst);
}

/* ---- authentication, bounds, and what the engine checks of the VMM ---- */

static char elog[16384];
static size_t elog_len;
static pthread_mutex_t elog_lock = PTHREAD_MUTEX_INITIALIZER;

static void log_keep(void *o, enum rdmamig_log_level l, const char *msg)
{
	size_t n = strlen(msg);

	log_to_stderr(o, l, msg);
	pthread_mutex_lock(&elog_lock);
	if (elog_len + n + 2 < sizeof(elog)) {
		memcpy(elog + elog_len, msg, n);
		elog_len += n;
		elog[elog_len++] = '\n';
		elog[elog_len] = 0;
	}
	pthread_mutex_unlock(&elog_lock);
}

static void elog_start(void)
{
	pthread_mutex_lock(&elog_lock);
	elog_len = 0;
	elog[0] = 0;
	pthread_mutex_unlock(&elog_lock);
	rdmamig_set_log(log_keep, "engine", RDMAMIG_LOG_DEBUG);
}

/* Run one source to its end against the destination in dst. */
static int run_source_with(struct side *src, const char *key, int no_auth)
{
	src->opts.psk = key;
	src->opts.psk_len = key ? strlen(key) : 0;
	src->opts.no_auth = no_auth;
	start_source(src);
	pthread_join(src->thread, NULL);
	rdmamig_free(src->m);
	src->m = NULL;
	return src->rc;
}

/*
 * A destination with a key: a source without one and a source with a wrong
 * one are refused with RDMAMIG_E_AUTH, their guests run on, and the
 * destination's VMM is never asked anything for them (no prepare(), no
 * describe(): no VM created, no RAM registered).  A source with the key,
 * after them, migrates as before.
 */
static void auth_refuses_then_migrates(enum rdmamig_transport tr)
{
	struct side src = { 0 }, dst = { 0 };
	int rc;

	pair_setup(&src, &dst, want_transport(tr), 4 * MiB, 2000);
	dst.opts.timeout_ms = 20000;
	elog_start();
	rc = run_source_with(&src, NULL, 1);
	cr_assert_eq(rc, RDMAMIG_E_AUTH, "source without a key: %s", rdmamig_strerror(rc));
	rc = run_source_with(&src, "not the key, but 16+ bytes", 0);
	cr_assert_eq(rc, RDMAMIG_E_AUTH, "source with a wrong key: %s", rdmamig_strerror(rc));
	cr_assert_eq(atomic_load(&dst.vmm.prepare_calls), 0, "prepare() for an unauthenticated source");
	cr_assert_eq(atomic_load(&dst.vmm.describe_calls), 0, "describe() for an unauthenticated source");
	cr_assert(strstr(elog, "the peer did not prove the pre-shared key: wrong key or none; "
			       "check --psk on both sides"), "log: %s", elog);
	cr_assert_eq(src.vmm.pause_calls, 0);
	cr_assert_eq(src.vmm.dirty_stop_calls, 0, "dirty logging started before authentication");
	{
		uint64_t c0 = atomic_load(&src.vmm.counter);

		for (int i = 0; i < 200 && atomic_load(&src.vmm.counter) == c0; i++)
			usleep(5000);
		cr_assert_gt(atomic_load(&src.vmm.counter), c0, "source guest does not run");
	}

	rc = run_source_with(&src, KEY, 0);
	pthread_join(dst.thread, NULL);
	cr_assert_eq(rc, 0, "source with the key: %s", rdmamig_strerror(rc));
	cr_assert_eq(dst.rc, 0, "destination: %s", rdmamig_strerror(dst.rc));
	cr_assert_eq(atomic_load(&dst.vmm.prepare_calls), 1);
	cr_assert_eq(dst.vmm.resume_calls, 1);
	for (unsigned r = 0; r < 2; r++)
		cr_assert_eq(memcmp(src.vmm.ram[r], dst.vmm.ram[r], src.vmm.region_size), 0,
			     "region %u differs", r);
	pair_free(&src, &dst);
}

/* A guest larger than the destination's cap is refused before prepare(). */
static void max_mem_refuses_before_prepare(enum rdmamig_transport tr)
{
	struct side src = { 0 }, dst = { 0 };

	next_max_mem = 6 * MiB;
	pair_setup(&src, &dst, want_transport(tr), 4 * MiB, 2000);
	elog_start();
	start_source(&src);
	pair_join(&src, &dst);
	cr_assert_eq(src.rc, RDMAMIG_E_REFUSED, "source: %s", rdmamig_strerror(src.rc));
	cr_assert_eq(atomic_load(&dst.vmm.prepare_calls), 0, "prepare() for a guest over the cap");
	cr_assert(strstr(elog, "the destination refused: the source's guest has 8 MiB of RAM; "
			       "this destination takes at most 6 MiB"), "log: %s", elog);
	cr_assert_eq(src.vmm.pause_calls, 0);
	pair_free(&src, &dst);
}

/* prepare()'s own words reach the source, not only "Invalid argument". */
static void prepare_reason_reaches_the_source(enum rdmamig_transport tr)
{
	struct side src = { 0 }, dst = { 0 };

	pair_setup(&src, &dst, want_transport(tr), 4 * MiB, 0);
	dst.vmm.prepare_err = -EINVAL;
	elog_start();
	start_source(&src);
	pair_join(&src, &dst);
	cr_assert_eq(src.rc, RDMAMIG_E_REFUSED, "source: %s", rdmamig_strerror(src.rc));
	cr_assert(strstr(elog, "the destination refused: the destination VMM cannot host this VM: "
			       "fake: no room for 2 vCPUs here"), "log: %s", elog);
	pair_free(&src, &dst);
}

/* The options' strings are copied: the embedder may free them at once. */
static void options_are_copied(enum rdmamig_transport tr)
{
	struct side src = { 0 }, dst = { 0 };
	char *addr, *port, *key;

	pair_setup(&src, &dst, want_transport(tr), 4 * MiB, 0);
	addr = strdup(src.opts.addr);
	port = strdup(src.opts.port);
	key = strdup(KEY);
	src.opts.addr = addr;
	src.opts.port = port;
	src.opts.psk = key;
	src.m = rdmamig_new(&src.opts, &fake_ops, &src.vmm);
	cr_assert_not_null(src.m);
	/* Spoil, then free: a kept pointer would connect elsewhere or read
	 * freed memory (AddressSanitizer names it). */
	memset(addr, 'x', strlen(addr));
	memset(port, '9', strlen(port));
	memset(key, 0, strlen(KEY));
	free(addr);
	free(port);
	free(key);
	cr_assert_eq(pthread_create(&src.thread, NULL, run_side, &src), 0);
	pair_join(&src, &dst);
	cr_assert_eq(src.rc, 0, "source: %s", rdmamig_strerror(src.rc));
	cr_assert_eq(dst.rc, 0, "destination: %s", rdmamig_strerror(dst.rc));
	pair_free(&src, &dst);
}

/* A describe() with page size 0 (or not a power of two) fails the
 * migration with -EINVAL; it used to divide by zero. */
static void bad_describe_is_refused(enum rdmamig_transport tr)
{
	struct side src = { 0 }, dst = { 0 };
	const uint32_t bad[] = { 0, 3000, 4096 * 3 };

	want_transport(tr);
	rdmamig_set_log(log_to_stderr, "engine", RDMAMIG_LOG_DEBUG);
	cr_assert_eq(fake_vmm_init(&src.vmm, 2, 4 * MiB, 0), 0);
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		src.vmm.bad_describe = true;
		src.vmm.bad_page_size = bad[i];
		src.opts = (struct rdmamig_opts){
			.role = RDMAMIG_SOURCE, .transport = tr, .addr = bed_addr(tr), .port = "1",
			.timeout_ms = 1000, .no_auth = 1,
		};
		src.m = rdmamig_new(&src.opts, &fake_ops, &src.vmm);
		cr_assert_not_null(src.m);
		cr_assert_eq(rdmamig_run(src.m), -EINVAL, "page size %u", bad[i]);
		rdmamig_free(src.m);
	}
	fake_vmm_destroy(&src.vmm);
	(void)dst;
}

/*
 * Any length: a migration paced to last several times --timeout succeeds.
 * The bulk pass sends 8 MiB of non-zero pages at 1 MiB/s, in naps of
 * seconds during which the source sends no RAM and the engine no message:
 * only keep-alives show either side that the other lives.
 */
static void outlives_its_timeout(enum rdmamig_transport tr)
{
	struct side src = { 0 }, dst = { 0 };
	const uint64_t cap = 1 * MiB;
	const int timeout_ms = 2000;

	pair_setup_timeout(&src, &dst, want_transport(tr), 8 * MiB, 0, timeout_ms);
	src.opts.max_bandwidth = cap;
	start_source(&src);
	pair_join(&src, &dst);
	cr_assert_eq(src.rc, 0, "source: %s", rdmamig_strerror(src.rc));
	cr_assert_eq(dst.rc, 0, "destination: %s", rdmamig_strerror(dst.rc));
	for (unsigned r = 0; r < 2; r++)
		cr_assert_eq(memcmp(src.vmm.ram[r], dst.vmm.ram[r], src.vmm.region_size), 0,
			     "region %u differs", r);
	/* What makes the case mean something: the cap held it for > 3 timeouts. */
	cr_assert_geq(src.stats.total_ns, 3ull * timeout_ms * 1000000ull,
		      "took only %.2f s: not longer than 3 timeouts", src.stats.total_ns / 1e9);
	printf("long migration (%s): %.1f MiB in %.2f s at a %.0f MiB/s cap, timeout %d ms\n",
	       tr == RDMAMIG_TRANSPORT_TCP ? "tcp" : "rdma", src.stats.bytes / 1048576.0,
	       src.stats.total_ns / 1e9, cap / 1048576.0, timeout_ms);
	pair_free(&src, &dst);
}

/* ---- cancel: prompt in every phase ---- */

static double secs_since(uint64_t t0)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec - t0) / 1e9;
}

static uint64_t now_ns(void)
{
	return secs_since(0) * 1e9;
}

/* Cancel s and wait for its rdmamig_run() to return: the seconds it took. */
static double cancel_latency(struct side *s)
{
	uint64_t t0 = now_ns();

	rdmamig_cancel(s->m);
	pthread_join(s->thread, NULL);
	return secs_since(t0);
}

/* The bound is generous: the point is "not a timeout" (20 s before). */
#define CANCEL_BOUND_S 1.0

static void check_cancel(struct side *s, const char *phase, enum rdmamig_transport tr)
{
	double lat = cancel_latency(s);

	printf("cancel (%s, %s): %.0f ms\n", tr == RDMAMIG_TRANSPORT_TCP ? "tcp" : "rdma", phase,
	       lat * 1000);
	cr_assert_lt(lat, CANCEL_BOUND_S, "%s: rdmamig_run returned %.2f s after the cancel", phase,
		     lat);
	cr_assert_eq(s->rc, RDMAMIG_E_ABORTED, "%s: %s", phase, rdmamig_strerror(s->rc));
}

/* A destination listening, no source in sight. */
static void cancel_while_listening(enum rdmamig_transport tr)
{
	struct side dst = { 0 };

	want_transport(tr);
	rdmamig_set_log(log_to_stderr, "engine", RDMAMIG_LOG_DEBUG);
	cr_assert_eq(fake_vmm_init(&dst.vmm, 2, 1 * MiB, 0), 0);
	dst.opts = (struct rdmamig_opts){
		.role = RDMAMIG_DESTINATION, .transport = tr, .addr = bed_addr(tr), .port = "0",
		.timeout_ms = 20000, .psk = KEY, .psk_len = sizeof(KEY) - 1,
	};
	dst.m = rdmamig_new(&dst.opts, &fake_ops, &dst.vmm);
	cr_assert_not_null(dst.m);
	cr_assert_eq(pthread_create(&dst.thread, NULL, run_side, &dst), 0);
	for (int i = 0; i < 500 && rdmamig_listen_port(dst.m) <= 0; i++)
		usleep(10000);
	cr_assert_gt(rdmamig_listen_port(dst.m), 0, "destination never listened");
	usleep(250000);		/* inside accept's wait, mid-slice */
	check_cancel(&dst, "listening", tr);
	rdmamig_free(dst.m);
	fake_vmm_destroy(&dst.vmm);
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_ERR);
}

/* A source connecting to a listener that never answers its HELLO (TCP: the
 * kernel accepts; RDMA: the connect request waits, unanswered). */
static void cancel_source_in_handshake(enum rdmamig_transport tr)
{
	struct rm_transport_opts lo = {
		.kind = tr == RDMAMIG_TRANSPORT_TCP ? RM_TRANSPORT_TCP : RM_TRANSPORT_RDMA,
		.addr = bed_addr(want_transport(tr)), .port = "0", .no_auth = true,
	};
	struct rm_listener *l;
	struct side src = { 0 };
	char port[16];

	rdmamig_set_log(log_to_stderr, "engine", RDMAMIG_LOG_DEBUG);
	cr_assert_eq(rm_tr_listen(&lo, &l), 0);
	snprintf(port, sizeof(port), "%d", rm_tr_listener_port(l));
	cr_assert_eq(fake_vmm_init(&src.vmm, 2, 1 * MiB, 2000), 0);
	cr_assert_eq(fake_vmm_start(&src.vmm), 0);
	src.opts = (struct rdmamig_opts){
		.role = RDMAMIG_SOURCE, .transport = tr, .addr = bed_addr(tr), .port = port,
		.timeout_ms = 20000, .psk = KEY, .psk_len = sizeof(KEY) - 1,
	};
	start_source(&src);
	usleep(350000);		/* connected, waiting for HELLO_ACK, mid-slice */
	check_cancel(&src, "source handshake", tr);
	cr_assert_eq(src.vmm.pause_calls, 0);
	assert_source_runs_no_logging(&src);
	rdmamig_free(src.m);
	rm_tr_listener_close(l);
	fake_vmm_destroy(&src.vmm);
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_ERR);
}

/* A destination that accepted a connection on which no HELLO ever comes. */
static void cancel_destination_in_handshake(enum rdmamig_transport tr)
{
	struct side dst = { 0 };
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int fd, p = -1;

	want_transport(tr);
	rdmamig_set_log(log_to_stderr, "engine", RDMAMIG_LOG_DEBUG);
	cr_assert_eq(fake_vmm_init(&dst.vmm, 2, 1 * MiB, 0), 0);
	dst.opts = (struct rdmamig_opts){
		.role = RDMAMIG_DESTINATION, .transport = tr, .addr = "127.0.0.1", .port = "0",
		.timeout_ms = 20000, .psk = KEY, .psk_len = sizeof(KEY) - 1,
	};
	dst.m = rdmamig_new(&dst.opts, &fake_ops, &dst.vmm);
	cr_assert_not_null(dst.m);
	cr_assert_eq(pthread_create(&dst.thread, NULL, run_side, &dst), 0);
	for (int i = 0; i < 500 && (p = rdmamig_listen_port(dst.m)) <= 0; i++)
		usleep(10000);
	cr_assert_gt(p, 0, "destination never listened");
	fd = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_port = htons((uint16_t)p);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	usleep(350000);		/* accepted, waiting for HELLO, mid-slice */
	check_cancel(&dst, "destination handshake", tr);
	close(fd);
	rdmamig_free(dst.m);
	fake_vmm_destroy(&dst.vmm);
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_ERR);
}

/* ---- the handover: exactly one running copy ---- */

/* Samples, every 200 us, whether both copies run at once: the source's
 * guest unpaused after it was paused, while the destination has resumed
 * its own.  A sample can miss a short overlap; it cannot invent one. */
struct overlap {
	struct side *src, *dst;
	atomic_bool stop, seen;
	pthread_t thread;
};

static void *watch_overlap(void *arg)
{
	struct overlap *o = arg;

	while (!atomic_load(&o->stop)) {
		bool src_runs = o->src->vmm.pause_calls > 0 && !atomic_load(&o->src->vmm.paused);
		bool dst_runs = o->dst->vmm.resume_calls > 0;

		if (src_runs && dst_runs)
			atomic_store(&o->seen, true);
		usleep(200);
	}
	return NULL;
}

static void hold_file(char *buf, size_t n, const char *what)
{
	snprintf(buf, n, "/tmp/rdmamig-migration-%d-%s", getpid(), what);
	unlink(buf);
}

static void wait_file(const char *path, const char *what)
{
	for (int i = 0; i < 24000 && access(path, F_OK); i++)
		usleep(10000);
	cr_assert_eq(access(path, F_OK), 0, "%s never happened (%s absent)", what, path);
}

/* The destination resumes the guest, and its RESUMED is lost with the link.
 * The source, GO sent, must not resume: it stays paused while it asks
 * (held there by the test: one copy runs, the other is paused), learns
 * that the destination runs the guest, and releases its copy. */
static void lost_resumed(enum rdmamig_transport tr)
{
	struct side src = { 0 }, dst = { 0 };
	struct overlap ov = { .src = &src, .dst = &dst };
	char dropped[128], hold[128], fault[400];

	hold_file(dropped, sizeof(dropped), "dropped");
	hold_file(hold, sizeof(hold), "recover");
	snprintf(fault, sizeof(fault), "drop:dst:send-RESUMED:%s,pause:src:recover:%s", dropped, hold);
	pair_setup(&src, &dst, want_transport(tr), 4 * MiB, 2000);
	setenv("RDMAMIG_FAULT", fault, 1);
	cr_assert_eq(pthread_create(&ov.thread, NULL, watch_overlap, &ov), 0);
	start_source(&src);
	wait_file(hold, "the source's recovery after the lost RESUMED");
	cr_assert_eq(access(dropped, F_OK), 0, "the destination never dropped RESUMED");
	cr_assert_eq(dst.vmm.resume_calls, 1, "the destination did not run the guest after GO");
	cr_assert(atomic_load(&src.vmm.paused), "the source resumed its copy with the destination's running");
	cr_assert_eq(src.vmm.resume_calls, 0);
	unlink(hold);
	pair_join(&src, &dst);
	atomic_store(&ov.stop, true);
	pthread_join(ov.thread, NULL);
	unsetenv("RDMAMIG_FAULT");
	unlink(dropped);

	cr_assert_eq(src.rc, 0, "source: %s", rdmamig_strerror(src.rc));
	cr_assert_eq(dst.rc, 0, "destination: %s", rdmamig_strerror(dst.rc));
	cr_assert_eq(src.stats.recoveries, 1, "the outcome was not learnt by recovery");
	cr_assert_eq(src.vmm.resume_calls, 0, "the source resumed a guest the destination runs");
	cr_assert(atomic_load(&src.vmm.paused));
	cr_assert_eq(dst.vmm.resume_calls, 1);
	cr_assert_eq(dst.vmm.loaded_counter, atomic_load(&src.vmm.counter));
	cr_assert(!atomic_load(&ov.seen), "both copies ran at once");
	pair_free(&src, &dst);
}

/* The link is cut after LOADED, before GO leaves the source: the source
 * resumes, tells the destination, which discards the loaded guest. */
static void cut_before_go(enum rdmamig_transport tr)
{
	struct side src = { 0 }, dst = { 0 };
	char cut[128], fault[200];

	hold_file(cut, sizeof(cut), "cut");
	snprintf(fault, sizeof(fault), "cut:src:send-GO:%s", cut);
	pair_setup(&src, &dst, want_transport(tr), 4 * MiB, 2000);
	setenv("RDMAMIG_FAULT", fault, 1);
	start_source(&src);
	pair_join(&src, &dst);
	unsetenv("RDMAMIG_FAULT");
	cr_assert_eq(access(cut, F_OK), 0, "the source never reached GO");
	unlink(cut);

	cr_assert_lt(src.rc, 0, "source succeeded without sending GO");
	cr_assert_lt(dst.rc, 0, "destination succeeded without GO");
	cr_assert_eq(dst.vmm.resume_calls, 0, "the destination ran the guest without GO");
	cr_assert_gt(dst.vmm.loaded_counter, 0, "state was not loaded: the cut came too early");
	cr_assert_eq(src.vmm.resume_calls, 1);
	assert_source_runs(&src);
	pair_free(&src, &dst);
}

/* GO is lost with the link.  Both sides keep the guest paused (the test
 * holds the source at its recovery to look); recovery finds that the
 * destination never got GO, and the source runs it. */
static void go_lost(enum rdmamig_transport tr)
{
	struct side src = { 0 }, dst = { 0 };
	char dropped[128], hold[128], fault[400];

	hold_file(dropped, sizeof(dropped), "dropped");
	hold_file(hold, sizeof(hold), "recover");
	snprintf(fault, sizeof(fault), "drop:src:send-GO:%s,pause:src:recover:%s", dropped, hold);
	pair_setup(&src, &dst, want_transport(tr), 4 * MiB, 2000);
	setenv("RDMAMIG_FAULT", fault, 1);
	start_source(&src);
	wait_file(hold, "the source's recovery after the lost GO");
	cr_assert(atomic_load(&src.vmm.paused), "the source resumed after sending GO");
	cr_assert_eq(src.vmm.resume_calls, 0);
	cr_assert_eq(dst.vmm.resume_calls, 0, "the destination ran the guest without GO");
	cr_assert(!atomic_load(&dst.done), "the destination gave up before the source could ask");
	unlink(hold);
	pair_join(&src, &dst);
	unsetenv("RDMAMIG_FAULT");
	unlink(dropped);

	cr_assert_lt(src.rc, 0, "source: the migration cannot have succeeded");
	cr_assert_neq(src.rc, RDMAMIG_E_INDOUBT, "recovery did not settle it");
	cr_assert_eq(src.stats.recoveries, 1);
	cr_assert_lt(dst.rc, 0);
	cr_assert_eq(dst.vmm.resume_calls, 0);
	cr_assert_eq(src.vmm.resume_calls, 1);
	assert_source_runs(&src);
	pair_free(&src, &dst);
}

/* A scripted destination, to play peers the engine would never be. */
enum script {
	EARLY_RESUMED,		/* RESUMED right after the layout */
	VANISH_AFTER_GO,	/* LOADED, then on GO: cut the link, stop listening */
	ANSWER_RAN,		/* listen again, answer RECOVER: "ran" */
};

struct scripted {
	enum script script;
	struct fake_vmm *vmm;
	struct rm_transport_opts o;
	struct rm_listener *l;
	uint64_t migration_id;
	pthread_t thread;
	int rc;
	bool got_go, got_recover;
};

static int script_accept(struct scripted *p, struct rm_transport **t)
{
	int err;

	if (!p->l && (err = rm_tr_listen(&p->o, &p->l)))
		return err;
	return rm_tr_accept(p->l, t);
}

static void *run_script(void *arg)
{
	struct scripted *p = arg;
	struct rdmamig_vm_desc d;
	struct rm_region regions[FAKE_MAX_REGIONS];
	struct rm_transport *t;
	struct rm_msg msg;
	int err = script_accept(p, &t);

	if (err) {
		p->rc = err;
		return NULL;
	}
	if (p->script == ANSWER_RAN) {
		struct rm_mig_recover r;
		struct rm_mig_outcome out = { .got_go = htole32(1), .ran = htole32(1) };

		err = rm_tr_recv(t, &msg, -1);
		if (err >= 0 && msg.type == RM_MIG_RECOVER && msg.len == sizeof(r)) {
			memcpy(&r, msg.data, sizeof(r));
			p->got_recover = le64toh(r.migration_id) == p->migration_id;
			out.migration_id = r.migration_id;
			err = rm_tr_send(t, RM_MIG_OUTCOME, &out, sizeof(out));
			rm_msg_free(&msg);
			if (!err)
				err = rm_tr_recv(t, &msg, -1);
		}
		p->rc = err;
		rm_tr_close(t);
		rm_tr_listener_close(p->l);
		p->l = NULL;
		return NULL;
	}
	/* SETUP, SETUP_OK, LAYOUT as a real destination does them. */
	err = rm_tr_recv(t, &msg, -1);
	if (err >= 0) {
		uint32_t flags;
		char why[160];

		err = msg.type == RM_MIG_SETUP ? rm_mig_setup_decode(msg.data, msg.len, &d, &flags,
								     &p->migration_id, why, sizeof(why))
					       : RDMAMIG_E_PROTO;
		rm_msg_free(&msg);
	}
	if (!err)
		err = rm_tr_send(t, RM_MIG_SETUP_OK, NULL, 0);
	fake_describe(p->vmm, &d);
	for (unsigned r = 0; r < d.nr_regions; r++)
		regions[r] = (struct rm_region){ .id = d.regions[r].id, .addr = d.regions[r].host_addr,
						 .size = d.regions[r].size };
	if (!err)
		err = rm_tr_layout(t, regions, d.nr_regions);
	if (!err && p->script == EARLY_RESUMED) {
		struct rm_mig_resumed res = { 0 };

		err = rm_tr_send(t, RM_MIG_RESUMED, &res, sizeof(res));
	}
	while (!err) {
		err = rm_tr_recv(t, &msg, -1);
		if (err < 0)
			break;
		err = 0;
		if (p->script == VANISH_AFTER_GO && msg.type == RM_MIG_COMMIT) {
			struct rm_mig_loaded l = { 0 };

			err = rm_tr_send(t, RM_MIG_LOADED, &l, sizeof(l));
		} else if (p->script == VANISH_AFTER_GO && msg.type == RM_MIG_GO) {
			p->got_go = true;
			rm_tr_cut(t);		/* gone: no BYE, nothing listens */
			t = NULL;
			err = -ECONNRESET;
		}
		rm_msg_free(&msg);
	}
	p->rc = err;
	rm_tr_close(t);
	rm_tr_listener_close(p->l);
	p->l = NULL;
	return NULL;
}

/* Source options for a scripted destination on an ephemeral port. */
static void script_start(struct scripted *p, struct side *src, enum rdmamig_transport tr,
			 enum script script)
{
	static char port[16];

	rdmamig_set_log(log_to_stderr, "engine", RDMAMIG_LOG_DEBUG);
	p->script = script;
	p->o = (struct rm_transport_opts){
		.kind = tr == RDMAMIG_TRANSPORT_TCP ? RM_TRANSPORT_TCP : RM_TRANSPORT_RDMA,
		.addr = bed_addr(tr), .port = "0", .timeout_ms = SILENCE_MS, .psk_len = sizeof(KEY) - 1,
	};
	memcpy(p->o.psk, KEY, sizeof(KEY) - 1);
	cr_assert_eq(rm_tr_listen(&p->o, &p->l), 0);
	snprintf(port, sizeof(port), "%d", rm_tr_listener_port(p->l));
	p->o.port = port;
	cr_assert_eq(pthread_create(&p->thread, NULL, run_script, p), 0);
	src->opts = (struct rdmamig_opts){
		.role = RDMAMIG_SOURCE, .transport = tr, .addr = bed_addr(tr), .port = port,
		.timeout_ms = SILENCE_MS, .channels = 2, .psk = KEY, .psk_len = sizeof(KEY) - 1,
	};
}

/* A RESUMED before COMMIT is outside its state: a protocol error, and the
 * source, which never sent GO, runs on. */
static void early_resumed(enum rdmamig_transport tr)
{
	struct side src = { 0 };
	struct fake_vmm dvmm;
	struct scripted p = { .vmm = &dvmm };

	want_transport(tr);
	cr_assert_eq(fake_vmm_init(&src.vmm, 2, 4 * MiB, 2000), 0);
	cr_assert_eq(fake_vmm_init(&dvmm, 2, 4 * MiB, 0), 0);
	cr_assert_eq(fake_vmm_start(&src.vmm), 0);
	script_start(&p, &src, tr, EARLY_RESUMED);
	start_source(&src);
	pthread_join(src.thread, NULL);
	pthread_join(p.thread, NULL);
	cr_assert_eq(src.rc, RDMAMIG_E_PROTO, "source: %s", rdmamig_strerror(src.rc));
	assert_source_runs(&src);
	rdmamig_free(src.m);
	fake_vmm_destroy(&src.vmm);
	fake_vmm_destroy(&dvmm);
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_ERR);
}

/* GO sent, then the destination is gone for good: the source never resumes
 * on a timeout — rdmamig_run() says INDOUBT with the guest paused, and so
 * does rdmamig_recover() while nobody answers.  Once a destination answers
 * that it runs the guest, the source's copy is released, still paused. */
static void destination_gone_after_go(enum rdmamig_transport tr)
{
	struct side src = { 0 };
	struct fake_vmm dvmm;
	struct scripted p = { .vmm = &dvmm };

	want_transport(tr);
	cr_assert_eq(fake_vmm_init(&src.vmm, 2, 4 * MiB, 2000), 0);
	cr_assert_eq(fake_vmm_init(&dvmm, 2, 4 * MiB, 0), 0);
	cr_assert_eq(fake_vmm_start(&src.vmm), 0);
	script_start(&p, &src, tr, VANISH_AFTER_GO);
	src.opts.recover_ms = 500;
	start_source(&src);
	pthread_join(src.thread, NULL);
	pthread_join(p.thread, NULL);
	cr_assert(p.got_go, "the scripted destination never saw GO");
	cr_assert_eq(src.rc, RDMAMIG_E_INDOUBT, "source: %s", rdmamig_strerror(src.rc));
	cr_assert(atomic_load(&src.vmm.paused), "the source resumed after sending GO");
	cr_assert_eq(src.vmm.resume_calls, 0);
	cr_assert_eq(rdmamig_recover(src.m), RDMAMIG_E_INDOUBT, "nobody can have answered");
	cr_assert(atomic_load(&src.vmm.paused));

	/* The destination is back (on the same port) and runs the guest. */
	p.l = NULL;
	p.script = ANSWER_RAN;
	cr_assert_eq(pthread_create(&p.thread, NULL, run_script, &p), 0);
	int ret = RDMAMIG_E_INDOUBT;
	for (int i = 0; i < 100 && ret == RDMAMIG_E_INDOUBT; i++) {
		ret = rdmamig_recover(src.m);
		if (ret == RDMAMIG_E_INDOUBT)
			usleep(100000);	/* its listener may not be up yet */
	}
	pthread_join(p.thread, NULL);
	cr_assert_eq(ret, RDMAMIG_OUTCOME_DESTINATION, "recover: %d %s", ret, rdmamig_strerror(ret));
	cr_assert(p.got_recover, "the RECOVER did not name this migration");
	cr_assert(atomic_load(&src.vmm.paused), "the source resumed a guest the destination runs");
	cr_assert_eq(src.vmm.resume_calls, 0);
	cr_assert_eq(rdmamig_recover(src.m), -EINVAL, "settled: nothing left to recover");
	rdmamig_free(src.m);
	fake_vmm_destroy(&src.vmm);
	fake_vmm_destroy(&dvmm);
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_ERR);
}

#define BOTH(name, ...)                                                                    \
	Test(migration_tcp, name, .timeout = 240) { __VA_ARGS__(RDMAMIG_TRANSPORT_TCP); }   \
	Test(migration_rdma, name, .timeout = 120) { __VA_ARGS__(RDMAMIG_TRANSPORT_RDMA); }

static void cancel_source(enum rdmamig_transport t) { cancel_mid_iteration(t, true); }
static void destination_vanishes(enum rdmamig_transport t) { cancel_mid_iteration(t, false); }
static void deadline_case(enum rdmamig_transport t) { nonconverging(t, true); }
static void cap_case(enum rdmamig_transport t) { nonconverging(t, false); }

BOTH(busy_guest_migrates_verified, busy_guest_migrates)
BOTH(mismatched_vm_is_refused, mismatch_is_refused)
BOTH(cancel_source_mid_iteration, cancel_source)
BOTH(destination_vanishes_mid_iteration, destination_vanishes)
BOTH(failed_state_load_resumes_source, load_failure_resumes_source)
BOTH(nonconverging_hits_deadline_with_throttle, deadline_case)
BOTH(nonconverging_hits_iteration_cap, cap_case)
BOTH(bandwidth_cap_holds, bandwidth_cap)
BOTH(auth_refuses_no_key_and_wrong_key_then_migrates, auth_refuses_then_migrates)
BOTH(max_mem_refuses_before_prepare, max_mem_refuses_before_prepare)
BOTH(prepare_reason_reaches_the_source, prepare_reason_reaches_the_source)
BOTH(options_are_copied, options_are_copied)

Test(migration, bad_describe_is_refused) { bad_describe_is_refused(RDMAMIG_TRANSPORT_TCP); }

/* Zeroed options mean no key and no no_auth: refused, as are both. */
Test(migration, options_must_choose_authentication)
{
	struct fake_vmm v;
	struct rdmamig_opts o = { .role = RDMAMIG_DESTINATION, .transport = RDMAMIG_TRANSPORT_TCP };

	cr_assert_eq(fake_vmm_init(&v, 1, 4 * MiB, 0), 0);
	errno = 0;
	cr_assert_null(rdmamig_new(&o, &fake_ops, &v), "no key and no no_auth accepted");
	cr_assert_eq(errno, EINVAL);
	o.psk = KEY;
	o.psk_len = sizeof(KEY) - 1;
	o.no_auth = 1;
	cr_assert_null(rdmamig_new(&o, &fake_ops, &v), "a key and no_auth accepted");
	o.no_auth = 0;
	o.psk_len = 8;
	cr_assert_null(rdmamig_new(&o, &fake_ops, &v), "an 8-byte key accepted");
	o.psk_len = sizeof(KEY) - 1;
	{
		rdmamig_t *m = rdmamig_new(&o, &fake_ops, &v);

		cr_assert_not_null(m);
		rdmamig_free(m);
	}
	fake_vmm_destroy(&v);
}

BOTH(outlives_its_timeout_threefold, outlives_its_timeout)
BOTH(cancel_while_listening_is_prompt, cancel_while_listening)
BOTH(cancel_in_source_handshake_is_prompt, cancel_source_in_handshake)
Test(migration_tcp, cancel_in_destination_handshake_is_prompt, .timeout = 60)
{
	cancel_destination_in_handshake(RDMAMIG_TRANSPORT_TCP);
}

#define HANDOVER(name, fn)                                                                  \
	Test(handover_tcp, name, .timeout = 240) { fn(RDMAMIG_TRANSPORT_TCP); }             \
	Test(handover_rdma, name, .timeout = 240) { fn(RDMAMIG_TRANSPORT_RDMA); }

HANDOVER(lost_resumed_never_two_copies, lost_resumed)
HANDOVER(cut_after_loaded_before_go_source_resumes, cut_before_go)
HANDOVER(go_lost_both_paused_then_source_runs, go_lost)
HANDOVER(early_resumed_is_a_protocol_error, early_resumed)
HANDOVER(destination_gone_after_go_stays_paused, destination_gone_after_go)

Test(protocol, every_state_takes_only_its_messages)
{
	enum rm_mig_state next;

	/* The early RESUMED of issue 11, and a GO at a destination still
	 * receiving, are protocol errors. */
	cr_assert_eq(rm_mig_lookup(RM_ST_SRC_ITERATE, RM_MIG_RESUMED, &next), RM_ACT_PROTO);
	cr_assert_eq(rm_mig_lookup(RM_ST_SRC_COMMITTED, RM_MIG_RESUMED, &next), RM_ACT_PROTO);
	cr_assert_eq(rm_mig_lookup(RM_ST_DST_RECEIVE, RM_MIG_GO, &next), RM_ACT_PROTO);
	cr_assert_eq(rm_mig_lookup(RM_ST_SRC_COMMITTED, RM_MIG_LOADED, &next), RM_ACT_TAKE);
	cr_assert_eq(next, RM_ST_SRC_GO_SENT);
	cr_assert_eq(rm_mig_lookup(RM_ST_DST_LOADED, RM_MIG_GO, &next), RM_ACT_TAKE);
	cr_assert_eq(next, RM_ST_DST_RUNNING);
	/* Before GO the source resumes; after, it never does on its own. */
	cr_assert_eq(rm_mig_on_fail(RM_ST_SRC_COMMITTED), RM_FAIL_RESUME);
	cr_assert_eq(rm_mig_on_fail(RM_ST_SRC_GO_SENT), RM_FAIL_RECOVER);
	cr_assert_eq(rm_mig_on_fail(RM_ST_DST_RECEIVE), RM_FAIL_DISCARD);
	cr_assert_eq(rm_mig_on_fail(RM_ST_DST_LOADED), RM_FAIL_RECOVER);
	/* Every rule names a real state and an engine message; no pair twice. */
	for (unsigned i = 0; i < rm_mig_nr_rules; i++) {
		cr_assert_lt(rm_mig_rules[i].state, RM_ST_COUNT);
		cr_assert_lt(rm_mig_rules[i].next, RM_ST_COUNT);
		cr_assert_str_neq(rm_mig_type_name(rm_mig_rules[i].type), "UNKNOWN");
		for (unsigned j = 0; j < i; j++)
			cr_assert(rm_mig_rules[j].state != rm_mig_rules[i].state ||
				  rm_mig_rules[j].type != rm_mig_rules[i].type, "rule %u repeats rule %u", i, j);
	}
}

/* ---- pure parts: policy and SETUP decoding ---- */

Test(policy, converges_caps_and_deadline)
{
	struct rdmamig_opts o = { .downtime_ms = 100, .max_iterations = 5, .deadline_ms = 0 };
	struct rm_policy p;
	struct rm_policy_state s = { 0 };

	rm_policy_from_opts(&p, &o);
	/* 1 GB/s; 50 MB left → 50 ms ≤ 100 ms. */
	struct rm_policy_input in = { .iteration = 1, .sent_bytes = 1000000000, .duration_ns = 1000000000,
				      .remaining_bytes = 50000000, .elapsed_ns = 2000000000 };
	cr_assert_eq(rm_policy_decide(&p, &s, &in), RDMAMIG_SWITCH_CONVERGED);
	in.remaining_bytes = 200000000;
	cr_assert_eq(rm_policy_decide(&p, &s, &in), RDMAMIG_SWITCH_NONE);
	in.iteration = 4;
	cr_assert_eq(rm_policy_decide(&p, &s, &in), RDMAMIG_SWITCH_MAX_ITERATIONS);
	o.deadline_ms = 2100;
	o.max_iterations = 100;
	rm_policy_from_opts(&p, &o);
	in.iteration = 1;
	cr_assert_eq(rm_policy_decide(&p, &s, &in), RDMAMIG_SWITCH_DEADLINE, "2 s + 0.2 s > 2.1 s");
}

Test(policy, autoconverge_throttles_after_two_slow_rounds)
{
	struct rdmamig_opts o = { .downtime_ms = 1, .autoconverge = 1, .max_iterations = 100 };
	struct rm_policy p;
	struct rm_policy_state s = { 0 };
	struct rm_policy_input slow = { .sent_bytes = 100 << 20, .duration_ns = 100000000,
					.remaining_bytes = 80 << 20 };

	rm_policy_from_opts(&p, &o);
	cr_assert_eq(rm_policy_decide(&p, &s, &slow), RDMAMIG_SWITCH_NONE);
	cr_assert_eq(s.throttle, 0);
	slow.iteration = 1;
	rm_policy_decide(&p, &s, &slow);
	cr_assert_eq(s.throttle, 20);
	slow.iteration = 2;
	rm_policy_decide(&p, &s, &slow);
	slow.iteration = 3;
	rm_policy_decide(&p, &s, &slow);
	cr_assert_eq(s.throttle, 30);
	struct rm_policy_input fast = slow;
	fast.remaining_bytes = 10 << 20;
	fast.iteration = 4;
	rm_policy_decide(&p, &s, &fast);
	cr_assert_eq(s.throttle, 30, "a shrinking round must not raise the throttle");
}

Test(protocol, hostile_setup_is_refused_with_a_reason)
{
	struct rdmamig_vm_desc d = { .page_size = 4096, .nr_vcpus = 2, .nr_regions = 1,
				     .regions = { { .id = 1, .size = 1 << 20 } } }, out;
	char why[160];
	uint32_t flags;
	uint64_t id;
	size_t len;
	struct rm_mig_setup *s = rm_mig_setup_encode(&d, 0, 42, &len);

	cr_assert_not_null(s);
	cr_assert_eq(rm_mig_setup_decode(s, len, &out, &flags, &id, why, sizeof(why)), 0, "%s", why);
	cr_assert_eq(rm_mig_desc_compare(&d, &out, why, sizeof(why)), 0);
	cr_assert_eq(rm_mig_setup_decode(s, len - 1, &out, &flags, &id, why, sizeof(why)), RDMAMIG_E_PROTO);
	s->nr_regions = htole32(100000);
	cr_assert_eq(rm_mig_setup_decode(s, len, &out, &flags, &id, why, sizeof(why)), RDMAMIG_E_PROTO);
	cr_assert(strstr(why, "100000"), "why: %s", why);
	s->nr_regions = htole32(1);
	s->regions[0].size = htole64(4095);
	cr_assert_eq(rm_mig_setup_decode(s, len, &out, &flags, &id, why, sizeof(why)), RDMAMIG_E_PROTO);
	s->regions[0].size = htole64(1 << 20);
	s->page_size = htole32(12345);
	cr_assert_eq(rm_mig_setup_decode(s, len, &out, &flags, &id, why, sizeof(why)), RDMAMIG_E_PROTO);
	s->page_size = htole32(4096);
	s->version = htole32(99);
	cr_assert_eq(rm_mig_setup_decode(s, len, &out, &flags, &id, why, sizeof(why)), RDMAMIG_E_PROTO);
	cr_assert(strstr(why, "99"), "why: %s", why);
	free(s);

	out = d;
	out.regions[0].size = 2 << 20;
	cr_assert_eq(rm_mig_desc_compare(&d, &out, why, sizeof(why)), -EINVAL);
	cr_assert(strstr(why, "RAM region 0"), "why: %s", why);
}

/* ---- the iterate pass alone: what reaches the transport for a bitmap ---- */

#define RAM_REGIONS 3

/* A VMM whose dirty log is a fixed set of bitmaps, and a transport that
 * records which pages it was asked to write and which dirty_clear() named. */
struct ram_rig {
	struct rm_transport base;	/* first: the rm_tr_* wrappers see this */
	uint64_t pages[RAM_REGIONS];
	uint8_t *ram;
	uint64_t *log[RAM_REGIONS];
	uint64_t *sent[RAM_REGIONS];
	uint64_t *cleared[RAM_REGIONS];
	/* The writes of the current rm_tr_write(), as maximal runs of
	 * consecutive pages: one per range unless two ranges touch. */
	uint64_t segments, seg_idx, seg_end, call, biggest_call;
	bool in_call;
	uint64_t last_clear[RAM_REGIONS];
	bool clear_order_ok, clear_align_ok, sent_uncleared;
};

static bool bit(const uint64_t *bm, uint64_t p)
{
	return (bm[p / 64] >> (p % 64)) & 1;
}

static int rig_describe(void *o, struct rdmamig_vm_desc *d)
{
	struct ram_rig *g = o;
	uint64_t off = 0;

	memset(d, 0, sizeof(*d));
	d->page_size = 4096;
	d->nr_vcpus = 1;
	d->nr_regions = RAM_REGIONS;
	for (unsigned r = 0; r < RAM_REGIONS; r++) {
		d->regions[r] = (struct rdmamig_ram_region){
			.id = 7 + r, .host_addr = g->ram + off, .size = g->pages[r] * 4096,
		};
		off += g->pages[r] * 4096;
	}
	return 0;
}

static long rig_dirty_sync(void *o, const uint64_t **bitmaps)
{
	struct ram_rig *g = o;
	long n = 0;

	for (unsigned r = 0; r < RAM_REGIONS; r++) {
		for (uint64_t p = 0; p < g->pages[r]; p++)
			n += bit(g->log[r], p);
		bitmaps[r] = g->log[r];
	}
	return n;
}

static int rig_dirty_clear(void *o, unsigned r, uint64_t first, uint64_t n)
{
	struct ram_rig *g = o;

	if (first % 64 || (n % 64 && first + n != g->pages[r]) || first + n > g->pages[r])
		g->clear_align_ok = false;
	if (first < g->last_clear[r])
		g->clear_order_ok = false;
	g->last_clear[r] = first + n;
	for (uint64_t p = first; p < first + n && p < g->pages[r]; p++)
		g->cleared[r][p / 64] |= 1ull << (p % 64);
	return 0;
}

static int rig_ok(void *o)
{
	return 0;
}

static void rig_stop(void *o)
{
}

static int rig_save(void *o, void **buf, size_t *len)
{
	return -ENOSYS;
}

static const struct rdmamig_vmm_ops rig_ops = {
	.version = RDMAMIG_VMM_OPS_VERSION,
	.describe = rig_describe,
	.dirty_start = rig_ok,
	.dirty_sync = rig_dirty_sync,
	.dirty_clear = rig_dirty_clear,
	.dirty_stop = rig_stop,
	.pause = rig_ok,
	.resume = rig_ok,
	.save_state = rig_save,
};

static int rig_write(struct rm_transport *t, unsigned idx, uint64_t off, uint64_t len, uint64_t *took,
		     uint64_t deadline)
{
	struct ram_rig *g = (struct ram_rig *)t;
	uint64_t first = off / 4096, n = len / 4096;

	if (!g->in_call || idx != g->seg_idx || first != g->seg_end)
		g->segments++;
	g->in_call = true;
	g->seg_idx = idx;
	g->seg_end = first + n;
	g->call += n;
	for (uint64_t p = first; p < first + n; p++) {
		g->sent[idx][p / 64] |= 1ull << (p % 64);
		if (!bit(g->cleared[idx], p))
			g->sent_uncleared = true;
	}
	*took = len;
	return 0;
}

/* rm_tr_write() ends each call with a flush. */
static int rig_flush(struct rm_transport *t, uint64_t deadline)
{
	struct ram_rig *g = (struct ram_rig *)t;

	if (g->call > g->biggest_call)
		g->biggest_call = g->call;
	g->call = 0;
	g->in_call = false;
	return 0;
}

static int rig_fence(struct rm_transport *t)
{
	return 0;
}

static const struct rm_transport_ops rig_tr_ops = {
	.name = "rig", .write = rig_write, .flush = rig_flush, .fence = rig_fence,
};

Test(ram, iterate_pass_sends_exactly_the_reported_pages_in_maximal_ranges)
{
	/* Region 0: two chunks and a partial word, with runs on every kind of
	 * edge; region 1: all dirty, longer than the range cap; region 2: one
	 * page, the last. */
	struct ram_rig g = { .pages = { 2 * 4096 + 37, 40000, 64 * 3 + 1 },
			     .clear_order_ok = true, .clear_align_ok = true };
	struct rdmamig_opts o = { .role = RDMAMIG_SOURCE, .transport = RDMAMIG_TRANSPORT_TCP, .addr = "rig",
				  .no_auth = 1 };
	uint64_t total = 0, x = 88172645463325252ull, want = 0;
	struct rm_pass pass;
	rdmamig_t *m;

	for (unsigned r = 0; r < RAM_REGIONS; r++)
		total += g.pages[r];
	g.ram = mmap(NULL, total * 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	cr_assert_neq(g.ram, MAP_FAILED);
	for (unsigned r = 0; r < RAM_REGIONS; r++) {
		g.log[r] = calloc(g.pages[r] / 64 + 1, 8);
		g.sent[r] = calloc(g.pages[r] / 64 + 1, 8);
		g.cleared[r] = calloc(g.pages[r] / 64 + 1, 8);
		cr_assert(g.log[r] && g.sent[r] && g.cleared[r]);
	}
	static const uint64_t edges[] = { 0, 63, 64, 127, 60, 61, 62, 65, 66, 4090, 4091, 4092, 4093, 4094,
					  4095, 4096, 4097, 4098, 4159, 4160, 8191, 8192, 8228 };
	for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
		g.log[0][edges[i] / 64] |= 1ull << (edges[i] % 64);
	for (uint64_t w = 70; w < 120; w++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		g.log[0][w] = w % 3 ? x : ~0ull;	/* random words and whole words */
	}
	for (uint64_t p = 0; p < g.pages[1]; p++)
		g.log[1][p / 64] |= 1ull << (p % 64);
	g.log[2][3] = 1;
	for (unsigned r = 0; r < RAM_REGIONS; r++)
		for (uint64_t p = 0; p < g.pages[r]; p++)
			want += bit(g.log[r], p);

	m = rdmamig_new(&o, &rig_ops, &g);
	cr_assert_not_null(m);
	cr_assert_eq(rig_describe(&g, &m->desc), 0);
	cr_assert_eq(rm_ram_setup(m), 0);
	/* A source connection as rm_tr_layout() leaves one, default options;
	 * no control channel (stage 0: the pass sends no progress report). */
	struct rm_region regions[RAM_REGIONS];
	struct rm_transport_opts defaults = { .no_auth = true };

	for (unsigned r = 0; r < RAM_REGIONS; r++)
		regions[r] = (struct rm_region){
			.id = m->desc.regions[r].id, .addr = m->desc.regions[r].host_addr,
			.size = m->desc.regions[r].size,
		};
	g.base.ops = &rig_tr_ops;
	g.base.role = RM_ROLE_SOURCE;
	g.base.nchan = 1;
	cr_assert_eq(rm_tr_opts_fill(&g.base.opts, &defaults), 0);
	cr_assert_eq(rm_tr_set_regions(&g.base, regions, RAM_REGIONS), 0);
	g.base.laid_out = true;
	m->t = &g.base;

	cr_assert_eq(rm_ram_sync(m), (long)want);
	/* Bits past a region's end are the VMM's mistake: never sent. */
	g.log[0][g.pages[0] / 64] |= ~0ull << (g.pages[0] % 64);
	cr_assert_eq(rm_ram_send_pass(m, false, true, &pass), 0);
	g.log[0][g.pages[0] / 64] &= ~(~0ull << (g.pages[0] % 64));

	cr_assert_eq(pass.pages, want, "sent %llu pages of %llu", (unsigned long long)pass.pages,
		     (unsigned long long)want);
	for (unsigned r = 0; r < RAM_REGIONS; r++)
		for (uint64_t w = 0; w < g.pages[r] / 64 + 1; w++)
			cr_assert_eq(g.sent[r][w], g.log[r][w], "region %u word %llu: sent %#llx, dirty %#llx", r,
				     (unsigned long long)w, (unsigned long long)g.sent[r][w],
				     (unsigned long long)g.log[r][w]);
	cr_assert(!g.sent_uncleared, "a page was handed to the transport before dirty_clear named it");
	cr_assert(g.clear_align_ok, "dirty_clear named a range off the 64-page grid");
	cr_assert(g.clear_order_ok, "dirty_clear went backwards or named a range twice");
	cr_assert_eq(g.base.st.ranges, g.segments, "%llu ranges made %llu runs of pages: some continue the "
		     "one before them in the same write", (unsigned long long)g.base.st.ranges,
		     (unsigned long long)g.segments);
	/* Region 1 is one run of 40000 pages, cut where 16 MiB are ready to go:
	 * no write moves more, so progress is reported at least that often on a slow link. */
	cr_assert_leq(g.biggest_call, 4096, "one write of %llu pages", (unsigned long long)g.biggest_call);
	cr_assert_geq(g.biggest_call, 4000, "writes of at most %llu pages: runs cut short",
		      (unsigned long long)g.biggest_call);

	m->t = NULL;
	rdmamig_free(m);
	free(g.base.widx);	/* rm_tr_write()'s scratch */
	for (unsigned r = 0; r < RAM_REGIONS; r++) {
		free(g.log[r]);
		free(g.sent[r]);
		free(g.cleared[r]);
	}
	munmap(g.ram, total * 4096);
}
