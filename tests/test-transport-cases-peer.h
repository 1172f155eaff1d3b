/*
 * tests/test-transport-cases-peer.h — the shared transport cases that play
 * the peer: hostile sources and destinations on the raw wire, an ABORT whose
 * reason no error code can be, and authentication (no key, wrong key, a
 * silent source that must not block a real one).  Included by
 * test-transport-cases.h, after its helpers; not a header of its own.
 */
#ifndef RDMAMIG_TEST_TRANSPORT_CASES_PEER_H
#define RDMAMIG_TEST_TRANSPORT_CASES_PEER_H

/* ---- hostile peers ---- */

static size_t frame(void *buf, uint16_t type, uint16_t flags, const void *body, size_t blen,
		    size_t extra)
{
	struct rm_wire_hdr h = {
		.type = htole16(type),
		.flags = htole16(flags),
		.len = htole32((uint32_t)(blen + extra)),
	};

	memcpy(buf, &h, sizeof(h));
	memmove((char *)buf + sizeof(h), body, blen);
	return sizeof(h) + blen;
}

/*
 * A source that sends one malformed message after a good layout: the
 * destination's recv reports a protocol error, RAM and guards are untouched.
 */
static void hostile_source(const char *what, const void *msg, size_t len, unsigned chan)
{
	struct ram d, s;
	struct pair p;
	struct rm_msg m;
	uint64_t t0;
	int err;

	ram_alloc(&d, 3, sizes3, 0);
	ram_alloc(&s, 3, sizes3, 9);
	err = pair_open(&p, opts_for(2), &d, &s);
	cr_assert_eq(err, 0);
	err = rm_tr_raw_send(p.src, chan, msg, len);
	cr_assert_eq(err, 0, "%s: raw send: %s", what, rdmamig_strerror(err));
	t0 = rm_now_ns();
	err = rm_tr_recv(p.dst, &m, 5000);
	cr_assert_eq(err, RDMAMIG_E_PROTO, "%s: destination got %s", what, rdmamig_strerror(err));
	cr_assert((rm_now_ns() - t0) / 1000000 < 5000);
	/* The source learns about it too (ABORT), within the bound. */
	err = rm_tr_recv(p.src, &m, 5000);
	cr_assert(err == RDMAMIG_E_ABORTED || err == -ECONNRESET || err == -EPIPE,
		  "%s: source got %s", what, rdmamig_strerror(err));
	ram_assert_zero(&d);
	ram_assert_guards(&d);
	pair_close(&p);
	ram_free(&d);
	ram_free(&s);
}

static void case_hostile_source(void)
{
	uint8_t buf[256];
	size_t n;

	{	/* WRITE past the end of a region (and a 2^64 wrap). */
		struct rm_wire_write w = { .region = htole32(12), .offset = htole64(sizes3[2] - PAGE),
					   .length = htole64(2 * PAGE) };

		n = frame(buf, RM_WIRE_WRITE, 0, &w, sizeof(w), 2 * PAGE);
		hostile_source("WRITE past the region end", buf, n, 1);
		w.offset = htole64(~0ull - 10);
		w.length = htole64(PAGE);
		n = frame(buf, RM_WIRE_WRITE, 0, &w, sizeof(w), PAGE);
		hostile_source("WRITE with wrapping offset", buf, n, 0);
		w.region = htole32(99);
		w.offset = 0;
		n = frame(buf, RM_WIRE_WRITE, 0, &w, sizeof(w), PAGE);
		hostile_source("WRITE to an unknown region", buf, n, 1);
	}
	{	/* CTRL claiming more than the bound, or a non-engine type. */
		struct rm_wire_ctrl c = { .type = htole16(RM_WIRE_ENGINE_FIRST), .frag_len = htole32(8),
					  .total_len = htole64(RM_WIRE_MAX_CTRL + 1ull) };

		n = frame(buf, RM_WIRE_CTRL, RM_WIRE_F_FIRST, &c, sizeof(c), 8);
		memset(buf + n, 0, 8);
		hostile_source("CTRL larger than the bound", buf, n + 8, 0);
		c.total_len = htole64(8);
		c.type = htole16(RM_WIRE_LAYOUT);
		n = frame(buf, RM_WIRE_CTRL, RM_WIRE_F_FIRST | RM_WIRE_F_LAST, &c, sizeof(c), 8);
		hostile_source("CTRL with a transport type", buf, n + 8, 0);
		c.type = htole16(RM_WIRE_ENGINE_FIRST);
		c.frag_len = htole32(4);
		n = frame(buf, RM_WIRE_CTRL, RM_WIRE_F_LAST, &c, sizeof(c), 4);
		hostile_source("CTRL continuation without a start", buf, n + 4, 0);
	}
	{	/* Zeroed, unknown and reserved types; a LAYOUT from the source. */
		struct rm_wire_layout lay = { .count = htole32(1) };

		memset(buf, 0, sizeof(struct rm_wire_hdr) + 8);
		hostile_source("zeroed header", buf, sizeof(struct rm_wire_hdr) + 8, 0);
		n = frame(buf, 0x77, 0, "", 0, 0);
		hostile_source("unknown type", buf, n, 1);
		n = frame(buf, RM_WIRE_ENGINE_FIRST, 0, "", 0, 0);
		hostile_source("engine type as a header", buf, n, 0);
		n = frame(buf, RM_WIRE_LAYOUT, 0, &lay, sizeof(lay), 0);
		hostile_source("LAYOUT from a source", buf, n, 0);
	}
	{	/* MARKER naming another channel. */
		struct rm_wire_marker mk = { .epoch = htole64(5), .chan = htole32(3) };

		n = frame(buf, RM_WIRE_MARKER, 0, &mk, sizeof(mk), 0);
		hostile_source("MARKER for another channel", buf, n, 1);
	}
}

