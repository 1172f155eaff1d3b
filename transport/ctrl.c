/*
 * transport/ctrl.c — the control protocol both backends speak (ctrl.h).
 *
 * Received messages queue here until the engine reads them.  The queue and
 * the message being reassembled are bounded (ctrl.max_msgs, ctrl.max_bytes),
 * and a reassembly buffer grows with the fragments that arrived, never to a
 * total the peer merely claims: a peer can make us hold only what it sent,
 * and only up to the bound.
 */
#include <limits.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transport/priv.h"

#define SLICE_MS 100

struct rm_ctrl_msg {
	struct rm_ctrl_msg *next;
	uint16_t type;
	uint64_t epoch;		/* delivered once every channel reached it */
	size_t len;
	void *data;		/* NULL when len is 0 */
};

int rm_ctrl_init(struct rm_ctrl *q, size_t frag_max)
{
	int err;

	memset(q, 0, sizeof(*q));
	if (!frag_max || frag_max > RM_WIRE_MAX_FRAG)
		return -EINVAL;
	q->frag_max = frag_max;
	q->max_msgs = RM_CTRL_QUEUE_MSGS;
	q->max_bytes = RM_CTRL_QUEUE_BYTES;
	err = pthread_mutex_init(&q->lock, NULL);
	if (err)
		return -err;
	err = pthread_cond_init(&q->cond, NULL);
	if (err) {
		pthread_mutex_destroy(&q->lock);
		return -err;
	}
	err = pthread_cond_init(&q->live_cond, NULL);
	if (err) {
		pthread_cond_destroy(&q->cond);
		pthread_mutex_destroy(&q->lock);
		return -err;
	}
	return 0;
}

static void msg_free(struct rm_ctrl_msg *m)
{
	if (m) {
		free(m->data);
		free(m);
	}
}

void rm_ctrl_destroy(struct rm_ctrl *q)
{
	while (q->head) {
		struct rm_ctrl_msg *m = q->head;

		q->head = m->next;
		msg_free(m);
	}
	msg_free(q->asm_msg);
	q->asm_msg = NULL;
	q->tail = NULL;
	free(q->stage_keys);
	free(q->stage_ready);
	q->stage_keys = NULL;
	q->stage_ready = NULL;
	pthread_cond_destroy(&q->live_cond);
	pthread_cond_destroy(&q->cond);
	pthread_mutex_destroy(&q->lock);
}

/* Under q->lock: wake every waiter. */
static void changed(struct rm_ctrl *q)
{
	pthread_cond_broadcast(&q->cond);
}

/* ---- reassembly ---- */

