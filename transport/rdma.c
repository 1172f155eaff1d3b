/*
 * transport/rdma.c — the RDMA backend's data path: one-sided RDMA WRITEs from
 * source guest RAM into destination guest RAM, the credit-based control ring
 * that carries ctrl.c's messages, and completion handling.  Connections are in
 * rdma-cm.c.
 *
 * One connection is nchan RC QPs on one device, each with its own CQ; all
 * CQs share one completion channel so a single poll() waits on all of them
 * and on the rdma_cm event channel (a peer's DISCONNECT ends waits at once).
 *
 * RAM path: the destination sends LAYOUT {id, size, addr} at once and
 * registers behind it, chunk by chunk in the source's order, exposing each
 * chunk for remote write and announcing its keys in a READY (rdma-stage.c);
 * or, asked to (upfront, odp), exposes all of it first and sends the keys
 * in the LAYOUT (rdma-mw.c).  Either way through type-2 memory windows, one
 * per QP, where the device has them, else as MRs, and rdma-mw.c's seal op
 * takes that access back.  The source registers its RAM for local access
 * (register.c: all, lazy or odp) and writes on each QP with that QP's key
 * (the chunk's, staged: a write into a chunk waits for its READY).  write()
 * takes one power-of-two piece of at most max_write (cut again where a
 * lazy-registration or staged chunk ends), deals the pieces round-robin
 * over the QPs, and flush() posts each QP's WRs as one chain.  No bounce
 * buffer: the NIC reads source RAM and places into destination RAM.
 *
 * Send queues: at most SQ_DEPTH WRs outstanding per QP, counted exactly.
 * At most INFLIGHT_BYTES of WRITEs are outstanding per QP.  Every SIG_EVERY-th
 * WRITE is signalled, and one at least every INFLIGHT_BYTES / 4; every SEND
 * is.  A completion retires
 * its WR and every unsignalled WR before it on that QP (RC completes in
 * order), which is why wr_id carries the WR's sequence number:
 *
 *   wr_id bits 63..56  kind: WR_WRITE, WR_SEND, WR_RECV
 *              55..48  channel (QP index)
 *              47..32  buffer slot (SEND: tx slot; RECV: rx slot)
 *              31..0   low 32 bits of the QP's send sequence number
 *
 * Control: SEND/RECV on QP 0 into pre-posted receive buffers of CTRL_BUF
 * bytes, with credits: a side sends only into buffers the peer has granted
 * (every header piggybacks grants; a CREDIT message returns them when there
 * is nothing else to send, and the last credit is kept for it so both sides
 * can never starve each other).  Messages longer than one buffer go as
 * fragments.  Received fragments are copied out and the buffer reposted at
 * once, so grants flow whenever the owner calls any op — never a lock-step
 * round trip per message.
 *
 * Fence: a MARKER SEND on every QP after its WRITEs, waited for; RC places
 * a QP's WRITEs before its later SEND, and the destination releases a CTRL
 * of epoch e only after MARKER e arrived on every QP.
 *
 * Data QPs other than 0 only carry MARKERs and KEEPALIVEs: they have RX_DATA
 * small receive buffers and no credits (RNR retry covers a destination that
 * lags).
 *
 * Liveness (ctrl.c): a received message on a QP is hearing from the peer; a
 * SEND is speaking (WRITEs land unseen by the peer's CPU, so a QP carrying
 * only WRITEs gets KEEPALIVEs too).  The liveness thread polls the CQs and
 * the cm events through the pump op when the owner is not in an op, under
 * c->lock, so a peer's DISCONNECT, a failed completion or silence end the
 * connection while the owner naps or runs VMM code.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "transport/rdma.h"

static int rd_fail(struct rd_conn *c, int err, const char *what)
{
	return rm_tr_fail(&c->base, err, what);
}

int rd_post_recv(struct rd_conn *c, unsigned i, unsigned slot)
{
	struct rd_qp *q = &c->q[i];
	struct ibv_sge sge = {
		.addr = (uintptr_t)(q->rx_buf + slot * q->rx_size),
		.length = (uint32_t)q->rx_size,
		.lkey = q->rx_mr->lkey,
	};
	struct ibv_recv_wr wr = {
		.wr_id = mk_wr_id(WR_RECV, i, slot, 0),
		.sg_list = &sge,
		.num_sge = 1,
	}, *bad;
	int ret = ibv_post_recv(q->qp, &wr, &bad);

	if (ret)
		return -ret;	/* verbs returns a positive errno */
	c->base.st.wrs_posted++;
	return 0;
}

