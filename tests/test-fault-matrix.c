/*
 * tests/test-fault-matrix.c — issue 11's fault matrix: every step a
 * migration meets × every fault (tests/fault-matrix.h) × both transports,
 * each case checked against the handover's rules: never two running copies;
 * exactly one runnable at the end (or the process holding the only copy was
 * killed), with the source's unknown-outcome window saying --recover and the
 * recovery then leaving exactly one; the RAM of the side that runs equals the
 * source's at its pause; the exit codes the CLI would give.
 *
 * The level: each case is two processes (fork) running librdmamig over the
 * fake VMM (tests/fake-vmm.h), whose pause() and resume() record the run
 * state of both copies in memory shared with the test.  "Two running
 * copies" is observed, not inferred: a resume() that finds the other copy
 * running marks it at that instant.  Signals reach real processes; TCP link
 * faults go through a small proxy in the test that resets or black-holes
 * the connections it carries (new connections, as after a re-route, pass);
 * RDMA's link fault downs rxe's netdev (RDMAMIG_RXE_NETDEV) until the source
 * has given up on the link.
 *
 * Every case reaches its step by a pause point (RDMAMIG_FAULT), strikes
 * while the side is provably held there, and waits on events (a side's
 * return, a line in its log), never on the migration being fast or slow.
 * Cases run several at a time (they mostly wait out silence bounds), each
 * in its own processes, ports and files.
 */
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/utsname.h>
#include <semaphore.h>
#include <sys/wait.h>

#include "tests/fault-matrix.h"
#include "tests/fault-proxy.h"
#include "tests/test-migration.h"

/* RDMAMIG_MATRIX_SCALE multiplies the bounds below, for valgrind (whose
 * serialised threads can starve keep-alives for longer than a second). */
static int mx_scale = 1;
#define MX_TIMEOUT_MS (1000 * mx_scale)		/* silence bound, both sides */
#define MX_SRC_RECOVER_MS (2500u * mx_scale)	/* the source asks for this long */
/* The destination answers for 2x this.  It must outlast a source that
 * notices the loss up to one silence bound after it, asks for its whole
 * window, and is then asked again by the test (as an operator would):
 * (1 + 2.5) s x scale and a connect, well inside 6 s x scale.  Every cell
 * whose source is dead or done waits it out whole: no longer than that. */
#define MX_DST_RECOVER_MS (3000u * mx_scale)
#define MX_REGION (2 * MiB)
#define MX_LOG 12288
#define MX_WORKERS 6			/* cases at a time on the host */
#define MX_BED_WORKERS 4		/* and in the nested bed, */
#define MX_BED_SETUPS 2			/* of which this many on their way to the step */
#define MX_WAIT_MS (40000 * mx_scale)	/* bound on any one wait of a case */
/* How often the test and each side's main loop look for what they wait
 * for: far below every bound a case checks, and few enough wakeups (log
 * searches, in the test) that a dozen idle sides do not load the nested
 * bed, where each wakeup costs an emulated timer interrupt. */
#define MX_POLL_US 10000

enum { VM_NONE, VM_RUN, VM_PAUSED, VM_DEAD };
enum { CMD_NONE, CMD_RECOVER, CMD_EXIT };
enum { SRC, DST };

/* One side, in memory shared between the test and the side's process. */
struct mx_peer {
	pid_t pid;
	int me;					/* SRC or DST, for the log */
	atomic_int vm;				/* VM_*: observed by pause/resume */
	atomic_int pauses, resumes;
	uint64_t pause_digest, pause_counter;	/* at pause() */
	uint64_t resume_digest;			/* at resume(), before it runs */
	uint64_t loaded_counter;
	atomic_uint_fast64_t counter;		/* the guest's progress, mirrored */
	atomic_int port;			/* destination: its listener */
	atomic_int done, rc;
	atomic_int cmd, recovered, recover_rc;
	atomic_uint log_len;
	char log[MX_LOG];
};

struct mx_shared {
	struct mx_peer p[2];
	atomic_int two_running;		/* a resume() found the other copy running */
};

struct mx_vmm {
	struct fake_vmm v;		/* first: fake_* callbacks take it */
	struct mx_shared *sh;
	int me;
};

static uint64_t ram_digest(const struct fake_vmm *v)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (unsigned r = 0; r < v->nregions; r++) {
		const uint64_t *w = (const uint64_t *)v->ram[r];

		for (uint64_t i = 0; i < v->region_size / 8; i++)
			h = (h ^ w[i]) * 0x100000001b3ull;
	}
	return h;
}

static int mx_pause(void *o)
{
	struct mx_vmm *x = o;
	struct mx_peer *me = &x->sh->p[x->me];
	int err = fake_pause(&x->v);

	me->pause_counter = atomic_load(&x->v.counter);
	me->pause_digest = ram_digest(&x->v);
	atomic_store(&me->vm, VM_PAUSED);
	atomic_fetch_add(&me->pauses, 1);
	return err;
}

static int mx_resume(void *o)
{
	struct mx_vmm *x = o;
	struct mx_peer *me = &x->sh->p[x->me];

	me->resume_digest = ram_digest(&x->v);
	me->loaded_counter = x->v.loaded_counter;
	atomic_store(&me->vm, VM_RUN);
	if (atomic_load(&x->sh->p[!x->me].vm) == VM_RUN)
		atomic_store(&x->sh->two_running, 1);
	atomic_fetch_add(&me->resumes, 1);
	return fake_resume(&x->v);
}

