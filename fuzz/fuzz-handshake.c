/*
 * fuzz/fuzz-handshake.c — the handshake parsers of transport/ctrl.c, both
 * roles: a destination reading a HELLO (from a TCP frame or from rdma_cm
 * private data) and a second one joining the same migration; a source
 * reading the destination's HELLO_ACK or REFUSE to its own HELLO.
 *
 * Input: one selector byte — bit 0 source (else destination), bit 1 RDMA
 * (private data, credits, ctrl_buf), bit 2 the second HELLO takes the
 * first one's channel, bit 3 this side has a pre-shared key — then wire frames (16-byte header + body) as
 * rm_ctrl_unframe() takes them from a buffer.
 */
#include "fuzz/fuzz.h"
#include "transport/priv.h"

static const struct rm_transport_ops null_ops = { .name = "fuzz" };

static int next_frame(struct fz_in *in, uint16_t *type, const void **body, size_t *blen)
{
	struct rm_wire_hdr h;
	size_t len;

	if (in->left < sizeof(h))
		return -1;
	memcpy(&h, in->p, sizeof(h));
	len = rm_wire_get32(h.len);
	if (len > in->left - sizeof(h))
		len = in->left - sizeof(h);
	/* unframe sees exactly the frame (plus the slack RDMA private data has). */
	if (rm_ctrl_unframe(in->p, sizeof(h) + len, type, body, blen))
		return fz_take(in, sizeof(h) + len) ? 1 : -1;
	FZ_CHECK(*blen <= len && (const uint8_t *)*body == in->p + sizeof(h));
	fz_take(in, sizeof(h) + len);
	return 0;
}

static void destination(struct fz_in *in, int sel)
{
	bool rdma = sel & 2, auth = sel & 8;
	struct rm_wire_hello h, h2;
	struct rm_wire_hello_ack ack;
	struct rm_transport_opts o = { .max_write = 1u << 20, .timeout_ms = 1000 };
	struct rm_transport t;
	uint16_t type;
	const void *body;
	size_t blen;
	char why[96];
	uint32_t reason;

	if (next_frame(in, &type, &body, &blen))
		return;
	why[0] = 0;
	reason = rm_ctrl_hello_parse(type, body, blen, rdma, auth, &h, why, sizeof(why));
	if (reason) {
		FZ_CHECK(reason >= RM_REFUSE_VERSION && reason <= RM_REFUSE_AUTH && why[0]);
		return;
	}
	/* Accepted: what the backends then rely on. */
	o.nchan = rm_wire_get16(h.nchan);
	FZ_CHECK(o.nchan >= 1 && o.nchan <= RM_WIRE_MAX_CHANNELS);
	FZ_CHECK(rm_wire_get16(h.chan) < o.nchan);
	rm_ctrl_hello_ack(&ack, &h, rdma ? 64 : 0, rdma ? 4096 : 0, auth);
	if (auth)
		FZ_CHECK(rm_wire_get32(ack.caps) & RM_CAP_AUTH);
	FZ_CHECK(rm_wire_get32(ack.caps) & RM_CAP_REQUIRED);
	FZ_CHECK(rm_wire_get16(ack.version) >= RM_WIRE_VERSION_MIN &&
		 rm_wire_get16(ack.version) <= RM_WIRE_VERSION);

	memset(&t, 0, sizeof(t));
	if (rm_tr_init(&t, &null_ops, &o, RM_ROLE_DEST, o.nchan, RM_WIRE_MAX_FRAG))
		return;
	t.peer_max_write = rm_wire_get32(h.max_write);
	if (!next_frame(in, &type, &body, &blen) &&
	    !rm_ctrl_hello_parse(type, body, blen, rdma, auth, &h2, why, sizeof(why))) {
		reason = rm_ctrl_hello_join(&h2, &t, rm_wire_get64(h.session),
					    (sel & 4) && h2.chan == h.chan, why, sizeof(why));
		if (!reason) {
			FZ_CHECK(rm_wire_get16(h2.nchan) == t.nchan);
			FZ_CHECK(rm_wire_get16(h2.chan) < t.nchan);
		}
	}
	rm_tr_destroy(&t);
}

static void source(struct fz_in *in, int sel)
{
	bool rdma = sel & 2;
	struct rm_transport_opts o = { .nchan = 2, .max_write = 1u << 20, .timeout_ms = 1000,
				       .psk_len = sel & 8 ? 32 : 0, .no_auth = !(sel & 8) };
	struct rm_wire_hello h;
	struct rm_wire_hello_ack ack;
	uint16_t type;
	const void *body;
	size_t blen;

	rm_ctrl_hello(&h, &o, 0, 0x1234, rdma ? 64 : 0);
	while (!next_frame(in, &type, &body, &blen)) {
		int err = rm_ctrl_hello_reply("fuzz", 0, type, body, blen, &h, rdma ? 4096 : 0, &ack);

		FZ_CHECK(!err || err == RDMAMIG_E_REFUSED || err == RDMAMIG_E_PROTO || err == RDMAMIG_E_AUTH);
		if (!err) {
			FZ_CHECK(rm_wire_get16(ack.nchan) == 2);
			FZ_CHECK(!(rm_wire_get32(ack.caps) & ~rm_wire_get32(h.caps)));
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = { data, size };
	int sel = fz_u8(&in);

	if (sel < 0)
		return 0;
	if (sel & 1)
		source(&in, sel);
	else
		destination(&in, sel);
	/* The names a log prints for any peer number. */
	if (size >= 4) {
		FZ_CHECK(rm_wire_type_name(data[2] | data[3] << 8) != NULL);
		FZ_CHECK(rm_wire_refuse_name(data[2] | (unsigned)data[3] << 8) != NULL);
		FZ_CHECK(rm_ctrl_abort_reason((uint32_t)data[size - 1] << 24 | data[1]) <= 0);
	}
	return 0;
}
