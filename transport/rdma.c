/*
 * transport/rdma.c — the RDMA backend: librdmacm for connections, RC QPs,
 * one-sided RDMA WRITEs from source guest RAM into destination guest RAM.
 *
 * One connection is nchan RC QPs on one device, each with its own CQ; all
 * CQs share one completion channel so a single poll() waits on all of them
 * and on the rdma_cm event channel (a peer's DISCONNECT ends waits at once).
 *
 * RAM path: the destination registers its regions REMOTE_WRITE and sends
 * LAYOUT {id, size, addr, rkey}; the source registers its RAM for local
 * access (register.c: all, lazy or odp).  write() coalesces adjacent
 * ranges, splits them into power-of-two WRITEs of at most max_write, deals
 * them round-robin over the QPs, and posts each QP's WRs as one chain.  No
 * bounce buffer: the NIC reads source RAM and places into destination RAM.
 *
 * Send queues: at most SQ_DEPTH WRs outstanding per QP, counted exactly.
 * Every SIG_EVERY-th WRITE is signalled; every SEND is.  A completion retires
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
 * Data QPs other than 0 only carry MARKERs: they have RX_DATA small receive
 * buffers and no credits (RNR retry covers a destination that lags).
 */
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <netdb.h>
#include <numa.h>
#include <poll.h>
#include <rdma/rdma_cma.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transport/register.h"
#include "transport/priv.h"

#define SLICE_MS 100
#define CTRL_BUF (64u << 10)	/* control buffer, header included */
#define RX_CTRL 32		/* control receive buffers on QP 0 */
#define RX_DATA 64		/* receive buffers on the other QPs */
#define DATA_BUF 256
#define TX_N 32			/* control send slots */
#define SQ_DEPTH 512
#define SIG_EVERY 64
#define CHAIN 32		/* WRs per ibv_post_send */
#define CQ_DEPTH (SQ_DEPTH + RX_DATA + 64)
#define CREDIT_BATCH 8		/* return grants on their own at this count */

enum { WR_WRITE = 1, WR_SEND = 2, WR_RECV = 3 };

static uint64_t mk_wr_id(unsigned kind, unsigned chan, unsigned slot, uint64_t seq)
{
	return (uint64_t)kind << 56 | (uint64_t)chan << 48 | (uint64_t)(slot & 0xffff) << 32 |
	       (seq & 0xffffffffu);
}

struct rd_listener {
	const struct rm_transport_ops *ops;	/* first: see transport.c */
	struct rm_transport_opts opts;
	struct rdma_event_channel *ec;
	struct rdma_cm_id *id;
	int port;
};

struct rd_qp {
	struct rdma_cm_id *id;
	struct ibv_cq *cq;
	struct ibv_qp *qp;
	bool established;
	uint64_t posted, retired;	/* send sequence numbers */
	unsigned unsig;			/* WRITEs since the last signalled WR */
	struct ibv_send_wr chain[CHAIN];
	struct ibv_sge sge[CHAIN];
	unsigned nchain;
	char *rx_buf;
	struct ibv_mr *rx_mr;
	unsigned rx_n;
	size_t rx_size;
	uint64_t epoch;			/* destination: last MARKER seen */
};

struct ctrl_msg {
	struct ctrl_msg *next;
	uint16_t type;
	uint64_t epoch;
	size_t len;
	void *data;
};

struct rd_conn {
	struct rm_transport base;	/* first */
	struct rdma_event_channel *ec;
	struct ibv_context *verbs;
	struct ibv_pd *pd;
	struct ibv_comp_channel *comp;
	struct rd_qp q[RM_WIRE_MAX_CHANNELS];
	char *tx_buf;
	struct ibv_mr *tx_mr;
	uint64_t tx_free;		/* bitmap of free tx slots */
	unsigned credits;		/* peer's QP 0 buffers we may send into */
	unsigned peer_rx;		/* how many it posted: credits never exceed */
	unsigned grant;			/* our reposted buffers not yet reported */
	bool in_progress;		/* guards re-entry from the receive path */
	struct rm_reg *reg;
	uint64_t raddr[RM_WIRE_MAX_REGIONS];	/* by local region index */
	uint32_t rkey[RM_WIRE_MAX_REGIONS];
	bool have_layout;
	unsigned peer_nregions;
	struct rm_wire_region peer_regions[RM_WIRE_MAX_REGIONS];
	struct ctrl_msg *head, *tail, *asm_msg;
	size_t asm_got;
	bool peer_bye;
	unsigned next_chan;
};

static int rd_fail(struct rd_conn *c, int err, const char *what)
{
	return rm_tr_fail(&c->base, err, what);
}

/* ---- setup ---- */

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

static struct rd_conn *conn_new(const struct rm_transport_opts *o, enum rm_role role, unsigned nchan)
{
	struct rd_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->base.ops = &rm_transport_rdma_ops;
	c->base.opts = *o;
	c->base.opts.addr = NULL;
	c->base.opts.port = NULL;
	c->base.role = role;
	c->base.nchan = nchan;
	c->tx_free = TX_N == 64 ? ~0ull : (1ull << TX_N) - 1;
	return c;
}

/* Control buffers go on the NIC's NUMA node when sysfs names one. */
static void place_near_nic(struct rd_conn *c, void *buf, size_t len)
{
	int node = rm_nic_numa_node(ibv_get_device_name(c->verbs->device));

	if (node >= 0 && numa_available() >= 0)
		numa_tonode_memory(buf, len, node);
}

/* PD, completion channel and control send slots, once per connection. */
static int setup_dev(struct rd_conn *c, struct ibv_context *verbs)
{
	int err;

	c->verbs = verbs;
	c->pd = ibv_alloc_pd(verbs);
	if (!c->pd)
		return -(errno ? errno : ENOMEM);
	c->comp = ibv_create_comp_channel(verbs);
	if (!c->comp)
		return -(errno ? errno : ENOMEM);
	err = set_nonblock(c->comp->fd);
	if (err)
		return err;
	c->tx_buf = aligned_alloc(4096, (size_t)TX_N * CTRL_BUF);
	if (!c->tx_buf)
		return -ENOMEM;
	place_near_nic(c, c->tx_buf, (size_t)TX_N * CTRL_BUF);
	c->tx_mr = ibv_reg_mr(c->pd, c->tx_buf, (size_t)TX_N * CTRL_BUF, IBV_ACCESS_LOCAL_WRITE);
	if (!c->tx_mr)
		return -(errno ? errno : ENOMEM);
	return 0;
}