static int mx_describe(void *o, struct rdmamig_vm_desc *d) { return fake_describe(o, d); }
static int mx_dirty_start(void *o) { return fake_dirty_start(o); }
static long mx_dirty_sync(void *o, const uint64_t **b) { return fake_dirty_sync(o, b); }
static void mx_dirty_stop(void *o) { fake_dirty_stop(o); }
static int mx_save(void *o, void **b, size_t *l) { return fake_save_state(o, b, l); }
static int mx_load(void *o, const void *b, size_t l) { return fake_load_state(o, b, l); }

static const struct rdmamig_vmm_ops mx_ops = {
	.version = RDMAMIG_VMM_OPS_VERSION,
	.describe = mx_describe,
	.dirty_start = mx_dirty_start,
	.dirty_sync = mx_dirty_sync,
	.dirty_stop = mx_dirty_stop,
	.pause = mx_pause,
	.resume = mx_resume,
	.save_state = mx_save,
	.load_state = mx_load,
};

/* The side's log, into shared memory for the test to read. */
static void mx_log(void *o, enum rdmamig_log_level l, const char *msg)
{
	struct mx_peer *p = o;
	size_t n = strlen(msg);
	unsigned at = atomic_fetch_add(&p->log_len, (unsigned)n + 1);

	(void)l;
	if (at + n + 1 < MX_LOG) {
		memcpy(p->log + at, msg, n);
		p->log[at + n] = '\n';
	}
	if (getenv("RDMAMIG_TEST_VERBOSE"))
		fprintf(stderr, "  [%d %s] %s\n", (int)getpid(), p->me == DST ? "dst" : "src", msg);
}

struct mx_run {
	rdmamig_t *m;
	struct mx_peer *p;
};

static void *mx_run_thread(void *arg)
{
	struct mx_run *r = arg;

	atomic_store(&r->p->rc, rdmamig_run(r->m));
	atomic_store(&r->p->done, 1);
	return NULL;
}

/* A side's process: run the migration, then keep the guest as it is
 * (running, paused or released) until the test says exit, asking for the
 * outcome when told to, as an operator's `rdmamig --recover` does. */
static void __attribute__((noreturn))
mx_child(struct mx_shared *sh, int me, enum rdmamig_transport tr, const char *fault, int port)
{
	struct mx_peer *p = &sh->p[me];
	struct mx_vmm x = { .sh = sh, .me = me };
	struct rdmamig_opts o = {
		.role = me == SRC ? RDMAMIG_SOURCE : RDMAMIG_DESTINATION, .transport = tr,
		.addr = bed_addr(tr), .timeout_ms = MX_TIMEOUT_MS, .channels = 2,
		.psk = KEY, .psk_len = sizeof(KEY) - 1, .max_mem = 64 * MiB,
		.recover_ms = me == SRC ? MX_SRC_RECOVER_MS : MX_DST_RECOVER_MS,
	};
	struct mx_run r = { .p = p };
	char portstr[16];
	bool cancelled = false;
	pthread_t th;

	/* A test killed at its bound takes its sides with it: a destination
	 * nobody reached would listen on for ever. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (fault)
		setenv(RM_FAULT_ENV, fault, 1);
	else
		unsetenv(RM_FAULT_ENV);
	snprintf(portstr, sizeof(portstr), "%d", port);
	o.port = portstr;
	rdmamig_set_log(mx_log, p, RDMAMIG_LOG_INFO);
	if (fake_vmm_init(&x.v, 2, MX_REGION, 2000))
		_exit(90);
	if (me == SRC) {
		if (fake_vmm_start(&x.v))
			_exit(91);
		atomic_store(&p->vm, VM_RUN);
	} else {
		/* The destination's guest runs only once resumed. */
		atomic_store(&x.v.paused, true);
		x.v.thread_started = pthread_create(&x.v.thread, NULL, fake_guest, &x.v) == 0;
	}
	r.m = rdmamig_new(&o, &mx_ops, &x);
	if (!r.m || pthread_create(&th, NULL, mx_run_thread, &r))
		_exit(92);
	for (;;) {
		int cmd = atomic_load(&p->cmd);

		if (me == DST && atomic_load(&p->port) <= 0)
			atomic_store(&p->port, rdmamig_listen_port(r.m));
		atomic_store(&p->counter, atomic_load(&x.v.counter));
		if (cmd == CMD_EXIT && atomic_load(&p->done))
			break;
		if (cmd == CMD_EXIT && !cancelled) {	/* e.g. a destination no source reached */
			rdmamig_cancel(r.m);
			cancelled = true;
		}
		if (cmd == CMD_RECOVER && atomic_load(&p->done)) {
			atomic_store(&p->recover_rc, rdmamig_recover(r.m));
			atomic_store(&p->cmd, CMD_NONE);
			atomic_store(&p->recovered, 1);
		}
		usleep(MX_POLL_US);
	}
	pthread_join(th, NULL);
	rdmamig_free(r.m);
	fake_vmm_destroy(&x.v);
	_exit(0);
}

/* ---- one case ---- */

struct mx_case {
	enum rdmamig_transport tr;
	enum mx_step step;
	enum mx_fault fault;
	char why[600];			/* empty: passed */
	char seen[96];			/* what came of it, for the log */
	double secs;
	int idx;			/* names its files */
};

struct mx_ctx {
	struct mx_case *c;
	struct mx_shared *sh;
	struct proxy px;
	bool px_on;
	char hold[160], mark[160];
	bool stopped[2];
	int exit_code[2];		/* the child's own exit; -1 killed */
	bool reaped[2];
};

#define FAIL(ctx, ...) do { if (!(ctx)->c->why[0]) snprintf((ctx)->c->why, sizeof((ctx)->c->why), __VA_ARGS__); } while (0)

