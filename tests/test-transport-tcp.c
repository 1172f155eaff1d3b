/*
 * tests/test-transport-tcp.c — the transport suite on the TCP backend over
 * host loopback, plus the handshake cases only a raw socket can play.
 */
#define SUITE_KIND RM_TRANSPORT_TCP
#include "tests/test-transport-cases.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static const char *suite_addr(void)
{
	return "127.0.0.1";
}

TRANSPORT_CASES(tcp)

/* Send a HELLO from a raw socket; return the reply's type and refusal reason. */
static uint16_t raw_hello(int port, struct rm_wire_hello h, uint32_t *reason)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct {
		struct rm_wire_hdr h;
		union {
			struct rm_wire_hello_ack ack;
			struct rm_wire_refuse_body rf;
		} b;
	} reply;
	uint8_t buf[64];
	size_t n = frame(buf, RM_WIRE_HELLO, 0, &h, sizeof(h), 0);
	struct timeval tv = { .tv_sec = 5 };
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	ssize_t got = 0, r;

	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	cr_assert_eq(write(fd, buf, n), (ssize_t)n);
	memset(&reply, 0, sizeof(reply));
	while (got < (ssize_t)sizeof(reply.h) &&
	       (r = read(fd, (char *)&reply + got, sizeof(reply) - (size_t)got)) > 0)
		got += r;
	while (got < (ssize_t)(sizeof(reply.h) + le32toh(reply.h.len)) &&
	       (r = read(fd, (char *)&reply + got, sizeof(reply) - (size_t)got)) > 0)
		got += r;
	close(fd);
	*reason = le32toh(reply.b.rf.reason);
	return le16toh(reply.h.type);
}

static void *accept_one(void *arg)
{
	struct pair *p = arg;

	p->accept_err = rm_tr_accept(p->l, &p->dst);
	return NULL;
}

/* Bad magic, version, caps, no key, channel numbers, write size and credits
 * are refused with the reason;
 * the destination keeps waiting and still accepts a good source after. */
Test(tcp, handshake_refusals)
{
	struct rm_transport_opts o = opts_for(1);
	struct rm_wire_hello good = {
		.magic = htole32(RM_WIRE_MAGIC),
		.version_min = htole16(RM_WIRE_VERSION_MIN),
		.version_max = htole16(RM_WIRE_VERSION),
		.caps = htole32(RM_CAP_FENCE_EPOCH | RM_CAP_AUTH),
		.nchan = htole16(1),
		.session = htole64(42),
		.max_write = htole32(1u << 20),
	};
	struct rm_wire_hello h;
	struct pair p = { 0 };
	pthread_t th;
	uint32_t reason;
	char port[16];
	int lport;

	cr_assert_eq(rm_tr_listen(&o, &p.l), 0);
	lport = rm_tr_listener_port(p.l);
	cr_assert_eq(pthread_create(&th, NULL, accept_one, &p), 0);

	h = good;
	h.magic = 0;
	cr_assert_eq(raw_hello(lport, h, &reason), RM_WIRE_REFUSE);
	cr_assert_eq(reason, RM_REFUSE_MAGIC);
	h = good;
	h.version_min = h.version_max = htole16(RM_WIRE_VERSION + 5);
	cr_assert_eq(raw_hello(lport, h, &reason), RM_WIRE_REFUSE);
	cr_assert_eq(reason, RM_REFUSE_VERSION);
	h = good;
	h.caps = 0;
	cr_assert_eq(raw_hello(lport, h, &reason), RM_WIRE_REFUSE);
	cr_assert_eq(reason, RM_REFUSE_CAPS);
	h = good;
	h.caps = htole32(RM_CAP_FENCE_EPOCH);	/* no key offered to a keyed destination */
	cr_assert_eq(raw_hello(lport, h, &reason), RM_WIRE_REFUSE);
	cr_assert_eq(reason, RM_REFUSE_AUTH);
	h = good;
	h.nchan = htole16(RM_WIRE_MAX_CHANNELS + 1);
	cr_assert_eq(raw_hello(lport, h, &reason), RM_WIRE_REFUSE);
	cr_assert_eq(reason, RM_REFUSE_CHANNELS);
	h = good;
	h.chan = htole16(1);
	cr_assert_eq(raw_hello(lport, h, &reason), RM_WIRE_REFUSE);
	cr_assert_eq(reason, RM_REFUSE_CHANNELS);
	h = good;
	h.max_write = htole32(3000);
	cr_assert_eq(raw_hello(lport, h, &reason), RM_WIRE_REFUSE);
	cr_assert_eq(reason, RM_REFUSE_PARAMS);
	h = good;
	h.credits = htole32(8);
	cr_assert_eq(raw_hello(lport, h, &reason), RM_WIRE_REFUSE);
	cr_assert_eq(reason, RM_REFUSE_PARAMS);

	o.port = port;
	snprintf(port, sizeof(port), "%d", lport);
	{
		struct rm_transport *src;
		int err = rm_tr_connect(&o, &src);

		pthread_join(th, NULL);
		cr_assert_eq(err, 0, "good source after refusals: %s", rdmamig_strerror(err));
		cr_assert_eq(p.accept_err, 0);
		rm_tr_close(src);
	}
	rm_tr_close(p.dst);
	rm_tr_listener_close(p.l);
}

/* Nobody connects: accept gives up at its timeout; a connect to a closed
 * port fails fast. */