/* ---- control sends ---- */

static int flush_chain(struct rd_conn *c, unsigned i);

static int take_slot(struct rd_conn *c)
{
	int s;

	if (!c->tx_free)
		return -1;
	s = __builtin_ctzll(c->tx_free);
	c->tx_free &= ~(1ull << s);
	return s;
}

/*
 * Post one message now if a tx slot, a send-queue entry and (on QP 0) a
 * credit are free: -EAGAIN if not.  A CREDIT or ABORT may use the last
 * credit; any other message leaves it.  raw: msg is a whole wire message
 * (tests).
 */
static int post_msg(struct rd_conn *c, unsigned chan, uint16_t type, uint16_t flags,
		    const void *body, size_t blen, const void *data, size_t dlen, const void *raw)
{
	struct rd_qp *q = &c->q[chan];
	unsigned need = chan == 0 ? (type == RM_WIRE_CREDIT || type == RM_WIRE_ABORT ? 1 : 2) : 0;
	size_t len = raw ? blen : sizeof(struct rm_wire_hdr) + blen + dlen;
	struct ibv_sge sge;
	struct ibv_send_wr wr, *bad;
	char *buf;
	int slot, ret;

	if (len > (chan == 0 ? CTRL_BUF : DATA_BUF))
		return -EMSGSIZE;
	if (c->credits < need || q->posted + q->nchain - q->retired >= SQ_DEPTH || !c->tx_free)
		return -EAGAIN;
	/* Keep the QP's order: WRITEs queued in the chain go first — and
	 * before this WR's sequence number is taken from q->posted. */
	if (q->nchain && (ret = flush_chain(c, chan)))
		return ret;
	slot = take_slot(c);
	if (slot < 0)
		return -EAGAIN;
	buf = c->tx_buf + (size_t)slot * CTRL_BUF;
	if (raw) {
		memcpy(buf, raw, len);
	} else {
		struct rm_wire_hdr h;

		rm_wire_hdr_init(&h, type, flags, blen + dlen, chan == 0 ? c->grant : 0);
		memcpy(buf, &h, sizeof(h));
		if (blen)
			memcpy(buf + sizeof(h), body, blen);
		if (dlen)
			memcpy(buf + sizeof(h) + blen, data, dlen);
	}
	sge = (struct ibv_sge){ .addr = (uintptr_t)buf, .length = (uint32_t)len, .lkey = c->tx_mr->lkey };
	wr = (struct ibv_send_wr){
		.wr_id = mk_wr_id(WR_SEND, chan, (unsigned)slot, q->posted + 1),
		.sg_list = &sge,
		.num_sge = 1,
		.opcode = IBV_WR_SEND,
		.send_flags = IBV_SEND_SIGNALED,
	};
	ret = ibv_post_send(q->qp, &wr, &bad);
	if (ret) {
		c->tx_free |= 1ull << slot;
		return -ret;
	}
	q->posted++;
	q->mark[q->posted % SQ_DEPTH] = q->wbytes;
	q->unsig = 0;
	q->unsig_bytes = 0;
	c->base.st.wrs_posted++;
	rm_ctrl_sent(&c->base, chan);
	rm_ctrl_tx_note(&c->base, chan, raw ? 0 : type);
	if (type == RM_WIRE_LAYOUT && !raw)
		c->layout_posted = true;	/* READYs may follow it now */
	if (chan == 0 && !raw) {
		c->credits -= need ? 1 : 0;
		c->grant = 0;
	} else if (chan == 0) {
		c->credits--;
	}
	return 0;
}

int rd_post_now(struct rd_conn *c, unsigned chan, uint16_t type, const void *body, size_t blen)
{
	return post_msg(c, chan, type, 0, body, blen, NULL, 0, NULL);
}

/* One message, making progress until it fits or the deadline passes; with
 * c->lock held.  RM_NOW: at once or -EAGAIN. */
static int post_wait(struct rd_conn *c, unsigned chan, uint16_t type, uint16_t flags,
		     const void *body, size_t blen, const void *data, size_t dlen, uint64_t deadline)
{
	for (;;) {
		int err = post_msg(c, chan, type, flags, body, blen, data, dlen, NULL);

		if (err != -EAGAIN || deadline == RM_NOW)
			return err;
		err = rd_progress(c, deadline);
		if (err)
			return err;
		if (!rm_ms_left(deadline)) {
			rm_err("transport rdma: no control credit or send slot for %s within %d ms "
			       "(credits %u): is the peer polling?",
			       rm_wire_type_name(type), c->base.opts.timeout_ms, c->credits);
			return -ETIMEDOUT;
		}
	}
}

