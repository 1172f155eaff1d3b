/*
 * transport/tcp.c — the TCP backend's data path: the same ops as RDMA over
 * `nchan` TCP connections, for hosts without RDMA and as every benchmark's
 * baseline.  Connections and the handshake are in tcp-conn.c; the control
 * protocol is ctrl.c's, fed from here.
 *
 * Frames are wire.h messages.  The source sends WRITE frames with writev
 * straight from guest RAM (header iovecs + a RAM iovec: no staging copy) and
 * spreads them round-robin over the channels.  With opts.tls every byte goes
 * through tcp-tls.c instead: kernel TLS keeps the same writev (the kernel
 * encrypts), userspace TLS encrypts in OpenSSL.  Each side runs one receiver
 * thread per channel; on the destination it reads WRITE payloads straight into
 * guest RAM after checking region, offset and length against the layout.
 * Control messages travel on channel 0, MARKERs on every channel; ctrl.c
 * holds a CTRL of epoch e until every channel has shown MARKER e.
 *
 * All sockets are non-blocking; every wait is a poll() in slices of at most
 * 100 ms that also checks cancel and the sticky error.  Liveness is ctrl.c's:
 * every byte read counts as heard from the peer, every byte written as sent,
 * and its thread puts a KEEPALIVE between frames on a quiet channel.  So a
 * wait for the peer (a full socket, the other channels' MARKERs) lasts while
 * the peer is alive, and a peer silent for timeout_ms fails the connection
 * even between frames.  A stall inside a frame longer than timeout_ms fails
 * it too.
 */
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "transport/tcp.h"

/* ---- socket I/O ---- */

/*
 * Wait for fd to become ready, in slices, until the deadline.  c may be NULL
 * (handshake).  0 when ready, -ETIMEDOUT, -ECANCELED, the sticky error, or
 * -ECONNRESET on POLLERR/POLLHUP without data.
 */
int tcp_wait_fd(struct tcp_conn *c, const atomic_int *cancel, int fd, short events,
		uint64_t deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		int left = rm_ms_left(deadline), n, err;

		if (rm_cancelled(cancel))
			return -ECANCELED;
		if (c) {
			err = rm_tr_check(&c->base);
			if (err)
				return err;
			if (atomic_load(&c->stopping))
				return -ECANCELED;
		}
		if (!left)
			return -ETIMEDOUT;
		n = poll(&p, 1, left < TCP_SLICE_MS ? left : TCP_SLICE_MS);
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n > 0) {
			if (p.revents & events)
				return 0;
			if (p.revents & (POLLERR | POLLHUP | POLLNVAL))
				return -ECONNRESET;
		}
	}
}

/* Move an iovec array past n sent bytes; returns how many iovecs are done. */
static int iov_advance(struct iovec *iov, int cnt, size_t n)
{
	int done = 0;

	while (done < cnt && n >= iov[done].iov_len)
		n -= iov[done++].iov_len;
	if (done < cnt) {
		iov[done].iov_base = (char *)iov[done].iov_base + n;
		iov[done].iov_len -= n;
	}
	return done;
}

/* Write a whole iovec array (modified in place) before the deadline, through
 * tls (NULL: none). */
int tcp_send_iov(struct tcp_conn *c, const atomic_int *cancel, int fd, struct tcp_tls *tls,
		 struct iovec *iov, int cnt, uint64_t deadline)
{
	while (cnt > 0) {
		short ev = POLLOUT;
		ssize_t n = tcp_io_send(tls, fd, iov, cnt > IOV_MAX ? IOV_MAX : cnt, &ev);
		int done, err;

		if (n == -EAGAIN) {
			err = tcp_wait_fd(c, cancel, fd, ev, deadline);
			if (err)
				return err;
			continue;
		}
		if (n < 0)
			return (int)n;
		done = iov_advance(iov, cnt, (size_t)n);
		iov += done;
		cnt -= done;
	}
	return 0;
}

/*
 * Read exactly len bytes.  idle_ok: before the first byte, wait without a
 * deadline (a frame boundary: the peer may legitimately be quiet); once a
 * frame has started, a stall beyond timeout_ms fails.
 */
