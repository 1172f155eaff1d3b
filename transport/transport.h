/*
 * transport/transport.h — the one ops table the migration engine uses to move
 * guest RAM and control messages, without knowing which backend runs.
 *
 * Backends: "rdma" (librdmacm + libibverbs: one-sided RDMA WRITEs from source
 * guest RAM into destination guest RAM, control on SEND/RECV) and "tcp"
 * (framed stream, pages sent from guest RAM with writev).  The wire protocol is
 * in transport/wire.h; its control part (handshake, LAYOUT, control messages,
 * REFUSE, ABORT) is written once, in transport/ctrl.c, for both backends.
 * This layer never includes kvm/, migration/ or pinning/.
 *
 * Roles: the DESTINATION listens and accepts; the SOURCE connects.  A
 * connection is `nchan` channels (QPs or TCP connections) to one peer.
 *
 * Typical use:
 *   destination                          source
 *   rm_tr_listen(&opts, &l)
 *   rm_tr_accept(l, &t)                  rm_tr_connect(&opts, &t)
 *   rm_tr_layout(t, dst_regions, n)      rm_tr_layout(t, src_regions, n)
 *                                        rm_tr_write(t, ranges, k)   (many)
 *                                        rm_tr_fence(t)
 *                                        rm_tr_send(t, ENGINE_TYPE, buf, len)
 *   rm_tr_recv(t, &msg, timeout)         (all writes before the fence are
 *                                         in destination RAM by now)
 *   rm_tr_send(t, ACK, ...)              rm_tr_recv(t, &msg, timeout)
 *   rm_tr_close(t)                       rm_tr_close(t)
 *
 * Threads: one thread at a time calls the ops of one transport (the engine's
 * migration thread).  rm_tr_cancel() is the exception: any thread, any time.
 * Backends may run their own threads (the TCP receiver does); those never
 * call back into the engine.
 *
 * Liveness: from accept/connect to close, a thread of the connection's own
 * (ctrl.c) sends KEEPALIVE on every channel this side has been quiet on, and
 * fails the connection with -ETIMEDOUT once the peer has been silent on a
 * channel for opts.timeout_ms — whatever the owner is doing meanwhile (a long
 * write, a pacing nap, a VMM callback).  So ops that wait for the peer (a
 * full send queue, a fence, credits, LAYOUT, rm_tr_recv(-1)) wait as long as
 * it is alive: timeouts bound silence, never the length of a migration.
 *
 * Errors: every int op returns >= 0 on success, or a negative code:
 *   -EINVAL              bad argument from the caller (range outside RAM, type
 *                        outside the engine range, ...) — nothing was sent
 *   -ETIMEDOUT           the peer was silent for opts.timeout_ms (or a
 *                        handshake or an explicit recv timeout expired)
 *   -ECANCELED           rm_tr_cancel() was called
 *   -EPIPE               the peer closed the connection in order (BYE)
 *   -ECONNRESET          the peer vanished (reset, EOF, rdma_cm DISCONNECTED)
 *   -ENOMEM, -EMSGSIZE   resources; message larger than RM_WIRE_MAX_CTRL
 *   RDMAMIG_E_PROTO      the peer broke the protocol (malformed, out of range)
 *   RDMAMIG_E_REFUSED    the peer refused the handshake or the layout
 *   RDMAMIG_E_AUTH       the peer did not prove the pre-shared key
 *   RDMAMIG_E_ABORTED    the peer sent ABORT (or we did)
 *   RDMAMIG_E_WC         an RDMA work completion failed (status is logged)
 * After any error other than -EINVAL, or a recv() timeout, the connection is
 * dead: every later op returns the same first error, and only rm_tr_close()
 * remains useful.  A recv() that times out leaves the connection usable.
 * Every error is logged once, with what happened, by the side that saw it.
 */
#ifndef RDMAMIG_TRANSPORT_H
#define RDMAMIG_TRANSPORT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "transport/wire.h"

struct rm_transport;		/* one connection; body private to a backend */
struct rm_listener;		/* a listening endpoint; private to transport/ */

enum rm_transport_kind {
	RM_TRANSPORT_TCP = 1,
	RM_TRANSPORT_RDMA = 2,
};

/*
 * Registration strategy (transport/register.h).  A source registers its RAM
 * for local access; a destination for the source's remote writes.
 *   all     source: every region up front.  Destination: every region, but
 *           behind a staged LAYOUT, chunk by chunk in the source's order,
 *           the source writing each chunk once it is ready (rdma-stage.c).
 *   lazy    source: a chunk the first time it is written.  Destination: as
 *           all (a destination must register a chunk before the source's
 *           first write into it; staged is how it does that late).
 *   odp     on-demand paging, where the device offers it: nothing pinned,
 *           so a destination exposes it up front.
 *   upfront every region before the LAYOUT (a destination's behaviour
 *           before staging, kept for comparison); a source: as all.
 */
