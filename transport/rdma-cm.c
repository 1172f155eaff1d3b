/*
 * transport/rdma-cm.c — the RDMA backend's connections: rdma_cm listen,
 * accept and connect of nchan RC QPs on one device, the HELLO / HELLO_ACK /
 * REFUSE exchange in the connect, accept and reject private data (bodies and
 * checks from ctrl.c), the per-connection verbs objects, and teardown.
 * rdma.c moves the bytes.
 *
 * Every rdma_cm wait is a poll() on the non-blocking event channel in slices,
 * under the caller's deadline, so a peer that never answers costs at most
 * opts.timeout_ms.
 */
#include <netdb.h>
#include <numa.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transport/rdma.h"

struct rd_listener {
	struct rm_listener base;	/* first */
	struct rdma_event_channel *ec;
	struct rdma_cm_id *id;
	/* The source being accepted, kept across rd_accept() calls: the
	 * caller waits in slices while other sources authenticate. */
	struct rd_conn *c;
	uint64_t session;
	unsigned established;
	uint64_t c_deadline;		/* its own: timeout_ms from its first request */
};

/* ---- setup ---- */

static struct rd_conn *conn_new(const struct rm_transport_opts *o, enum rm_role role, unsigned nchan)
{
	struct rd_conn *c = rm_tr_new(sizeof(*c), &rm_transport_rdma_ops, o, role, nchan, FRAG_MAX);

	if (c) {
		c->tx_free = TX_N == 64 ? ~0ull : (1ull << TX_N) - 1;
		pthread_mutex_init(&c->lock, NULL);
		pthread_mutex_init(&c->expose_lock, NULL);
	}
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
	err = rm_set_nonblock(c->comp->fd);
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
		err = rd_post_recv(c, i, s);
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

int rd_teardown(struct rd_conn *c)
{
	int first = 0;

	/* Windows first: a type-2 window holds its QP (rxe waits for it and
	 * warns when the QP is destroyed under it), and its MR. */
	rd_expose_free(c);
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
	rm_tr_destroy(&c->base);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->expose_lock);
	free(c);
	return first;
}

/* ---- rdma_cm helpers ---- */

/* The next event on ec, waiting until deadline; t's error or cancel, or
 * *cancel (before there is a t), end the wait. */
static int cm_next(struct rdma_event_channel *ec, struct rm_transport *t, const atomic_int *cancel,
		   uint64_t deadline, struct rdma_cm_event **ev)
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
		if (rm_cancelled(cancel))
			return -ECANCELED;
		left = rm_ms_left(deadline);
		if (!left)
			return -ETIMEDOUT;
		poll(&p, 1, left < RD_SLICE_MS ? left : RD_SLICE_MS);
	}
}