int tcp_recv_all(struct tcp_conn *c, const atomic_int *cancel, int fd, struct tcp_tls *tls,
		 int chan, void *buf, size_t len, int timeout_ms, bool idle_ok)
{
	uint64_t deadline = rm_deadline(timeout_ms);
	size_t got = 0;

	while (got < len) {
		short ev = POLLIN;
		ssize_t n = tcp_io_recv(tls, fd, (char *)buf + got, len - got, &ev);
		int err;

		if (n > 0) {
			got += (size_t)n;
			deadline = rm_deadline(timeout_ms);
			if (c && chan >= 0)
				rm_ctrl_heard(&c->base, (unsigned)chan);
			continue;
		}
		if (n == 0)
			return -ECONNRESET;
		if (n != -EAGAIN)
			return (int)n;
		/* Between frames the liveness thread watches for silence. */
		if (idle_ok && got == 0)
			deadline = RM_NO_DEADLINE;
		err = tcp_wait_fd(c, cancel, fd, ev, deadline);
		if (err)
			return err;
	}
	return 0;
}

/* The post op: one frame (header + body + optional payload) on a channel. */
static int tcp_post(struct rm_transport *t, unsigned chan, uint16_t type, uint16_t flags,
		    const void *body, size_t blen, const void *data, size_t dlen, uint64_t deadline)
{
	struct tcp_conn *c = (struct tcp_conn *)t;
	struct tcp_chan *ch = &c->ch[chan];
	struct rm_wire_hdr h;
	struct iovec iov[3] = {
		{ .iov_base = &h, .iov_len = sizeof(h) },
		{ .iov_base = (void *)body, .iov_len = blen },
		{ .iov_base = (void *)data, .iov_len = dlen },
	};
	int err;

	rm_wire_hdr_init(&h, type, flags, blen + dlen, 0);
	if (deadline == RM_NOW) {
		/* Only between frames, and only into room the socket has now. */
		struct pollfd p = { .fd = ch->fd, .events = POLLOUT };

		if (pthread_mutex_trylock(&ch->tx_lock))
			return -EAGAIN;
		if (atomic_load(&ch->tx_busy) || poll(&p, 1, 0) != 1 || !(p.revents & POLLOUT)) {
			pthread_mutex_unlock(&ch->tx_lock);
			return -EAGAIN;
		}
		/* POLLOUT means far more room than a small frame needs; a short
		 * write all the same is finished, bounded like a frame. */
		deadline = rm_deadline(t->opts.timeout_ms);
	} else {
		pthread_mutex_lock(&ch->tx_lock);
	}
	err = tcp_send_iov(c, NULL, ch->fd, ch->tls, iov, dlen ? 3 : 2, deadline);
	pthread_mutex_unlock(&ch->tx_lock);
	if (!err) {
		rm_ctrl_sent(t, chan);
		rm_ctrl_tx_note(t, chan, type);
	}
	return err;
}

/* ---- receiver threads ---- */

static int rx_fail(struct tcp_conn *c, unsigned chan, int err, const char *what)
{
	char buf[160];

	snprintf(buf, sizeof(buf), "channel %u: %s", chan, what);
	return rm_tr_fail(&c->base, err, buf);
}

/* Fail on what the peer did; on a protocol error, tell it why (best effort). */
static int rx_error(struct tcp_conn *c, unsigned chan, int err, const char *what)
{
	struct rm_wire_abort_body a;

	/* Fail first, so an owner blocked on channel 0 lets go of it. */
	err = rx_fail(c, chan, err, what);
	if (err == RDMAMIG_E_PROTO) {
		rm_ctrl_abort_body(&a, RDMAMIG_E_PROTO, what);
		tcp_post(&c->base, 0, RM_WIRE_ABORT, 0, &a, sizeof(a), NULL, 0, rm_deadline(1000));
	}
	return err;
}

static int rx_write(struct tcp_conn *c, unsigned chan, uint16_t flags, size_t len)
{
	struct rm_wire_write w;
	uint64_t off, length;
	uint32_t id;
	int idx, err;
	char why[120];

	if (c->base.role != RM_ROLE_DEST || !atomic_load(&c->ram_ready))
		return rx_error(c, chan, RDMAMIG_E_PROTO, "WRITE before the layout or to a source");
	if (atomic_load(&c->base.sealed))
		return rx_error(c, chan, RDMAMIG_E_PROTO, "WRITE after the last fence (RAM sealed)");
	if (len < sizeof(w) || flags)
		return rx_error(c, chan, RDMAMIG_E_PROTO, "short WRITE frame or flags set");
	err = tcp_recv_all(c, NULL, c->ch[chan].fd, c->ch[chan].tls, (int)chan, &w, sizeof(w), c->base.opts.timeout_ms,
			   false);
	if (err)
		return rx_fail(c, chan, err, "reading WRITE");
	id = rm_wire_get32(w.region);
	off = rm_wire_get64(w.offset);
	length = rm_wire_get64(w.length);
	idx = rm_tr_region_index(&c->base, id);
	if (idx < 0 || w.reserved || length != len - sizeof(w) || length > c->base.peer_max_write ||
	    !rm_range_ok(off, length, c->base.regions[idx].size)) {
		snprintf(why, sizeof(why), "WRITE {region %u, offset %#llx, length %#llx} outside RAM",
			 id, (unsigned long long)off, (unsigned long long)length);
		return rx_error(c, chan, RDMAMIG_E_PROTO, why);
	}
	err = tcp_recv_all(c, NULL, c->ch[chan].fd, c->ch[chan].tls, (int)chan, (char *)c->base.regions[idx].addr + off,
			   length, c->base.opts.timeout_ms, false);
	if (err)
		return rx_fail(c, chan, err, "reading WRITE payload");
	atomic_fetch_add(&c->rx_bytes, length);
	atomic_fetch_add(&c->rx_writes, 1);
	return 0;
}