/* The post op. */
static int rd_post(struct rm_transport *t, unsigned chan, uint16_t type, uint16_t flags,
		   const void *body, size_t blen, const void *data, size_t dlen, uint64_t deadline)
{
	struct rd_conn *c = (struct rd_conn *)t;
	int err;

	if (deadline == RM_NOW) {
		/* The liveness thread: an owner inside an op posts them itself. */
		if (pthread_mutex_trylock(&c->lock))
			return -EAGAIN;
	} else {
		pthread_mutex_lock(&c->lock);
	}
	err = post_wait(c, chan, type, flags, body, blen, data, dlen, deadline);
	pthread_mutex_unlock(&c->lock);
	return err;
}

/* Post an ABORT without waiting: the receive path cannot wait. */
static void send_abort_now(struct rd_conn *c, int reason, const char *text)
{
	struct rm_wire_abort_body a;

	rm_ctrl_abort_body(&a, reason, text);
	post_msg(c, 0, RM_WIRE_ABORT, 0, &a, sizeof(a), NULL, 0, NULL);
}

/* Fail on what the peer did; on a protocol error, tell it why (best effort). */
static int peer_error(struct rd_conn *c, unsigned chan, int err, const char *what)
{
	char buf[160];

	snprintf(buf, sizeof(buf), "channel %u: %s", chan, what);
	if (err == RDMAMIG_E_PROTO)
		send_abort_now(c, RDMAMIG_E_PROTO, what);
	return rd_fail(c, err, buf);
}

/* ---- the receive path ---- */

static int recv_one(struct rd_conn *c, unsigned chan, const char *buf, uint32_t byte_len)
{
	struct rm_wire_hdr h;
	const char *why;
	uint16_t type;
	uint32_t len, credits;
	int err;

	if (byte_len < sizeof(h))
		return peer_error(c, chan, RDMAMIG_E_PROTO, "message shorter than a header");
	memcpy(&h, buf, sizeof(h));
	type = rm_wire_get16(h.type);
	len = rm_wire_get32(h.len);
	credits = rm_wire_get32(h.credits);
	if (len != byte_len - sizeof(h) || h.reserved)
		return peer_error(c, chan, RDMAMIG_E_PROTO, "header length or reserved field wrong");
	if (credits && (chan != 0 || c->credits + credits > c->peer_rx))
		return peer_error(c, chan, RDMAMIG_E_PROTO, "more credits than buffers");
	c->credits += credits;
	if (type == RM_WIRE_CREDIT) {
		struct rm_wire_credit cr;

		rm_ctrl_rx_note(&c->base, chan, type);
		if (len != sizeof(cr) || h.flags)
			return peer_error(c, chan, RDMAMIG_E_PROTO, "CREDIT of the wrong length");
		memcpy(&cr, buf + sizeof(h), sizeof(cr));
		if (cr.reserved[0] || cr.reserved[1])
			return peer_error(c, chan, RDMAMIG_E_PROTO, "CREDIT body not zero");
		return 0;
	}
	err = rm_ctrl_rx(&c->base, chan, type, rm_wire_get16(h.flags), buf + sizeof(h), len, &why);
	if (err == RM_CTRL_END)
		return 0;
	return err ? peer_error(c, chan, err, why) : 0;
}

static const char *kind_name(unsigned kind)
{
	return kind == WR_WRITE ? "WRITE" : kind == WR_SEND ? "SEND" : kind == WR_RECV ? "RECV" :
	       kind == WR_BIND ? "BIND_MW" : "?";
}

