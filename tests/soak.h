/*
 * tests/soak.h — migrations back and forth between two long-lived processes
 * (fork), each with one fake VMM (tests/fake-vmm.h) for its whole life: the
 * guest goes 0 -> 1 -> 0 ..., each process the destination one round and
 * the source the next, a new rdmamig_t each time.  Each process records its
 * RSS and open fd count before the first round and after every round, in
 * memory shared with the caller.  Used by tests/test-soak.c (a short soak
 * that must stay flat) and bench/bench-soak.c (the 100-round figures).
 */
#ifndef RDMAMIG_TESTS_SOAK_H
#define RDMAMIG_TESTS_SOAK_H

#include <dirent.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fake-vmm.h"
#include "migration/engine.h"

#define SOAK_MAX_ROUNDS 1000
#define SOAK_KEY "the soak's pre-shared key, 32 b"

struct soak_proc {
	atomic_int port, port_round;		/* destination: listening for this round */
	atomic_int rounds_done;
	int rc[SOAK_MAX_ROUNDS];
	uint64_t counter_at_pause[SOAK_MAX_ROUNDS];	/* source: its guest's state sent */
	uint64_t loaded[SOAK_MAX_ROUNDS];		/* destination: the state it loaded */
	long rss_kb[SOAK_MAX_ROUNDS + 1];	/* [0] before the first round */
	int fds[SOAK_MAX_ROUNDS + 1];
};

struct soak {
	enum rdmamig_transport tr;
	const char *addr;
	int rounds;
	uint64_t region_size;
	struct soak_proc p[2];
};

static inline long soak_rss_kb(void)
{
	long pages = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "re");

	if (f) {
		if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
			rss = 0;
		fclose(f);
	}
	return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

static inline int soak_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n - 1;	/* the directory's own */
}

struct soak_run {
	rdmamig_t *m;
	int rc;
};

static inline void *soak_run_thread(void *arg)
{
	struct soak_run *r = arg;

	r->rc = rdmamig_run(r->m);
	return NULL;
}

static inline bool soak_wait(atomic_int *v, int at_least, int ms)
{
	for (int i = 0; i < ms && atomic_load(v) < at_least; i++)
		usleep(1000);
	return atomic_load(v) >= at_least;
}

static inline void soak_log(void *o, enum rdmamig_log_level l, const char *msg)
{
	if (l <= RDMAMIG_LOG_WARN)	/* a failed round says why */
		fprintf(stderr, "  [soak process %d] %s\n", (int)(intptr_t)o, msg);
}

/* One process's life: every round, source or destination in turn. */
static inline int soak_child(struct soak *s, int me)
{
	struct soak_proc *p = &s->p[me], *o = &s->p[!me];
	struct fake_vmm v;
	char port[16];

	rdmamig_set_log(soak_log, (void *)(intptr_t)me, RDMAMIG_LOG_WARN);
	if (fake_vmm_init(&v, 2, s->region_size, 2000))
		return 1;
	if (me == 0) {
		if (fake_vmm_start(&v))
			return 1;
	} else {
		atomic_store(&v.paused, true);
		v.thread_started = pthread_create(&v.thread, NULL, fake_guest, &v) == 0;
	}
	p->rss_kb[0] = soak_rss_kb();
	p->fds[0] = soak_fds();
	for (int r = 0; r < s->rounds; r++) {
		bool src = (r % 2 == 0) == (me == 0);
		struct rdmamig_opts opts = {
			.role = src ? RDMAMIG_SOURCE : RDMAMIG_DESTINATION, .transport = s->tr,
			.addr = s->addr, .port = "0", .timeout_ms = 10000, .channels = 2,
			.psk = SOAK_KEY, .psk_len = sizeof(SOAK_KEY) - 1, .max_mem = 1ull << 30,
		};
		struct soak_run run = { 0 };
		pthread_t th;

		if (src) {
			if (!soak_wait(&o->port_round, r + 1, 60000))
				return 2;
			snprintf(port, sizeof(port), "%d", atomic_load(&o->port));
			opts.port = port;
			run.m = rdmamig_new(&opts, &fake_ops, &v);
			if (!run.m)
				return 3;
			run.rc = rdmamig_run(run.m);
			p->counter_at_pause[r] = atomic_load(&v.counter);
		} else {
			int lp = -1;

			run.m = rdmamig_new(&opts, &fake_ops, &v);
			if (!run.m || pthread_create(&th, NULL, soak_run_thread, &run))
				return 3;
			for (int i = 0; i < 60000 && (lp = rdmamig_listen_port(run.m)) <= 0; i++)
				usleep(1000);
			atomic_store(&p->port, lp);
			atomic_store(&p->port_round, r + 1);
			pthread_join(th, NULL);
			p->loaded[r] = v.loaded_counter;
		}
		p->rc[r] = run.rc;
		rdmamig_free(run.m);
		atomic_store(&p->rounds_done, r + 1);
		if (!soak_wait(&o->rounds_done, r + 1, 120000))
			return 4;
		p->rss_kb[r + 1] = soak_rss_kb();
		p->fds[r + 1] = soak_fds();
		if (run.rc)
			return 5;
	}
	fake_vmm_destroy(&v);
	return 0;
}

/* Run the soak in two child processes; 0 when both lived through every
 * round (s->p[] holds the figures), else what went wrong in why. */
static inline int soak_run(struct soak *s, char *why, size_t whylen)
{
	pid_t pid[2];
	int st[2], err = 0;

	for (int me = 0; me < 2; me++) {
		pid[me] = fork();
		if (pid[me] == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);	/* not left behind by a killed run */
			_exit(soak_child(s, me));
		}
	}
	for (int me = 0; me < 2; me++) {
		waitpid(pid[me], &st[me], 0);
		if (!WIFEXITED(st[me]) || WEXITSTATUS(st[me])) {
			snprintf(why, whylen, "process %d ended with status %#x after %d rounds (rc %d)", me,
				 st[me], atomic_load(&s->p[me].rounds_done),
				 s->p[me].rounds_done ? s->p[me].rc[s->p[me].rounds_done - 1] : 0);
			err = -1;
		}
	}
	for (int r = 0; !err && r < s->rounds; r++) {
		int src = r % 2 == 0 ? 0 : 1;

		if (s->p[!src].loaded[r] != s->p[src].counter_at_pause[r]) {
			snprintf(why, whylen, "round %d: the destination loaded guest state %llu, the source "
				 "paused at %llu", r, (unsigned long long)s->p[!src].loaded[r],
				 (unsigned long long)s->p[src].counter_at_pause[r]);
			err = -1;
		}
	}
	return err;
}

#endif
