/*
 * transport/tcp-tls.h — TLS for the TCP backend (opts.tls): TLS 1.3 with an
 * external pre-shared key derived from opts.psk, on every channel, from the
 * first byte on.  tcp.c and tcp-conn.c move every byte through tcp_io_send()
 * and tcp_io_recv(), which are plain sendmsg/recv on a socket without TLS,
 * and kernel TLS where the kernel took the record layer over.  Private to
 * the TCP backend.
 */
#ifndef RDMAMIG_TRANSPORT_TCP_TLS_H
#define RDMAMIG_TRANSPORT_TCP_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct tcp_tls_ctx;		/* one per listener or connect: the key, the settings */
struct tcp_tls;			/* one TLS session on one socket */

/* Which way the records of a channel are made; the weakest over a
 * connection's channels is what its stats report. */
enum tcp_tls_path {
	TCP_TLS_OFF = 0,	/* no TLS: the stream is in the clear */
	TCP_TLS_USER = 1,	/* OpenSSL encrypts and decrypts in userspace */
	TCP_TLS_KERNEL_TX = 2,	/* the kernel encrypts what we send; OpenSSL
				 * decrypts what we receive */
	TCP_TLS_KERNEL = 3,	/* the kernel does both */
};

/* A context for the server (destination) or client (source) side, keyed by
 * the pre-shared key.  NULL (logged) on failure. */
struct tcp_tls_ctx *tcp_tls_ctx_new(const uint8_t *psk, unsigned psk_len, bool server);
void tcp_tls_ctx_free(struct tcp_tls_ctx *x);

/* A TLS session on connected non-blocking socket fd.  NULL on -ENOMEM. */
struct tcp_tls *tcp_tls_new(struct tcp_tls_ctx *x, int fd);
void tcp_tls_free(struct tcp_tls *s);

/*
 * One non-blocking step of the handshake: 1 when done, 0 when it must wait
 * for *events on the socket, else an error with why filled:
 * RDMAMIG_E_AUTH (the peer holds another key), RDMAMIG_E_PROTO (the peer
 * does not speak TLS, or badly), -ECONNRESET (it hung up: a peer without
 * --tls closes on our first bytes), -ENOMEM.
 */
int tcp_tls_handshake(struct tcp_tls *s, short *events, char *why, size_t n);

enum tcp_tls_path tcp_tls_path(const struct tcp_tls *s);
/* For logs: "TLS 1.3 TLS_AES_128_GCM_SHA256, kernel TLS both ways". */
void tcp_tls_describe(const struct tcp_tls *s, char *buf, size_t n);

/*
 * Non-blocking I/O on fd, through s (NULL: no TLS).  send: bytes of the
 * iovec array taken (> 0), -EAGAIN with *events to wait for, or -errno
 * (-ECONNRESET for a peer gone).  After -EAGAIN the caller must offer the
 * same bytes again (TLS retries a record it began).  recv: bytes read
 * (> 0), 0 at the peer's end of stream, -EAGAIN with *events, or -errno
 * (RDMAMIG_E_PROTO for a record that does not decrypt).  Any thread; a
 * session's sends are serialized by the caller, and its sends and receives
 * may run at once.
 */
ssize_t tcp_io_send(struct tcp_tls *s, int fd, const struct iovec *iov, int cnt, short *events);
ssize_t tcp_io_recv(struct tcp_tls *s, int fd, void *buf, size_t len, short *events);

/* Does the first byte a peer sent look like a TLS handshake record? */
static inline bool tcp_tls_looks_like_tls(uint8_t first)
{
	return first == 0x16;	/* TLS record type "handshake" */
}

#endif
