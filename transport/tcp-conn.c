/*
 * transport/tcp-conn.c — the TCP backend's connections: listen, accept and
 * connect `nchan` sockets, with opts.tls the TLS handshake on each before
 * any byte of ours (tcp-tls.c), the HELLO / HELLO_ACK / REFUSE exchange on
 * each (bodies and checks from ctrl.c), and teardown.  tcp.c moves the bytes.
 */
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "transport/tcp.h"

/* Bounds on what peers that have not finished HELLO can hold. */
#define TCP_PENDING 32		/* sockets whose HELLO is not whole yet */
#define TCP_SOURCES 4		/* sources with some, not all, channels */

struct tcp_pending {
	int fd;
	uint64_t deadline;	/* its own: timeout_ms from its accept */
	struct tcp_tls *tls;	/* TLS: the session being set up, then in use */
	bool shaken;		/* TLS: the handshake is done */
	short events;		/* what the next step waits for */
	size_t got;
	uint8_t buf[sizeof(struct rm_wire_hdr) + 64];	/* room to name a wrong length */
};

struct tcp_source {
	struct tcp_conn *c;	/* NULL: a free slot */
	unsigned have;		/* channels connected */
	uint64_t deadline;	/* its own: timeout_ms from its first HELLO */
};

struct tcp_listener {
	struct rm_listener base;	/* first */
	int fd;
	struct tcp_tls_ctx *tls;	/* opts.tls */
	struct tcp_pending pending[TCP_PENDING];
	unsigned npending;
	struct tcp_source src[TCP_SOURCES];
};

/*
 * No SO_KEEPALIVE and no TCP_USER_TIMEOUT: liveness is the protocol's own
 * (KEEPALIVE messages, ctrl.c).  The kernel's would judge by other clocks —
 * keepalive counts from the last data *received*, so a channel that only
 * sends died after timeout_ms; a user timeout fails a receiver's closed
 * window, which a slow but live peer may hold open longer.
 */
static void tune_socket(int fd)
{
	int one = 1;
	int buf = 4 << 20;

	/* Best effort: the defaults still work, only slower. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
}

/* ---- handshake frames on a bare socket (no connection object yet) ---- */

static int send_bare(const atomic_int *cancel, int fd, struct tcp_tls *tls, uint16_t type,
		     const void *body, size_t blen, uint64_t deadline)
{
	struct rm_wire_hdr h;
	struct iovec iov[2] = {
		{ .iov_base = &h, .iov_len = sizeof(h) },
		{ .iov_base = (void *)body, .iov_len = blen },
	};

	rm_wire_hdr_init(&h, type, 0, blen, 0);
	return tcp_send_iov(NULL, cancel, fd, tls, iov, 2, deadline);
}

static void send_refuse(const atomic_int *cancel, int fd, struct tcp_tls *tls, uint32_t reason,
			const char *why)
{
	struct rm_wire_refuse_body r;

	rm_warn("transport tcp: refusing a peer: %s: %s", rm_wire_refuse_name(reason), why);
	rm_ctrl_refuse_body(&r, reason, why);
	send_bare(cancel, fd, tls, RM_WIRE_REFUSE, &r, sizeof(r), rm_deadline(1000));
}

/* Receive one handshake frame of at most cap body bytes. */
static int recv_bare(const atomic_int *cancel, int fd, struct tcp_tls *tls, uint16_t *type,
		     void *body, size_t cap, size_t *blen, int timeout_ms)
{
	struct rm_wire_hdr h;
	int err = tcp_recv_all(NULL, cancel, fd, tls, -1, &h, sizeof(h), timeout_ms, false);
	size_t len;

	if (err)
		return err;
	*type = rm_wire_get16(h.type);
	len = rm_wire_get32(h.len);
	if (len > cap || h.flags || h.credits || h.reserved) {
		rm_err("transport tcp: handshake frame %s of %zu bytes with flags %#x, expected at most %zu bytes and no flags",
		       rm_wire_type_name(*type), len, rm_wire_get16(h.flags), cap);
		return RDMAMIG_E_PROTO;
	}
	*blen = len;
	return tcp_recv_all(NULL, cancel, fd, tls, -1, body, len, timeout_ms, false);
}

/* ---- the connection object ---- */

struct tcp_conn *tcp_conn_new(const struct rm_transport_opts *o, enum rm_role role, unsigned nchan)
{
	struct tcp_conn *c = rm_tr_new(sizeof(*c), &rm_transport_tcp_ops, o, role, nchan,
				       RM_WIRE_MAX_FRAG);

	for (unsigned i = 0; c && i < RM_WIRE_MAX_CHANNELS; i++) {
		c->ch[i].fd = -1;
		pthread_mutex_init(&c->ch[i].tx_lock, NULL);
	}
	return c;
}

int tcp_close(struct rm_transport *t)
{
	struct tcp_conn *c = (struct tcp_conn *)t;
	int first = 0;

	if (!c)
		return 0;
	rm_ctrl_live_stop(t);
	if (!atomic_load(&c->base.error)) {
		for (unsigned i = 0; i < c->base.nchan; i++)
			if (c->ch[i].fd >= 0)
				t->ops->post(t, i, RM_WIRE_BYE, 0, NULL, 0, NULL, 0, rm_deadline(1000));
	}
	atomic_store(&c->stopping, true);
	for (unsigned i = 0; i < RM_WIRE_MAX_CHANNELS; i++) {
		if (c->ch[i].rx_started) {
			int err = pthread_join(c->ch[i].rx, NULL);

			if (err && !first)
				first = -err;
		}
		tcp_tls_free(c->ch[i].tls);
		if (c->ch[i].fd >= 0 && close(c->ch[i].fd) < 0 && !first)
			first = -errno;
		pthread_mutex_destroy(&c->ch[i].tx_lock);
	}
	rm_tr_destroy(&c->base);
	free(c);
	return first;
}

/* ---- listen / accept ---- */

int tcp_listen(const struct rm_transport_opts *in, struct rm_listener **out)
{
	struct tcp_listener *l;
	struct addrinfo *res, *ai;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int err, one = 1;

	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->fd = -1;
	err = rm_tr_listener_init(&l->base, &rm_transport_tcp_ops, in, &res);
	if (err)
		goto free_l;
	if (l->base.opts.tls) {
		l->tls = tcp_tls_ctx_new(l->base.opts.psk, l->base.opts.psk_len, true);
		if (!l->tls) {
			freeaddrinfo(res);
			err = -ENOMEM;
			goto free_l;
		}
	}
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
	err = rm_set_nonblock(l->fd);
	if (err)
		goto close_fd;
	if (getsockname(l->fd, (struct sockaddr *)&ss, &sl) < 0) {
		err = -errno;
		goto close_fd;
	}
	l->base.port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						 : ((struct sockaddr_in *)&ss)->sin_port);
	*out = (struct rm_listener *)l;
	return 0;

close_fd:
	close(l->fd);
free_l:
	tcp_tls_ctx_free(l->tls);
	free(l);
	return err;
}

