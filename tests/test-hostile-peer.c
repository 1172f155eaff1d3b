/*
 * tests/test-hostile-peer.c — the hostile-peer suite's second half (see
 * test-hostile.c): a raw listener plays a hostile destination against
 * rm_tr_connect() + rm_tr_layout() and against an engine source
 * (rdmamig_run), a raw socket plays a hostile source against an engine
 * destination, and a source without the key tries every AUTH step against a
 * keyed destination.  Each case asserts the contract's error within a bound
 * of the timeout, the cause named in the log, and that a hostile destination
 * never gets the source guest released.  Host suite: TCP only, no KVM.
 */
#include "tests/test-hostile.h"

/* ---- a hostile destination against rm_tr_connect + rm_tr_layout ---- */

struct tsrc {
	int lfd, port;
	pthread_t th;
	int connect_rc, layout_rc, recv_rc;
	uint64_t ms;
};

static uint8_t src_ram[2][1 << 20];

static void *tsrc_run(void *arg)
{
	struct tsrc *s = arg;
	char port[16];
	struct rm_transport_opts o = {
		.kind = RM_TRANSPORT_TCP, .addr = "127.0.0.1", .port = port, .nchan = 1,
		.timeout_ms = TMO_MS, .no_auth = true,
	};
	struct rm_region r[2] = {
		{ .id = 0, .addr = src_ram[0], .size = sizeof(src_ram[0]) },
		{ .id = 1, .addr = src_ram[1], .size = sizeof(src_ram[1]) },
	};
	struct rm_transport *t;
	struct rm_msg msg;
	uint64_t t0 = now_ms();

	snprintf(port, sizeof(port), "%d", s->port);
	s->connect_rc = rm_tr_connect(&o, &t);
	if (!s->connect_rc) {
		s->layout_rc = rm_tr_layout(t, r, 2);
		if (!s->layout_rc)
			while ((s->recv_rc = rm_tr_recv(t, &msg, -1)) == 1)
				rm_msg_free(&msg);
		rm_tr_close(t);
	}
	s->ms = now_ms() - t0;
	return NULL;
}

static int tsrc_start(struct tsrc *s)
{
	struct rm_wire_hello h;
	uint16_t type, flags;
	uint32_t len;
	int fd;

	memset(s, 0, sizeof(*s));
	log_start();
	s->lfd = listen_any(&s->port);
	cr_assert_eq(pthread_create(&s->th, NULL, tsrc_run, s), 0);
	fd = accept_bounded(s->lfd);
	cr_assert_eq(recv_frame(fd, &type, &flags, &h, sizeof(h), &len), 0);
	cr_assert_eq(type, RM_WIRE_HELLO);
	return fd;
}

static void tsrc_finish(struct tsrc *s)
{
	join_bounded(s->th, "the source");
	close(s->lfd);
	cr_assert_leq(s->ms, BOUND_MS);
}

static void good_ack(struct rm_wire_hello_ack *a)
{
	struct rm_wire_hello h;

	good_hello(&h, 1, 0, 1);
	rm_ctrl_hello_ack(a, &h, 0, 0, false);
}

struct ack_case {
	const char *name;
	uint16_t type;
	uint32_t len;		/* header length; body is the (spoilt) ack */
	void (*spoil)(struct rm_wire_hello_ack *a);
	int rc;
	const char *why;
};

#define SPOILA(n, stmt) static void n(struct rm_wire_hello_ack *a) { stmt; }
SPOILA(ack_v0, a->version = 0)
SPOILA(ack_v1, a->version = rm_wire_put16(RM_WIRE_VERSION_MIN - 1))
SPOILA(ack_v3, a->version = rm_wire_put16(RM_WIRE_VERSION + 1))
SPOILA(ack_nchan, a->nchan = rm_wire_put16(2))
SPOILA(ack_nchan0, a->nchan = 0)
SPOILA(ack_caps_more, a->caps = rm_wire_put32(0xffffffffu))
SPOILA(ack_caps_less, a->caps = 0)
SPOILA(ack_credits, a->credits = rm_wire_put32(1))
SPOILA(ack_ctrl_buf, a->ctrl_buf = rm_wire_put32(0xffffffffu))
SPOILA(ack_none, (void)a)

#define ACK sizeof(struct rm_wire_hello_ack)
static const struct ack_case ack_cases[] = {
	{ "version 0", RM_WIRE_HELLO_ACK, ACK, ack_v0, PROTO, "bad HELLO_ACK from the destination: version 0" },
	{ "version min - 1", RM_WIRE_HELLO_ACK, ACK, ack_v1, PROTO, "bad HELLO_ACK from the destination: version" },
	{ "version max + 1", RM_WIRE_HELLO_ACK, ACK, ack_v3, PROTO, "bad HELLO_ACK from the destination: version" },
	{ "nchan 2", RM_WIRE_HELLO_ACK, ACK, ack_nchan, PROTO, "nchan 2, we asked for 1" },
	{ "nchan 0", RM_WIRE_HELLO_ACK, ACK, ack_nchan0, PROTO, "nchan 0, we asked for 1" },
	{ "caps not offered", RM_WIRE_HELLO_ACK, ACK, ack_caps_more, PROTO, "caps 0xffffffff, we offered" },
	{ "caps without the required", RM_WIRE_HELLO_ACK, ACK, ack_caps_less, PROTO, "caps 0, we offered" },
	{ "credits on TCP", RM_WIRE_HELLO_ACK, ACK, ack_credits, PROTO, "credits 1, expected 0" },
	{ "ctrl_buf on TCP", RM_WIRE_HELLO_ACK, ACK, ack_ctrl_buf, PROTO, "ctrl_buf 4294967295, expected 0" },
	{ "HELLO_ACK of 0 bytes", RM_WIRE_HELLO_ACK, 0, ack_none, PROTO, "answered HELLO with HELLO_ACK of 0 bytes" },
	{ "HELLO_ACK one byte short", RM_WIRE_HELLO_ACK, ACK - 1, ack_none, PROTO, "answered HELLO" },
	{ "HELLO_ACK of 2^32 - 1 bytes", RM_WIRE_HELLO_ACK, 0xffffffffu, ack_none, PROTO, "handshake frame" },
	{ "answered with a HELLO", RM_WIRE_HELLO, ACK, ack_none, PROTO, "answered HELLO with HELLO" },
	{ "answered with BYE", RM_WIRE_BYE, 0, ack_none, PROTO, "answered HELLO with BYE" },
};