Test(tcp, accept_and_connect_are_bounded)
{
	struct rm_transport_opts o = opts_for(1);
	struct rm_listener *l;
	struct rm_transport *t;
	char port[16];
	uint64_t t0;
	int err;

	o.timeout_ms = 400;
	cr_assert_eq(rm_tr_listen(&o, &l), 0);
	t0 = rm_now_ns();
	err = rm_tr_accept(l, &t);
	cr_assert_eq(err, -ETIMEDOUT, "accept: %s", rdmamig_strerror(err));
	cr_assert((rm_now_ns() - t0) / 1000000 < 1500);
	snprintf(port, sizeof(port), "%d", rm_tr_listener_port(l));
	rm_tr_listener_close(l);
	o.port = port;
	err = rm_tr_connect(&o, &t);
	cr_assert_eq(err, -ECONNREFUSED, "connect: %s", rdmamig_strerror(err));
}

/* IPv6 loopback, where the host has it. */
Test(tcp, ipv6_loopback)
{
	struct rm_transport_opts o = opts_for(2);
	int fd = socket(AF_INET6, SOCK_STREAM, 0);
	struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	struct pair p = { 0 };
	struct rm_transport *src;
	pthread_t th;
	char port[16];
	int err;

	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (fd >= 0)
			close(fd);
		cr_skip_test("no IPv6 loopback on this host");
	}
	close(fd);
	o.addr = "::1";
	cr_assert_eq(rm_tr_listen(&o, &p.l), 0);
	snprintf(port, sizeof(port), "%d", rm_tr_listener_port(p.l));
	cr_assert_eq(pthread_create(&th, NULL, accept_one, &p), 0);
	o.port = port;
	err = rm_tr_connect(&o, &src);
	pthread_join(th, NULL);
	cr_assert_eq(err, 0, "connect [::1]: %s", rdmamig_strerror(err));
	cr_assert_eq(p.accept_err, 0);
	rm_tr_close(src);
	rm_tr_close(p.dst);
	rm_tr_listener_close(p.l);
}

/* ---- transport/register.c pieces that need no device ---- */

#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include "transport/register.h"

struct last_log {
	char msg[512];
};

static void keep_log(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	snprintf(((struct last_log *)opaque)->msg, sizeof(((struct last_log *)opaque)->msg), "%s", msg);
}

/* Drop CAP_IPC_LOCK from this (forked) test process, so the limit applies. */
static void drop_ipc_lock(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];

	cr_assert_eq(syscall(SYS_capget, &h, d), 0);
	d[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
	cr_assert_eq(syscall(SYS_capset, &h, d), 0);
}

Test(pinning, memlock_check_names_the_number_and_the_fix)
{
	struct rlimit rl = { .rlim_cur = 1 << 20, .rlim_max = 1 << 20 };
	struct last_log log = { "" };

	drop_ipc_lock();
	cr_assert_eq(setrlimit(RLIMIT_MEMLOCK, &rl), 0);
	rdmamig_set_log(keep_log, &log, RDMAMIG_LOG_DEBUG);
	cr_assert_eq(rm_memlock_check(4096), 0);
	cr_assert_eq(rm_memlock_check(1ull << 30), -ENOMEM);
	cr_assert(strstr(log.msg, "1048576 KiB"), "message lacks the number needed: %s", log.msg);
	cr_assert(strstr(log.msg, "allows 1024 KiB"), "message lacks the limit: %s", log.msg);
	cr_assert(strstr(log.msg, "ulimit -l"), "message lacks how to raise it: %s", log.msg);
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_DEBUG);
}

Test(pinning, nic_numa_node_unknown_device)
{
	cr_assert_eq(rm_nic_numa_node("no-such-device"), -1);
	cr_assert_eq(rm_nic_numa_node("../../../etc"), -1);
	cr_assert_eq(rm_nic_numa_node(NULL), -1);
}

/*
 * Sockets that connect and say nothing, more than there are pending slots,
 * while a real source connects: it is accepted, and the silent ones are
 * dropped at their own deadlines, not at the real source's expense.
 */
Test(tcp, silent_sockets_do_not_block_a_real_source)
{
	struct rm_transport_opts o = opts_for(2);
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int fds[40];
	struct pair p = { 0 };
	pthread_t th;
	char port[16];
	int err;

	o.timeout_ms = 3000;
	cr_assert_eq(rm_tr_listen(&o, &p.l), 0);
	snprintf(port, sizeof(port), "%d", rm_tr_listener_port(p.l));
	sa.sin_port = htons((uint16_t)rm_tr_listener_port(p.l));
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	cr_assert_eq(pthread_create(&th, NULL, accept_patient, &p), 0);
	for (unsigned i = 0; i < 40; i++) {
		fds[i] = socket(AF_INET, SOCK_STREAM, 0);
		cr_assert_eq(connect(fds[i], (struct sockaddr *)&sa, sizeof(sa)), 0);
	}
	o.port = port;
	o.timeout_ms = 5000;	/* less than two of the silent ones' 3 s */
	err = rm_tr_connect(&o, &p.src);
	pthread_join(th, NULL);
	cr_assert_eq(err, 0, "real source: %s", rdmamig_strerror(err));
	cr_assert_eq(p.accept_err, 0);
	for (unsigned i = 0; i < 40; i++)
		close(fds[i]);
	rm_tr_close(p.src);
	rm_tr_close(p.dst);
	rm_tr_listener_close(p.l);
}