static uint64_t ms_now(void)
{
	return rm_now_ns() / 1000000ull;
}

static bool log_has(struct mx_peer *p, unsigned from, const char *what)
{
	unsigned len = atomic_load(&p->log_len);
	char tmp[MX_LOG + 1];

	if (len > MX_LOG)
		len = MX_LOG;
	if (from >= len)
		return false;
	memcpy(tmp, p->log + from, len - from);
	tmp[len - from] = 0;
	return strstr(tmp, what) != NULL;
}

/* Wait until cond() or ms pass; true if it came. */
#define WAIT_UNTIL(ms, cond) ({ uint64_t e_ = ms_now() + (ms); bool ok_;	\
	while (!(ok_ = (cond)) && ms_now() < e_) {				\
		usleep(MX_POLL_US);						\
	}									\
	ok_; })

static pid_t mx_fork(struct mx_ctx *x, int me, const char *fault, int port)
{
	pid_t pid = fork();

	if (pid == 0)
		mx_child(x->sh, me, x->c->tr, fault, port);
	x->sh->p[me].pid = pid;
	return pid;
}

static void mx_reap(struct mx_ctx *x, int me, bool block)
{
	int st;

	if (x->reaped[me] || x->sh->p[me].pid <= 0)
		return;
	if (waitpid(x->sh->p[me].pid, &st, block ? 0 : WNOHANG) == x->sh->p[me].pid) {
		x->reaped[me] = true;
		x->exit_code[me] = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	}
}

/*
 * The bed's kernel can wedge a process that tears down an RDMA connection:
 * Linux 6.1's ib_cm waits, uninterruptibly, for the send completion of the
 * DREQ it posted, which rxe never gives once its netdev has gone down
 * under traffic (the VM console then says "cm_destroy_id_wait_timeout ...
 * state 11" every 10 s; 2 of the 11 bed matrix runs once its bounds were
 * 6 s, once in ~30 before, all in the link-down cells).  SIGKILL does not
 * end such a process, and rxe cannot be replaced while it holds the device.
 * Set once seen: the cases after it fail at once instead of each waiting
 * on a bed that cannot work.
 */
static atomic_int mx_wedged;

/* Where a process's threads wait in the kernel: each thread's wchan, and
 * the top of the first kernel stack that reads (root only). */
static void kernel_waits(pid_t pid, char *buf, size_t n)
{
	char path[320], line[128];
	size_t at = 0;
	bool stack = false;
	DIR *d;
	struct dirent *e;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	buf[0] = 0;
	d = opendir(path);
	if (!d)
		return;
	while ((e = readdir(d)) && at + 1 < n) {
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/wchan", (int)pid, e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(line, sizeof(line), f) && strcmp(line, "0"))
			at += (size_t)snprintf(buf + at, n - at, "%sthread %s in %s", at ? "; " : "", e->d_name, line);
		fclose(f);
		if (stack || at + 1 >= n)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/stack", (int)pid, e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		for (int k = 0; k < 4 && fgets(line, sizeof(line), f) && at + 1 < n; k++) {
			char *nl = strchr(line, '\n'), *fn = strstr(line, "] ");

			if (nl)
				*nl = 0;
			at += (size_t)snprintf(buf + at, n - at, "%s%s", k ? " < " : " (", fn ? fn + 2 : line);
			stack = true;
		}
		if (stack && at + 1 < n)
			at += (size_t)snprintf(buf + at, n - at, ")");
		fclose(f);
	}
	closedir(d);
}

/* Reap side me, sent SIGKILL: bounded.  A process that outlives it is
 * blocked in the kernel: say where, give it up, and mark the bed wedged. */
static bool mx_reap_killed(struct mx_ctx *x, int me)
{
	char where[300];

	if (WAIT_UNTIL(10000 * mx_scale, (mx_reap(x, me, false), x->reaped[me])))
		return true;
	kernel_waits(x->sh->p[me].pid, where, sizeof(where));
	FAIL(x, "%s (pid %d) still there %d s after SIGKILL, blocked in the kernel: %s",
	     me == SRC ? "src" : "dst", (int)x->sh->p[me].pid, 10 * mx_scale, where[0] ? where : "(no wchan)");
	atomic_store(&mx_wedged, 1);
	x->reaped[me] = true;		/* given up: it cannot be waited for */
	x->exit_code[me] = -1;
	return false;
}

/* Run a shell command for the bed (ip, rdma), bounded: a command the
 * wedged kernel holds (`rdma link delete` waits for the wedged process's
 * ids) must not hold the suite.  Its exit status, or -1. */
static int mx_sh(struct mx_ctx *x, const char *cmd)
{
	extern char **environ;
	char *argv[] = { "sh", "-c", (char *)cmd, NULL };
	pid_t pid;
	int st = 0;
	bool done;

	if (posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ))
		return -1;
	done = WAIT_UNTIL(30000 * mx_scale, waitpid(pid, &st, WNOHANG) == pid);
	if (!done) {
		FAIL(x, "'%s' still running after %d s: the bed's kernel is wedged (see its console)", cmd,
		     30 * mx_scale);
		atomic_store(&mx_wedged, 1);
		return -1;
	}
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void mx_kill(struct mx_ctx *x, int me)
{
	kill(x->sh->p[me].pid, SIGKILL);
	mx_reap_killed(x, me);
	atomic_store(&x->sh->p[me].vm, VM_DEAD);	/* its copy is gone with it */
}

static void mx_cont(struct mx_ctx *x, int me)
{
	if (x->stopped[me]) {
		kill(x->sh->p[me].pid, SIGCONT);
		x->stopped[me] = false;
	}
}

