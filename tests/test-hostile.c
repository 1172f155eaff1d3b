/*
 * tests/test-hostile.c — a hostile peer speaking the wire from outside, over
 * TCP on 127.0.0.1, against both roles of the library: a raw socket plays
 * the source against rm_tr_accept()/rdmamig_run() destinations, and a raw
 * listener plays the destination against rm_tr_connect()/rdmamig_run()
 * sources.  Field by field it tries every bound of transport/wire.h and
 * migration/protocol.h (0, max, max + 1, 2^32 - 1), every message out of
 * order, truncation and silence, and asserts for each: the library returns
 * the error the contract names, within a bound of the timeout (no hang), the
 * log names the cause, a protocol error is told to the peer in an ABORT or
 * REFUSE, a hostile source never gets a destination guest run, and a hostile
 * destination never gets the source guest released (it runs on).
 * This file: a hostile source against the handshake and the frames after
 * it; test-hostile-peer.c has the rest.  Host suite: TCP only, no KVM.
 */
#include "tests/test-hostile.h"

struct hello_case {
	const char *name;
	void (*spoil)(struct rm_wire_hello *h);
	uint32_t reason;	/* RM_REFUSE_* expected */
	const char *why;	/* in the REFUSE text */
};

#define SPOIL(n, stmt) static void n(struct rm_wire_hello *h) { stmt; }
SPOIL(bad_magic, h->magic = rm_wire_put32(0x12345678))
SPOIL(magic_zero, h->magic = 0)
SPOIL(vmin_gt_vmax, (h->version_min = rm_wire_put16(3), h->version_max = rm_wire_put16(2)))
SPOIL(vmin_gt_vmax2, (h->version_min = rm_wire_put16(RM_WIRE_VERSION + 1), h->version_max = rm_wire_put16(RM_WIRE_VERSION)))
SPOIL(vmax_old, (h->version_min = rm_wire_put16(1), h->version_max = rm_wire_put16(RM_WIRE_VERSION_MIN - 1)))
SPOIL(vmin_new, (h->version_min = rm_wire_put16(RM_WIRE_VERSION + 1), h->version_max = rm_wire_put16(0xffff)))
SPOIL(caps_none, h->caps = 0)
SPOIL(caps_only_unknown, h->caps = rm_wire_put32(0xfffffffcu))
SPOIL(nchan_zero, h->nchan = 0)
SPOIL(nchan_max1, (h->nchan = rm_wire_put16(RM_WIRE_MAX_CHANNELS + 1)))
SPOIL(nchan_ffff, (h->nchan = rm_wire_put16(0xffff), h->chan = 0))
SPOIL(chan_eq_nchan, (h->nchan = rm_wire_put16(2), h->chan = rm_wire_put16(2)))
SPOIL(chan_ffff, h->chan = rm_wire_put16(0xffff))
SPOIL(write_zero, h->max_write = 0)
SPOIL(write_min1, h->max_write = rm_wire_put32(RM_WIRE_MIN_WRITE - 1))
SPOIL(write_not_pow2, h->max_write = rm_wire_put32(RM_WIRE_MIN_WRITE + 1))
SPOIL(write_max1, h->max_write = rm_wire_put32(RM_WIRE_MAX_WRITE * 2))
SPOIL(write_u32max, h->max_write = rm_wire_put32(0xffffffffu))
SPOIL(credits_tcp, h->credits = rm_wire_put32(1))
SPOIL(credits_u32max, h->credits = rm_wire_put32(0xffffffffu))

static const struct hello_case hello_cases[] = {
	{ "magic", bad_magic, RM_REFUSE_MAGIC, "magic" },
	{ "magic 0", magic_zero, RM_REFUSE_MAGIC, "magic" },
	{ "version_min > version_max", vmin_gt_vmax, RM_REFUSE_VERSION, "versions" },
	{ "version_min > version_max, newer", vmin_gt_vmax2, RM_REFUSE_VERSION, "versions" },
	{ "versions older than the oldest", vmax_old, RM_REFUSE_VERSION, "versions" },
	{ "versions newer than ours to 65535", vmin_new, RM_REFUSE_VERSION, "versions" },
	{ "no caps", caps_none, RM_REFUSE_CAPS, "caps" },
	{ "unknown caps only", caps_only_unknown, RM_REFUSE_CAPS, "caps" },
	{ "nchan 0", nchan_zero, RM_REFUSE_CHANNELS, "channel" },
	{ "nchan max + 1", nchan_max1, RM_REFUSE_CHANNELS, "channel" },
	{ "nchan 65535", nchan_ffff, RM_REFUSE_CHANNELS, "channel" },
	{ "chan == nchan", chan_eq_nchan, RM_REFUSE_CHANNELS, "channel" },
	{ "chan 65535", chan_ffff, RM_REFUSE_CHANNELS, "channel" },
	{ "max_write 0", write_zero, RM_REFUSE_PARAMS, "max_write" },
	{ "max_write min - 1", write_min1, RM_REFUSE_PARAMS, "max_write" },
	{ "max_write not a power of two", write_not_pow2, RM_REFUSE_PARAMS, "max_write" },
	{ "max_write max * 2", write_max1, RM_REFUSE_PARAMS, "max_write" },
	{ "max_write 2^32 - 1", write_u32max, RM_REFUSE_PARAMS, "max_write" },
	{ "credits on TCP", credits_tcp, RM_REFUSE_PARAMS, "credits" },
	{ "credits 2^32 - 1", credits_u32max, RM_REFUSE_PARAMS, "credits" },
};

