/*
 * transport/priv.h — what the backends share: the common part of a
 * connection (embedded first in each backend's struct) with its control
 * layer (ctrl.h), the sticky first error, the region map, argument checks
 * and a few small helpers.  Private to transport/.
 */
#ifndef RDMAMIG_TRANSPORT_PRIV_H
#define RDMAMIG_TRANSPORT_PRIV_H

#include <endian.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "common/log.h"
#include "transport/ctrl.h"
#include "transport/transport.h"

enum rm_role {
	RM_ROLE_SOURCE = 1,
	RM_ROLE_DEST = 2,
};

#define RM_RMAP_SLOTS 128	/* a power of two, twice RM_WIRE_MAX_REGIONS */

struct rm_transport {
	const struct rm_transport_ops *ops;
	struct rm_transport_opts opts;	/* defaults filled in; addr/port not kept */
	enum rm_role role;
	unsigned nchan;
	atomic_bool cancel;
	atomic_int error;		/* first fatal error, 0 while healthy */
	bool laid_out;			/* rm_tr_layout() succeeded */
	/* Destination: the source may write RAM no more (rm_tr_seal(), or the
	 * first error): RDMA access revoked, TCP WRITEs refused. */
	atomic_bool sealed;
	unsigned nregions;
	struct rm_region regions[RM_WIRE_MAX_REGIONS];	/* local RAM, by index */
	/* Region id -> index + 1 (0: empty), open addressing, built once by
	 * rm_tr_layout() so no write searches the regions. */
	struct { uint32_t id; uint8_t idx1; } rmap[RM_RMAP_SLOTS];
	uint8_t *widx;			/* rm_tr_write's resolved indices */
	size_t widx_cap;
	uint32_t peer_max_write;	/* destination: the source's HELLO max_write */
	uint64_t session;		/* the source's HELLO session id */
	uint64_t fence_epoch;		/* source: fences issued */
	struct rm_ctrl ctrl;
	struct rm_transport_stats st;
};

/* Sources authenticating at once, each in a thread of its own, so that one
 * that stays silent holds a slot until its own deadline and never holds up
 * another. */
#define RM_TR_AUTHS 4

struct rm_tr_auth {
	pthread_t th;
	struct rm_transport *t;		/* NULL: a free slot */
	uint64_t deadline;		/* its own: timeout_ms from its accept */
	atomic_bool done;
	int err;
};

/* The common part of a listener, embedded first in each backend's. */
struct rm_listener {
	const struct rm_transport_ops *ops;
	struct rm_transport_opts opts;	/* defaults filled in */
	int port;			/* bound port, host order */
	atomic_uint refused_auth;	/* sources refused for want of the key */
	struct rm_tr_auth auth[RM_TR_AUTHS];	/* outlive rm_tr_accept() calls */
};

struct addrinfo;

/* Fill the common part of a new listener and resolve where it listens
 * (*res for the backend to bind, then freeaddrinfo).  0 or -errno. */
int rm_tr_listener_init(struct rm_listener *l, const struct rm_transport_ops *ops,
			const struct rm_transport_opts *in, struct addrinfo **res);

/* Fill the common part of a new connection (the backend's struct zeroed). */
int rm_tr_init(struct rm_transport *t, const struct rm_transport_ops *ops,
	       const struct rm_transport_opts *o, enum rm_role role, unsigned nchan,
	       size_t frag_max);
/* A zeroed backend connection of size bytes with rm_tr_init() done, or NULL. */
void *rm_tr_new(size_t size, const struct rm_transport_ops *ops, const struct rm_transport_opts *o,
		enum rm_role role, unsigned nchan, size_t frag_max);
/* Free what rm_tr_init() and the wrappers set up (not t itself). */
void rm_tr_destroy(struct rm_transport *t);
/* A connection that failed while being made: mark it failed with err (so
 * close sends no BYE), close it (NULL allowed) and return err. */
int rm_tr_abandon(struct rm_transport *t, int err);

/* Fill zeroed option fields with defaults; -EINVAL on bad values. */
int rm_tr_opts_fill(struct rm_transport_opts *o, const struct rm_transport_opts *in);

/* Record the first fatal error (logging it with what), wake every waiter
 * on ctrl.cond, and return the sticky error, which may be an earlier one.
 * Never with ctrl.lock held. */
int rm_tr_fail(struct rm_transport *t, int err, const char *what);

/* The sticky error, or -ECANCELED if cancelled (rm_tr_cancel or
 * opts.cancel), or 0. */
int rm_tr_check(struct rm_transport *t);

/* Has a caller's opts.cancel fired?  NULL never does. */
static inline bool rm_cancelled(const atomic_int *cancel)
{
	return cancel && atomic_load(cancel);
}

/* Local region index for an id, or -1: O(1), valid after rm_tr_layout(). */
int rm_tr_region_index(const struct rm_transport *t, uint32_t id);

/*
 * Check a peer's (or caller's) range against a region size without
 * overflow: true when [off, off + len) lies inside [0, size).
 */
static inline bool rm_range_ok(uint64_t off, uint64_t len, uint64_t size)
{
	return off <= size && len <= size - off;
}

/* Check a local layout (non-NULL addresses, sizes > 0, unique ids) and
 * build t's region map from it. */
int rm_tr_set_regions(struct rm_transport *t, const struct rm_region *r, unsigned n);

/* Milliseconds left until deadline_ns (>= 0; INT_MAX for RM_NO_DEADLINE). */
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
/* Tests only: an RDMA WRITE of len bytes to offset in the peer's region idx,
 * not checked against its size (the NIC must refuse what is outside). */
int rm_rdma_raw_write(struct rm_transport *t, unsigned idx, uint64_t offset, uint32_t len);
/* Tests only: a destination's live exposures of RAM (bound memory windows,
 * plus one for plain MRs with remote write); 0 once sealed. */
unsigned rm_rdma_exposed(struct rm_transport *t);
/* Tests only: expose destination RAM through plain MRs even where the
 * device has type-2 memory windows (the fallback path). */
extern bool rm_rdma_no_windows;
/* Tests only: how many times this process exposed a destination's RAM to a
 * source (RDMA layouts that published rkeys). */
extern atomic_uint rm_rdma_exposures;

/* A random 64-bit session id. */
uint64_t rm_tr_session_id(void);

/* ---- helpers both backends' connection code uses (net.c) ---- */

/* getaddrinfo for a stream service ("" or NULL addr: any); logs a failure.
 * 0 or -EHOSTUNREACH. */
int rm_resolve(const char *backend, const char *addr, const char *port, bool passive,
	       struct addrinfo **res);

/* O_NONBLOCK on fd: 0 or -errno. */
int rm_set_nonblock(int fd);

#endif
