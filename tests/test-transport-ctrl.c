/*
 * tests/test-transport-ctrl.c — the control protocol of transport/ctrl.c on
 * its own: no socket, no verbs.  A fake backend records every message ctrl.c
 * posts; the cases feed those (or hostile ones) to another fake's receive
 * side and check what comes out: fragmentation at its boundaries, reassembly
 * that refuses what is out of order, oversized or overlapping, the queue's
 * bound, every field of the handshake, LAYOUT, MARKER, REFUSE and ABORT.
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transport/priv.h"

/* ---- a fake backend ---- */

#define MAXF 64

struct frame {
	unsigned chan;
	uint16_t type, flags;
	size_t len;		/* body + data */
	uint8_t *buf;
};

struct fake {
	struct rm_transport base;	/* first */
	struct frame f[MAXF];
	unsigned n;
};

static int fake_post(struct rm_transport *t, unsigned chan, uint16_t type, uint16_t flags,
		     const void *body, size_t blen, const void *data, size_t dlen, uint64_t deadline)
{
	struct fake *k = (struct fake *)t;
	struct frame *f;

	cr_assert_lt(k->n, MAXF, "more frames than the fake holds");
	f = &k->f[k->n++];
	*f = (struct frame){ .chan = chan, .type = type, .flags = flags, .len = blen + dlen };
	f->buf = malloc(f->len ? f->len : 1);
	if (blen)
		memcpy(f->buf, body, blen);
	if (dlen)
		memcpy(f->buf + blen, data, dlen);
	return 0;
}

static int fake_layout(struct rm_transport *t, const struct rm_region *r, unsigned n,
		       struct rm_wire_region *wire)
{
	for (unsigned i = 0; i < n && t->role == RM_ROLE_DEST; i++) {
		wire[i].rkey = rm_wire_put32(100 + i);
		wire[i].addr = rm_wire_put64(0x10000ull * (i + 1));
	}
	return 0;
}

/* Writes: each piece recorded; a piece longer than `shorten` is cut to it,
 * as RDMA cuts at a lazy-registration chunk end. */
struct piece {
	unsigned idx;
	uint64_t off, len;
};

static struct piece pieces[64];
static unsigned npieces, nflushes;
static uint64_t shorten;

static int fake_write(struct rm_transport *t, unsigned idx, uint64_t off, uint64_t len,
		      uint64_t *took, uint64_t deadline)
{
	cr_assert_lt(npieces, ARRAY_SIZE(pieces));
	if (shorten && len > shorten)
		len = shorten;
	pieces[npieces++] = (struct piece){ idx, off, len };
	*took = len;
	return 0;
}

static int fake_flush(struct rm_transport *t, uint64_t deadline)
{
	nflushes++;
	return 0;
}

static const struct rm_transport_ops fake_ops = {
	.name = "fake",
	.post = fake_post,
	.layout = fake_layout,
	.write = fake_write,
	.flush = fake_flush,
};

static struct fake *fake_new(enum rm_role role, unsigned nchan, size_t frag_max)
{
	struct rm_transport_opts o = { .nchan = nchan, .max_write = 1u << 20, .timeout_ms = 1000 };
	struct fake *k = calloc(1, sizeof(*k));

	cr_assert_not_null(k);
	cr_assert_eq(rm_tr_init(&k->base, &fake_ops, &o, role, nchan, frag_max), 0);
	return k;
}

static void fake_clear(struct fake *k)
{
	for (unsigned i = 0; i < k->n; i++)
		free(k->f[i].buf);
	k->n = 0;
}

static void fake_free(struct fake *k)
{
	fake_clear(k);
	rm_tr_destroy(&k->base);
	free(k);
}

/* Feed one recorded frame to a receiver. */
static int feed(struct fake *to, const struct frame *f, const char **why)
{
	return rm_ctrl_rx(&to->base, f->chan, f->type, f->flags, f->buf, f->len, why);
}

/* A CTRL fragment built by hand: body header + n bytes of payload. */
static int feed_ctrl(struct fake *to, unsigned chan, uint16_t flags, uint16_t type, uint64_t total,
		     uint32_t frag, uint64_t epoch, const char **why)
{
	uint8_t buf[sizeof(struct rm_wire_ctrl) + 256];
	struct rm_wire_ctrl b = {
		.type = rm_wire_put16(type),
		.frag_len = rm_wire_put32(frag),
		.total_len = rm_wire_put64(total),
		.epoch = rm_wire_put64(epoch),
	};

	cr_assert_leq(frag, 256);
	memcpy(buf, &b, sizeof(b));
	memset(buf + sizeof(b), 0x5a, frag);
	return rm_ctrl_rx(&to->base, chan, RM_WIRE_CTRL, flags, buf, sizeof(b) + frag, why);
}

/* ---- logs ---- */

static char logbuf[8192];
static size_t loglen;

static void keep_log(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	size_t n = strlen(msg);

	if (n + 2 < sizeof(logbuf) - loglen) {
		memcpy(logbuf + loglen, msg, n);
		loglen += n;
		logbuf[loglen++] = '\n';
		logbuf[loglen] = 0;
	}
}

static void log_start(void)
{
	loglen = 0;
	logbuf[0] = 0;
	rdmamig_set_log(keep_log, NULL, RDMAMIG_LOG_DEBUG);
}

static void log_stop(void)
{
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_DEBUG);
}

/* ---- fragmentation and reassembly ---- */

static void pattern(uint8_t *b, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		b[i] = (uint8_t)(i * 7 + seed * 13 + (i >> 8));
}

