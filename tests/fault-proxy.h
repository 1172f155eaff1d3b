/*
 * tests/fault-proxy.h — the fault matrix's TCP link faults: a proxy on
 * 127.0.0.1 between the source and the destination that resets (RST both
 * ways) or black-holes (reads and drops) the connections it carries when
 * told to; connections made after that, as after a re-route, pass.  One
 * thread polls every 10 ms.  Only tests/test-fault-matrix.c includes it.
 */
#ifndef RDMAMIG_TESTS_FAULT_PROXY_H
#define RDMAMIG_TESTS_FAULT_PROXY_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PX_MAX 16

struct proxy {
	int lfd, dst_port;
	int fd[PX_MAX][2];		/* [client, server] */
	bool dead[PX_MAX];		/* black-holed: read and dropped */
	int n;
	atomic_int order;		/* 1 reset, 2 black-hole the current ones */
	atomic_int done, stop;
	pthread_t th;
};

static void px_close(int fd, bool reset)
{
	struct linger lg = { 1, 0 };

	if (reset)
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

static void *px_thread(void *arg)
{
	struct proxy *x = arg;
	char buf[65536];

	while (!atomic_load(&x->stop)) {
		struct pollfd pf[1 + 2 * PX_MAX];
		int order = atomic_load(&x->order);

		if (order) {
			for (int i = 0; i < x->n; i++) {
				if (x->fd[i][0] < 0)
					continue;
				if (order == 1) {
					px_close(x->fd[i][0], true);
					px_close(x->fd[i][1], true);
					x->fd[i][0] = x->fd[i][1] = -1;
				} else {
					x->dead[i] = true;
				}
			}
			atomic_store(&x->order, 0);
			atomic_store(&x->done, 1);
		}
		pf[0] = (struct pollfd){ .fd = x->lfd, .events = POLLIN };
		for (int i = 0; i < x->n; i++)
			for (int k = 0; k < 2; k++)
				pf[1 + 2 * i + k] = (struct pollfd){ .fd = x->fd[i][k], .events = POLLIN };
		int polled = x->n;	/* a pair accepted below has no pf[] yet */

		if (poll(pf, 1 + 2 * polled, 10) <= 0)
			continue;
		if ((pf[0].revents & POLLIN) && x->n < PX_MAX) {
			int c = accept4(x->lfd, NULL, NULL, SOCK_CLOEXEC);
			int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
			struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(x->dst_port),
						 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

			if (c >= 0 && s >= 0 && connect(s, (struct sockaddr *)&a, sizeof(a)) == 0) {
				x->fd[x->n][0] = c;
				x->fd[x->n][1] = s;
				x->dead[x->n++] = false;
			} else {
				if (c >= 0)
					close(c);
				if (s >= 0)
					close(s);
			}
		}
		for (int i = 0; i < polled; i++) {
			for (int k = 0; k < 2; k++) {
				ssize_t got;

				if (x->fd[i][k] < 0 || !(pf[1 + 2 * i + k].revents & (POLLIN | POLLHUP | POLLERR)))
					continue;
				got = read(x->fd[i][k], buf, sizeof(buf));
				if (got <= 0) {	/* pass the close on as it came */
					px_close(x->fd[i][0], got < 0);
					px_close(x->fd[i][1], got < 0);
					x->fd[i][0] = x->fd[i][1] = -1;
					break;
				}
				if (!x->dead[i] && write(x->fd[i][!k], buf, (size_t)got) != got) {
					px_close(x->fd[i][0], true);
					px_close(x->fd[i][1], true);
					x->fd[i][0] = x->fd[i][1] = -1;
					break;
				}
			}
		}
	}
	for (int i = 0; i < x->n; i++)
		for (int k = 0; k < 2; k++)
			if (x->fd[i][k] >= 0)
				close(x->fd[i][k]);
	close(x->lfd);
	return NULL;
}

static int px_start(struct proxy *x, int dst_port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);

	memset(x, 0, sizeof(*x));
	x->dst_port = dst_port;
	x->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (x->lfd < 0 || bind(x->lfd, (struct sockaddr *)&a, sizeof(a)) || listen(x->lfd, 16) ||
	    getsockname(x->lfd, (struct sockaddr *)&a, &al) || pthread_create(&x->th, NULL, px_thread, x))
		return -1;
	return ntohs(a.sin_port);
}

static void px_order(struct proxy *x, int order)
{
	atomic_store(&x->done, 0);
	atomic_store(&x->order, order);
	for (int i = 0; i < 2000 && !atomic_load(&x->done); i++)
		usleep(1000);
}

#endif