static int post_recv(struct rd_conn *c, unsigned i, unsigned slot)
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

/* CQ, QP and receive buffers for channel i on its cm_id. */
static int setup_qp(struct rd_conn *c, unsigned i)
{
	struct rd_qp *q = &c->q[i];
	struct ibv_qp_init_attr attr;
	int err;

	q->rx_n = i == 0 ? RX_CTRL : RX_DATA;
	q->rx_size = i == 0 ? CTRL_BUF : DATA_BUF;
	q->cq = ibv_create_cq(c->verbs, CQ_DEPTH, NULL, c->comp, 0);
	if (!q->cq)
		return -(errno ? errno : ENOMEM);
	q->rx_buf = aligned_alloc(4096, q->rx_n * q->rx_size);
	if (!q->rx_buf)
		return -ENOMEM;
	place_near_nic(c, q->rx_buf, q->rx_n * q->rx_size);
	q->rx_mr = ibv_reg_mr(c->pd, q->rx_buf, q->rx_n * q->rx_size, IBV_ACCESS_LOCAL_WRITE);
	if (!q->rx_mr)
		return -(errno ? errno : ENOMEM);
	attr = (struct ibv_qp_init_attr){
		.send_cq = q->cq,
		.recv_cq = q->cq,
		.cap = {
			.max_send_wr = SQ_DEPTH,
			.max_recv_wr = q->rx_n,
			.max_send_sge = 1,
			.max_recv_sge = 1,
		},
		.qp_type = IBV_QPT_RC,
		.sq_sig_all = 0,
	};
	if (rdma_create_qp(q->id, c->pd, &attr))
		return -errno;
	q->qp = q->id->qp;
	for (unsigned s = 0; s < q->rx_n; s++) {
		err = post_recv(c, i, s);
		if (err)
			return err;
	}
	if (ibv_req_notify_cq(q->cq, 0))
		return -EIO;
	return 0;
}

/* ---- teardown: best effort, keeps going, reports the first error ---- */

static void keep_first(int *first, int err)
{
	if (err && !*first)
		*first = err;
}

