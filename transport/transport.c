/*
 * transport/transport.c — the wrappers the engine calls: pick the backend,
 * check the caller's arguments, keep the first fatal error sticky, and time
 * the busy ops.  Backends see only checked arguments.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "transport/priv.h"

const struct rm_transport_ops *rm_transport_ops_for(enum rm_transport_kind kind)
{
	switch (kind) {
	case RM_TRANSPORT_TCP:
		return &rm_transport_tcp_ops;
	case RM_TRANSPORT_RDMA:
		return &rm_transport_rdma_ops;
	}
	return NULL;
}

int rm_tr_opts_fill(struct rm_transport_opts *o, const struct rm_transport_opts *in)
{
	*o = *in;
	if (!o->nchan)
		o->nchan = RM_TR_DEFAULT_NCHAN;
	if (!o->max_write)
		o->max_write = RM_TR_DEFAULT_MAX_WRITE;
	if (!o->timeout_ms)
		o->timeout_ms = RM_TR_DEFAULT_TIMEOUT_MS;
	if (!o->reg_chunk)
		o->reg_chunk = 64u << 20;
	if (o->nchan > RM_WIRE_MAX_CHANNELS) {
		rm_err("transport: %u channels asked, at most %u", o->nchan, RM_WIRE_MAX_CHANNELS);
		return -EINVAL;
	}
	if (o->max_write < 4096 || o->max_write > RM_WIRE_MAX_WRITE ||
	    (o->max_write & (o->max_write - 1))) {
		rm_err("transport: max_write %u is not a power of two in [4 KiB, 64 MiB]",
		       o->max_write);
		return -EINVAL;
	}
	if (o->timeout_ms < 0 || o->reg > RM_REG_ODP)
		return -EINVAL;
	return 0;
}

int rm_tr_fail(struct rm_transport *t, int err, const char *what)
{
	int expected = 0;

	if (atomic_compare_exchange_strong(&t->error, &expected, err)) {
		if (err == RDMAMIG_E_ABORTED || err == -EPIPE)
			rm_info("transport %s: %s: %s", t->ops->name, what, rdmamig_strerror(err));
		else
			rm_err("transport %s: %s: %s", t->ops->name, what, rdmamig_strerror(err));
		return err;
	}
	return expected;
}

int rm_tr_check(struct rm_transport *t)
{
	int err = atomic_load(&t->error);

	if (err)
		return err;
	if (atomic_load(&t->cancel))
		return -ECANCELED;
	return 0;
}

int rm_tr_region_index(const struct rm_transport *t, uint32_t id)
{
	for (unsigned i = 0; i < t->nregions; i++)
		if (t->regions[i].id == id)
			return (int)i;
	return -1;
}

int rm_tr_check_regions(const struct rm_region *r, unsigned n)
{
	if (!n || n > RM_WIRE_MAX_REGIONS || !r) {
		rm_err("transport: %u RAM regions, expected 1..%u", n, RM_WIRE_MAX_REGIONS);
		return -EINVAL;
	}
	for (unsigned i = 0; i < n; i++) {
		if (!r[i].addr || !r[i].size) {
			rm_err("transport: region %u has no memory", r[i].id);
			return -EINVAL;
		}
		for (unsigned j = 0; j < i; j++) {
			if (r[j].id == r[i].id) {
				rm_err("transport: region id %u appears twice", r[i].id);
				return -EINVAL;
			}
		}
	}
	return 0;
}

int rm_tr_match_layout(const struct rm_transport *t, const struct rm_wire_region *peer,
		       unsigned n, char *why, size_t why_len)
{
	if (n != t->nregions) {
		snprintf(why, why_len, "peer has %u regions, we have %u", n, t->nregions);
		return RDMAMIG_E_REFUSED;
	}
	for (unsigned i = 0; i < n; i++) {
		int idx = rm_tr_region_index(t, le32toh(peer[i].id));

		if (idx < 0) {
			snprintf(why, why_len, "peer region %u unknown here", le32toh(peer[i].id));
			return RDMAMIG_E_REFUSED;
		}
		if (t->regions[idx].size != le64toh(peer[i].size)) {
			snprintf(why, why_len, "region %u: %llu bytes here, %llu at peer",
				 t->regions[idx].id, (unsigned long long)t->regions[idx].size,
				 (unsigned long long)le64toh(peer[i].size));
			return RDMAMIG_E_REFUSED;
		}
		for (unsigned j = 0; j < i; j++) {
			if (peer[j].id == peer[i].id) {
				snprintf(why, why_len, "peer region %u listed twice",
					 le32toh(peer[i].id));
				return RDMAMIG_E_PROTO;
			}
		}
	}
	return 0;
}

uint32_t rm_tr_check_hello(const struct rm_wire_hello *h, char *why, size_t n)
{
	unsigned nchan = le16toh(h->nchan), chan = le16toh(h->chan);
	uint32_t caps = le32toh(h->caps);

	if (le32toh(h->magic) != RM_WIRE_MAGIC) {
		snprintf(why, n, "bad magic %#x", le32toh(h->magic));
		return RM_REFUSE_MAGIC;
	}
	if (le16toh(h->version_max) < RM_WIRE_VERSION_MIN ||
	    le16toh(h->version_min) > RM_WIRE_VERSION) {
		snprintf(why, n, "versions %u-%u, we speak %u-%u", le16toh(h->version_min),
			 le16toh(h->version_max), RM_WIRE_VERSION_MIN, RM_WIRE_VERSION);
		return RM_REFUSE_VERSION;
	}
	if ((caps & RM_CAP_REQUIRED) != RM_CAP_REQUIRED) {
		snprintf(why, n, "caps %#x lack required %#x", caps, RM_CAP_REQUIRED);
		return RM_REFUSE_CAPS;
	}
	if (!nchan || nchan > RM_WIRE_MAX_CHANNELS || chan >= nchan) {
		snprintf(why, n, "channel %u of %u (max %u)", chan, nchan, RM_WIRE_MAX_CHANNELS);
		return RM_REFUSE_CHANNELS;
	}
	return 0;
}

int rm_ms_left(uint64_t deadline_ns)
{
	uint64_t now = rm_now_ns();

	if (now >= deadline_ns)
		return 0;
	return (int)((deadline_ns - now + 999999) / 1000000);
}

uint64_t rm_tr_session_id(void)
{
	uint64_t v = 0;

	if (getrandom(&v, sizeof(v), 0) != sizeof(v))
		v = rm_now_ns() ^ ((uint64_t)getpid() << 32);
	return v ? v : 1;
}

int rm_tr_listen(const struct rm_transport_opts *opts, struct rm_listener **out)
{
	const struct rm_transport_ops *ops = opts ? rm_transport_ops_for(opts->kind) : NULL;

	if (!ops || !out)
		return -EINVAL;
	return ops->listen(opts, out);
}

/* A listener's first member is its ops pointer in every backend. */
struct rm_listener_base {
	const struct rm_transport_ops *ops;
};

