/*
 * transport/tcp.h — what the TCP backend's two files share: the connection
 * object, and the socket helpers tcp.c provides to tcp-conn.c.  Private to
 * the TCP backend.
 */
#ifndef RDMAMIG_TRANSPORT_TCP_H
#define RDMAMIG_TRANSPORT_TCP_H

#include <pthread.h>
#include <sys/uio.h>

#include "transport/priv.h"
#include "transport/tcp-tls.h"

#define TCP_SLICE_MS 100
#define TCP_TX_FRAMES 128	/* WRITE frames batched per writev */

struct tcp_chan {
	int fd;
	struct tcp_tls *tls;		/* opts.tls: the channel's TLS session */
	pthread_t rx;
	bool rx_started;
	/* Every sendmsg on fd is made under tx_lock: frames from the owner,
	 * the rx thread (ABORT) and the liveness thread (KEEPALIVE). */
	pthread_mutex_t tx_lock;
	/* Owner: WRITE frames queued and not all sent yet, so another frame
	 * must not go in between (KEEPALIVE waits for a round without). */
	atomic_bool tx_busy;
	/* source write batching */
	struct rm_wire_hdr hdr[TCP_TX_FRAMES];
	struct rm_wire_write body[TCP_TX_FRAMES];
	struct iovec iov[TCP_TX_FRAMES * 3];
	unsigned nframes;		/* frames queued in iov */
	unsigned iov_next;		/* first iovec not yet sent */
	int iov_left;			/* iovecs not yet sent */
};

struct tcp_conn {
	struct rm_transport base;	/* first */
	struct tcp_chan ch[RM_WIRE_MAX_CHANNELS];
	atomic_bool stopping;
	atomic_bool ram_ready;		/* destination: WRITE frames accepted */
	unsigned next_chan;
	atomic_uint_fast64_t rx_bytes, rx_writes;
};

extern const struct rm_transport_ops rm_transport_tcp_ops;

/* tcp.c: socket I/O, bounded by deadlines and ended by c's error or cancel,
 * or by *cancel (c is NULL in the handshake; cancel may be NULL). */
int tcp_wait_fd(struct tcp_conn *c, const atomic_int *cancel, int fd, short events,
		uint64_t deadline);
int tcp_send_iov(struct tcp_conn *c, const atomic_int *cancel, int fd, struct tcp_tls *tls,
		 struct iovec *iov, int cnt, uint64_t deadline);
/* chan >= 0: c's channel, whose bytes count as heard from the peer. */
int tcp_recv_all(struct tcp_conn *c, const atomic_int *cancel, int fd, struct tcp_tls *tls,
		 int chan, void *buf, size_t len, int timeout_ms, bool idle_ok);
/* tcp.c: one receiver thread per channel. */
int tcp_start_rx(struct tcp_conn *c);

/* tcp-conn.c: the connection object and its teardown. */
struct tcp_conn *tcp_conn_new(const struct rm_transport_opts *o, enum rm_role role, unsigned nchan);
int tcp_close(struct rm_transport *t);
int tcp_listen(const struct rm_transport_opts *in, struct rm_listener **out);
int tcp_accept(struct rm_listener *lp, uint64_t deadline, struct rm_transport **out);
void tcp_listener_close(struct rm_listener *lp);
int tcp_connect(const struct rm_transport_opts *o, uint64_t session, uint64_t deadline,
		struct rm_transport **out);
/* The weakest TLS path over c's channels, and its text for logs (buf). */
enum tcp_tls_path tcp_conn_tls_path(const struct tcp_conn *c);
const char *tcp_conn_tls_text(const struct tcp_conn *c, char *buf, size_t n);

#endif