/* Send len bytes with fragments of at most 100, deliver them, compare. */
static void roundtrip(size_t len, bool stream)
{
	struct fake *s = fake_new(RM_ROLE_SOURCE, 2, 100), *d = fake_new(RM_ROLE_DEST, 2, 100);
	uint8_t *buf = malloc(len + 1);
	size_t want = len ? (len + 99) / 100 : 1, got = 0;
	struct rm_msg m;
	const char *why = NULL;

	pattern(buf, len, (unsigned)len);
	cr_assert_eq(rm_ctrl_send(&s->base, RM_WIRE_ENGINE_FIRST + 3, buf, len), 0);
	cr_assert_eq(s->n, want, "%zu bytes went as %u fragments, expected %zu", len, s->n, want);
	for (unsigned i = 0; i < s->n; i++) {
		const struct frame *f = &s->f[i];
		struct rm_wire_ctrl b;

		cr_assert_eq(f->type, RM_WIRE_CTRL);
		cr_assert_eq(f->chan, 0);
		cr_assert_eq(!!(f->flags & RM_WIRE_F_FIRST), i == 0, "FIRST on fragment %u", i);
		cr_assert_eq(!!(f->flags & RM_WIRE_F_LAST), i + 1 == s->n, "LAST on fragment %u", i);
		memcpy(&b, f->buf, sizeof(b));
		cr_assert_leq(rm_wire_get32(b.frag_len), 100);
		got += rm_wire_get32(b.frag_len);
		cr_assert_eq(rm_wire_get64(b.total_len), len);
		if (stream) {
			void *dst;

			cr_assert_eq(rm_ctrl_rx_begin(&d->base, 0, f->flags, &b, f->len, &dst, &why), 0,
				     "%s", why);
			if (f->len > sizeof(b))
				memcpy(dst, f->buf + sizeof(b), f->len - sizeof(b));
			cr_assert_eq(rm_ctrl_rx_end(&d->base, &why), 0, "%s", why);
		} else {
			cr_assert_eq(feed(d, f, &why), 0, "fragment %u: %s", i, why);
		}
		/* Nothing is delivered before the last fragment. */
		if (i + 1 < s->n)
			cr_assert_eq(rm_ctrl_recv(&d->base, &m, 0), 0);
	}
	cr_assert_eq(got, len);
	cr_assert_eq(rm_ctrl_recv(&d->base, &m, 0), 1);
	cr_assert_eq(m.type, RM_WIRE_ENGINE_FIRST + 3);
	cr_assert_eq(m.len, len);
	cr_assert(len == 0 ? m.data == NULL : memcmp(m.data, buf, len) == 0, "%zu bytes differ", len);
	rm_msg_free(&m);
	cr_assert_eq(d->base.ctrl.queued, 0);
	cr_assert_eq(d->base.ctrl.queued_bytes, 0);
	free(buf);
	fake_free(s);
	fake_free(d);
}

Test(ctrl, fragment_roundtrip_at_boundaries)
{
	static const size_t sizes[] = { 0, 1, 99, 100, 101, 199, 200, 201, 1000, 1001, 4097 };

	for (unsigned i = 0; i < ARRAY_SIZE(sizes); i++) {
		roundtrip(sizes[i], false);
		roundtrip(sizes[i], true);
	}
}

Test(ctrl, messages_keep_their_order)
{
	struct fake *s = fake_new(RM_ROLE_SOURCE, 1, 100), *d = fake_new(RM_ROLE_DEST, 1, 100);
	const char *why;
	struct rm_msg m;

	for (uint32_t i = 0; i < 20; i++) {
		uint8_t big[250];

		memset(big, (int)i, sizeof(big));
		cr_assert_eq(rm_ctrl_send(&s->base, RM_WIRE_ENGINE_FIRST, big, i % 2 ? sizeof(big) : 4), 0);
	}
	for (unsigned i = 0; i < s->n; i++)
		cr_assert_eq(feed(d, &s->f[i], &why), 0, "%s", why);
	for (uint32_t i = 0; i < 20; i++) {
		cr_assert_eq(rm_ctrl_recv(&d->base, &m, 0), 1);
		cr_assert_eq(m.len, i % 2 ? 250u : 4u);
		cr_assert_eq(((uint8_t *)m.data)[m.len - 1], i, "message %u out of order", i);
		rm_msg_free(&m);
	}
	cr_assert_eq(rm_ctrl_recv(&d->base, &m, 0), 0);
	fake_free(s);
	fake_free(d);
}

/* A CTRL of epoch e waits for MARKER e on every channel. */
Test(ctrl, ctrl_held_until_its_fence)
{
	struct fake *d = fake_new(RM_ROLE_DEST, 2, 100);
	struct rm_wire_marker mk = { .epoch = rm_wire_put64(1) };
	const char *why;
	struct rm_msg m;

	cr_assert_eq(feed_ctrl(d, 0, RM_WIRE_F_FIRST | RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 3, 3, 1,
			       &why), 0, "%s", why);
	cr_assert_eq(rm_ctrl_recv(&d->base, &m, 0), 0, "delivered before any MARKER");
	mk.chan = rm_wire_put32(0);
	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_MARKER, 0, &mk, sizeof(mk), &why), 0, "%s", why);
	cr_assert_eq(rm_ctrl_recv(&d->base, &m, 0), 0, "delivered after one channel's MARKER");
	mk.chan = rm_wire_put32(1);
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_MARKER, 0, &mk, sizeof(mk), &why), 0, "%s", why);
	cr_assert_eq(rm_ctrl_recv(&d->base, &m, 0), 1);
	rm_msg_free(&m);
	fake_free(d);
}

