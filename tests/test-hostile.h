/*
 * tests/test-hostile.h — what the hostile-peer suites share: the library's
 * log kept for assertions, a raw TCP wire (frames, CTRL fragments, engine
 * messages, bounded send/receive), and a library destination at the
 * transport level with a raw source to connect to it.  Included by
 * test-hostile.c (a hostile source: handshake and frames) and
 * test-hostile-peer.c (a hostile destination, the engine, authentication).
 * Helpers are static inline so a suite that leaves one unused still builds.
 */
#ifndef RDMAMIG_TEST_HOSTILE_H
#define RDMAMIG_TEST_HOSTILE_H
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fake-vmm.h"
#include "migration/protocol.h"
#include "transport/priv.h"

#define TMO_MS 1500			/* the library's timeout in every case */
#define BOUND_MS (3 * TMO_MS + 2000)	/* what "no hang" allows */
#define MiB (1ull << 20)
#define PROTO RDMAMIG_E_PROTO

/* ---- the library's log, kept for assertions ---- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char logbuf[32768];
static size_t loglen;

static inline void keep_log(void *o, enum rdmamig_log_level l, const char *msg)
{
	size_t n = strlen(msg);

	pthread_mutex_lock(&log_lock);
	if (n + 2 < sizeof(logbuf) - loglen) {
		memcpy(logbuf + loglen, msg, n);
		loglen += n;
		logbuf[loglen++] = '\n';
		logbuf[loglen] = 0;
	}
	pthread_mutex_unlock(&log_lock);
	if (getenv("RDMAMIG_TEST_VERBOSE"))
		fprintf(stderr, "  [lib] %s\n", msg);
}

static inline void log_start(void)
{
	pthread_mutex_lock(&log_lock);
	loglen = 0;
	logbuf[0] = 0;
	pthread_mutex_unlock(&log_lock);
	rdmamig_set_log(keep_log, NULL, RDMAMIG_LOG_DEBUG);
}

static inline bool log_has(const char *s)
{
	bool r;

	pthread_mutex_lock(&log_lock);
	r = strstr(logbuf, s) != NULL;
	pthread_mutex_unlock(&log_lock);
	return r;
}

#define assert_log(what, ...) \
	cr_assert(log_has(what), __VA_ARGS__)

static inline uint64_t now_ms(void)
{
	return rm_now_ns() / 1000000;
}

/* Join a thread, failing the test (not hanging it) past the bound. */
static inline void join_bounded(pthread_t th, const char *what)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += BOUND_MS / 1000 + 1;
	cr_assert_eq(pthread_timedjoin_np(th, NULL, &ts), 0, "%s: still running after %d ms: a hang",
		     what, BOUND_MS);
}

/* ---- raw wire ---- */

/* Append a frame with a header as given (len may lie) and blen body bytes. */
static inline size_t put_frame(uint8_t *buf, uint16_t type, uint16_t flags, uint32_t len, uint32_t credits,
			uint32_t reserved, const void *body, size_t blen)
{
	struct rm_wire_hdr h = {
		.type = rm_wire_put16(type), .flags = rm_wire_put16(flags), .len = rm_wire_put32(len),
		.credits = rm_wire_put32(credits), .reserved = rm_wire_put32(reserved),
	};

	memcpy(buf, &h, sizeof(h));
	if (blen)
		memcpy(buf + sizeof(h), body, blen);
	return sizeof(h) + blen;
}

static inline size_t frame(uint8_t *buf, uint16_t type, uint16_t flags, const void *body, size_t blen)
{
	return put_frame(buf, type, flags, (uint32_t)blen, 0, 0, body, blen);
}

/* One CTRL fragment: header, body header as given, n payload bytes. */
static inline size_t ctrl_frag(uint8_t *buf, uint16_t flags, uint16_t type, uint32_t frag, uint64_t total,
			uint64_t epoch, const void *data, size_t n)
{
	struct rm_wire_ctrl b = {
		.type = rm_wire_put16(type), .frag_len = rm_wire_put32(frag),
		.total_len = rm_wire_put64(total), .epoch = rm_wire_put64(epoch),
	};
	size_t off = put_frame(buf, RM_WIRE_CTRL, flags, (uint32_t)(sizeof(b) + n), 0, 0, &b, sizeof(b));

	if (n)
		memcpy(buf + off, data, n);
	return off + n;
}