/* Under q->lock. */
static int frag_begin(struct rm_transport *t, unsigned chan, uint16_t flags,
		      const struct rm_wire_ctrl *b, size_t len, void **dst, const char **why)
{
	struct rm_ctrl *q = &t->ctrl;
	uint16_t type = rm_wire_get16(b->type);
	uint32_t frag = rm_wire_get32(b->frag_len);
	uint64_t total = rm_wire_get64(b->total_len);
	struct rm_ctrl_msg *m;

	if (!q->authed) {
		*why = "CTRL before authentication";
		return RDMAMIG_E_PROTO;
	}
	if (chan != 0) {
		*why = "CTRL off channel 0";
		return RDMAMIG_E_PROTO;
	}
	if (type < RM_WIRE_ENGINE_FIRST || type > RM_WIRE_ENGINE_LAST || b->reserved) {
		*why = "CTRL of a type outside the engine range";
		return RDMAMIG_E_PROTO;
	}
	if (len < sizeof(*b) || frag != len - sizeof(*b) || frag > RM_WIRE_MAX_FRAG ||
	    total > RM_WIRE_MAX_CTRL) {
		*why = "CTRL fragment or total length out of range";
		return RDMAMIG_E_PROTO;
	}
	if (flags & ~(RM_WIRE_F_FIRST | RM_WIRE_F_LAST)) {
		*why = "CTRL with unknown flags";
		return RDMAMIG_E_PROTO;
	}
	if (flags & RM_WIRE_F_FIRST) {
		if (q->asm_msg) {
			*why = "CTRL FIRST inside a message";
			return RDMAMIG_E_PROTO;
		}
		if (q->queued >= q->max_msgs) {
			*why = "more unread control messages than the receiver holds";
			return RDMAMIG_E_PROTO;
		}
		m = calloc(1, sizeof(*m));
		if (!m) {
			*why = "control message buffer";
			return -ENOMEM;
		}
		m->type = type;
		m->len = total;
		m->epoch = rm_wire_get64(b->epoch);
		q->asm_msg = m;
		q->asm_got = 0;
		q->asm_cap = 0;
	}
	m = q->asm_msg;
	if (!m || m->type != type || m->len != total || m->epoch != rm_wire_get64(b->epoch)) {
		*why = "CTRL fragment does not continue its message";
		return RDMAMIG_E_PROTO;
	}
	if (frag > total - q->asm_got) {
		*why = "CTRL fragment runs past the message's total length";
		return RDMAMIG_E_PROTO;
	}
	if (q->asm_got + frag > q->asm_cap) {
		/* Grow with what arrives: double, but never past the total. */
		size_t cap = q->asm_cap * 2 > q->asm_got + frag ? q->asm_cap * 2 : q->asm_got + frag;
		void *p;

		if (cap > total)
			cap = total;
		if (q->queued_bytes - q->asm_cap + cap > q->max_bytes) {
			*why = "more unread control data than the receiver holds";
			return RDMAMIG_E_PROTO;
		}
		p = realloc(m->data, cap);
		if (!p) {
			*why = "control message buffer";
			return -ENOMEM;
		}
		m->data = p;
		q->queued_bytes += cap - q->asm_cap;
		q->asm_cap = cap;
	}
	q->asm_frag = frag;
	q->asm_flags = flags;
	*dst = m->data ? (char *)m->data + q->asm_got : NULL;
	return 0;
}

/* Under q->lock: the fragment's bytes are in place. */
static int frag_end(struct rm_transport *t, const char **why)
{
	struct rm_ctrl *q = &t->ctrl;
	struct rm_ctrl_msg *m = q->asm_msg;

	q->asm_got += q->asm_frag;
	q->asm_frag = 0;
	if (!(q->asm_flags & RM_WIRE_F_LAST))
		return 0;
	if (q->asm_got != m->len) {
		*why = "CTRL LAST before the total length";
		return RDMAMIG_E_PROTO;
	}
	q->asm_msg = NULL;
	q->queued++;
	if (q->tail)
		q->tail->next = m;
	else
		q->head = m;
	q->tail = m;
	changed(q);
	return 0;
}

int rm_ctrl_rx_begin(struct rm_transport *t, unsigned chan, uint16_t flags,
		     const struct rm_wire_ctrl *b, size_t len, void **dst, const char **why)
{
	int err;

	if (chan < t->nchan)
		rm_ctrl_rx_note(t, chan, RM_WIRE_CTRL);
	pthread_mutex_lock(&t->ctrl.lock);
	err = frag_begin(t, chan, flags, b, len, dst, why);
	pthread_mutex_unlock(&t->ctrl.lock);
	return err;
}

int rm_ctrl_rx_end(struct rm_transport *t, const char **why)
{
	int err;

	pthread_mutex_lock(&t->ctrl.lock);
	err = frag_end(t, why);
	pthread_mutex_unlock(&t->ctrl.lock);
	return err;
}

/* ---- the other messages ---- */

static int rx_marker(struct rm_transport *t, unsigned chan, const void *body, size_t len,
		     const char **why)
{
	struct rm_wire_marker mk;
	int err = 0;

	if (t->role != RM_ROLE_DEST || len != sizeof(mk)) {
		*why = "MARKER to a source or of the wrong length";
		return RDMAMIG_E_PROTO;
	}
	memcpy(&mk, body, sizeof(mk));
	pthread_mutex_lock(&t->ctrl.lock);
	if (rm_wire_get32(mk.chan) != chan || mk.reserved ||
	    rm_wire_get64(mk.epoch) <= t->ctrl.epoch[chan]) {
		*why = "MARKER for another channel or not increasing";
		err = RDMAMIG_E_PROTO;
	} else {
		t->ctrl.epoch[chan] = rm_wire_get64(mk.epoch);
		changed(&t->ctrl);
	}
	pthread_mutex_unlock(&t->ctrl.lock);
	return err;
}

