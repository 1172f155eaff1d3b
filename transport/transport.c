/*
 * transport/transport.c — the wrappers the engine calls: pick the backend,
 * check the caller's arguments, keep the first fatal error sticky, and time
 * the busy ops.  Backends see only checked arguments, with region ids
 * resolved through the map rm_tr_layout() builds.
 */
#include <limits.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
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
	/* reg_chunk stays 0 for its users' own defaults: a lazy source's
	 * (register.c) differs from a staged destination's (rdma-stage.c). */
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
	if (o->timeout_ms < RM_TR_MIN_TIMEOUT_MS) {
		rm_err("transport: timeout %d ms, at least %d", o->timeout_ms, RM_TR_MIN_TIMEOUT_MS);
		return -EINVAL;
	}
	if (o->reg > RM_REG_UPFRONT)
		return -EINVAL;
	if (o->psk_len && o->no_auth) {
		rm_err("transport: a pre-shared key and no_auth both given");
		return -EINVAL;
	}
	if (!o->psk_len && !o->no_auth) {
		rm_err("transport: no pre-shared key: give one, or set no_auth to accept any peer");
		return -EINVAL;
	}
	if (o->tls && (!o->psk_len || o->kind != RM_TRANSPORT_TCP)) {
		rm_err("transport: TLS %s", o->psk_len ? "is for the TCP transport only"
				       : "needs the pre-shared key it derives its key from");
		return -EINVAL;
	}
	if (o->psk_len && (o->psk_len < RM_TR_PSK_MIN || o->psk_len > RM_TR_PSK_MAX)) {
		rm_err("transport: a pre-shared key of %u bytes, expected %u to %u", o->psk_len,
		       RM_TR_PSK_MIN, RM_TR_PSK_MAX);
		return -EINVAL;
	}
	return 0;
}

int rm_tr_init(struct rm_transport *t, const struct rm_transport_ops *ops,
	       const struct rm_transport_opts *o, enum rm_role role, unsigned nchan,
	       size_t frag_max)
{
	int err;

	t->ops = ops;
	t->opts = *o;
	t->opts.addr = NULL;
	t->opts.port = NULL;
	t->role = role;
	t->nchan = nchan;
	err = rm_ctrl_init(&t->ctrl, frag_max);
	t->ctrl.authed = !o->psk_len;
	return err;
}

void *rm_tr_new(size_t size, const struct rm_transport_ops *ops, const struct rm_transport_opts *o,
		enum rm_role role, unsigned nchan, size_t frag_max)
{
	struct rm_transport *t = calloc(1, size);

	if (t && rm_tr_init(t, ops, o, role, nchan, frag_max)) {
		free(t);
		t = NULL;
	}
	return t;
}

void rm_tr_destroy(struct rm_transport *t)
{
	OPENSSL_cleanse(t->opts.psk, sizeof(t->opts.psk));
	rm_ctrl_destroy(&t->ctrl);
	free(t->widx);
	t->widx = NULL;
}

int rm_tr_abandon(struct rm_transport *t, int err)
{
	if (t) {
		atomic_store(&t->error, err);
		rm_ctrl_live_stop(t);
		t->ops->close(t);
	}
	return err;
}

/* Seal a destination's RAM on a failure; an error of the revocation is
 * logged by the backend, and the failure already stops the guest here. */
static void seal_quietly(struct rm_transport *t)
{
	if (t->role == RM_ROLE_DEST) {
		atomic_store(&t->sealed, true);
		if (t->ops->seal)
			t->ops->seal(t);
	}
}

int rm_tr_fail(struct rm_transport *t, int err, const char *what)
{
	int expected = 0;

	if (atomic_compare_exchange_strong(&t->error, &expected, err)) {
		if (err == RDMAMIG_E_ABORTED || err == -EPIPE)
			rm_info("transport %s: %s: %s", t->ops->name, what, rdmamig_strerror(err));
		else
			rm_err("transport %s: %s: %s", t->ops->name, what, rdmamig_strerror(err));
		/* A dead connection leaves nothing of RAM exposed. */
		seal_quietly(t);
		/* Waiters on the control queue see the error now, not a slice later. */
		pthread_mutex_lock(&t->ctrl.lock);
		pthread_cond_broadcast(&t->ctrl.cond);
		pthread_mutex_unlock(&t->ctrl.lock);
		return err;
	}
	return expected;
}