/* Every bad HELLO field is refused with its reason, the destination keeps
 * listening, and a good source is accepted after all of them. */
Test(hostile_handshake, every_hello_field_refused_then_a_good_source_accepted, .timeout = 60)
{
	struct tdst d;

	tdst_start(&d);
	for (size_t i = 0; i < ARRAY_SIZE(hello_cases); i++) {
		const struct hello_case *c = &hello_cases[i];
		struct rm_wire_hello h;
		struct rm_wire_refuse_body rf;
		uint8_t buf[64];
		uint16_t type, flags;
		uint32_t len;
		int fd = connect_to(d.port);

		good_hello(&h, 1, 0, 7);
		c->spoil(&h);
		send_all(fd, buf, frame(buf, RM_WIRE_HELLO, 0, &h, sizeof(h)));
		memset(&rf, 0, sizeof(rf));
		cr_assert_eq(recv_frame(fd, &type, &flags, &rf, sizeof(rf), &len), 0,
			     "%s: no answer", c->name);
		cr_assert_eq(type, RM_WIRE_REFUSE, "%s: answered with %s", c->name, rm_wire_type_name(type));
		cr_assert_eq(rm_wire_get32(rf.reason), c->reason, "%s: reason %u, expected %u", c->name,
			     rm_wire_get32(rf.reason), c->reason);
		rf.text[RM_WIRE_TEXT - 1] = 0;
		cr_assert(strstr(rf.text, c->why), "%s: REFUSE text \"%s\" does not name %s", c->name,
			  rf.text, c->why);
		close(fd);
	}
	close(raw_source(d.port));
	tdst_finish(&d);
	cr_assert_eq(d.accept_rc, 0, "a good source after %zu bad ones: %s", ARRAY_SIZE(hello_cases),
		     rdmamig_strerror(d.accept_rc));
}

/* Handshake frames that are not a HELLO at all: dropped (or refused), and
 * the destination keeps waiting for a real source. */
Test(hostile_handshake, malformed_first_frames_dropped, .timeout = 60)
{
	struct rm_wire_hello h;
	uint8_t hb[sizeof(h) + 8] = { 0 };	/* a HELLO with room to run long */
	uint8_t buf[256];
	struct {
		const char *name;
		size_t n;
	} cases[12];
	uint8_t store[12][256];
	unsigned nc = 0;
	struct tdst d;

	good_hello(&h, 1, 0, 7);
	memcpy(hb, &h, sizeof(h));
#define ADD(nm, expr) do { cases[nc].name = nm; cases[nc].n = (expr); memcpy(store[nc], buf, cases[nc].n); nc++; } while (0)
	ADD("HELLO of 0 bytes", put_frame(buf, RM_WIRE_HELLO, 0, 0, 0, 0, NULL, 0));
	ADD("HELLO one byte short", put_frame(buf, RM_WIRE_HELLO, 0, sizeof(h) - 1, 0, 0, &h, sizeof(h) - 1));
	ADD("HELLO one byte long", put_frame(buf, RM_WIRE_HELLO, 0, sizeof(h) + 1, 0, 0, hb, sizeof(h) + 1));
	ADD("HELLO of 2^32 - 1 bytes", put_frame(buf, RM_WIRE_HELLO, 0, 0xffffffffu, 0, 0, &h, sizeof(h)));
	ADD("HELLO with flags", put_frame(buf, RM_WIRE_HELLO, 1, sizeof(h), 0, 0, &h, sizeof(h)));
	ADD("HELLO with credits", put_frame(buf, RM_WIRE_HELLO, 0, sizeof(h), 5, 0, &h, sizeof(h)));
	ADD("HELLO with reserved", put_frame(buf, RM_WIRE_HELLO, 0, sizeof(h), 0, 1, &h, sizeof(h)));
	ADD("BYE first", put_frame(buf, RM_WIRE_BYE, 0, 0, 0, 0, NULL, 0));
	ADD("HELLO_ACK first", put_frame(buf, RM_WIRE_HELLO_ACK, 0, sizeof(h), 0, 0, &h, sizeof(h)));
	ADD("type 0", put_frame(buf, RM_WIRE_INVALID, 0, sizeof(h), 0, 0, &h, sizeof(h)));
	ADD("type 0xffff", put_frame(buf, 0xffff, 0, sizeof(h), 0, 0, &h, sizeof(h)));
	ADD("half a header", 7);
#undef ADD
	tdst_start(&d);
	for (unsigned i = 0; i < nc; i++) {
		uint16_t type, flags;
		uint32_t len;
		uint8_t body[64];
		int fd = connect_to(d.port);

		send_all(fd, store[i], cases[i].n);
		shutdown(fd, SHUT_WR);
		/* A REFUSE, or the connection closed: never a HELLO_ACK. */
		if (recv_frame(fd, &type, &flags, body, sizeof(body), &len) == 0)
			cr_assert_eq(type, RM_WIRE_REFUSE, "%s: answered with %s", cases[i].name,
				     rm_wire_type_name(type));
		close(fd);
	}
	cr_assert(log_has("dropping a peer") || log_has("refusing a peer"), "no log names a dropped peer");
	close(raw_source(d.port));
	tdst_finish(&d);
	cr_assert_eq(d.accept_rc, 0, "a good source after the bad frames: %s", rdmamig_strerror(d.accept_rc));
}

