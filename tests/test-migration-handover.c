/*
 * tests/test-migration-handover.c — the engine's handover and its trust
 * checks, both roles in one process over the fake VMM.  The handover
 * (handover suites): a lost RESUMED, a link cut after LOADED or GO, an early
 * RESUMED, and a destination that vanishes after GO never leave two running
 * copies, nor none without a way back; the state table takes only the
 * messages of each state.  Authentication and bounds: no key or a wrong key is
 * refused before anything is prepared, --max-mem is checked first, a
 * prepare() refusal's reason reaches the source, options are copied, a bad
 * describe() is refused.  TCP cases run everywhere; RDMA cases on the bed.
 */
#include "tests/test-migration.h"

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

/* What the state table takes is checked for its size and reserved fields
 * before any handler reads it (rm_mig_body_check, in rm_mig_expect). */
Test(protocol, taken_bodies_checked)
{
	struct rm_mig_outcome o = { .got_go = htole32(1), .ran = htole32(1) };
	struct rm_mig_recover r = { 0 };
	struct rm_mig_loaded l = { 0 };
	struct rm_mig_iter it = { 0 };
	char why[RM_MIG_TEXT];

	cr_assert_eq(rm_mig_body_check(RM_MIG_OUTCOME, &o, sizeof(o), why, sizeof(why)), 0);
	o.got_go = 0;	/* ran without GO cannot be */
	cr_assert_eq(rm_mig_body_check(RM_MIG_OUTCOME, &o, sizeof(o), why, sizeof(why)), RDMAMIG_E_PROTO);
	o.ran = htole32(2);
	cr_assert_eq(rm_mig_body_check(RM_MIG_OUTCOME, &o, sizeof(o), why, sizeof(why)), RDMAMIG_E_PROTO);
	cr_assert_eq(rm_mig_body_check(RM_MIG_LOADED, &l, sizeof(l), why, sizeof(why)), 0);
	cr_assert_eq(rm_mig_body_check(RM_MIG_LOADED, &l, sizeof(l) - 1, why, sizeof(why)), RDMAMIG_E_PROTO);
	cr_assert_str_eq(why, "LOADED of 23 bytes, expected 24");
	cr_assert_eq(rm_mig_body_check(RM_MIG_GO, &l, 1, why, sizeof(why)), RDMAMIG_E_PROTO);
	cr_assert_eq(rm_mig_body_check(RM_MIG_GO, NULL, 0, why, sizeof(why)), 0);
	r.flags = htole32(RM_MIG_RECOVER_ABANDON);
	cr_assert_eq(rm_mig_body_check(RM_MIG_RECOVER, &r, sizeof(r), why, sizeof(why)), 0);
	r.flags = htole32(2);
	cr_assert_eq(rm_mig_body_check(RM_MIG_RECOVER, &r, sizeof(r), why, sizeof(why)), RDMAMIG_E_PROTO);
	it.reserved = 1;
	cr_assert_eq(rm_mig_body_check(RM_MIG_ITER, &it, sizeof(it), why, sizeof(why)), RDMAMIG_E_PROTO);
	/* STATE and REFUSE are read by their own parsers. */
	cr_assert_eq(rm_mig_body_check(RM_MIG_STATE, "x", 1, why, sizeof(why)), 0);
}
