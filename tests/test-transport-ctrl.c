/*
 * tests/test-transport-ctrl.c — the control protocol of transport/ctrl.c on
 * its own: no socket, no verbs.  A fake backend (test-transport-fake.h)
 * records every message ctrl.c posts; the cases feed those (or hostile ones)
 * to another fake's receive side and check what comes out: fragmentation at
 * its boundaries, reassembly that refuses what is out of order, oversized or
 * overlapping, the queue's bound, LAYOUT, MARKER, the region map and how
 * writes are cut, and liveness: KEEPALIVE on quiet channels only, silence
 * failing the connection, a busy backend not being an error — driven with a
 * made-up clock, and once by the liveness thread itself.  The handshake,
 * REFUSE and ABORT are test-transport-hello.c's.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/test-transport-fake.h"
#include "transport/priv.h"

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
	lay.l.flags = rm_wire_put32(4096);
	cr_assert_eq(rm_ctrl_rx(&s->base, 0, RM_WIRE_LAYOUT, 0, &lay, len, &why), RDMAMIG_E_PROTO,
		     "LAYOUT reserved field (version 1's page_size) set");
	lay.l.flags = 0;
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

/* ---- liveness ---- */

#define MS 1000000ull

/* Every channel heard from and sent on at t0. */
static void live_at(struct fake *k, uint64_t t0)
{
	for (unsigned i = 0; i < k->base.nchan; i++) {
		atomic_store(&k->base.ctrl.last_tx[i], t0);
		atomic_store(&k->base.ctrl.last_rx[i], t0);
	}
}

/* Which channels got a KEEPALIVE since the last clear, as a bit set. */
static unsigned keepalives(struct fake *k)
{
	unsigned set = 0;

	for (unsigned i = 0; i < k->n; i++) {
		cr_assert_eq(k->f[i].type, RM_WIRE_KEEPALIVE, "frame %u is %s", i,
			     rm_wire_type_name(k->f[i].type));
		cr_assert_eq(k->f[i].len, 0, "KEEPALIVE with a body");
		cr_assert_eq(k->f[i].flags, 0);
		cr_assert_eq(set & (1u << k->f[i].chan), 0, "two on channel %u", k->f[i].chan);
		set |= 1u << k->f[i].chan;
	}
	fake_clear(k);
	return set;
}

Test(ctrl, keepalive_goes_only_to_quiet_channels)
{
	/* timeout 1000 ms: a channel quiet for 250 ms gets one. */
	struct fake *k = fake_new(RM_ROLE_SOURCE, 3, 100);
	uint64_t t0 = rm_now_ns();

	live_at(k, t0);
	cr_assert_eq(rm_ctrl_live(&k->base, t0 + 249 * MS), 0);
	cr_assert_eq(keepalives(k), 0, "a keep-alive before the channel was quiet for 250 ms");
	atomic_store(&k->base.ctrl.last_tx[1], t0 + 200 * MS);	/* channel 1 spoke later */
	cr_assert_eq(rm_ctrl_live(&k->base, t0 + 250 * MS), 0);
	cr_assert_eq(keepalives(k), 0x5, "quiet channels 0 and 2, not the busy 1");
	cr_assert_eq(rm_ctrl_live(&k->base, t0 + 300 * MS), 0);
	cr_assert_eq(keepalives(k), 0, "a keep-alive counts as speaking");
	for (unsigned i = 0; i < 3; i++)
		atomic_store(&k->base.ctrl.last_rx[i], t0 + 500 * MS);
	cr_assert_eq(rm_ctrl_live(&k->base, t0 + 500 * MS), 0);
	cr_assert_eq(keepalives(k), 0x7, "every channel quiet again");
	cr_assert_eq(rm_tr_check(&k->base), 0);
	fake_free(k);
}

Test(ctrl, keepalive_interval_follows_a_short_timeout)
{
	struct fake *k = fake_new(RM_ROLE_DEST, 1, 100);
	uint64_t t0 = rm_now_ns();

	k->base.opts.timeout_ms = 400;	/* a quarter of it: 100 ms */
	live_at(k, t0);
	cr_assert_eq(rm_ctrl_live(&k->base, t0 + 99 * MS), 0);
	cr_assert_eq(keepalives(k), 0);
	cr_assert_eq(rm_ctrl_live(&k->base, t0 + 100 * MS), 0);
	cr_assert_eq(keepalives(k), 0x1);
	fake_free(k);
}