/* A peer that connects and says nothing holds accept at most its timeout. */
Test(hostile_handshake, silent_peer_bounded, .timeout = 30)
{
	struct tdst d;
	int fd;

	tdst_start(&d);
	fd = connect_to(d.port);
	send_all(fd, "\x01\x00", 2);	/* two bytes of a header, then nothing */
	tdst_finish(&d);
	close(fd);
	cr_assert_eq(d.accept_rc, -ETIMEDOUT, "accept: %s", rdmamig_strerror(d.accept_rc));
}

/* The same channel twice while a source is being accepted (nchan 2):
 * refused CHANNELS, and the source completes. */
Test(hostile_handshake, channel_twice_refused, .timeout = 30)
{
	struct rm_wire_hello h;
	struct rm_wire_refuse_body rf;
	uint8_t buf[64];
	uint16_t type, flags;
	uint32_t len;
	struct tdst d;
	int a, b, fd;

	tdst_start(&d);
	a = raw_source_chan(d.port, 2, 0, 99);
	for (int i = 1; i < 2; i++) {
		fd = connect_to(d.port);
		good_hello(&h, 2, 0, 99);	/* chan 0 again */
		send_all(fd, buf, frame(buf, RM_WIRE_HELLO, 0, &h, sizeof(h)));
		cr_assert_eq(recv_frame(fd, &type, &flags, &rf, sizeof(rf), &len), 0);
		cr_assert_eq(type, RM_WIRE_REFUSE, "answered with %s", rm_wire_type_name(type));
		cr_assert_eq(rm_wire_get32(rf.reason), RM_REFUSE_CHANNELS,
			     "case %d: reason %u", i, rm_wire_get32(rf.reason));
		close(fd);
	}
	b = raw_source_chan(d.port, 2, 1, 99);
	close(a);
	close(b);
	tdst_finish(&d);
	cr_assert_eq(d.accept_rc, 0);
}

/* ---- a channel that joins by the session id alone ---- */

/* A HELLO offering the key for channel chan of nchan, its HELLO_ACK read. */
static int keyed_chan(int port, unsigned nchan, unsigned chan, uint64_t session)
{
	struct rm_wire_hello h;
	struct rm_wire_hello_ack ack;
	uint8_t buf[64];
	uint16_t type, flags;
	uint32_t len;
	int fd = connect_to(port);

	good_hello(&h, nchan, chan, session);
	h.caps = rm_wire_put32(rm_wire_get32(h.caps) | RM_CAP_AUTH);
	send_all(fd, buf, frame(buf, RM_WIRE_HELLO, 0, &h, sizeof(h)));
	cr_assert_eq(recv_frame(fd, &type, &flags, &ack, sizeof(ack), &len), 0);
	cr_assert_eq(type, RM_WIRE_HELLO_ACK, "channel %u: HELLO answered with %s", chan,
		     rm_wire_type_name(type));
	return fd;
}

static size_t auth_step(uint8_t *b, uint32_t step, const uint8_t *nonce, const uint8_t *mac)
{
	struct rm_wire_auth a = { .step = rm_wire_put32(step) };

	if (nonce)
		memcpy(a.nonce, nonce, RM_WIRE_NONCE);
	if (mac)
		memcpy(a.mac, mac, RM_WIRE_MAC);
	return frame(b, RM_WIRE_AUTH, 0, &a, sizeof(a));
}

/* The source's side of channel 0's AUTH exchange, done right with the key;
 * k keeps its session, nchan and nonces for the proofs that follow. */
static void keyed_auth(int fd, struct rm_transport *k)
{
	struct rm_wire_auth a;
	uint8_t buf[128], mac[RM_WIRE_MAC];
	uint32_t len;

	memset(k->ctrl.nonce_src, (int)(k->session & 0xff) | 1, RM_WIRE_NONCE);
	send_all(fd, buf, auth_step(buf, RM_AUTH_NONCE_SRC, k->ctrl.nonce_src, NULL));
	cr_assert_eq(recv_until(fd, RM_WIRE_AUTH, &a, sizeof(a), &len), 0, "no AUTH step 2");
	cr_assert_eq(rm_wire_get32(a.step), RM_AUTH_NONCE_DST);
	memcpy(k->ctrl.nonce_dst, a.nonce, RM_WIRE_NONCE);
	cr_assert_eq(rm_ctrl_auth_mac(k, 'S', mac), 0);
	send_all(fd, buf, auth_step(buf, RM_AUTH_PROOF_SRC, NULL, mac));
	cr_assert_eq(recv_until(fd, RM_WIRE_AUTH, &a, sizeof(a), &len), 0, "no AUTH step 4");
	cr_assert_eq(rm_wire_get32(a.step), RM_AUTH_PROOF_DST);
}

enum join_how { JOIN_RIGHT, JOIN_GUESSED, JOIN_REPLAYED, JOIN_MARKER };

/*
 * A keyed source connects channel 0 of a 2-channel session; channel 1 is
 * connected with the same session id, as anyone who saw that id could,
 * and after channel 0's exchange it sends what `how` says.  Returns the
 * destination's accept result; *proof gets the right proof of channel 1.
 */