void tcp_listener_close(struct rm_listener *lp)
{
	struct tcp_listener *l = (struct tcp_listener *)lp;

	for (unsigned i = 0; i < l->npending; i++) {
		tcp_tls_free(l->pending[i].tls);
		close(l->pending[i].fd);
	}
	for (unsigned i = 0; i < TCP_SOURCES; i++)
		if (l->src[i].c)
			rm_tr_abandon(&l->src[i].c->base, -ECANCELED);
	if (l->fd >= 0)
		close(l->fd);
	tcp_tls_ctx_free(l->tls);
	free(l);
}

static void drop_pending(struct tcp_listener *l, unsigned i)
{
	tcp_tls_free(l->pending[i].tls);
	close(l->pending[i].fd);
	l->pending[i] = l->pending[--l->npending];
}

/* The source a HELLO belongs to (by session), or a free slot for a new one
 * (c NULL), or NULL when every slot holds another source. */
static struct tcp_source *source_for(struct tcp_listener *l, uint64_t session)
{
	struct tcp_source *free_slot = NULL;

	for (unsigned i = 0; i < TCP_SOURCES; i++) {
		if (l->src[i].c && l->src[i].c->base.session == session)
			return &l->src[i];
		if (!l->src[i].c && !free_slot)
			free_slot = &l->src[i];
	}
	return free_slot;
}

/*
 * A whole HELLO arrived on pending socket i: refuse it, or give the socket
 * to its source as channel chan.  Returns the source when that made it
 * complete, else NULL; *err on a failure of our own (-ENOMEM).
 */
static struct tcp_source *take_hello(struct tcp_listener *l, unsigned i, int *err)
{
	struct tcp_pending *p = &l->pending[i];
	bool auth = l->base.opts.psk_len != 0;
	struct rm_wire_hello_ack ack;
	struct rm_wire_hello h;
	struct rm_wire_hdr hdr;
	struct tcp_source *s;
	uint32_t reason;
	unsigned chan = 0;
	char why[96];
	int fd = p->fd;
	struct tcp_tls *tls = p->tls;