enum rm_reg_strategy {
	RM_REG_ALL = 0,		/* the default */
	RM_REG_LAZY = 1,
	RM_REG_ODP = 2,
	RM_REG_UPFRONT = 3,
};

#define RM_TR_DEFAULT_TIMEOUT_MS 10000
/* Pre-shared key bounds: at least 128 bits; HMAC-SHA256 hashes anything
 * longer than its 64-byte block, so more adds nothing. */
#define RM_TR_PSK_MIN 16
#define RM_TR_PSK_MAX 64
#define RM_TR_MIN_TIMEOUT_MS 100

/* Deadlines are rm_now_ns() values; two are special. */
#define RM_NOW 0			/* do not wait at all */
#define RM_NO_DEADLINE UINT64_MAX	/* wait while the peer is alive */

/* 2 QPs: the fastest of 1/2/4 at 256 KiB-2 MiB writes in bench/transport.sh on
 * rxe (71 and 96 MB/s vs 56-57 with 1 QP; 4 QPs did no better).  Revisit
 * on a real NIC. */
#define RM_TR_DEFAULT_NCHAN 2
#define RM_TR_DEFAULT_MAX_WRITE (1u << 20)

/* Options.  Zeroed fields take the defaults noted. */
struct rm_transport_opts {
	enum rm_transport_kind kind;
	const char *addr;	/* listen: local address ("" or NULL: any);
				 * connect: the peer.  IPv4 or IPv6 literal or name. */
	const char *port;	/* service; listen with "0" picks one (rm_tr_listener_port) */
	unsigned nchan;		/* channels: QPs or TCP connections; 0: RM_TR_DEFAULT_NCHAN;
				 * at most RM_WIRE_MAX_CHANNELS.  The destination takes the
				 * source's count if it is within its own bound. */
	uint32_t max_write;	/* largest single RDMA WRITE / TCP frame, a power of two
				 * from 4 KiB to 64 MiB; 0: RM_TR_DEFAULT_MAX_WRITE */
	int timeout_ms;		/* bound on silence: accept and connect wait at
				 * most this long; once connected, a peer that
				 * sends nothing at all (keep-alives included) on
				 * a channel for this long is dead.  Never a bound
				 * on how long an op or a migration takes.
				 * 0: RM_TR_DEFAULT_TIMEOUT_MS; else at least
				 * RM_TR_MIN_TIMEOUT_MS */
	enum rm_reg_strategy reg; /* RDMA registration strategy (above) */
	size_t reg_chunk;	/* source, lazy: chunk bytes (0: 64 MiB);
				 * destination, staged: chunk bytes, rounded down
				 * to a power of two in 1 MiB..1 GiB (0: 8 MiB),
				 * grown where the RAM has too many chunks */
	/* Peer authentication: a key of psk_len bytes (RM_TR_PSK_MIN..MAX)
	 * that both sides hold, proven in the AUTH exchange (wire.h) before
	 * connect/accept return; or no_auth set, which accepts any peer.
	 * Exactly one of the two: zeroed options are refused (-EINVAL), so no
	 * caller runs without authentication by leaving a field out. */
	uint8_t psk[RM_TR_PSK_MAX];
	unsigned psk_len;
	bool no_auth;
	/* TCP: TLS 1.3 on every channel from its first byte, keyed by a key
	 * derived from psk (so psk is required); both sides must set it.
	 * Kernel TLS where the kernel offers it (stats.tls says which). */
	bool tls;
	/* Optional: once *cancel is nonzero, every wait of the listener or
	 * connection made with these options — accept, connect, the
	 * handshake, every op after — ends with -ECANCELED within 100 ms.
	 * The caller keeps it alive until those are closed. */
	const atomic_int *cancel;
};

/* One region of local guest RAM.  ids are the engine's; both sides must
 * expose the same ids with the same sizes. */
struct rm_region {
	uint32_t id;
	void *addr;
	uint64_t size;
};

/* A range of guest RAM to copy: the same offset in the same region on both
 * sides.  Byte granularity; the engine normally passes whole pages. */
struct rm_range {
	uint32_t region;
	uint32_t reserved;	/* zero */
	uint64_t offset;
	uint64_t length;
};

/* A received control message.  data is malloc()ed by the transport and freed
 * by the caller with free(); data is NULL when len is 0. */