static bool alive(struct mx_ctx *x, int me)
{
	return atomic_load(&x->sh->p[me].vm) != VM_DEAD;
}

/* A transport failure the held side has seen since unsigned mark. */
static bool saw_loss(struct mx_peer *p, unsigned mark)
{
	return log_has(p, mark, "transport tcp: ") || log_has(p, mark, "transport rdma: ") ||
	       log_has(p, mark, "timed out") || log_has(p, mark, "peer");
}

/* The process is in group stop ('T' in /proc/PID/stat). */
static bool proc_stopped(pid_t pid)
{
	char path[64], buf[256], *p;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return false;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] == 'T';
}

static void link_down(struct mx_ctx *x, bool down)
{
	char cmd[128], ndev[64] = "";
	const char *dev = getenv("RDMAMIG_RXE_NETDEV");

	if (x->c->tr == RDMAMIG_TRANSPORT_TCP) {
		if (down)
			px_order(&x->px, x->c->fault == MX_LINK_RESET ? 1 : 2);
		return;
	}
	if (!dev && getenv("RDMAMIG_RXE_DEV")) {	/* the test VM names the device only */
		FILE *f;

		snprintf(cmd, sizeof(cmd), "/sys/class/infiniband/%s/ports/1/gid_attrs/ndevs/0",
			 getenv("RDMAMIG_RXE_DEV"));
		f = fopen(cmd, "r");
		if (f && fgets(ndev, sizeof(ndev), f)) {
			ndev[strcspn(ndev, "\n")] = 0;
			dev = ndev;
		}
		if (f)
			fclose(f);
	}
	snprintf(cmd, sizeof(cmd), "ip link set %s %s", dev ? dev : "?", down ? "down" : "up");
	if (!dev || mx_sh(x, cmd))
		FAIL(x, "%s failed", cmd);
}

static void mx_strike(struct mx_ctx *x, int held)
{
	struct mx_case *c = x->c;
	int peer = !held;
	unsigned mark = atomic_load(&x->sh->p[held].log_len);

	switch (c->fault) {
	case MX_DELAY_IN:
		usleep(MX_TIMEOUT_MS * 1000 / 2);
		unlink(x->hold);
		break;
	case MX_DELAY_PAST:
		usleep(MX_TIMEOUT_MS * 1000 * 3);
		unlink(x->hold);
		break;
	case MX_CUT:
	case MX_DROP:
		break;		/* struck by the side itself */
	case MX_KILL_HELD:
		mx_kill(x, held);
		unlink(x->hold);
		break;
	case MX_KILL_PEER:
		mx_kill(x, peer);
		/* The held side sees its peer die before it goes on: what it
		 * does next must not depend on when it happens to notice. */
		if (mx_steps[c->step].link && !WAIT_UNTIL(10000, saw_loss(&x->sh->p[held], mark)))
			FAIL(x, "the held side never noticed its peer's death");
		unlink(x->hold);
		break;
	case MX_STOP_HELD:
	case MX_STOP_PEER: {
		int t = c->fault == MX_STOP_HELD ? held : peer;

		kill(x->sh->p[t].pid, SIGSTOP);
		x->stopped[t] = true;
		/* kill() returns before the stop lands: see it land first. */
		if (!WAIT_UNTIL(10000, proc_stopped(x->sh->p[t].pid)))
			FAIL(x, "SIGSTOP did not stop %s", t == SRC ? "src" : "dst");
		unlink(x->hold);
		break;
	}
	case MX_LINK_RESET:
		link_down(x, true);
		if (!WAIT_UNTIL(10000, saw_loss(&x->sh->p[held], mark)))
			FAIL(x, "the held side never noticed the reset");
		unlink(x->hold);
		break;
	case MX_LINK_DOWN:
		link_down(x, true);
		unlink(x->hold);
		break;
	default:
		break;
	}
}

/* Settle: continue a stopped side once the other has given up, bring a
 * downed link back once the source has, and ask for the outcome as an
 * operator would when the source says it is unknown. */
static void mx_settle(struct mx_ctx *x)
{
	struct mx_peer *s = &x->sh->p[SRC], *d = &x->sh->p[DST];
	bool link_is_down = x->c->fault == MX_LINK_DOWN && x->c->tr == RDMAMIG_TRANSPORT_RDMA &&
			    mx_steps[x->c->step].link;
	bool asked = false;
	uint64_t end = ms_now() + MX_WAIT_MS;

	while (ms_now() < end) {
		bool sd = !alive(x, SRC) || atomic_load(&s->done);
		bool dd = !alive(x, DST) || atomic_load(&d->done);
		bool d_serving = log_has(d, 0, "answering a recovering source");

		if (link_is_down && (sd || log_has(s, 0, "the answer is lost"))) {
			link_down(x, false);
			link_is_down = false;
		}
		if (x->stopped[SRC] && (dd || d_serving))
			mx_cont(x, SRC);
		if (x->stopped[DST] && sd)
			mx_cont(x, DST);
		if (sd && alive(x, SRC) && atomic_load(&s->rc) == RDMAMIG_E_INDOUBT && !asked &&
		    !x->stopped[DST] && alive(x, DST) && (dd || d_serving)) {
			atomic_store(&s->cmd, CMD_RECOVER);
			asked = true;
		}
		if (sd && dd && !x->stopped[SRC] && !x->stopped[DST] && !link_is_down &&
		    (!asked || atomic_load(&s->recovered)))
			return;
		usleep(MX_POLL_US);
	}
	FAIL(x, "did not settle within %d ms (src done %d, dst done %d)", MX_WAIT_MS,
	     atomic_load(&s->done), atomic_load(&d->done));
	if (link_is_down)
		link_down(x, false);
	mx_cont(x, SRC);
	mx_cont(x, DST);
}