static int handle_wc(struct rd_conn *c, const struct ibv_wc *wc)
{
	unsigned kind = wc->wr_id >> 56, chan = (wc->wr_id >> 48) & 0xff;
	unsigned slot = (wc->wr_id >> 32) & 0xffff;
	struct rd_qp *q;
	int err;

	c->base.st.completions++;
	if (chan >= c->base.nchan)
		return rd_fail(c, -EIO, "completion for an unknown channel");
	q = &c->q[chan];
	if (kind == WR_RECV)
		rm_ctrl_heard(&c->base, chan);
	if (wc->status != IBV_WC_SUCCESS) {
		char what[160];

		if (atomic_load(&c->base.error))
			return atomic_load(&c->base.error);	/* flushes after the first error */
		snprintf(what, sizeof(what), "channel %u %s completion: %s (vendor error %#x)", chan,
			 kind_name(kind), ibv_wc_status_str(wc->status), wc->vendor_err);
		return rd_fail(c, RDMAMIG_E_WC, what);
	}
	switch (kind) {
	case WR_SEND:
		if (slot < TX_N)
			c->tx_free |= 1ull << slot;
		/* fall through */
	case WR_WRITE:
	case WR_BIND:
		/* Everything up to this WR's sequence number has completed.  Its
		 * mark is still there: that slot is reused only for WR
		 * seq + SQ_DEPTH, which is posted only after this one retired. */
		q->retired = q->posted - (uint32_t)((uint32_t)q->posted - (uint32_t)wc->wr_id);
		q->wbytes_done = q->mark[q->retired % SQ_DEPTH];
		return 0;
	case WR_RECV:
		if (slot >= q->rx_n)
			return rd_fail(c, -EIO, "receive completion for an unknown slot");
		err = recv_one(c, chan, q->rx_buf + slot * q->rx_size, wc->byte_len);
		if (err)
			return err;
		err = rd_post_recv(c, chan, slot);
		if (err)
			return rd_fail(c, err, "reposting a receive buffer");
		if (chan == 0)
			c->grant++;
		return 0;
	}
	return rd_fail(c, -EIO, "completion with an unknown wr_id");
}

/* Poll every CQ once; the number of completions handled, or an error. */
static int poll_all(struct rd_conn *c)
{
	int total = 0;

	for (unsigned i = 0; i < c->base.nchan; i++) {
		struct ibv_wc wc[32];
		int n = ibv_poll_cq(c->q[i].cq, 32, wc);

		if (n < 0)
			return rd_fail(c, -EIO, "ibv_poll_cq");
		for (int k = 0; k < n; k++) {
			int err = handle_wc(c, &wc[k]);

			if (err)
				return err;
		}
		total += n;
	}
	return total;
}

static int handle_cm_events(struct rd_conn *c)
{
	struct rdma_cm_event *ev;

	while (rdma_get_cm_event(c->ec, &ev) == 0) {
		enum rdma_cm_event_type type = ev->event;
		bool bye;

		rdma_ack_cm_event(ev);
		switch (type) {
		case RDMA_CM_EVENT_DISCONNECTED:
			/* The event can overtake completions already in the
			 * CQs — a last RESUMED or REFUSE, and the BYE after it:
			 * take them first, or an orderly close looks like a
			 * crash and a delivered message is lost. */
			poll_all(c);
			pthread_mutex_lock(&c->base.ctrl.lock);
			bye = c->base.ctrl.peer_bye;
			pthread_mutex_unlock(&c->base.ctrl.lock);
			if (!bye)
				return rd_fail(c, -ECONNRESET, "peer disconnected");
			break;
		case RDMA_CM_EVENT_DEVICE_REMOVAL:
			return rd_fail(c, -ENODEV, "RDMA device removed");
		default:
			rm_dbg("transport rdma: cm event %s", rdma_event_str(type));
			break;
		}
	}
	return 0;
}

/*
 * Make progress: handle completions and cm events; if there were none, wait
 * for one for at most one slice (never past the deadline).  Returns 0 or the
 * connection's error (-ECANCELED on cancel).  Callers loop with their own
 * condition and check the deadline.
 */
