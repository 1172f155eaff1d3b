/*
 * transport/tcp.c — the TCP backend: the same ops as RDMA over `nchan` TCP
 * connections, for hosts without RDMA and as every benchmark's baseline.
 *
 * Frames are wire.h messages.  The source sends WRITE frames with writev
 * straight from guest RAM (header iovecs + a RAM iovec: no staging copy) and
 * spreads them round-robin over the channels.  Each side runs one receiver
 * thread per channel; on the destination it reads WRITE payloads straight into
 * guest RAM after checking region, offset and length against the layout.
 * Control messages travel on channel 0, MARKERs on every channel; the
 * receiver holds a CTRL of epoch e until every channel has shown MARKER e.
 *
 * All sockets are non-blocking; every wait is a poll() in slices of at most
 * 100 ms that also checks cancel and the sticky error, under a deadline.
 * Mid-frame stalls longer than timeout_ms fail the connection; idle
 * connections are watched by TCP keepalive and TCP_USER_TIMEOUT.
 */
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "transport/priv.h"

#define SLICE_MS 100
#define CTRL_FRAG (1u << 20)	/* control fragment payload on TCP */
#define TX_FRAMES 128		/* WRITE frames batched per writev */

struct tcp_listener {
	const struct rm_transport_ops *ops;	/* first: see transport.c */
	struct rm_transport_opts opts;
	int fd;
	int port;
};

struct tcp_chan {
	int fd;
	pthread_t rx;
	bool rx_started;
	pthread_mutex_t tx_lock;	/* frames from the owner and the rx thread */
	uint64_t epoch;			/* receiver: last MARKER seen (under conn lock) */
	/* source write batching */
	struct rm_wire_hdr hdr[TX_FRAMES];
	struct rm_wire_write body[TX_FRAMES];
	struct iovec iov[TX_FRAMES * 3];
	unsigned nframes;		/* frames queued in iov */
	unsigned iov_next;		/* first iovec not yet sent */
	int iov_left;			/* iovecs not yet sent */
};

struct ctrl_msg {
	struct ctrl_msg *next;
	uint16_t type;
	uint64_t epoch;
	size_t len;
	void *data;
};

struct tcp_conn {
	struct rm_transport base;	/* first */
	struct tcp_chan ch[RM_WIRE_MAX_CHANNELS];
	pthread_mutex_t lock;		/* queue, epochs, peer layout, flags */
	pthread_cond_t cond;
	struct ctrl_msg *head, *tail;
	atomic_bool stopping;
	atomic_bool ram_ready;		/* destination: WRITE frames accepted */
	bool peer_bye;
	bool have_layout;
	unsigned peer_nregions;
	struct rm_wire_region peer_regions[RM_WIRE_MAX_REGIONS];
	/* reassembly of channel 0's control fragments */
	struct ctrl_msg *asm_msg;
	size_t asm_got;
	unsigned next_chan;
	atomic_uint_fast64_t rx_bytes, rx_writes;
};

/* ---- socket helpers ---- */

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

