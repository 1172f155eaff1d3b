/*
 * tests/test-migration.h — what the engine suites share: a source and a
 * destination (struct side) run by rdmamig_run() in threads over the fake
 * VMM, their setup and teardown, the checks that a source guest runs on,
 * and BOTH(), which registers a case for TCP and for RDMA.  Included by
 * test-migration.c and test-migration-handover.c.  Helpers are static inline
 * so a suite that leaves one unused still builds.
 */
#ifndef RDMAMIG_TEST_MIGRATION_H
#define RDMAMIG_TEST_MIGRATION_H
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

static inline void log_to_stderr(void *o, enum rdmamig_log_level l, const char *msg)
{
	if (l <= RDMAMIG_LOG_WARN || getenv("RDMAMIG_TEST_VERBOSE"))
		fprintf(stderr, "  [%s] %s\n", (const char *)o, msg);
}

static inline void *run_side(void *arg)
{
	struct side *s = arg;

	s->rc = rdmamig_run(s->m);
	rdmamig_get_stats(s->m, &s->stats);
	atomic_store(&s->done, true);
	return NULL;
}

static inline enum rdmamig_transport want_transport(enum rdmamig_transport t)
{
	if (t == RDMAMIG_TRANSPORT_RDMA && !getenv("RDMAMIG_RXE_ADDR"))
		cr_skip_test("RDMA cases run on the soft-RoCE test bed (make test runs them there)");
	return t;
}

static inline const char *bed_addr(enum rdmamig_transport t)
{
	return t == RDMAMIG_TRANSPORT_RDMA ? getenv("RDMAMIG_RXE_ADDR") : "127.0.0.1";
}

/* The next pair_setup()'s destination cap on guest RAM (0: the default). */
static uint64_t next_max_mem;

/* Destination listening on an ephemeral port; source options ready; both
 * sides with timeout_ms. */
static inline void pair_setup_timeout(struct side *src, struct side *dst, enum rdmamig_transport tr,
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

static inline void pair_setup(struct side *src, struct side *dst, enum rdmamig_transport tr,
		       uint64_t region_size, uint64_t rate)
{
	pair_setup_timeout(src, dst, tr, region_size, rate, SILENCE_MS);
}

static inline void start_source(struct side *src)
{
	src->m = rdmamig_new(&src->opts, &fake_ops, &src->vmm);
	cr_assert_not_null(src->m);
	cr_assert_eq(pthread_create(&src->thread, NULL, run_side, src), 0);
}

static inline void pair_join(struct side *src, struct side *dst)
{
	pthread_join(src->thread, NULL);
	pthread_join(dst->thread, NULL);
}

static inline void pair_free(struct side *src, struct side *dst)
{
	rdmamig_free(src->m);
	rdmamig_free(dst->m);
	fake_vmm_destroy(&src->vmm);
	fake_vmm_destroy(&dst->vmm);
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_ERR);
}

/* The source guest still runs: its counter moves. */
static inline void assert_source_runs(struct side *src)
{
	uint64_t c0 = atomic_load(&src->vmm.counter);

	cr_assert(!atomic_load(&src->vmm.paused), "source guest left paused");
	for (int i = 0; i < 6000 && atomic_load(&src->vmm.counter) == c0; i++)
		usleep(5000);
	cr_assert_gt(atomic_load(&src->vmm.counter), c0, "source guest does not run");
	cr_assert_eq(src->vmm.dirty_stop_calls, 1, "dirty logging left on");
}

/* Cancelled before dirty logging started: the guest ran throughout. */
static inline void assert_source_runs_no_logging(struct side *src)
{
	uint64_t c0 = atomic_load(&src->vmm.counter);

	cr_assert(!atomic_load(&src->vmm.paused), "source guest left paused");
	for (int i = 0; i < 200 && atomic_load(&src->vmm.counter) == c0; i++)
		usleep(5000);
	cr_assert_gt(atomic_load(&src->vmm.counter), c0, "source guest does not run");
}

#define BOTH(name, ...)                                                                    \
	Test(migration_tcp, name, .timeout = 240) { __VA_ARGS__(RDMAMIG_TRANSPORT_TCP); }   \
	Test(migration_rdma, name, .timeout = 120) { __VA_ARGS__(RDMAMIG_TRANSPORT_RDMA); }

#endif
