/*
 * transport/net.c — address resolution and file-descriptor helpers that the
 * TCP and RDMA connection code both use.
 */
#include <fcntl.h>
#include <netdb.h>

#include "transport/priv.h"

int rm_resolve(const char *backend, const char *addr, const char *port, bool passive,
	       struct addrinfo **res)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = passive ? AI_PASSIVE : 0,
	};
	int err = getaddrinfo(addr && *addr ? addr : NULL, port, &hints, res);

	if (err) {
		rm_err("transport %s: cannot resolve %s port %s: %s", backend,
		       addr && *addr ? addr : "(any)", port, gai_strerror(err));
		return -EHOSTUNREACH;
	}
	return 0;
}

int rm_set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}
