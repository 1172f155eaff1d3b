/*
 * transport/ctrl-hello.c — the handshake bodies (HELLO, HELLO_ACK) with
 * their checks, and REFUSE / ABORT bodies and frame headers: the parts of
 * the control protocol that build or check one message, with no state.
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "transport/priv.h"

/* ---- handshake ---- */

void rm_ctrl_hello(struct rm_wire_hello *h, const struct rm_transport_opts *o, unsigned chan,
		   uint64_t session, uint32_t credits)
{
	*h = (struct rm_wire_hello){
		.magic = rm_wire_put32(RM_WIRE_MAGIC),
		.version_min = rm_wire_put16(RM_WIRE_VERSION_MIN),
		.version_max = rm_wire_put16(RM_WIRE_VERSION),
		.caps = rm_wire_put32(RM_CAP_FENCE_EPOCH | (o->nchan > 1 ? RM_CAP_MULTICHAN : 0) |
				      (o->psk_len ? RM_CAP_AUTH : 0)),
		.nchan = rm_wire_put16((uint16_t)o->nchan),
		.chan = rm_wire_put16((uint16_t)chan),
		.session = rm_wire_put64(session),
		.max_write = rm_wire_put32(o->max_write),
		.credits = rm_wire_put32(credits),
	};
}

static bool write_size_ok(uint32_t w)
{
	return w >= RM_WIRE_MIN_WRITE && w <= RM_WIRE_MAX_WRITE && !(w & (w - 1));
}

static bool credits_ok(uint32_t credits, bool rdma)
{
	return rdma ? credits && credits <= RM_WIRE_MAX_CREDITS : !credits;
}

uint32_t rm_ctrl_hello_check(const struct rm_wire_hello *h, bool rdma, bool auth, char *why,
			     size_t n)
{
	unsigned nchan = rm_wire_get16(h->nchan), chan = rm_wire_get16(h->chan);
	unsigned vmin = rm_wire_get16(h->version_min), vmax = rm_wire_get16(h->version_max);
	uint32_t caps = rm_wire_get32(h->caps);

	if (rm_wire_get32(h->magic) != RM_WIRE_MAGIC) {
		snprintf(why, n, "bad magic %#x", rm_wire_get32(h->magic));
		return RM_REFUSE_MAGIC;
	}
	if (vmin > vmax || vmax < RM_WIRE_VERSION_MIN || vmin > RM_WIRE_VERSION) {
		snprintf(why, n, "versions %u-%u, we speak %u-%u", vmin, vmax, RM_WIRE_VERSION_MIN,
			 RM_WIRE_VERSION);
		return RM_REFUSE_VERSION;
	}
	if ((caps & RM_CAP_REQUIRED) != RM_CAP_REQUIRED) {
		snprintf(why, n, "caps %#x lack required %#x", caps, RM_CAP_REQUIRED);
		return RM_REFUSE_CAPS;
	}
	if (auth && !(caps & RM_CAP_AUTH)) {
		snprintf(why, n, "no pre-shared key offered");
		return RM_REFUSE_AUTH;
	}
	if (!nchan || nchan > RM_WIRE_MAX_CHANNELS || chan >= nchan) {
		snprintf(why, n, "channel %u of %u (max %u)", chan, nchan, RM_WIRE_MAX_CHANNELS);
		return RM_REFUSE_CHANNELS;
	}
	if (!write_size_ok(rm_wire_get32(h->max_write))) {
		snprintf(why, n, "max_write %u is not a power of two in [%u, %u]",
			 rm_wire_get32(h->max_write), RM_WIRE_MIN_WRITE, RM_WIRE_MAX_WRITE);
		return RM_REFUSE_PARAMS;
	}
	if (!credits_ok(rm_wire_get32(h->credits), rdma)) {
		snprintf(why, n, "%u control credits (expected %s)", rm_wire_get32(h->credits),
			 rdma ? "1-4096" : "0");
		return RM_REFUSE_PARAMS;
	}
	return 0;
}

uint32_t rm_ctrl_hello_parse(uint16_t type, const void *body, size_t blen, bool rdma, bool auth,
			     struct rm_wire_hello *h, char *why, size_t n)
{
	if (type != RM_WIRE_HELLO) {
		snprintf(why, n, "expected HELLO, got %s (%#x)", rm_wire_type_name(type), type);
		return RM_REFUSE_MAGIC;
	}
	if (blen != sizeof(*h)) {
		snprintf(why, n, "HELLO of %zu bytes, expected %zu", blen, sizeof(*h));
		return RM_REFUSE_MAGIC;
	}
	memcpy(h, body, sizeof(*h));
	return rm_ctrl_hello_check(h, rdma, auth, why, n);
}

uint32_t rm_ctrl_hello_join(const struct rm_wire_hello *h, const struct rm_transport *t,
			    uint64_t session, bool chan_taken, char *why, size_t n)
{
	if (!t)
		return 0;
	if (rm_wire_get64(h->session) != session || rm_wire_get16(h->nchan) != t->nchan ||
	    rm_wire_get32(h->max_write) != t->peer_max_write) {
		snprintf(why, n, "another migration is being accepted");
		return RM_REFUSE_BUSY;
	}
	if (chan_taken) {
		snprintf(why, n, "channel %u connected twice", rm_wire_get16(h->chan));
		return RM_REFUSE_CHANNELS;
	}
	return 0;
}

