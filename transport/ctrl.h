/*
 * transport/ctrl.h — the control protocol of wire.h, written once for every
 * backend: the queue of received control messages and its bound, fragmenting
 * send and reassembly, the fence epochs that hold a CTRL back, HELLO and
 * HELLO_ACK bodies and their checks, peer authentication (AUTH), the LAYOUT
 * exchange, REFUSE, ABORT and BYE, and liveness: KEEPALIVE on quiet channels
 * and the silence bound.
 *
 * A backend only moves bytes: it frames one message onto a channel (the
 * `post` op: a TCP write, an RDMA SEND) and hands each message it receives to
 * rm_ctrl_rx() (or, streaming a CTRL payload, to rm_ctrl_rx_begin() and
 * rm_ctrl_rx_end()).  It keeps its own connection management.  Nothing here
 * touches a socket or a verbs object, so tests/test-transport-ctrl.c drives it
 * with a fake backend.
 *
 * Threads: the receive functions may run on backend threads (TCP runs one per
 * channel) while the owner sends and receives; the queue, epochs and flags are
 * under ctrl.lock, and ctrl.cond is broadcast on every change and on failure
 * (rm_tr_fail).  No function here may be called with ctrl.lock held.
 */
#ifndef RDMAMIG_TRANSPORT_CTRL_H
#define RDMAMIG_TRANSPORT_CTRL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "transport/wire.h"

struct rm_transport;
struct rm_transport_opts;
struct rm_region;
struct rm_msg;

/* Default bounds on what a peer can make a receiver hold unread. */
#define RM_CTRL_QUEUE_MSGS RM_WIRE_MAX_QUEUED
#define RM_CTRL_QUEUE_BYTES (2 * (size_t)RM_WIRE_MAX_CTRL)

/* rm_ctrl_rx() after a BYE: the peer sends nothing more on that channel. */
#define RM_CTRL_END 1

/* The destination's RAM as the source sees it, by local region index. */
struct rm_ctrl_peer_region {
	uint64_t addr;		/* RDMA: remote virtual address */
	uint32_t rkey;		/* RDMA: remote key (channel 0's) */
	/* RDMA: the key to use on each channel: rkey on all of them, or one
	 * memory window's each where the LAYOUT carried per-channel keys. */
	uint32_t chan_rkey[RM_WIRE_MAX_CHANNELS];
	unsigned pos;		/* the region's position in the LAYOUT */
};

struct rm_ctrl_msg;		/* one received message; private to ctrl.c */

struct rm_ctrl {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	size_t frag_max;		/* largest fragment this side sends */
	unsigned max_msgs;		/* bounds on the queue plus the message */
	size_t max_bytes;		/* being reassembled (tests lower them) */

	/* Complete messages, oldest first, waiting for rm_tr_recv(). */
	struct rm_ctrl_msg *head, *tail;
	unsigned queued;
	size_t queued_bytes;		/* their data, plus asm_cap */

	/* The message being reassembled from channel 0's fragments. */
	struct rm_ctrl_msg *asm_msg;
	size_t asm_got, asm_cap, asm_frag;
	uint16_t asm_flags;

	uint64_t epoch[RM_WIRE_MAX_CHANNELS];	/* destination: last MARKER seen */
	bool peer_bye;			/* BYE arrived on channel 0 */

	/* AUTH (wire.h): authed once the peer's proof checked out (or with
	 * no key); until then only AUTH, REFUSE, ABORT and BYE are taken. */
	bool authed;
	bool auth_bad;			/* the peer's proof was wrong */
	unsigned auth_sent, auth_got;	/* last step sent, received (channel 0) */
	/* Channels whose peer proved, by AUTH step 5 or 6, that it is the
	 * peer of channel 0's exchange (bit 0: channel 0, once authed); only
	 * AUTH, REFUSE, ABORT and BYE are taken on a channel before.
	 * join_sent: channels this side is sending its own proof on (set
	 * before the post, as the answer may come at once); join_posted: the
	 * proof is on its way, so other messages may follow it. */
	uint32_t joined, join_sent, join_posted;
	uint8_t nonce_src[RM_WIRE_NONCE];
	uint8_t nonce_dst[RM_WIRE_NONCE];