static int join_case(enum join_how how, uint64_t session, const uint8_t *replay,
		     uint8_t proof[RM_WIRE_MAC], const char *why)
{
	struct rm_transport_opts o = { .nchan = 2, .max_write = 1u << 20, .timeout_ms = TMO_MS };
	struct rm_wire_marker mk = { .epoch = rm_wire_put64(1), .chan = rm_wire_put32(1) };
	struct rm_transport k;
	uint8_t buf[256], zero[RM_WIRE_MAC] = { 0 };
	uint32_t len;
	struct tdst d;
	int fd0, fd1;

	memcpy(o.psk, test_key, sizeof(test_key));
	o.psk_len = sizeof(test_key);
	memset(&k, 0, sizeof(k));
	cr_assert_eq(rm_tr_init(&k, &rm_transport_tcp_ops, &o, RM_ROLE_SOURCE, 2, 4096), 0);
	k.session = session;
	tdst_start_key(&d, true);
	fd0 = keyed_chan(d.port, 2, 0, session);
	fd1 = keyed_chan(d.port, 2, 1, session);	/* the intruder's, or the source's own */
	keyed_auth(fd0, &k);
	cr_assert_eq(rm_ctrl_join_mac(&k, 'S', 1, proof), 0);
	switch (how) {
	case JOIN_RIGHT:
		send_all(fd1, buf, auth_step(buf, RM_AUTH_JOIN_SRC, NULL, proof));
		break;
	case JOIN_GUESSED:
		send_all(fd1, buf, auth_step(buf, RM_AUTH_JOIN_SRC, NULL, zero));
		break;
	case JOIN_REPLAYED:
		send_all(fd1, buf, auth_step(buf, RM_AUTH_JOIN_SRC, NULL, replay));
		break;
	case JOIN_MARKER:
		send_all(fd1, buf, frame(buf, RM_WIRE_MARKER, 0, &mk, sizeof(mk)));
		break;
	}
	if (how == JOIN_RIGHT) {
		/* The destination proves itself on channel 1, then lays out. */
		struct rm_wire_auth a;
		uint8_t want[RM_WIRE_MAC], lay[sizeof(struct rm_ctrl_layout_msg)];

		cr_assert_eq(recv_until(fd1, RM_WIRE_AUTH, &a, sizeof(a), &len), 0, "no AUTH step 6");
		cr_assert_eq(rm_wire_get32(a.step), RM_AUTH_JOIN_DST);
		cr_assert_eq(rm_ctrl_join_mac(&k, 'D', 1, want), 0);
		cr_assert_eq(memcmp(a.mac, want, RM_WIRE_MAC), 0, "the destination's channel proof");
		cr_assert_eq(recv_until(fd0, RM_WIRE_LAYOUT, lay, sizeof(lay), &len), 0, "no LAYOUT");
	} else {
		/* No LAYOUT: the connection is dropped, channel 0 too. */
		uint16_t type, flags;

		while (recv_frame(fd0, &type, &flags, buf, sizeof(buf), &len) == 0)
			cr_assert(type != RM_WIRE_LAYOUT, "%s: LAYOUT sent after an unproven join", why);
	}
	close(fd0);
	close(fd1);
	tdst_finish(&d);
	if (how != JOIN_RIGHT)
		cr_assert(log_has(why), "the log does not name \"%s\":\n%s", why, logbuf);
	rm_tr_destroy(&k);
	return d.accept_rc;
}

/*
 * Channel 1 of a keyed source's session, connected by someone who saw the
 * session id (it crosses the network in the clear): a guessed proof, the
 * proof of an earlier session under the same id, or no proof at all each
 * cost the whole connection, before LAYOUT; the right proof joins it.
 */
Test(hostile_handshake, join_by_session_id_alone_refused, .timeout = 60)
{
	uint8_t earlier[RM_WIRE_MAC], proof[RM_WIRE_MAC];
	int rc;

	rc = join_case(JOIN_RIGHT, 4242, NULL, earlier, NULL);
	cr_assert_eq(rc, 0, "the source's own channel 1 with its proof: %s", rdmamig_strerror(rc));
	rc = join_case(JOIN_GUESSED, 4243, NULL, proof, "did not prove it belongs to the authenticated session");
	cr_assert_eq(rc, -ETIMEDOUT, "a guessed proof: %s", rdmamig_strerror(rc));
	rc = join_case(JOIN_REPLAYED, 4242, earlier, proof, "did not prove it belongs to the authenticated session");
	cr_assert_eq(rc, -ETIMEDOUT, "a replayed proof: %s", rdmamig_strerror(rc));
	cr_assert_neq(memcmp(proof, earlier, RM_WIRE_MAC), 0, "the same session id gave the same proof");
	rc = join_case(JOIN_MARKER, 4244, NULL, proof, "before it proved it belongs to the session");
	cr_assert_eq(rc, -ETIMEDOUT, "no proof: %s", rdmamig_strerror(rc));
}

/* ---- after the handshake: a hostile source's frames against the destination ---- */

struct frame_case {
	const char *name;
	size_t (*build)(uint8_t *buf);	/* the hostile bytes */
	int rc;				/* rm_tr_recv's error */
	const char *why;		/* in the log and the ABORT back */
};