/* A CTRL fragment: its payload is read straight into the message. */
static int rx_ctrl(struct tcp_conn *c, unsigned chan, uint16_t flags, size_t len)
{
	struct rm_wire_ctrl b;
	const char *why;
	void *dst;
	int err;

	if (len < sizeof(b))
		return rx_error(c, chan, RDMAMIG_E_PROTO, "CTRL shorter than its body");
	err = tcp_recv_all(c, NULL, c->ch[chan].fd, c->ch[chan].tls, (int)chan, &b, sizeof(b), c->base.opts.timeout_ms,
			   false);
	if (err)
		return rx_fail(c, chan, err, "reading CTRL");
	err = rm_ctrl_rx_begin(&c->base, chan, flags, &b, len, &dst, &why);
	if (err)
		return rx_error(c, chan, err, why);
	err = tcp_recv_all(c, NULL, c->ch[chan].fd, c->ch[chan].tls, (int)chan, dst, len - sizeof(b),
			   c->base.opts.timeout_ms, false);
	if (err)
		return rx_fail(c, chan, err, "reading CTRL payload");
	err = rm_ctrl_rx_end(&c->base, &why);
	return err ? rx_error(c, chan, err, why) : 0;
}

/*
 * A fence orders writes, not only control: a page written before MARKER e on
 * channel i and again after it on channel j must land in that order.  So this
 * channel reads nothing after its MARKER until every channel has reached it.
 * The source sent all MARKERs before any later write, so the wait ends: on a
 * slow link only after the other channels' backlog, so it lasts while the
 * peer is alive (the liveness thread ends it on silence), or until an error
 * or cancel.
 */
static int rx_fence_wait(struct tcp_conn *c, unsigned chan)
{
	struct rm_ctrl *q = &c->base.ctrl;
	uint64_t epoch;

	pthread_mutex_lock(&q->lock);
	epoch = q->epoch[chan];
	while (!rm_ctrl_epoch_reached(&c->base, epoch) && !rm_tr_check(&c->base) &&
	       !atomic_load(&c->stopping)) {
		struct timespec ts = rm_abstime_in(TCP_SLICE_MS * 1000000ull);

		/* This channel is not read meanwhile: the quiet is ours, not
		 * the peer's, so its silence clock does not run. */
		rm_ctrl_heard(&c->base, chan);
		pthread_cond_timedwait(&q->cond, &q->lock, &ts);
	}
	pthread_mutex_unlock(&q->lock);
	return 0;
}

/* Any other message: its body is small; ctrl.c takes it. */
static int rx_msg(struct tcp_conn *c, unsigned chan, uint16_t type, uint16_t flags, size_t len)
{
	char body[RM_CTRL_BODY_MAX];
	const char *why;
	int err;

	if (len > sizeof(body))
		return rx_error(c, chan, RDMAMIG_E_PROTO, "message longer than any body");
	err = tcp_recv_all(c, NULL, c->ch[chan].fd, c->ch[chan].tls, (int)chan, body, len, c->base.opts.timeout_ms,
			   false);
	if (err)
		return rx_fail(c, chan, err, "reading message");
	err = rm_ctrl_rx(&c->base, chan, type, flags, body, len, &why);
	if (err == RM_CTRL_END)
		return 1;	/* the peer sends nothing more on this channel */
	if (err)
		return rx_error(c, chan, err, why);
	return type == RM_WIRE_MARKER ? rx_fence_wait(c, chan) : 0;
}

struct rx_arg {
	struct tcp_conn *c;
	unsigned chan;
};