Test(ctrl, silence_for_the_timeout_fails_the_connection)
{
	struct fake *k = fake_new(RM_ROLE_DEST, 2, 100);
	uint64_t t0 = rm_now_ns();

	live_at(k, t0);
	atomic_store(&k->base.ctrl.last_rx[0], t0 + 900 * MS);	/* channel 1 stays silent */
	cr_assert_eq(rm_ctrl_live(&k->base, t0 + 999 * MS), 0, "failed before the timeout");
	cr_assert_eq(rm_tr_check(&k->base), 0);
	log_start();
	cr_assert_eq(rm_ctrl_live(&k->base, t0 + 1000 * MS), -ETIMEDOUT);
	log_stop();
	cr_assert_eq(rm_tr_check(&k->base), -ETIMEDOUT, "silence must be the connection's error");
	cr_assert(strstr(logbuf, "channel 1: nothing from the source for 1000 ms"), "log: %s", logbuf);
	fake_clear(k);
	cr_assert_eq(rm_ctrl_live(&k->base, t0 + 5000 * MS), -ETIMEDOUT);
	cr_assert_eq(k->n, 0, "keep-alives after the connection failed");
	fake_free(k);
}

Test(ctrl, a_busy_backend_skips_a_keepalive_and_retries)
{
	struct fake *k = fake_new(RM_ROLE_SOURCE, 1, 100);
	uint64_t t0 = rm_now_ns();

	live_at(k, t0);
	k->busy = 1;
	cr_assert_eq(rm_ctrl_live(&k->base, t0 + 300 * MS), 0, "-EAGAIN is no error");
	cr_assert_eq(rm_tr_check(&k->base), 0);
	cr_assert_eq(k->n, 0);
	k->busy = 0;
	cr_assert_eq(rm_ctrl_live(&k->base, t0 + 350 * MS), 0);
	cr_assert_eq(keepalives(k), 0x1, "the skipped keep-alive is sent next round");
	fake_free(k);
}

Test(ctrl, after_the_peers_bye_nothing_is_sent_or_timed)
{
	struct fake *k = fake_new(RM_ROLE_SOURCE, 2, 100);
	uint64_t t0 = rm_now_ns();
	const char *why;

	live_at(k, t0);
	cr_assert_eq(rm_ctrl_rx(&k->base, 0, RM_WIRE_BYE, 0, NULL, 0, &why), RM_CTRL_END);
	cr_assert_eq(rm_ctrl_live(&k->base, t0 + 5000 * MS), 0);
	cr_assert_eq(k->n, 0);
	cr_assert_eq(rm_tr_check(&k->base), 0);
	fake_free(k);
}

Test(ctrl, keepalive_received_has_no_body_and_queues_nothing)
{
	struct fake *d = fake_new(RM_ROLE_DEST, 2, 100);
	const char *why;
	struct rm_msg m;

	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_KEEPALIVE, 0, NULL, 0, &why), 0);
	cr_assert_eq(rm_ctrl_recv(&d->base, &m, 0), 0, "a keep-alive reached the engine");
	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_KEEPALIVE, 0, "12345678", 8, &why),
		     RDMAMIG_E_PROTO, "KEEPALIVE with a body");
	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_KEEPALIVE, RM_WIRE_F_FIRST, NULL, 0, &why),
		     RDMAMIG_E_PROTO, "KEEPALIVE with flags");
	cr_assert_eq(rm_ctrl_rx(&d->base, 2, RM_WIRE_KEEPALIVE, 0, NULL, 0, &why), RDMAMIG_E_PROTO,
		     "KEEPALIVE on a channel that does not exist");
	fake_free(d);
}

/* The thread: keep-alives flow on every channel without anyone calling an
 * op, and a peer that never answers is declared dead — both waited for
 * with a generous bound, neither timed. */
Test(ctrl, liveness_thread_speaks_and_listens_on_its_own)
{
	struct fake *k = fake_new(RM_ROLE_SOURCE, 2, 100);
	unsigned set = 0;
	int err = 0;

	k->base.opts.timeout_ms = 400;
	log_start();
	cr_assert_eq(rm_ctrl_live_start(&k->base), 0);
	for (int i = 0; i < 500 && set != 0x3; i++) {
		usleep(10000);
		pthread_mutex_lock(&k->lock);
		for (unsigned f = 0; f < k->n; f++)
			if (k->f[f].type == RM_WIRE_KEEPALIVE)
				set |= 1u << k->f[f].chan;
		pthread_mutex_unlock(&k->lock);
	}
	cr_assert_eq(set, 0x3, "no keep-alive on some channel within 5 s");
	for (int i = 0; i < 500 && !(err = rm_tr_check(&k->base)); i++)
		usleep(10000);
	rm_ctrl_live_stop(&k->base);
	log_stop();
	cr_assert_eq(err, -ETIMEDOUT, "a silent peer was not declared dead: %s", rdmamig_strerror(err));
	cr_assert(strstr(logbuf, "nothing from the destination"), "log: %s", logbuf);
	fake_free(k);
}
