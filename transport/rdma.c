/* transport/rdma.c — the rdma backend (being written; every op returns -ENOSYS). */
#include "transport/priv.h"

static int nosys_listen(const struct rm_transport_opts *o, struct rm_listener **out) { return -ENOSYS; }
static int nosys_connect(const struct rm_transport_opts *o, struct rm_transport **out) { return -ENOSYS; }

const struct rm_transport_ops rm_transport_rdma_ops = {
	.name = "rdma",
	.listen = nosys_listen,
	.connect = nosys_connect,
};

int rm_rdma_raw_send(struct rm_transport *t, unsigned chan, const void *msg, size_t len)
{
	return -ENOSYS;
}