int rm_tr_accept(struct rm_listener *l, struct rm_transport **out)
{
	if (!l || !out)
		return -EINVAL;
	return ((struct rm_listener_base *)l)->ops->accept(l, out);
}

int rm_tr_listener_port(struct rm_listener *l)
{
	if (!l)
		return -EINVAL;
	return ((struct rm_listener_base *)l)->ops->listener_port(l);
}

void rm_tr_listener_close(struct rm_listener *l)
{
	if (l)
		((struct rm_listener_base *)l)->ops->listener_close(l);
}

int rm_tr_connect(const struct rm_transport_opts *opts, struct rm_transport **out)
{
	const struct rm_transport_ops *ops = opts ? rm_transport_ops_for(opts->kind) : NULL;

	if (!ops || !out || !opts->addr || !opts->port)
		return -EINVAL;
	return ops->connect(opts, out);
}

int rm_tr_layout(struct rm_transport *t, const struct rm_region *r, unsigned n)
{
	int err;

	if (!t)
		return -EINVAL;
	err = rm_tr_check(t);
	if (err)
		return err;
	if (t->laid_out)
		return -EINVAL;
	err = rm_tr_check_regions(r, n);
	if (err)
		return err;
	memcpy(t->regions, r, n * sizeof(*r));
	t->nregions = n;
	err = t->ops->layout(t, r, n);
	if (err)
		return rm_tr_fail(t, err, "RAM layout exchange");
	t->laid_out = true;
	return 0;
}