	/* Source: the destination's LAYOUT, as received, then matched. */
	bool have_layout;
	unsigned peer_nregions;
	struct rm_wire_region peer_regions[RM_WIRE_MAX_REGIONS];
	bool peer_chan_keys;		/* RM_WIRE_LAYOUT_CHAN_KEYS came */
	__le32 peer_keys[RM_WIRE_MAX_REGIONS * (RM_WIRE_MAX_CHANNELS - 1)];
	struct rm_ctrl_peer_region peer[RM_WIRE_MAX_REGIONS];
	/* Source, staged LAYOUT (ctrl-stage.c): 0 when not staged, else
	 * log2 of the chunk size; where each LAYOUT entry's chunks start in
	 * the tables (entry count: the total); per chunk the keys of its
	 * READY (nchan each) and whether it came.  Allocated when the LAYOUT
	 * arrives, bounded by RM_WIRE_MAX_CHUNKS; written under lock, ready
	 * set last, so a reader that sees it set may read the keys unlocked. */
	unsigned stage_shift;
	uint32_t stage_base[RM_WIRE_MAX_REGIONS + 1];
	uint32_t *stage_keys;
	_Atomic uint8_t *stage_ready;
	uint32_t stage_nready;
	_Atomic uint32_t stage_waiting;	/* the chunk + 1 the source waits for */
	_Atomic uint64_t stage_wait_ns;	/* time it waited for READYs */

	/* Destination, RDMA: the backend's layout op sets chan_keys and fills
	 * keys (as the LAYOUT carries them) when it bound a window per
	 * channel. */
	bool chan_keys;
	__le32 keys[RM_WIRE_MAX_REGIONS * (RM_WIRE_MAX_CHANNELS - 1)];
	/* Destination, RDMA: the layout op sets it (log2 of the chunk size)
	 * when it registers behind a staged LAYOUT and sends READYs. */
	unsigned chunk_shift;

	/* Liveness: when this side last put bytes on each channel, and when it
	 * last heard from the peer on each (rm_now_ns()). */
	_Atomic uint64_t last_tx[RM_WIRE_MAX_CHANNELS];
	_Atomic uint64_t last_rx[RM_WIRE_MAX_CHANNELS];
	uint64_t keepalive_ns;		/* quiet spell after which we send one */

	/* Diagnostics, for the error of a handshake that timed out: per
	 * channel, the type of the last message put on it and taken from it,
	 * when (rm_now_ns(), 0: never) and how many (rm_ctrl_tx_note,
	 * rm_ctrl_rx_note).  Kept apart from last_tx/last_rx, which the
	 * liveness rounds also move. */
	_Atomic uint16_t tx_type[RM_WIRE_MAX_CHANNELS], rx_type[RM_WIRE_MAX_CHANNELS];
	_Atomic uint64_t tx_at[RM_WIRE_MAX_CHANNELS], rx_at[RM_WIRE_MAX_CHANNELS];
	_Atomic uint32_t tx_n[RM_WIRE_MAX_CHANNELS], rx_n[RM_WIRE_MAX_CHANNELS];
	pthread_cond_t live_cond;	/* wakes the liveness thread to stop */
	pthread_t live;
	bool live_started;
	bool live_stop;			/* under lock: the thread ends */
};

/* A LAYOUT body as sent. */
struct rm_ctrl_layout_msg {
	struct rm_wire_layout l;
	struct rm_wire_region r[RM_WIRE_MAX_REGIONS];
	__le32 keys[RM_WIRE_MAX_REGIONS * (RM_WIRE_MAX_CHANNELS - 1)];
};

/* Largest body of a message other than CTRL and WRITE (a full LAYOUT). */
#define RM_CTRL_BODY_MAX sizeof(struct rm_ctrl_layout_msg)

/* Set up and tear down.  frag_max: the largest fragment payload this side
 * sends (at most RM_WIRE_MAX_FRAG).  0 or -errno. */