static void tune_socket(int fd, int timeout_ms)
{
	int one = 1, idle = timeout_ms / 2000 + 1, cnt = 3;
	unsigned utmo = (unsigned)timeout_ms;
	int buf = 4 << 20;

	/* Best effort: the defaults still work, only slower or less bounded. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &utmo, sizeof(utmo));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
}

/*
 * Wait for fd to become ready, in slices, until the deadline.  t may be NULL
 * (handshake).  0 when ready, -ETIMEDOUT, -ECANCELED, the sticky error, or
 * -ECONNRESET on POLLERR/POLLHUP without data.
 */
static int wait_fd(struct tcp_conn *c, int fd, short events, uint64_t deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		int left = rm_ms_left(deadline), n, err;

		if (c) {
			err = rm_tr_check(&c->base);
			if (err)
				return err;
			if (atomic_load(&c->stopping))
				return -ECANCELED;
		}
		if (!left)
			return -ETIMEDOUT;
		n = poll(&p, 1, left < SLICE_MS ? left : SLICE_MS);
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

/* Write a whole iovec array (modified in place) before the deadline. */
static int send_iov(struct tcp_conn *c, int fd, struct iovec *iov, int cnt, uint64_t deadline)
{
	while (cnt > 0) {
		struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)(cnt > IOV_MAX ? IOV_MAX : cnt) };
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);

		if (n < 0) {
			int err;

			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return errno == EPIPE ? -ECONNRESET : -errno;
			err = wait_fd(c, fd, POLLOUT, deadline);
			if (err)
				return err;
			continue;
		}
		while (cnt > 0 && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt > 0) {
			iov->iov_base = (char *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

/*
 * Read exactly len bytes.  idle_ok: before the first byte, wait without a
 * deadline (a frame boundary: the peer may legitimately be quiet); once a
 * frame has started, a stall beyond timeout_ms fails.
 */
static int recv_all(struct tcp_conn *c, int fd, void *buf, size_t len, int timeout_ms, bool idle_ok)
{
	uint64_t deadline = rm_deadline(timeout_ms);
	size_t got = 0;

	while (got < len) {
		ssize_t n = recv(fd, (char *)buf + got, len - got, 0);
		int err;

		if (n > 0) {
			got += (size_t)n;
			deadline = rm_deadline(timeout_ms);
			continue;
		}
		if (n == 0)
			return -ECONNRESET;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -errno;
		if (idle_ok && got == 0)
			deadline = rm_deadline(timeout_ms);
		err = wait_fd(c, fd, POLLIN, deadline);
		if (err)
			return err;
	}
	return 0;
}

static void hdr_init(struct rm_wire_hdr *h, uint16_t type, uint16_t flags, size_t len)
{
	*h = (struct rm_wire_hdr){
		.type = htole16(type),
		.flags = htole16(flags),
		.len = htole32((uint32_t)len),
	};
}

/* Send one frame (header + body + optional payload) on a channel. */
static int send_frame(struct tcp_conn *c, unsigned chan, uint16_t type, uint16_t flags,
		      const void *body, size_t blen, const void *data, size_t dlen, uint64_t deadline)
{
	struct tcp_chan *ch = &c->ch[chan];
	struct rm_wire_hdr h;
	struct iovec iov[3] = {
		{ .iov_base = &h, .iov_len = sizeof(h) },
		{ .iov_base = (void *)body, .iov_len = blen },
		{ .iov_base = (void *)data, .iov_len = dlen },
	};
	int err;

	hdr_init(&h, type, flags, blen + dlen);
	pthread_mutex_lock(&ch->tx_lock);
	err = send_iov(c, ch->fd, iov, dlen ? 3 : 2, deadline);
	pthread_mutex_unlock(&ch->tx_lock);
	return err;
}

static void fill_text(char *dst, const char *src)
{
	size_t n = src ? strnlen(src, RM_WIRE_TEXT - 1) : 0;

	memset(dst, 0, RM_WIRE_TEXT);
	if (n)
		memcpy(dst, src, n);
}

/* Handshake-time frames on a bare socket (no connection object yet). */
static int send_bare(int fd, uint16_t type, const void *body, size_t blen, uint64_t deadline)
{
	struct rm_wire_hdr h;
	struct iovec iov[2] = {
		{ .iov_base = &h, .iov_len = sizeof(h) },
		{ .iov_base = (void *)body, .iov_len = blen },
	};

	hdr_init(&h, type, 0, blen);
	return send_iov(NULL, fd, iov, 2, deadline);
}

static int send_refuse(int fd, uint32_t reason, uint32_t detail, const char *text)
{
	struct rm_wire_refuse_body r = { .reason = htole32(reason), .detail = htole32(detail) };

	fill_text(r.text, text);
	return send_bare(fd, RM_WIRE_REFUSE, &r, sizeof(r), rm_deadline(1000));
}

/* Receive one handshake frame of an expected type and exact body size. */
static int recv_bare(int fd, uint16_t *type, void *body, size_t cap, size_t *blen, int timeout_ms)
{
	struct rm_wire_hdr h;
	int err = recv_all(NULL, fd, &h, sizeof(h), timeout_ms, false);
	size_t len;

	if (err)
		return err;
	*type = le16toh(h.type);
	len = le32toh(h.len);
	if (len > cap) {
		rm_err("transport tcp: handshake frame %s of %zu bytes, expected at most %zu",
		       rm_wire_type_name(*type), len, cap);
		return RDMAMIG_E_PROTO;
	}
	*blen = len;
	return recv_all(NULL, fd, body, len, timeout_ms, false);
}

/* ---- receiver thread ---- */

struct rx_arg {
	struct tcp_conn *c;
	unsigned chan;
};

static int rx_fail(struct tcp_conn *c, unsigned chan, int err, const char *what)
{
	char buf[160];

	snprintf(buf, sizeof(buf), "channel %u: %s", chan, what);
	err = rm_tr_fail(&c->base, err, buf);
	pthread_mutex_lock(&c->lock);
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	return err;
}

/* Tell the peer why we give up on a protocol error (best effort). */
static int rx_proto(struct tcp_conn *c, unsigned chan, const char *what)
{
	struct rm_wire_abort_body a = { .reason = htole32((uint32_t)-RDMAMIG_E_PROTO) };

	int err;

	/* Fail first, so an owner blocked on channel 0 lets go of it. */
	err = rx_fail(c, chan, RDMAMIG_E_PROTO, what);
	fill_text(a.text, what);
	send_frame(c, 0, RM_WIRE_ABORT, 0, &a, sizeof(a), NULL, 0, rm_deadline(1000));
	return err;
}

static int rx_write(struct tcp_conn *c, unsigned chan, size_t len)
{
	struct rm_wire_write w;
	uint64_t off, length;
	uint32_t id;
	int idx, err;
	char why[120];

	if (c->base.role != RM_ROLE_DEST || !atomic_load(&c->ram_ready))
		return rx_proto(c, chan, "WRITE before the layout or to a source");
	if (len < sizeof(w))
		return rx_proto(c, chan, "short WRITE frame");
	err = recv_all(c, c->ch[chan].fd, &w, sizeof(w), c->base.opts.timeout_ms, false);
	if (err)
		return rx_fail(c, chan, err, "reading WRITE");
	id = le32toh(w.region);
	off = le64toh(w.offset);
	length = le64toh(w.length);
	idx = rm_tr_region_index(&c->base, id);
	if (idx < 0 || length != len - sizeof(w) || length > RM_WIRE_MAX_WRITE ||
	    !rm_range_ok(off, length, c->base.regions[idx].size)) {
		snprintf(why, sizeof(why), "WRITE {region %u, offset %#llx, length %#llx} outside RAM",
			 id, (unsigned long long)off, (unsigned long long)length);
		return rx_proto(c, chan, why);
	}
	err = recv_all(c, c->ch[chan].fd, (char *)c->base.regions[idx].addr + off, length,
		       c->base.opts.timeout_ms, false);
	if (err)
		return rx_fail(c, chan, err, "reading WRITE payload");
	atomic_fetch_add(&c->rx_bytes, length);
	atomic_fetch_add(&c->rx_writes, 1);
	return 0;
}

static int rx_ctrl(struct tcp_conn *c, unsigned chan, uint16_t flags, size_t len)
{
	struct rm_wire_ctrl b;
	struct ctrl_msg *m;
	uint64_t total;
	uint32_t frag;
	uint16_t type;
	int err;

	if (chan != 0 || len < sizeof(b))
		return rx_proto(c, chan, "CTRL off channel 0 or short");
	err = recv_all(c, c->ch[chan].fd, &b, sizeof(b), c->base.opts.timeout_ms, false);
	if (err)
		return rx_fail(c, chan, err, "reading CTRL");
	type = le16toh(b.type);
	frag = le32toh(b.frag_len);
	total = le64toh(b.total_len);
	if (type < RM_WIRE_ENGINE_FIRST || type > RM_WIRE_ENGINE_LAST || frag != len - sizeof(b) ||
	    total > RM_WIRE_MAX_CTRL)
		return rx_proto(c, chan, "CTRL type, fragment or total out of range");
	if (flags & RM_WIRE_F_FIRST) {
		if (c->asm_msg)
			return rx_proto(c, chan, "CTRL FIRST inside a message");
		m = calloc(1, sizeof(*m));
		if (!m || (total && !(m->data = malloc(total)))) {
			free(m);
			return rx_fail(c, chan, -ENOMEM, "control message buffer");
		}
		m->type = type;
		m->len = total;
		m->epoch = le64toh(b.epoch);
		c->asm_msg = m;
		c->asm_got = 0;
	}
	m = c->asm_msg;
	if (!m || m->type != type || m->len != total || frag > total - c->asm_got)
		return rx_proto(c, chan, "CTRL fragment does not continue its message");
	err = recv_all(c, c->ch[chan].fd, (char *)m->data + c->asm_got, frag,
		       c->base.opts.timeout_ms, false);
	if (err)
		return rx_fail(c, chan, err, "reading CTRL payload");
	c->asm_got += frag;
	if (!(flags & RM_WIRE_F_LAST))
		return 0;
	if (c->asm_got != total)
		return rx_proto(c, chan, "CTRL LAST before the total length");
	c->asm_msg = NULL;
	pthread_mutex_lock(&c->lock);
	if (c->tail)
		c->tail->next = m;
	else
		c->head = m;
	c->tail = m;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	return 0;
}

static int rx_small(struct tcp_conn *c, unsigned chan, uint16_t type, size_t len)
{
	union {
		struct rm_wire_marker mk;
		struct rm_wire_abort_body ab;
		struct rm_wire_refuse_body rf;
		struct {
			struct rm_wire_layout l;
			struct rm_wire_region r[RM_WIRE_MAX_REGIONS];
		} lay;
	} u;
	size_t want = 0;
	int err;

	switch (type) {
	case RM_WIRE_MARKER:
		want = sizeof(u.mk);
		break;
	case RM_WIRE_ABORT:
		want = sizeof(u.ab);
		break;
	case RM_WIRE_REFUSE:
		want = sizeof(u.rf);
		break;
	case RM_WIRE_BYE:
		want = 0;
		break;
	case RM_WIRE_LAYOUT:
		if (len < sizeof(u.lay.l) || len > sizeof(u.lay))
			return rx_proto(c, chan, "LAYOUT length out of range");
		want = len;
		break;
	default:
		return rx_proto(c, chan, "unexpected message type");
	}
	if (len != want)
		return rx_proto(c, chan, "message length does not match its type");
	err = recv_all(c, c->ch[chan].fd, &u, len, c->base.opts.timeout_ms, false);
	if (err)
		return rx_fail(c, chan, err, "reading message");

	switch (type) {
	case RM_WIRE_MARKER:
		pthread_mutex_lock(&c->lock);
		if (le32toh(u.mk.chan) != chan || le64toh(u.mk.epoch) <= c->ch[chan].epoch) {
			pthread_mutex_unlock(&c->lock);
			return rx_proto(c, chan, "MARKER for another channel or not increasing");
		}
		c->ch[chan].epoch = le64toh(u.mk.epoch);
		pthread_cond_broadcast(&c->cond);
		/* A fence orders writes, not only control: a page written
		 * before MARKER e on channel i and again after it on channel j
		 * must land in that order.  So this channel reads nothing
		 * after its MARKER until every channel has reached it.  The
		 * source sent all MARKERs before any later write, so the wait
		 * ends; it is still bounded by errors, cancel and the timeout. */
		uint64_t deadline = rm_deadline(c->base.opts.timeout_ms);
		for (;;) {
			bool all = true;

			for (unsigned i = 0; i < c->base.nchan; i++)
				all &= c->ch[i].epoch >= le64toh(u.mk.epoch);
			if (all || rm_tr_check(&c->base))
				break;
			if (!rm_ms_left(deadline)) {
				pthread_mutex_unlock(&c->lock);
				return rx_fail(c, chan, -ETIMEDOUT, "waiting for the other channels' MARKER");
			}
			struct timespec ts = rm_abstime_in(SLICE_MS * 1000000ull);

			pthread_cond_timedwait(&c->cond, &c->lock, &ts);
		}
		pthread_mutex_unlock(&c->lock);
		return 0;
	case RM_WIRE_ABORT:
		u.ab.text[RM_WIRE_TEXT - 1] = 0;
		rm_err("transport tcp: peer aborted: %s (%s)", u.ab.text,
		       rdmamig_strerror(-(int)le32toh(u.ab.reason)));
		return rx_fail(c, chan, RDMAMIG_E_ABORTED, "peer sent ABORT");
	case RM_WIRE_REFUSE:
		u.rf.text[RM_WIRE_TEXT - 1] = 0;
		rm_err("transport tcp: peer refused: %s: %s",
		       rm_wire_refuse_name(le32toh(u.rf.reason)), u.rf.text);
		return rx_fail(c, chan, RDMAMIG_E_REFUSED, "peer sent REFUSE");
	case RM_WIRE_BYE:
		/* Only channel 0's BYE ends the conversation: it follows every
		 * control message, while another channel's BYE can overtake
		 * them and would hide a last REFUSE or RESUMED. */
		if (chan != 0)
			return 1;
		pthread_mutex_lock(&c->lock);
		c->peer_bye = true;
		pthread_cond_broadcast(&c->cond);
		pthread_mutex_unlock(&c->lock);
		return 1;	/* the peer sends nothing more on this channel */
	case RM_WIRE_LAYOUT: {
		uint32_t n = le32toh(u.lay.l.count);

		if (chan != 0 || c->base.role != RM_ROLE_SOURCE || n > RM_WIRE_MAX_REGIONS ||
		    len != sizeof(u.lay.l) + n * sizeof(struct rm_wire_region))
			return rx_proto(c, chan, "LAYOUT count out of range or unexpected");
		pthread_mutex_lock(&c->lock);
		if (c->have_layout) {
			pthread_mutex_unlock(&c->lock);
			return rx_proto(c, chan, "second LAYOUT");
		}
		memcpy(c->peer_regions, u.lay.r, n * sizeof(u.lay.r[0]));
		c->peer_nregions = n;
		c->have_layout = true;
		pthread_cond_broadcast(&c->cond);
		pthread_mutex_unlock(&c->lock);
		return 0;
	}
	}
	return 0;
}

static void *rx_thread(void *arg)
{
	struct rx_arg a = *(struct rx_arg *)arg;
	struct tcp_conn *c = a.c;

	free(arg);
	while (!atomic_load(&c->stopping) && !atomic_load(&c->base.error)) {
		struct rm_wire_hdr h;
		uint16_t type;
		size_t len;
		int err = recv_all(c, c->ch[a.chan].fd, &h, sizeof(h), c->base.opts.timeout_ms, true);

		if (err) {
			if (err != -ECANCELED && !atomic_load(&c->stopping))
				rx_fail(c, a.chan, err, "reading from the peer");
			break;
		}
		type = le16toh(h.type);
		len = le32toh(h.len);
		if (h.reserved) {
			rx_proto(c, a.chan, "reserved header field set");
			break;
		}
		if (type == RM_WIRE_WRITE)
			err = rx_write(c, a.chan, len);
		else if (type == RM_WIRE_CTRL)
			err = rx_ctrl(c, a.chan, le16toh(h.flags), len);
		else
			err = rx_small(c, a.chan, type, len);
		if (err)
			break;
	}
	return NULL;
}

/* ---- connection object ---- */

static struct tcp_conn *conn_new(const struct rm_transport_opts *o, enum rm_role role, unsigned nchan)
{
	struct tcp_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->base.ops = &rm_transport_tcp_ops;
	c->base.opts = *o;
	c->base.opts.addr = NULL;
	c->base.opts.port = NULL;
	c->base.role = role;
	c->base.nchan = nchan;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	for (unsigned i = 0; i < RM_WIRE_MAX_CHANNELS; i++) {
		c->ch[i].fd = -1;
		pthread_mutex_init(&c->ch[i].tx_lock, NULL);
	}
	return c;
}

static int start_rx(struct tcp_conn *c)
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

static int tcp_close(struct rm_transport *t)
{
	struct tcp_conn *c = (struct tcp_conn *)t;
	int first = 0;

	if (!c)
		return 0;
	if (!atomic_load(&c->base.error)) {
		for (unsigned i = 0; i < c->base.nchan; i++)
			if (c->ch[i].fd >= 0)
				send_frame(c, i, RM_WIRE_BYE, 0, NULL, 0, NULL, 0, rm_deadline(1000));
	}
	atomic_store(&c->stopping, true);
	for (unsigned i = 0; i < RM_WIRE_MAX_CHANNELS; i++) {
		if (c->ch[i].rx_started) {
			int err = pthread_join(c->ch[i].rx, NULL);

			if (err && !first)
				first = -err;
		}
		if (c->ch[i].fd >= 0 && close(c->ch[i].fd) < 0 && !first)
			first = -errno;
		pthread_mutex_destroy(&c->ch[i].tx_lock);
	}
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
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->lock);
	free(c);
	return first;
}

/* ---- listen / accept ---- */

static int resolve(const char *addr, const char *port, bool passive, struct addrinfo **res)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = passive ? AI_PASSIVE : 0,
	};
	int err = getaddrinfo(addr && *addr ? addr : NULL, port, &hints, res);

	if (err) {
		rm_err("transport tcp: cannot resolve %s port %s: %s", addr ? addr : "(any)", port,
		       gai_strerror(err));
		return -EHOSTUNREACH;
	}
	return 0;
}

