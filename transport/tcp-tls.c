/*
 * transport/tcp-tls.c — TLS on the TCP backend's sockets (tcp-tls.h), with
 * OpenSSL's libssl.
 *
 * TLS 1.3 only, with an external pre-shared key: no certificates.  The TLS
 * key is not opts.psk itself but HMAC-SHA256(psk, RM_TLS_KEY_LABEL), so the
 * key that TLS uses and the key of the AUTH exchange (ctrl-auth.c) are
 * separate keys.  OpenSSL's default key exchange for a PSK is psk_dhe_ke,
 * an (EC)DHE on top of the key, so a key stolen later does not decrypt
 * traffic recorded today.  Both suites offered hash with SHA-256, as the
 * PSK's session must: a suite with another hash would make the server set
 * the key aside and look for a certificate it does not have.
 *
 * Kernel TLS: SSL_OP_ENABLE_KTLS asks OpenSSL to hand the record layer to the
 * kernel's "tls" ULP after the handshake.  OpenSSL 3.0 (Debian 12) does so
 * for TLS 1.3 in the sending direction only; it receives in userspace.  With
 * kernel TX, tcp_io_send() is a plain sendmsg() straight from guest RAM and
 * the kernel encrypts into the socket buffer; without the ULP (a kernel
 * without the tls module) every record goes through SSL_write()/SSL_read().
 * No session tickets are issued, so nothing but application data follows
 * the handshake.
 *
 * OpenSSL writes to the socket with write(), which raises SIGPIPE on a
 * connection the peer closed, and the default SIGPIPE ends the process: a
 * library must not.  So every SSL call runs with SIGPIPE blocked in the
 * calling thread, and a SIGPIPE that call raised is taken back before the
 * mask is restored (the write itself fails with EPIPE, which is what we
 * act on).
 *
 * One SSL object serves a channel's receiver thread and its senders; OpenSSL
 * does not allow two threads in one SSL object at once, so every SSL call
 * holds the session's lock — briefly: the sockets are non-blocking and the
 * waits (poll) happen outside.
 */
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/log.h"
#include "transport/tcp-tls.h"

#define RM_TLS_KEY_LABEL "rdmamig tls psk v1"	/* the TLS key = HMAC(psk, this) */
#define RM_TLS_IDENTITY "rdmamig-v1"		/* the PSK identity both sides use */
#define RM_TLS_SUITES "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"
#define TLS_STAGE 16384		/* one full record of small iovecs gathered */
#define TLS_DIRECT_MIN 4096	/* an iovec this large is written as it is */
#define TLS_DIRECT_MAX (256u << 10)	/* at most per SSL_write of RAM */

_Static_assert(RDMAMIG_TLS_OFF == (int)TCP_TLS_OFF && RDMAMIG_TLS_USER == (int)TCP_TLS_USER &&
	       RDMAMIG_TLS_KERNEL_TX == (int)TCP_TLS_KERNEL_TX &&
	       RDMAMIG_TLS_KERNEL == (int)TCP_TLS_KERNEL, "the public TLS paths are these");

struct tcp_tls_ctx {
	SSL_CTX *ctx;
	uint8_t key[32];
	bool server;
};

struct tcp_tls {
	SSL *ssl;
	pthread_mutex_t lock;		/* every SSL call */
	enum tcp_tls_path path;
	/* Userspace TX: a record SSL_write() began and the socket did not
	 * take yet; OpenSSL wants the same buffer offered again. */
	const void *tx_buf;
	size_t tx_len;
	uint8_t stage[TLS_STAGE];
};

/* SIGPIPE blocked around one SSL call; see the top comment. */
struct nopipe {
	sigset_t old;
};

static void nopipe_begin(struct nopipe *g)
{
	sigset_t pipe;

	sigemptyset(&pipe);
	sigaddset(&pipe, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe, &g->old);
}

/* epipe: the call failed on a closed connection, so it raised SIGPIPE
 * (unless this thread had it blocked before, and so pending, already). */
