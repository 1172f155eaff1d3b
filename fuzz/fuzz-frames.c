/*
 * fuzz/fuzz-frames.c — the receive side of transport/ctrl.c, as a backend
 * drives it: every message a peer can put on a channel after the handshake
 * (MARKER, CTRL fragments whole or streamed, LAYOUT staged or not, READY,
 * ABORT, REFUSE, BYE, anything else), then the engine reading what queued,
 * and a source matching a received LAYOUT with its own RAM.
 *
 * Input: one config byte — bit 0 source (else destination), bits 1-2
 * channels - 1, bit 3 CTRL streamed through rm_ctrl_rx_begin/end as TCP
 * does (else whole, as an RDMA SEND), bit 4 small queue bounds, bit 5 a
 * source with two RAM regions (else one), bit 6 both sides hold a key, so
 * AUTH comes first (this harness plays the owner's side of the exchange:
 * it counts its own next step as sent once the peer's arrived), bit 7 the
 * RDMA backend (staged LAYOUTs and READY are RDMA's; else TCP) — then
 * records {u8 channel, 16-byte wire header, header.len body bytes (fewer if
 * the input ends)}.  The first error ends the connection, as in a backend.
 */
#include "fuzz/fuzz.h"
#include "transport/priv.h"

static int null_post(struct rm_transport *t, unsigned chan, uint16_t type, uint16_t flags,
		     const void *body, size_t blen, const void *data, size_t dlen, uint64_t deadline)
{
	return 0;
}

static const struct rm_transport_ops null_ops = {
	.name = "fuzz",
	.post = null_post,
}, late_ops = {	/* RDMA's: keys may come after LAYOUT */
	.name = "fuzz",
	.late_keys = true,
	.post = null_post,
};

/* The source's own RAM: region 0 as the captured migration's 16 MiB guest
 * had it; config bit 5 adds a second region. */
static char ram0, ram1;
static const struct rm_region local[] = {
	{ .id = 0, .addr = &ram0, .size = 16ull << 20 },
	{ .id = 1, .addr = &ram1, .size = 1ull << 30 },
};

static int drain(struct rm_transport *t)
{
	struct rm_msg msg;
	int ret;

	while ((ret = rm_ctrl_recv(t, &msg, 0)) == 1) {
		FZ_CHECK(msg.type >= RM_WIRE_ENGINE_FIRST && msg.type <= RM_WIRE_ENGINE_LAST);
		FZ_CHECK(msg.len <= RM_WIRE_MAX_CTRL);
		FZ_CHECK((msg.len == 0) == (msg.data == NULL));
		/* The whole message must be readable. */
		if (msg.len)
			FZ_CHECK(((volatile uint8_t *)msg.data)[msg.len - 1] == ((uint8_t *)msg.data)[msg.len - 1]);
		rm_msg_free(&msg);
	}
	return ret;
}