Test(hostile_peer_destination, every_hello_ack_field, .timeout = 120)
{
	for (size_t i = 0; i < ARRAY_SIZE(ack_cases); i++) {
		const struct ack_case *c = &ack_cases[i];
		struct rm_wire_hello_ack a;
		uint8_t buf[128];
		struct tsrc s;
		int fd = tsrc_start(&s);

		good_ack(&a);
		c->spoil(&a);
		send_all(fd, buf, put_frame(buf, c->type, 0, c->len, 0, 0, &a,
					    c->len < sizeof(a) ? c->len : sizeof(a)));
		tsrc_finish(&s);
		close(fd);
		cr_assert_eq(s.connect_rc, c->rc, "%s: connect %s", c->name, rdmamig_strerror(s.connect_rc));
		assert_log(c->why, "%s: the log does not name \"%s\":\n%s", c->name, c->why, logbuf);
	}
}

Test(hostile_peer_destination, refuse_silence_close, .timeout = 60)
{
	for (int k = 0; k < 3; k++) {
		struct rm_wire_refuse_body r;
		uint8_t buf[128];
		struct tsrc s;
		int fd = tsrc_start(&s);

		rm_ctrl_refuse_body(&r, RM_REFUSE_BUSY, "x");
		memset(r.text, 'R', sizeof(r.text));	/* unterminated */
		if (k == 0)
			send_all(fd, buf, frame(buf, RM_WIRE_REFUSE, 0, &r, sizeof(r)));
		else if (k == 2)
			close(fd);
		tsrc_finish(&s);
		if (k != 2)
			close(fd);
		if (k == 0) {
			cr_assert_eq(s.connect_rc, RDMAMIG_E_REFUSED, "%s", rdmamig_strerror(s.connect_rc));
			assert_log("destination busy: RRRRRRRR", "%s", logbuf);
		} else {
			cr_assert(s.connect_rc == -ETIMEDOUT || s.connect_rc == -ECONNRESET,
				  "%s: connect %s", k == 1 ? "silence" : "close",
				  rdmamig_strerror(s.connect_rc));
			assert_log("handshake on channel 0", "%s", logbuf);
		}
	}
}

/* LAYOUT bounds, as the source checks them. */
struct layout_case {
	const char *name;
	uint32_t count, reserved, nbody;	/* count field; body entries sent */
	uint32_t id[3];
	uint64_t size[3];
	int rc;
	const char *why;
};

static const struct layout_case layout_cases[] = {
	{ "count 0", 0, 0, 0, { 0 }, { 0 }, RDMAMIG_E_REFUSED, "peer has 0 regions, we have 2" },
	{ "count 1", 1, 0, 1, { 0 }, { 1 << 20 }, RDMAMIG_E_REFUSED, "peer has 1 regions, we have 2" },
	{ "count 3", 3, 0, 3, { 0, 1, 2 }, { 1 << 20, 1 << 20, 1 << 20 }, RDMAMIG_E_REFUSED, "peer has 3 regions" },
	{ "count max + 1", RM_WIRE_MAX_REGIONS + 1, 0, 2, { 0, 1 }, { 1 << 20, 1 << 20 }, PROTO, "LAYOUT count or length out of range" },
	{ "count 2^32 - 1", 0xffffffffu, 0, 2, { 0, 1 }, { 1 << 20, 1 << 20 }, PROTO, "LAYOUT count or length out of range" },
	{ "count 2, 1 entry", 2, 0, 1, { 0 }, { 1 << 20 }, PROTO, "LAYOUT count or length out of range" },
	{ "reserved", 2, 1, 2, { 0, 1 }, { 1 << 20, 1 << 20 }, PROTO, "LAYOUT count or length out of range" },
	{ "staged over TCP", 2, RM_WIRE_LAYOUT_STAGED, 2, { 0, 1 }, { 1 << 20, 1 << 20 }, PROTO, "staged LAYOUT off RDMA" },
	{ "unknown id", 2, 0, 2, { 0, 9 }, { 1 << 20, 1 << 20 }, RDMAMIG_E_REFUSED, "peer region 9 unknown here" },
	{ "id twice", 2, 0, 2, { 1, 1 }, { 1 << 20, 1 << 20 }, PROTO, "peer region 1 listed twice" },
	{ "size + 1", 2, 0, 2, { 0, 1 }, { 1 << 20, (1 << 20) + 1 }, RDMAMIG_E_REFUSED, "region 1: 1048576 bytes here, 1048577 at peer" },
	{ "size 0", 2, 0, 2, { 0, 1 }, { 0, 1 << 20 }, RDMAMIG_E_REFUSED, "region 0: 1048576 bytes here, 0 at peer" },
	{ "size 2^64 - 1", 2, 0, 2, { 0, 1 }, { 1 << 20, UINT64_MAX }, RDMAMIG_E_REFUSED, "at peer" },
};

Test(hostile_peer_destination, every_layout_bound, .timeout = 120)
{
	for (size_t i = 0; i < ARRAY_SIZE(layout_cases); i++) {
		const struct layout_case *c = &layout_cases[i];
		struct rm_ctrl_layout_msg lay = { .l = { .count = rm_wire_put32(c->count),
							  .flags = rm_wire_put32(c->reserved) } };
		struct rm_wire_hello_ack a;
		struct rm_wire_refuse_body rf;
		uint8_t buf[sizeof(lay) + 64];
		uint16_t type, flags;
		uint32_t len;
		struct tsrc s;
		int fd = tsrc_start(&s);

		for (uint32_t k = 0; k < c->nbody; k++)
			lay.r[k] = (struct rm_wire_region){ .id = rm_wire_put32(c->id[k]),
							    .size = rm_wire_put64(c->size[k]) };
		good_ack(&a);
		send_all(fd, buf, frame(buf, RM_WIRE_HELLO_ACK, 0, &a, sizeof(a)));
		send_all(fd, buf, frame(buf, RM_WIRE_LAYOUT, 0, &lay,
					sizeof(lay.l) + c->nbody * sizeof(lay.r[0])));
		tsrc_finish(&s);
		cr_assert_eq(s.connect_rc, 0, "%s: connect", c->name);
		cr_assert_eq(s.layout_rc, c->rc, "%s: layout %d (%s), expected %s", c->name, s.layout_rc,
			     rdmamig_strerror(s.layout_rc), rdmamig_strerror(c->rc));
		assert_log(c->why, "%s: the log does not name \"%s\":\n%s", c->name, c->why, logbuf);
		/* The destination hears why: a REFUSE for a mismatch, an ABORT
		 * for a malformed one. */
		if (c->rc == RDMAMIG_E_REFUSED || strstr(c->why, "listed twice")) {
			memset(&rf, 0, sizeof(rf));
			cr_assert_eq(recv_frame(fd, &type, &flags, &rf, sizeof(rf), &len), 0, "%s", c->name);
			cr_assert_eq(type, RM_WIRE_REFUSE, "%s: %s", c->name, rm_wire_type_name(type));
			cr_assert_eq(rm_wire_get32(rf.reason), RM_REFUSE_LAYOUT);
		} else {
			assert_abort_names(fd, c->why);
		}
		close(fd);
	}
}

