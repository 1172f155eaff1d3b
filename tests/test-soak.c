/*
 * tests/test-soak.c — a short soak (tests/soak.h): 20 migrations back and
 * forth between two long-lived processes, each a new rdmamig_t, every one
 * succeeding with the source's guest state.  After the first round pair
 * (one-time allocations: OpenSSL, malloc arenas, libibverbs), each process's
 * open fds must stay exactly flat and its RSS grow by less than SOAK_RSS_KB.
 * TCP here; RDMA on the bed.  bench/bench-soak.c runs the 100-round figures.
 */
#include <criterion/criterion.h>
#include <sys/mman.h>

#include "tests/soak.h"

#define ROUNDS 20
/* bench-soak: +2.7-4.3 MiB from round 2 to 100, flattening (+8 KiB over the
 * last 10: malloc arenas filling).  A tripwire for leaks of buffer or guest
 * RAM size (a 4 MiB region per round is 72 MiB); valgrind finds the small. */
#define SOAK_RSS_KB 8192

static void soak_case(enum rdmamig_transport tr)
{
	const char *addr = tr == RDMAMIG_TRANSPORT_RDMA ? getenv("RDMAMIG_RXE_ADDR") : "127.0.0.1";
	struct soak *s;
	char why[256] = "";

	if (!addr)
		cr_skip_test("RDMA cases run on the soft-RoCE test bed (make test runs them there)");
	s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(s, MAP_FAILED);
	*s = (struct soak){ .tr = tr, .addr = addr, .rounds = ROUNDS, .region_size = 2 << 20 };
	cr_assert_eq(soak_run(s, why, sizeof(why)), 0, "%s", why);
	for (int me = 0; me < 2; me++) {
		struct soak_proc *p = &s->p[me];

		fprintf(stderr, "soak %s process %d: fds %d -> %d -> %d, RSS %ld -> %ld -> %ld KiB (start, round 2, "
			"round %d)\n", tr == RDMAMIG_TRANSPORT_TCP ? "tcp" : "rdma", me, p->fds[0], p->fds[2],
			p->fds[ROUNDS], p->rss_kb[0], p->rss_kb[2], p->rss_kb[ROUNDS], ROUNDS);
		for (int r = 2; r <= ROUNDS; r++)
			cr_assert_eq(p->fds[r], p->fds[2], "process %d: %d fds after round %d, %d after round 2",
				     me, p->fds[r], r, p->fds[2]);
		/* valgrind's allocator keeps freed blocks aside: RSS says
		 * nothing there (its leak check does). */
		if (getenv("LD_PRELOAD") && strstr(getenv("LD_PRELOAD"), "vgpreload")) {
			fprintf(stderr, "soak: under valgrind: RSS not bounded, fds are\n");
			continue;
		}
		cr_assert_lt(p->rss_kb[ROUNDS] - p->rss_kb[2], SOAK_RSS_KB,
			     "process %d: RSS grew %ld KiB over %d migrations", me,
			     p->rss_kb[ROUNDS] - p->rss_kb[2], ROUNDS - 2);
	}
	munmap(s, sizeof(*s));
}

Test(soak_tcp, twenty_migrations_fds_flat_rss_bounded, .timeout = 240)
{
	soak_case(RDMAMIG_TRANSPORT_TCP);
}

Test(soak_rdma, twenty_migrations_fds_flat_rss_bounded, .timeout = 240)
{
	soak_case(RDMAMIG_TRANSPORT_RDMA);
}