struct rm_msg {
	uint16_t type;		/* RM_WIRE_ENGINE_FIRST..RM_WIRE_ENGINE_LAST */
	size_t len;
	void *data;
};

/* Counters since the connection was made.  Monotonic; read any time. */
struct rm_transport_stats {
	uint64_t bytes_written;	/* RAM bytes handed to writes (source) or
				 * placed from the wire (TCP destination) */
	uint64_t ranges;	/* rm_range entries accepted by rm_tr_write */
	uint64_t writes;	/* RDMA WRITEs / TCP WRITE frames after power-of-two
				 * splitting */
	uint64_t wrs_posted;	/* all work requests posted (WRITE, SEND, RECV) */
	uint64_t completions;	/* work completions polled */
	uint64_t ctrl_sent;	/* control messages sent */
	uint64_t ctrl_recv;	/* control messages received */
	uint64_t ctrl_bytes;	/* control payload bytes sent + received */
	uint64_t fences;
	uint64_t busy_ns;	/* wall time spent inside write/fence/send (source:
				 * bytes_written / busy_ns is the achieved bandwidth) */
	unsigned tls;		/* TCP: enum tcp_tls_path of the weakest channel
				 * (0 none, 1 userspace, 2 kernel sending, 3
				 * kernel both ways); = RDMAMIG_TLS_* */
	uint64_t reg_bytes;	/* RAM registered with the device now (RDMA) */
	uint64_t reg_ns;	/* time spent in the registration calls (RDMA) */
	uint64_t ready_wait_ns;	/* source, staged layout: time writes waited for
				 * the destination's READYs (RDMA) */
	uint64_t first_write_at; /* source: rm_now_ns() when the first write was
				  * handed to the backend; 0: none yet */
};

/*
 * The backend table.  Engine code calls the rm_tr_* wrappers below, which
 * pick the backend from opts.kind or from the handle, check arguments and
 * keep the sticky first error.  Control messages (rm_tr_send, rm_tr_recv,
 * the LAYOUT exchange) are the same protocol on every backend and live in
 * ctrl.c, which moves bytes through the post and pump ops.
 */
struct rm_transport_ops {
	const char *name;	/* "tcp", "rdma" */
	/* The destination may hand out its RAM's keys after LAYOUT, chunk by
	 * chunk (a staged LAYOUT, then READYs; ctrl-stage.c).  RDMA: yes;
	 * TCP has no keys, its writes are checked frames. */
	bool late_keys;

	/* Destination.  Bind and listen; non-blocking.  0 or -errno. */
	int (*listen)(const struct rm_transport_opts *opts, struct rm_listener **out);
	/* Destination.  Wait for one source (all its channels), run the
	 * HELLO exchange, refuse bad peers with REFUSE and keep waiting for a
	 * good one until deadline.  Every connection being made has its own
	 * deadline (opts.timeout_ms from its start) and is kept in the
	 * listener across calls, so callers may wait in short slices and a
	 * silent peer costs a bounded slot, not other peers' time.
	 * rm_tr_accept() then runs the AUTH exchange (ctrl.c) on what this
	 * returns.  0, -ETIMEDOUT, -ECANCELED, -errno. */
	int (*accept)(struct rm_listener *l, uint64_t deadline, struct rm_transport **out);
	void (*listener_close)(struct rm_listener *l);

	/* Source.  Resolve, connect every channel, HELLO exchange, with HELLOs
	 * naming session (rm_tr_connect() then runs AUTH).  opts has its defaults filled in (addr and port
	 * kept).  Blocks until deadline (opts.timeout_ms from the call).
	 * 0, RDMAMIG_E_REFUSED (reason logged), -ETIMEDOUT, -ECONNREFUSED,
	 * -errno. */
	int (*connect)(const struct rm_transport_opts *opts, uint64_t session, uint64_t deadline,
		       struct rm_transport **out);

	/* Both sides, once, right after the connection: the backend's part of
	 * rm_tr_layout(), before ctrl.c exchanges LAYOUT.  The destination
	 * registers its regions for remote write and fills each wire[i].rkey
	 * and .addr its peer needs (TCP: none); the source registers its
	 * regions for local access (per opts.reg).  Registration takes as
	 * long as it takes (keep-alives flow meanwhile).  0, -ENOMEM (memlock: logged with the number
	 * needed), -EOPNOTSUPP (ODP asked, the device has none), -errno. */
	int (*layout)(struct rm_transport *t, const struct rm_region *r, unsigned n,
		      struct rm_wire_region *wire);