Test(ctrl, reassembly_refuses_out_of_order_oversized_overlapping)
{
	struct {
		const char *what;
		int steps;
		struct {
			unsigned chan;
			uint16_t flags, type;
			uint64_t total;
			uint32_t frag;
			uint64_t epoch;
		} s[3];
	} cases[] = {
		{ "continuation without FIRST", 1,
		  { { 0, RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 10, 10, 0 } } },
		{ "FIRST inside a message", 2,
		  { { 0, RM_WIRE_F_FIRST, RM_WIRE_ENGINE_FIRST, 20, 10, 0 },
		    { 0, RM_WIRE_F_FIRST, RM_WIRE_ENGINE_FIRST, 20, 10, 0 } } },
		{ "LAST before the total", 2,
		  { { 0, RM_WIRE_F_FIRST, RM_WIRE_ENGINE_FIRST, 30, 10, 0 },
		    { 0, RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 30, 10, 0 } } },
		{ "fragment overlapping past the total", 2,
		  { { 0, RM_WIRE_F_FIRST, RM_WIRE_ENGINE_FIRST, 30, 20, 0 },
		    { 0, RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 30, 20, 0 } } },
		{ "first fragment larger than the total", 1,
		  { { 0, RM_WIRE_F_FIRST | RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 5, 10, 0 } } },
		{ "type changes mid-message", 2,
		  { { 0, RM_WIRE_F_FIRST, RM_WIRE_ENGINE_FIRST, 20, 10, 0 },
		    { 0, RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST + 1, 20, 10, 0 } } },
		{ "total changes mid-message", 2,
		  { { 0, RM_WIRE_F_FIRST, RM_WIRE_ENGINE_FIRST, 20, 10, 0 },
		    { 0, RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 21, 10, 0 } } },
		{ "epoch changes mid-message", 2,
		  { { 0, RM_WIRE_F_FIRST, RM_WIRE_ENGINE_FIRST, 20, 10, 0 },
		    { 0, RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 20, 10, 1 } } },
		{ "total over RM_WIRE_MAX_CTRL", 1,
		  { { 0, RM_WIRE_F_FIRST, RM_WIRE_ENGINE_FIRST, RM_WIRE_MAX_CTRL + 1ull, 10, 0 } } },
		{ "off channel 0", 1,
		  { { 1, RM_WIRE_F_FIRST | RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 4, 4, 0 } } },
		{ "transport type inside CTRL", 1,
		  { { 0, RM_WIRE_F_FIRST | RM_WIRE_F_LAST, RM_WIRE_LAYOUT, 4, 4, 0 } } },
		{ "reserved type inside CTRL", 1,
		  { { 0, RM_WIRE_F_FIRST | RM_WIRE_F_LAST, RM_WIRE_ENGINE_LAST + 1, 4, 4, 0 } } },
		{ "unknown flag", 1,
		  { { 0, RM_WIRE_F_FIRST | RM_WIRE_F_LAST | 0x10, RM_WIRE_ENGINE_FIRST, 4, 4, 0 } } },
	};

	for (unsigned c = 0; c < ARRAY_SIZE(cases); c++) {
		struct fake *d = fake_new(RM_ROLE_DEST, 2, 100);
		const char *why = NULL;
		int err = 0;

		for (int i = 0; i < cases[c].steps; i++) {
			err = feed_ctrl(d, cases[c].s[i].chan, cases[c].s[i].flags, cases[c].s[i].type,
					cases[c].s[i].total, cases[c].s[i].frag, cases[c].s[i].epoch, &why);
			if (i + 1 < cases[c].steps)
				cr_assert_eq(err, 0, "%s: step %d: %s", cases[c].what, i, why);
		}
		cr_assert_eq(err, RDMAMIG_E_PROTO, "%s: got %d", cases[c].what, err);
		cr_assert_not_null(why, "%s: no reason given", cases[c].what);
		fake_free(d);
	}
}

/* The fragment length must be what the frame carries, and at most
 * RM_WIRE_MAX_FRAG (a stream reader trusts it to size a read). */
Test(ctrl, fragment_length_must_match_and_be_bounded)
{
	struct fake *d = fake_new(RM_ROLE_DEST, 1, 100);
	struct rm_wire_ctrl b = {
		.type = rm_wire_put16(RM_WIRE_ENGINE_FIRST),
		.frag_len = rm_wire_put32(RM_WIRE_MAX_FRAG + 1),
		.total_len = rm_wire_put64(RM_WIRE_MAX_CTRL),
	};
	const char *why;
	void *dst;

	cr_assert_eq(rm_ctrl_rx_begin(&d->base, 0, RM_WIRE_F_FIRST, &b,
				      sizeof(b) + RM_WIRE_MAX_FRAG + 1, &dst, &why), RDMAMIG_E_PROTO);
	b.frag_len = rm_wire_put32(8);
	cr_assert_eq(rm_ctrl_rx_begin(&d->base, 0, RM_WIRE_F_FIRST, &b, sizeof(b) + 9, &dst, &why),
		     RDMAMIG_E_PROTO);
	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_CTRL, RM_WIRE_F_FIRST, &b, sizeof(b) - 1, &why),
		     RDMAMIG_E_PROTO, "a CTRL shorter than its body header");
	b.frag_len = rm_wire_put32((uint32_t)-1);
	cr_assert_eq(rm_ctrl_rx_begin(&d->base, 0, RM_WIRE_F_FIRST, &b, sizeof(b) - 1, &dst, &why),
		     RDMAMIG_E_PROTO, "a streamed CTRL shorter than its body header");
	fake_free(d);
}

/* A 64 MiB claim with 10 bytes sent costs about 10 bytes, not 64 MiB. */
Test(ctrl, allocation_follows_arrived_data)
{
	struct fake *d = fake_new(RM_ROLE_DEST, 1, 100);
	const char *why;

	cr_assert_eq(feed_ctrl(d, 0, RM_WIRE_F_FIRST, RM_WIRE_ENGINE_FIRST, RM_WIRE_MAX_CTRL, 10, 0,
			       &why), 0, "%s", why);
	cr_assert_leq(d->base.ctrl.asm_cap, 20, "reassembly buffer of %zu bytes for 10 that arrived",
		      d->base.ctrl.asm_cap);
	for (int i = 0; i < 10; i++)
		cr_assert_eq(feed_ctrl(d, 0, 0, RM_WIRE_ENGINE_FIRST, RM_WIRE_MAX_CTRL, 200, 0, &why), 0,
			     "%s", why);
	cr_assert_leq(d->base.ctrl.asm_cap, 2 * 2010, "buffer of %zu bytes for 2010 that arrived",
		      d->base.ctrl.asm_cap);
	cr_assert_geq(d->base.ctrl.asm_cap, 2010);
	fake_free(d);
}

Test(ctrl, queue_is_bounded_in_messages)
{
	struct fake *d = fake_new(RM_ROLE_DEST, 1, 100);
	const char *why;
	struct rm_msg m;
	int err;

	cr_assert_eq(d->base.ctrl.max_msgs, RM_WIRE_MAX_QUEUED);
	for (unsigned i = 0; i < RM_WIRE_MAX_QUEUED; i++) {
		err = feed_ctrl(d, 0, RM_WIRE_F_FIRST | RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 1, 1, 0, &why);
		cr_assert_eq(err, 0, "message %u: %s", i, why);
	}
	err = feed_ctrl(d, 0, RM_WIRE_F_FIRST | RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 1, 1, 0, &why);
	cr_assert_eq(err, RDMAMIG_E_PROTO, "message %u past the bound was taken", RM_WIRE_MAX_QUEUED + 1);
	/* Reading one makes room for one. */
	cr_assert_eq(rm_ctrl_recv(&d->base, &m, 0), 1);
	rm_msg_free(&m);
	err = feed_ctrl(d, 0, RM_WIRE_F_FIRST | RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 1, 1, 0, &why);
	cr_assert_eq(err, 0, "%s", why);
	fake_free(d);
}