static void *rx_thread(void *arg)
{
	struct rx_arg a = *(struct rx_arg *)arg;
	struct tcp_conn *c = a.c;

	free(arg);
	while (!atomic_load(&c->stopping) && !atomic_load(&c->base.error)) {
		struct rm_wire_hdr h;
		uint16_t type, flags;
		size_t len;
		int err = tcp_recv_all(c, NULL, c->ch[a.chan].fd, c->ch[a.chan].tls, (int)a.chan, &h, sizeof(h),
				       c->base.opts.timeout_ms, true);

		if (err) {
			if (err != -ECANCELED && !atomic_load(&c->stopping))
				rx_fail(c, a.chan, err, "reading from the peer");
			break;
		}
		type = rm_wire_get16(h.type);
		flags = rm_wire_get16(h.flags);
		len = rm_wire_get32(h.len);
		if (h.reserved || h.credits) {
			rx_error(c, a.chan, RDMAMIG_E_PROTO, "reserved or credit header field set");
			break;
		}
		if (type == RM_WIRE_WRITE)
			err = rx_write(c, a.chan, flags, len);
		else if (type == RM_WIRE_CTRL)
			err = rx_ctrl(c, a.chan, flags, len);
		else
			err = rx_msg(c, a.chan, type, flags, len);
		if (err)
			break;
	}
	return NULL;
}

int tcp_start_rx(struct tcp_conn *c)
{
	for (unsigned i = 0; i < c->base.nchan; i++) {
		struct rx_arg *a = malloc(sizeof(*a));
		int err;

		if (!a)
			return -ENOMEM;
		*a = (struct rx_arg){ .c = c, .chan = i };
		err = pthread_create(&c->ch[i].rx, NULL, rx_thread, a);
		if (err) {
			free(a);
			return -err;
		}
		c->ch[i].rx_started = true;
	}
	return 0;
}

/* ---- layout ---- */

/* TCP registers nothing: the destination only starts taking WRITE frames. */
static int tcp_layout(struct rm_transport *t, const struct rm_region *r, unsigned n,
		      struct rm_wire_region *wire)
{
	if (t->role == RM_ROLE_DEST)
		atomic_store(&((struct tcp_conn *)t)->ram_ready, true);
	return 0;
}

/* ---- source: write, fence ---- */

/*
 * Send every channel's queued frames, all channels at once: non-blocking
 * sendmsg on each channel that has data, then one poll() on all of them, so
 * the destination's receivers work in parallel while this thread copies.
 */