	/* Source.  Queue one write of [off, off + len) of local region idx to
	 * the same place in the destination's RAM, or of a prefix of it where
	 * the backend must split further (RDMA: a lazy-registration chunk
	 * ends there); *took is the bytes queued (> 0).  rm_tr_write() hands
	 * the engine's ranges as they come (the engine merged adjacent pages;
	 * nobody merges again), cut into power-of-two lengths of at most
	 * max_write.  Backends spread writes over channels.  Blocks only while
	 * queues are full, until deadline.  The source RAM is read until a
	 * later fence returns.  0 or -errno. */
	int (*write)(struct rm_transport *t, unsigned idx, uint64_t off, uint64_t len,
		     uint64_t *took, uint64_t deadline);
	/* Source.  Hand every queued write to the NIC (RDMA: post the chains)
	 * or the kernel (TCP: the sockets), blocking only while they are full,
	 * until deadline.  0 or -errno. */
	int (*flush)(struct rm_transport *t, uint64_t deadline);

	/* Source.  Puts a MARKER after the writes on every channel and waits
	 * until every write before it has completed (RDMA) or been sent (TCP).
	 * Afterwards every control message the source sends is delivered to
	 * the destination only after those writes are in destination RAM.
	 * Blocks at most opts.timeout_ms.  0 or error. */
	int (*fence)(struct rm_transport *t);

	/* Both sides: frame one message {header, body of blen, data of dlen}
	 * onto channel chan, in order with the channel's earlier messages and
	 * writes.  Returns when the bytes are queued (TCP: written to the
	 * socket; RDMA: SEND posted, into a credit the peer granted), blocking
	 * at most until deadline (RM_NO_DEADLINE: while the peer is alive).
	 * ctrl.c sends every control message with it.  deadline RM_NOW: only
	 * if it can go at once without waiting and without cutting into
	 * another frame, else -EAGAIN, quietly (keep-alives, from the
	 * liveness thread, while the owner may be in any op).
	 * 0, -EMSGSIZE (larger than the backend's buffers), -errno. */
	int (*post)(struct rm_transport *t, unsigned chan, uint16_t type, uint16_t flags,
		    const void *body, size_t blen, const void *data, size_t dlen, uint64_t deadline);

	/* Both sides: handle what has arrived, waiting for it at most one
	 * 100 ms slice and never past deadline (RDMA: poll the CQs and the
	 * rdma_cm events).  NULL where receiver threads hand messages to
	 * ctrl.c on their own and wake ctrl.cond (TCP).  Also called with
	 * deadline RM_NOW from the liveness thread, while the owner may be in
	 * any op.  0 or the sticky error. */
	int (*pump)(struct rm_transport *t, uint64_t deadline);

	/* Either side.  Send ABORT {reason, text} best-effort (bounded by
	 * 1 s), then mark the connection dead with RDMAMIG_E_ABORTED.  reason
	 * is a negative errno or RDMAMIG_E_*.  Always returns 0. */
	int (*abort)(struct rm_transport *t, int reason, const char *text);

	/* Either side.  Send BYE if still healthy, tear everything down
	 * best-effort (keeps going past failures), free t.  NULL is allowed.
	 * 0 or the first teardown error. */
	int (*close)(struct rm_transport *t);

	/* Destination.  End the source's remote access to RAM now (RDMA:
	 * invalidate the memory windows, or deregister the RAM where there
	 * are none), so that no later write of the peer lands.  Called by
	 * rm_tr_seal() and on the connection's first error (rm_tr_fail(),
	 * rm_tr_cancel()): any thread, with or without the backend's locks
	 * held, any number of times; never waits for the peer.  NULL where
	 * t->sealed is enough (TCP refuses WRITE frames once it is set).
	 * 0 or the first -errno of the revocation. */
	int (*seal)(struct rm_transport *t);

	void (*stats)(struct rm_transport *t, struct rm_transport_stats *out);

	/* Either side, optional: the backend's own state that tells a lost
	 * message from one never sent (RDMA: credits, send and receive
	 * completions per QP), as text into buf, for an error.  Any thread
	 * outside the backend's ops. */
	void (*describe)(struct rm_transport *t, char *buf, size_t n);

	/* Tests only: put len raw bytes on channel chan as one message (TCP:
	 * into the stream; RDMA: one SEND), unchecked, to play a hostile peer. */
	int (*raw_send)(struct rm_transport *t, unsigned chan, const void *msg, size_t len);
};

extern const struct rm_transport_ops rm_transport_tcp_ops;
extern const struct rm_transport_ops rm_transport_rdma_ops;

/* The table for a kind, or NULL. */
const struct rm_transport_ops *rm_transport_ops_for(enum rm_transport_kind kind);