static int rx_layout(struct rm_transport *t, unsigned chan, const void *body, size_t len,
		     const char **why)
{
	struct rm_wire_layout l;
	uint32_t n, flags, nkeys;
	int err = 0;

	if (chan != 0 || t->role != RM_ROLE_SOURCE || len < sizeof(l)) {
		*why = "LAYOUT to a destination, off channel 0 or short";
		return RDMAMIG_E_PROTO;
	}
	memcpy(&l, body, sizeof(l));
	n = rm_wire_get32(l.count);
	flags = rm_wire_get32(l.flags);
	/* Per-channel keys only where there is more than one channel. */
	nkeys = flags & RM_WIRE_LAYOUT_CHAN_KEYS ? n * (t->nchan - 1) : 0;
	if (n > RM_WIRE_MAX_REGIONS ||
	    (flags & ~(RM_WIRE_LAYOUT_CHAN_KEYS | RM_WIRE_LAYOUT_STAGED)) ||
	    ((flags & RM_WIRE_LAYOUT_CHAN_KEYS) && t->nchan == 1) || l.reserved ||
	    len != sizeof(l) + n * sizeof(struct rm_wire_region) + nkeys * sizeof(__le32)) {
		*why = "LAYOUT count or length out of range";
		return RDMAMIG_E_PROTO;
	}
	pthread_mutex_lock(&t->ctrl.lock);
	if (t->ctrl.have_layout) {
		*why = "a second LAYOUT";
		err = RDMAMIG_E_PROTO;
	} else {
		memcpy(t->ctrl.peer_regions, (const char *)body + sizeof(l),
		       n * sizeof(struct rm_wire_region));
		err = rm_ctrl_stage_layout(t, flags, rm_wire_get32(l.chunk_shift),
					   t->ctrl.peer_regions, n, why);
	}
	if (!err && !t->ctrl.have_layout) {
		memcpy(t->ctrl.peer_keys,
		       (const char *)body + sizeof(l) + n * sizeof(struct rm_wire_region),
		       nkeys * sizeof(__le32));
		t->ctrl.peer_chan_keys = flags & RM_WIRE_LAYOUT_CHAN_KEYS;
		t->ctrl.peer_nregions = n;
		t->ctrl.have_layout = true;
		changed(&t->ctrl);
	}
	pthread_mutex_unlock(&t->ctrl.lock);
	return err;
}

/* Who the peer is, for logs. */
const char *rm_ctrl_peer_name(const struct rm_transport *t)
{
	return t->role == RM_ROLE_SOURCE ? "the destination" : "the source";
}

static int rx_abort(struct rm_transport *t, const void *body, size_t len, const char **why)
{
	struct rm_wire_abort_body a;
	uint32_t wire;
	int reason;

	if (len != sizeof(a)) {
		*why = "ABORT of the wrong length";
		return RDMAMIG_E_PROTO;
	}
	memcpy(&a, body, sizeof(a));
	a.text[RM_WIRE_TEXT - 1] = 0;
	wire = rm_wire_get32(a.reason);
	reason = rm_ctrl_abort_reason(wire);
	if (reason)
		rm_err("transport %s: %s aborted: %s (%s)", t->ops->name, rm_ctrl_peer_name(t), a.text,
		       rdmamig_strerror(reason));
	else
		rm_err("transport %s: %s aborted: %s (reason %#x, not an error code)", t->ops->name,
		       rm_ctrl_peer_name(t), a.text, wire);
	*why = "peer sent ABORT";
	return RDMAMIG_E_ABORTED;
}

static int rx_refuse(struct rm_transport *t, const void *body, size_t len, const char **why)
{
	struct rm_wire_refuse_body r;
	uint32_t reason;

	if (len != sizeof(r)) {
		*why = "REFUSE of the wrong length";
		return RDMAMIG_E_PROTO;
	}
	memcpy(&r, body, sizeof(r));
	r.text[RM_WIRE_TEXT - 1] = 0;
	reason = rm_wire_get32(r.reason);
	if (reason == RM_REFUSE_AUTH) {
		rm_err("transport %s: %s refused our proof of the pre-shared key: %s", t->ops->name,
		       rm_ctrl_peer_name(t), RM_AUTH_HINT);
		*why = "peer refused authentication";
		return RDMAMIG_E_AUTH;
	}
	rm_err("transport %s: %s refused: %s: %s", t->ops->name, rm_ctrl_peer_name(t),
	       rm_wire_refuse_name(reason), r.text);
	*why = "peer sent REFUSE";
	return RDMAMIG_E_REFUSED;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	uint8_t acc = 0;

	for (size_t i = 0; i < n; i++)
		acc |= p[i];
	return !acc;
}

