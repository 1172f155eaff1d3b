/*
 * tests/test-transport-fake.h — what the suites of transport/ctrl.c share: a
 * fake backend that records every message ctrl.c posts (and every write
 * piece), ways to feed recorded or hand-built frames to another fake's
 * receive side, and a log hook that keeps the library's messages for
 * assertions.  No socket, no verbs.
 */
#ifndef RDMAMIG_TESTS_TRANSPORT_FAKE_H
#define RDMAMIG_TESTS_TRANSPORT_FAKE_H

#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "transport/priv.h"

#define MAXF 64

struct frame {
	unsigned chan;
	uint16_t type, flags;
	size_t len;		/* body + data */
	uint8_t *buf;
};

struct fake {
	struct rm_transport base;	/* first */
	pthread_mutex_t lock;		/* the liveness thread posts too */
	struct frame f[MAXF];
	unsigned n;
	struct fake *peer;	/* set: every post is also delivered there */
	/* A man in the middle: replaces each AUTH proof before delivery. */
	const uint8_t *forge_mac;
	int busy;			/* post answers -EAGAIN to RM_NOW */
};

static int fake_post(struct rm_transport *t, unsigned chan, uint16_t type, uint16_t flags,
		     const void *body, size_t blen, const void *data, size_t dlen, uint64_t deadline)
{
	struct fake *k = (struct fake *)t;
	struct frame *f;

	if (deadline == RM_NOW && k->busy)
		return -EAGAIN;
	pthread_mutex_lock(&k->lock);
	if (k->n == MAXF) {
		/* Only the liveness-thread case gets here: it posts on until
		 * stopped.  The others assert what they expect. */
		pthread_mutex_unlock(&k->lock);
		return -ENOBUFS;
	}
	f = &k->f[k->n++];
	*f = (struct frame){ .chan = chan, .type = type, .flags = flags, .len = blen + dlen };
	f->buf = malloc(f->len ? f->len : 1);
	if (blen)
		memcpy(f->buf, body, blen);
	if (dlen)
		memcpy(f->buf + blen, data, dlen);
	pthread_mutex_unlock(&k->lock);
	rm_ctrl_tx_note(t, chan, type);	/* as every backend's post does */
	if (k->peer) {
		struct rm_wire_auth *a = (struct rm_wire_auth *)f->buf;
		const char *why = NULL;
		int err;

		if (type == RM_WIRE_AUTH && k->forge_mac &&
		    rm_wire_get32(a->step) >= RM_AUTH_PROOF_SRC)
			memcpy(a->mac, k->forge_mac, RM_WIRE_MAC);
		err = rm_ctrl_rx(&k->peer->base, chan, type, flags, f->buf, f->len, &why);
		if (err && err != RM_CTRL_END)
			rm_tr_fail(&k->peer->base, err, why);
	}
	return 0;
}

static int fake_layout(struct rm_transport *t, const struct rm_region *r, unsigned n,
		       struct rm_wire_region *wire)
{
	for (unsigned i = 0; i < n && t->role == RM_ROLE_DEST; i++) {
		wire[i].rkey = rm_wire_put32(100 + i);
		wire[i].addr = rm_wire_put64(0x10000ull * (i + 1));
	}
	return 0;
}

/* Writes: each piece recorded; a piece longer than `shorten` is cut to it,
 * as RDMA cuts at a lazy-registration chunk end. */
struct piece {
	unsigned idx;
	uint64_t off, len;
};

static struct piece pieces[64];
static unsigned npieces, nflushes;
static uint64_t shorten;

static int fake_write(struct rm_transport *t, unsigned idx, uint64_t off, uint64_t len,
		      uint64_t *took, uint64_t deadline)
{
	cr_assert_lt(npieces, ARRAY_SIZE(pieces));
	if (shorten && len > shorten)
		len = shorten;
	pieces[npieces++] = (struct piece){ idx, off, len };
	*took = len;
	return 0;
}

static int fake_flush(struct rm_transport *t, uint64_t deadline)
{
	nflushes++;
	return 0;
}

static const struct rm_transport_ops fake_ops = {
	.name = "fake",
	.post = fake_post,
	.layout = fake_layout,
	.write = fake_write,
	.flush = fake_flush,
};

static inline struct fake *fake_new(enum rm_role role, unsigned nchan, size_t frag_max)
{
	struct rm_transport_opts o = { .nchan = nchan, .max_write = 1u << 20, .timeout_ms = 1000,
				       .no_auth = true };
	struct fake *k = calloc(1, sizeof(*k));

	cr_assert_not_null(k);
	cr_assert_eq(rm_tr_init(&k->base, &fake_ops, &o, role, nchan, frag_max), 0);
	pthread_mutex_init(&k->lock, NULL);
	return k;
}

static inline void fake_clear(struct fake *k)
{
	for (unsigned i = 0; i < k->n; i++)
		free(k->f[i].buf);
	k->n = 0;
}

static inline void fake_free(struct fake *k)
{
	fake_clear(k);
	rm_tr_destroy(&k->base);
	pthread_mutex_destroy(&k->lock);
	free(k);
}

/* Feed one recorded frame to a receiver. */
static inline int feed(struct fake *to, const struct frame *f, const char **why)
{
	return rm_ctrl_rx(&to->base, f->chan, f->type, f->flags, f->buf, f->len, why);
}

/* A CTRL fragment built by hand: body header + n bytes of payload. */
static inline int feed_ctrl(struct fake *to, unsigned chan, uint16_t flags, uint16_t type, uint64_t total,
		     uint32_t frag, uint64_t epoch, const char **why)
{
	uint8_t buf[sizeof(struct rm_wire_ctrl) + 256];
	struct rm_wire_ctrl b = {
		.type = rm_wire_put16(type),
		.frag_len = rm_wire_put32(frag),
		.total_len = rm_wire_put64(total),
		.epoch = rm_wire_put64(epoch),
	};

	cr_assert_leq(frag, 256);
	memcpy(buf, &b, sizeof(b));
	memset(buf + sizeof(b), 0x5a, frag);
	return rm_ctrl_rx(&to->base, chan, RM_WIRE_CTRL, flags, buf, sizeof(b) + frag, why);
}

/* ---- logs ---- */

static char logbuf[8192];
static size_t loglen;

static void keep_log(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	size_t n = strlen(msg);

	if (n + 2 < sizeof(logbuf) - loglen) {
		memcpy(logbuf + loglen, msg, n);
		loglen += n;
		logbuf[loglen++] = '\n';
		logbuf[loglen] = 0;
	}
}

static inline void log_start(void)
{
	loglen = 0;
	logbuf[0] = 0;
	rdmamig_set_log(keep_log, NULL, RDMAMIG_LOG_DEBUG);
}

static inline void log_stop(void)
{
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_DEBUG);
}

#endif