/* Wrappers: same contracts as the ops above, except where said.  listen
 * and connect refuse options with neither a key nor no_auth (-EINVAL). */
int rm_tr_listen(const struct rm_transport_opts *opts, struct rm_listener **out);
/* Destination: the accept op, then (with a key) the AUTH exchange, each
 * source in a thread of its own (at most RM_TR_AUTHS at once, each bounded
 * by its own opts.timeout_ms, kept across calls until listener close); the
 * first to prove the key is returned.  A source that fails is refused,
 * closed and forgotten, and accept keeps waiting until opts.timeout_ms.  Nothing the engine could allocate or
 * register happens before this returns 0.  Logs nothing on -ETIMEDOUT:
 * the caller decides whether waiting longer is news. */
int rm_tr_accept(struct rm_listener *l, struct rm_transport **out);
/* The bound port, host order; >0 or -errno. */
int rm_tr_listener_port(struct rm_listener *l);
void rm_tr_listener_close(struct rm_listener *l);
/* Source: the connect op, then (with a key) the AUTH exchange.
 * RDMAMIG_E_AUTH when the destination did not prove the key or refused
 * our proof; RDMAMIG_E_REFUSED when one side has a key and the other none. */
int rm_tr_connect(const struct rm_transport_opts *opts, struct rm_transport **out);

/* Both sides, once, right after the connection.  The destination
 * registers its regions for remote write and sends LAYOUT; the source
 * registers its regions for local access (per opts.reg), receives the
 * LAYOUT and checks that every id exists on both sides with the same
 * size, refusing a mismatch.  Waits while the peer is alive.
 * 0, RDMAMIG_E_REFUSED, RDMAMIG_E_PROTO, -ENOMEM (memlock: logged with the
 * number needed), -errno. */
int rm_tr_layout(struct rm_transport *t, const struct rm_region *r, unsigned n);

/* Source.  The write op, for ranges named by region id: -EINVAL (a range
 * outside a region: nothing posted). */
int rm_tr_write(struct rm_transport *t, const struct rm_range *r, size_t n);
int rm_tr_fence(struct rm_transport *t);

/* Destination, once the source's last fence is known done (its COMMIT has
 * arrived): the source may write RAM no more.  RDMA: its rkeys stop working
 * at once (a later WRITE fails on its QP with a remote access error and
 * touches nothing); TCP: a later WRITE frame is a protocol error.  The
 * first error of a destination connection (an ABORT either way, a
 * disconnect, silence) and a cancel seal it too.  Idempotent.  0,
 * -EINVAL (not a destination after rm_tr_layout()), or the backend's
 * error: then the RAM may still be exposed and the guest must not run. */
int rm_tr_seal(struct rm_transport *t);

/* Both sides.  Send one control message of len bytes (0 allowed, at most
 * RM_WIRE_MAX_CTRL) of an engine type; messages arrive in order.  Returns
 * when the bytes are queued (buf may be reused); blocks while the peer
 * grants no credit / the socket is full, while the peer is alive.
 * 0, -EINVAL (type), -EMSGSIZE, -errno. */
int rm_tr_send(struct rm_transport *t, uint16_t type, const void *buf, size_t len);

/* Both sides.  Wait up to timeout_ms (0: poll; < 0: as long as the peer is
 * alive, see Liveness above) for the next control message.  1 with *msg
 * filled, 0 on timeout when timeout_ms == 0 was asked, -ETIMEDOUT otherwise
 * (the connection survives it), or an error
 * (RDMAMIG_E_ABORTED with the peer's reason logged, -EPIPE, ...).  The peer
 * may have at most RM_WIRE_MAX_QUEUED messages waiting here unread. */
int rm_tr_recv(struct rm_transport *t, struct rm_msg *msg, int timeout_ms);
int rm_tr_abort(struct rm_transport *t, int reason, const char *text);
int rm_tr_close(struct rm_transport *t);
void rm_tr_stats(struct rm_transport *t, struct rm_transport_stats *out);
/* Any thread, any time: ops in progress and later return -ECANCELED within
 * 100 ms.  Safe until rm_tr_close().  (opts.cancel does the same for a
 * connection not made yet.) */
void rm_tr_cancel(struct rm_transport *t);
/* Either side: drop the connection as a cut link would — no BYE, no ABORT;
 * the peer sees it vanish (-ECONNRESET).  Frees t like rm_tr_close().  For
 * the engine's test-only fault points (common/fault.h). */
void rm_tr_cut(struct rm_transport *t);
/* Free a received message's data and zero it. */
void rm_msg_free(struct rm_msg *msg);

#endif