static size_t f_hdr_reserved(uint8_t *b) { return put_frame(b, RM_WIRE_BYE, 0, 0, 0, 1, NULL, 0); }
static size_t f_hdr_credits(uint8_t *b) { return put_frame(b, RM_WIRE_BYE, 0, 0, 1, 0, NULL, 0); }
static size_t f_len_u32max(uint8_t *b) { return put_frame(b, RM_WIRE_ABORT, 0, 0xffffffffu, 0, 0, NULL, 0); }
static size_t f_len_body_max1(uint8_t *b)
{
	return put_frame(b, RM_WIRE_MARKER, 0, RM_CTRL_BODY_MAX + 1, 0, 0, NULL, 0);
}
static size_t f_type_invalid(uint8_t *b) { return put_frame(b, RM_WIRE_INVALID, 0, 0, 0, 0, NULL, 0); }
static size_t f_type_next(uint8_t *b) { return put_frame(b, RM_WIRE_READY + 1, 0, 0, 0, 0, NULL, 0); }
static size_t f_ready_to_dest(uint8_t *b)
{
	struct { struct rm_wire_ready r; __le32 k; } rd = { .k = rm_wire_put32(1) };

	return frame(b, RM_WIRE_READY, 0, &rd, sizeof(rd));
}
static size_t f_keepalive_body(uint8_t *b) { return frame(b, RM_WIRE_KEEPALIVE, 0, "k", 1); }
static size_t f_auth_unagreed(uint8_t *b)
{
	struct rm_wire_auth a = { .step = rm_wire_put32(1) };

	return frame(b, RM_WIRE_AUTH, 0, &a, sizeof(a));
}
static size_t f_type_engine(uint8_t *b) { return put_frame(b, RM_MIG_SETUP, 0, 0, 0, 0, NULL, 0); }
static size_t f_type_ffff(uint8_t *b) { return put_frame(b, 0xffff, 0, 0, 0, 0, NULL, 0); }
static size_t f_hello_again(uint8_t *b)
{
	struct rm_wire_hello h;

	good_hello(&h, 1, 0, 42);
	return frame(b, RM_WIRE_HELLO, 0, &h, sizeof(h));
}
static size_t f_layout_to_dest(uint8_t *b)
{
	struct rm_wire_layout l = { 0 };

	return frame(b, RM_WIRE_LAYOUT, 0, &l, sizeof(l));
}
static size_t f_credit(uint8_t *b)
{
	struct rm_wire_credit c = { 0 };

	return frame(b, RM_WIRE_CREDIT, 0, &c, sizeof(c));
}
static size_t f_bye_body(uint8_t *b) { return frame(b, RM_WIRE_BYE, 0, "x", 1); }
static size_t f_flags_on_marker(uint8_t *b)
{
	struct rm_wire_marker m = { .epoch = rm_wire_put64(1) };

	return frame(b, RM_WIRE_MARKER, RM_WIRE_F_FIRST, &m, sizeof(m));
}

/* MARKER */
static size_t f_marker_short(uint8_t *b)
{
	struct rm_wire_marker m = { .epoch = rm_wire_put64(1) };

	return frame(b, RM_WIRE_MARKER, 0, &m, sizeof(m) - 1);
}
static size_t f_marker_chan(uint8_t *b)
{
	struct rm_wire_marker m = { .epoch = rm_wire_put64(1), .chan = rm_wire_put32(0xffffffffu) };

	return frame(b, RM_WIRE_MARKER, 0, &m, sizeof(m));
}
static size_t f_marker_zero(uint8_t *b)
{
	struct rm_wire_marker m = { .epoch = 0 };

	return frame(b, RM_WIRE_MARKER, 0, &m, sizeof(m));
}
static size_t f_marker_back(uint8_t *b)
{
	struct rm_wire_marker m = { .epoch = rm_wire_put64(UINT64_MAX) };
	size_t n = frame(b, RM_WIRE_MARKER, 0, &m, sizeof(m));

	m.epoch = rm_wire_put64(5);
	return n + frame(b + n, RM_WIRE_MARKER, 0, &m, sizeof(m));
}
static size_t f_marker_reserved(uint8_t *b)
{
	struct rm_wire_marker m = { .epoch = rm_wire_put64(1), .reserved = rm_wire_put32(1) };

	return frame(b, RM_WIRE_MARKER, 0, &m, sizeof(m));
}