/* A destination's frames the source never takes: MARKER, WRITE, a second LAYOUT,
 * READY over TCP. */
Test(hostile_peer_destination, frames_a_source_never_takes, .timeout = 60)
{
	static const struct {
		const char *name;
		uint16_t type;
		size_t blen;
		const char *why;
	} cases[] = {
		{ "MARKER to a source", RM_WIRE_MARKER, sizeof(struct rm_wire_marker), "MARKER to a source" },
		{ "WRITE to a source", RM_WIRE_WRITE, sizeof(struct rm_wire_write), "WRITE before the layout or to a source" },
		{ "a second LAYOUT", RM_WIRE_LAYOUT, sizeof(struct rm_wire_layout) + 2 * 24, "a second LAYOUT" },
		{ "READY over TCP", RM_WIRE_READY, sizeof(struct rm_wire_ready) + 4, "off RDMA" },
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct rm_ctrl_layout_msg lay = { .l = { .count = rm_wire_put32(2) } };
		struct rm_wire_hello_ack a;
		uint8_t buf[sizeof(lay) + 64], body[64] = { 0 };
		struct tsrc s;
		int fd = tsrc_start(&s);

		for (uint32_t k = 0; k < 2; k++)
			lay.r[k] = (struct rm_wire_region){ .id = rm_wire_put32(k),
							    .size = rm_wire_put64(1 << 20) };
		good_ack(&a);
		send_all(fd, buf, frame(buf, RM_WIRE_HELLO_ACK, 0, &a, sizeof(a)));
		send_all(fd, buf, frame(buf, RM_WIRE_LAYOUT, 0, &lay, sizeof(lay.l) + 2 * sizeof(lay.r[0])));
		if (cases[i].type == RM_WIRE_LAYOUT)
			send_all(fd, buf, frame(buf, RM_WIRE_LAYOUT, 0, &lay, cases[i].blen));
		else
			send_all(fd, buf, frame(buf, cases[i].type, 0, body, cases[i].blen));
		tsrc_finish(&s);
		/* The LAYOUT came first, but the error may overtake the
		 * owner's matching of it: it surfaces in layout or in recv. */
		int rc = s.layout_rc ? s.layout_rc : s.recv_rc;

		cr_assert_eq(rc, PROTO, "%s: layout %s, recv %s", cases[i].name,
			     rdmamig_strerror(s.layout_rc), rdmamig_strerror(s.recv_rc));
		assert_log(cases[i].why, "%s:\n%s", cases[i].name, logbuf);
		close(fd);
	}
}

/* ---- the engine: a hostile destination against rdmamig_run(source) ---- */

struct esrc {
	struct fake_vmm vmm;
	rdmamig_t *m;
	pthread_t th;
	int rc, lfd, port;
	uint64_t ms;
};

static void *esrc_run(void *arg)
{
	struct esrc *e = arg;
	uint64_t t0 = now_ms();

	e->rc = rdmamig_run(e->m);
	e->ms = now_ms() - t0;
	return NULL;
}

/* Reassemble channel 0's next engine message, skipping WRITE and MARKER
 * frames.  Returns its type (0 on the end of the stream). */
static uint16_t next_engine_msg(int fd, uint8_t *data, size_t cap, size_t *len)
{
	size_t got = 0;

	for (;;) {
		static uint8_t body[RM_WIRE_MAX_FRAG + 64];
		struct rm_wire_ctrl c;
		uint16_t type, flags;
		uint32_t n;

		if (recv_frame(fd, &type, &flags, body, sizeof(body), &n))
			return 0;
		if (type == RM_WIRE_BYE || type == RM_WIRE_ABORT)
			return 0;
		if (type != RM_WIRE_CTRL)
			continue;
		memcpy(&c, body, sizeof(c));
		if (flags & RM_WIRE_F_FIRST)
			got = 0;
		if (got + n - sizeof(c) <= cap)
			memcpy(data + got, body + sizeof(c), n - sizeof(c));
		got += n - sizeof(c);
		if (flags & RM_WIRE_F_LAST) {
			*len = got;
			return rm_wire_get16(c.type);
		}
	}
}

enum when { AT_SETUP, AT_COMMIT };

/* Run a source against a raw destination that behaves until `when`, then
 * sends the hostile bytes hostile(buf) (or closes: NULL). */