static int teardown(struct rd_conn *c)
{
	int first = 0;

	for (unsigned i = 0; i < RM_WIRE_MAX_CHANNELS; i++) {
		struct rd_qp *q = &c->q[i];

		if (q->id && q->established)
			rdma_disconnect(q->id);
	}
	for (unsigned i = 0; i < RM_WIRE_MAX_CHANNELS; i++) {
		struct rd_qp *q = &c->q[i];

		if (q->qp)
			rdma_destroy_qp(q->id);
		if (q->cq)
			keep_first(&first, -ibv_destroy_cq(q->cq));
		if (q->rx_mr)
			keep_first(&first, -ibv_dereg_mr(q->rx_mr));
		free(q->rx_buf);
		if (q->id && rdma_destroy_id(q->id))
			keep_first(&first, -errno);
	}
	keep_first(&first, rm_reg_close(c->reg));
	if (c->tx_mr)
		keep_first(&first, -ibv_dereg_mr(c->tx_mr));
	free(c->tx_buf);
	if (c->comp)
		keep_first(&first, -ibv_destroy_comp_channel(c->comp));
	if (c->pd)
		keep_first(&first, -ibv_dealloc_pd(c->pd));
	if (c->ec)
		rdma_destroy_event_channel(c->ec);
	while (c->head) {
		struct ctrl_msg *m = c->head;

		c->head = m->next;
		free(m->data);
		free(m);
	}
	if (c->asm_msg) {
		free(c->asm_msg->data);
		free(c->asm_msg);
	}
	free(c);
	return first;
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
 * credit are free: -EAGAIN if not.  A CREDIT may use the last credit; any
 * other message leaves it.  raw: msg is a whole wire message (tests).
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
	if (c->credits < need || q->posted + q->nchain - q->retired >= SQ_DEPTH)
		return -EAGAIN;
	slot = take_slot(c);
	if (slot < 0)
		return -EAGAIN;
	buf = c->tx_buf + (size_t)slot * CTRL_BUF;
	if (raw) {
		memcpy(buf, raw, len);
	} else {
		struct rm_wire_hdr h = {
			.type = htole16(type),
			.flags = htole16(flags),
			.len = htole32((uint32_t)(blen + dlen)),
			.credits = htole32(chan == 0 ? c->grant : 0),
		};

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
	/* Keep the QP's order: WRITEs queued in the chain go first. */
	if (q->nchain && (ret = flush_chain(c, chan))) {
		c->tx_free |= 1ull << slot;
		return ret;
	}
	ret = ibv_post_send(q->qp, &wr, &bad);
	if (ret) {
		c->tx_free |= 1ull << slot;
		return -ret;
	}
	q->posted++;
	q->unsig = 0;
	c->base.st.wrs_posted++;
	if (chan == 0 && !raw) {
		c->credits -= need ? 1 : 0;
		c->grant = 0;
	} else if (chan == 0) {
		c->credits--;
	}
	return 0;
}

static int progress(struct rd_conn *c, uint64_t deadline);

/* Post one message, making progress until it fits or the deadline passes. */
static int send_msg(struct rd_conn *c, unsigned chan, uint16_t type, uint16_t flags, const void *body,
		    size_t blen, const void *data, size_t dlen, uint64_t deadline)
{
	for (;;) {
		int err = post_msg(c, chan, type, flags, body, blen, data, dlen, NULL);

		if (err != -EAGAIN)
			return err;
		err = progress(c, deadline);
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

static void send_abort_now(struct rd_conn *c, int reason, const char *text)
{
	struct rm_wire_abort_body a = { .reason = htole32((uint32_t)(reason < 0 ? -reason : reason)) };

	rm_wire_text(a.text, text);
	post_msg(c, 0, RM_WIRE_ABORT, 0, &a, sizeof(a), NULL, 0, NULL);
}

/* A protocol error in what the peer sent: tell it, fail. */
static int proto(struct rd_conn *c, unsigned chan, const char *what)
{
	char buf[160];

	snprintf(buf, sizeof(buf), "channel %u: %s", chan, what);
	send_abort_now(c, RDMAMIG_E_PROTO, what);
	return rd_fail(c, RDMAMIG_E_PROTO, buf);
}

/* ---- the receive path ---- */

static int recv_ctrl(struct rd_conn *c, unsigned chan, uint16_t flags, const char *p, size_t len)
{
	struct rm_wire_ctrl b;
	struct ctrl_msg *m;
	uint64_t total;
	uint32_t frag;
	uint16_t type;

	if (chan != 0 || len < sizeof(b))
		return proto(c, chan, "CTRL off channel 0 or short");
	memcpy(&b, p, sizeof(b));
	type = le16toh(b.type);
	frag = le32toh(b.frag_len);
	total = le64toh(b.total_len);
	if (type < RM_WIRE_ENGINE_FIRST || type > RM_WIRE_ENGINE_LAST || frag != len - sizeof(b) ||
	    total > RM_WIRE_MAX_CTRL)
		return proto(c, chan, "CTRL type, fragment or total out of range");
	if (flags & RM_WIRE_F_FIRST) {
		if (c->asm_msg)
			return proto(c, chan, "CTRL FIRST inside a message");
		m = calloc(1, sizeof(*m));
		if (!m || (total && !(m->data = malloc(total)))) {
			free(m);
			return rd_fail(c, -ENOMEM, "control message buffer");
		}
		m->type = type;
		m->len = total;
		m->epoch = le64toh(b.epoch);
		c->asm_msg = m;
		c->asm_got = 0;
	}
	m = c->asm_msg;
	if (!m || m->type != type || m->len != total || frag > total - c->asm_got)
		return proto(c, chan, "CTRL fragment does not continue its message");
	if (frag)
		memcpy((char *)m->data + c->asm_got, p + sizeof(b), frag);
	c->asm_got += frag;
	if (!(flags & RM_WIRE_F_LAST))
		return 0;
	if (c->asm_got != total)
		return proto(c, chan, "CTRL LAST before the total length");
	c->asm_msg = NULL;
	if (c->tail)
		c->tail->next = m;
	else
		c->head = m;
	c->tail = m;
	return 0;
}

static int recv_one(struct rd_conn *c, unsigned chan, const char *buf, uint32_t byte_len)
{
	struct rm_wire_hdr h;
	const char *p = buf + sizeof(h);
	uint16_t type;
	uint32_t len, credits;

	if (byte_len < sizeof(h))
		return proto(c, chan, "message shorter than a header");
	memcpy(&h, buf, sizeof(h));
	type = le16toh(h.type);
	len = le32toh(h.len);
	credits = le32toh(h.credits);
	if (len != byte_len - sizeof(h) || h.reserved)
		return proto(c, chan, "header length or reserved field wrong");
	if (credits && (chan != 0 || c->credits + credits > c->peer_rx))
		return proto(c, chan, "more credits than buffers");
	c->credits += credits;

	switch (type) {
	case RM_WIRE_CREDIT:
		if (len != sizeof(struct rm_wire_credit))
			return proto(c, chan, "CREDIT length");
		return 0;
	case RM_WIRE_MARKER: {
		struct rm_wire_marker mk;

		if (c->base.role != RM_ROLE_DEST || len != sizeof(mk))
			return proto(c, chan, "MARKER to a source or of wrong length");
		memcpy(&mk, p, sizeof(mk));
		if (le32toh(mk.chan) != chan || le64toh(mk.epoch) <= c->q[chan].epoch)
			return proto(c, chan, "MARKER for another channel or not increasing");
		c->q[chan].epoch = le64toh(mk.epoch);
		return 0;
	}
	case RM_WIRE_CTRL:
		return recv_ctrl(c, chan, le16toh(h.flags), p, len);
	case RM_WIRE_LAYOUT: {
		struct rm_wire_layout l;
		uint32_t n;

		if (chan != 0 || c->base.role != RM_ROLE_SOURCE || c->have_layout || len < sizeof(l))
			return proto(c, chan, "LAYOUT unexpected");
		memcpy(&l, p, sizeof(l));
		n = le32toh(l.count);
		if (n > RM_WIRE_MAX_REGIONS || len != sizeof(l) + n * sizeof(struct rm_wire_region))
			return proto(c, chan, "LAYOUT count out of range");
		memcpy(c->peer_regions, p + sizeof(l), n * sizeof(struct rm_wire_region));
		c->peer_nregions = n;
		c->have_layout = true;
		return 0;
	}
	case RM_WIRE_ABORT: {
		struct rm_wire_abort_body a;

		if (len != sizeof(a))
			return proto(c, chan, "ABORT length");
		memcpy(&a, p, sizeof(a));
		a.text[RM_WIRE_TEXT - 1] = 0;
		rm_err("transport rdma: peer aborted: %s (%s)", a.text,
		       rdmamig_strerror(-(int)le32toh(a.reason)));
		return rd_fail(c, RDMAMIG_E_ABORTED, "peer sent ABORT");
	}
	case RM_WIRE_REFUSE: {
		struct rm_wire_refuse_body r;

		if (len != sizeof(r))
			return proto(c, chan, "REFUSE length");
		memcpy(&r, p, sizeof(r));
		r.text[RM_WIRE_TEXT - 1] = 0;
		rm_err("transport rdma: peer refused: %s: %s", rm_wire_refuse_name(le32toh(r.reason)),
		       r.text);
		return rd_fail(c, RDMAMIG_E_REFUSED, "peer sent REFUSE");
	}
	case RM_WIRE_BYE:
		if (len)
			return proto(c, chan, "BYE length");
		c->peer_bye = true;
		return 0;
	}
	return proto(c, chan, "unexpected message type");
}

static const char *kind_name(unsigned kind)
{
	return kind == WR_WRITE ? "WRITE" : kind == WR_SEND ? "SEND" : kind == WR_RECV ? "RECV" : "?";
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
		/* Everything up to this WR's sequence number has completed. */
		q->retired = q->posted - (uint32_t)((uint32_t)q->posted - (uint32_t)wc->wr_id);
		return 0;
	case WR_RECV:
		if (slot >= q->rx_n)
			return rd_fail(c, -EIO, "receive completion for an unknown slot");
		err = recv_one(c, chan, q->rx_buf + slot * q->rx_size, wc->byte_len);
		if (err)
			return err;
		err = post_recv(c, chan, slot);
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

		rdma_ack_cm_event(ev);
		switch (type) {
		case RDMA_CM_EVENT_DISCONNECTED:
			/* The event can overtake completions already in the
			 * CQs — a last RESUMED or REFUSE, and the BYE after it:
			 * take them first, or an orderly close looks like a
			 * crash and a delivered message is lost. */
			poll_all(c);
			if (!c->peer_bye)
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
static int progress(struct rd_conn *c, uint64_t deadline)
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
		p[0] = (struct pollfd){ .fd = c->comp->fd, .events = POLLIN };
		p[1] = (struct pollfd){ .fd = c->ec->fd, .events = POLLIN };
		if (poll(p, 2, left < SLICE_MS ? left : SLICE_MS) > 0 && (p[0].revents & POLLIN)) {
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
	/* Return grants on their own when nothing else carries them. */
	if (c->grant >= CREDIT_BATCH && !atomic_load(&c->base.error)) {
		struct rm_wire_credit cr = { 0 };

		post_msg(c, 0, RM_WIRE_CREDIT, 0, &cr, sizeof(cr), NULL, 0, NULL);
	}
	err = rm_tr_check(&c->base);
	return err ? err : (n < 0 ? n : 0);
}

/* ---- rdma_cm helpers ---- */

static int cm_next(struct rdma_event_channel *ec, struct rm_transport *t, uint64_t deadline,
		   struct rdma_cm_event **ev)
{
	for (;;) {
		struct pollfd p = { .fd = ec->fd, .events = POLLIN };
		int left, err;

		if (rdma_get_cm_event(ec, ev) == 0)
			return 0;
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			return -errno;
		if (t && (err = rm_tr_check(t)))
			return err;
		left = rm_ms_left(deadline);
		if (!left)
			return -ETIMEDOUT;
		poll(&p, 1, left < SLICE_MS ? left : SLICE_MS);
	}
}

/* Wait for one event of `want` on id; anything else is an error (named). */
static int cm_expect(struct rd_conn *c, struct rdma_cm_id *id, enum rdma_cm_event_type want,
		     uint64_t deadline, void *pdata, size_t *plen)
{
	struct rdma_cm_event *ev;
	enum rdma_cm_event_type got;
	struct rdma_cm_id *evid;
	int status, err = cm_next(c->ec, &c->base, deadline, &ev);

	if (err)
		return err;
	got = ev->event;
	status = ev->status;
	evid = ev->id;
	if (pdata && ev->param.conn.private_data) {
		size_t n = ev->param.conn.private_data_len < *plen ? ev->param.conn.private_data_len : *plen;

		memcpy(pdata, ev->param.conn.private_data, n);
		*plen = n;
	} else if (plen) {
		*plen = 0;
	}
	rdma_ack_cm_event(ev);
	if (evid != id)
		return -EPROTO;
	if (got == want)
		return 0;
	rm_dbg("transport rdma: waiting for %s, got %s (status %d)", rdma_event_str(want),
	       rdma_event_str(got), status);
	switch (got) {
	case RDMA_CM_EVENT_REJECTED:
		return -ECONNREFUSED;
	case RDMA_CM_EVENT_ADDR_ERROR:
	case RDMA_CM_EVENT_ROUTE_ERROR:
	case RDMA_CM_EVENT_UNREACHABLE:
		return -EHOSTUNREACH;
	default:
		return -ECONNABORTED;
	}
}

static int resolve(const char *addr, const char *port, bool passive, struct addrinfo **res)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = passive ? AI_PASSIVE : 0,
	};
	int err = getaddrinfo(addr && *addr ? addr : NULL, port, &hints, res);

	if (err) {
		rm_err("transport rdma: cannot resolve %s port %s: %s", addr ? addr : "(any)", port,
		       gai_strerror(err));
		return -EHOSTUNREACH;
	}
	return 0;
}

/* ---- connect (source) ---- */

static int rd_connect(const struct rm_transport_opts *in, struct rm_transport **out)
{
	struct rm_transport_opts o;
	uint64_t deadline, session = rm_tr_session_id();
	struct addrinfo *ai = NULL;
	struct rd_conn *c;
	int err;

	err = rm_tr_opts_fill(&o, in);
	if (err)
		return err;
	deadline = rm_deadline(o.timeout_ms);
	c = conn_new(&o, RM_ROLE_SOURCE, o.nchan);
	if (!c)
		return -ENOMEM;
	c->ec = rdma_create_event_channel();
	if (!c->ec) {
		err = -errno;
		goto fail;
	}
	err = set_nonblock(c->ec->fd);
	if (err)
		goto fail;
	err = resolve(in->addr, in->port, false, &ai);
	if (err)
		goto fail;
	for (unsigned i = 0; i < o.nchan; i++) {
		struct rd_qp *q = &c->q[i];
		struct {
			struct rm_wire_hdr h;
			struct rm_wire_hello b;
		} hello = {
			.h = { .type = htole16(RM_WIRE_HELLO), .len = htole32(sizeof(hello.b)) },
			.b = {
				.magic = htole32(RM_WIRE_MAGIC),
				.version_min = htole16(RM_WIRE_VERSION_MIN),
				.version_max = htole16(RM_WIRE_VERSION),
				.caps = htole32(RM_CAP_FENCE_EPOCH | (o.nchan > 1 ? RM_CAP_MULTICHAN : 0)),
				.nchan = htole16((uint16_t)o.nchan),
				.chan = htole16((uint16_t)i),
				.session = htole64(session),
				.max_write = htole32(o.max_write),
				.credits = htole32(RX_CTRL),
			},
		};
		union {
			struct {
				struct rm_wire_hdr h;
				struct rm_wire_hello_ack b;
			} ack;
			struct {
				struct rm_wire_hdr h;
				struct rm_wire_refuse_body b;
			} rf;
			char raw[256];
		} reply;
		size_t rlen = sizeof(reply);
		struct rdma_conn_param param = {
			.private_data = &hello,
			.private_data_len = sizeof(hello),
			.responder_resources = 1,
			.initiator_depth = 1,
			.retry_count = 7,
			.rnr_retry_count = 7,
		};
		int left = rm_ms_left(deadline);

		if (rdma_create_id(c->ec, &q->id, c, RDMA_PS_TCP)) {
			err = -errno;
			goto fail;
		}
		if (rdma_resolve_addr(q->id, NULL, ai->ai_addr, left ? left : 1)) {
			err = -errno;
			goto fail_chan;
		}
		err = cm_expect(c, q->id, RDMA_CM_EVENT_ADDR_RESOLVED, deadline, NULL, NULL);
		if (err)
			goto fail_chan;
		left = rm_ms_left(deadline);
		if (rdma_resolve_route(q->id, left ? left : 1)) {
			err = -errno;
			goto fail_chan;
		}
		err = cm_expect(c, q->id, RDMA_CM_EVENT_ROUTE_RESOLVED, deadline, NULL, NULL);
		if (err)
			goto fail_chan;
		if (!c->pd) {
			err = setup_dev(c, q->id->verbs);
			if (err)
				goto fail_chan;
		} else if (q->id->verbs != c->verbs) {
			err = -EXDEV;
			goto fail_chan;
		}
		err = setup_qp(c, i);
		if (err)
			goto fail_chan;
		if (rdma_connect(q->id, &param)) {
			err = -errno;
			goto fail_chan;
		}
		err = cm_expect(c, q->id, RDMA_CM_EVENT_ESTABLISHED, deadline, &reply, &rlen);
		if (err == -ECONNREFUSED && rlen >= sizeof(reply.rf) &&
		    le16toh(reply.rf.h.type) == RM_WIRE_REFUSE) {
			reply.rf.b.text[RM_WIRE_TEXT - 1] = 0;
			rm_err("transport rdma: destination refused: %s: %s",
			       rm_wire_refuse_name(le32toh(reply.rf.b.reason)), reply.rf.b.text);
			err = RDMAMIG_E_REFUSED;
			goto fail;
		}
		if (err)
			goto fail_chan;
		q->established = true;
		if (rlen < sizeof(reply.ack) || le16toh(reply.ack.h.type) != RM_WIRE_HELLO_ACK ||
		    le16toh(reply.ack.b.version) < RM_WIRE_VERSION_MIN ||
		    le16toh(reply.ack.b.version) > RM_WIRE_VERSION ||
		    le16toh(reply.ack.b.nchan) != o.nchan || le32toh(reply.ack.b.ctrl_buf) != CTRL_BUF ||
		    !le32toh(reply.ack.b.credits) || le32toh(reply.ack.b.credits) > 4096) {
			rm_err("transport rdma: bad handshake reply on channel %u", i);
			err = RDMAMIG_E_PROTO;
			goto fail;
		}
		if (i == 0)
			c->credits = c->peer_rx = le32toh(reply.ack.b.credits);
	}
	freeaddrinfo(ai);
	rm_info("transport rdma: connected to [%s]:%s with %u QPs on %s", in->addr, in->port, o.nchan,
		ibv_get_device_name(c->verbs->device));
	*out = &c->base;
	return 0;

fail_chan:
	rm_err("transport rdma: connecting to [%s]:%s: %s", in->addr, in->port, rdmamig_strerror(err));
fail:
	if (ai)
		freeaddrinfo(ai);
	atomic_store(&c->base.error, err);
	teardown(c);
	return err;
}

/* ---- listen / accept (destination) ---- */

static int rd_listen(const struct rm_transport_opts *in, struct rm_listener **out)
{
	struct rd_listener *l = calloc(1, sizeof(*l));
	struct addrinfo *ai;
	int err;

	if (!l)
		return -ENOMEM;
	l->ops = &rm_transport_rdma_ops;
	err = rm_tr_opts_fill(&l->opts, in);
	if (err)
		goto free_l;
	err = resolve(in->addr, in->port ? in->port : "0", true, &ai);
	if (err)
		goto free_l;
	l->ec = rdma_create_event_channel();
	if (!l->ec) {
		err = -errno;
		goto free_ai;
	}
	err = set_nonblock(l->ec->fd);
	if (err)
		goto destroy_ec;
	if (rdma_create_id(l->ec, &l->id, NULL, RDMA_PS_TCP)) {
		err = -errno;
		goto destroy_ec;
	}
	if (rdma_bind_addr(l->id, ai->ai_addr) || rdma_listen(l->id, 64)) {
		err = -errno;
		rm_err("transport rdma: cannot listen on [%s]:%s: %s", in->addr ? in->addr : "",
		       in->port, rdmamig_strerror(err));
		goto destroy_id;
	}
	l->port = ntohs(rdma_get_src_port(l->id));
	freeaddrinfo(ai);
	*out = (struct rm_listener *)l;
	return 0;

destroy_id:
	rdma_destroy_id(l->id);
destroy_ec:
	rdma_destroy_event_channel(l->ec);
free_ai:
	freeaddrinfo(ai);
free_l:
	free(l);
	return err;
}

static int rd_listener_port(struct rm_listener *lp)
{
	return ((struct rd_listener *)lp)->port;
}

static void rd_listener_close(struct rm_listener *lp)
{
	struct rd_listener *l = (struct rd_listener *)lp;

	rdma_destroy_id(l->id);
	rdma_destroy_event_channel(l->ec);
	free(l);
}

static void reject(struct rdma_cm_id *id, uint32_t reason, const char *why)
{
	struct {
		struct rm_wire_hdr h;
		struct rm_wire_refuse_body b;
	} rf = {
		.h = { .type = htole16(RM_WIRE_REFUSE), .len = htole32(sizeof(rf.b)) },
		.b = { .reason = htole32(reason) },
	};

	rm_warn("transport rdma: refusing a peer: %s: %s", rm_wire_refuse_name(reason), why);
	rm_wire_text(rf.b.text, why);
	rdma_reject(id, &rf, sizeof(rf));
	rdma_destroy_id(id);
}

/* A CONNECT_REQUEST: check the HELLO, set the channel up, accept it. */
static int on_request(struct rd_listener *l, struct rd_conn **cp, uint64_t *session,
		      struct rdma_cm_id *id, const void *pdata, size_t plen)
{
	struct {
		struct rm_wire_hdr h;
		struct rm_wire_hello b;
	} hello;
	struct {
		struct rm_wire_hdr h;
		struct rm_wire_hello_ack b;
	} ack;
	struct rdma_conn_param param;
	struct rd_conn *c = *cp;
	uint32_t reason;
	unsigned chan;
	char why[96];
	int err;

	if (plen < sizeof(hello)) {
		reject(id, RM_REFUSE_MAGIC, "no HELLO in the connect request");
		return 0;
	}
	memcpy(&hello, pdata, sizeof(hello));
	if (le16toh(hello.h.type) != RM_WIRE_HELLO || le32toh(hello.h.len) != sizeof(hello.b)) {
		reject(id, RM_REFUSE_MAGIC, "connect request is not a HELLO");
		return 0;
	}
	reason = rm_tr_check_hello(&hello.b, why, sizeof(why));
	chan = le16toh(hello.b.chan);
	if (!reason && (!le32toh(hello.b.credits) || le32toh(hello.b.credits) > 4096)) {
		snprintf(why, sizeof(why), "%u control credits", le32toh(hello.b.credits));
		reason = RM_REFUSE_CHANNELS;
	}
	if (!reason && c && (le64toh(hello.b.session) != *session || le16toh(hello.b.nchan) != c->base.nchan)) {
		snprintf(why, sizeof(why), "another migration is being accepted");
		reason = RM_REFUSE_BUSY;
	}
	if (!reason && c && (c->q[chan].id || id->verbs != c->verbs)) {
		snprintf(why, sizeof(why), "channel %u connected twice or on another device", chan);
		reason = RM_REFUSE_CHANNELS;
	}
	if (reason) {
		reject(id, reason, why);
		return 0;
	}
	if (!c) {
		c = conn_new(&l->opts, RM_ROLE_DEST, le16toh(hello.b.nchan));
		if (!c) {
			reject(id, RM_REFUSE_BUSY, "out of memory");
			return -ENOMEM;
		}
		*cp = c;
		*session = le64toh(hello.b.session);
		err = setup_dev(c, id->verbs);
		if (err) {
			reject(id, RM_REFUSE_BUSY, "cannot set up the device");
			return err;
		}
	}
	c->q[chan].id = id;
	id->context = c;
	if (chan == 0)
		c->credits = c->peer_rx = le32toh(hello.b.credits);
	err = setup_qp(c, chan);
	if (err) {
		rm_err("transport rdma: setting up channel %u: %s", chan, rdmamig_strerror(err));
		return err;
	}
	ack = (typeof(ack)){
		.h = { .type = htole16(RM_WIRE_HELLO_ACK), .len = htole32(sizeof(ack.b)) },
		.b = {
			.version = htole16(RM_WIRE_VERSION < le16toh(hello.b.version_max)
						   ? RM_WIRE_VERSION : le16toh(hello.b.version_max)),
			.nchan = htole16((uint16_t)c->base.nchan),
			.caps = htole32(le32toh(hello.b.caps) & RM_CAP_KNOWN & ~RM_CAP_ODP),
			.credits = htole32(RX_CTRL),
			.ctrl_buf = htole32(CTRL_BUF),
		},
	};
	param = (struct rdma_conn_param){
		.private_data = &ack,
		.private_data_len = sizeof(ack),
		.responder_resources = 1,
		.initiator_depth = 1,
		.retry_count = 7,
		.rnr_retry_count = 7,
	};
	if (rdma_accept(id, &param)) {
		err = -errno;
		rm_err("transport rdma: rdma_accept on channel %u: %s", chan, rdmamig_strerror(err));
		return err;
	}
	return 0;
}

static int rd_accept(struct rm_listener *lp, struct rm_transport **out)
{
	struct rd_listener *l = (struct rd_listener *)lp;
	uint64_t deadline = rm_deadline(l->opts.timeout_ms), session = 0;
	struct rd_conn *c = NULL;
	unsigned established = 0;
	int err = 0;

	while (!c || established < c->base.nchan) {
		struct rdma_cm_event *ev;
		char pdata[64];
		size_t plen = 0;
		struct rdma_cm_id *id;
		enum rdma_cm_event_type type;

		err = cm_next(l->ec, c ? &c->base : NULL, deadline, &ev);
		if (err)
			goto fail;
		type = ev->event;
		id = ev->id;
		if (type == RDMA_CM_EVENT_CONNECT_REQUEST && ev->param.conn.private_data) {
			plen = ev->param.conn.private_data_len < sizeof(pdata)
				       ? ev->param.conn.private_data_len : sizeof(pdata);
			memcpy(pdata, ev->param.conn.private_data, plen);
		}
		rdma_ack_cm_event(ev);
		switch (type) {
		case RDMA_CM_EVENT_CONNECT_REQUEST:
			err = on_request(l, &c, &session, id, pdata, plen);
			if (err)
				goto fail;
			break;
		case RDMA_CM_EVENT_ESTABLISHED:
			for (unsigned i = 0; c && i < c->base.nchan; i++) {
				if (c->q[i].id == id && !c->q[i].established) {
					c->q[i].established = true;
					established++;
				}
			}
			break;
		case RDMA_CM_EVENT_REJECTED:
		case RDMA_CM_EVENT_CONNECT_ERROR:
		case RDMA_CM_EVENT_DISCONNECTED:
		case RDMA_CM_EVENT_UNREACHABLE:
			rm_err("transport rdma: a source's channel failed while connecting: %s",
			       rdma_event_str(type));
			err = -ECONNABORTED;
			goto fail;
		default:
			break;
		}
	}
	/* The connection outlives the listener: move its ids to our channel. */
	c->ec = rdma_create_event_channel();
	if (!c->ec) {
		err = -errno;
		goto fail;
	}
	err = set_nonblock(c->ec->fd);
	if (err)
		goto fail;
	for (unsigned i = 0; i < c->base.nchan; i++) {
		if (rdma_migrate_id(c->q[i].id, c->ec)) {
			err = -errno;
			goto fail;
		}
	}
	rm_info("transport rdma: accepted a source with %u QPs on %s", c->base.nchan,
		ibv_get_device_name(c->verbs->device));
	*out = &c->base;
	return 0;

fail:
	if (err == -ETIMEDOUT)
		rm_err("transport rdma: no complete source within %d ms (%u QPs established)",
		       l->opts.timeout_ms, established);
	if (c) {
		/* ids still on the listener's channel are destroyed by teardown. */
		atomic_store(&c->base.error, err);
		teardown(c);
	}
	return err;
}

/* ---- layout ---- */

static int rd_layout(struct rm_transport *t, const struct rm_region *r, unsigned n)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint64_t deadline = rm_deadline(t->opts.timeout_ms);
	char why[120];
	int err;

	if (t->role == RM_ROLE_DEST) {
		struct {
			struct rm_wire_layout l;
			struct rm_wire_region r[RM_WIRE_MAX_REGIONS];
		} lay = { .l = { .count = htole32(n), .page_size = htole32(4096) } };
		enum rm_reg_strategy s = t->opts.reg == RM_REG_ODP ? RM_REG_ODP : RM_REG_ALL;

		/* Remote write only: no remote read of destination RAM. */
		err = rm_reg_open(&c->reg, c->pd, r, n, s,
				  IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE, 0);
		if (err)
			return err;
		for (unsigned i = 0; i < n; i++) {
			uint32_t lkey, rkey;
			uint64_t avail;

			rm_reg_keys(c->reg, i, 0, r[i].size, &lkey, &rkey, &avail);
			lay.r[i] = (struct rm_wire_region){
				.id = htole32(r[i].id),
				.rkey = htole32(rkey),
				.size = htole64(r[i].size),
				.addr = htole64((uintptr_t)r[i].addr),
			};
		}
		rm_info("transport rdma: registered %u regions for remote write in %llu ms", n,
			(unsigned long long)(rm_reg_ns(c->reg) / 1000000));
		return send_msg(c, 0, RM_WIRE_LAYOUT, 0, &lay, sizeof(lay.l) + n * sizeof(lay.r[0]),
				NULL, 0, deadline);
	}

	err = rm_reg_open(&c->reg, c->pd, r, n, t->opts.reg, 0, t->opts.reg_chunk);
	if (err)
		return err;
	while (!c->have_layout) {
		err = progress(c, deadline);
		if (err)
			return err;
		if (!rm_ms_left(deadline))
			return -ETIMEDOUT;
	}
	err = rm_tr_match_layout(t, c->peer_regions, c->peer_nregions, why, sizeof(why));
	if (err) {
		struct rm_wire_refuse_body rf = { .reason = htole32(RM_REFUSE_LAYOUT) };

		rm_err("transport rdma: RAM layout mismatch: %s", why);
		rm_wire_text(rf.text, why);
		send_msg(c, 0, RM_WIRE_REFUSE, 0, &rf, sizeof(rf), NULL, 0, rm_deadline(1000));
		return err;
	}
	for (unsigned i = 0; i < c->peer_nregions; i++) {
		int idx = rm_tr_region_index(t, le32toh(c->peer_regions[i].id));

		c->raddr[idx] = le64toh(c->peer_regions[i].addr);
		c->rkey[idx] = le32toh(c->peer_regions[i].rkey);
	}
	return 0;
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
	/* Never overrun the send queue: wait for completions to retire WRs. */
	while (q->posted + q->nchain + 1 - q->retired > SQ_DEPTH) {
		err = flush_chain(c, i);
		if (!err)
			err = progress(c, deadline);
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
	if (++q->unsig >= SIG_EVERY) {
		wr->send_flags = IBV_SEND_SIGNALED;
		q->unsig = 0;
	}
	q->nchain++;
	c->base.st.writes++;
	c->base.st.bytes_written += len;
	return 0;
}

static int rd_write(struct rm_transport *t, const struct rm_range *r, size_t n)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint64_t deadline = rm_deadline(t->opts.timeout_ms);
	int err = 0;

	for (size_t i = 0; i < n && !err;) {
		int idx = rm_tr_region_index(t, r[i].region);
		const struct rm_region *reg = &t->regions[idx];
		uint64_t off = r[i].offset, len = r[i].length;

		for (i++; i < n && r[i].region == r[i - 1].region && r[i].offset == off + len; i++)
			len += r[i].length;
		while (len && !err) {
			uint64_t avail, piece;
			uint32_t lkey, rkey;

			err = rm_reg_keys(c->reg, (unsigned)idx, off,
					  len < t->opts.max_write ? len : t->opts.max_write, &lkey,
					  &rkey, &avail);
			if (err)
				break;
			piece = rm_pow2_floor(avail);
			err = add_write(c, c->next_chan++ % t->nchan, (char *)reg->addr + off, lkey,
					c->raddr[idx] + off, c->rkey[idx], (uint32_t)piece, deadline);
			off += piece;
			len -= piece;
		}
	}
	for (unsigned i = 0; i < t->nchan; i++) {
		int e = flush_chain(c, i);

		if (!err)
			err = e;
	}
	/* Reap what completed so far without waiting. */
	if (!err)
		err = progress(c, 0);
	return err;
}

static int rd_fence(struct rm_transport *t)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint64_t deadline = rm_deadline(t->opts.timeout_ms);
	int err;

	for (unsigned i = 0; i < t->nchan; i++) {
		struct rm_wire_marker m = { .epoch = htole64(t->fence_epoch), .chan = htole32(i) };

		err = flush_chain(c, i);
		if (!err)
			err = send_msg(c, i, RM_WIRE_MARKER, 0, &m, sizeof(m), NULL, 0, deadline);
		if (err)
			return err;
	}
	for (;;) {
		bool done = true;

		for (unsigned i = 0; i < t->nchan; i++)
			done &= c->q[i].retired == c->q[i].posted;
		if (done)
			return 0;
		err = progress(c, deadline);
		if (err)
			return err;
		if (!rm_ms_left(deadline)) {
			rm_err("transport rdma: fence not complete within %d ms", t->opts.timeout_ms);
			return -ETIMEDOUT;
		}
	}
}

/* ---- control ---- */

#define FRAG_MAX (CTRL_BUF - sizeof(struct rm_wire_hdr) - sizeof(struct rm_wire_ctrl))

static int rd_send(struct rm_transport *t, uint16_t type, const void *buf, size_t len)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint64_t deadline = rm_deadline(t->opts.timeout_ms);
	size_t done = 0;

	if (c->peer_bye)
		return -EPIPE;
	do {
		size_t frag = len - done < FRAG_MAX ? len - done : FRAG_MAX;
		struct rm_wire_ctrl b = {
			.type = htole16(type),
			.frag_len = htole32((uint32_t)frag),
			.total_len = htole64(len),
			.epoch = htole64(t->role == RM_ROLE_SOURCE ? t->fence_epoch : 0),
		};
		uint16_t flags = (done == 0 ? RM_WIRE_F_FIRST : 0) |
				 (done + frag == len ? RM_WIRE_F_LAST : 0);
		int err = send_msg(c, 0, RM_WIRE_CTRL, flags, &b, sizeof(b), (const char *)buf + done,
				   frag, deadline);

		if (err)
			return err;
		done += frag;
	} while (done < len);
	return 0;
}