int rm_ctrl_init(struct rm_ctrl *q, size_t frag_max);
void rm_ctrl_destroy(struct rm_ctrl *q);

/* ---- receiving (backend receive paths) ---- */

/*
 * One whole message of `type` with its body (header already taken off) from
 * channel chan: MARKER, CTRL, LAYOUT, READY, ABORT, REFUSE or BYE.  Returns 0;
 * RM_CTRL_END after a BYE; RDMAMIG_E_PROTO when the peer broke the protocol;
 * RDMAMIG_E_ABORTED or RDMAMIG_E_REFUSED when it said so (its text is
 * logged here); -ENOMEM.  On an error *why says what happened, for the
 * backend's rm_tr_fail() and, on a protocol error, its ABORT to the peer.
 */
int rm_ctrl_rx(struct rm_transport *t, unsigned chan, uint16_t type, uint16_t flags,
	       const void *body, size_t len, const char **why);

/*
 * A CTRL fragment read from a stream: b is its body header, len the header's
 * length (body header plus fragment).  On 0, *dst has room for the fragment's
 * bytes, which the caller reads there and then commits with rm_ctrl_rx_end().
 * Same errors as rm_ctrl_rx().
 */
int rm_ctrl_rx_begin(struct rm_transport *t, unsigned chan, uint16_t flags,
		     const struct rm_wire_ctrl *b, size_t len, void **dst, const char **why);
int rm_ctrl_rx_end(struct rm_transport *t, const char **why);

/* Destination: has every channel reached MARKER epoch (under ctrl.lock)? */
bool rm_ctrl_epoch_reached(const struct rm_transport *t, uint64_t epoch);

/* ---- the owner's ops ---- */

/* Send one engine message, in fragments of frag_max.  0 or error. */
int rm_ctrl_send(struct rm_transport *t, uint16_t type, const void *buf, size_t len);

/* The next deliverable message: 1, 0 when timeout_ms passed (< 0: waits
 * while the peer is alive), or error. */
int rm_ctrl_recv(struct rm_transport *t, struct rm_msg *msg, int timeout_ms);

/*
 * The LAYOUT exchange after the backend's own layout op (registration).
 * Destination: sends LAYOUT.  Source: waits for it, matches it with t's
 * regions and fills ctrl.peer; on a mismatch sends REFUSE and returns
 * RDMAMIG_E_REFUSED (or RDMAMIG_E_PROTO for a malformed one).
 */
int rm_ctrl_layout(struct rm_transport *t, const struct rm_region *r, unsigned n);

/* Match a received LAYOUT with t's regions: 0, or RDMAMIG_E_REFUSED /
 * RDMAMIG_E_PROTO with why filled.  Fills ctrl.peer on success. */
int rm_ctrl_layout_match(struct rm_transport *t, char *why, size_t why_len);

/* ---- staged layouts (ctrl-stage.c) ---- */

/* Under ctrl.lock, from rx_layout: check a LAYOUT's staging fields and the
 * chunk count of its n regions r[], and set up the source's READY tables.
 * 0, or RDMAMIG_E_PROTO / -ENOMEM with why. */
int rm_ctrl_stage_layout(struct rm_transport *t, uint32_t flags, uint32_t shift,
			 const struct rm_wire_region *r, unsigned n, const char **why);

/* A READY body from channel chan (the rm_ctrl_rx contract). */
int rm_ctrl_rx_ready(struct rm_transport *t, unsigned chan, const void *body, size_t len,
		     const char **why);

/*
 * Source, staged LAYOUT matched: the chunk that holds offset off of local
 * region idx, waited for until its READY came (while the peer is alive:
 * the connection's error, a cancel or a BYE end the wait).  *end: the
 * offset in the region where the chunk ends; *keys: its nchan rkeys.  The
 * time waited adds to ctrl.stage_wait_ns.  0 or error.
 */
int rm_ctrl_stage_wait(struct rm_transport *t, unsigned idx, uint64_t off, uint64_t *end,
		       const uint32_t **keys);

/* Chunks in a region of size bytes at chunk shift (size > 0). */
static inline uint64_t rm_ctrl_chunks(uint64_t size, unsigned shift)
{
	return (size >> shift) + ((size & ((1ull << shift) - 1)) != 0);
}