Test(ctrl, queue_is_bounded_in_bytes)
{
	struct fake *d = fake_new(RM_ROLE_DEST, 1, 100);
	const char *why;
	struct rm_msg m;

	cr_assert_geq(RM_CTRL_QUEUE_BYTES, (size_t)RM_WIRE_MAX_CTRL, "a largest message must fit");
	d->base.ctrl.max_bytes = 500;
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(feed_ctrl(d, 0, RM_WIRE_F_FIRST, RM_WIRE_ENGINE_FIRST, 200, 100, 0, &why), 0,
			     "%s", why);
		cr_assert_eq(feed_ctrl(d, 0, RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 200, 100, 0, &why), 0,
			     "%s", why);
	}
	/* 400 bytes unread: a third message of 200 does not fit. */
	cr_assert_eq(feed_ctrl(d, 0, RM_WIRE_F_FIRST, RM_WIRE_ENGINE_FIRST, 200, 100, 0, &why), 0);
	cr_assert_eq(feed_ctrl(d, 0, RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 200, 100, 0, &why),
		     RDMAMIG_E_PROTO, "600 bytes held under a bound of 500");
	fake_free(d);

	/* After reading, the same bytes fit again. */
	d = fake_new(RM_ROLE_DEST, 1, 100);
	d->base.ctrl.max_bytes = 500;
	for (int i = 0; i < 6; i++) {
		cr_assert_eq(feed_ctrl(d, 0, RM_WIRE_F_FIRST, RM_WIRE_ENGINE_FIRST, 200, 100, 0, &why), 0,
			     "%s", why);
		cr_assert_eq(feed_ctrl(d, 0, RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 200, 100, 0, &why), 0,
			     "message %d: %s", i, why);
		cr_assert_eq(rm_ctrl_recv(&d->base, &m, 0), 1);
		rm_msg_free(&m);
	}
	fake_free(d);
}

/* ---- MARKER, BYE, LAYOUT ---- */

Test(ctrl, marker_checks)
{
	struct fake *d = fake_new(RM_ROLE_DEST, 2, 100), *s = fake_new(RM_ROLE_SOURCE, 2, 100);
	struct rm_wire_marker mk = { .epoch = rm_wire_put64(2), .chan = rm_wire_put32(1) };
	const char *why;

	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_MARKER, 0, &mk, sizeof(mk), &why),
		     RDMAMIG_E_PROTO, "MARKER naming another channel");
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_MARKER, 0, &mk, sizeof(mk) - 1, &why),
		     RDMAMIG_E_PROTO, "short MARKER");
	cr_assert_eq(rm_ctrl_rx(&s->base, 1, RM_WIRE_MARKER, 0, &mk, sizeof(mk), &why),
		     RDMAMIG_E_PROTO, "MARKER to a source");
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_MARKER, 0, &mk, sizeof(mk), &why), 0, "%s", why);
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_MARKER, 0, &mk, sizeof(mk), &why),
		     RDMAMIG_E_PROTO, "MARKER not increasing");
	mk.epoch = rm_wire_put64(3);
	cr_assert_eq(rm_ctrl_rx(&d->base, 2, RM_WIRE_MARKER, 0, &mk, sizeof(mk), &why),
		     RDMAMIG_E_PROTO, "a channel that does not exist");
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_MARKER, RM_WIRE_F_FIRST, &mk, sizeof(mk), &why),
		     RDMAMIG_E_PROTO, "flags on a MARKER");
	fake_free(d);
	fake_free(s);
}

Test(ctrl, bye_on_channel_0_ends_the_conversation)
{
	struct fake *d = fake_new(RM_ROLE_DEST, 2, 100);
	const char *why;
	struct rm_msg m;

	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_BYE, 0, NULL, 0, &why), RM_CTRL_END);
	cr_assert_eq(rm_ctrl_recv(&d->base, &m, 0), 0, "another channel's BYE ended it");
	cr_assert_eq(feed_ctrl(d, 0, RM_WIRE_F_FIRST | RM_WIRE_F_LAST, RM_WIRE_ENGINE_FIRST, 2, 2, 0,
			       &why), 0);
	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_BYE, 0, NULL, 0, &why), RM_CTRL_END);
	/* What came before the BYE is still delivered, then -EPIPE. */
	cr_assert_eq(rm_ctrl_recv(&d->base, &m, 0), 1);
	rm_msg_free(&m);
	cr_assert_eq(rm_ctrl_recv(&d->base, &m, 0), -EPIPE);
	cr_assert_eq(rm_ctrl_send(&d->base, RM_WIRE_ENGINE_FIRST, "x", 1), -EPIPE);
	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_BYE, 0, "x", 1, &why), RDMAMIG_E_PROTO,
		     "BYE with a body");
	fake_free(d);
}

static const uint64_t lsizes[] = { 1u << 20, 3u << 12, 5u << 16 };

static void regions(struct rm_region *r, unsigned n, uint64_t bump)
{
	static char mem;

	for (unsigned i = 0; i < n; i++)
		r[i] = (struct rm_region){ .id = 7 + 3 * i, .addr = &mem, .size = lsizes[i] + (i == 1 ? bump : 0) };
}

/* The destination's LAYOUT, as its ctrl layer posts it. */
static struct fake *dest_layout(struct rm_region *r, unsigned n)
{
	struct fake *d = fake_new(RM_ROLE_DEST, 1, 100);

	cr_assert_eq(rm_tr_set_regions(&d->base, r, n), 0);
	cr_assert_eq(rm_ctrl_layout(&d->base, r, n), 0);
	cr_assert_eq(d->n, 1);
	cr_assert_eq(d->f[0].type, RM_WIRE_LAYOUT);
	return d;
}

Test(ctrl, layout_exchange_matches_and_fills_peer_keys)
{
	struct rm_region dr[3], sr[3];
	struct fake *d, *s = fake_new(RM_ROLE_SOURCE, 1, 100);
	const char *why;

	regions(dr, 3, 0);
	d = dest_layout(dr, 3);
	/* The source lists its regions in another order: ids decide. */
	regions(sr, 3, 0);
	sr[0] = dr[2];
	sr[2] = dr[0];
	cr_assert_eq(rm_tr_set_regions(&s->base, sr, 3), 0);
	cr_assert_eq(feed(s, &d->f[0], &why), 0, "%s", why);
	cr_assert_eq(rm_ctrl_layout(&s->base, sr, 3), 0);
	cr_assert_eq(s->n, 0, "a matching layout was answered");
	for (unsigned i = 0; i < 3; i++) {
		int di = sr[i].id == dr[0].id ? 0 : sr[i].id == dr[1].id ? 1 : 2;

		cr_assert_eq(s->base.ctrl.peer[i].rkey, 100u + (unsigned)di, "region %u rkey", i);
		cr_assert_eq(s->base.ctrl.peer[i].addr, 0x10000ull * (di + 1), "region %u addr", i);
	}
	/* A second LAYOUT is a protocol error. */
	cr_assert_eq(feed(s, &d->f[0], &why), RDMAMIG_E_PROTO);
	fake_free(d);
	fake_free(s);
}

