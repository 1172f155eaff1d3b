/*
 * tests/test-migration.c — the engine end to end, both roles in one process,
 * with the fake VMM (tests/fake-vmm.h): a busy guest migrates and the
 * destination holds the same RAM; refusals, cancels, a vanishing
 * destination and a failed state load all leave the source guest running;
 * a guest that can't converge reaches the iteration cap or the deadline; a
 * migration outlives its timeout; cancel is prompt in every phase.
 * The iterate pass alone (ram suite): exactly the reported pages reach the
 * transport, in maximal ranges, each after dirty_clear() named it.
 * The handover, authentication and bounds are in test-migration-handover.c.
 *
 * TCP cases run everywhere; RDMA cases run on the soft-RoCE bed (they skip,
 * saying so, where RDMAMIG_RXE_ADDR is not set — make test runs them there).
 */
#include "tests/test-migration.h"

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



BOTH(outlives_its_timeout_threefold, outlives_its_timeout)
BOTH(cancel_while_listening_is_prompt, cancel_while_listening)
BOTH(cancel_in_source_handshake_is_prompt, cancel_source_in_handshake)
Test(migration_tcp, cancel_in_destination_handshake_is_prompt, .timeout = 60)
{
	cancel_destination_in_handshake(RDMAMIG_TRANSPORT_TCP);
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