/* ---- authentication ---- */

/* What a refused side is told, in full (REFUSE text holds only 48 bytes). */
#define RM_AUTH_HINT "the peer did not prove the pre-shared key: wrong key or none; " \
		     "check --psk on both sides"

/*
 * The AUTH exchange of wire.h on channel 0 of a connection just made, before
 * anything else is sent on it; a no-op without a key.  Blocks until deadline.
 * 0 once the peer proved the key; RDMAMIG_E_AUTH when it did not (the
 * destination sends REFUSE {RM_REFUSE_AUTH} first), or the connection's
 * error.  Logged.
 */
int rm_ctrl_auth(struct rm_transport *t, uint64_t deadline);

/* HMAC-SHA256 proof of role ('S' or 'D') over t's session, nchan and both
 * nonces; exposed for tests/test-transport-ctrl.c. */
int rm_ctrl_auth_mac(const struct rm_transport *t, char role, uint8_t mac[RM_WIRE_MAC]);
/* The proof that channel chan belongs to t's session (AUTH steps 5 and 6,
 * wire.h), by role; exposed for the hostile suites. */
int rm_ctrl_join_mac(const struct rm_transport *t, char role, unsigned chan,
		     uint8_t mac[RM_WIRE_MAC]);

/* ---- liveness ----
 *
 * Silence, not length, ends a connection.  Backends note every channel they
 * put bytes on (rm_ctrl_sent) and every channel they hear from
 * (rm_ctrl_heard: any bytes on TCP, any received message on RDMA — WRITEs
 * land unseen).  rm_ctrl_live() does one round of the rest, and the liveness
 * thread runs it every few tens of milliseconds from the connection's start
 * to its close, whatever the owner is doing:
 *   - a channel quiet for keepalive_ns (RM_WIRE_KEEPALIVE_MS, or a quarter
 *     of opts.timeout_ms if less) gets a KEEPALIVE, posted with RM_NOW: a
 *     backend that cannot send one at once (a frame half sent, no credit, a
 *     full socket) says -EAGAIN and the next round tries again;
 *   - a channel the peer has been silent on for opts.timeout_ms fails the
 *     connection with -ETIMEDOUT, which ends every wait of the owner.
 * After the peer's BYE neither happens.
 */

/* Note bytes sent on / heard from channel chan now.  Any thread. */
void rm_ctrl_sent(struct rm_transport *t, unsigned chan);
void rm_ctrl_heard(struct rm_transport *t, unsigned chan);

/* Note a whole message of type put on channel chan (backends, on every
 * post: keep-alives and credits included) or taken from it (rm_ctrl_rx
 * does, and the backends for what they keep to themselves: RDMA's
 * CREDIT).  Any thread. */
void rm_ctrl_tx_note(struct rm_transport *t, unsigned chan, uint16_t type);
void rm_ctrl_rx_note(struct rm_transport *t, unsigned chan, uint16_t type);

/* What the connection's channels last carried, for an error: the AUTH
 * steps sent and taken, then per channel the messages sent and received,
 * the last of each by type and age, then the backend's own state (its
 * describe op).  Never with ctrl.lock held.  Returns buf. */
const char *rm_ctrl_describe(struct rm_transport *t, char *buf, size_t n);

/* One round at time now (rm_now_ns() clock): 0, or the connection's error
 * (the silence is recorded with rm_tr_fail). */
int rm_ctrl_live(struct rm_transport *t, uint64_t now);

/* Is a KEEPALIVE due on chan at time now?  For a backend that also sends
 * them from its own progress loop (RDMA: where the owner keeps the data path
 * busy, the liveness thread's RM_NOW post finds it taken). */
bool rm_ctrl_keepalive_due(struct rm_transport *t, unsigned chan, uint64_t now);

/* Start the liveness thread (every channel counts as just heard from and
 * sent on), and stop it: before the backend tears down.  Stop is safe when
 * never started.  0 or -errno. */
int rm_ctrl_live_start(struct rm_transport *t);
void rm_ctrl_live_stop(struct rm_transport *t);