static bool head_ready(struct rd_conn *c)
{
	if (!c->head)
		return false;
	for (unsigned i = 0; i < c->base.nchan; i++)
		if (c->q[i].epoch < c->head->epoch)
			return false;
	return true;
}

static int rd_recv(struct rm_transport *t, struct rm_msg *msg, int timeout_ms)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint64_t deadline = rm_deadline(timeout_ms);

	for (;;) {
		int err;

		if (head_ready(c)) {
			struct ctrl_msg *m = c->head;

			c->head = m->next;
			if (!c->head)
				c->tail = NULL;
			msg->type = m->type;
			msg->len = m->len;
			msg->data = m->data;
			free(m);
			return 1;
		}
		if (c->peer_bye)
			return -EPIPE;
		err = progress(c, deadline);
		/* What arrived before a failure is still delivered. */
		if (err && !head_ready(c))
			return err;
		if (!head_ready(c) && !c->peer_bye && !rm_ms_left(deadline))
			return 0;
	}
}

static int rd_abort(struct rm_transport *t, int reason, const char *text)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint64_t deadline = rm_deadline(1000);
	uint64_t want = c->q[0].posted + 1;

	send_abort_now(c, reason, text);
	/* Give the ABORT a moment to leave before the caller tears down. */
	while (c->q[0].posted == want && c->q[0].retired < want && rm_ms_left(deadline))
		if (progress(c, deadline))
			break;
	return 0;
}