static void nopipe_end(struct nopipe *g, bool epipe)
{
	if (epipe && !sigismember(&g->old, SIGPIPE)) {
		sigset_t pipe;
		struct timespec now = { 0 };
		int e = errno;

		sigemptyset(&pipe);
		sigaddset(&pipe, SIGPIPE);
		while (sigtimedwait(&pipe, NULL, &now) == SIGPIPE)
			;
		errno = e;
	}
	pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

static const unsigned char suite_aes128[2] = { 0x13, 0x01 };	/* TLS_AES_128_GCM_SHA256 */

/* The PSK as the session OpenSSL resumes from: the key and a SHA-256 suite. */
static SSL_SESSION *psk_session(SSL *ssl)
{
	struct tcp_tls_ctx *x = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	const SSL_CIPHER *c = SSL_CIPHER_find(ssl, suite_aes128);
	SSL_SESSION *s = SSL_SESSION_new();

	if (!s || !c || !SSL_SESSION_set1_master_key(s, x->key, sizeof(x->key)) ||
	    !SSL_SESSION_set_cipher(s, c) || !SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION)) {
		SSL_SESSION_free(s);
		return NULL;
	}
	return s;
}

static int use_psk(SSL *ssl, const EVP_MD *md, const unsigned char **id, size_t *idlen,
		   SSL_SESSION **sess)
{
	/* md is set after a HelloRetryRequest: the suite picked must hash
	 * with SHA-256, which both offered suites do. */
	if (md && md != EVP_sha256()) {
		*sess = NULL;
		*id = NULL;
		*idlen = 0;
		return 1;
	}
	*sess = psk_session(ssl);
	if (!*sess)
		return 0;
	*id = (const unsigned char *)RM_TLS_IDENTITY;
	*idlen = strlen(RM_TLS_IDENTITY);
	return 1;
}

static int find_psk(SSL *ssl, const unsigned char *id, size_t idlen, SSL_SESSION **sess)
{
	*sess = NULL;
	if (idlen != strlen(RM_TLS_IDENTITY) || memcmp(id, RM_TLS_IDENTITY, idlen))
		return 1;	/* unknown identity: no PSK, and so no handshake */
	*sess = psk_session(ssl);
	return *sess ? 1 : 0;
}

struct tcp_tls_ctx *tcp_tls_ctx_new(const uint8_t *psk, unsigned psk_len, bool server)
{
	static const char label[] = RM_TLS_KEY_LABEL;
	struct tcp_tls_ctx *x = calloc(1, sizeof(*x));
	unsigned klen = 0;