Test(ctrl, layout_mismatch_is_refused_and_told)
{
	struct rm_region dr[3], sr[3];
	struct fake *d, *s = fake_new(RM_ROLE_SOURCE, 1, 100);
	struct rm_wire_refuse_body rf;
	const char *why;

	regions(dr, 3, 0);
	d = dest_layout(dr, 3);
	regions(sr, 3, 4096);
	cr_assert_eq(rm_tr_set_regions(&s->base, sr, 3), 0);
	cr_assert_eq(feed(s, &d->f[0], &why), 0, "%s", why);
	log_start();
	cr_assert_eq(rm_ctrl_layout(&s->base, sr, 3), RDMAMIG_E_REFUSED);
	log_stop();
	cr_assert_eq(s->n, 1);
	cr_assert_eq(s->f[0].type, RM_WIRE_REFUSE);
	memcpy(&rf, s->f[0].buf, sizeof(rf));
	cr_assert_eq(rm_wire_get32(rf.reason), RM_REFUSE_LAYOUT);
	cr_assert(strstr(rf.text, "region 10"), "REFUSE text: %s", rf.text);
	cr_assert(strstr(logbuf, "RAM layout mismatch"), "log: %s", logbuf);

	/* The destination hears it as the source's refusal, named so. */
	log_start();
	cr_assert_eq(feed(d, &s->f[0], &why), RDMAMIG_E_REFUSED);
	log_stop();
	cr_assert(strstr(logbuf, "the source refused"), "log: %s", logbuf);
	cr_assert(!strstr(logbuf, "destination"), "a destination blamed itself: %s", logbuf);
	fake_free(d);
	fake_free(s);
}

Test(ctrl, layout_hostile_forms)
{
	struct rm_region dr[3], sr[3];
	struct fake *d, *s;
	struct rm_ctrl_layout_msg lay;
	char why2[120];
	const char *why;
	size_t len;

	regions(dr, 3, 0);
	regions(sr, 3, 0);
	d = dest_layout(dr, 3);
	memcpy(&lay, d->f[0].buf, d->f[0].len);
	len = d->f[0].len;

	s = fake_new(RM_ROLE_SOURCE, 2, 100);
	cr_assert_eq(rm_tr_set_regions(&s->base, sr, 3), 0);
	cr_assert_eq(rm_ctrl_rx(&s->base, 1, RM_WIRE_LAYOUT, 0, &lay, len, &why), RDMAMIG_E_PROTO,
		     "LAYOUT off channel 0");
	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_LAYOUT, 0, &lay, len, &why), RDMAMIG_E_PROTO,
		     "LAYOUT to a destination");
	cr_assert_eq(rm_ctrl_rx(&s->base, 0, RM_WIRE_LAYOUT, 0, &lay, len - 1, &why), RDMAMIG_E_PROTO,
		     "LAYOUT length not count entries");
	lay.l.count = rm_wire_put32(RM_WIRE_MAX_REGIONS + 1);
	cr_assert_eq(rm_ctrl_rx(&s->base, 0, RM_WIRE_LAYOUT, 0, &lay, len, &why), RDMAMIG_E_PROTO,
		     "LAYOUT count over the bound");
	lay.l.count = rm_wire_put32(3);
	lay.l.reserved = rm_wire_put32(4096);
	cr_assert_eq(rm_ctrl_rx(&s->base, 0, RM_WIRE_LAYOUT, 0, &lay, len, &why), RDMAMIG_E_PROTO,
		     "LAYOUT reserved field (version 1's page_size) set");
	lay.l.reserved = 0;
	lay.r[2].id = lay.r[0].id;
	cr_assert_eq(rm_ctrl_rx(&s->base, 0, RM_WIRE_LAYOUT, 0, &lay, len, &why), 0);
	cr_assert_eq(rm_ctrl_layout_match(&s->base, why2, sizeof(why2)), RDMAMIG_E_PROTO,
		     "duplicate id accepted");
	cr_assert(strstr(why2, "twice"), "%s", why2);
	fake_free(s);

	s = fake_new(RM_ROLE_SOURCE, 1, 100);
	cr_assert_eq(rm_tr_set_regions(&s->base, sr, 2), 0);
	cr_assert_eq(feed(s, &d->f[0], &why), 0);
	cr_assert_eq(rm_ctrl_layout_match(&s->base, why2, sizeof(why2)), RDMAMIG_E_REFUSED);
	cr_assert(strstr(why2, "3 regions"), "%s", why2);
	fake_free(s);
	fake_free(d);
}

/* ---- the region map ---- */

Test(ctrl, region_map_resolves_every_id)
{
	struct fake *k = fake_new(RM_ROLE_SOURCE, 1, 100);
	struct rm_region r[RM_WIRE_MAX_REGIONS];
	static char mem;

	/* Ids that share hash slots: multiples of the slot count. */
	for (unsigned i = 0; i < RM_WIRE_MAX_REGIONS; i++)
		r[i] = (struct rm_region){ .id = i * RM_RMAP_SLOTS * 977u + (i % 3), .addr = &mem, .size = 1 };
	cr_assert_eq(rm_tr_set_regions(&k->base, r, RM_WIRE_MAX_REGIONS), 0);
	for (unsigned i = 0; i < RM_WIRE_MAX_REGIONS; i++)
		cr_assert_eq(rm_tr_region_index(&k->base, r[i].id), (int)i, "id %u", r[i].id);
	cr_assert_eq(rm_tr_region_index(&k->base, 12345), -1);
	r[5].id = r[40].id;
	cr_assert_eq(rm_tr_set_regions(&k->base, r, RM_WIRE_MAX_REGIONS), -EINVAL, "duplicate id");
	cr_assert_eq(rm_tr_region_index(&k->base, r[1].id), -1, "a refused layout left a map");
	cr_assert_eq(rm_tr_set_regions(&k->base, r, 0), -EINVAL);
	fake_free(k);
}

/* ---- rm_tr_write: ids resolved once, ranges as given, pow2 pieces ---- */