	memcpy(&hdr, p->buf, sizeof(hdr));
	reason = rm_ctrl_hello_parse(rm_wire_get16(hdr.type), p->buf + sizeof(hdr),
				     rm_wire_get32(hdr.len), false, auth, &h, why, sizeof(why));
	s = reason ? NULL : source_for(l, rm_wire_get64(h.session));
	if (!reason && !s) {
		snprintf(why, sizeof(why), "%u sources are connecting already", TCP_SOURCES);
		reason = RM_REFUSE_BUSY;
	}
	if (!reason) {
		chan = rm_wire_get16(h.chan);	/* < nchan <= RM_WIRE_MAX_CHANNELS */
		reason = rm_ctrl_hello_join(&h, s->c ? &s->c->base : NULL, rm_wire_get64(h.session),
					    s->c && s->c->ch[chan].fd >= 0, why, sizeof(why));
	}
	l->pending[i] = l->pending[--l->npending];	/* the socket is ours now */
	if (reason) {
		if (reason == RM_REFUSE_AUTH)
			atomic_fetch_add(&l->base.refused_auth, 1);
		send_refuse(l->base.opts.cancel, fd, tls, reason, why);
		tcp_tls_free(tls);
		close(fd);
		return NULL;
	}
	if (!s->c) {
		s->c = tcp_conn_new(&l->base.opts, RM_ROLE_DEST, rm_wire_get16(h.nchan));
		if (!s->c) {
			tcp_tls_free(tls);
			close(fd);
			*err = -ENOMEM;
			return NULL;
		}
		s->c->base.session = rm_wire_get64(h.session);
		s->c->base.peer_max_write = rm_wire_get32(h.max_write);
		s->have = 0;
		s->deadline = rm_deadline(l->base.opts.timeout_ms);
	}
	rm_ctrl_hello_ack(&ack, &h, 0, 0, auth);
	if (send_bare(l->base.opts.cancel, fd, tls, RM_WIRE_HELLO_ACK, &ack, sizeof(ack),
		      rm_deadline(1000))) {
		tcp_tls_free(tls);
		close(fd);
		return NULL;
	}
	s->c->ch[chan].fd = fd;
	s->c->ch[chan].tls = tls;
	return ++s->have == s->c->base.nchan ? s : NULL;
}

/*
 * TLS: one step of pending socket i's handshake; 1 once done, 0 for more,
 * -1 when it was dropped.  A peer whose first byte is no TLS record is told,
 * in the clear, to give --tls: it is an rdmamig source without it, and
 * reads REFUSE where a TLS alert would mean nothing to it.
 */
static int shake_hello(struct tcp_listener *l, unsigned i)
{
	struct tcp_pending *p = &l->pending[i];
	char why[128];
	uint8_t first;
	int r;

	if (!p->tls) {
		ssize_t n = recv(p->fd, &first, 1, MSG_PEEK);

		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return 0;
		if (n <= 0) {
			rm_warn("transport tcp: dropping a peer that closed before its TLS handshake");
			drop_pending(l, i);
			return -1;
		}
		if (!tcp_tls_looks_like_tls(first)) {
			send_refuse(l->base.opts.cancel, p->fd, NULL, RM_REFUSE_TLS,
				    "this destination runs --tls: give --tls");
			drop_pending(l, i);
			return -1;
		}
		p->tls = tcp_tls_new(l->tls, p->fd);
		if (!p->tls) {
			drop_pending(l, i);
			return -1;
		}
	}
	r = tcp_tls_handshake(p->tls, &p->events, why, sizeof(why));
	if (r < 0) {
		if (r == RDMAMIG_E_AUTH)
			atomic_fetch_add(&l->base.refused_auth, 1);
		rm_warn("transport tcp: refusing a peer: %s", why);
		drop_pending(l, i);
		return -1;
	}
	if (r == 1) {
		p->shaken = true;
		p->events = POLLIN;
	}
	return r;
}

/* Read what pending socket i has; 1 when its HELLO is whole, 0 for more,
 * -1 when it was dropped. */