	if (!x)
		return NULL;
	x->server = server;
	if (!HMAC(EVP_sha256(), psk, (int)psk_len, (const unsigned char *)label, sizeof(label) - 1,
		  x->key, &klen) || klen != sizeof(x->key))
		goto fail;
	x->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (!x->ctx || !SSL_CTX_set_min_proto_version(x->ctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set_ciphersuites(x->ctx, RM_TLS_SUITES))
		goto fail;
	SSL_CTX_set_app_data(x->ctx, x);
	SSL_CTX_set_options(x->ctx, SSL_OP_ENABLE_KTLS);
	/* Nothing after the handshake but our own records. */
	SSL_CTX_set_num_tickets(x->ctx, 0);
	if (server)
		SSL_CTX_set_psk_find_session_callback(x->ctx, find_psk);
	else
		SSL_CTX_set_psk_use_session_callback(x->ctx, use_psk);
	return x;

fail:
	rm_err("transport tcp: cannot set up TLS: %s", ERR_reason_error_string(ERR_get_error()));
	tcp_tls_ctx_free(x);
	return NULL;
}

void tcp_tls_ctx_free(struct tcp_tls_ctx *x)
{
	if (!x)
		return;
	SSL_CTX_free(x->ctx);
	OPENSSL_cleanse(x->key, sizeof(x->key));
	free(x);
}

struct tcp_tls *tcp_tls_new(struct tcp_tls_ctx *x, int fd)
{
	struct tcp_tls *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->ssl = SSL_new(x->ctx);
	if (!s->ssl || !SSL_set_fd(s->ssl, fd)) {
		SSL_free(s->ssl);
		free(s);
		return NULL;
	}
	if (x->server)
		SSL_set_accept_state(s->ssl);
	else
		SSL_set_connect_state(s->ssl);
	pthread_mutex_init(&s->lock, NULL);
	return s;
}

void tcp_tls_free(struct tcp_tls *s)
{
	if (!s)
		return;
	/* No close_notify: the protocol's own BYE said goodbye already, and
	 * a connection that failed has nobody to tell. */
	SSL_free(s->ssl);
	pthread_mutex_destroy(&s->lock);
	OPENSSL_cleanse(s->stage, sizeof(s->stage));
	free(s);
}

/* What the failed handshake step says about the peer. */
static int handshake_error(struct tcp_tls *s, int ssl_err, unsigned long e, char *why, size_t n)
{
	int reason = ERR_GET_REASON(e);
	bool server = SSL_is_server(s->ssl);

	if (reason == SSL_R_BINDER_DOES_NOT_VERIFY ||
	    reason == SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER ||
	    reason == SSL_R_TLSV1_ALERT_DECRYPT_ERROR) {
		snprintf(why, n, "the %s's TLS key differs from ours: wrong key; check --psk on both sides",
			 server ? "source" : "destination");
		return RDMAMIG_E_AUTH;
	}
	if ((ssl_err == SSL_ERROR_SYSCALL && !e) || reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
		snprintf(why, n, "the %s hung up in the TLS handshake: does it run with --tls? give "
			 "--tls on both sides", server ? "source" : "destination");
		return -ECONNRESET;
	}
	if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_PACKET_LENGTH_TOO_LONG ||
	    reason == SSL_R_HTTP_REQUEST || reason == SSL_R_UNKNOWN_PROTOCOL) {
		snprintf(why, n, "the %s does not speak TLS: give --tls on both sides",
			 server ? "source" : "destination");
		return RDMAMIG_E_PROTO;
	}
	snprintf(why, n, "TLS handshake: %s", e ? ERR_reason_error_string(e) : "failed");
	return ssl_err == SSL_ERROR_SYSCALL ? -ECONNRESET : RDMAMIG_E_PROTO;
}

int tcp_tls_handshake(struct tcp_tls *s, short *events, char *why, size_t n)
{
	struct nopipe g;
	int r, err;
	unsigned long e;

	ERR_clear_error();
	nopipe_begin(&g);
	r = SSL_do_handshake(s->ssl);
	nopipe_end(&g, r != 1 && errno == EPIPE);
	if (r == 1) {
		bool ktx = BIO_get_ktls_send(SSL_get_wbio(s->ssl)) > 0;
		bool krx = BIO_get_ktls_recv(SSL_get_rbio(s->ssl)) > 0;

		s->path = ktx && krx ? TCP_TLS_KERNEL : ktx ? TCP_TLS_KERNEL_TX : TCP_TLS_USER;
		return 1;
	}
	err = SSL_get_error(s->ssl, r);
	if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
		*events = err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
		return 0;
	}
	e = ERR_peek_error();
	err = handshake_error(s, err, e, why, n);
	ERR_clear_error();
	return err;
}

enum tcp_tls_path tcp_tls_path(const struct tcp_tls *s)
{
	return s ? s->path : TCP_TLS_OFF;
}

void tcp_tls_describe(const struct tcp_tls *s, char *buf, size_t n)
{
	static const char *const how[] = {
		[TCP_TLS_OFF] = "no TLS",
		[TCP_TLS_USER] = "userspace TLS (no kernel TLS here: the kernel offers no tls ULP)",
		[TCP_TLS_KERNEL_TX] = ("kernel TLS sending, userspace TLS receiving (OpenSSL 3.0 "
				       "receives TLS 1.3 in userspace)"),
		[TCP_TLS_KERNEL] = "kernel TLS both ways",
	};

	if (!s) {
		snprintf(buf, n, "%s", how[TCP_TLS_OFF]);
		return;
	}
	snprintf(buf, n, "%s %s, %s", SSL_get_version(s->ssl), SSL_get_cipher_name(s->ssl),
		 how[s->path]);
}