/* WRITE: region 0 and 1 are 1 MiB each; max_write is 1 MiB. */
static size_t write_frame(uint8_t *b, uint16_t flags, uint32_t region, uint32_t reserved, uint64_t off,
			  uint64_t length, uint32_t hdr_len)
{
	struct rm_wire_write w = {
		.region = rm_wire_put32(region), .reserved = rm_wire_put32(reserved),
		.offset = rm_wire_put64(off), .length = rm_wire_put64(length),
	};

	return put_frame(b, RM_WIRE_WRITE, flags, hdr_len, 0, 0, &w, sizeof(w));
}
#define WLEN(n) (uint32_t)(sizeof(struct rm_wire_write) + (n))
static size_t f_write_region(uint8_t *b) { return write_frame(b, 0, 7, 0, 0, 0, WLEN(0)); }
static size_t f_write_region_max(uint8_t *b) { return write_frame(b, 0, 0xffffffffu, 0, 0, 0, WLEN(0)); }
static size_t f_write_off_end(uint8_t *b) { return write_frame(b, 0, 0, 0, 1 << 20, 1, WLEN(1)); }
static size_t f_write_off_wrap(uint8_t *b) { return write_frame(b, 0, 0, 0, UINT64_MAX, 2, WLEN(2)); }
static size_t f_write_len_end(uint8_t *b) { return write_frame(b, 0, 1, 0, 4096, (1 << 20) - 4095, WLEN((1 << 20) - 4095)); }
static size_t f_write_len_max1(uint8_t *b) { return write_frame(b, 0, 0, 0, 0, (1 << 20) + 1, WLEN((1 << 20) + 1)); }
static size_t f_write_len_mismatch(uint8_t *b) { return write_frame(b, 0, 0, 0, 0, 16, WLEN(8)); }
static size_t f_write_len_u64(uint8_t *b) { return write_frame(b, 0, 0, 0, 0, UINT64_MAX, WLEN(0)); }
static size_t f_write_short(uint8_t *b) { return write_frame(b, 0, 0, 0, 0, 0, WLEN(0) - 1); }
static size_t f_write_reserved(uint8_t *b) { return write_frame(b, 0, 0, 1, 0, 0, WLEN(0)); }
static size_t f_write_flags(uint8_t *b) { return write_frame(b, 1, 0, 0, 0, 0, WLEN(0)); }

/* CTRL */
#define FL (RM_WIRE_F_FIRST | RM_WIRE_F_LAST)
static size_t f_ctrl_short(uint8_t *b) { return put_frame(b, RM_WIRE_CTRL, FL, 23, 0, 0, "012345678901234567890123", 23); }
static size_t f_ctrl_type_ff(uint8_t *b) { return ctrl_frag(b, FL, 0xff, 0, 0, 0, NULL, 0); }
static size_t f_ctrl_type_200(uint8_t *b) { return ctrl_frag(b, FL, 0x200, 0, 0, 0, NULL, 0); }
static size_t f_ctrl_type_0(uint8_t *b) { return ctrl_frag(b, FL, 0, 0, 0, 0, NULL, 0); }
static size_t f_ctrl_frag_max1(uint8_t *b)
{
	return ctrl_frag(b, FL, RM_MIG_ITER, RM_WIRE_MAX_FRAG + 1, RM_WIRE_MAX_FRAG + 1, 0, NULL, 0);
}
static size_t f_ctrl_frag_u32(uint8_t *b) { return ctrl_frag(b, FL, RM_MIG_ITER, 0xffffffffu, 4, 0, NULL, 0); }
static size_t f_ctrl_total_max1(uint8_t *b)
{
	return ctrl_frag(b, RM_WIRE_F_FIRST, RM_MIG_ITER, 4, RM_WIRE_MAX_CTRL + 1ull, 0, "abcd", 4);
}
static size_t f_ctrl_total_u64(uint8_t *b) { return ctrl_frag(b, RM_WIRE_F_FIRST, RM_MIG_ITER, 4, UINT64_MAX, 0, "abcd", 4); }
static size_t f_ctrl_frag_mismatch(uint8_t *b)
{
	/* frag_len 8, but the header carries 4 bytes after the body header */
	return ctrl_frag(b, FL, RM_MIG_ITER, 8, 8, 0, "abcd", 4);
}
static size_t f_ctrl_no_first(uint8_t *b) { return ctrl_frag(b, RM_WIRE_F_LAST, RM_MIG_ITER, 4, 4, 0, "abcd", 4); }
static size_t f_ctrl_first_twice(uint8_t *b)
{
	size_t n = ctrl_frag(b, RM_WIRE_F_FIRST, RM_MIG_ITER, 4, 8, 0, "abcd", 4);

	return n + ctrl_frag(b + n, RM_WIRE_F_FIRST, RM_MIG_ITER, 4, 8, 0, "abcd", 4);
}
static size_t f_ctrl_last_early(uint8_t *b) { return ctrl_frag(b, FL, RM_MIG_ITER, 4, 8, 0, "abcd", 4); }
static size_t f_ctrl_past_total(uint8_t *b)
{
	size_t n = ctrl_frag(b, RM_WIRE_F_FIRST, RM_MIG_ITER, 4, 6, 0, "abcd", 4);

	return n + ctrl_frag(b + n, RM_WIRE_F_LAST, RM_MIG_ITER, 4, 6, 0, "efgh", 4);
}
static size_t f_ctrl_other_type(uint8_t *b)
{
	size_t n = ctrl_frag(b, RM_WIRE_F_FIRST, RM_MIG_ITER, 4, 8, 0, "abcd", 4);

	return n + ctrl_frag(b + n, RM_WIRE_F_LAST, RM_MIG_STATE, 4, 8, 0, "efgh", 4);
}
static size_t f_ctrl_flags(uint8_t *b) { return ctrl_frag(b, FL | 4, RM_MIG_ITER, 0, 0, 0, NULL, 0); }
static size_t f_ctrl_reserved(uint8_t *b)
{
	struct rm_wire_ctrl c = { .type = rm_wire_put16(RM_MIG_ITER), .reserved = rm_wire_put16(1) };

	return frame(b, RM_WIRE_CTRL, FL, &c, sizeof(c));
}
/* One message more than the receiver holds unread. */
static size_t f_ctrl_flood(uint8_t *b)
{
	size_t n = 0;

	for (unsigned i = 0; i <= RM_WIRE_MAX_QUEUED; i++)
		n += ctrl_frag(b + n, FL, RM_MIG_ITER, 0, 0, UINT64_MAX, NULL, 0);
	return n;
}