static void engine_source_case(const char *name, enum when when, size_t (*hostile)(uint8_t *buf),
			       int want_rc, const char *why)
{
	struct esrc e;
	struct rm_wire_hello h;
	struct rm_wire_hello_ack a;
	static uint8_t msg[1 << 16];
	uint8_t buf[4096];
	char port[16];
	uint16_t type, flags;
	uint32_t len;
	size_t mlen;
	int fd;
	struct rdmamig_opts o = {
		.role = RDMAMIG_SOURCE, .transport = RDMAMIG_TRANSPORT_TCP, .addr = "127.0.0.1",
		.port = port, .channels = 1, .timeout_ms = TMO_MS, .max_iterations = 2, .no_auth = 1,
	};

	memset(&e, 0, sizeof(e));
	log_start();
	cr_assert_eq(fake_vmm_init(&e.vmm, 2, MiB, 2000), 0);
	cr_assert_eq(fake_vmm_start(&e.vmm), 0);
	e.lfd = listen_any(&e.port);
	snprintf(port, sizeof(port), "%d", e.port);
	e.m = rdmamig_new(&o, &fake_ops, &e.vmm);
	cr_assert_not_null(e.m);
	cr_assert_eq(pthread_create(&e.th, NULL, esrc_run, &e), 0);

	fd = accept_bounded(e.lfd);
	cr_assert_eq(recv_frame(fd, &type, &flags, &h, sizeof(h), &len), 0);
	rm_ctrl_hello_ack(&a, &h, 0, 0, false);
	send_all(fd, buf, frame(buf, RM_WIRE_HELLO_ACK, 0, &a, sizeof(a)));
	cr_assert_eq(next_engine_msg(fd, msg, sizeof(msg), &mlen), RM_MIG_SETUP, "%s: no SETUP", name);
	if (when == AT_COMMIT) {
		struct rm_ctrl_layout_msg lay = { .l = { .count = rm_wire_put32(2) } };

		for (uint32_t k = 0; k < 2; k++)
			lay.r[k] = (struct rm_wire_region){ .id = rm_wire_put32(10 + k),
							    .size = rm_wire_put64(MiB) };
		send_all(fd, buf, engine_msg(buf, RM_MIG_SETUP_OK, NULL, 0));
		send_all(fd, buf, frame(buf, RM_WIRE_LAYOUT, 0, &lay, sizeof(lay.l) + 2 * sizeof(lay.r[0])));
		while ((type = next_engine_msg(fd, msg, sizeof(msg), &mlen)) && type != RM_MIG_COMMIT)
			;
		cr_assert_eq(type, RM_MIG_COMMIT, "%s: no COMMIT", name);
	}
	if (hostile)
		send_all(fd, buf, hostile(buf));
	else
		close(fd);
	join_bounded(e.th, name);
	if (hostile)
		close(fd);
	close(e.lfd);

	cr_assert_eq(e.rc, want_rc, "%s: rdmamig_run returned %d (%s), expected %s", name, e.rc,
		     rdmamig_strerror(e.rc), rdmamig_strerror(want_rc));
	assert_log(why, "%s: the log does not name \"%s\":\n%s", name, why, logbuf);
	/* Not released: every pause was undone, and the guest runs on. */
	cr_assert_eq(e.vmm.resume_calls, e.vmm.pause_calls, "%s: paused %d times, resumed %d", name,
		     e.vmm.pause_calls, e.vmm.resume_calls);
	uint64_t c0 = atomic_load(&e.vmm.counter);
	for (int i = 0; i < 200 && atomic_load(&e.vmm.counter) == c0; i++)
		usleep(5000);
	cr_assert_gt(atomic_load(&e.vmm.counter), c0, "%s: the source guest does not run", name);
	rdmamig_free(e.m);
	fake_vmm_destroy(&e.vmm);
}

static size_t h_refuse(uint8_t *b)
{
	struct rm_mig_refuse r = { .reason = (int32_t)htole32((uint32_t)RDMAMIG_E_REFUSED) };

	memset(r.text, 'Z', sizeof(r.text));	/* unterminated */
	return engine_msg(b, RM_MIG_REFUSE, &r, sizeof(r));
}
static size_t h_refuse_empty(uint8_t *b) { return engine_msg(b, RM_MIG_REFUSE, NULL, 0); }
static size_t h_refuse_short(uint8_t *b) { return engine_msg(b, RM_MIG_REFUSE, "ab", 2); }
static size_t h_resumed_early(uint8_t *b)
{
	struct rm_mig_resumed r = { 0 };

	return engine_msg(b, RM_MIG_RESUMED, &r, sizeof(r));
}
static size_t h_setup_ok_body(uint8_t *b) { return engine_msg(b, RM_MIG_SETUP_OK, "junk", 4); }
static size_t h_unknown(uint8_t *b) { return engine_msg(b, RM_WIRE_ENGINE_LAST, NULL, 0); }
static size_t h_resumed_short(uint8_t *b)
{
	struct rm_mig_resumed r = { 0 };

	return engine_msg(b, RM_MIG_RESUMED, &r, sizeof(r) - 1);
}
static size_t h_resumed_empty(uint8_t *b) { return engine_msg(b, RM_MIG_RESUMED, NULL, 0); }
static size_t h_abort(uint8_t *b)
{
	struct rm_wire_abort_body a;

	rm_ctrl_abort_body(&a, -EIO, "hostile destination aborts");
	return frame(b, RM_WIRE_ABORT, 0, &a, sizeof(a));
}
static size_t h_garbage(uint8_t *b)
{
	memset(b, 0xff, 64);
	return 64;
}
static size_t h_bye(uint8_t *b) { return frame(b, RM_WIRE_BYE, 0, NULL, 0); }

Test(hostile_engine, destination_at_setup, .timeout = 120)
{
	engine_source_case("REFUSE unterminated", AT_SETUP, h_refuse, RDMAMIG_E_REFUSED, "ZZZZZZZZZZ");
	engine_source_case("REFUSE of 0 bytes", AT_SETUP, h_refuse_empty, RDMAMIG_E_REFUSED, "the destination refused");
	engine_source_case("REFUSE of 2 bytes", AT_SETUP, h_refuse_short, RDMAMIG_E_REFUSED, "the destination refused");
	engine_source_case("RESUMED before SETUP_OK", AT_SETUP, h_resumed_early, PROTO, "expected SETUP_OK, the peer sent RESUMED");
	engine_source_case("unknown engine type", AT_SETUP, h_unknown, PROTO, "expected SETUP_OK, the peer sent UNKNOWN");
	engine_source_case("transport ABORT", AT_SETUP, h_abort, RDMAMIG_E_ABORTED, "hostile destination aborts");
	engine_source_case("garbage", AT_SETUP, h_garbage, PROTO, "channel 0");
	engine_source_case("close", AT_SETUP, NULL, -ECONNRESET, "waiting for SETUP_OK");
}