static int tcp_listen(const struct rm_transport_opts *in, struct rm_listener **out)
{
	struct tcp_listener *l;
	struct addrinfo *res, *ai;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int err, one = 1;

	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->ops = &rm_transport_tcp_ops;
	l->fd = -1;
	err = rm_tr_opts_fill(&l->opts, in);
	if (err)
		goto free_l;
	err = resolve(in->addr, in->port ? in->port : "0", true, &res);
	if (err)
		goto free_l;
	err = -EADDRNOTAVAIL;
	for (ai = res; ai; ai = ai->ai_next) {
		l->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, 0);
		if (l->fd < 0)
			continue;
		setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(l->fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(l->fd, 64) == 0)
			break;
		err = -errno;
		close(l->fd);
		l->fd = -1;
	}
	freeaddrinfo(res);
	if (l->fd < 0) {
		rm_err("transport tcp: cannot listen on port %s: %s", in->port, rdmamig_strerror(err));
		goto free_l;
	}
	err = rm_errno(set_nonblock(l->fd));
	if (err)
		goto close_fd;
	if (getsockname(l->fd, (struct sockaddr *)&ss, &sl) < 0) {
		err = -errno;
		goto close_fd;
	}
	l->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						 : ((struct sockaddr_in *)&ss)->sin_port);
	*out = (struct rm_listener *)l;
	return 0;