/* A destination whose LAYOUT is out of range: the source refuses it. */
struct hostile_dest_arg {
	struct pair *p;
	const void *msg;
	size_t len;
};

static void *hostile_dest_thread(void *arg)
{
	struct hostile_dest_arg *a = arg;

	a->p->accept_err = rm_tr_accept(a->p->l, &a->p->dst);
	if (!a->p->accept_err)
		a->p->dlayout_err = rm_tr_raw_send(a->p->dst, 0, a->msg, a->len);
	return NULL;
}

static void hostile_dest(const char *what, const void *msg, size_t len, int expect1, int expect2)
{
	struct rm_transport_opts o = opts_for(1);
	struct hostile_dest_arg a;
	struct ram s;
	struct pair p;
	pthread_t th;
	char port[16];
	int err;

	memset(&p, 0, sizeof(p));
	ram_alloc(&s, 3, sizes3, 4);
	cr_assert_eq(rm_tr_listen(&o, &p.l), 0);
	snprintf(port, sizeof(port), "%d", rm_tr_listener_port(p.l));
	a = (struct hostile_dest_arg){ .p = &p, .msg = msg, .len = len };
	cr_assert_eq(pthread_create(&th, NULL, hostile_dest_thread, &a), 0);
	o.port = port;
	err = rm_tr_connect(&o, &p.src);
	cr_assert_eq(err, 0);
	err = rm_tr_layout(p.src, s.r, s.n);
	pthread_join(th, NULL);
	cr_assert(err == expect1 || err == expect2, "%s: source layout gave %s", what,
		  rdmamig_strerror(err));
	pair_close(&p);
	ram_free(&s);
}

