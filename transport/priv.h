/*
 * transport/priv.h — what the backends share: the common part of a
 * connection (embedded first in each backend's struct), the sticky first
 * error, argument checks and a few small helpers.  Private to transport/.
 */
#ifndef RDMAMIG_TRANSPORT_PRIV_H
#define RDMAMIG_TRANSPORT_PRIV_H

#include <endian.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "common/log.h"
#include "transport/transport.h"

enum rm_role {
	RM_ROLE_SOURCE = 1,
	RM_ROLE_DEST = 2,
};

struct rm_transport {
	const struct rm_transport_ops *ops;
	struct rm_transport_opts opts;	/* defaults filled in; addr/port not kept */
	enum rm_role role;
	unsigned nchan;
	atomic_bool cancel;
	atomic_int error;		/* first fatal error, 0 while healthy */
	bool laid_out;			/* rm_tr_layout() succeeded */
	unsigned nregions;
	struct rm_region regions[RM_WIRE_MAX_REGIONS];	/* local RAM, by index */
	uint64_t fence_epoch;		/* source: fences issued */
	struct rm_transport_stats st;
};

/* Fill zeroed option fields with defaults; -EINVAL on bad values. */
int rm_tr_opts_fill(struct rm_transport_opts *o, const struct rm_transport_opts *in);

/* Record the first fatal error (logging it with what) and return the
 * sticky error, which may be an earlier one. */
int rm_tr_fail(struct rm_transport *t, int err, const char *what);

/* The sticky error, or -ECANCELED if cancelled, or 0. */
int rm_tr_check(struct rm_transport *t);

/* Local region index for an id, or -1. */
int rm_tr_region_index(const struct rm_transport *t, uint32_t id);

/*
 * Check a peer's (or caller's) range against a region size without
 * overflow: true when [off, off + len) lies inside [0, size).
 */
static inline bool rm_range_ok(uint64_t off, uint64_t len, uint64_t size)
{
	return off <= size && len <= size - off;
}

/* Check a local layout: unique ids, non-NULL addresses, sizes > 0. */
int rm_tr_check_regions(const struct rm_region *r, unsigned n);

/* Compare a peer's LAYOUT with ours; fills why on mismatch. */
int rm_tr_match_layout(const struct rm_transport *t, const struct rm_wire_region *peer,
		       unsigned n, char *why, size_t why_len);

/* Check a peer's HELLO: 0 when acceptable, else a REFUSE reason with why. */
uint32_t rm_tr_check_hello(const struct rm_wire_hello *h, char *why, size_t n);

/* Copy text into a NUL-padded wire text field. */
void rm_wire_text(char *dst, const char *src);

/* Milliseconds left until deadline_ns (>= 0). */
int rm_ms_left(uint64_t deadline_ns);

static inline uint64_t rm_deadline(int timeout_ms)
{
	return rm_now_ns() + (uint64_t)timeout_ms * 1000000ull;
}

/* Largest power of two <= x (x > 0). */
static inline uint64_t rm_pow2_floor(uint64_t x)
{
	return 1ull << (63 - __builtin_clzll(x));
}

/*
 * Tests only: put len raw bytes on channel chan as one message (TCP: into
 * the stream; RDMA: one SEND), unchecked, to play a hostile peer.
 */
int rm_tr_raw_send(struct rm_transport *t, unsigned chan, const void *msg, size_t len);
int rm_tcp_raw_send(struct rm_transport *t, unsigned chan, const void *msg, size_t len);
int rm_rdma_raw_send(struct rm_transport *t, unsigned chan, const void *msg, size_t len);
/* Tests only: an RDMA WRITE of len bytes to offset in the peer's region idx,
 * not checked against its size (the NIC must refuse what is outside). */
int rm_rdma_raw_write(struct rm_transport *t, unsigned idx, uint64_t offset, uint32_t len);

/* A random 64-bit session id. */
uint64_t rm_tr_session_id(void);

#endif
