/*
 * bench/bench-soak.c — issue 11's soak: N migrations (default 100) back and
 * forth between two long-lived processes over the library (tests/soak.h),
 * on TCP or RDMA, printing each process's RSS and open fds before the first
 * migration, after the first round pair, every 10 rounds, and at the end.
 *
 *   bench-soak [--transport tcp|rdma] [--addr A] [--rounds N] [--mem MiB]
 *
 * RDMA's address defaults to RDMAMIG_RXE_ADDR (the soft-RoCE bed's).  Exit
 * 0 when every migration succeeded with the source's state.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/log.h"
#include "tests/soak.h"

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "transport", required_argument, NULL, 't' }, { "addr", required_argument, NULL, 'a' },
		{ "rounds", required_argument, NULL, 'r' }, { "mem", required_argument, NULL, 'm' },
		{ 0 },
	};
	struct soak *s = mmap(NULL, sizeof(*s), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	const char *addr = NULL;
	char why[256] = "";
	int c, rounds = 100;
	unsigned mem = 8;
	uint64_t t0;

	if (s == MAP_FAILED)
		return 1;
	setvbuf(stdout, NULL, _IOLBF, 0);	/* a bench cut short keeps what it printed */
	memset(s, 0, sizeof(*s));
	s->tr = RDMAMIG_TRANSPORT_TCP;
	while ((c = getopt_long(argc, argv, "t:a:r:m:", lo, NULL)) != -1) {
		switch (c) {
		case 't': s->tr = strcmp(optarg, "rdma") ? RDMAMIG_TRANSPORT_TCP : RDMAMIG_TRANSPORT_RDMA; break;
		case 'a': addr = optarg; break;
		case 'r': rounds = atoi(optarg); break;
		case 'm': mem = (unsigned)atoi(optarg); break;
		default:
			fprintf(stderr, "usage: %s [--transport tcp|rdma] [--addr A] [--rounds N] [--mem MiB]\n",
				argv[0]);
			return 2;
		}
	}
	if (!addr)
		addr = s->tr == RDMAMIG_TRANSPORT_RDMA ? getenv("RDMAMIG_RXE_ADDR") : "127.0.0.1";
	if (!addr || rounds < 2 || rounds > SOAK_MAX_ROUNDS || mem < 2) {
		fprintf(stderr, "bench-soak: need an address (RDMAMIG_RXE_ADDR for rdma), 2..%d rounds, "
			"--mem >= 2\n", SOAK_MAX_ROUNDS);
		return 2;
	}
	s->addr = addr;
	s->rounds = rounds;
	s->region_size = (uint64_t)mem / 2 << 20;
	t0 = rm_now_ns();
	if (soak_run(s, why, sizeof(why))) {
		fprintf(stderr, "bench-soak: %s\n", why);
		return 1;
	}
	printf("bench-soak: %d migrations of a %u MiB guest over %s between two processes in %.1f s\n",
	       rounds, mem, s->tr == RDMAMIG_TRANSPORT_TCP ? "TCP" : "RDMA", (rm_now_ns() - t0) / 1e9);
	printf("%-8s %-10s %-10s %-10s %-10s\n", "after", "fds p0", "fds p1", "RSS p0 KiB", "RSS p1 KiB");
	for (int r = 0; r <= rounds; r++)
		if (r <= 2 || r % 10 == 0 || r == rounds)
			printf("%-8d %-10d %-10d %-10ld %-10ld\n", r, s->p[0].fds[r], s->p[1].fds[r],
			       s->p[0].rss_kb[r], s->p[1].rss_kb[r]);
	for (int me = 0; me < 2; me++)
		printf("process %d: fds %+d, RSS %+ld KiB from round 2 to round %d\n", me,
		       s->p[me].fds[rounds] - s->p[me].fds[2], s->p[me].rss_kb[rounds] - s->p[me].rss_kb[2],
		       rounds);
	return 0;
}