/* An SSL_read/SSL_write that did not complete: wait, or fail. */
static ssize_t io_error(struct tcp_tls *s, int r, int ssl_err, short *events, const char *op)
{
	unsigned long e = ERR_peek_error();

	switch (ssl_err) {
	case SSL_ERROR_WANT_READ:
		*events = POLLIN;
		return -EAGAIN;
	case SSL_ERROR_WANT_WRITE:
		*events = POLLOUT;
		return -EAGAIN;
	case SSL_ERROR_ZERO_RETURN:
		return 0;	/* close_notify: the end of the stream */
	case SSL_ERROR_SYSCALL:
		ERR_clear_error();
		return errno && errno != EPIPE ? -errno : -ECONNRESET;
	}
	ERR_clear_error();
	if (ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
		return 0;
	rm_err("transport tcp: TLS %s: %s", op, e ? ERR_reason_error_string(e) : "failed");
	return RDMAMIG_E_PROTO;
}

ssize_t tcp_io_send(struct tcp_tls *s, int fd, const struct iovec *iov, int cnt, short *events)
{
	const void *buf;
	size_t len, done = 0;
	struct nopipe g;
	int r, err;

	if (!s || s->path >= TCP_TLS_KERNEL_TX) {
		/* No TLS, or the kernel makes the records: the bytes go as
		 * they are, from where they are. */
		struct msghdr mh = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)cnt };
		ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (w >= 0)
			return w;
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
			*events = POLLOUT;
			return -EAGAIN;
		}
		return errno == EPIPE ? -ECONNRESET : -errno;
	}
	if (s->tx_len) {
		buf = s->tx_buf;	/* the record begun: the caller offers the same bytes */
		len = s->tx_len;
	} else if (iov[0].iov_len >= TLS_DIRECT_MIN) {
		buf = iov[0].iov_base;
		len = iov[0].iov_len < TLS_DIRECT_MAX ? iov[0].iov_len : TLS_DIRECT_MAX;
	} else {
		/* Small pieces (frame headers and bodies, and what follows them
		 * up to a full record) go out as one record. */
		for (int i = 0; i < cnt && done < sizeof(s->stage); i++) {
			size_t take = iov[i].iov_len < sizeof(s->stage) - done ? iov[i].iov_len
									       : sizeof(s->stage) - done;

			if (!take)
				continue;	/* an empty body: its base may be NULL */
			memcpy(s->stage + done, iov[i].iov_base, take);
			done += take;
		}
		buf = s->stage;
		len = done;
	}
	if (!len)
		return 0;
	pthread_mutex_lock(&s->lock);
	ERR_clear_error();
	nopipe_begin(&g);
	r = SSL_write_ex(s->ssl, buf, len, &done);
	nopipe_end(&g, r != 1 && errno == EPIPE);
	err = r == 1 ? SSL_ERROR_NONE : SSL_get_error(s->ssl, r);
	pthread_mutex_unlock(&s->lock);
	if (r == 1) {
		s->tx_len = 0;
		return (ssize_t)done;
	}
	r = (int)io_error(s, r, err, events, "send");
	if (r == -EAGAIN) {
		s->tx_buf = buf;
		s->tx_len = len;
	}
	return r ? r : -ECONNRESET;
}

ssize_t tcp_io_recv(struct tcp_tls *s, int fd, void *buf, size_t len, short *events)
{
	size_t got = 0;
	struct nopipe g;
	int r, err;

	if (!s || s->path == TCP_TLS_KERNEL) {
		ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);

		if (n >= 0)
			return n;
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
			*events = POLLIN;
			return -EAGAIN;
		}
		/* Kernel TLS: a record that does not decrypt, or one that is
		 * not application data. */
		if (s && (errno == EBADMSG || errno == EIO)) {
			rm_err("transport tcp: kernel TLS refused a record: %s", strerror(errno));
			return RDMAMIG_E_PROTO;
		}
		return -errno;
	}
	pthread_mutex_lock(&s->lock);
	ERR_clear_error();
	/* A read may write too: an alert, when the record is bad. */
	nopipe_begin(&g);
	r = SSL_read_ex(s->ssl, buf, len, &got);
	nopipe_end(&g, r != 1 && errno == EPIPE);
	err = r == 1 ? SSL_ERROR_NONE : SSL_get_error(s->ssl, r);
	pthread_mutex_unlock(&s->lock);
	if (r == 1)
		return (ssize_t)got;
	return io_error(s, r, err, events, "receive");
}