/* A whole engine message in one fragment. */
static inline size_t engine_msg(uint8_t *buf, uint16_t type, const void *data, size_t n)
{
	return ctrl_frag(buf, RM_WIRE_F_FIRST | RM_WIRE_F_LAST, type, (uint32_t)n, n, 0, data, n);
}

static inline void send_all(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = send(fd, (const char *)buf + done, len - done, MSG_NOSIGNAL);

		if (n <= 0)
			return;	/* the library may close on us mid-way: that is its right */
		done += (size_t)n;
	}
}

static inline int recv_all(int fd, void *buf, size_t len, int timeout_ms)
{
	size_t got = 0;

	while (got < len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&p, 1, timeout_ms) <= 0)
			return -ETIMEDOUT;
		n = recv(fd, (char *)buf + got, len - got, 0);
		if (n <= 0)
			return -ECONNRESET;
		got += (size_t)n;
	}
	return 0;
}

/* Next frame: type, first cap bytes of the body (rest skipped), its length. */
static inline int recv_frame(int fd, uint16_t *type, uint16_t *flags, void *body, size_t cap, uint32_t *len)
{
	struct rm_wire_hdr h;
	uint8_t skip[4096];
	uint32_t n, left;
	int err = recv_all(fd, &h, sizeof(h), BOUND_MS);

	if (err)
		return err;
	*type = rm_wire_get16(h.type);
	*flags = rm_wire_get16(h.flags);
	n = rm_wire_get32(h.len);
	*len = n;
	left = n;
	if (cap) {
		uint32_t take = n < cap ? n : (uint32_t)cap;

		err = recv_all(fd, body, take, BOUND_MS);
		left -= take;
	}
	while (!err && left) {
		uint32_t take = left < sizeof(skip) ? left : (uint32_t)sizeof(skip);

		err = recv_all(fd, skip, take, BOUND_MS);
		left -= take;
	}
	return err;
}

/* Read frames until one of type want (returned 0, body in buf) or the end. */
static inline int recv_until(int fd, uint16_t want, void *buf, size_t cap, uint32_t *len)
{
	uint16_t type, flags;

	for (;;) {
		int err = recv_frame(fd, &type, &flags, buf, cap, len);

		if (err)
			return err;
		if (type == want)
			return 0;
	}
}

/* The peer's ABORT names the cause. */
static inline void assert_abort_names(int fd, const char *cause)
{
	struct rm_wire_abort_body a;
	uint32_t len;

	memset(&a, 0, sizeof(a));
	cr_assert_eq(recv_until(fd, RM_WIRE_ABORT, &a, sizeof(a), &len), 0,
		     "no ABORT came back for %s", cause);
	a.text[RM_WIRE_TEXT - 1] = 0;
	/* Texts are cut to 47 bytes: a WRITE's names its numbers first. */
	if (!strcmp(cause, "outside RAM"))
		cause = "WRITE {region";
	cr_assert(a.text[0] && (strstr(a.text, cause) || strstr(cause, a.text) ||
				!strncmp(a.text, cause, strlen(cause))),
		  "ABORT says \"%s\", expected it to name \"%s\"", a.text, cause);
}

static inline int connect_to(int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (int i = 0; i < 200; i++) {
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		usleep(10000);
	}
	cr_assert_fail("cannot connect to port %d", port);
	return -1;
}

static inline int listen_any(int *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(fd, 16), 0);
	getsockname(fd, (struct sockaddr *)&sa, &sl);
	*port = ntohs(sa.sin_port);
	return fd;
}

static inline int accept_bounded(int lfd)
{
	struct pollfd p = { .fd = lfd, .events = POLLIN };

	cr_assert_eq(poll(&p, 1, BOUND_MS), 1, "the library never connected");
	return accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
}