static int read_hello(struct tcp_listener *l, unsigned i)
{
	struct tcp_pending *p = &l->pending[i];
	size_t want = sizeof(struct rm_wire_hdr);
	short ev = POLLIN;
	ssize_t n;

	if (l->tls && !p->shaken) {
		int r = shake_hello(l, i);

		if (r != 1)
			return r;
	}
	if (p->got >= want) {
		struct rm_wire_hdr h;

		memcpy(&h, p->buf, sizeof(h));
		if (rm_wire_get32(h.len) > sizeof(p->buf) - sizeof(h) || h.flags || h.credits ||
		    h.reserved) {
			rm_warn("transport tcp: dropping a peer whose first frame is no HELLO (%s of %u bytes)",
				rm_wire_type_name(rm_wire_get16(h.type)), rm_wire_get32(h.len));
			drop_pending(l, i);
			return -1;
		}
		want += rm_wire_get32(h.len);
		if (p->got == want)
			return 1;
	}
	n = tcp_io_recv(p->tls, p->fd, p->buf + p->got, want - p->got, &ev);
	if (n > 0) {
		if (!p->got && !l->tls && tcp_tls_looks_like_tls(p->buf[0])) {
			rm_warn("transport tcp: dropping a peer that speaks TLS: this destination runs "
				"without --tls; give --tls on both sides");
			drop_pending(l, i);
			return -1;
		}
		p->got += (size_t)n;
		/* Read on: TLS may hold the rest of a record, which no poll
		 * would announce. */
		return read_hello(l, i);
	}
	if (n == -EAGAIN) {
		p->events = ev;
		return 0;
	}
	rm_warn("transport tcp: dropping a peer that closed before its HELLO");
	drop_pending(l, i);
	return -1;
}

/* Drop what outlived its own deadline; the earliest deadline left. */
static uint64_t expire(struct tcp_listener *l, uint64_t now, uint64_t next)
{
	for (unsigned i = 0; i < l->npending;) {
		if (l->pending[i].deadline <= now) {
			rm_warn("transport tcp: dropping a peer that sent no HELLO within %d ms",
				l->base.opts.timeout_ms);
			drop_pending(l, i);
			continue;
		}
		if (l->pending[i].deadline < next)
			next = l->pending[i].deadline;
		i++;
	}
	for (unsigned i = 0; i < TCP_SOURCES; i++) {
		struct tcp_source *s = &l->src[i];

		if (!s->c)
			continue;
		if (s->deadline <= now) {
			rm_warn("transport tcp: dropping a source that connected %u of %u channels within %d ms",
				s->have, s->c->base.nchan, l->base.opts.timeout_ms);
			rm_tr_abandon(&s->c->base, -ETIMEDOUT);
			s->c = NULL;
		} else if (s->deadline < next) {
			next = s->deadline;
		}
	}
	return next;
}

/*
 * Every connection gets its own deadline (timeout_ms from its accept or its
 * first HELLO), and all are served by one poll(): a peer that stays silent
 * costs a slot until its own deadline, never another peer's time.  What is
 * pending outlives this call, which returns at `deadline` with -ETIMEDOUT.
 */
int tcp_accept(struct rm_listener *lp, uint64_t deadline, struct rm_transport **out)
{
	struct tcp_listener *l = (struct tcp_listener *)lp;

	for (;;) {
		struct pollfd p[1 + TCP_PENDING];
		uint64_t now = rm_now_ns(), next = expire(l, now, deadline);
		int slice, n, err = 0;

		if (now >= deadline)
			return -ETIMEDOUT;
		if (rm_cancelled(l->base.opts.cancel))
			return -ECANCELED;
		p[0] = (struct pollfd){ .fd = l->npending < TCP_PENDING ? l->fd : -1, .events = POLLIN };
		for (unsigned i = 0; i < l->npending; i++)
			p[1 + i] = (struct pollfd){ .fd = l->pending[i].fd,
						    .events = l->pending[i].events };
		slice = rm_ms_left(next);
		n = poll(p, 1 + l->npending, slice < TCP_SLICE_MS ? (slice ? slice : 1) : TCP_SLICE_MS);
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n <= 0)
			continue;
		/* Pending sockets first, from the back: read_hello() and
		 * take_hello() move the last entry into the freed slot. */
		for (unsigned i = l->npending; i-- > 0;) {
			struct tcp_source *s;

			if (!p[1 + i].revents || read_hello(l, i) != 1)
				continue;
			s = take_hello(l, i, &err);
			if (err)
				return err;
			if (s) {
				struct tcp_conn *c = s->c;

				s->c = NULL;
				err = tcp_start_rx(c);
				if (err)
					return rm_tr_abandon(&c->base, err);
				rm_info("transport tcp: accepted a source with %u channels (%s)",
					c->base.nchan, tcp_conn_tls_text(c, (char[160]){ 0 }, 160));
				*out = &c->base;
				return 0;
			}
		}
		while (p[0].revents && l->npending < TCP_PENDING) {
			int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

			if (fd < 0)
				break;
			tune_socket(fd);
			l->pending[l->npending++] = (struct tcp_pending){
				.fd = fd, .deadline = rm_deadline(l->base.opts.timeout_ms),
				.events = POLLIN,
			};
		}
	}
}

/* ---- connect ---- */