int rd_progress(struct rd_conn *c, uint64_t deadline)
{
	struct pollfd p[2];
	int n, left, err;

	if (c->in_progress)
		return 0;
	c->in_progress = true;
	n = poll_all(c);
	if (n == 0) {
		for (unsigned i = 0; i < c->base.nchan; i++)
			ibv_req_notify_cq(c->q[i].cq, 0);
		n = poll_all(c);
	}
	if (n == 0 && (left = rm_ms_left(deadline)) > 0) {
		int ready;

		p[0] = (struct pollfd){ .fd = c->comp->fd, .events = POLLIN };
		p[1] = (struct pollfd){ .fd = c->ec->fd, .events = POLLIN };
		/* The liveness thread may poll the CQs meanwhile; in_progress
		 * keeps it out of this function until we are back. */
		pthread_mutex_unlock(&c->lock);
		ready = poll(p, 2, left < RD_SLICE_MS ? left : RD_SLICE_MS);
		pthread_mutex_lock(&c->lock);
		if (ready > 0 && (p[0].revents & POLLIN)) {
			struct ibv_cq *cq;
			void *ctx;

			while (ibv_get_cq_event(c->comp, &cq, &ctx) == 0)
				ibv_ack_cq_events(cq, 1);
		}
		/* Completions first: a BYE that arrived with the peer's
		 * DISCONNECT must be seen before it. */
		n = poll_all(c);
	}
	if (n >= 0)
		handle_cm_events(c);
	c->in_progress = false;
	/* Keep-alives due: the liveness thread cannot post them while an
	 * owner busy in an op holds the lock. */
	if (!atomic_load(&c->base.error)) {
		uint64_t now = rm_now_ns();

		for (unsigned i = 0; i < c->base.nchan; i++)
			if (rm_ctrl_keepalive_due(&c->base, i, now))
				post_msg(c, i, RM_WIRE_KEEPALIVE, 0, NULL, 0, NULL, 0, NULL);
	}
	/* Return grants on their own when nothing else carries them. */
	if (c->grant >= CREDIT_BATCH && !atomic_load(&c->base.error)) {
		struct rm_wire_credit cr = { 0 };

		post_msg(c, 0, RM_WIRE_CREDIT, 0, &cr, sizeof(cr), NULL, 0, NULL);
	}
	err = rm_tr_check(&c->base);
	return err ? err : (n < 0 ? n : 0);
}

static int rd_pump(struct rm_transport *t, uint64_t deadline)
{
	struct rd_conn *c = (struct rd_conn *)t;
	int err;

	if (deadline == RM_NOW) {
		/* The liveness thread: an owner inside an op makes progress. */
		if (pthread_mutex_trylock(&c->lock))
			return rm_tr_check(t);
	} else {
		pthread_mutex_lock(&c->lock);
	}
	err = rd_progress(c, deadline);
	pthread_mutex_unlock(&c->lock);
	return err;
}

/* ---- layout ---- */

static int rd_layout(struct rm_transport *t, const struct rm_region *r, unsigned n,
		     struct rm_wire_region *wire)
{
	struct rd_conn *c = (struct rd_conn *)t;

	if (t->role == RM_ROLE_SOURCE)
		return rm_reg_open(&c->reg, c->pd, r, n,
				   t->opts.reg == RM_REG_UPFRONT ? RM_REG_ALL : t->opts.reg, 0,
				   t->opts.reg_chunk);
	/* A destination registers behind a staged LAYOUT, unless asked to do
	 * it all first (upfront) or nothing is pinned anyway (odp). */
	if (t->opts.reg == RM_REG_ALL || t->opts.reg == RM_REG_LAZY)
		return rd_stage_start(c, r, n, wire);
	return rd_expose(c, r, n, wire);
}

/* ---- source: write, fence ---- */

static int flush_chain(struct rd_conn *c, unsigned i)
{
	struct rd_qp *q = &c->q[i];
	struct ibv_send_wr *bad;
	int ret;

	if (!q->nchain)
		return 0;
	for (unsigned k = 0; k + 1 < q->nchain; k++)
		q->chain[k].next = &q->chain[k + 1];
	q->chain[q->nchain - 1].next = NULL;
	ret = ibv_post_send(q->qp, q->chain, &bad);
	if (ret) {
		q->nchain = 0;
		return rd_fail(c, -ret, "ibv_post_send of RDMA WRITEs");
	}
	q->posted += q->nchain;
	c->base.st.wrs_posted += q->nchain;
	q->nchain = 0;
	return 0;
}