Test(ctrl, write_cuts_ranges_but_never_merges_them)
{
	struct fake *k = fake_new(RM_ROLE_SOURCE, 1, 100);
	struct rm_region r[2];
	static char mem[2];
	const struct rm_range w[] = {
		{ .region = 7, .offset = 0, .length = 12 << 10 },
		{ .region = 7, .offset = 12 << 10, .length = 4 << 10 },	/* adjacent: kept apart */
		{ .region = 99, .offset = 4 << 10, .length = 40 << 10 },
	};
	const struct piece want[] = {
		{ 0, 0, 8 << 10 }, { 0, 8 << 10, 4 << 10 }, { 0, 12 << 10, 4 << 10 },
		{ 1, 4 << 10, 16 << 10 }, { 1, 20 << 10, 16 << 10 }, { 1, 36 << 10, 8 << 10 },
	};
	const struct rm_range outside = { .region = 99, .offset = 60 << 10, .length = 8 << 10 };
	const struct rm_range unknown = { .region = 8, .offset = 0, .length = 4 << 10 };

	r[0] = (struct rm_region){ .id = 7, .addr = &mem[0], .size = 1 << 20 };
	r[1] = (struct rm_region){ .id = 99, .addr = &mem[1], .size = 64 << 10 };
	k->base.opts.max_write = 16 << 10;
	cr_assert_eq(rm_tr_set_regions(&k->base, r, 2), 0);
	k->base.laid_out = true;
	npieces = nflushes = 0;
	shorten = 0;
	cr_assert_eq(rm_tr_write(&k->base, w, ARRAY_SIZE(w)), 0);
	cr_assert_eq(npieces, ARRAY_SIZE(want));
	for (unsigned i = 0; i < npieces; i++)
		cr_assert(pieces[i].idx == want[i].idx && pieces[i].off == want[i].off &&
			  pieces[i].len == want[i].len, "piece %u: {%u, %llu, %llu}", i, pieces[i].idx,
			  (unsigned long long)pieces[i].off, (unsigned long long)pieces[i].len);
	cr_assert_eq(nflushes, 1);
	cr_assert_eq(k->base.st.ranges, ARRAY_SIZE(w));

	/* A backend that takes less gets the rest next, still powers of two. */
	npieces = 0;
	shorten = 4 << 10;
	cr_assert_eq(rm_tr_write(&k->base, &w[2], 1), 0);
	cr_assert_eq(npieces, 10);
	for (unsigned i = 0; i < npieces; i++)
		cr_assert(pieces[i].off == (4u << 10) * (i + 1) && pieces[i].len == 4 << 10);

	/* Outside a region or an unknown id: -EINVAL, nothing written. */
	npieces = 0;
	cr_assert_eq(rm_tr_write(&k->base, (const struct rm_range[]){ w[0], outside }, 2), -EINVAL);
	cr_assert_eq(rm_tr_write(&k->base, (const struct rm_range[]){ w[0], unknown }, 2), -EINVAL);
	cr_assert_eq(npieces, 0, "a write was queued before the check failed");
	fake_free(k);
}

/* ---- handshake ---- */

static struct rm_wire_hello good_hello(bool rdma)
{
	struct rm_transport_opts o = { .nchan = 4, .max_write = 1u << 20 };
	struct rm_wire_hello h;

	rm_ctrl_hello(&h, &o, 2, 0x1234, rdma ? 32 : 0);
	return h;
}

/* Break one field of a good HELLO; the reason it must be refused with. */
static const char *spoil_hello(struct rm_wire_hello *h, unsigned k, bool *rdma, uint32_t *reason)
{
	*rdma = false;
	switch (k) {
	case 0: h->magic = 0; *reason = RM_REFUSE_MAGIC; return "magic";
	case 1: h->version_min = h->version_max = rm_wire_put16(RM_WIRE_VERSION + 1);
		*reason = RM_REFUSE_VERSION; return "version too new";
	case 2: h->version_min = h->version_max = rm_wire_put16(RM_WIRE_VERSION_MIN - 1);
		*reason = RM_REFUSE_VERSION; return "version too old";
	case 3: h->version_min = rm_wire_put16(RM_WIRE_VERSION + 1);
		*reason = RM_REFUSE_VERSION; return "version range upside down";
	case 4: h->caps = rm_wire_put32(RM_CAP_MULTICHAN); *reason = RM_REFUSE_CAPS;
		return "required caps";
	case 5: h->nchan = 0; *reason = RM_REFUSE_CHANNELS; return "no channels";
	case 6: h->nchan = rm_wire_put16(RM_WIRE_MAX_CHANNELS + 1); *reason = RM_REFUSE_CHANNELS;
		return "too many channels";
	case 7: h->chan = rm_wire_put16(4); *reason = RM_REFUSE_CHANNELS; return "channel index";
	case 8: h->max_write = 0; *reason = RM_REFUSE_PARAMS; return "max_write 0";
	case 9: h->max_write = rm_wire_put32(3u << 12); *reason = RM_REFUSE_PARAMS;
		return "max_write not a power of two";
	case 10: h->max_write = rm_wire_put32(2048); *reason = RM_REFUSE_PARAMS;
		return "max_write too small";
	case 11: h->max_write = rm_wire_put32(RM_WIRE_MAX_WRITE * 2); *reason = RM_REFUSE_PARAMS;
		return "max_write too large";
	case 12: h->credits = rm_wire_put32(1); *reason = RM_REFUSE_PARAMS; return "credits on TCP";
	case 13: *rdma = true; h->credits = 0; *reason = RM_REFUSE_PARAMS;
		return "no credits on RDMA";
	case 14: *rdma = true; h->credits = rm_wire_put32(RM_WIRE_MAX_CREDITS + 1);
		*reason = RM_REFUSE_PARAMS; return "too many credits on RDMA";
	}
	return NULL;
}

Test(ctrl, hello_checks_every_field)
{
	const char *what;
	uint32_t reason;
	char why[96];
	bool rdma;

	cr_assert_eq(rm_ctrl_hello_check(&(struct rm_wire_hello){ 0 }, false, why, sizeof(why)),
		     RM_REFUSE_MAGIC, "a zeroed HELLO");
	for (int r = 0; r < 2; r++) {
		struct rm_wire_hello h = good_hello(r);

		cr_assert_eq(rm_ctrl_hello_check(&h, r, why, sizeof(why)), 0, "good HELLO: %s", why);
		/* Unknown capability bits are no reason to refuse. */
		h.caps = rm_wire_put32(rm_wire_get32(h.caps) | 0x80000000u);
		cr_assert_eq(rm_ctrl_hello_check(&h, r, why, sizeof(why)), 0, "%s", why);
	}
	for (unsigned k = 0;; k++) {
		struct rm_wire_hello h = good_hello(false);

		what = spoil_hello(&h, k, &rdma, &reason);
		if (!what)
			break;
		if (rdma) {
			struct rm_wire_hello g = good_hello(true);

			g.credits = h.credits;
			h = g;
		}
		why[0] = 0;
		cr_assert_eq(rm_ctrl_hello_check(&h, rdma, why, sizeof(why)), reason, "%s", what);
		cr_assert(why[0], "%s: no text", what);
	}
}