/* ---- handshake bodies ---- */

/* A source's HELLO for channel chan; credits: RDMA receive buffers, TCP 0.
 * Offers RM_CAP_AUTH when o has a key. */
void rm_ctrl_hello(struct rm_wire_hello *h, const struct rm_transport_opts *o, unsigned chan,
		   uint64_t session, uint32_t credits);

/*
 * A destination's checks of a HELLO.  rdma: credits must be granted (TCP: 0).
 * auth: this destination has a key, so the HELLO must offer RM_CAP_AUTH.
 * 0 when acceptable, else an RM_REFUSE_* reason with why filled.
 */
uint32_t rm_ctrl_hello_check(const struct rm_wire_hello *h, bool rdma, bool auth, char *why,
			     size_t n);

/* The first message on a channel, of type and blen bytes: a HELLO that
 * passes rm_ctrl_hello_check, copied to *h; else a reason with why. */
uint32_t rm_ctrl_hello_parse(uint16_t type, const void *body, size_t blen, bool rdma, bool auth,
			     struct rm_wire_hello *h, char *why, size_t n);

/*
 * A HELLO for a migration being accepted: t is NULL for the first channel,
 * else the connection so far (session, nchan, max_write must match).
 * chan_taken: that channel index is connected already.  0 or a reason.
 */
uint32_t rm_ctrl_hello_join(const struct rm_wire_hello *h, const struct rm_transport *t,
			    uint64_t session, bool chan_taken, char *why, size_t n);

/* The destination's reply to an accepted HELLO (credits, ctrl_buf: RDMA);
 * it grants RM_CAP_AUTH only when the destination has a key (auth). */
void rm_ctrl_hello_ack(struct rm_wire_hello_ack *a, const struct rm_wire_hello *h,
		       uint32_t credits, uint32_t ctrl_buf, bool auth);

/*
 * The source's reading of the destination's reply (type, body of blen bytes)
 * to HELLO h on channel chan.  ctrl_buf: the buffer size an RDMA source needs
 * (0 on TCP, where credits and ctrl_buf must be 0).  0 with *ack filled;
 * RDMAMIG_E_REFUSED or RDMAMIG_E_PROTO, logged with what the destination said
 * or, naming the field, what was wrong; RDMAMIG_E_AUTH when it refused for
 * authentication.  A source with a key (RM_CAP_AUTH in h) refuses a
 * destination that does not take the AUTH exchange.
 */
int rm_ctrl_hello_reply(const char *backend, unsigned chan, uint16_t type, const void *body,
			size_t blen, const struct rm_wire_hello *h, uint32_t ctrl_buf,
			struct rm_wire_hello_ack *ack);

/* ---- REFUSE, ABORT ---- */

void rm_ctrl_refuse_body(struct rm_wire_refuse_body *b, uint32_t reason, const char *text);

/* reason: a negative errno or RDMAMIG_E_* (any int: INT_MIN included). */
void rm_ctrl_abort_body(struct rm_wire_abort_body *b, int reason, const char *text);

/* The error code an ABORT's wire reason stands for (the negated errno or
 * RDMAMIG_E_*), or 0 when the number is no code at all. */
int rm_ctrl_abort_reason(uint32_t wire);

/*
 * A received frame in one buffer (rdma_cm private data): the header's type,
 * and the body, which must lie inside len (trailing padding allowed).
 * 0, or -EPROTO when the buffer holds no whole message.
 */
int rm_ctrl_unframe(const void *buf, size_t len, uint16_t *type, const void **body, size_t *blen);

/* Shared by ctrl*.c only. */

/*
 * Wait, under ctrl.lock, until done(t, arg) holds (1), the connection fails,
 * the peer said BYE (-EPIPE) or the deadline passes (0).
 */
int rm_ctrl_wait_for(struct rm_transport *t, uint64_t deadline,
		     bool (*done)(struct rm_transport *t, void *arg), void *arg);

/* Who the peer is, for logs: "the destination" or "the source". */
const char *rm_ctrl_peer_name(const struct rm_transport *t);

#endif