static int add_write(struct rd_conn *c, unsigned i, void *laddr, uint32_t lkey, uint64_t raddr,
		     uint32_t rkey, uint32_t len, uint64_t deadline)
{
	struct rd_qp *q = &c->q[i];
	struct ibv_send_wr *wr;
	int err;

	if (q->nchain == CHAIN && (err = flush_chain(c, i)))
		return err;
	/* Never overrun the send queue, nor INFLIGHT_BYTES: wait for
	 * completions to retire WRs.  Only bytes a signalled WR covers are
	 * waited for (the rest, under a quarter of the bound, cannot
	 * complete visibly until the next signal). */
	while (q->posted + q->nchain + 1 - q->retired > SQ_DEPTH - SQ_CTRL_RESERVE ||
	       (q->wbytes - q->wbytes_done > q->unsig_bytes &&
		q->wbytes - q->wbytes_done + len > INFLIGHT_BYTES)) {
		err = flush_chain(c, i);
		if (!err)
			err = rd_progress(c, deadline);
		if (err)
			return err;
		if (!rm_ms_left(deadline)) {
			rm_err("transport rdma: channel %u send queue full for %d ms", i,
			       c->base.opts.timeout_ms);
			return -ETIMEDOUT;
		}
	}
	q->sge[q->nchain] = (struct ibv_sge){ .addr = (uintptr_t)laddr, .length = len, .lkey = lkey };
	wr = &q->chain[q->nchain];
	*wr = (struct ibv_send_wr){
		.wr_id = mk_wr_id(WR_WRITE, i, 0, q->posted + q->nchain + 1),
		.sg_list = &q->sge[q->nchain],
		.num_sge = 1,
		.opcode = IBV_WR_RDMA_WRITE,
		.wr.rdma = { .remote_addr = raddr, .rkey = rkey },
	};
	q->wbytes += len;
	q->mark[(q->posted + q->nchain + 1) % SQ_DEPTH] = q->wbytes;
	q->unsig_bytes += len;
	if (++q->unsig >= SIG_EVERY || q->unsig_bytes >= INFLIGHT_BYTES / 4) {
		wr->send_flags = IBV_SEND_SIGNALED;
		q->unsig = 0;
		q->unsig_bytes = 0;
	}
	q->nchain++;
	c->base.st.writes++;
	c->base.st.bytes_written += len;
	return 0;
}

static int rd_write(struct rm_transport *t, unsigned idx, uint64_t off, uint64_t len,
		    uint64_t *took, uint64_t deadline)
{
	struct rd_conn *c = (struct rd_conn *)t;
	const struct rm_ctrl_peer_region *peer = &t->ctrl.peer[idx];
	const uint32_t *rkeys = peer->chan_rkey;
	uint64_t avail, end;
	uint32_t lkey, rkey;
	int err = 0;

	*took = 0;
	if (t->ctrl.stage_shift) {
		/* Staged: never into a chunk before its READY, never across
		 * its end.  Whatever is queued goes to the NIC before waiting. */
		if (!atomic_load_explicit(&t->ctrl.stage_ready[t->ctrl.stage_base[peer->pos] +
								(off >> t->ctrl.stage_shift)],
					  memory_order_acquire)) {
			pthread_mutex_lock(&c->lock);
			for (unsigned i = 0; i < t->nchan && !err; i++)
				err = flush_chain(c, i);
			pthread_mutex_unlock(&c->lock);
			if (err)
				return err;
		}
		err = rm_ctrl_stage_wait(t, idx, off, &end, &rkeys);
		if (err)
			return err;
		if (len > end - off)
			len = end - off;
	}
	pthread_mutex_lock(&c->lock);
	err = rm_reg_keys(c->reg, idx, off, len, &lkey, &rkey, &avail);
	if (!err) {
		unsigned chan = c->next_chan++ % t->nchan;

		/* A lazy or staged chunk may end inside: write up to it, still
		 * a power of two. */
		*took = rm_pow2_floor(avail);
		err = add_write(c, chan, (char *)t->regions[idx].addr + off, lkey, peer->addr + off,
				rkeys[chan], (uint32_t)*took, deadline);
	}
	pthread_mutex_unlock(&c->lock);
	return err;
}

static int rd_flush(struct rm_transport *t, uint64_t deadline)
{
	struct rd_conn *c = (struct rd_conn *)t;
	int err = 0;

	pthread_mutex_lock(&c->lock);
	for (unsigned i = 0; i < t->nchan; i++) {
		int e = flush_chain(c, i);

		if (!err)
			err = e;
	}
	/* Reap what completed so far without waiting. */
	if (!err)
		err = rd_progress(c, 0);
	pthread_mutex_unlock(&c->lock);
	return err;
}

/* With c->lock held.  The completions may take long on a slow link: the
 * wait lasts while the peer is alive (QP errors, DISCONNECT and silence
 * end it). */
static int fence_locked(struct rd_conn *c)
{
	struct rm_transport *t = &c->base;
	uint64_t deadline = RM_NO_DEADLINE;
	int err;

	for (unsigned i = 0; i < t->nchan; i++) {
		struct rm_wire_marker m = { .epoch = rm_wire_put64(t->fence_epoch),
					    .chan = rm_wire_put32(i) };

		err = flush_chain(c, i);
		if (!err)
			err = post_wait(c, i, RM_WIRE_MARKER, 0, &m, sizeof(m), NULL, 0, deadline);
		if (err)
			return err;
	}
	return rd_wait_retired(c, NULL, deadline, NULL);
}