/*
 * One AUTH step from the peer, checked here on the receive path so that
 * `authed` changes in order with the messages around it: a message that
 * follows a good proof on the wire is taken, one that follows a bad proof
 * or comes before any is refused.
 */
/*
 * AUTH step 5 or 6 on channel chan > 0: the peer proves that this channel
 * is its own, not one that someone who saw the session id connected into
 * it.  Taken only once channel 0's exchange is done (and, on the source,
 * after its own step 5 on the channel), once per channel.
 */
static int rx_join(struct rm_transport *t, unsigned chan, const struct rm_wire_auth *a,
		   const char **why)
{
	struct rm_ctrl *q = &t->ctrl;
	bool src = t->role == RM_ROLE_SOURCE;
	uint32_t bit = 1u << chan;
	uint8_t mac[RM_WIRE_MAC];
	int err = 0;

	pthread_mutex_lock(&q->lock);
	if (rm_wire_get32(a->step) != (src ? RM_AUTH_JOIN_DST : RM_AUTH_JOIN_SRC) || a->reserved ||
	    !q->authed || (q->joined & bit) || (src && !(q->join_sent & bit))) {
		*why = "AUTH step out of order";
		err = RDMAMIG_E_PROTO;
	} else if (!all_zero(a->nonce, sizeof(a->nonce))) {
		*why = "AUTH with a field its step does not carry";
		err = RDMAMIG_E_PROTO;
	} else if (rm_ctrl_join_mac(t, src ? 'D' : 'S', chan, mac)) {
		*why = "computing the expected proof";
		err = -ENOMEM;
	} else if (CRYPTO_memcmp(mac, a->mac, sizeof(mac)) == 0) {
		q->joined |= bit;
	} else {
		*why = "a channel that did not prove it belongs to the authenticated session";
		err = RDMAMIG_E_AUTH;
	}
	OPENSSL_cleanse(mac, sizeof(mac));
	changed(q);
	pthread_mutex_unlock(&q->lock);
	return err;
}

static int rx_auth(struct rm_transport *t, unsigned chan, const void *body, size_t len,
		   const char **why)
{
	struct rm_ctrl *q = &t->ctrl;
	bool src = t->role == RM_ROLE_SOURCE;
	struct rm_wire_auth a;
	uint8_t mac[RM_WIRE_MAC];
	unsigned step, want;
	int err = 0;

	if (len != sizeof(a) || !t->opts.psk_len) {
		*why = "AUTH off channel 0, of the wrong length, or not agreed";
		return RDMAMIG_E_PROTO;
	}
	memcpy(&a, body, sizeof(a));
	if (chan != 0)
		return rx_join(t, chan, &a, why);
	step = rm_wire_get32(a.step);
	pthread_mutex_lock(&q->lock);
	/* Each side takes the peer's steps in order, each only after it sent
	 * the step before: the source 2 then 4, the destination 1 then 3. */
	want = q->auth_got ? q->auth_got + 2 : (src ? RM_AUTH_NONCE_DST : RM_AUTH_NONCE_SRC);
	if (step != want || q->auth_sent + 1 < step || a.reserved || q->authed || q->auth_bad) {
		*why = "AUTH step out of order";
		err = RDMAMIG_E_PROTO;
	} else if (step <= RM_AUTH_NONCE_DST ? !all_zero(a.mac, sizeof(a.mac))
					      : !all_zero(a.nonce, sizeof(a.nonce))) {
		*why = "AUTH with a field its step does not carry";
		err = RDMAMIG_E_PROTO;
	} else if (step == RM_AUTH_NONCE_SRC) {
		memcpy(q->nonce_src, a.nonce, sizeof(a.nonce));
	} else if (step == RM_AUTH_NONCE_DST) {
		memcpy(q->nonce_dst, a.nonce, sizeof(a.nonce));
	} else if (rm_ctrl_auth_mac(t, src ? 'D' : 'S', mac)) {
		*why = "computing the expected proof";
		err = -ENOMEM;
	} else if (CRYPTO_memcmp(mac, a.mac, sizeof(mac)) == 0) {
		q->authed = true;
	} else {
		q->auth_bad = true;
	}
	if (!err)
		q->auth_got = step;
	OPENSSL_cleanse(mac, sizeof(mac));
	changed(q);
	pthread_mutex_unlock(&q->lock);
	return err;
}