Test(ctrl, hello_parse_names_what_was_wrong)
{
	struct rm_wire_hello h = good_hello(false), out;
	char buf[sizeof(h) + 8] = { 0 }, why[96];

	memcpy(buf, &h, sizeof(h));
	cr_assert_eq(rm_ctrl_hello_parse(RM_WIRE_HELLO, buf, sizeof(h), false, &out, why, sizeof(why)), 0);
	cr_assert_eq(memcmp(&out, &h, sizeof(h)), 0);
	cr_assert_eq(rm_ctrl_hello_parse(RM_WIRE_HELLO, buf, sizeof(h) - 1, false, &out, why, sizeof(why)),
		     RM_REFUSE_MAGIC);
	cr_assert(strstr(why, "HELLO of 31 bytes, expected 32"), "wrong-length HELLO: %s", why);
	cr_assert_eq(rm_ctrl_hello_parse(RM_WIRE_HELLO, buf, sizeof(h) + 8, false, &out, why, sizeof(why)),
		     RM_REFUSE_MAGIC);
	cr_assert(strstr(why, "HELLO of 40 bytes"), "%s", why);
	cr_assert_eq(rm_ctrl_hello_parse(RM_WIRE_HELLO_ACK, buf, sizeof(h), false, &out, why, sizeof(why)),
		     RM_REFUSE_MAGIC);
	cr_assert(strstr(why, "expected HELLO, got HELLO_ACK"), "%s", why);
}

Test(ctrl, hello_join_ties_channels_to_one_migration)
{
	struct fake *d = fake_new(RM_ROLE_DEST, 4, 100);
	struct rm_wire_hello h = good_hello(false);
	char why[96];

	d->base.peer_max_write = 1u << 20;
	cr_assert_eq(rm_ctrl_hello_join(&h, NULL, 0, false, why, sizeof(why)), 0, "first channel");
	cr_assert_eq(rm_ctrl_hello_join(&h, &d->base, 0x1234, false, why, sizeof(why)), 0, "%s", why);
	cr_assert_eq(rm_ctrl_hello_join(&h, &d->base, 0x1235, false, why, sizeof(why)), RM_REFUSE_BUSY,
		     "another session");
	h.nchan = rm_wire_put16(3);
	cr_assert_eq(rm_ctrl_hello_join(&h, &d->base, 0x1234, false, why, sizeof(why)), RM_REFUSE_BUSY,
		     "another channel count");
	h = good_hello(false);
	h.max_write = rm_wire_put32(1u << 16);
	cr_assert_eq(rm_ctrl_hello_join(&h, &d->base, 0x1234, false, why, sizeof(why)), RM_REFUSE_BUSY,
		     "another max_write");
	h = good_hello(false);
	cr_assert_eq(rm_ctrl_hello_join(&h, &d->base, 0x1234, true, why, sizeof(why)),
		     RM_REFUSE_CHANNELS, "a channel twice");
	fake_free(d);
}

/* Break one field of a good HELLO_ACK; NULL past the last. */
static const char *spoil_ack(struct rm_wire_hello_ack *a, unsigned k)
{
	switch (k) {
	case 0: a->version = rm_wire_put16(RM_WIRE_VERSION + 1); return "version too new";
	case 1: a->version = rm_wire_put16(RM_WIRE_VERSION_MIN - 1); return "version too old";
	case 2: a->nchan = rm_wire_put16(3); return "channel count";
	case 3: a->caps = rm_wire_put32(rm_wire_get32(a->caps) | 0x100); return "caps not offered";
	case 4: a->caps = rm_wire_put32(RM_CAP_MULTICHAN); return "caps without the required";
	case 5: a->credits = 0; return "no credits";
	case 6: a->credits = rm_wire_put32(RM_WIRE_MAX_CREDITS + 1); return "too many credits";
	case 7: a->ctrl_buf = rm_wire_put32(4096); return "buffer size";
	}
	return NULL;
}

Test(ctrl, hello_ack_is_checked_by_the_source)
{
	struct rm_wire_hello h = good_hello(true), ht = good_hello(false);
	struct rm_wire_hello_ack a, out;
	struct rm_wire_refuse_body rf;

	rm_ctrl_hello_ack(&a, &h, 32, 65536);
	cr_assert_eq(rm_ctrl_hello_reply("rdma", 2, RM_WIRE_HELLO_ACK, &a, sizeof(a), &h, 65536, &out), 0);
	cr_assert_eq(rm_wire_get16(out.version), RM_WIRE_VERSION);
	cr_assert_eq(rm_wire_get32(out.caps), RM_CAP_FENCE_EPOCH | RM_CAP_MULTICHAN);
	for (unsigned k = 0;; k++) {
		struct rm_wire_hello_ack b = a;
		const char *what = spoil_ack(&b, k);

		if (!what)
			break;
		cr_assert_eq(rm_ctrl_hello_reply("rdma", 2, RM_WIRE_HELLO_ACK, &b, sizeof(b), &h, 65536, &out),
			     RDMAMIG_E_PROTO, "%s", what);
	}
	cr_assert_eq(rm_ctrl_hello_reply("rdma", 2, RM_WIRE_HELLO_ACK, &a, sizeof(a) - 1, &h, 65536, &out),
		     RDMAMIG_E_PROTO, "short HELLO_ACK");
	cr_assert_eq(rm_ctrl_hello_reply("rdma", 2, RM_WIRE_LAYOUT, &a, sizeof(a), &h, 65536, &out),
		     RDMAMIG_E_PROTO, "not a HELLO_ACK");

	/* TCP: no credits, no buffer size. */
	rm_ctrl_hello_ack(&a, &ht, 0, 0);
	cr_assert_eq(rm_ctrl_hello_reply("tcp", 2, RM_WIRE_HELLO_ACK, &a, sizeof(a), &ht, 0, &out), 0);
	a.credits = rm_wire_put32(8);
	cr_assert_eq(rm_ctrl_hello_reply("tcp", 2, RM_WIRE_HELLO_ACK, &a, sizeof(a), &ht, 0, &out),
		     RDMAMIG_E_PROTO, "credits on TCP");

	/* A refusal is the destination's, and says why. */
	rm_ctrl_refuse_body(&rf, RM_REFUSE_BUSY, "busy with another");
	log_start();
	cr_assert_eq(rm_ctrl_hello_reply("tcp", 0, RM_WIRE_REFUSE, &rf, sizeof(rf), &ht, 0, &out),
		     RDMAMIG_E_REFUSED);
	log_stop();
	cr_assert(strstr(logbuf, "the destination refused: destination busy: busy with another"),
		  "log: %s", logbuf);
}