int rm_tr_check(struct rm_transport *t)
{
	int err = atomic_load(&t->error);

	if (err)
		return err;
	if (atomic_load(&t->cancel) || rm_cancelled(t->opts.cancel))
		return -ECANCELED;
	return 0;
}

static unsigned rmap_slot(uint32_t id)
{
	/* Fibonacci hashing: ids are often small and consecutive. */
	return (id * 2654435761u) >> (32 - __builtin_ctz(RM_RMAP_SLOTS));
}

int rm_tr_region_index(const struct rm_transport *t, uint32_t id)
{
	for (unsigned s = rmap_slot(id);; s = (s + 1) & (RM_RMAP_SLOTS - 1)) {
		if (!t->rmap[s].idx1)
			return -1;
		if (t->rmap[s].id == id)
			return t->rmap[s].idx1 - 1;
	}
}

int rm_tr_set_regions(struct rm_transport *t, const struct rm_region *r, unsigned n)
{
	_Static_assert(RM_RMAP_SLOTS >= 2 * RM_WIRE_MAX_REGIONS, "the map stays half empty");
	if (!n || n > RM_WIRE_MAX_REGIONS || !r) {
		rm_err("transport: %u RAM regions, expected 1..%u", n, RM_WIRE_MAX_REGIONS);
		return -EINVAL;
	}
	memset(t->rmap, 0, sizeof(t->rmap));
	for (unsigned i = 0; i < n; i++) {
		unsigned s = rmap_slot(r[i].id);

		if (!r[i].addr || !r[i].size) {
			rm_err("transport: region %u has no memory", r[i].id);
			return -EINVAL;
		}
		for (; t->rmap[s].idx1; s = (s + 1) & (RM_RMAP_SLOTS - 1)) {
			if (t->rmap[s].id == r[i].id) {
				rm_err("transport: region id %u appears twice", r[i].id);
				memset(t->rmap, 0, sizeof(t->rmap));
				return -EINVAL;
			}
		}
		t->rmap[s].id = r[i].id;
		t->rmap[s].idx1 = (uint8_t)(i + 1);
	}
	memcpy(t->regions, r, n * sizeof(*r));
	t->nregions = n;
	return 0;
}