/* The CLI's exit code for a side's return (cli/main.c exit_for, and the
 * source's recovery after RDMAMIG_E_INDOUBT). */
static int cli_exit(struct mx_peer *p, int me)
{
	int rc = atomic_load(&p->rc);

	if (me == SRC && rc == RDMAMIG_E_INDOUBT) {
		if (!atomic_load(&p->recovered))
			return 8;
		rc = atomic_load(&p->recover_rc);
		return rc == RDMAMIG_OUTCOME_DESTINATION ? 0 : rc == RDMAMIG_OUTCOME_SOURCE ? 1 : 8;
	}
	return rc == 0 ? 0 : rc == RDMAMIG_E_REFUSED ? 3 : rc == RDMAMIG_E_VERIFY ? 4 : 1;
}

static void mx_check(struct mx_ctx *x)
{
	struct mx_case *c = x->c;
	struct mx_outcome want = mx_expect(c->step, c->fault, c->tr == RDMAMIG_TRANSPORT_RDMA);
	struct mx_peer *s = &x->sh->p[SRC], *d = &x->sh->p[DST];
	int runs = 0, who = -1, want_src, want_dst, se, de;
	bool indoubt = atomic_load(&s->rc) == RDMAMIG_E_INDOUBT && atomic_load(&s->done);

	for (int i = 0; i < 2; i++)
		if (atomic_load(&x->sh->p[i].vm) == VM_RUN)
			runs++, who = i;
	se = alive(x, SRC) ? cli_exit(s, SRC) : -1;
	de = alive(x, DST) ? cli_exit(d, DST) : -1;
	snprintf(c->seen, sizeof(c->seen), "%s runs, exit %d/%d%s",
		 runs == 1 ? (who == SRC ? "src" : "dst") : runs ? "BOTH" : "none", se, de,
		 indoubt ? ", src said in doubt" : "");
	if (atomic_load(&x->sh->two_running))
		FAIL(x, "TWO RUNNING COPIES: a resume() found the other copy running");
	if (runs > 1)
		FAIL(x, "TWO RUNNING COPIES at the end");
	if (want.who == MX_LOST_SRC || want.who == MX_LOST_DST) {
		if (runs)
			FAIL(x, "expected no copy (its holder was killed), %s runs", who == SRC ? "src" : "dst");
		if (want.who == MX_LOST_DST && alive(x, SRC) && atomic_load(&s->vm) != VM_PAUSED)
			FAIL(x, "the source's copy is not paused");
		if (want.who == MX_LOST_DST && atomic_load(&d->resumes) == 0)
			FAIL(x, "the destination was killed before running the guest");
	} else if (runs != 1) {
		FAIL(x, "%d copies run at the end, expected exactly one", runs);
	} else if (want.who != MX_EITHER && who != (want.who == MX_SRC ? SRC : DST)) {
		FAIL(x, "%s runs the guest, expected %s", who == SRC ? "src" : "dst", mx_who_text(want.who));
	}
	if (want.indoubt != indoubt)
		FAIL(x, want.indoubt ? "the source never said the outcome is unknown (rc %d)"
				     : "the source ended in doubt (rc %d)", atomic_load(&s->rc));
	if (indoubt && !log_has(s, 0, "--recover"))
		FAIL(x, "the source in doubt did not name --recover");
	/* The RAM that runs is the source's at its pause. */
	if (runs == 1 && who == DST && (d->resume_digest != s->pause_digest || d->loaded_counter != s->pause_counter))
		FAIL(x, "the destination runs RAM (or state) other than the source's at its pause");
	if (runs == 1 && who == SRC && atomic_load(&s->pauses) && s->resume_digest != s->pause_digest)
		FAIL(x, "the source resumed RAM other than what it paused with");
	/* It really runs: its guest moves. */
	if (runs == 1) {
		uint64_t c0 = atomic_load(&x->sh->p[who].counter);

		if (!WAIT_UNTIL(5000, atomic_load(&x->sh->p[who].counter) != c0))
			FAIL(x, "the copy marked running does not move");
	}
	mx_exit_codes(want.who == MX_EITHER ? (struct mx_outcome){ who == SRC ? MX_SRC : MX_DST, true } : want,
		      c->fault, c->step, &want_src, &want_dst);
	if (se != want_src || de != want_dst)
		FAIL(x, "exit codes %d/%d, expected %d/%d", se, de, want_src, want_dst);
}

/* Linux 6.1's rxe does not survive its netdev going down under traffic:
 * afterwards no rdma_cm connect on that device completes, not even
 * rping's (seen in the test VM: link down during a migration, link up, rping
 * times out; a fresh rxe device works at once).  So a link-down case on RDMA
 * runs alone (run_matrix runs those first, one at a time, before the
 * others start) and, once both its processes are gone, puts back a working
 * bed: a new rxe device of the same name on the same netdev, and the
 * addresses a link-down takes away (IPv6). */
static bool mx_alone(const struct mx_case *c)
{
	return c->fault == MX_LINK_DOWN && c->tr == RDMAMIG_TRANSPORT_RDMA;
}

/* Linux 6.1 (Debian's, the test VM's) is the kernel that wedged processes
 * after these cells (mx_wedged): 2 of its 11 runs at scale 6, each a failed
 * run with nothing of ours at fault.  There they run on request only
 * (RDMAMIG_MATRIX_LINK_DOWN=1); on other kernels always. */