Test(hostile_engine, destination_after_commit, .timeout = 180)
{
	engine_source_case("REFUSE", AT_COMMIT, h_refuse, RDMAMIG_E_REFUSED, "ZZZZZZZZZZ");
	engine_source_case("REFUSE of 0 bytes", AT_COMMIT, h_refuse_empty, RDMAMIG_E_REFUSED, "the destination refused");
	engine_source_case("SETUP_OK instead of LOADED", AT_COMMIT, h_setup_ok_body, PROTO, "expected LOADED, the peer sent SETUP_OK");
	/* RESUMED before GO is out of turn, whatever its length (migration/protocol.h). */
	engine_source_case("RESUMED one byte short", AT_COMMIT, h_resumed_short, PROTO, "expected LOADED, the peer sent RESUMED");
	engine_source_case("RESUMED of 0 bytes", AT_COMMIT, h_resumed_empty, PROTO, "expected LOADED, the peer sent RESUMED");
	engine_source_case("transport ABORT", AT_COMMIT, h_abort, RDMAMIG_E_ABORTED, "hostile destination aborts");
	engine_source_case("BYE", AT_COMMIT, h_bye, -EPIPE, "waiting for LOADED");
	engine_source_case("close", AT_COMMIT, NULL, -ECONNRESET, "waiting for LOADED");
}

/* ---- the engine: a hostile source against rdmamig_run(destination) ---- */

struct edst {
	struct fake_vmm vmm;
	rdmamig_t *m;
	pthread_t th;
	int rc;
};

static void *edst_run(void *arg)
{
	struct edst *e = arg;

	e->rc = rdmamig_run(e->m);
	return NULL;
}

/* A SETUP for the fake destination VMM (2 regions of 1 MiB, ids 10, 11). */
static size_t good_setup(uint8_t *out)
{
	struct fake_vmm v;
	struct rdmamig_vm_desc d;
	struct rm_mig_setup *s;
	size_t n;

	cr_assert_eq(fake_vmm_init(&v, 2, MiB, 0), 0);
	fake_describe(&v, &d);
	s = rm_mig_setup_encode(&d, 0, 1, &n);
	memcpy(out, s, n);
	free(s);
	fake_vmm_destroy(&v);
	return n;
}

/* spoil(setup, len) edits a good SETUP and returns its new length; then
 * after(buf) (may be NULL) follows a SETUP_OK. */
static void engine_dest_case(const char *name, size_t (*spoil)(uint8_t *s, size_t n),
			     size_t (*after)(uint8_t *buf), int want_rc, const char *why)
{
	struct edst e;
	struct rdmamig_opts o = {
		.role = RDMAMIG_DESTINATION, .transport = RDMAMIG_TRANSPORT_TCP, .addr = "127.0.0.1",
		.port = "0", .timeout_ms = TMO_MS, .no_auth = 1,
	};
	static uint8_t setup[8192], buf[8192], msg[8192];
	struct rm_mig_refuse rf;
	size_t n, mlen;
	uint16_t type;
	int p = -1, fd;

	memset(&e, 0, sizeof(e));
	log_start();
	cr_assert_eq(fake_vmm_init(&e.vmm, 2, MiB, 0), 0);
	e.m = rdmamig_new(&o, &fake_ops, &e.vmm);
	cr_assert_not_null(e.m);
	cr_assert_eq(pthread_create(&e.th, NULL, edst_run, &e), 0);
	for (int i = 0; i < 500 && (p = rdmamig_listen_port(e.m)) <= 0; i++)
		usleep(10000);
	cr_assert_gt(p, 0);
	fd = raw_source_chan(p, 1, 0, 3);
	n = good_setup(setup);
	if (spoil)
		n = spoil(setup, n);
	send_all(fd, buf, engine_msg(buf, RM_MIG_SETUP, setup, n));
	type = next_engine_msg(fd, msg, sizeof(msg), &mlen);
	if (after) {
		cr_assert_eq(type, RM_MIG_SETUP_OK, "%s: SETUP answered with %s", name, rm_mig_type_name(type));
		send_all(fd, buf, after(buf));
		type = next_engine_msg(fd, msg, sizeof(msg), &mlen);
	}
	join_bounded(e.th, name);
	close(fd);
	cr_assert_eq(e.rc, want_rc, "%s: rdmamig_run returned %d (%s), expected %s", name, e.rc,
		     rdmamig_strerror(e.rc), rdmamig_strerror(want_rc));
	assert_log(why, "%s: the log does not name \"%s\":\n%s", name, why, logbuf);
	/* A protocol error is told to the source in a REFUSE (engine) naming it. */
	if (want_rc == PROTO && type == RM_MIG_REFUSE) {
		memset(&rf, 0, sizeof(rf));
		memcpy(&rf, msg, mlen < sizeof(rf) ? mlen : sizeof(rf));
		rf.text[sizeof(rf.text) - 1] = 0;
		cr_assert(rf.text[0], "%s: REFUSE without a text", name);
	}
	/* Never a guest run from what a hostile source sent. */
	cr_assert_eq(e.vmm.resume_calls, 0, "%s: the destination ran the guest", name);
	rdmamig_free(e.m);
	fake_vmm_destroy(&e.vmm);
}

#define SETUP_FIELD(s, f) (*(uint32_t *)((s) + offsetof(struct rm_mig_setup, f)))
static size_t s_version(uint8_t *s, size_t n) { SETUP_FIELD(s, version) = htole32(RM_MIG_VERSION + 1); return n; }
static size_t s_regions0(uint8_t *s, size_t n) { SETUP_FIELD(s, nr_regions) = 0; return n; }
static size_t s_regions_max1(uint8_t *s, size_t n) { SETUP_FIELD(s, nr_regions) = htole32(RDMAMIG_MAX_REGIONS + 1); return n; }
static size_t s_regions_u32(uint8_t *s, size_t n) { SETUP_FIELD(s, nr_regions) = 0xffffffffu; return n; }
static size_t s_regions_3(uint8_t *s, size_t n) { SETUP_FIELD(s, nr_regions) = htole32(3); return n; }
static size_t s_short(uint8_t *s, size_t n) { return sizeof(struct rm_mig_setup) - 1; }
static size_t s_empty(uint8_t *s, size_t n) { return 0; }
static size_t s_page0(uint8_t *s, size_t n) { SETUP_FIELD(s, page_size) = 0; return n; }
static size_t s_page_odd(uint8_t *s, size_t n) { SETUP_FIELD(s, page_size) = htole32(4097); return n; }
static size_t s_page_u32(uint8_t *s, size_t n) { SETUP_FIELD(s, page_size) = 0xffffffffu; return n; }
static size_t s_dup(uint8_t *s, size_t n)
{
	struct rm_mig_setup *h = (struct rm_mig_setup *)s;

	h->regions[1].id = h->regions[0].id;
	return n;
}
static size_t s_size0(uint8_t *s, size_t n) { ((struct rm_mig_setup *)s)->regions[0].size = 0; return n; }
static size_t s_size_u64(uint8_t *s, size_t n) { ((struct rm_mig_setup *)s)->regions[1].size = UINT64_MAX; return n; }
static size_t s_vcpus(uint8_t *s, size_t n) { SETUP_FIELD(s, nr_vcpus) = 0xffffffffu; return n; }
static size_t s_model(uint8_t *s, size_t n)
{
	memset(((struct rm_mig_setup *)s)->cpu_model, 'M', RDMAMIG_CPU_MODEL_LEN);	/* unterminated */
	return n;
}