/* What the peer may say: its ABORT and REFUSE, and BYE. */
static size_t f_abort(uint8_t *b)
{
	struct rm_wire_abort_body a;

	rm_ctrl_abort_body(&a, -EIO, "hostile test aborts");
	memset(a.text, 'A', sizeof(a.text));	/* no NUL: the receiver must bound it */
	return frame(b, RM_WIRE_ABORT, 0, &a, sizeof(a));
}
static size_t f_abort_intmin(uint8_t *b)
{
	struct rm_wire_abort_body a = { .reason = rm_wire_put32(0x80000000u) };

	rm_wire_text(a.text, "reason 2^31");
	return frame(b, RM_WIRE_ABORT, 0, &a, sizeof(a));
}
static size_t f_abort_short(uint8_t *b)
{
	struct rm_wire_abort_body a = { 0 };

	return frame(b, RM_WIRE_ABORT, 0, &a, sizeof(a) - 1);
}
static size_t f_refuse(uint8_t *b)
{
	struct rm_wire_refuse_body r;

	rm_ctrl_refuse_body(&r, 0xffffffffu, "hostile test refuses");
	return frame(b, RM_WIRE_REFUSE, 0, &r, sizeof(r));
}
static size_t f_refuse_long(uint8_t *b)
{
	struct rm_wire_refuse_body r = { 0 };

	return frame(b, RM_WIRE_REFUSE, 0, &r, sizeof(r) - 8);
}
static size_t f_bye(uint8_t *b) { return frame(b, RM_WIRE_BYE, 0, NULL, 0); }

static const struct frame_case frame_cases[] = {
	{ "header reserved", f_hdr_reserved, PROTO, "reserved or credit header field set" },
	{ "header credits on TCP", f_hdr_credits, PROTO, "reserved or credit header field set" },
	{ "len 2^32 - 1", f_len_u32max, PROTO, "message longer than any body" },
	{ "len body max + 1", f_len_body_max1, PROTO, "message longer than any body" },
	{ "type 0", f_type_invalid, PROTO, "unexpected message type" },
	{ "type READY + 1", f_type_next, PROTO, "unexpected message type" },
	{ "READY to a TCP destination", f_ready_to_dest, PROTO, "READY to a destination, off channel 0, off RDMA" },
	{ "KEEPALIVE with a body", f_keepalive_body, PROTO, "KEEPALIVE with a body" },
	{ "AUTH without a key", f_auth_unagreed, PROTO, "AUTH off channel 0, of the wrong length, or not agreed" },
	{ "engine type as header type", f_type_engine, PROTO, "unexpected message type" },
	{ "type 0xffff", f_type_ffff, PROTO, "unexpected message type" },
	{ "HELLO after the handshake", f_hello_again, PROTO, "unexpected message type" },
	{ "LAYOUT to a destination", f_layout_to_dest, PROTO, "LAYOUT to a destination" },
	{ "CREDIT on TCP", f_credit, PROTO, "unexpected message type" },
	{ "BYE with a body", f_bye_body, PROTO, "BYE with a body" },
	{ "flags on a MARKER", f_flags_on_marker, PROTO, "flags on a message that has none" },
	{ "MARKER short", f_marker_short, PROTO, "MARKER to a source or of the wrong length" },
	{ "MARKER chan 2^32 - 1", f_marker_chan, PROTO, "MARKER for another channel or not increasing" },
	{ "MARKER epoch 0", f_marker_zero, PROTO, "MARKER for another channel or not increasing" },
	{ "MARKER epoch going back", f_marker_back, PROTO, "MARKER for another channel or not increasing" },
	{ "MARKER reserved", f_marker_reserved, PROTO, "MARKER for another channel or not increasing" },
	{ "WRITE region unknown", f_write_region, PROTO, "outside RAM" },
	{ "WRITE region 2^32 - 1", f_write_region_max, PROTO, "outside RAM" },
	{ "WRITE offset at the end", f_write_off_end, PROTO, "outside RAM" },
	{ "WRITE offset 2^64 - 1", f_write_off_wrap, PROTO, "outside RAM" },
	{ "WRITE past the end", f_write_len_end, PROTO, "outside RAM" },
	{ "WRITE max_write + 1", f_write_len_max1, PROTO, "outside RAM" },
	{ "WRITE length != frame", f_write_len_mismatch, PROTO, "outside RAM" },
	{ "WRITE length 2^64 - 1", f_write_len_u64, PROTO, "outside RAM" },
	{ "WRITE frame short", f_write_short, PROTO, "short WRITE frame or flags set" },
	{ "WRITE reserved", f_write_reserved, PROTO, "outside RAM" },
	{ "WRITE flags", f_write_flags, PROTO, "short WRITE frame or flags set" },
	{ "CTRL shorter than its body", f_ctrl_short, PROTO, "CTRL shorter than its body" },
	{ "CTRL type 0xff", f_ctrl_type_ff, PROTO, "CTRL of a type outside the engine range" },
	{ "CTRL type 0x200", f_ctrl_type_200, PROTO, "CTRL of a type outside the engine range" },
	{ "CTRL type 0", f_ctrl_type_0, PROTO, "CTRL of a type outside the engine range" },
	{ "CTRL frag max + 1", f_ctrl_frag_max1, PROTO, "CTRL fragment or total length out of range" },
	{ "CTRL frag 2^32 - 1", f_ctrl_frag_u32, PROTO, "CTRL fragment or total length out of range" },
	{ "CTRL total max + 1", f_ctrl_total_max1, PROTO, "CTRL fragment or total length out of range" },
	{ "CTRL total 2^64 - 1", f_ctrl_total_u64, PROTO, "CTRL fragment or total length out of range" },
	{ "CTRL frag_len != frame", f_ctrl_frag_mismatch, PROTO, "CTRL fragment or total length out of range" },
	{ "CTRL without FIRST", f_ctrl_no_first, PROTO, "CTRL fragment does not continue its message" },
	{ "CTRL FIRST twice", f_ctrl_first_twice, PROTO, "CTRL FIRST inside a message" },
	{ "CTRL LAST early", f_ctrl_last_early, PROTO, "CTRL LAST before the total length" },
	{ "CTRL past its total", f_ctrl_past_total, PROTO, "CTRL fragment runs past the message's total length" },
	{ "CTRL type changes", f_ctrl_other_type, PROTO, "CTRL fragment does not continue its message" },
	{ "CTRL unknown flags", f_ctrl_flags, PROTO, "CTRL with unknown flags" },
	{ "CTRL reserved", f_ctrl_reserved, PROTO, "CTRL of a type outside the engine range" },
	{ "CTRL queue max + 1", f_ctrl_flood, PROTO, "more unread control messages than the receiver holds" },
	{ "ABORT without NUL", f_abort, RDMAMIG_E_ABORTED, "AAAAAAAAAAAAAAAAAAAA" },
	{ "ABORT reason 2^31", f_abort_intmin, RDMAMIG_E_ABORTED, "not an error code" },
	{ "ABORT short", f_abort_short, PROTO, "ABORT of the wrong length" },
	{ "REFUSE", f_refuse, RDMAMIG_E_REFUSED, "hostile test refuses" },
	{ "REFUSE short", f_refuse_long, PROTO, "REFUSE of the wrong length" },
	{ "BYE", f_bye, -EPIPE, NULL },
};