static inline void good_hello(struct rm_wire_hello *h, unsigned nchan, unsigned chan, uint64_t session)
{
	struct rm_transport_opts o = { .nchan = nchan, .max_write = 1u << 20, .no_auth = true };

	rm_ctrl_hello(h, &o, chan, session, 0);
}

/* ---- a library destination at the transport level ---- */

static uint8_t dst_ram[2][1 << 20];

struct tdst {
	struct rm_listener *l;
	int port;
	pthread_t th;
	int accept_rc, layout_rc, recv_rc;
	unsigned msgs;
	uint64_t ms;
};

static inline void *tdst_run(void *arg)
{
	struct tdst *d = arg;
	struct rm_transport *t = NULL;
	struct rm_region r[2] = {
		{ .id = 0, .addr = dst_ram[0], .size = sizeof(dst_ram[0]) },
		{ .id = 1, .addr = dst_ram[1], .size = sizeof(dst_ram[1]) },
	};
	uint64_t t0 = now_ms();
	struct rm_msg msg;

	d->accept_rc = rm_tr_accept(d->l, &t);
	if (!d->accept_rc) {
		d->layout_rc = rm_tr_layout(t, r, 2);
		d->recv_rc = d->layout_rc;
		while (!d->layout_rc && (d->recv_rc = rm_tr_recv(t, &msg, -1)) == 1) {
			d->msgs++;
			rm_msg_free(&msg);
		}
		rm_tr_close(t);
	}
	d->ms = now_ms() - t0;
	return NULL;
}

static const uint8_t test_key[32] = "hostile-test-key-0123456789abcde";

/* A destination without a key, or (keyed) with test_key. */
static inline void tdst_start_key(struct tdst *d, bool keyed)
{
	struct rm_transport_opts o = {
		.kind = RM_TRANSPORT_TCP, .addr = "127.0.0.1", .port = "0", .timeout_ms = TMO_MS,
		.no_auth = !keyed,
	};

	if (keyed) {
		memcpy(o.psk, test_key, sizeof(test_key));
		o.psk_len = sizeof(test_key);
	}
	memset(d, 0, sizeof(*d));
	log_start();
	cr_assert_eq(rm_tr_listen(&o, &d->l), 0);
	d->port = rm_tr_listener_port(d->l);
	cr_assert_eq(pthread_create(&d->th, NULL, tdst_run, d), 0);
}

static inline void tdst_start(struct tdst *d)
{
	tdst_start_key(d, false);
}

static inline void tdst_finish(struct tdst *d)
{
	join_bounded(d->th, "the destination");
	rm_tr_listener_close(d->l);
	cr_assert_leq(d->ms, BOUND_MS, "the destination took %llu ms", (unsigned long long)d->ms);
}

/* Connect one channel and complete the handshake (nchan channels in all);
 * on channel 0 read the LAYOUT too. */
static inline int raw_source_chan(int port, unsigned nchan, unsigned chan, uint64_t session)
{
	struct rm_wire_hello h;
	struct rm_wire_hello_ack ack;
	uint8_t buf[64];
	uint16_t type, flags;
	uint32_t len;
	int fd = connect_to(port);

	good_hello(&h, nchan, chan, session);
	send_all(fd, buf, frame(buf, RM_WIRE_HELLO, 0, &h, sizeof(h)));
	cr_assert_eq(recv_frame(fd, &type, &flags, &ack, sizeof(ack), &len), 0);
	cr_assert_eq(type, RM_WIRE_HELLO_ACK, "HELLO answered with %s", rm_wire_type_name(type));
	return fd;
}

static inline int raw_source(int port)
{
	uint8_t lay[sizeof(struct rm_ctrl_layout_msg)];
	uint32_t len;
	int fd = raw_source_chan(port, 1, 0, 42);

	cr_assert_eq(recv_until(fd, RM_WIRE_LAYOUT, lay, sizeof(lay), &len), 0, "no LAYOUT");
	return fd;
}

/* ---- handshake: a hostile source against rm_tr_accept ---- */

#endif