static int rd_fence(struct rm_transport *t)
{
	struct rd_conn *c = (struct rd_conn *)t;
	int err;

	pthread_mutex_lock(&c->lock);
	err = fence_locked(c);
	pthread_mutex_unlock(&c->lock);
	return err;
}

/* ---- the rest of the table ---- */

int rd_wait_retired(struct rd_conn *c, const uint64_t *want, uint64_t deadline,
		    int (*step)(struct rd_conn *c, uint64_t deadline))
{
	for (;;) {
		bool done = true;
		int err;

		for (unsigned i = 0; i < c->base.nchan; i++)
			done &= c->q[i].retired >= (want ? want[i] : c->q[i].posted);
		if (done)
			return 0;
		err = (step ? step : rd_progress)(c, deadline);
		if (err)
			return err;
		if (!rm_ms_left(deadline))
			return -ETIMEDOUT;
	}
}

/* Wait (bounded) until the last SEND posted on QP 0 has completed. */
static void drain_last_send(struct rd_conn *c, uint64_t deadline)
{
	uint64_t want[RM_WIRE_MAX_CHANNELS] = { c->q[0].posted };

	rd_wait_retired(c, want, deadline, NULL);
}

static int rd_abort(struct rm_transport *t, int reason, const char *text)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint64_t posted;

	pthread_mutex_lock(&c->lock);
	posted = c->q[0].posted;
	send_abort_now(c, reason, text);
	/* Give the ABORT a moment to leave before the caller tears down. */
	if (c->q[0].posted != posted)
		drain_last_send(c, rm_deadline(1000));
	pthread_mutex_unlock(&c->lock);
	return 0;
}

static int rd_close(struct rm_transport *t)
{
	struct rd_conn *c = (struct rd_conn *)t;

	if (!c)
		return 0;
	rm_ctrl_live_stop(t);
	/* No READY after the BYE: the registration thread ends first. */
	rd_stage_free(c);
	if (!rm_tr_check(t) && c->q[0].established) {
		uint64_t deadline = rm_deadline(1000);

		/* BYE first, so the peer tells an orderly close from a crash. */
		pthread_mutex_lock(&c->lock);
		if (post_wait(c, 0, RM_WIRE_BYE, 0, NULL, 0, NULL, 0, deadline) == 0)
			drain_last_send(c, deadline);
		pthread_mutex_unlock(&c->lock);
	}
	return rd_teardown(c);
}

static void rd_stats(struct rm_transport *t, struct rm_transport_stats *out)
{
	struct rd_conn *c = (struct rd_conn *)t;

	uint64_t sb, sns;

	*out = t->st;
	pthread_mutex_lock(&c->expose_lock);
	rd_stage_cost(c, &sb, &sns);
	out->reg_bytes = rm_reg_bytes(c->reg) + sb;
	out->reg_ns = rm_reg_ns(c->reg) + sns;
	pthread_mutex_unlock(&c->expose_lock);
	out->ready_wait_ns = atomic_load(&t->ctrl.stage_wait_ns);
}

/*
 * The describe op: what tells a lost SEND from one never posted — the
 * control credits and send slots (a post that waits for them has not gone
 * out), and per QP the WRs posted and those completed (a SEND posted but
 * never completed is stuck at the NIC: RNR retries, a peer QP that does not
 * answer).
 */
static void rd_describe(struct rm_transport *t, char *buf, size_t n)
{
	struct rd_conn *c = (struct rd_conn *)t;
	size_t off;
	int w;

	pthread_mutex_lock(&c->lock);
	w = snprintf(buf, n, "credits %u of %u, grants owed %u, %d of %u send slots free", c->credits,
		     c->peer_rx, c->grant, __builtin_popcountll(c->tx_free), TX_N);
	off = w > 0 ? (size_t)w : 0;
	for (unsigned i = 0; i < t->nchan && off < n; i++) {
		w = snprintf(buf + off, n - off, "; QP %u: %llu WRs posted, %llu completed", i,
			     (unsigned long long)c->q[i].posted, (unsigned long long)c->q[i].retired);
		off += w > 0 ? (size_t)w : 0;
	}
	pthread_mutex_unlock(&c->lock);
}