Test(hostile_engine, source_setup_fields, .timeout = 180)
{
	engine_dest_case("version 3", s_version, NULL, PROTO, "engine protocol version 3");
	engine_dest_case("0 regions", s_regions0, NULL, PROTO, "SETUP announces 0 RAM regions");
	engine_dest_case("max + 1 regions", s_regions_max1, NULL, PROTO, "SETUP announces 65 RAM regions");
	engine_dest_case("2^32 - 1 regions", s_regions_u32, NULL, PROTO, "SETUP announces 4294967295 RAM regions");
	engine_dest_case("3 regions, 2 sent", s_regions_3, NULL, PROTO, "3 regions need");
	engine_dest_case("SETUP one byte short", s_short, NULL, PROTO, "shorter than its");
	engine_dest_case("SETUP of 0 bytes", s_empty, NULL, PROTO, "SETUP of 0 bytes");
	engine_dest_case("page size 0", s_page0, NULL, PROTO, "page size 0 is not");
	engine_dest_case("page size 4097", s_page_odd, NULL, PROTO, "page size 4097 is not");
	engine_dest_case("page size 2^32 - 1", s_page_u32, NULL, PROTO, "page size 4294967295 is not");
	engine_dest_case("region id twice", s_dup, NULL, PROTO, "appears twice");
	engine_dest_case("region size 0", s_size0, NULL, PROTO, "size 0 is not a page multiple");
	engine_dest_case("region size 2^64 - 1", s_size_u64, NULL, PROTO, "is not a page multiple");
	engine_dest_case("vCPUs 2^32 - 1", s_vcpus, NULL, RDMAMIG_E_REFUSED, "vCPU count: source 4294967295");
	engine_dest_case("CPU model unterminated", s_model, NULL, RDMAMIG_E_REFUSED, "CPU model");
}

static size_t a_commit_first(uint8_t *b)
{
	struct rm_mig_commit c = { 0 };

	return engine_msg(b, RM_MIG_COMMIT, &c, sizeof(c));
}
static size_t a_commit_len(uint8_t *b)
{
	uint64_t st[2] = { 0xfa4e57a7e0000001ull, 1 };
	struct rm_mig_commit c = { .state_len = htole64(17) };
	size_t n = engine_msg(b, RM_MIG_STATE, st, sizeof(st));

	return n + engine_msg(b + n, RM_MIG_COMMIT, &c, sizeof(c));
}
static size_t a_commit_u64(uint8_t *b)
{
	uint64_t st[2] = { 0xfa4e57a7e0000001ull, 1 };
	struct rm_mig_commit c = { .state_len = htole64(UINT64_MAX) };
	size_t n = engine_msg(b, RM_MIG_STATE, st, sizeof(st));

	return n + engine_msg(b + n, RM_MIG_COMMIT, &c, sizeof(c));
}
static size_t a_commit_short(uint8_t *b)
{
	struct rm_mig_commit c = { 0 };

	return engine_msg(b, RM_MIG_COMMIT, &c, sizeof(c) - 1);
}
static size_t a_state_twice(uint8_t *b)
{
	size_t n = engine_msg(b, RM_MIG_STATE, "s", 1);

	return n + engine_msg(b + n, RM_MIG_STATE, "s", 1);
}
static size_t a_iter_short(uint8_t *b)
{
	struct rm_mig_iter it = { 0 };

	return engine_msg(b, RM_MIG_ITER, &it, sizeof(it) - 1);
}
static size_t a_iter_max(uint8_t *b)
{
	struct rm_mig_iter it = { .index = 0xffffffffu, .pages = UINT64_MAX, .bytes = UINT64_MAX,
				  .remaining_bytes = UINT64_MAX };
	size_t n = engine_msg(b, RM_MIG_ITER, &it, sizeof(it));

	return n + engine_msg(b + n, RM_MIG_RESUMED, NULL, 0);	/* then out of order */
}
static size_t a_setup_again(uint8_t *b) { return engine_msg(b, RM_MIG_SETUP, NULL, 0); }
static size_t a_setup_ok(uint8_t *b) { return engine_msg(b, RM_MIG_SETUP_OK, NULL, 0); }
static size_t a_resumed(uint8_t *b)
{
	struct rm_mig_resumed r = { 0 };

	return engine_msg(b, RM_MIG_RESUMED, &r, sizeof(r));
}
static size_t a_unknown(uint8_t *b) { return engine_msg(b, RM_WIRE_ENGINE_LAST, NULL, 0); }
static size_t a_refuse(uint8_t *b) { return engine_msg(b, RM_MIG_REFUSE, NULL, 0); }
static size_t a_nothing(uint8_t *b) { return 0; }
static size_t a_state_bad(uint8_t *b)
{
	uint64_t st[2] = { 0xbad, 1 };
	struct rm_mig_commit c = { .state_len = htole64(sizeof(st)) };
	size_t n = engine_msg(b, RM_MIG_STATE, st, sizeof(st));

	return n + engine_msg(b + n, RM_MIG_COMMIT, &c, sizeof(c));
}
static size_t a_digest(uint8_t *b)
{
	uint64_t st[2] = { 0xfa4e57a7e0000001ull, 1 };
	struct rm_mig_commit c = { .state_len = htole64(sizeof(st)), .flags = htole32(RM_MIG_F_VERIFY),
				   .digest = 12345 };
	size_t n = engine_msg(b, RM_MIG_STATE, st, sizeof(st));

	return n + engine_msg(b + n, RM_MIG_COMMIT, &c, sizeof(c));
}