int rm_ctrl_rx(struct rm_transport *t, unsigned chan, uint16_t type, uint16_t flags,
	       const void *body, size_t len, const char **why)
{
	struct rm_wire_ctrl b;
	bool authed, joined;
	void *dst;
	int err;

	if (chan >= t->nchan) {
		*why = "message on a channel that does not exist";
		return RDMAMIG_E_PROTO;
	}
	rm_ctrl_rx_note(t, chan, type);
	if (flags && type != RM_WIRE_CTRL) {
		*why = "flags on a message that has none";
		return RDMAMIG_E_PROTO;
	}
	pthread_mutex_lock(&t->ctrl.lock);
	authed = t->ctrl.authed;
	joined = chan == 0 || !t->opts.psk_len || (t->ctrl.joined & (1u << chan));
	pthread_mutex_unlock(&t->ctrl.lock);
	if (!authed && (type == RM_WIRE_MARKER || type == RM_WIRE_CTRL || type == RM_WIRE_LAYOUT ||
			type == RM_WIRE_READY)) {
		*why = "a message before authentication";
		return RDMAMIG_E_PROTO;
	}
	if (!joined && type != RM_WIRE_AUTH && type != RM_WIRE_ABORT && type != RM_WIRE_REFUSE &&
	    type != RM_WIRE_BYE) {
		*why = "a message on a channel before it proved it belongs to the session";
		return RDMAMIG_E_PROTO;
	}
	switch (type) {
	case RM_WIRE_AUTH:
		return rx_auth(t, chan, body, len, why);
	case RM_WIRE_MARKER:
		return rx_marker(t, chan, body, len, why);
	case RM_WIRE_CTRL:
		if (len < sizeof(b)) {
			*why = "CTRL shorter than its body";
			return RDMAMIG_E_PROTO;
		}
		memcpy(&b, body, sizeof(b));
		pthread_mutex_lock(&t->ctrl.lock);
		err = frag_begin(t, chan, flags, &b, len, &dst, why);
		if (!err) {
			if (t->ctrl.asm_frag)
				memcpy(dst, (const char *)body + sizeof(b), t->ctrl.asm_frag);
			err = frag_end(t, why);
		}
		pthread_mutex_unlock(&t->ctrl.lock);
		return err;
	case RM_WIRE_LAYOUT:
		return rx_layout(t, chan, body, len, why);
	case RM_WIRE_READY:
		return rm_ctrl_rx_ready(t, chan, body, len, why);
	case RM_WIRE_ABORT:
		return rx_abort(t, body, len, why);
	case RM_WIRE_REFUSE:
		return rx_refuse(t, body, len, why);
	case RM_WIRE_BYE:
		if (len) {
			*why = "BYE with a body";
			return RDMAMIG_E_PROTO;
		}
		/* Only channel 0's BYE ends the conversation: it follows every
		 * control message, while another channel's BYE can overtake
		 * them and would hide a last REFUSE or RESUMED. */
		if (chan == 0) {
			pthread_mutex_lock(&t->ctrl.lock);
			t->ctrl.peer_bye = true;
			changed(&t->ctrl);
			pthread_mutex_unlock(&t->ctrl.lock);
		}
		return RM_CTRL_END;
	case RM_WIRE_KEEPALIVE:
		/* Its arrival is all it says: the backend noted it (rm_ctrl_heard). */
		if (len) {
			*why = "KEEPALIVE with a body";
			return RDMAMIG_E_PROTO;
		}
		return 0;
	}
	*why = "unexpected message type";
	return RDMAMIG_E_PROTO;
}