static int rd_close(struct rm_transport *t)
{
	struct rd_conn *c = (struct rd_conn *)t;

	if (!c)
		return 0;
	if (!atomic_load(&c->base.error) && !atomic_load(&c->base.cancel) && c->q[0].established) {
		uint64_t deadline = rm_deadline(1000);

		/* BYE first, so the peer tells an orderly close from a crash. */
		if (send_msg(c, 0, RM_WIRE_BYE, 0, NULL, 0, NULL, 0, deadline) == 0) {
			uint64_t want = c->q[0].posted;

			while (c->q[0].retired < want && rm_ms_left(deadline))
				if (progress(c, deadline))
					break;
		}
	}
	return teardown(c);
}

static void rd_stats(struct rm_transport *t, struct rm_transport_stats *out)
{
	*out = t->st;
}

int rm_rdma_raw_send(struct rm_transport *t, unsigned chan, const void *msg, size_t len)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint64_t deadline = rm_deadline(t->opts.timeout_ms);

	for (;;) {
		int err = post_msg(c, chan, 0, 0, NULL, len, NULL, 0, msg);

		if (err != -EAGAIN)
			return err;
		err = progress(c, deadline);
		if (err)
			return err;
		if (!rm_ms_left(deadline))
			return -ETIMEDOUT;
	}
}

int rm_rdma_raw_write(struct rm_transport *t, unsigned idx, uint64_t offset, uint32_t len)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint64_t deadline = rm_deadline(t->opts.timeout_ms), avail;
	uint32_t lkey, rkey;
	int err;

	if (idx >= t->nregions || len > t->regions[idx].size)
		return -EINVAL;
	err = rm_reg_keys(c->reg, idx, 0, len, &lkey, &rkey, &avail);
	if (err || avail < len)
		return err ? err : -EINVAL;
	/* Deliberately unchecked against the peer's region: tests only. */
	err = add_write(c, 0, t->regions[idx].addr, lkey, c->raddr[idx] + offset, c->rkey[idx], len,
			deadline);
	if (!err)
		err = rd_fence(t);
	return err;
}

const struct rm_transport_ops rm_transport_rdma_ops = {
	.name = "rdma",
	.listen = rd_listen,
	.accept = rd_accept,
	.listener_port = rd_listener_port,
	.listener_close = rd_listener_close,
	.connect = rd_connect,
	.layout = rd_layout,
	.write = rd_write,
	.fence = rd_fence,
	.send = rd_send,
	.recv = rd_recv,
	.abort = rd_abort,
	.close = rd_close,
	.stats = rd_stats,
};