static bool rdma_link_down_wedges(const char **release)
{
	static struct utsname u;

	if (uname(&u))
		return false;
	*release = u.release;
	return !getenv("RDMAMIG_MATRIX_LINK_DOWN") && strncmp(u.release, "6.1.", 4) == 0;
}

static void mx_restore_bed(struct mx_ctx *x)
{
	const char *rxe = getenv("RDMAMIG_RXE_DEV");
	char cmd[512];

	if (!rxe) {
		FAIL(x, "RDMAMIG_RXE_DEV unset: cannot put the bed back after a link-down");
		return;
	}
	snprintf(cmd, sizeof(cmd),
		 "ndev=$(cat /sys/class/infiniband/%s/ports/1/gid_attrs/ndevs/0) && "
		 "rdma link delete %s && rdma link add %s type rxe netdev \"$ndev\" && "
		 "scripts/soft-roce/setup.sh --env >/dev/null",
		 rxe, rxe, rxe);
	if (mx_sh(x, cmd))
		FAIL(x, "could not put the bed back after a link-down (%s)", cmd);
}

/* The kernel's RDMA CM retransmissions and duplicates on the bed's device
 * (ib_cm's per-port counters), summed: a connect that outlives its bound
 * because a REQ or REP was lost shows here (the CM resends after ~4 s).
 * Counted for the whole device, so for the cases running beside this one
 * too.  -1 where there are none (TCP, no rxe). */
static long cm_resends(void)
{
	static const char *const kinds[] = { "cm_tx_retries/req", "cm_tx_retries/rep",
					     "cm_tx_retries/rtu", "cm_rx_duplicates/req",
					     "cm_rx_duplicates/rep" };
	const char *rxe = getenv("RDMAMIG_RXE_DEV");
	long sum = 0;

	if (!rxe)
		return -1;
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		char path[160];
		long v;
		FILE *f;

		snprintf(path, sizeof(path), "/sys/class/infiniband/%s/ports/1/%s", rxe, kinds[i]);
		f = fopen(path, "r");
		if (!f)
			return -1;
		if (fscanf(f, "%ld", &v) != 1)
			v = 0;
		fclose(f);
		sum += v;
	}
	return sum;
}

/* A failed case's account: both sides' logs, and the CM's resends while
 * it ran, in one block. */
static void mx_report_failure(struct mx_ctx *x, long cm_before)
{
	long cm_after = cm_resends();

	flockfile(stderr);
	fprintf(stderr, "matrix: %s %s failed: %s\n", mx_steps[x->c->step].name,
		mx_fault_names[x->c->fault], x->c->why);
	if (cm_before >= 0 && cm_after >= 0)
		fprintf(stderr, "matrix:   RDMA CM REQ/REP/RTU resends and duplicates on the device meanwhile: %ld\n",
			cm_after - cm_before);
	for (int i = 0; i < 2; i++) {
		unsigned len = atomic_load(&x->sh->p[i].log_len);
		const char *l = x->sh->p[i].log, *end;

		if (len > MX_LOG)
			len = MX_LOG;
		for (const char *e = l + len; l < e; l = end + 1) {
			end = memchr(l, '\n', (size_t)(e - l));
			if (!end)
				end = e;
			fprintf(stderr, "matrix:   %s| %.*s\n", i == SRC ? "src" : "dst", (int)(end - l), l);
		}
	}
	funlockfile(stderr);
}

/* Cases on their way to their step: connecting, migrating.  That is the
 * part that costs the CPU (the rest mostly waits out bounds), and in the
 * nested bed connects time out when more than two do it at once (seen: 4
 * of 63 cells "never reached" their step, rdma_cm connects timing out).
 * A case waiting here has started nothing: no bound runs for it. */
static sem_t mx_setup_gate;