int rm_ms_left(uint64_t deadline_ns)
{
	uint64_t now = rm_now_ns(), ms;

	if (now >= deadline_ns)
		return 0;
	ms = (deadline_ns - now + 999999) / 1000000;
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

uint64_t rm_tr_session_id(void)
{
	uint64_t v = 0;

	if (getrandom(&v, sizeof(v), 0) != sizeof(v))
		v = rm_now_ns() ^ ((uint64_t)getpid() << 32);
	return v ? v : 1;
}

/* A connection just made starts its liveness thread, or is given up. */
static int live_start(struct rm_transport **t)
{
	int err = rm_ctrl_live_start(*t);

	if (err) {
		rm_err("transport %s: cannot start the liveness thread: %s", (*t)->ops->name,
		       rdmamig_strerror(err));
		rm_tr_abandon(*t, err);
		*t = NULL;
	}
	return err;
}

int rm_tr_listen(const struct rm_transport_opts *opts, struct rm_listener **out)
{
	const struct rm_transport_ops *ops = opts ? rm_transport_ops_for(opts->kind) : NULL;

	if (!ops || !out)
		return -EINVAL;
	return ops->listen(opts, out);
}

int rm_tr_listener_init(struct rm_listener *l, const struct rm_transport_ops *ops,
			const struct rm_transport_opts *in, struct addrinfo **res)
{
	int err;

	l->ops = ops;
	err = rm_tr_opts_fill(&l->opts, in);
	if (err)
		return err;
	l->opts.addr = NULL;
	l->opts.port = NULL;
	return rm_resolve(ops->name, in->addr, in->port ? in->port : "0", true, res);
}

static void *auth_thread(void *arg)
{
	struct rm_tr_auth *a = arg;

	a->err = rm_ctrl_auth(a->t, a->deadline);
	atomic_store(&a->done, true);
	return NULL;
}

/* Join a finished (or cancelled) authentication; its transport when it
 * proved the key, else NULL with the transport forgotten. */
static struct rm_transport *auth_reap(struct rm_listener *l, struct rm_tr_auth *a)
{
	struct rm_transport *t = a->t;

	pthread_join(a->th, NULL);
	a->t = NULL;
	if (!a->err)
		return t;
	/* A source that did not prove the key is forgotten: nothing of the
	 * migration was set up for it. */
	if (a->err == RDMAMIG_E_AUTH)
		atomic_fetch_add(&l->refused_auth, 1);
	rm_tr_abandon(t, a->err);
	return NULL;
}

int rm_tr_accept(struct rm_listener *l, struct rm_transport **out)
{
	uint64_t deadline;

	if (!l || !out)
		return -EINVAL;
	deadline = rm_deadline(l->opts.timeout_ms);
	for (;;) {
		struct rm_tr_auth *slot = NULL;
		struct rm_transport *t;
		int err;

		for (unsigned i = 0; i < RM_TR_AUTHS; i++) {
			struct rm_tr_auth *a = &l->auth[i];

			if (a->t && atomic_load(&a->done) && (t = auth_reap(l, a))) {
				*out = t;
				return live_start(out);
			}
			if (!a->t && !slot)
				slot = a;
		}
		if (!rm_ms_left(deadline))
			return -ETIMEDOUT;
		if (rm_cancelled(l->opts.cancel))
			return -ECANCELED;
		if (!slot) {
			struct timespec ts = { .tv_nsec = 10000000 };

			nanosleep(&ts, NULL);
			continue;
		}
		/* Short slices: a source that finished authenticating is
		 * taken within one, whatever the backend is waiting for. */
		err = l->ops->accept(l, rm_deadline(100) < deadline ? rm_deadline(100) : deadline, &t);
		if (err == -ETIMEDOUT)
			continue;
		if (err)
			return err;
		if (!l->opts.psk_len) {
			*out = t;
			return live_start(out);
		}
		*slot = (struct rm_tr_auth){ .t = t, .deadline = rm_deadline(l->opts.timeout_ms) };
		err = pthread_create(&slot->th, NULL, auth_thread, slot);
		if (err) {
			slot->t = NULL;
			rm_tr_abandon(t, -err);
			return -err;
		}
	}
}

int rm_tr_listener_port(struct rm_listener *l)
{
	if (!l)
		return -EINVAL;
	return l->port;
}

void rm_tr_listener_close(struct rm_listener *l)
{
	if (l) {
		for (unsigned i = 0; i < RM_TR_AUTHS; i++) {
			struct rm_tr_auth *a = &l->auth[i];
			struct rm_transport *t;

			if (!a->t)
				continue;
			rm_tr_cancel(a->t);
			t = auth_reap(l, a);
			if (t)	/* proved the key, but nobody asked for it any more */
				rm_tr_abandon(t, -ECANCELED);
		}
		OPENSSL_cleanse(l->opts.psk, sizeof(l->opts.psk));
		l->ops->listener_close(l);
	}
}

int rm_tr_connect(const struct rm_transport_opts *opts, struct rm_transport **out)
{
	const struct rm_transport_ops *ops = opts ? rm_transport_ops_for(opts->kind) : NULL;
	struct rm_transport_opts o;
	int err;

	if (!ops || !out || !opts->addr || !opts->port)
		return -EINVAL;
	uint64_t deadline;
	struct rm_transport *t;

	err = rm_tr_opts_fill(&o, opts);
	if (err)
		return err;
	deadline = rm_deadline(o.timeout_ms);
	err = ops->connect(&o, rm_tr_session_id(), deadline, &t);
	OPENSSL_cleanse(o.psk, sizeof(o.psk));
	if (err)
		return err;
	err = rm_ctrl_auth(t, deadline);
	if (err)
		return rm_tr_abandon(t, err);
	*out = t;
	return live_start(out);
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
	err = rm_tr_set_regions(t, r, n);
	if (err)
		return err;
	err = rm_ctrl_layout(t, r, n);
	if (err)
		return rm_tr_fail(t, err, "RAM layout exchange");
	t->laid_out = true;
	return 0;
}

int rm_tr_write(struct rm_transport *t, const struct rm_range *r, size_t n)
{
	uint64_t t0, deadline;
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
	if (n > t->widx_cap) {
		uint8_t *p = realloc(t->widx, n);

		if (!p)
			return -ENOMEM;
		t->widx = p;
		t->widx_cap = n;
	}
	/* Each id is resolved here, once, for the checks and for the backend. */
	for (size_t i = 0; i < n; i++) {
		int idx = rm_tr_region_index(t, r[i].region);

		if (idx < 0 || !r[i].length ||
		    !rm_range_ok(r[i].offset, r[i].length, t->regions[idx].size)) {
			rm_err("transport: range %zu {region %u, offset %#llx, length %#llx} is outside RAM",
			       i, r[i].region, (unsigned long long)r[i].offset,
			       (unsigned long long)r[i].length);
			return -EINVAL;
		}
		t->widx[i] = (uint8_t)idx;
	}
	if (!n)
		return 0;
	t0 = rm_now_ns();
	if (!t->st.first_write_at)
		t->st.first_write_at = t0;
	deadline = RM_NO_DEADLINE;	/* full queues wait while the peer is alive */
	for (size_t i = 0; i < n && !err; i++) {
		uint64_t off = r[i].offset, len = r[i].length, took;

		while (len && !err) {
			err = t->ops->write(t, t->widx[i], off,
					    rm_pow2_floor(len < t->opts.max_write ? len : t->opts.max_write),
					    &took, deadline);
			off += took;
			len -= took;
		}
	}
	if (!err)
		err = t->ops->flush(t, deadline);
	t->st.busy_ns += rm_now_ns() - t0;
	if (err)
		return rm_tr_fail(t, err, "write");
	t->st.ranges += n;
	return 0;
}

int rm_tr_seal(struct rm_transport *t)
{
	int err;

	if (!t || t->role != RM_ROLE_DEST || !t->laid_out)
		return -EINVAL;
	atomic_store(&t->sealed, true);
	err = t->ops->seal ? t->ops->seal(t) : 0;
	if (!err)
		rm_dbg("transport %s: RAM sealed: the source can write it no more", t->ops->name);
	return err;
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
	err = rm_ctrl_send(t, type, buf, len);
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
	ret = rm_ctrl_recv(t, msg, timeout_ms);
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
	rm_ctrl_live_stop(t);
	return t->ops->close(t);
}

void rm_tr_stats(struct rm_transport *t, struct rm_transport_stats *out)
{
	if (t && out)
		t->ops->stats(t, out);
}

void rm_tr_cut(struct rm_transport *t)
{
	rm_tr_abandon(t, -ECONNRESET);
}

void rm_tr_cancel(struct rm_transport *t)
{
	if (!t)
		return;
	atomic_store(&t->cancel, true);
	seal_quietly(t);
	/* Waiters on the control queue see it now, not a slice later. */
	pthread_mutex_lock(&t->ctrl.lock);
	pthread_cond_broadcast(&t->ctrl.cond);
	pthread_mutex_unlock(&t->ctrl.lock);
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
	if (!t || chan >= t->nchan || !t->ops->raw_send)
		return -EINVAL;
	return t->ops->raw_send(t, chan, msg, len);
}