close_fd:
	close(l->fd);
free_l:
	free(l);
	return err;
}

static int tcp_listener_port(struct rm_listener *lp)
{
	return ((struct tcp_listener *)lp)->port;
}

static void tcp_listener_close(struct rm_listener *lp)
{
	struct tcp_listener *l = (struct tcp_listener *)lp;

	if (l->fd >= 0)
		close(l->fd);
	free(l);
}

static int tcp_accept(struct rm_listener *lp, struct rm_transport **out)
{
	struct tcp_listener *l = (struct tcp_listener *)lp;
	uint64_t deadline = rm_deadline(l->opts.timeout_ms);
	struct tcp_conn *c = NULL;
	uint64_t session = 0;
	unsigned have = 0;
	int err;

	while (!c || have < c->base.nchan) {
		struct {
			struct rm_wire_hello h;
			char slack[64];
		} u;
		struct rm_wire_hello_ack ack;
		uint16_t type;
		size_t blen;
		char why[96];
		uint32_t reason;
		unsigned chan;
		int fd;

		err = wait_fd(NULL, l->fd, POLLIN, deadline);
		if (err)
			goto fail;
		fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (fd < 0)
			continue;
		tune_socket(fd, l->opts.timeout_ms);
		err = recv_bare(fd, &type, &u, sizeof(u), &blen, rm_ms_left(deadline) ?: 1);
		if (err || type != RM_WIRE_HELLO || blen != sizeof(u.h)) {
			rm_warn("transport tcp: dropping a peer that did not start with HELLO (%s)",
				err ? rdmamig_strerror(err) : rm_wire_type_name(type));
			if (!err)
				send_refuse(fd, RM_REFUSE_MAGIC, type, "expected HELLO");
			close(fd);
			continue;
		}
		reason = rm_tr_check_hello(&u.h, why, sizeof(why));
		chan = le16toh(u.h.chan);
		if (!reason && c && (le64toh(u.h.session) != session || le16toh(u.h.nchan) != c->base.nchan)) {
			snprintf(why, sizeof(why), "another migration is being accepted");
			reason = RM_REFUSE_BUSY;
		}
		if (!reason && c && c->ch[chan].fd >= 0) {
			snprintf(why, sizeof(why), "channel %u connected twice", chan);
			reason = RM_REFUSE_CHANNELS;
		}
		if (reason) {
			rm_warn("transport tcp: refusing a peer: %s: %s", rm_wire_refuse_name(reason), why);
			send_refuse(fd, reason, 0, why);
			close(fd);
			continue;
		}
		if (!c) {
			c = conn_new(&l->opts, RM_ROLE_DEST, le16toh(u.h.nchan));
			if (!c) {
				close(fd);
				err = -ENOMEM;
				goto fail;
			}
			session = le64toh(u.h.session);
		}
		ack = (struct rm_wire_hello_ack){
			.version = htole16(RM_WIRE_VERSION < le16toh(u.h.version_max) ? RM_WIRE_VERSION
										: le16toh(u.h.version_max)),
			.nchan = htole16((uint16_t)c->base.nchan),
			.caps = htole32(le32toh(u.h.caps) & RM_CAP_KNOWN & ~RM_CAP_ODP),
		};
		err = send_bare(fd, RM_WIRE_HELLO_ACK, &ack, sizeof(ack), rm_deadline(1000));
		if (err) {
			close(fd);
			continue;
		}
		c->ch[chan].fd = fd;
		have++;
	}
	err = start_rx(c);
	if (err)
		goto fail;
	rm_info("transport tcp: accepted a source with %u channels", c->base.nchan);
	*out = &c->base;
	return 0;

fail:
	if (err == -ETIMEDOUT)
		rm_err("transport tcp: no complete source within %d ms (%u channels connected)",
		       l->opts.timeout_ms, have);
	if (c) {
		atomic_store(&c->base.error, err);
		tcp_close(&c->base);
	}
	return err;
}