/* Wait for one event of `want` on id; anything else is an error (named). */
static int cm_expect(struct rd_conn *c, struct rdma_cm_id *id, enum rdma_cm_event_type want,
		     uint64_t deadline, void *pdata, size_t *plen)
{
	struct rdma_cm_event *ev;
	enum rdma_cm_event_type got;
	struct rdma_cm_id *evid;
	int status, err = cm_next(c->ec, &c->base, NULL, deadline, &ev);

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

static const struct rdma_conn_param conn_param = {
	.responder_resources = 1,
	.initiator_depth = 1,
	.retry_count = 7,
	.rnr_retry_count = 7,
};

/* ---- connect (source) ---- */

/* Resolve, set up and connect channel i; its reply's frame into reply. */
static int connect_chan(struct rd_conn *c, unsigned i, const struct addrinfo *ai,
			const void *hello, size_t hlen, void *reply, size_t *rlen, uint64_t deadline)
{
	struct rd_qp *q = &c->q[i];
	struct rdma_conn_param param = conn_param;
	int left = rm_ms_left(deadline), err;
	size_t cap = *rlen;

	*rlen = 0;
	if (rdma_create_id(c->ec, &q->id, c, RDMA_PS_TCP))
		return -errno;
	if (rdma_resolve_addr(q->id, NULL, ai->ai_addr, left ? left : 1))
		return -errno;
	err = cm_expect(c, q->id, RDMA_CM_EVENT_ADDR_RESOLVED, deadline, NULL, NULL);
	if (err)
		return err;
	left = rm_ms_left(deadline);
	if (rdma_resolve_route(q->id, left ? left : 1))
		return -errno;
	err = cm_expect(c, q->id, RDMA_CM_EVENT_ROUTE_RESOLVED, deadline, NULL, NULL);
	if (err)
		return err;
	if (!c->pd) {
		err = setup_dev(c, q->id->verbs);
		if (err)
			return err;
	} else if (q->id->verbs != c->verbs) {
		return -EXDEV;
	}
	err = setup_qp(c, i);
	if (err)
		return err;
	param.private_data = hello;
	param.private_data_len = (uint8_t)hlen;
	if (rdma_connect(q->id, &param))
		return -errno;
	*rlen = cap;
	return cm_expect(c, q->id, RDMA_CM_EVENT_ESTABLISHED, deadline, reply, rlen);
}

int rd_connect(const struct rm_transport_opts *o, uint64_t session, uint64_t deadline,
	       struct rm_transport **out)
{
	struct rd_conn *c = conn_new(o, RM_ROLE_SOURCE, o->nchan);
	struct addrinfo *ai = NULL;
	uint64_t t0 = rm_now_ns();
	int err;

	if (!c)
		return -ENOMEM;
	c->base.session = session;
	c->ec = rdma_create_event_channel();
	if (!c->ec) {
		err = -errno;
		goto fail;
	}
	err = rm_set_nonblock(c->ec->fd);
	if (err)
		goto fail;
	err = rm_resolve("rdma", o->addr, o->port, false, &ai);
	if (err)
		goto fail;
	for (unsigned i = 0; i < o->nchan; i++) {
		struct {
			struct rm_wire_hdr h;
			struct rm_wire_hello b;
		} hello;
		struct rm_wire_hello_ack ack;
		char reply[256];
		size_t rlen = sizeof(reply), blen;
		const void *body;
		uint16_t type;

		rm_wire_hdr_init(&hello.h, RM_WIRE_HELLO, 0, sizeof(hello.b), 0);
		rm_ctrl_hello(&hello.b, o, i, session, RX_CTRL);
		err = connect_chan(c, i, ai, &hello, sizeof(hello), reply, &rlen, deadline);
		/* A refusal comes as a reject carrying REFUSE; anything else
		 * that failed is the connection's own error. */
		if (!err)
			c->q[i].established = true;
		if (rm_ctrl_unframe(reply, rlen, &type, &body, &blen) ||
		    (err && type != RM_WIRE_REFUSE)) {
			if (!err)
				err = RDMAMIG_E_PROTO;
			rm_err("transport rdma: connecting channel %u to [%s]:%s: %s", i, o->addr,
			       o->port, err == RDMAMIG_E_PROTO ? "no reply to HELLO" : rdmamig_strerror(err));
			goto fail;
		}
		err = rm_ctrl_hello_reply("rdma", i, type, body, blen, &hello.b, CTRL_BUF, &ack);
		if (err)
			goto fail;
		if (i == 0)
			c->credits = c->peer_rx = rm_wire_get32(ack.credits);
	}
	freeaddrinfo(ai);
	/* How long the connect took: the handshake after it has what is left
	 * of the same deadline. */
	rm_info("transport rdma: connected to [%s]:%s with %u QPs on %s in %llu ms", o->addr, o->port,
		o->nchan, ibv_get_device_name(c->verbs->device),
		(unsigned long long)((rm_now_ns() - t0) / 1000000));
	*out = &c->base;
	return 0;

fail:
	if (ai)
		freeaddrinfo(ai);
	return rm_tr_abandon(&c->base, err);
}

/* ---- listen / accept (destination) ---- */

int rd_listen(const struct rm_transport_opts *in, struct rm_listener **out)
{
	struct rd_listener *l = calloc(1, sizeof(*l));
	struct addrinfo *ai;
	int err;

	if (!l)
		return -ENOMEM;
	err = rm_tr_listener_init(&l->base, &rm_transport_rdma_ops, in, &ai);
	if (err)
		goto free_l;
	l->ec = rdma_create_event_channel();
	if (!l->ec) {
		err = -errno;
		goto free_ai;
	}
	err = rm_set_nonblock(l->ec->fd);
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
	l->base.port = ntohs(rdma_get_src_port(l->id));
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

void rd_listener_close(struct rm_listener *lp)
{
	struct rd_listener *l = (struct rd_listener *)lp;

	if (l->c)
		rm_tr_abandon(&l->c->base, -ECANCELED);
	rdma_destroy_id(l->id);
	rdma_destroy_event_channel(l->ec);
	free(l);
}

static void reject(struct rdma_cm_id *id, uint32_t reason, const char *why)
{
	struct {
		struct rm_wire_hdr h;
		struct rm_wire_refuse_body b;
	} rf;

	rm_warn("transport rdma: refusing a peer: %s: %s", rm_wire_refuse_name(reason), why);
	rm_wire_hdr_init(&rf.h, RM_WIRE_REFUSE, 0, sizeof(rf.b), 0);
	rm_ctrl_refuse_body(&rf.b, reason, why);
	rdma_reject(id, &rf, sizeof(rf));
	rdma_destroy_id(id);
}

/* A CONNECT_REQUEST: check the HELLO, set the channel up, accept it. */
static int on_request(struct rd_listener *l, struct rd_conn **cp, uint64_t *session,
		      struct rdma_cm_id *id, const void *pdata, size_t plen)
{
	struct rm_wire_hello h;
	struct {
		struct rm_wire_hdr h;
		struct rm_wire_hello_ack b;
	} ack;
	struct rdma_conn_param param = conn_param;
	struct rd_conn *c = *cp;
	const void *body;
	size_t blen;
	uint16_t type;
	uint32_t reason;
	unsigned chan = 0;
	char why[96];
	int err;

	if (rm_ctrl_unframe(pdata, plen, &type, &body, &blen)) {
		reject(id, RM_REFUSE_MAGIC, "no HELLO in the connect request");
		return 0;
	}
	reason = rm_ctrl_hello_parse(type, body, blen, true, l->base.opts.psk_len != 0, &h, why,
				     sizeof(why));
	if (!reason) {
		chan = rm_wire_get16(h.chan);	/* < nchan <= RM_WIRE_MAX_CHANNELS */
		reason = rm_ctrl_hello_join(&h, c ? &c->base : NULL, *session, c && c->q[chan].id,
					    why, sizeof(why));
	}
	if (!reason && c && id->verbs != c->verbs) {
		snprintf(why, sizeof(why), "channel %u on another device", chan);
		reason = RM_REFUSE_CHANNELS;
	}
	if (reason) {
		if (reason == RM_REFUSE_AUTH)
			atomic_fetch_add(&l->base.refused_auth, 1);
		reject(id, reason, why);
		return 0;
	}
	if (!c) {
		c = conn_new(&l->base.opts, RM_ROLE_DEST, rm_wire_get16(h.nchan));
		if (!c) {
			reject(id, RM_REFUSE_BUSY, "out of memory");
			return -ENOMEM;
		}
		*cp = c;
		l->c_deadline = rm_deadline(l->base.opts.timeout_ms);
		*session = rm_wire_get64(h.session);
		c->base.session = *session;
		c->base.peer_max_write = rm_wire_get32(h.max_write);
		err = setup_dev(c, id->verbs);
		if (err) {
			reject(id, RM_REFUSE_BUSY, "cannot set up the device");
			return err;
		}
	}
	c->q[chan].id = id;
	id->context = c;
	if (chan == 0)
		c->credits = c->peer_rx = rm_wire_get32(h.credits);
	err = setup_qp(c, chan);
	if (err) {
		rm_err("transport rdma: setting up channel %u: %s", chan, rdmamig_strerror(err));
		return err;
	}
	rm_wire_hdr_init(&ack.h, RM_WIRE_HELLO_ACK, 0, sizeof(ack.b), 0);
	rm_ctrl_hello_ack(&ack.b, &h, RX_CTRL, CTRL_BUF, l->base.opts.psk_len != 0);
	param.private_data = &ack;
	param.private_data_len = sizeof(ack);
	if (rdma_accept(id, &param)) {
		err = -errno;
		rm_err("transport rdma: rdma_accept on channel %u: %s", chan, rdmamig_strerror(err));
		return err;
	}
	return 0;
}

/* Give up the source being accepted (it failed, or outlived its deadline). */
static void drop_source(struct rd_listener *l, int err)
{
	rm_info("transport rdma: %u of %u QPs established", l->established, l->c->base.nchan);
	/* ids still on the listener's channel are destroyed by teardown. */
	rm_tr_abandon(&l->c->base, err);
	l->c = NULL;
	l->established = 0;
}

int rd_accept(struct rm_listener *lp, uint64_t deadline, struct rm_transport **out)
{
	struct rd_listener *l = (struct rd_listener *)lp;
	struct rd_conn *c;
	uint64_t took;
	int err = 0;

	while (!l->c || l->established < l->c->base.nchan) {
		struct rdma_cm_event *ev;
		char pdata[64];
		size_t plen = 0;
		struct rdma_cm_id *id;
		enum rdma_cm_event_type type;
		uint64_t until = deadline;

		if (l->c && rm_now_ns() >= l->c_deadline) {
			rm_warn("transport rdma: dropping a source that did not connect all its QPs within %d ms",
				l->base.opts.timeout_ms);
			drop_source(l, -ETIMEDOUT);
		}
		if (l->c && l->c_deadline < until)
			until = l->c_deadline;
		err = cm_next(l->ec, NULL, l->base.opts.cancel, until, &ev);
		if (err == -ETIMEDOUT && rm_now_ns() < deadline)
			continue;	/* the source's own deadline: checked above */
		if (err)
			return err;
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
			err = on_request(l, &l->c, &l->session, id, pdata, plen);
			if (err && l->c)
				drop_source(l, err);
			if (err == -ENOMEM)
				return err;
			break;
		case RDMA_CM_EVENT_ESTABLISHED:
			for (unsigned i = 0; l->c && i < l->c->base.nchan; i++) {
				if (l->c->q[i].id == id && !l->c->q[i].established) {
					l->c->q[i].established = true;
					l->established++;
				}
			}
			break;
		case RDMA_CM_EVENT_REJECTED:
		case RDMA_CM_EVENT_CONNECT_ERROR:
		case RDMA_CM_EVENT_DISCONNECTED:
		case RDMA_CM_EVENT_UNREACHABLE:
			for (unsigned i = 0; l->c && i < l->c->base.nchan; i++) {
				if (l->c->q[i].id == id) {
					rm_warn("transport rdma: a source's channel failed while connecting: %s",
						rdma_event_str(type));
					drop_source(l, -ECONNABORTED);
				}
			}
			break;
		default:
			break;
		}
	}
	c = l->c;
	/* From its first request to its last ESTABLISHED, for the log. */
	took = rm_now_ns() + (uint64_t)l->base.opts.timeout_ms * 1000000ull - l->c_deadline;
	l->c = NULL;
	l->established = 0;
	/* The connection outlives the listener: move its ids to our channel. */
	c->ec = rdma_create_event_channel();
	if (!c->ec) {
		err = -errno;
		goto fail;
	}
	err = rm_set_nonblock(c->ec->fd);
	if (err)
		goto fail;
	for (unsigned i = 0; i < c->base.nchan; i++) {
		if (rdma_migrate_id(c->q[i].id, c->ec)) {
			err = -errno;
			goto fail;
		}
	}
	rm_info("transport rdma: accepted a source with %u QPs on %s, connected in %llu ms",
		c->base.nchan, ibv_get_device_name(c->verbs->device),
		(unsigned long long)(took / 1000000));
	*out = &c->base;
	return 0;

fail:
	return rm_tr_abandon(&c->base, err);
}