static int connect_one(const struct rm_transport_opts *o, uint64_t deadline, int *out)
{
	struct addrinfo *res, *ai;
	int err, fd = -1;

	err = rm_resolve("tcp", o->addr, o->port, false, &res);
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
			err = tcp_wait_fd(NULL, o->cancel, fd, POLLOUT, deadline);
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
	tune_socket(fd);
	*out = fd;
	return 0;
}

/* TLS: the client's handshake on channel i, bounded by deadline. */
static int tls_connect(struct tcp_conn *c, struct tcp_tls_ctx *x, unsigned i, uint64_t deadline)
{
	struct tcp_chan *ch = &c->ch[i];
	char why[128];

	ch->tls = tcp_tls_new(x, ch->fd);
	if (!ch->tls)
		return -ENOMEM;
	for (;;) {
		short ev = POLLIN;
		int r = tcp_tls_handshake(ch->tls, &ev, why, sizeof(why));

		if (r == 1)
			return 0;
		if (r < 0) {
			rm_err("transport tcp: channel %u: %s", i, why);
			return r;
		}
		r = tcp_wait_fd(NULL, c->base.opts.cancel, ch->fd, ev, deadline);
		if (r) {
			rm_err("transport tcp: channel %u: TLS handshake: %s", i, rdmamig_strerror(r));
			return r;
		}
	}
}

int tcp_connect(const struct rm_transport_opts *o, uint64_t session, uint64_t deadline,
		struct rm_transport **out)
{
	struct tcp_conn *c = tcp_conn_new(o, RM_ROLE_SOURCE, o->nchan);
	struct tcp_tls_ctx *x = NULL;
	char text[160];
	int err;

	if (!c)
		return -ENOMEM;
	c->base.session = session;
	if (o->tls && !(x = tcp_tls_ctx_new(o->psk, o->psk_len, false))) {
		err = -ENOMEM;
		goto fail;
	}
	for (unsigned i = 0; i < o->nchan; i++) {
		struct rm_wire_hello h;
		struct rm_wire_hello_ack ack;
		union {
			struct rm_wire_hello_ack ack;
			struct rm_wire_refuse_body rf;
		} u;
		uint16_t type;
		size_t blen;

		rm_ctrl_hello(&h, o, i, session, 0);
		err = connect_one(o, deadline, &c->ch[i].fd);
		if (err) {
			rm_err("transport tcp: cannot connect channel %u to [%s]:%s: %s", i, o->addr,
			       o->port, rdmamig_strerror(err));
			goto fail;
		}
		if (x) {
			err = tls_connect(c, x, i, deadline);
			if (err)
				goto fail;
		}
		err = send_bare(o->cancel, c->ch[i].fd, c->ch[i].tls, RM_WIRE_HELLO, &h, sizeof(h),
				deadline);
		if (!err)
			err = recv_bare(o->cancel, c->ch[i].fd, c->ch[i].tls, &type, &u, sizeof(u),
					&blen, rm_ms_left(deadline) ?: 1);
		if (err) {
			rm_err("transport tcp: handshake on channel %u: %s", i, rdmamig_strerror(err));
			goto fail;
		}
		err = rm_ctrl_hello_reply("tcp", i, type, &u, blen, &h, 0, &ack);
		if (err)
			goto fail;
	}
	err = tcp_start_rx(c);
	if (err)
		goto fail;
	tcp_tls_ctx_free(x);	/* the sessions keep what they need */
	rm_info("transport tcp: connected %u channels (%s)", c->base.nchan,
		tcp_conn_tls_text(c, text, sizeof(text)));
	*out = &c->base;
	return 0;

fail:
	tcp_tls_ctx_free(x);
	return rm_tr_abandon(&c->base, err);
}

enum tcp_tls_path tcp_conn_tls_path(const struct tcp_conn *c)
{
	enum tcp_tls_path path = tcp_tls_path(c->ch[0].tls);

	for (unsigned i = 1; i < c->base.nchan; i++)
		if (tcp_tls_path(c->ch[i].tls) < path)
			path = tcp_tls_path(c->ch[i].tls);
	return path;
}

const char *tcp_conn_tls_text(const struct tcp_conn *c, char *buf, size_t n)
{
	const struct tcp_tls *weakest = c->ch[0].tls;

	for (unsigned i = 1; i < c->base.nchan; i++)
		if (tcp_tls_path(c->ch[i].tls) < tcp_tls_path(weakest))
			weakest = c->ch[i].tls;
	if (!weakest) {
		snprintf(buf, n, "no TLS: the stream, guest RAM included, is in the clear");
		return buf;
	}
	tcp_tls_describe(weakest, buf, n);
	return buf;
}