static int one_frame(struct rm_transport *t, unsigned chan, const struct rm_wire_hdr *h,
		     const uint8_t *body, size_t len, bool stream)
{
	uint16_t type = rm_wire_get16(h->type), flags = rm_wire_get16(h->flags);
	const char *why = NULL;
	int err;

	/* What every backend checks before ctrl.c sees the message. */
	if (h->reserved || h->credits)
		return RDMAMIG_E_PROTO;
	if (type == RM_WIRE_WRITE)
		return 0;	/* RAM: the backend's, not ctrl.c's */
	if (type == RM_WIRE_CTRL && stream) {
		struct rm_wire_ctrl b;
		void *dst = NULL;

		if (len < sizeof(b))
			return RDMAMIG_E_PROTO;
		memcpy(&b, body, sizeof(b));
		err = rm_ctrl_rx_begin(t, chan, flags, &b, len, &dst, &why);
		if (err) {
			FZ_CHECK(why != NULL);
			return err;
		}
		FZ_CHECK(t->ctrl.asm_frag == len - sizeof(b));
		if (len > sizeof(b))
			memcpy(dst, body + sizeof(b), len - sizeof(b));
		err = rm_ctrl_rx_end(t, &why);
	} else {
		err = rm_ctrl_rx(t, chan, type, flags, body, len, &why);
	}
	if (err && err != RM_CTRL_END)
		FZ_CHECK(why != NULL);
	return err;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = { data, size };
	struct rm_transport_opts o = { .max_write = 1u << 20, .timeout_ms = 1000 };
	struct rm_transport t;
	int cfg = fz_u8(&in), err = 0;
	bool ended[RM_WIRE_MAX_CHANNELS] = { false }, matched = false;
	enum rm_role role;

	if (cfg < 0)
		return 0;
	role = cfg & 1 ? RM_ROLE_SOURCE : RM_ROLE_DEST;
	o.kind = cfg & 0x80 ? RM_TRANSPORT_RDMA : RM_TRANSPORT_TCP;
	o.nchan = ((unsigned)cfg >> 1 & 3) + 1;
	if (cfg & 0x40) {
		memset(o.psk, 0x6b, 32);
		o.psk_len = 32;
	} else {
		o.no_auth = true;
	}
	memset(&t, 0, sizeof(t));
	if (rm_tr_init(&t, o.kind == RM_TRANSPORT_RDMA ? &late_ops : &null_ops, &o, role, o.nchan,
		       RM_WIRE_MAX_FRAG))
		return 0;
	if (cfg & 0x10) {
		t.ctrl.max_msgs = 4;
		t.ctrl.max_bytes = 4096;
	}
	if (role == RM_ROLE_SOURCE)
		FZ_CHECK(rm_tr_set_regions(&t, local, cfg & 0x20 ? 2 : 1) == 0);

	while (!err) {
		const uint8_t *hp, *body;
		struct rm_wire_hdr h;
		int c = fz_u8(&in);
		size_t len;

		hp = fz_take(&in, sizeof(h));
		if (c < 0 || !hp)
			break;
		memcpy(&h, hp, sizeof(h));
		len = rm_wire_get32(h.len);
		if (len > in.left)
			len = in.left;
		body = fz_take(&in, len);
		if (ended[c % o.nchan])
			continue;	/* nothing is read after a channel's BYE */
		err = one_frame(&t, (unsigned)c % o.nchan, &h, body, len, cfg & 8);
		if (err == RM_CTRL_END) {
			ended[c % o.nchan] = true;
			err = 0;
		}
		if (!err && t.ctrl.auth_got > t.ctrl.auth_sent)
			t.ctrl.auth_sent = t.ctrl.auth_got + 1;	/* the owner's answer */
		if (!err && drain(&t) < 0)
			break;
		if (!err && role == RM_ROLE_SOURCE && t.ctrl.have_layout && !matched) {
			char why[120];
			int m = rm_ctrl_layout_match(&t, why, sizeof(why));

			matched = true;
			FZ_CHECK(m == 0 || m == RDMAMIG_E_REFUSED || m == RDMAMIG_E_PROTO);
			if (!m)
				for (unsigned i = 0; i < t.nregions; i++)
					(void)t.ctrl.peer[i].rkey;
		}
	}
	/* A staged LAYOUT's table is bounded, and READYs fill it at most once. */
	if (t.ctrl.stage_shift) {
		FZ_CHECK(t.ctrl.stage_base[t.ctrl.peer_nregions] <= RM_WIRE_MAX_CHUNKS);
		FZ_CHECK(t.ctrl.stage_nready <= t.ctrl.stage_base[t.ctrl.peer_nregions]);
	}
	FZ_CHECK(t.ctrl.queued <= t.ctrl.max_msgs);
	FZ_CHECK(t.ctrl.queued_bytes <= t.ctrl.max_bytes);
	rm_tr_destroy(&t);
	return 0;
}