static void case_hostile_dest(void)
{
	struct {
		struct rm_wire_hdr h;
		struct rm_wire_layout l;
		struct rm_wire_region r[RM_WIRE_MAX_REGIONS + 1];
	} u;
	size_t n;

	memset(&u, 0, sizeof(u));
	for (unsigned i = 0; i < 3; i++)
		u.r[i] = (struct rm_wire_region){ .id = htole32(10 + i), .size = htole64(sizes3[i]),
						  .addr = htole64(0x10000), .rkey = htole32(1) };
	u.l.count = htole32(3);
	u.r[1].size = htole64(sizes3[1] * 2);
	n = frame(&u, RM_WIRE_LAYOUT, 0, &u.l, sizeof(u.l) + 3 * sizeof(u.r[0]), 0);
	hostile_dest("LAYOUT with a larger region", &u, n, RDMAMIG_E_REFUSED, RDMAMIG_E_REFUSED);
	u.r[1].size = htole64(sizes3[1]);
	u.r[2].id = u.r[0].id;
	n = frame(&u, RM_WIRE_LAYOUT, 0, &u.l, sizeof(u.l) + 3 * sizeof(u.r[0]), 0);
	hostile_dest("LAYOUT with a duplicate id", &u, n, RDMAMIG_E_REFUSED, RDMAMIG_E_PROTO);
	u.l.count = htole32(RM_WIRE_MAX_REGIONS + 1);
	n = frame(&u, RM_WIRE_LAYOUT, 0, &u.l, sizeof(u.l) + 3 * sizeof(u.r[0]), 0);
	hostile_dest("LAYOUT with too many regions", &u, n, RDMAMIG_E_PROTO, RDMAMIG_E_PROTO);

	/* Staged (wire.h 2, 2a): keys come later in READYs, over RDMA only. */
	u.l.count = htole32(3);
	u.r[2].id = htole32(12);
	for (unsigned i = 0; i < 3; i++)
		u.r[i].rkey = 0;
	u.l.flags = htole32(RM_WIRE_LAYOUT_STAGED);
	u.l.chunk_shift = htole32(20);
	n = frame(&u, RM_WIRE_LAYOUT, 0, &u.l, sizeof(u.l) + 3 * sizeof(u.r[0]), 0);
	hostile_dest(RDMA_KIND ? "a staged LAYOUT" : "a staged LAYOUT over TCP", &u, n,
		     RDMA_KIND ? 0 : RDMAMIG_E_PROTO, RDMA_KIND ? 0 : RDMAMIG_E_PROTO);
	{
		struct { struct rm_wire_ready r; __le32 k; } rd = { .k = htole32(1) };
		uint8_t buf[sizeof(struct rm_wire_hdr) + sizeof(rd)];

		n = frame(buf, RM_WIRE_READY, 0, &rd, sizeof(rd), 0);
		hostile_dest("READY in place of the LAYOUT", buf, n, RDMAMIG_E_PROTO, RDMAMIG_E_PROTO);
	}
}

/* ---- an ABORT whose reason no errno or library code can be ---- */

struct log_capture {
	pthread_mutex_t lock;
	char text[4096];
	size_t len;
};

static void capture_log(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	struct log_capture *c = opaque;
	size_t n = strlen(msg);

	pthread_mutex_lock(&c->lock);
	if (n + 2 < sizeof(c->text) - c->len) {
		memcpy(c->text + c->len, msg, n);
		c->len += n;
		c->text[c->len++] = '\n';
		c->text[c->len] = 0;
	}
	pthread_mutex_unlock(&c->lock);
}

/*
 * ABORT {reason 0x80000000}: no errno and no RDMAMIG_E_* code, and negating it
 * as an int overflows (UBSan stops the process there).  The receiver must still
 * report RDMAMIG_E_ABORTED and log the reason as the number it is.
 */
static void case_abort_reason_out_of_range(void)
{
	static struct log_capture cap = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct rm_wire_abort_body a = { .reason = htole32(0x80000000u) };
	uint8_t buf[128];
	struct pair p;
	struct rm_msg m;
	size_t n;
	int err;

	memcpy(a.text, "odd reason", 11);
	n = frame(buf, RM_WIRE_ABORT, 0, &a, sizeof(a), 0);
	pair_open(&p, opts_for(1), NULL, NULL);
	rdmamig_set_log(capture_log, &cap, RDMAMIG_LOG_DEBUG);
	err = rm_tr_raw_send(p.src, 0, buf, n);
	cr_assert_eq(err, 0, "raw send: %s", rdmamig_strerror(err));
	err = rm_tr_recv(p.dst, &m, 5000);
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_DEBUG);
	cr_assert_eq(err, RDMAMIG_E_ABORTED, "destination got %s", rdmamig_strerror(err));
	pthread_mutex_lock(&cap.lock);
	cr_assert(strstr(cap.text, "odd reason") && strstr(cap.text, "0x80000000"),
		  "the log does not name the reason: %s", cap.text);
	pthread_mutex_unlock(&cap.lock);
	pair_close(&p);
}

/* The cases every backend runs. */
/* ---- authentication ---- */

/*
 * A keyed destination refuses a source with no key and one with a wrong
 * key — each before anything of the migration exists for it: accept never
 * hands it out, so nothing is laid out or registered — and keeps waiting,
 * so a source with the key, after them, is accepted and moves data.
 */