static int flush_all(struct tcp_conn *c, uint64_t deadline)
{
	for (;;) {
		struct pollfd p[RM_WIRE_MAX_CHANNELS];
		unsigned np = 0;
		int left, n;

		for (unsigned i = 0; i < c->base.nchan; i++) {
			struct tcp_chan *ch = &c->ch[i];

			while (ch->iov_left > 0) {
				struct iovec *iov = &ch->iov[ch->iov_next];
				short ev = POLLOUT;
				ssize_t w;
				int done;

				pthread_mutex_lock(&ch->tx_lock);
				w = tcp_io_send(ch->tls, ch->fd, iov,
						ch->iov_left > IOV_MAX ? IOV_MAX : ch->iov_left, &ev);
				pthread_mutex_unlock(&ch->tx_lock);
				if (w == -EAGAIN) {
					p[np++] = (struct pollfd){ .fd = ch->fd, .events = ev };
					break;
				}
				if (w < 0)
					return (int)w;
				rm_ctrl_sent(&c->base, i);
				done = iov_advance(iov, ch->iov_left, (size_t)w);
				ch->iov_next += (unsigned)done;
				ch->iov_left -= done;
			}
			if (!ch->iov_left) {
				ch->nframes = 0;
				atomic_store(&ch->tx_busy, false);
			}
		}
		if (!np)
			return 0;
		n = rm_tr_check(&c->base);
		if (n)
			return n;
		left = rm_ms_left(deadline);
		if (!left)
			return -ETIMEDOUT;
		n = poll(p, np, left < TCP_SLICE_MS ? left : TCP_SLICE_MS);
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

/* Queue one WRITE frame on the next channel; flush when that one is full. */
static int queue_write(struct tcp_conn *c, const struct rm_region *reg, uint64_t off, uint64_t len,
		       uint64_t deadline)
{
	unsigned i = c->next_chan++ % c->base.nchan;
	struct tcp_chan *ch = &c->ch[i];
	unsigned f;

	if (!ch->nframes) {
		ch->iov_next = 0;
		atomic_store(&ch->tx_busy, true);
	}
	f = ch->nframes++;

	rm_wire_hdr_init(&ch->hdr[f], RM_WIRE_WRITE, 0, sizeof(ch->body[f]) + len, 0);
	ch->body[f] = (struct rm_wire_write){
		.region = rm_wire_put32(reg->id),
		.offset = rm_wire_put64(off),
		.length = rm_wire_put64(len),
	};
	ch->iov[3 * f] = (struct iovec){ &ch->hdr[f], sizeof(ch->hdr[f]) };
	ch->iov[3 * f + 1] = (struct iovec){ &ch->body[f], sizeof(ch->body[f]) };
	ch->iov[3 * f + 2] = (struct iovec){ (char *)reg->addr + off, len };
	c->base.st.writes++;
	c->base.st.bytes_written += len;
	ch->iov_left += 3;
	if (ch->nframes == TCP_TX_FRAMES)
		return flush_all(c, deadline);
	return 0;
}

static int tcp_write(struct rm_transport *t, unsigned idx, uint64_t off, uint64_t len,
		     uint64_t *took, uint64_t deadline)
{
	*took = len;
	return queue_write((struct tcp_conn *)t, &t->regions[idx], off, len, deadline);
}

static int tcp_flush(struct rm_transport *t, uint64_t deadline)
{
	return flush_all((struct tcp_conn *)t, deadline);
}

static int tcp_fence(struct rm_transport *t)
{
	uint64_t deadline = RM_NO_DEADLINE;

	for (unsigned i = 0; i < t->nchan; i++) {
		struct rm_wire_marker m = { .epoch = rm_wire_put64(t->fence_epoch),
					    .chan = rm_wire_put32(i) };
		int err = tcp_post(t, i, RM_WIRE_MARKER, 0, &m, sizeof(m), NULL, 0, deadline);

		if (err)
			return err;
	}
	return 0;
}

/* ---- the rest of the table ---- */

static int tcp_abort(struct rm_transport *t, int reason, const char *text)
{
	struct rm_wire_abort_body a;

	rm_ctrl_abort_body(&a, reason, text);
	tcp_post(t, 0, RM_WIRE_ABORT, 0, &a, sizeof(a), NULL, 0, rm_deadline(1000));
	return 0;
}

static void tcp_stats(struct rm_transport *t, struct rm_transport_stats *out)
{
	struct tcp_conn *c = (struct tcp_conn *)t;

	*out = t->st;
	out->tls = tcp_conn_tls_path(c);
	if (t->role == RM_ROLE_DEST) {
		out->bytes_written = atomic_load(&c->rx_bytes);
		out->writes = atomic_load(&c->rx_writes);
	}
}

/*
 * The describe op: per channel, the bytes the kernel holds that the peer has
 * not acknowledged (ours, on the way or unread by its TCP) and the bytes
 * that arrived that our receiver thread has not read — so a stall shows
 * which side holds the bytes.
 */
static void tcp_describe(struct rm_transport *t, char *buf, size_t n)
{
	struct tcp_conn *c = (struct tcp_conn *)t;
	size_t off = 0;

	buf[0] = 0;
	for (unsigned i = 0; i < t->nchan && off < n; i++) {
		int out = -1, in = -1, w;

		if (c->ch[i].fd >= 0) {
			ioctl(c->ch[i].fd, SIOCOUTQ, &out);
			ioctl(c->ch[i].fd, SIOCINQ, &in);
		}
		w = snprintf(buf + off, n - off, "%ssocket %u: %d bytes unacknowledged, %d unread",
			     i ? "; " : "", i, out, in);
		off += w > 0 ? (size_t)w : 0;
	}
}

static int tcp_raw_send(struct rm_transport *t, unsigned chan, const void *msg, size_t len)
{
	struct tcp_conn *c = (struct tcp_conn *)t;
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
	int err;

	pthread_mutex_lock(&c->ch[chan].tx_lock);
	err = tcp_send_iov(c, NULL, c->ch[chan].fd, c->ch[chan].tls, &iov, 1,
			   rm_deadline(t->opts.timeout_ms));
	pthread_mutex_unlock(&c->ch[chan].tx_lock);
	return err;
}

const struct rm_transport_ops rm_transport_tcp_ops = {
	.name = "tcp",
	.listen = tcp_listen,
	.accept = tcp_accept,
	.listener_close = tcp_listener_close,
	.connect = tcp_connect,
	.layout = tcp_layout,
	.write = tcp_write,
	.flush = tcp_flush,
	.fence = tcp_fence,
	.post = tcp_post,
	.abort = tcp_abort,
	.close = tcp_close,
	.stats = tcp_stats,
	.describe = tcp_describe,
	.raw_send = tcp_raw_send,
};