bool rm_ctrl_epoch_reached(const struct rm_transport *t, uint64_t epoch)
{
	for (unsigned i = 0; i < t->nchan; i++)
		if (t->ctrl.epoch[i] < epoch)
			return false;
	return true;
}

/* ---- the owner's side ---- */

int rm_ctrl_send(struct rm_transport *t, uint16_t type, const void *buf, size_t len)
{
	uint64_t deadline = RM_NO_DEADLINE;	/* while the peer is alive */
	size_t done = 0, max = t->ctrl.frag_max;
	bool bye;

	pthread_mutex_lock(&t->ctrl.lock);
	bye = t->ctrl.peer_bye;
	pthread_mutex_unlock(&t->ctrl.lock);
	if (bye)
		return -EPIPE;
	do {
		size_t frag = len - done < max ? len - done : max;
		struct rm_wire_ctrl b = {
			.type = rm_wire_put16(type),
			.frag_len = rm_wire_put32((uint32_t)frag),
			.total_len = rm_wire_put64(len),
			.epoch = rm_wire_put64(t->role == RM_ROLE_SOURCE ? t->fence_epoch : 0),
		};
		uint16_t flags = (done == 0 ? RM_WIRE_F_FIRST : 0) |
				 (done + frag == len ? RM_WIRE_F_LAST : 0);
		int err = t->ops->post(t, 0, RM_WIRE_CTRL, flags, &b, sizeof(b),
				       (const char *)buf + done, frag, deadline);

		if (err)
			return err;
		done += frag;
	} while (done < len);
	return 0;
}

/*
 * Wait, under q->lock, until done(t, arg) holds (1), the connection fails,
 * the peer said BYE (-EPIPE) or the deadline passes (0).  A backend with a
 * pump op is driven by it (at least once, even with the deadline passed);
 * otherwise receiver threads wake ctrl.cond.
 */
int rm_ctrl_wait_for(struct rm_transport *t, uint64_t deadline,
		    bool (*done)(struct rm_transport *t, void *arg), void *arg)
{
	struct rm_ctrl *q = &t->ctrl;
	bool pumped = false;
	int ret;

	pthread_mutex_lock(&q->lock);
	for (;;) {
		int left;

		if (done(t, arg)) {
			ret = 1;
			break;
		}
		ret = rm_tr_check(t);
		if (ret)
			break;
		if (q->peer_bye) {
			ret = -EPIPE;
			break;
		}
		left = rm_ms_left(deadline);
		if (t->ops->pump) {
			if (!left && pumped)
				break;
			pthread_mutex_unlock(&q->lock);
			t->ops->pump(t, deadline);	/* its errors are sticky */
			pthread_mutex_lock(&q->lock);
			pumped = true;
		} else {
			struct timespec ts;

			if (!left)
				break;
			ts = rm_abstime_in((uint64_t)(left < SLICE_MS ? left : SLICE_MS) * 1000000ull);
			pthread_cond_timedwait(&q->cond, &q->lock, &ts);
		}
	}
	pthread_mutex_unlock(&q->lock);
	return ret;
}

/* Under q->lock: move the head message to msg if its fence is complete. */
static bool pop_ready(struct rm_transport *t, void *arg)
{
	struct rm_ctrl *q = &t->ctrl;
	struct rm_msg *msg = arg;
	struct rm_ctrl_msg *m = q->head;

	if (!m || !rm_ctrl_epoch_reached(t, m->epoch))
		return false;
	q->head = m->next;
	if (!q->head)
		q->tail = NULL;
	q->queued--;
	q->queued_bytes -= m->len;
	msg->type = m->type;
	msg->len = m->len;
	msg->data = m->data;
	free(m);
	return true;
}

int rm_ctrl_recv(struct rm_transport *t, struct rm_msg *msg, int timeout_ms)
{
	return rm_ctrl_wait_for(t, timeout_ms < 0 ? RM_NO_DEADLINE : rm_deadline(timeout_ms), pop_ready, msg);
}

static bool have_layout(struct rm_transport *t, void *arg)
{
	return t->ctrl.have_layout;
}