static void case_auth(void)
{
	struct rm_transport_opts o = opts_for(2), bad;
	struct rm_transport *t = NULL;
	struct ram d, s;
	struct pair p;
	pthread_t th;
	char port[16];
	int err;

	unsigned exposed0 = atomic_load(&rm_rdma_exposures);

	ram_alloc(&d, 3, sizes3, 0);
	ram_alloc(&s, 3, sizes3, 21);
	memset(&p, 0, sizeof(p));
	p.dram = &d;
	cr_assert_eq(rm_tr_listen(&o, &p.l), 0);
	snprintf(port, sizeof(port), "%d", rm_tr_listener_port(p.l));
	cr_assert_eq(pthread_create(&th, NULL, accept_thread, &p), 0);

	bad = opts_keyed(2, NULL);
	bad.port = port;
	err = rm_tr_connect(&bad, &t);
	cr_assert_eq(err, RDMAMIG_E_AUTH, "a source without a key: %s", rdmamig_strerror(err));
	bad = opts_keyed(2, "a different key of 32 bytes ....");
	bad.port = port;
	err = rm_tr_connect(&bad, &t);
	cr_assert_eq(err, RDMAMIG_E_AUTH, "a source with a wrong key: %s", rdmamig_strerror(err));
	cr_assert_null(p.dst, "accept handed out a source that did not authenticate");
	/* The destination counts the second after its refusal has left. */
	for (int i = 0; i < 500 && atomic_load(&p.l->refused_auth) < 2; i++)
		usleep(10000);
	cr_assert_eq(atomic_load(&p.l->refused_auth), 2, "refusals counted: %u",
		     atomic_load(&p.l->refused_auth));
	/* No rkey exists for a source that did not prove the key (RDMA: no
	 * window bound, no MR with remote write; TCP registers nothing). */
	cr_assert_eq(atomic_load(&rm_rdma_exposures), exposed0, "RAM exposed before authentication");

	o.port = port;
	err = rm_tr_connect(&o, &p.src);
	cr_assert_eq(err, 0, "a source with the key: %s", rdmamig_strerror(err));
	err = rm_tr_layout(p.src, s.r, s.n);
	pthread_join(th, NULL);
	cr_assert_eq(err, 0, "layout: %s", rdmamig_strerror(err));
	cr_assert_eq(p.accept_err, 0, "accept: %s", rdmamig_strerror(p.accept_err));
	cr_assert_eq(p.dlayout_err, 0);
	cr_assert_eq(atomic_load(&rm_rdma_exposures), exposed0 + (RDMA_KIND ? 1 : 0),
		     "the authenticated source's layout exposes RAM once");
	{
		struct rm_range r = { .region = 11, .offset = PAGE, .length = 8 * PAGE };

		cr_assert_eq(rm_tr_write(p.src, &r, 1), 0);
		cr_assert_eq(rm_tr_fence(p.src), 0);
		cr_assert_eq(rm_tr_send(p.src, RM_WIRE_ENGINE_FIRST, "x", 1), 0);
		{
			struct rm_msg m;

			cr_assert_eq(rm_tr_recv(p.dst, &m, 5000), 1);
			rm_msg_free(&m);
		}
		cr_assert_eq(memcmp((char *)d.r[1].addr + PAGE, (char *)s.r[1].addr + PAGE, 8 * PAGE), 0);
	}
	pair_close(&p);
	ram_assert_guards(&d);
	ram_free(&d);
	ram_free(&s);
}

/* A keyed source refuses a destination that runs without a key: it would
 * hand the guest to whoever answers. */
static void case_auth_dest_without_key(void)
{
	struct rm_transport_opts o = opts_keyed(1, NULL);
	struct pair p;
	pthread_t th;
	char port[16];
	int err;

	memset(&p, 0, sizeof(p));
	cr_assert_eq(rm_tr_listen(&o, &p.l), 0);
	snprintf(port, sizeof(port), "%d", rm_tr_listener_port(p.l));
	cr_assert_eq(pthread_create(&th, NULL, accept_thread, &p), 0);
	o = opts_for(1);
	o.port = port;
	err = rm_tr_connect(&o, &p.src);
	pthread_join(th, NULL);
	cr_assert_eq(err, RDMAMIG_E_AUTH, "a keyed source took an open destination: %s",
		     rdmamig_strerror(err));
	cr_assert_null(p.src);
	pair_close(&p);
}

/*
 * Silent peers cost a slot each, never the real source's time: three
 * sources finish HELLO and then never authenticate (the connect op without
 * the AUTH exchange); a real source after them is accepted all the same.
 * Handled one after the other they would take 3 x 4 s, past the real
 * source's own 6 s bound.
 */
