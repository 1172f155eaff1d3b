/*
 * fuzz/fuzz-tcp-rx.c — the TCP backend's receive path (transport/tcp.c) as
 * it runs: a connection whose channel 0 is one end of a socketpair, its
 * receiver thread started, the input written into the other end as the
 * peer's byte stream, then EOF.  Covers the header checks, WRITE frames
 * checked against the layout and read into RAM, CTRL fragments streamed
 * into their message, every other message through ctrl.c, the fence wait,
 * and the ABORT sent back on a protocol error.
 *
 * Input: one config byte — bit 0 source (else destination) — then the
 * stream.  The destination's RAM is region 0 of 16 MiB (as the captured
 * migration's guest had), max_write 1 MiB.  No key: the AUTH exchange is
 * fuzz-frames's (ctrl.c), this is what follows it.
 */
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fuzz/fuzz.h"
#include "transport/tcp.h"

static uint8_t ram[16 << 20];

static void feed(struct tcp_conn *c, int fd, const uint8_t *p, size_t n)
{
	while (n && !atomic_load(&c->base.error)) {
		struct pollfd pf = { .fd = fd, .events = POLLOUT };
		ssize_t w = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (w > 0) {
			p += w;
			n -= (size_t)w;
		} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
			return;
		} else {
			poll(&pf, 1, 10);
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct rm_transport_opts o = { .nchan = 1, .max_write = 1u << 20, .timeout_ms = 1000,
				       .no_auth = true };
	struct rm_region r = { .id = 0, .addr = ram, .size = sizeof(ram) };
	struct tcp_conn *c;
	struct rm_msg msg;
	uint8_t sink[4096];
	int sv[2];

	if (!size)
		return 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv))
		return 0;
	c = tcp_conn_new(&o, data[0] & 1 ? RM_ROLE_SOURCE : RM_ROLE_DEST, 1);
	FZ_CHECK(c != NULL);
	c->ch[0].fd = sv[0];
	FZ_CHECK(rm_tr_set_regions(&c->base, &r, 1) == 0);
	c->base.peer_max_write = o.max_write;
	atomic_store(&c->ram_ready, true);
	FZ_CHECK(tcp_start_rx(c) == 0);

	feed(c, sv[1], data + 1, size - 1);
	shutdown(sv[1], SHUT_WR);
	/* The receiver ends on EOF or on the first error; meanwhile take what
	 * it delivers, as the engine would. */
	for (;;) {
		int ret = rm_ctrl_recv(&c->base, &msg, 10);

		if (ret < 0)
			break;
		if (ret == 1) {
			FZ_CHECK(msg.type >= RM_WIRE_ENGINE_FIRST && msg.type <= RM_WIRE_ENGINE_LAST);
			rm_msg_free(&msg);
		}
	}
	FZ_CHECK(atomic_load(&c->base.error) != 0 || c->base.ctrl.peer_bye);
	tcp_close(&c->base);
	while (read(sv[1], sink, sizeof(sink)) > 0)
		;
	close(sv[1]);
	return 0;
}
