/*
 * tests/test-transport-hello.c — the handshake and the messages that end a
 * conversation, as transport/ctrl.c builds and checks them, on the fake
 * backend of test-transport-fake.h: every field of HELLO and HELLO_ACK,
 * channels tied to one migration, ABORT and REFUSE with their reasons,
 * unknown types and malformed frame headers.
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "tests/test-transport-fake.h"
#include "transport/priv.h"

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

	cr_assert_eq(rm_ctrl_hello_check(&(struct rm_wire_hello){ 0 }, false, false, why, sizeof(why)),
		     RM_REFUSE_MAGIC, "a zeroed HELLO");
	for (int r = 0; r < 2; r++) {
		struct rm_wire_hello h = good_hello(r);

		cr_assert_eq(rm_ctrl_hello_check(&h, r, false, why, sizeof(why)), 0, "good HELLO: %s", why);
		/* Unknown capability bits are no reason to refuse. */
		h.caps = rm_wire_put32(rm_wire_get32(h.caps) | 0x80000000u);
		cr_assert_eq(rm_ctrl_hello_check(&h, r, false, why, sizeof(why)), 0, "%s", why);
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
		cr_assert_eq(rm_ctrl_hello_check(&h, rdma, false, why, sizeof(why)), reason, "%s", what);
		cr_assert(why[0], "%s: no text", what);
	}
}

Test(ctrl, hello_parse_names_what_was_wrong)
{
	struct rm_wire_hello h = good_hello(false), out;
	char buf[sizeof(h) + 8] = { 0 }, why[96];

	memcpy(buf, &h, sizeof(h));
	cr_assert_eq(rm_ctrl_hello_parse(RM_WIRE_HELLO, buf, sizeof(h), false, false, &out, why, sizeof(why)), 0);
	cr_assert_eq(memcmp(&out, &h, sizeof(h)), 0);
	cr_assert_eq(rm_ctrl_hello_parse(RM_WIRE_HELLO, buf, sizeof(h) - 1, false, false, &out, why, sizeof(why)),
		     RM_REFUSE_MAGIC);
	cr_assert(strstr(why, "HELLO of 31 bytes, expected 32"), "wrong-length HELLO: %s", why);
	cr_assert_eq(rm_ctrl_hello_parse(RM_WIRE_HELLO, buf, sizeof(h) + 8, false, false, &out, why, sizeof(why)),
		     RM_REFUSE_MAGIC);
	cr_assert(strstr(why, "HELLO of 40 bytes"), "%s", why);
	cr_assert_eq(rm_ctrl_hello_parse(RM_WIRE_HELLO_ACK, buf, sizeof(h), false, false, &out, why, sizeof(why)),
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

/* The field each spoil_ack() case breaks, as the log must name it. */
static const char *const spoil_field[] = {
	"version 6, we offered", "version 4, we offered", "nchan 3, we asked for 4",
	"caps 0x", "caps 0x1, we offered", "credits 0, expected 1-4096",
	"credits 4097, expected", "ctrl_buf 4096, expected 65536",
};

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

	rm_ctrl_hello_ack(&a, &h, 32, 65536, false);
	cr_assert_eq(rm_ctrl_hello_reply("rdma", 2, RM_WIRE_HELLO_ACK, &a, sizeof(a), &h, 65536, &out), 0);
	cr_assert_eq(rm_wire_get16(out.version), RM_WIRE_VERSION);
	cr_assert_eq(rm_wire_get32(out.caps), RM_CAP_FENCE_EPOCH | RM_CAP_MULTICHAN);
	for (unsigned k = 0;; k++) {
		struct rm_wire_hello_ack b = a;
		const char *what = spoil_ack(&b, k);

		if (!what)
			break;
		log_start();
		cr_assert_eq(rm_ctrl_hello_reply("rdma", 2, RM_WIRE_HELLO_ACK, &b, sizeof(b), &h, 65536, &out),
			     RDMAMIG_E_PROTO, "%s", what);
		log_stop();
		/* The log names the field and both values, not only "bad". */
		cr_assert(strstr(logbuf, "bad HELLO_ACK from the destination: ") &&
			  strstr(logbuf, spoil_field[k]), "%s: log: %s", what, logbuf);
	}
	cr_assert_eq(rm_ctrl_hello_reply("rdma", 2, RM_WIRE_HELLO_ACK, &a, sizeof(a) - 1, &h, 65536, &out),
		     RDMAMIG_E_PROTO, "short HELLO_ACK");
	cr_assert_eq(rm_ctrl_hello_reply("rdma", 2, RM_WIRE_LAYOUT, &a, sizeof(a), &h, 65536, &out),
		     RDMAMIG_E_PROTO, "not a HELLO_ACK");

	/* TCP: no credits, no buffer size. */
	rm_ctrl_hello_ack(&a, &ht, 0, 0, false);
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