int rm_tr_write(struct rm_transport *t, const struct rm_range *r, size_t n)
{
	uint64_t t0;
	int err;

	if (!t || (n && !r))
		return -EINVAL;
	err = rm_tr_check(t);
	if (err)
		return err;
	if (t->role != RM_ROLE_SOURCE || !t->laid_out) {
		rm_err("transport: write() needs a source after rm_tr_layout()");
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		int idx = rm_tr_region_index(t, r[i].region);

		if (idx < 0 || !r[i].length ||
		    !rm_range_ok(r[i].offset, r[i].length, t->regions[idx].size)) {
			rm_err("transport: range %zu {region %u, offset %#llx, length %#llx} is outside RAM",
			       i, r[i].region, (unsigned long long)r[i].offset,
			       (unsigned long long)r[i].length);
			return -EINVAL;
		}
	}
	if (!n)
		return 0;
	t0 = rm_now_ns();
	err = t->ops->write(t, r, n);
	t->st.busy_ns += rm_now_ns() - t0;
	if (err)
		return rm_tr_fail(t, err, "write");
	t->st.ranges += n;
	return 0;
}

int rm_tr_fence(struct rm_transport *t)
{
	uint64_t t0;
	int err;

	if (!t)
		return -EINVAL;
	err = rm_tr_check(t);
	if (err)
		return err;
	if (t->role != RM_ROLE_SOURCE || !t->laid_out)
		return -EINVAL;
	t0 = rm_now_ns();
	t->fence_epoch++;
	err = t->ops->fence(t);
	t->st.busy_ns += rm_now_ns() - t0;
	if (err)
		return rm_tr_fail(t, err, "fence");
	t->st.fences++;
	return 0;
}

int rm_tr_send(struct rm_transport *t, uint16_t type, const void *buf, size_t len)
{
	uint64_t t0;
	int err;

	if (!t || (len && !buf))
		return -EINVAL;
	if (type < RM_WIRE_ENGINE_FIRST || type > RM_WIRE_ENGINE_LAST) {
		rm_err("transport: control type %#x outside the engine range", type);
		return -EINVAL;
	}
	if (len > RM_WIRE_MAX_CTRL)
		return -EMSGSIZE;
	err = rm_tr_check(t);
	if (err)
		return err;
	t0 = rm_now_ns();
	err = t->ops->send(t, type, buf, len);
	t->st.busy_ns += rm_now_ns() - t0;
	if (err)
		return rm_tr_fail(t, err, "send control message");
	t->st.ctrl_sent++;
	t->st.ctrl_bytes += len;
	return 0;
}

int rm_tr_recv(struct rm_transport *t, struct rm_msg *msg, int timeout_ms)
{
	int ret;

	if (!t || !msg)
		return -EINVAL;
	memset(msg, 0, sizeof(*msg));
	ret = rm_tr_check(t);
	if (ret)
		return ret;
	if (timeout_ms < 0)
		timeout_ms = t->opts.timeout_ms;
	ret = t->ops->recv(t, msg, timeout_ms);
	if (ret == 0 && timeout_ms > 0)
		ret = -ETIMEDOUT;
	if (ret == -ETIMEDOUT || ret == -ECANCELED)
		return ret;	/* the connection survives a recv timeout */
	if (ret < 0)
		return rm_tr_fail(t, ret, "receive control message");
	if (ret == 1) {
		t->st.ctrl_recv++;
		t->st.ctrl_bytes += msg->len;
	}
	return ret;
}

int rm_tr_abort(struct rm_transport *t, int reason, const char *text)
{
	if (!t)
		return 0;
	if (!atomic_load(&t->error))
		t->ops->abort(t, reason, text ? text : "");
	rm_tr_fail(t, RDMAMIG_E_ABORTED, "aborted locally");
	return 0;
}

int rm_tr_close(struct rm_transport *t)
{
	if (!t)
		return 0;
	return t->ops->close(t);
}

void rm_tr_stats(struct rm_transport *t, struct rm_transport_stats *out)
{
	if (t && out)
		t->ops->stats(t, out);
}

void rm_tr_cancel(struct rm_transport *t)
{
	if (t)
		atomic_store(&t->cancel, true);
}

void rm_msg_free(struct rm_msg *msg)
{
	if (msg) {
		free(msg->data);
		memset(msg, 0, sizeof(*msg));
	}
}

int rm_tr_raw_send(struct rm_transport *t, unsigned chan, const void *msg, size_t len)
{
	if (!t || chan >= t->nchan)
		return -EINVAL;
	if (t->ops == &rm_transport_tcp_ops)
		return rm_tcp_raw_send(t, chan, msg, len);
	return rm_rdma_raw_send(t, chan, msg, len);
}

void rm_wire_text(char *dst, const char *src)
{
	size_t n = src ? strnlen(src, RM_WIRE_TEXT - 1) : 0;

	memset(dst, 0, RM_WIRE_TEXT);
	if (n)
		memcpy(dst, src, n);
}