Test(hostile_engine, source_messages_out_of_order, .timeout = 240)
{
	engine_dest_case("COMMIT without STATE", NULL, a_commit_first, PROTO, "COMMIT before any STATE");
	engine_dest_case("COMMIT state_len 17", NULL, a_commit_len, PROTO, "COMMIT says 17 bytes of state, 16 arrived");
	engine_dest_case("COMMIT state_len 2^64 - 1", NULL, a_commit_u64, PROTO, "COMMIT says 18446744073709551615 bytes");
	engine_dest_case("COMMIT one byte short", NULL, a_commit_short, PROTO, "unexpected COMMIT");
	engine_dest_case("STATE twice", NULL, a_state_twice, PROTO, "unexpected STATE");
	engine_dest_case("ITER one byte short", NULL, a_iter_short, PROTO, "unexpected ITER");
	engine_dest_case("ITER of 2^64 - 1, then RESUMED", NULL, a_iter_max, PROTO, "unexpected RESUMED");
	engine_dest_case("SETUP again", NULL, a_setup_again, PROTO, "unexpected SETUP");
	engine_dest_case("SETUP_OK to a destination", NULL, a_setup_ok, PROTO, "unexpected SETUP_OK");
	engine_dest_case("RESUMED to a destination", NULL, a_resumed, PROTO, "unexpected RESUMED");
	engine_dest_case("unknown engine type", NULL, a_unknown, PROTO, "unexpected UNKNOWN");
	engine_dest_case("REFUSE from a source", NULL, a_refuse, PROTO, "unexpected REFUSE");
	engine_dest_case("state the VMM refuses", NULL, a_state_bad, -EINVAL, "cannot load the device state");
	engine_dest_case("RAM digest differs", NULL, a_digest, RDMAMIG_E_VERIFY, "RAM digest");
	engine_dest_case("silence after SETUP_OK", NULL, a_nothing, -ETIMEDOUT, "lost the source while receiving");
}

/* ---- authentication: a source without the key against a keyed destination ---- */

/* Wait (bounded) until the library's log names what. */
static bool log_wait(const char *what)
{
	for (int i = 0; i < 300; i++) {
		if (log_has(what))
			return true;
		usleep(10000);
	}
	return false;
}

static size_t auth_frame(uint8_t *b, uint32_t step, uint32_t reserved, uint8_t nonce_fill,
			 uint8_t mac_fill, size_t len)
{
	struct rm_wire_auth a = { .step = rm_wire_put32(step), .reserved = rm_wire_put32(reserved) };

	memset(a.nonce, nonce_fill, sizeof(a.nonce));
	memset(a.mac, mac_fill, sizeof(a.mac));
	return frame(b, RM_WIRE_AUTH, 0, &a, len);
}

struct auth_case {
	const char *name;
	int kind;		/* 0: bytes right after HELLO_ACK; 1: a wrong proof */
	size_t (*build)(uint8_t *b);
	const char *why;	/* in the log */
};

static size_t x_ctrl(uint8_t *b) { return engine_msg(b, RM_MIG_SETUP, "x", 1); }
static size_t x_marker(uint8_t *b)
{
	struct rm_wire_marker m = { .epoch = rm_wire_put64(1) };

	return frame(b, RM_WIRE_MARKER, 0, &m, sizeof(m));
}
static size_t x_layout(uint8_t *b)
{
	struct rm_wire_layout l = { 0 };

	return frame(b, RM_WIRE_LAYOUT, 0, &l, sizeof(l));
}
static size_t x_step3_first(uint8_t *b) { return auth_frame(b, 3, 0, 0, 0x11, sizeof(struct rm_wire_auth)); }
static size_t x_step2(uint8_t *b) { return auth_frame(b, 2, 0, 0x22, 0, sizeof(struct rm_wire_auth)); }
static size_t x_step0(uint8_t *b) { return auth_frame(b, 0, 0, 0x22, 0, sizeof(struct rm_wire_auth)); }
static size_t x_step_max(uint8_t *b) { return auth_frame(b, 0xffffffffu, 0, 0x22, 0, sizeof(struct rm_wire_auth)); }
static size_t x_short(uint8_t *b) { return auth_frame(b, 1, 0, 0x22, 0, sizeof(struct rm_wire_auth) - 1); }
static size_t x_mac_in_1(uint8_t *b) { return auth_frame(b, 1, 0, 0x22, 0x33, sizeof(struct rm_wire_auth)); }
static size_t x_reserved(uint8_t *b) { return auth_frame(b, 1, 1, 0x22, 0, sizeof(struct rm_wire_auth)); }
static size_t x_twice(uint8_t *b)
{
	size_t n = auth_frame(b, 1, 0, 0x22, 0, sizeof(struct rm_wire_auth));

	return n + auth_frame(b + n, 1, 0, 0x22, 0, sizeof(struct rm_wire_auth));
}

static const struct auth_case auth_cases[] = {
	{ "CTRL before AUTH", 0, x_ctrl, "CTRL before authentication" },
	{ "MARKER before AUTH", 0, x_marker, "a message before authentication" },
	{ "LAYOUT before AUTH", 0, x_layout, "a message before authentication" },
	{ "AUTH step 3 first", 0, x_step3_first, "AUTH step out of order" },
	{ "AUTH step 2 from a source", 0, x_step2, "AUTH step out of order" },
	{ "AUTH step 0", 0, x_step0, "AUTH step out of order" },
	{ "AUTH step 2^32 - 1", 0, x_step_max, "AUTH step out of order" },
	{ "AUTH one byte short", 0, x_short, "of the wrong length" },
	{ "AUTH step 1 with a MAC", 0, x_mac_in_1, "a field its step does not carry" },
	{ "AUTH reserved", 0, x_reserved, "AUTH step out of order" },
	{ "AUTH step 1 twice", 0, x_twice, "AUTH step out of order" },
	{ "a wrong proof", 1, NULL, "did not prove" },
};

/* A HELLO with RM_CAP_AUTH, its HELLO_ACK read, and then silence. */
static int raw_source_chan_keyed_silent(int port)
{
	struct rm_wire_hello h;
	struct rm_wire_hello_ack ack;
	uint8_t buf[64];
	uint16_t type, flags;
	uint32_t len;
	int fd = connect_to(port);

	good_hello(&h, 1, 0, 77);
	h.caps = rm_wire_put32(rm_wire_get32(h.caps) | RM_CAP_AUTH);
	send_all(fd, buf, frame(buf, RM_WIRE_HELLO, 0, &h, sizeof(h)));
	cr_assert_eq(recv_frame(fd, &type, &flags, &ack, sizeof(ack), &len), 0);
	cr_assert_eq(type, RM_WIRE_HELLO_ACK);
	return fd;
}