/* ---- connect ---- */

static int connect_one(const struct rm_transport_opts *o, uint64_t deadline, int *out)
{
	struct addrinfo *res, *ai;
	int err, fd = -1;

	err = resolve(o->addr, o->port, false, &res);
	if (err)
		return err;
	err = -ECONNREFUSED;
	for (ai = res; ai; ai = ai->ai_next) {
		socklen_t sl = sizeof(err);
		int soerr = 0;

		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0) {
			err = -errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		if (errno == EINPROGRESS) {
			err = wait_fd(NULL, fd, POLLOUT, deadline);
			if (!err && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && !soerr)
				break;
			if (!err)
				err = -soerr;
		} else {
			err = -errno;
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return err;
	tune_socket(fd, o->timeout_ms);
	*out = fd;
	return 0;
}

static int tcp_connect(const struct rm_transport_opts *in, struct rm_transport **out)
{
	struct rm_transport_opts o;
	uint64_t deadline, session = rm_tr_session_id();
	struct tcp_conn *c;
	int err;

	err = rm_tr_opts_fill(&o, in);
	if (err)
		return err;
	deadline = rm_deadline(o.timeout_ms);
	c = conn_new(&o, RM_ROLE_SOURCE, o.nchan);
	if (!c)
		return -ENOMEM;
	for (unsigned i = 0; i < o.nchan; i++) {
		struct rm_wire_hello h = {
			.magic = htole32(RM_WIRE_MAGIC),
			.version_min = htole16(RM_WIRE_VERSION_MIN),
			.version_max = htole16(RM_WIRE_VERSION),
			.caps = htole32(RM_CAP_FENCE_EPOCH | (o.nchan > 1 ? RM_CAP_MULTICHAN : 0)),
			.nchan = htole16((uint16_t)o.nchan),
			.chan = htole16((uint16_t)i),
			.session = htole64(session),
			.max_write = htole32(o.max_write),
		};
		union {
			struct rm_wire_hello_ack ack;
			struct rm_wire_refuse_body rf;
		} u;
		uint16_t type;
		size_t blen;

		err = connect_one(&o, deadline, &c->ch[i].fd);
		if (err) {
			rm_err("transport tcp: cannot connect channel %u to [%s]:%s: %s", i, in->addr,
			       in->port, rdmamig_strerror(err));
			goto fail;
		}
		err = send_bare(c->ch[i].fd, RM_WIRE_HELLO, &h, sizeof(h), deadline);
		if (!err)
			err = recv_bare(c->ch[i].fd, &type, &u, sizeof(u), &blen,
					rm_ms_left(deadline) ?: 1);
		if (err) {
			rm_err("transport tcp: handshake on channel %u: %s", i, rdmamig_strerror(err));
			goto fail;
		}
		if (type == RM_WIRE_REFUSE && blen == sizeof(u.rf)) {
			u.rf.text[RM_WIRE_TEXT - 1] = 0;
			rm_err("transport tcp: destination refused: %s: %s",
			       rm_wire_refuse_name(le32toh(u.rf.reason)), u.rf.text);
			err = RDMAMIG_E_REFUSED;
			goto fail;
		}
		if (type != RM_WIRE_HELLO_ACK || blen != sizeof(u.ack) ||
		    le16toh(u.ack.version) < RM_WIRE_VERSION_MIN ||
		    le16toh(u.ack.version) > RM_WIRE_VERSION || le16toh(u.ack.nchan) != o.nchan) {
			rm_err("transport tcp: bad handshake reply %s on channel %u",
			       rm_wire_type_name(type), i);
			err = RDMAMIG_E_PROTO;
			goto fail;
		}
	}
	err = start_rx(c);
	if (err)
		goto fail;
	*out = &c->base;
	return 0;

fail:
	atomic_store(&c->base.error, err);
	tcp_close(&c->base);
	return err;
}

/* ---- layout ---- */

static int tcp_layout(struct rm_transport *t, const struct rm_region *r, unsigned n)
{
	struct tcp_conn *c = (struct tcp_conn *)t;
	uint64_t deadline = rm_deadline(t->opts.timeout_ms);
	char why[120];
	int err = 0;

	if (t->role == RM_ROLE_DEST) {
		struct {
			struct rm_wire_layout l;
			struct rm_wire_region r[RM_WIRE_MAX_REGIONS];
		} lay = { .l = { .count = htole32(n), .page_size = htole32(4096) } };

		for (unsigned i = 0; i < n; i++)
			lay.r[i] = (struct rm_wire_region){ .id = htole32(r[i].id),
							    .size = htole64(r[i].size) };
		atomic_store(&c->ram_ready, true);
		return send_frame(c, 0, RM_WIRE_LAYOUT, 0, &lay,
				  sizeof(lay.l) + n * sizeof(lay.r[0]), NULL, 0, deadline);
	}

	pthread_mutex_lock(&c->lock);
	while (!c->have_layout && !(err = rm_tr_check(t)) && rm_ms_left(deadline)) {
		struct timespec ts = rm_abstime_in(SLICE_MS * 1000000ull);

		pthread_cond_timedwait(&c->cond, &c->lock, &ts);
	}
	pthread_mutex_unlock(&c->lock);
	if (err)
		return err;
	if (!c->have_layout)
		return -ETIMEDOUT;
	err = rm_tr_match_layout(t, c->peer_regions, c->peer_nregions, why, sizeof(why));
	if (err) {
		struct rm_wire_refuse_body rf = { .reason = htole32(RM_REFUSE_LAYOUT) };

		rm_err("transport tcp: RAM layout mismatch: %s", why);
		fill_text(rf.text, why);
		send_frame(c, 0, RM_WIRE_REFUSE, 0, &rf, sizeof(rf), NULL, 0, rm_deadline(1000));
	}
	return err;
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
				struct msghdr mh = {
					.msg_iov = iov,
					.msg_iovlen = (size_t)(ch->iov_left > IOV_MAX ? IOV_MAX : ch->iov_left),
				};
				ssize_t w;

				pthread_mutex_lock(&ch->tx_lock);
				w = sendmsg(ch->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
				pthread_mutex_unlock(&ch->tx_lock);
				if (w < 0) {
					if (errno == EINTR)
						continue;
					if (errno != EAGAIN && errno != EWOULDBLOCK)
						return errno == EPIPE ? -ECONNRESET : -errno;
					p[np++] = (struct pollfd){ .fd = ch->fd, .events = POLLOUT };
					break;
				}
				while (ch->iov_left > 0 && (size_t)w >= iov->iov_len) {
					w -= (ssize_t)iov->iov_len;
					iov++;
					ch->iov_next++;
					ch->iov_left--;
				}
				if (ch->iov_left > 0) {
					iov->iov_base = (char *)iov->iov_base + w;
					iov->iov_len -= (size_t)w;
				}
			}
			if (!ch->iov_left)
				ch->nframes = 0;
		}
		if (!np)
			return 0;
		n = rm_tr_check(&c->base);
		if (n)
			return n;
		left = rm_ms_left(deadline);
		if (!left)
			return -ETIMEDOUT;
		n = poll(p, np, left < SLICE_MS ? left : SLICE_MS);
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

/* Queue one WRITE frame on the next channel; flush that channel when full. */
static int queue_write(struct tcp_conn *c, const struct rm_region *reg, uint32_t id, uint64_t off,
		       uint64_t len, uint64_t deadline)
{
	unsigned i = c->next_chan++ % c->base.nchan;
	struct tcp_chan *ch = &c->ch[i];
	unsigned f;

	if (!ch->nframes)
		ch->iov_next = 0;
	f = ch->nframes++;

	hdr_init(&ch->hdr[f], RM_WIRE_WRITE, 0, sizeof(ch->body[f]) + len);
	ch->body[f] = (struct rm_wire_write){
		.region = htole32(id),
		.offset = htole64(off),
		.length = htole64(len),
	};
	ch->iov[3 * f] = (struct iovec){ &ch->hdr[f], sizeof(ch->hdr[f]) };
	ch->iov[3 * f + 1] = (struct iovec){ &ch->body[f], sizeof(ch->body[f]) };
	ch->iov[3 * f + 2] = (struct iovec){ (char *)reg->addr + off, len };
	c->base.st.writes++;
	c->base.st.bytes_written += len;
	ch->iov_left += 3;
	if (ch->nframes == TX_FRAMES)
		return flush_all(c, deadline);
	return 0;
}

static int tcp_write(struct rm_transport *t, const struct rm_range *r, size_t n)
{
	struct tcp_conn *c = (struct tcp_conn *)t;
	uint64_t deadline = rm_deadline(t->opts.timeout_ms);
	int err = 0;

	for (size_t i = 0; i < n && !err;) {
		const struct rm_region *reg = &t->regions[rm_tr_region_index(t, r[i].region)];
		uint64_t off = r[i].offset, len = r[i].length;

		/* Coalesce ranges that continue each other in the same region. */
		for (i++; i < n && r[i].region == r[i - 1].region && r[i].offset == off + len; i++)
			len += r[i].length;
		while (len && !err) {
			uint64_t piece = rm_pow2_floor(len < t->opts.max_write ? len : t->opts.max_write);

			err = queue_write(c, reg, reg->id, off, piece, deadline);
			off += piece;
			len -= piece;
		}
	}
	if (!err)
		err = flush_all(c, deadline);
	return err;
}

static int tcp_fence(struct rm_transport *t)
{
	struct tcp_conn *c = (struct tcp_conn *)t;
	uint64_t deadline = rm_deadline(t->opts.timeout_ms);

	for (unsigned i = 0; i < t->nchan; i++) {
		struct rm_wire_marker m = { .epoch = htole64(t->fence_epoch), .chan = htole32(i) };
		int err = send_frame(c, i, RM_WIRE_MARKER, 0, &m, sizeof(m), NULL, 0, deadline);

		if (err)
			return err;
	}
	return 0;
}

/* ---- control ---- */

static int tcp_send(struct rm_transport *t, uint16_t type, const void *buf, size_t len)
{
	struct tcp_conn *c = (struct tcp_conn *)t;
	uint64_t deadline = rm_deadline(t->opts.timeout_ms);
	size_t done = 0;

	if (c->peer_bye)
		return -EPIPE;
	do {
		size_t frag = len - done < CTRL_FRAG ? len - done : CTRL_FRAG;
		struct rm_wire_ctrl b = {
			.type = htole16(type),
			.frag_len = htole32((uint32_t)frag),
			.total_len = htole64(len),
			.epoch = htole64(t->role == RM_ROLE_SOURCE ? t->fence_epoch : 0),
		};
		uint16_t flags = (done == 0 ? RM_WIRE_F_FIRST : 0) |
				 (done + frag == len ? RM_WIRE_F_LAST : 0);
		int err = send_frame(c, 0, RM_WIRE_CTRL, flags, &b, sizeof(b),
				     (const char *)buf + done, frag, deadline);

		if (err)
			return err;
		done += frag;
	} while (done < len);
	return 0;
}

/* Under c->lock: may the head message be delivered (its fence is complete)? */
static bool head_ready(struct tcp_conn *c)
{
	if (!c->head)
		return false;
	for (unsigned i = 0; i < c->base.nchan; i++)
		if (c->ch[i].epoch < c->head->epoch)
			return false;
	return true;
}

static int tcp_recv(struct rm_transport *t, struct rm_msg *msg, int timeout_ms)
{
	struct tcp_conn *c = (struct tcp_conn *)t;
	uint64_t deadline = rm_deadline(timeout_ms);
	int ret = 0;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		struct timespec ts;
		int left;

		if (head_ready(c)) {
			struct ctrl_msg *m = c->head;

			c->head = m->next;
			if (!c->head)
				c->tail = NULL;
			msg->type = m->type;
			msg->len = m->len;
			msg->data = m->data;
			free(m);
			ret = 1;
			break;
		}
		ret = rm_tr_check(t);
		if (ret)
			break;
		if (c->peer_bye) {
			ret = -EPIPE;
			break;
		}
		left = rm_ms_left(deadline);
		if (!left)
			break;
		ts = rm_abstime_in((uint64_t)(left < SLICE_MS ? left : SLICE_MS) * 1000000ull);
		pthread_cond_timedwait(&c->cond, &c->lock, &ts);
	}
	pthread_mutex_unlock(&c->lock);
	return ret;
}

static int tcp_abort(struct rm_transport *t, int reason, const char *text)
{
	struct tcp_conn *c = (struct tcp_conn *)t;
	struct rm_wire_abort_body a = { .reason = htole32((uint32_t)(reason < 0 ? -reason : reason)) };

	fill_text(a.text, text);
	send_frame(c, 0, RM_WIRE_ABORT, 0, &a, sizeof(a), NULL, 0, rm_deadline(1000));
	return 0;
}

static void tcp_stats(struct rm_transport *t, struct rm_transport_stats *out)
{
	struct tcp_conn *c = (struct tcp_conn *)t;

	*out = t->st;
	if (t->role == RM_ROLE_DEST) {
		out->bytes_written = atomic_load(&c->rx_bytes);
		out->writes = atomic_load(&c->rx_writes);
	}
}

int rm_tcp_raw_send(struct rm_transport *t, unsigned chan, const void *msg, size_t len)
{
	struct tcp_conn *c = (struct tcp_conn *)t;
	struct iovec iov = { .iov_base = (void *)msg, .iov_len = len };
	int err;

	pthread_mutex_lock(&c->ch[chan].tx_lock);
	err = send_iov(c, c->ch[chan].fd, &iov, 1, rm_deadline(t->opts.timeout_ms));
	pthread_mutex_unlock(&c->ch[chan].tx_lock);
	return err;
}

const struct rm_transport_ops rm_transport_tcp_ops = {
	.name = "tcp",
	.listen = tcp_listen,
	.accept = tcp_accept,
	.listener_port = tcp_listener_port,
	.listener_close = tcp_listener_close,
	.connect = tcp_connect,
	.layout = tcp_layout,
	.write = tcp_write,
	.fence = tcp_fence,
	.send = tcp_send,
	.recv = tcp_recv,
	.abort = tcp_abort,
	.close = tcp_close,
	.stats = tcp_stats,
};