static uint8_t case_buf[(RM_WIRE_MAX_QUEUED + 1) * 48 + 4096];

Test(hostile_frames, every_frame_bound_after_the_handshake, .timeout = 240)
{
	for (size_t i = 0; i < ARRAY_SIZE(frame_cases); i++) {
		const struct frame_case *c = &frame_cases[i];
		struct tdst d;
		size_t n = c->build(case_buf);
		int fd;

		tdst_start(&d);
		fd = raw_source(d.port);
		send_all(fd, case_buf, n);
		tdst_finish(&d);
		cr_assert_eq(d.accept_rc, 0, "%s: accept", c->name);
		cr_assert_eq(d.recv_rc, c->rc, "%s: rm_tr_recv returned %d (%s), expected %d (%s)", c->name,
			     d.recv_rc, rdmamig_strerror(d.recv_rc), c->rc, rdmamig_strerror(c->rc));
		cr_assert_eq(d.msgs, 0, "%s: %u messages delivered from a hostile stream", c->name, d.msgs);
		if (c->why)
			assert_log(c->why, "%s: the log does not name \"%s\":\n%s", c->name, c->why, logbuf);
		if (c->rc == PROTO)
			assert_abort_names(fd, c->why);
		close(fd);
	}
}

/* A peer that stops mid-frame, or closes, ends the receiver within the
 * timeout with -ETIMEDOUT / -ECONNRESET. */
Test(hostile_frames, truncated_frame_and_close_bounded, .timeout = 60)
{
	uint8_t buf[128];
	size_t n = f_marker_back(buf);

	for (int close_it = 0; close_it < 2; close_it++) {
		struct tdst d;
		int fd;

		tdst_start(&d);
		fd = raw_source(d.port);
		send_all(fd, buf, n - 5);	/* the last MARKER lacks 5 bytes */
		if (close_it)
			close(fd);
		tdst_finish(&d);
		if (!close_it)
			close(fd);
		cr_assert(d.recv_rc == -ETIMEDOUT || d.recv_rc == -ECONNRESET,
			  "%s: rm_tr_recv returned %s", close_it ? "closed" : "stalled",
			  rdmamig_strerror(d.recv_rc));
		if (close_it)
			assert_log("channel 0: reading message", "the log does not name the cause:\n%s", logbuf);
	}
}

/* CTRL on a channel other than 0 (nchan 2). */
Test(hostile_frames, ctrl_off_channel_0, .timeout = 30)
{
	struct tdst d;
	uint8_t lay[sizeof(struct rm_ctrl_layout_msg)];
	uint32_t len;
	int a, b;

	tdst_start(&d);
	a = raw_source_chan(d.port, 2, 0, 5);
	b = raw_source_chan(d.port, 2, 1, 5);
	cr_assert_eq(recv_until(a, RM_WIRE_LAYOUT, lay, sizeof(lay), &len), 0);
	send_all(b, case_buf, engine_msg(case_buf, RM_MIG_ITER, NULL, 0));
	tdst_finish(&d);
	cr_assert_eq(d.recv_rc, RDMAMIG_E_PROTO, "%s", rdmamig_strerror(d.recv_rc));
	assert_log("CTRL off channel 0", "%s", logbuf);
	close(a);
	close(b);
}