static void case_silent_sources_do_not_block(void)
{
	struct rm_transport_opts o = opts_for(2), f;
	const struct rm_transport_ops *ops = rm_transport_ops_for(SUITE_KIND);
	struct rm_transport *silent[3] = { 0 };
	struct pair p;
	pthread_t th;
	char port[16];
	int err;

	o.timeout_ms = 4000;
	memset(&p, 0, sizeof(p));
	cr_assert_eq(rm_tr_listen(&o, &p.l), 0);
	snprintf(port, sizeof(port), "%d", rm_tr_listener_port(p.l));
	o.port = port;
	cr_assert_eq(pthread_create(&th, NULL, accept_patient, &p), 0);
	cr_assert_eq(rm_tr_opts_fill(&f, &o), 0);
	for (unsigned i = 0; i < 3; i++) {
		err = ops->connect(&f, 1000 + i, rm_deadline(4000), &silent[i]);
		cr_assert_eq(err, 0, "silent source %u: %s", i, rdmamig_strerror(err));
	}
	o.timeout_ms = 6000;
	err = rm_tr_connect(&o, &p.src);
	pthread_join(th, NULL);
	cr_assert_eq(err, 0, "the real source: %s", rdmamig_strerror(err));
	cr_assert_eq(p.accept_err, 0, "accept: %s", rdmamig_strerror(p.accept_err));
	cr_assert_eq(p.dst->session, p.src->session, "accept returned a silent source");
	for (unsigned i = 0; i < 3; i++)
		rm_tr_abandon(silent[i], -ECANCELED);
	pair_close(&p);
}

/*
 * A destination that connects every channel and then never answers AUTH
 * (the bench's stall, on purpose): the source gives up at its own bound,
 * and its error says how long it waited of the time it had and what went
 * each way on each channel — here its own nonce out and nothing back; on
 * RDMA also its QPs' WRs posted and completed (completed: the SENDs reached
 * the peer's receive queue, which nobody read).
 */
struct silent_dest {
	struct rm_listener *l;
	struct rm_transport *t;
	int err;
};

static void *silent_accept(void *arg)
{
	struct silent_dest *sd = arg;

	sd->err = sd->l->ops->accept(sd->l, rm_deadline(10000), &sd->t);
	return NULL;
}

static void case_silent_destination_named_in_the_timeout(void)
{
	static struct log_capture cap = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct rm_transport_opts o = opts_for(2);
	struct rm_transport *src = NULL;
	struct silent_dest sd = { 0 };
	pthread_t th;
	char port[16];
	int err;

	cr_assert_eq(rm_tr_listen(&o, &sd.l), 0);
	snprintf(port, sizeof(port), "%d", rm_tr_listener_port(sd.l));
	cr_assert_eq(pthread_create(&th, NULL, silent_accept, &sd), 0);
	o.port = port;
	o.timeout_ms = 3000;
	rdmamig_set_log(capture_log, &cap, RDMAMIG_LOG_DEBUG);
	err = rm_tr_connect(&o, &src);
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_DEBUG);
	pthread_join(th, NULL);
	cr_assert_eq(err, -ETIMEDOUT, "a source against a silent destination: %s",
		     rdmamig_strerror(err));
	cr_assert_null(src);
	cr_assert_eq(sd.err, 0, "accept: %s", rdmamig_strerror(sd.err));
	pthread_mutex_lock(&cap.lock);
	if (getenv("RDMAMIG_TEST_VERBOSE"))
		fprintf(stderr, "%s", cap.text);
	cr_assert_not_null(strstr(cap.text, "authenticating the destination: Connection timed out after "),
			   "%s", cap.text);
	cr_assert_not_null(strstr(cap.text, "AUTH step sent 1, taken 0"), "%s", cap.text);
	cr_assert_not_null(strstr(cap.text, "channel 0: sent "), "%s", cap.text);
	cr_assert_null(strstr(cap.text, "channel 0: sent none"), "%s", cap.text);
	cr_assert_not_null(strstr(cap.text, "received none; channel 1: "), "%s", cap.text);
	/* The backend's own part: on RDMA the credits and QPs, on TCP the
	 * sockets' queues. */
	cr_assert_not_null(strstr(cap.text, RDMA_KIND ? "send slots free; QP 0: " : "; socket 0: "),
			   "%s", cap.text);
	pthread_mutex_unlock(&cap.lock);
	rm_tr_abandon(sd.t, -ECANCELED);
	rm_tr_listener_close(sd.l);
}

#endif