static int rd_raw_send(struct rm_transport *t, unsigned chan, const void *msg, size_t len)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint64_t deadline = rm_deadline(t->opts.timeout_ms);
	int err;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		err = post_msg(c, chan, 0, 0, NULL, len, NULL, 0, msg);
		if (err != -EAGAIN)
			break;
		err = rd_progress(c, deadline);
		if (err)
			break;
		if (!rm_ms_left(deadline)) {
			err = -ETIMEDOUT;
			break;
		}
	}
	pthread_mutex_unlock(&c->lock);
	return err;
}

int rm_rdma_raw_write(struct rm_transport *t, unsigned idx, uint64_t offset, uint32_t len)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint64_t deadline = rm_deadline(t->opts.timeout_ms), avail;
	struct rd_qp *q = &c->q[0];
	struct ibv_send_wr wr, *bad;
	struct ibv_sge sge;
	uint32_t lkey, rkey;
	int err;

	const uint32_t *rkeys = &t->ctrl.peer[idx].rkey;
	uint64_t end;

	if (idx >= t->nregions || len > t->regions[idx].size)
		return -EINVAL;
	err = rm_reg_keys(c->reg, idx, 0, len, &lkey, &rkey, &avail);
	if (err || avail < len)
		return err ? err : -EINVAL;
	/* Staged: channel 0's key of the chunk that holds offset (chunk 0's
	 * for an offset outside the region), once its READY came. */
	if (t->ctrl.stage_shift) {
		err = rm_ctrl_stage_wait(t, idx, offset < t->regions[idx].size ? offset : 0, &end,
					 &rkeys);
		if (err)
			return err;
	}
	/* Deliberately unchecked against the peer's region: tests only. */
	pthread_mutex_lock(&c->lock);
	err = flush_chain(c, 0);
	if (err)
		goto out;
	sge = (struct ibv_sge){ .addr = (uintptr_t)t->regions[idx].addr, .length = len, .lkey = lkey };
	wr = (struct ibv_send_wr){
		.wr_id = mk_wr_id(WR_WRITE, 0, 0, q->posted + 1),
		.sg_list = &sge,
		.num_sge = 1,
		.opcode = IBV_WR_RDMA_WRITE,
		.send_flags = IBV_SEND_SIGNALED,
		.wr.rdma = { .remote_addr = t->ctrl.peer[idx].addr + offset, .rkey = rkeys[0] },
	};
	err = -ibv_post_send(q->qp, &wr, &bad);
	if (err)
		goto out;
	q->posted++;
	q->wbytes += len;
	q->mark[q->posted % SQ_DEPTH] = q->wbytes;
	/*
	 * Wait for this WRITE's own completion, polling QP 0's CQ here with
	 * the lock held (the liveness thread stays out): the connection may
	 * have failed already — a hostile writer that ignores the ABORT it got
	 * — and the normal path stops at the sticky error without reaping.
	 */
	err = -ETIMEDOUT;
	while (rm_ms_left(deadline)) {
		struct ibv_wc wc;
		int n = ibv_poll_cq(q->cq, 1, &wc);

		if (n < 0) {
			err = -EIO;
			break;
		}
		if (n == 0) {
			usleep(1000);
			continue;
		}
		if (wc.wr_id == wr.wr_id) {
			err = wc.status == IBV_WC_SUCCESS ? handle_wc(c, &wc) : RDMAMIG_E_WC;
			if (err == RDMAMIG_E_WC)
				rd_fail(c, err, "raw WRITE refused by the NIC");
			break;
		}
		/* Keep a healthy connection's accounting. */
		if (!atomic_load(&c->base.error))
			handle_wc(c, &wc);
	}
out:
	pthread_mutex_unlock(&c->lock);
	return err;
}

const struct rm_transport_ops rm_transport_rdma_ops = {
	.name = "rdma",
	.late_keys = true,
	.listen = rd_listen,
	.accept = rd_accept,
	.listener_close = rd_listener_close,
	.connect = rd_connect,
	.layout = rd_layout,
	.write = rd_write,
	.flush = rd_flush,
	.fence = rd_fence,
	.post = rd_post,
	.pump = rd_pump,
	.abort = rd_abort,
	.close = rd_close,
	.stats = rd_stats,
	.describe = rd_describe,
	.seal = rd_seal,
	.raw_send = rd_raw_send,
};
