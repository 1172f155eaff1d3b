/* MADV_POPULATE_WRITE of 64 MiB: fresh vs after a read of every page (zero
 * page mapped), with and without a thread of the same mm spinning on the
 * other CPU (TLB shootdowns need an IPI to it). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static atomic_int stop;
static void *spin(void *a) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(1, &s); pthread_setaffinity_np(pthread_self(), sizeof(s), &s); while (!atomic_load(&stop)) ; return a; }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv)
{
	size_t sz = 64ul << 20;
	int thp = argc > 1 && atoi(argv[1]);
	cpu_set_t s; CPU_ZERO(&s); CPU_SET(0, &s); sched_setaffinity(0, sizeof(s), &s);
	for (int spinner = 0; spinner < 2; spinner++)
		for (int readfirst = 0; readfirst < 2; readfirst++) {
			char *p = mmap(NULL, sz + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			p = (char *)(((uintptr_t)p + (2 << 20) - 1) & ~((uintptr_t)(2 << 20) - 1));
			madvise(p, sz, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
			volatile uint64_t sum = 0;
			if (readfirst)
				for (size_t o = 0; o < sz; o += 4096) sum += *(volatile char *)(p + o);
			pthread_t th;
			atomic_store(&stop, 0);
			if (spinner) { pthread_create(&th, NULL, spin, NULL); usleep(100000); }
			double t0 = now();
			int r = madvise(p, sz, 23);
			double t = now() - t0;
			if (spinner) { atomic_store(&stop, 1); pthread_join(th, NULL); }
			printf("thp=%d spinner=%d readfirst=%d: populate 64 MiB %.3f s (rc %d)\n", thp, spinner, readfirst, t, r);
			fflush(stdout);
		}
	return 0;
}