int rm_ctrl_layout_match(struct rm_transport *t, char *why, size_t why_len)
{
	struct rm_ctrl *q = &t->ctrl;
	uint64_t seen = 0;

	_Static_assert(RM_WIRE_MAX_REGIONS <= 64, "seen is a 64-bit set of region indices");
	if (q->peer_nregions != t->nregions) {
		snprintf(why, why_len, "peer has %u regions, we have %u", q->peer_nregions,
			 t->nregions);
		return RDMAMIG_E_REFUSED;
	}
	for (unsigned i = 0; i < q->peer_nregions; i++) {
		const struct rm_wire_region *p = &q->peer_regions[i];
		uint32_t id = rm_wire_get32(p->id);
		int idx = rm_tr_region_index(t, id);

		if (idx < 0) {
			snprintf(why, why_len, "peer region %u unknown here", id);
			return RDMAMIG_E_REFUSED;
		}
		if (seen & (1ull << idx)) {
			snprintf(why, why_len, "peer region %u listed twice", id);
			return RDMAMIG_E_PROTO;
		}
		seen |= 1ull << idx;
		if (t->regions[idx].size != rm_wire_get64(p->size)) {
			snprintf(why, why_len, "region %u: %llu bytes here, %llu at peer", id,
				 (unsigned long long)t->regions[idx].size,
				 (unsigned long long)rm_wire_get64(p->size));
			return RDMAMIG_E_REFUSED;
		}
		q->peer[idx] = (struct rm_ctrl_peer_region){
			.addr = rm_wire_get64(p->addr),
			.rkey = rm_wire_get32(p->rkey),
			.pos = i,
		};
		for (unsigned c = 0; c < t->nchan; c++)
			q->peer[idx].chan_rkey[c] =
				c && q->peer_chan_keys ?
					rm_wire_get32(q->peer_keys[i * (t->nchan - 1) + c - 1]) :
					q->peer[idx].rkey;
	}
	return 0;
}

int rm_ctrl_layout(struct rm_transport *t, const struct rm_region *r, unsigned n)
{
	/* The peer may register for a long time; it is alive meanwhile. */
	uint64_t deadline = RM_NO_DEADLINE;
	struct rm_ctrl_layout_msg lay = { .l = { .count = rm_wire_put32(n) } };
	struct rm_wire_refuse_body rf;
	char why[120];
	int err;

	for (unsigned i = 0; i < n; i++)
		lay.r[i] = (struct rm_wire_region){
			.id = rm_wire_put32(r[i].id),
			.size = rm_wire_put64(r[i].size),
		};
	err = t->ops->layout(t, r, n, lay.r);
	if (err)
		return err;
	if (t->role == RM_ROLE_DEST) {
		size_t nkeys = t->ctrl.chan_keys ? (size_t)n * (t->nchan - 1) : 0;

		/* A staged LAYOUT goes before any registration: the keys
		 * follow in READYs (ctrl-stage.c). */
		if (t->ctrl.chunk_shift) {
			lay.l.flags = rm_wire_put32(RM_WIRE_LAYOUT_STAGED);
			lay.l.chunk_shift = rm_wire_put32(t->ctrl.chunk_shift);
			nkeys = 0;
		}
		/* The keys go right after the n regions, not after r[]'s end. */
		if (nkeys) {
			lay.l.flags = rm_wire_put32(RM_WIRE_LAYOUT_CHAN_KEYS);
			memcpy((char *)&lay + sizeof(lay.l) + n * sizeof(lay.r[0]), t->ctrl.keys,
			       nkeys * sizeof(__le32));
		}
		return t->ops->post(t, 0, RM_WIRE_LAYOUT, 0, &lay,
				    sizeof(lay.l) + n * sizeof(lay.r[0]) + nkeys * sizeof(__le32),
				    NULL, 0, deadline);
	}

	err = rm_ctrl_wait_for(t, deadline, have_layout, NULL);
	if (err < 0)
		return err;
	if (!err)
		return -ETIMEDOUT;
	err = rm_ctrl_layout_match(t, why, sizeof(why));
	if (err) {
		rm_err("transport %s: RAM layout mismatch: %s", t->ops->name, why);
		rm_ctrl_refuse_body(&rf, RM_REFUSE_LAYOUT, why);
		t->ops->post(t, 0, RM_WIRE_REFUSE, 0, &rf, sizeof(rf), NULL, 0, rm_deadline(1000));
	}
	return err;
}