static void mx_run_case(struct mx_case *c, int idx)
{
	struct mx_ctx x = { .c = c };
	int held = mx_src_side(c->step) ? SRC : DST, dport, sport;
	char spec[2][400] = { "", "" }, file[160];
	uint64_t t0 = ms_now();
	const char *action = c->fault == MX_CUT ? "cut" : c->fault == MX_DROP ? "drop" : "pause";
	bool link_fault = c->fault == MX_LINK_RESET || c->fault == MX_LINK_DOWN;
	bool gated = false;
	long cm_before = cm_resends();

	if (atomic_load(&mx_wedged)) {
		FAIL(&x, "not run: a process of an earlier case is wedged in the bed's kernel (see its failure)");
		return;
	}

	x.sh = mmap(NULL, sizeof(*x.sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (x.sh == MAP_FAILED) {
		FAIL(&x, "mmap: %s", strerror(errno));
		return;
	}
	memset(x.sh, 0, sizeof(*x.sh));
	x.sh->p[DST].me = DST;
	snprintf(x.hold, sizeof(x.hold), "/tmp/rdmamig-matrix-%d-%d-hold", (int)getpid(), idx);
	snprintf(file, sizeof(file), "/tmp/rdmamig-matrix-%d-%d-pre", (int)getpid(), idx);
	unlink(x.hold);
	unlink(file);
	snprintf(spec[held], sizeof(spec[held]), "%s:%s:%s:%s", action, mx_steps[c->step].side,
		 mx_steps[c->step].name, x.hold);
	if (c->step == MX_RECOVER)	/* there by a lost RESUMED: the destination runs it */
		snprintf(spec[DST], sizeof(spec[DST]), "drop:dst:send-RESUMED:%s", file);

	while (sem_wait(&mx_setup_gate) && errno == EINTR)
		;
	gated = true;
	mx_fork(&x, DST, spec[DST], 0);
	if (!WAIT_UNTIL(MX_WAIT_MS, atomic_load(&x.sh->p[DST].port) > 0)) {
		FAIL(&x, "the destination never listened");
		goto out;
	}
	dport = sport = atomic_load(&x.sh->p[DST].port);
	if (c->tr == RDMAMIG_TRANSPORT_TCP && link_fault) {
		sport = px_start(&x.px, dport);
		x.px_on = sport > 0;
		if (!x.px_on) {
			FAIL(&x, "proxy: %s", strerror(errno));
			goto out;
		}
	}
	mx_fork(&x, SRC, spec[SRC], sport);
	/* The step is reached: the hold file is there (cut and drop make it
	 * when they strike). */
	if (!WAIT_UNTIL(MX_WAIT_MS, access(x.hold, F_OK) == 0 || atomic_load(&x.sh->p[SRC].done) ||
				    atomic_load(&x.sh->p[DST].done)) ||
	    access(x.hold, F_OK)) {
		FAIL(&x, "never reached %s:%s (source: %s; destination: %s)", mx_steps[c->step].side,
		     mx_steps[c->step].name,
		     atomic_load(&x.sh->p[SRC].done) ? rdmamig_strerror(atomic_load(&x.sh->p[SRC].rc)) : "running",
		     atomic_load(&x.sh->p[DST].done) ? rdmamig_strerror(atomic_load(&x.sh->p[DST].rc)) : "running");
		goto out;
	}
	sem_post(&mx_setup_gate);
	gated = false;
	mx_strike(&x, held);
	mx_settle(&x);
	mx_check(&x);
out:
	if (gated)
		sem_post(&mx_setup_gate);
	for (int i = 0; i < 2; i++) {
		mx_cont(&x, i);
		if (alive(&x, i))
			atomic_store(&x.sh->p[i].cmd, CMD_EXIT);
	}
	for (int i = 0; i < 2; i++) {
		if (!alive(&x, i) || x.sh->p[i].pid <= 0)
			continue;
		if (!WAIT_UNTIL(MX_WAIT_MS, (mx_reap(&x, i, false), x.reaped[i]))) {
			FAIL(&x, "%s did not exit", i == SRC ? "src" : "dst");
			kill(x.sh->p[i].pid, SIGKILL);
			mx_reap_killed(&x, i);
		} else if (x.exit_code[i] != 0) {
			FAIL(&x, "%s's process exited %d", i == SRC ? "src" : "dst", x.exit_code[i]);
		}
	}
	if (x.px_on) {
		atomic_store(&x.px.stop, 1);
		pthread_join(x.px.th, NULL);
	}
	if (mx_alone(c) && !atomic_load(&mx_wedged))	/* else `rdma link delete` waits for ever */
		mx_restore_bed(&x);
	if (c->why[0])
		mx_report_failure(&x, cm_before);
	unlink(x.hold);
	unlink(file);
	munmap(x.sh, sizeof(*x.sh));
	c->secs = (double)(ms_now() - t0) / 1000.0;
}

/* ---- the runs ---- */

struct mx_pool {
	struct mx_case **cases;
	int n;
	atomic_int next;
};

static void *mx_worker(void *arg)
{
	struct mx_pool *pool = arg;
	int i;

	while ((i = atomic_fetch_add(&pool->next, 1)) < pool->n) {
		struct mx_case *c = pool->cases[i];

		mx_run_case(c, c->idx);
		/* As each ends: a bed that wedges still says how far it got. */
		fprintf(stderr, "matrix %s %-13s %-12s %-40s %5.1f s%s%s\n",
			c->tr == RDMAMIG_TRANSPORT_TCP ? "tcp " : "rdma", mx_steps[c->step].name,
			mx_fault_names[c->fault], c->seen, c->secs, c->why[0] ? "  FAIL: " : "", c->why);
	}
	return NULL;
}

/* The cases that wait longest go first, so that the last ones to start
 * are short and the workers finish together.  The order changes when a
 * case runs, never what it waits for.  Longest: a side held at or after
 * LOADED that dies, stops or loses its link, where the destination waits
 * out its recovery window (2 x MX_DST_RECOVER_MS); then a delay of three
 * silence bounds; then the other stops and link faults (one silence
 * bound and a recovery window of the source's). */
static int mx_weight(const struct mx_case *c)
{
	bool lasting = c->fault == MX_KILL_HELD || c->fault == MX_KILL_PEER || c->fault == MX_STOP_HELD ||
		       c->fault == MX_STOP_PEER || c->fault == MX_LINK_RESET || c->fault == MX_LINK_DOWN;

	if (lasting && c->step >= MX_LOADED)
		return 3;
	if (c->fault == MX_DELAY_PAST)
		return 2;
	return lasting || c->fault == MX_DELAY_IN;
}

static void mx_run_pool(struct mx_case **cases, int n, int workers)
{
	struct mx_pool pool = { .cases = cases, .n = n };
	pthread_t th[MX_WORKERS];

	if (workers > n)
		workers = n;
	for (int w = 0; w < workers; w++)
		cr_assert_eq(pthread_create(&th[w], NULL, mx_worker, &pool), 0);
	for (int w = 0; w < workers; w++)
		pthread_join(th[w], NULL);
}

/* Every applicable case of the transport: first those that must run
 * alone, one at a time, then the others, `workers` at a time, `setups` of
 * them at most on their way to their step. */
static void run_matrix(enum rdmamig_transport tr, int workers, int setups)
{
	static struct mx_case cases[MX_NSTEPS * MX_NFAULTS];
	struct mx_case *alone[MX_NSTEPS * MX_NFAULTS], *shared[MX_NSTEPS * MX_NFAULTS];
	const char *only = getenv("RDMAMIG_MATRIX_ONLY");	/* cases named "step/fault" holding it */
	const char *jobs = getenv("RDMAMIG_MATRIX_JOBS");
	const char *skip = getenv("RDMAMIG_MATRIX_SKIP");	/* cases holding it are left out */
	const char *release = "?";
	bool no_link_down = tr == RDMAMIG_TRANSPORT_RDMA && rdma_link_down_wedges(&release);
	uint64_t t0 = ms_now();
	int n = 0, nalone = 0, nshared = 0, failed = 0, nlinkdown = 0;
	double busy = 0;

	want_transport(tr);
	if (getenv("RDMAMIG_MATRIX_SCALE") && atoi(getenv("RDMAMIG_MATRIX_SCALE")) > 0)
		mx_scale = atoi(getenv("RDMAMIG_MATRIX_SCALE"));
	if (jobs && atoi(jobs) > 0 && atoi(jobs) < workers)
		workers = atoi(jobs);
	cr_assert_eq(sem_init(&mx_setup_gate, 0, (unsigned)(setups < workers ? setups : workers)), 0);
	for (int s = 0; s < MX_NSTEPS; s++)
		for (int f = 0; f < MX_NFAULTS; f++) {
			char name[64];

			snprintf(name, sizeof(name), "%s/%s", mx_steps[s].name, mx_fault_names[f]);
			if (!mx_applies(s, f, tr == RDMAMIG_TRANSPORT_RDMA) || (only && !strstr(name, only)) ||
			    (skip && strstr(name, skip)))
				continue;
			if (no_link_down && f == MX_LINK_DOWN) {
				nlinkdown++;
				continue;
			}
			cases[n] = (struct mx_case){ .tr = tr, .step = s, .fault = f, .idx = n };
			if (mx_alone(&cases[n]))
				alone[nalone++] = &cases[n];
			else
				shared[nshared++] = &cases[n];
			n++;
		}
	if (nlinkdown)
		fprintf(stderr, "matrix rdma: %d link-down cells not run: on this kernel (%s) a process that tears "
			"down an RDMA connection after rxe's netdev went down can wedge for ever in ib_cm "
			"(bench/results/20261126-cm-wedge/); RDMAMIG_MATRIX_LINK_DOWN=1 runs them\n",
			nlinkdown, release);
	/* Stable: by weight, then in the table's order. */
	for (int i = 1; i < nshared; i++)
		for (int j = i; j > 0 && mx_weight(shared[j]) > mx_weight(shared[j - 1]); j--) {
			struct mx_case *t = shared[j];

			shared[j] = shared[j - 1];
			shared[j - 1] = t;
		}
	mx_run_pool(alone, nalone, 1);
	mx_run_pool(shared, nshared, workers);
	sem_destroy(&mx_setup_gate);
	for (int i = 0; i < n; i++) {
		busy += cases[i].secs;
		failed += cases[i].why[0] != 0;
	}
	fprintf(stderr, "matrix %s: %d cases, %d failed, %.1f s (%.1f s of cases; %d alone, then %d at a time, "
		"%d of them setting up)\n", tr == RDMAMIG_TRANSPORT_TCP ? "tcp" : "rdma", n, failed,
		(ms_now() - t0) / 1000.0, busy, nalone, workers, setups < workers ? setups : workers);
	cr_assert_gt(n, 0, "no case ran");
	cr_assert_eq(failed, 0, "%d of %d fault-matrix cases failed (see above)", failed, n);
}

Test(matrix_tcp, every_step_every_fault, .timeout = 300)
{
	run_matrix(RDMAMIG_TRANSPORT_TCP, MX_WORKERS, MX_WORKERS);
}

/* The nested bed is ~10x slower: longer bounds (RDMAMIG_MATRIX_SCALE, 6
 * unless set there), so that its silence bounds and rdma_cm's connects
 * hold on a loaded bed (a source's connect and authentication share one
 * bound: with 4, two bed VMs beside the host suites on 2 cores starved a
 * source to 2.6 s of connecting and then out of its budget while
 * authenticating, no CM message lost), and fewer cases at a time than on the host, two
 * of them at most connecting and migrating.  The cases mostly wait out
 * those bounds, so they share the bed well: all steps in one pool, the
 * longest first (a case per step, two at a time, took 315 s; most of it
 * two workers asleep). */
Test(matrix_rdma, every_step_every_fault, .timeout = 600)
{
	if (!getenv("RDMAMIG_MATRIX_SCALE"))
		setenv("RDMAMIG_MATRIX_SCALE", "6", 1);
	run_matrix(RDMAMIG_TRANSPORT_RDMA, MX_BED_WORKERS, MX_BED_SETUPS);
}

/* README.md's fault-matrix table is mx_render()'s: the documented outcomes
 * are the ones this suite checks.  RDMAMIG_MATRIX_TABLE=1 prints it. */
Test(matrix, readme_table_is_the_suites)
{
	static char table[16384], readme[1 << 18];
	FILE *f = fopen("README.md", "r");
	size_t n;

	cr_assert_eq(mx_render(table, sizeof(table)), 0);
	if (getenv("RDMAMIG_MATRIX_TABLE"))
		fputs(table, stdout);
	cr_assert_not_null(f, "README.md: run the suite from the repository's top");
	n = fread(readme, 1, sizeof(readme) - 1, f);
	fclose(f);
	readme[n] = 0;
	cr_assert(strstr(readme, table), "README.md's fault-matrix table differs from the suite's; "
					 "RDMAMIG_MATRIX_TABLE=1 build/tests/test-fault-matrix --filter "
					 "'matrix/*' prints it:\n%s", table);
}