struct good_src {
	pthread_t th;
	int port, rc;
};

static void *good_src_run(void *arg)
{
	struct good_src *g = arg;
	char port[16];
	struct rm_transport_opts o = {
		.kind = RM_TRANSPORT_TCP, .addr = "127.0.0.1", .port = port, .nchan = 1,
		.timeout_ms = TMO_MS,
	};
	struct rm_region r[2] = {
		{ .id = 0, .addr = src_ram[0], .size = sizeof(src_ram[0]) },
		{ .id = 1, .addr = src_ram[1], .size = sizeof(src_ram[1]) },
	};
	struct rm_transport *t;

	memcpy(o.psk, test_key, sizeof(test_key));
	o.psk_len = sizeof(test_key);
	snprintf(port, sizeof(port), "%d", g->port);
	g->rc = rm_tr_connect(&o, &t);
	if (!g->rc) {
		g->rc = rm_tr_layout(t, r, 2);
		rm_tr_close(t);
	}
	return NULL;
}

/* Every wrong step of the AUTH exchange, and every message that comes
 * before it, costs the hostile source its connection (told why) while the
 * destination allocates nothing for it; a source that holds the key is
 * accepted afterwards, even with a silent peer still connected. */
Test(hostile_auth, keyed_destination_refuses_every_bad_step, .timeout = 120)
{
	struct good_src g = { 0 };
	struct tdst d;
	int silent;

	tdst_start_key(&d, true);
	for (size_t i = 0; i < ARRAY_SIZE(auth_cases) + 1; i++) {
		const struct auth_case *c = i < ARRAY_SIZE(auth_cases) ? &auth_cases[i] : NULL;
		const char *name = c ? c->name : "HELLO without RM_CAP_AUTH";
		struct rm_wire_hello h;
		struct rm_wire_hello_ack ack;
		struct rm_wire_refuse_body rf;
		struct rm_wire_auth a;
		uint8_t buf[256];
		uint16_t type, flags;
		uint32_t len;
		int fd;

		log_start();	/* each case must name its own cause */
		fd = connect_to(d.port);
		good_hello(&h, 1, 0, 1000 + i);
		if (c)
			h.caps = rm_wire_put32(rm_wire_get32(h.caps) | RM_CAP_AUTH);
		send_all(fd, buf, frame(buf, RM_WIRE_HELLO, 0, &h, sizeof(h)));
		memset(&rf, 0, sizeof(rf));
		cr_assert_eq(recv_frame(fd, &type, &flags, c ? (void *)&ack : (void *)&rf,
					c ? sizeof(ack) : sizeof(rf), &len), 0, "%s: no answer", name);
		if (!c) {
			cr_assert_eq(type, RM_WIRE_REFUSE, "%s: answered with %s", name, rm_wire_type_name(type));
			cr_assert_eq(rm_wire_get32(rf.reason), RM_REFUSE_AUTH, "%s: reason %u", name,
				     rm_wire_get32(rf.reason));
			close(fd);
			continue;
		}
		cr_assert_eq(type, RM_WIRE_HELLO_ACK, "%s: answered with %s", name, rm_wire_type_name(type));
		cr_assert(rm_wire_get32(ack.caps) & RM_CAP_AUTH, "%s: a keyed destination grants no AUTH", name);
		if (c->kind == 1) {
			send_all(fd, buf, auth_frame(buf, 1, 0, 0x44, 0, sizeof(a)));
			cr_assert_eq(recv_until(fd, RM_WIRE_AUTH, &a, sizeof(a), &len), 0, "%s: no step 2", name);
			cr_assert_eq(rm_wire_get32(a.step), 2);
			send_all(fd, buf, auth_frame(buf, 3, 0, 0, 0x55, sizeof(a)));
			memset(&rf, 0, sizeof(rf));
			cr_assert_eq(recv_until(fd, RM_WIRE_REFUSE, &rf, sizeof(rf), &len), 0,
				     "%s: no REFUSE", name);
			cr_assert_eq(rm_wire_get32(rf.reason), RM_REFUSE_AUTH);
		} else {
			send_all(fd, buf, c->build(buf));
			/* An ABORT naming it, or the connection closed: never more.
			 * Step 1 twice: the first is good, and its answer (step 2,
			 * sent by another thread than the one that reads the
			 * second) may come before the ABORT or not at all. */
			int got = recv_frame(fd, &type, &flags, buf, sizeof(buf), &len);

			if (got == 0 && c->build == x_twice && type == RM_WIRE_AUTH) {
				struct rm_wire_auth ans;

				cr_assert_eq(len, sizeof(ans), "%s: an AUTH of %zu bytes", name, (size_t)len);
				memcpy(&ans, buf, sizeof(ans));
				cr_assert_eq(rm_wire_get32(ans.step), 2, "%s: answered with AUTH step %u", name,
					     rm_wire_get32(ans.step));
				got = recv_frame(fd, &type, &flags, buf, sizeof(buf), &len);
			}
			if (got == 0)
				cr_assert(type == RM_WIRE_ABORT || type == RM_WIRE_REFUSE,
					  "%s: answered with %s", name, rm_wire_type_name(type));
		}
		cr_assert(log_wait(c->why), "%s: the log does not name \"%s\":\n%s", name, c->why, logbuf);
		close(fd);
	}
	/* A peer that says HELLO and then nothing holds a slot, not the door. */
	silent = raw_source_chan_keyed_silent(d.port);
	g.port = d.port;
	cr_assert_eq(pthread_create(&g.th, NULL, good_src_run, &g), 0);
	join_bounded(g.th, "the keyed source");
	tdst_finish(&d);
	close(silent);
	cr_assert_eq(d.accept_rc, 0, "the keyed source after the hostile ones: %s",
		     rdmamig_strerror(d.accept_rc));
	cr_assert_eq(g.rc, 0, "the keyed source: %s", rdmamig_strerror(g.rc));
	cr_assert_eq(d.layout_rc, 0);
}