/* ---- ABORT, REFUSE ---- */

Test(ctrl, abort_reason_survives_every_int)
{
	struct rm_wire_abort_body a;

	rm_ctrl_abort_body(&a, INT_MIN, "x");
	cr_assert_eq(rm_wire_get32(a.reason), 0x80000000u);
	cr_assert_eq(rm_ctrl_abort_reason(0x80000000u), 0, "0x80000000 is no error code");
	cr_assert_eq(rm_ctrl_abort_reason(0xffffffffu), 0);
	cr_assert_eq(rm_ctrl_abort_reason(0), 0);
	rm_ctrl_abort_body(&a, -ECANCELED, "cancelled");
	cr_assert_eq(rm_ctrl_abort_reason(rm_wire_get32(a.reason)), -ECANCELED);
	rm_ctrl_abort_body(&a, RDMAMIG_E_PROTO, NULL);
	cr_assert_eq(rm_ctrl_abort_reason(rm_wire_get32(a.reason)), RDMAMIG_E_PROTO);
	cr_assert_eq(a.text[0], 0);
	rm_ctrl_abort_body(&a, INT_MAX, "");
	cr_assert_eq(rm_ctrl_abort_reason(rm_wire_get32(a.reason)), -INT_MAX);
}

Test(ctrl, abort_received_is_logged_with_its_reason)
{
	struct fake *s = fake_new(RM_ROLE_SOURCE, 1, 100);
	struct rm_wire_abort_body a;
	char long_text[100];
	const char *why;

	memset(long_text, 'y', sizeof(long_text) - 1);
	long_text[sizeof(long_text) - 1] = 0;
	rm_ctrl_abort_body(&a, INT_MIN, long_text);
	cr_assert_eq(a.text[RM_WIRE_TEXT - 1], 0, "text not cut to the field");
	memset(a.text, 'z', sizeof(a.text));	/* a peer that sends no NUL */
	log_start();
	cr_assert_eq(rm_ctrl_rx(&s->base, 0, RM_WIRE_ABORT, 0, &a, sizeof(a), &why), RDMAMIG_E_ABORTED);
	log_stop();
	cr_assert(strstr(logbuf, "the destination aborted") && strstr(logbuf, "0x80000000"),
		  "log: %s", logbuf);
	rm_ctrl_abort_body(&a, -ETIMEDOUT, "slow");
	log_start();
	cr_assert_eq(rm_ctrl_rx(&s->base, 0, RM_WIRE_ABORT, 0, &a, sizeof(a), &why), RDMAMIG_E_ABORTED);
	log_stop();
	cr_assert(strstr(logbuf, "slow (Connection timed out)"), "log: %s", logbuf);
	cr_assert_eq(rm_ctrl_rx(&s->base, 0, RM_WIRE_ABORT, 0, &a, sizeof(a) - 1, &why), RDMAMIG_E_PROTO,
		     "short ABORT");
	fake_free(s);
}

Test(ctrl, refuse_received_names_the_peer)
{
	struct fake *s = fake_new(RM_ROLE_SOURCE, 1, 100), *d = fake_new(RM_ROLE_DEST, 1, 100);
	struct rm_wire_refuse_body rf;
	const char *why;

	rm_ctrl_refuse_body(&rf, RM_REFUSE_LAYOUT, "sizes differ");
	log_start();
	cr_assert_eq(rm_ctrl_rx(&s->base, 0, RM_WIRE_REFUSE, 0, &rf, sizeof(rf), &why), RDMAMIG_E_REFUSED);
	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_REFUSE, 0, &rf, sizeof(rf), &why), RDMAMIG_E_REFUSED);
	log_stop();
	cr_assert(strstr(logbuf, "the destination refused: RAM layouts differ: sizes differ\n"
			 "transport fake: the source refused: RAM layouts differ: sizes differ"),
		  "log: %s", logbuf);
	cr_assert_eq(rm_ctrl_rx(&s->base, 0, RM_WIRE_REFUSE, 0, &rf, sizeof(rf) + 1, &why),
		     RDMAMIG_E_PROTO, "long REFUSE");
	fake_free(s);
	fake_free(d);
}

Test(ctrl, unknown_types_are_protocol_errors)
{
	struct fake *d = fake_new(RM_ROLE_DEST, 1, 100);
	static const uint16_t types[] = { RM_WIRE_INVALID, RM_WIRE_HELLO, RM_WIRE_HELLO_ACK,
					  RM_WIRE_WRITE, RM_WIRE_CREDIT, 0x77, RM_WIRE_ENGINE_FIRST,
					  0xffff };
	const char *why;

	for (unsigned i = 0; i < ARRAY_SIZE(types); i++)
		cr_assert_eq(rm_ctrl_rx(&d->base, 0, types[i], 0, NULL, 0, &why), RDMAMIG_E_PROTO,
			     "type %#x taken", types[i]);
	fake_free(d);
}

Test(ctrl, unframe_checks_the_header)
{
	uint8_t buf[64] = { 0 };
	struct rm_wire_hdr h;
	const void *body;
	uint16_t type;
	size_t blen;

	rm_wire_hdr_init(&h, RM_WIRE_HELLO, 0, 32, 0);
	memcpy(buf, &h, sizeof(h));
	cr_assert_eq(rm_ctrl_unframe(buf, sizeof(buf), &type, &body, &blen), 0, "padding allowed");
	cr_assert_eq(type, RM_WIRE_HELLO);
	cr_assert_eq(blen, 32);
	cr_assert_eq(body, buf + sizeof(h));
	cr_assert_eq(rm_ctrl_unframe(buf, sizeof(h) + 31, &type, &body, &blen), -EPROTO, "body cut");
	cr_assert_eq(rm_ctrl_unframe(buf, sizeof(h) - 1, &type, &body, &blen), -EPROTO, "header cut");
	rm_wire_hdr_init(&h, RM_WIRE_HELLO, 0, 32, 5);
	memcpy(buf, &h, sizeof(h));
	cr_assert_eq(rm_ctrl_unframe(buf, sizeof(buf), &type, &body, &blen), -EPROTO, "credits set");
}