void rm_ctrl_hello_ack(struct rm_wire_hello_ack *a, const struct rm_wire_hello *h,
		       uint32_t credits, uint32_t ctrl_buf, bool auth)
{
	unsigned vmax = rm_wire_get16(h->version_max);

	*a = (struct rm_wire_hello_ack){
		.version = rm_wire_put16(vmax < RM_WIRE_VERSION ? vmax : RM_WIRE_VERSION),
		.nchan = h->nchan,
		.caps = rm_wire_put32(rm_wire_get32(h->caps) & RM_CAP_KNOWN &
				      (auth ? ~0u : ~(uint32_t)RM_CAP_AUTH)),
		.credits = rm_wire_put32(credits),
		.ctrl_buf = rm_wire_put32(ctrl_buf),
	};
}

int rm_ctrl_hello_reply(const char *backend, unsigned chan, uint16_t type, const void *body,
			size_t blen, const struct rm_wire_hello *h, uint32_t ctrl_buf,
			struct rm_wire_hello_ack *ack)
{
	struct rm_wire_refuse_body rf;
	char bad[96] = "";
	unsigned version;
	uint32_t caps, offered = rm_wire_get32(h->caps);

	if (type == RM_WIRE_REFUSE && blen == sizeof(rf)) {
		memcpy(&rf, body, sizeof(rf));
		rf.text[RM_WIRE_TEXT - 1] = 0;
		if (rm_wire_get32(rf.reason) == RM_REFUSE_AUTH) {
			rm_err("transport %s: the destination refused: %s (it said: %s)", backend,
			       RM_AUTH_HINT, rf.text);
			return RDMAMIG_E_AUTH;
		}
		rm_err("transport %s: the destination refused: %s: %s", backend,
		       rm_wire_refuse_name(rm_wire_get32(rf.reason)), rf.text);
		return RDMAMIG_E_REFUSED;
	}
	if (type != RM_WIRE_HELLO_ACK || blen != sizeof(*ack)) {
		rm_err("transport %s: channel %u: the destination answered HELLO with %s of %zu bytes",
		       backend, chan, rm_wire_type_name(type), blen);
		return RDMAMIG_E_PROTO;
	}
	memcpy(ack, body, sizeof(*ack));
	version = rm_wire_get16(ack->version);
	caps = rm_wire_get32(ack->caps);
	if (version < RM_WIRE_VERSION_MIN || version > RM_WIRE_VERSION)
		snprintf(bad, sizeof(bad), "version %u, we offered %u-%u", version,
			 RM_WIRE_VERSION_MIN, RM_WIRE_VERSION);
	else if (rm_wire_get16(ack->nchan) != rm_wire_get16(h->nchan))
		snprintf(bad, sizeof(bad), "nchan %u, we asked for %u", rm_wire_get16(ack->nchan),
			 rm_wire_get16(h->nchan));
	else if ((caps & ~offered) || (caps & RM_CAP_REQUIRED) != RM_CAP_REQUIRED)
		snprintf(bad, sizeof(bad), "caps %#x, we offered %#x and require %#x", caps, offered,
			 RM_CAP_REQUIRED);
	else if (!credits_ok(rm_wire_get32(ack->credits), ctrl_buf != 0))
		snprintf(bad, sizeof(bad), "credits %u, expected %s", rm_wire_get32(ack->credits),
			 ctrl_buf ? "1-4096" : "0");
	else if (rm_wire_get32(ack->ctrl_buf) != ctrl_buf)
		snprintf(bad, sizeof(bad), "ctrl_buf %u, expected %u", rm_wire_get32(ack->ctrl_buf),
			 ctrl_buf);
	if (bad[0]) {
		rm_err("transport %s: channel %u: bad HELLO_ACK from the destination: %s", backend,
		       chan, bad);
		return RDMAMIG_E_PROTO;
	}
	if ((offered & RM_CAP_AUTH) && !(caps & RM_CAP_AUTH)) {
		/* Handing the guest to a destination that proves nothing would
		 * let any host that answers on this address receive it. */
		rm_err("transport %s: the destination runs without a pre-shared key (--no-auth) and "
		       "this side has one: refusing to send the guest to an unauthenticated peer",
		       backend);
		return RDMAMIG_E_AUTH;
	}
	return 0;
}

/* ---- REFUSE, ABORT, frames ---- */

void rm_ctrl_refuse_body(struct rm_wire_refuse_body *b, uint32_t reason, const char *text)
{
	*b = (struct rm_wire_refuse_body){ .reason = rm_wire_put32(reason) };
	rm_wire_text(b->text, text);
}

void rm_ctrl_abort_body(struct rm_wire_abort_body *b, int reason, const char *text)
{
	/* Negate in unsigned arithmetic: -INT_MIN does not exist as an int. */
	uint32_t wire = reason < 0 ? 0u - (uint32_t)reason : (uint32_t)reason;

	*b = (struct rm_wire_abort_body){ .reason = rm_wire_put32(wire) };
	rm_wire_text(b->text, text);
}

int rm_ctrl_abort_reason(uint32_t wire)
{
	/* Codes are negative ints: only 1..INT_MAX negate to one. */
	if (!wire || wire > INT_MAX)
		return 0;
	return -(int)wire;
}

int rm_ctrl_unframe(const void *buf, size_t len, uint16_t *type, const void **body, size_t *blen)
{
	struct rm_wire_hdr h;

	if (len < sizeof(h))
		return -EPROTO;
	memcpy(&h, buf, sizeof(h));
	if (rm_wire_get32(h.len) > len - sizeof(h) || h.reserved || h.flags || h.credits)
		return -EPROTO;
	*type = rm_wire_get16(h.type);
	*body = (const char *)buf + sizeof(h);
	*blen = rm_wire_get32(h.len);
	return 0;
}
