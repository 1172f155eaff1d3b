/*
 * transport/wire.h — the transport's wire protocol, readable from this comment.
 *
 * Every message starts with a fixed 16-byte little-endian header followed by a
 * body whose size is fixed per type (WRITE and CTRL then carry `len` payload
 * bytes).  Type 0 is reserved as invalid, so a zeroed buffer means nothing.
 * Multi-byte fields are little-endian on the wire and typed __le16/__le32/
 * __le64, so sparse sees a missed conversion; rm_wire_put*() and rm_wire_get*()
 * convert.  Every reserved field is zero, and receivers check it.
 *
 * Roles: the destination listens, the source connects.  A connection is
 * `nchan` channels (TCP connections or RC QPs); channel 0 also carries control.
 *
 *   source (connect)                         destination (listen)
 *   1. HELLO {version range, caps, nchan,
 *      chan, session, max_write, credits}
 *      on every channel                  ->  checks magic, version, caps, nchan,
 *                                            max_write, credits
 *                                        <-  HELLO_ACK {version, caps, credits,
 *                                            ctrl_buf}, checked by the source
 *                                            or REFUSE {reason, text}; close
 *      (RDMA: HELLO rides in the rdma_cm connect private data, HELLO_ACK in
 *       the accept's, REFUSE in the reject's.)
 *      A destination with a pre-shared key refuses a HELLO without
 *      RM_CAP_AUTH (REFUSE {RM_REFUSE_AUTH}); a source with a key refuses a
 *      HELLO_ACK without it.  Both sides have a key, or neither (--no-auth).
 *   1a. AUTH {step 1, nonce_s}  on channel 0  ->  (the first SEND/RECV on
 *                                              RDMA; before anything else)
 *                                        <-  AUTH {step 2, nonce_d}
 *      AUTH {step 3, mac_s}              ->  checks mac_s: else REFUSE
 *                                            {RM_REFUSE_AUTH} and close
 *                                        <-  AUTH {step 4, mac_d}, checked
 *      mac_x = HMAC-SHA256(key, RM_WIRE_AUTH_LABEL, role x ('S' or 'D'),
 *      session, nchan, nonce_s, nonce_d): each side proves the key over both
 *      sides' fresh nonces and its own role, so neither a reflected nor a
 *      replayed proof passes.  The source proves first: a peer without the
 *      key learns no proof, and the destination sends nothing but its nonce
 *      and allocates nothing for the migration before step 3 checks out.
 *      Until then a receiver takes nothing but AUTH, REFUSE, ABORT and BYE.
 *   1b. AUTH {step 5, join_s}  on every channel c > 0, once the source
 *       checked mac_d           ->  checks join_s: else the connection
 *                                    fails (the channel was not the source's)
 *                                <-  AUTH {step 6, join_d} on channel c,
 *                                    checked by the source
 *      join_x = HMAC-SHA256(K, RM_WIRE_JOIN_LABEL, role x, c) with the
 *      session key K = HMAC-SHA256(key, RM_WIRE_SESSION_LABEL, session,
 *      nchan, nonce_s, nonce_d).  A channel joins a connection by the
 *      session id of its HELLO, which crosses the network in the clear
 *      (inside TLS with --tls): anyone who saw it could connect a channel
 *      of its own into the session first.  So each channel but 0 proves
 *      that its peer took part in channel 0's exchange: K is fresh with
 *      both nonces, so a proof replayed from another session fails, and
 *      it names the channel, so one channel's proof is no other's.  The
 *      destination sends LAYOUT (RDMA: the rkeys) and takes MARKER, WRITE
 *      or anything else on channel c only after join_s checked out.
 *   2.                                   <-  LAYOUT {count, flags, chunk_shift,
 *                                              regions[]: id, size, addr, rkey}
 *      source checks every region id and size against its own RAM; on a
 *      mismatch it sends REFUSE {RM_REFUSE_LAYOUT} and fails.  With flag
 *      RM_WIRE_LAYOUT_CHAN_KEYS (RDMA, type-2 memory windows, which work
 *      only on the QP they were bound to) the regions are followed by
 *      count * (nchan - 1) __le32 rkeys: region 0's for channels 1..nchan-1,
 *      then region 1's, ...; the region entry's rkey is channel 0's.  A
 *      receiver built before the flag refuses such a LAYOUT as malformed.
 *      With flag RM_WIRE_LAYOUT_STAGED (RDMA only; never with CHAN_KEYS)
 *      the LAYOUT carries no keys (every rkey 0): the destination sends it
 *      at once and registers its RAM behind it, chunk by chunk.  Each
 *      region is cut into chunks of 2^chunk_shift bytes (the last one may
 *      be shorter), numbered from 0 at the region's start; chunk_shift is
 *      in [RM_WIRE_MIN_CHUNK_SHIFT, RM_WIRE_MAX_CHUNK_SHIFT] and all the
 *      regions together have at most RM_WIRE_MAX_CHUNKS chunks (else the
 *      LAYOUT is malformed).  Without the flag chunk_shift is 0.
 *   2a.                                  <-  READY {region, chunk, rkeys[nchan]}
 *      (staged layouts only, channel 0, once per chunk, in any order: the
 *      destination registers in the order the source's bulk pass writes,
 *      regions in LAYOUT order, ascending offsets.)  region is the
 *      region's position in the LAYOUT; rkeys[c] is the key for WRITEs
 *      on channel c into that chunk, at the region's addr + offset.  The
 *      source writes into a chunk only after its READY came, and never
 *      across a chunk's end with one WRITE.  A READY for a region or
 *      chunk that does not exist, a second READY for a chunk, or one
 *      without a staged LAYOUT before it breaks the protocol.
 *   3. WRITE {region, offset, length} + data   (TCP only; RDMA uses one-sided
 *      RDMA WRITEs that never show on the wire as messages).  length is at
 *      most the max_write of the source's HELLO.
 *      ... on any channel, any number ...
 *   4. MARKER {epoch} on every channel       (fence: after that channel's writes)
 *   5. CTRL {type, total, epoch} + fragment  (either direction, channel 0;
 *      a message of `total` bytes is split into fragments of at most
 *      RM_WIRE_MAX_FRAG bytes, reassembled in order; the destination delivers
 *      a CTRL tagged with epoch e only after MARKER e arrived on every channel)
 *   6. CREDIT {}                             (RDMA control ring: carries a
 *      header whose credits field grants receive buffers reposted since the
 *      last grant, when no other message does; every header piggybacks)
 *   7. ABORT {reason, text}                  (either side, any time; final)
 *      BYE                                   (orderly close; final)
 *   8. KEEPALIVE {}                          (either side, any channel, once
 *      the sender has put nothing on that channel for RM_WIRE_KEEPALIVE_MS
 *      (less when its own timeout is under 4 times that); a receiver that
 *      hears nothing at all on a channel for its timeout fails the
 *      connection.  Timeouts bound silence, never how long a migration
 *      takes.)
 *
 * A receiver holds at most RM_WIRE_MAX_QUEUED control messages (and
 * 2 * RM_WIRE_MAX_CTRL bytes) that its engine has not read yet; a peer that
 * sends more breaks the protocol.
 *
 * Type ranges (16 bits):
 *   0x0000            invalid
 *   0x0001 - 0x00ff   transport messages (this header)
 *   0x0100 - 0x01ff   engine messages (migration/ defines them); they travel
 *                     as the `type` of a CTRL message, never as a header type
 *   0x0200 - 0xffff   reserved: a receiver refuses them as a protocol error
 *
 * Every field from the peer is hostile until checked: region ids against the
 * layout, offset + length against the region size without overflow, counts
 * and lengths against the RM_WIRE_MAX_* bounds below.
 *
 * Version 5 (this one) adds staged layouts: LAYOUT's chunk_shift and
 * reserved fields (the LAYOUT body grows from 8 to 16 bytes), the
 * RM_WIRE_LAYOUT_STAGED flag and READY, so that a destination sends its
 * LAYOUT before registering its RAM and the source writes into each chunk
 * as soon as it is registered.  Version 4 peers are refused.
 *
 * Version 4 added AUTH steps 5 and 6, which every channel but 0
 * must pass, and RM_REFUSE_TLS.  Version 3 peers are refused.
 *
 * Version 3 added AUTH, RM_CAP_AUTH and RM_REFUSE_AUTH to version
 * 2, and KEEPALIVE: a version 2 peer neither sends nor accepts it, and would
 * be taken for dead while it iterates quietly.  Version 2 peers are refused.
 *
 * Version 2 differs from 1: LAYOUT's page_size, REFUSE's detail and
 * the ODP capability, which no receiver read, are gone (reserved, zero);
 * HELLO's max_write and credits and HELLO_ACK's fields are checked; CTRL
 * fragments are bounded.  Version 1 peers are refused.
 */
#ifndef RDMAMIG_TRANSPORT_WIRE_H
#define RDMAMIG_TRANSPORT_WIRE_H

#include <endian.h>
#include <linux/types.h>
#include <stddef.h>
#include <stdint.h>

#define RM_WIRE_MAGIC 0x474d4452u	/* "RDMG" read as little-endian bytes */
#define RM_WIRE_VERSION 5		/* the version this build speaks */
#define RM_WIRE_VERSION_MIN 5		/* the oldest version it accepts */

/* Bounds every receiver checks before using a peer's number. */
#define RM_WIRE_MAX_REGIONS 64
#define RM_WIRE_MAX_CHANNELS 16
#define RM_WIRE_MAX_CTRL (64u << 20)	/* largest control message, bytes */
#define RM_WIRE_MAX_WRITE (64u << 20)	/* largest HELLO max_write */
#define RM_WIRE_MIN_WRITE 4096u		/* smallest HELLO max_write */
#define RM_WIRE_MAX_FRAG (1u << 20)	/* largest CTRL fragment payload */
#define RM_WIRE_MAX_QUEUED 1024		/* control messages a receiver holds unread */
#define RM_WIRE_MAX_CREDITS 4096	/* RDMA control buffers one side may grant */
#define RM_WIRE_TEXT 48			/* REFUSE / ABORT text, NUL-padded */
#define RM_WIRE_NONCE 32		/* AUTH nonce bytes */
#define RM_WIRE_MAC 32			/* AUTH proof: an HMAC-SHA256 */
#define RM_WIRE_AUTH_LABEL "rdmamig auth v3"	/* first bytes every proof covers */
#define RM_WIRE_SESSION_LABEL "rdmamig session key v4"	/* ... the session key's */
#define RM_WIRE_JOIN_LABEL "rdmamig join v4"	/* ... every channel's proof */
/* Staged layouts: a chunk is 1 MiB to 1 GiB, and a LAYOUT names at most
 * 65536 of them (a 64 GiB guest at the smallest chunk, 64 TiB at the
 * largest), so the source's table of per-chunk keys stays under 4 MiB. */
#define RM_WIRE_MIN_CHUNK_SHIFT 20
#define RM_WIRE_MAX_CHUNK_SHIFT 30
#define RM_WIRE_MAX_CHUNKS 65536u
#define RM_WIRE_KEEPALIVE_MS 250	/* longest quiet spell on a channel: so a
					 * peer's timeout of 1 s or more holds with
					 * a 4x margin, whatever ours is */

enum rm_wire_type {
	RM_WIRE_INVALID = 0x00,
	RM_WIRE_HELLO = 0x01,
	RM_WIRE_HELLO_ACK = 0x02,
	RM_WIRE_REFUSE = 0x03,
	RM_WIRE_LAYOUT = 0x04,
	RM_WIRE_WRITE = 0x05,
	RM_WIRE_MARKER = 0x06,
	RM_WIRE_CTRL = 0x07,
	RM_WIRE_CREDIT = 0x08,
	RM_WIRE_ABORT = 0x09,
	RM_WIRE_BYE = 0x0a,
	RM_WIRE_AUTH = 0x0b,
	RM_WIRE_KEEPALIVE = 0x0c,	/* no body */
	RM_WIRE_READY = 0x0d,		/* RDMA, staged layouts: a chunk is writable */
	RM_WIRE_TRANSPORT_LAST = 0xff,

	/* Engine messages ride inside CTRL.  migration/ owns this range. */
	RM_WIRE_ENGINE_FIRST = 0x100,
	RM_WIRE_ENGINE_LAST = 0x1ff,
};

/* Capability bits offered in HELLO; HELLO_ACK returns the agreed subset. */
enum rm_wire_cap {
	RM_CAP_MULTICHAN = 1u << 0,	/* more than one channel */
	RM_CAP_FENCE_EPOCH = 1u << 1,	/* CTRL held until its fence epoch: required */
	/* 1u << 2 was RM_CAP_ODP in version 1: never offered, now unused. */
	RM_CAP_AUTH = 1u << 3,		/* the AUTH exchange follows: both sides
					 * hold a pre-shared key */
};
#define RM_CAP_REQUIRED RM_CAP_FENCE_EPOCH
#define RM_CAP_KNOWN (RM_CAP_MULTICHAN | RM_CAP_FENCE_EPOCH | RM_CAP_AUTH)

/* Reasons carried by REFUSE. */
enum rm_wire_refuse {
	RM_REFUSE_VERSION = 1,	/* no common protocol version */
	RM_REFUSE_CAPS = 2,	/* a required capability is missing */
	RM_REFUSE_CHANNELS = 3,	/* nchan or channel index out of range */
	RM_REFUSE_LAYOUT = 4,	/* RAM layouts differ */
	RM_REFUSE_BUSY = 5,	/* already serving a migration */
	RM_REFUSE_MAGIC = 6,	/* not an rdmamig peer */
	RM_REFUSE_PARAMS = 7,	/* max_write or credits out of range */
	RM_REFUSE_AUTH = 8,	/* the peer did not prove the pre-shared key */
	RM_REFUSE_TLS = 9,	/* TCP: the destination runs TLS and the source
				 * began without (sent in the clear, in place of
				 * the TLS handshake) */
};

/* Flags in rm_wire_hdr.flags. */
#define RM_WIRE_F_FIRST 0x1	/* CTRL: first fragment of a message */
#define RM_WIRE_F_LAST 0x2	/* CTRL: last fragment of a message */

/*
 * The fixed header.  `len` is the number of bytes after the header (body plus
 * payload); `credits` piggybacks control-ring credits on RDMA (0 on TCP).
 */
struct rm_wire_hdr {
	__le16 type;
	__le16 flags;
	__le32 len;
	__le32 credits;
	__le32 reserved;
};

struct rm_wire_hello {		/* RDMA: header + body <= 56 B of private data */
	__le32 magic;
	__le16 version_min;
	__le16 version_max;
	__le32 caps;
	__le16 nchan;
	__le16 chan;
	__le64 session;		/* random; ties a source's channels together */
	__le32 max_write;	/* source's largest single write: a power of two in
				 * [RM_WIRE_MIN_WRITE, RM_WIRE_MAX_WRITE]; a TCP
				 * destination refuses a WRITE frame larger */
	__le32 credits;		/* RDMA: control receive buffers the source posted
				 * (1..RM_WIRE_MAX_CREDITS); TCP: 0 */
};

struct rm_wire_hello_ack {
	__le16 version;		/* the highest both speak */
	__le16 nchan;		/* the source's */
	__le32 caps;		/* offered & known: includes RM_CAP_REQUIRED */
	__le32 credits;		/* RDMA: control receive buffers the destination
				 * posted (1..RM_WIRE_MAX_CREDITS); TCP: 0 */
	__le32 ctrl_buf;	/* RDMA: size of each, header included; TCP: 0 */
};

struct rm_wire_refuse_body {
	__le32 reason;		/* enum rm_wire_refuse */
	__le32 reserved;
	char text[RM_WIRE_TEXT];
};

struct rm_wire_abort_body {
	__le32 reason;		/* positive errno or -RDMAMIG_E_* of the aborting side */
	__le32 reserved;
	char text[RM_WIRE_TEXT];
};

/* Steps of the AUTH exchange, in order; each side checks the next one. */
enum rm_wire_auth_step {
	RM_AUTH_NONCE_SRC = 1,	/* source -> destination: nonce */
	RM_AUTH_NONCE_DST = 2,	/* destination -> source: nonce */
	RM_AUTH_PROOF_SRC = 3,	/* source -> destination: mac */
	RM_AUTH_PROOF_DST = 4,	/* destination -> source: mac */
	RM_AUTH_JOIN_SRC = 5,	/* source -> destination, channel c > 0: join_s */
	RM_AUTH_JOIN_DST = 6,	/* destination -> source, channel c > 0: join_d */
};

struct rm_wire_auth {
	__le32 step;			/* enum rm_wire_auth_step */
	__le32 reserved;
	uint8_t nonce[RM_WIRE_NONCE];	/* steps 1 and 2; zero in 3 to 6 */
	uint8_t mac[RM_WIRE_MAC];	/* steps 3 to 6; zero in 1 and 2 */
};

struct rm_wire_region {
	__le32 id;
	__le32 rkey;		/* RDMA: remote key of the region; TCP: 0 */
	__le64 size;
	__le64 addr;		/* RDMA: remote virtual address; TCP: 0 */
};

struct rm_wire_layout {		/* followed by count rm_wire_region entries */
	__le32 count;
	__le32 flags;		/* RM_WIRE_LAYOUT_*; others zero */
	__le32 chunk_shift;	/* STAGED: log2 of the chunk size; else 0 */
	__le32 reserved;
};

/* LAYOUT flags. */
#define RM_WIRE_LAYOUT_CHAN_KEYS 1u	/* per-channel rkeys follow the regions */
#define RM_WIRE_LAYOUT_STAGED 2u	/* no keys yet: READY makes RAM writable
					 * chunk by chunk */

struct rm_wire_ready {		/* followed by nchan __le32 rkeys, channel 0's first */
	__le32 region;		/* position in the LAYOUT's region list */
	__le32 chunk;		/* chunk index in that region */
};

struct rm_wire_write {		/* TCP: followed by length bytes of RAM */
	__le32 region;
	__le32 reserved;
	__le64 offset;
	__le64 length;
};

struct rm_wire_marker {
	__le64 epoch;
	__le32 chan;
	__le32 reserved;
};

struct rm_wire_ctrl {		/* followed by this fragment's bytes */
	__le16 type;		/* RM_WIRE_ENGINE_FIRST..LAST */
	__le16 reserved;
	__le32 frag_len;	/* <= RM_WIRE_MAX_FRAG */
	__le64 total_len;	/* <= RM_WIRE_MAX_CTRL */
	__le64 epoch;		/* source's fence count when it was sent */
};

struct rm_wire_credit {		/* the grant rides in the header's credits */
	__le32 reserved[2];
};

_Static_assert(sizeof(struct rm_wire_hdr) == 16, "wire header is 16 bytes");
_Static_assert(sizeof(struct rm_wire_hdr) + sizeof(struct rm_wire_hello) <= 56,
	       "HELLO must fit rdma_cm's RC connect private data");
_Static_assert(sizeof(struct rm_wire_region) == 24, "region entry is 24 bytes");
_Static_assert(sizeof(struct rm_wire_ctrl) == 24, "ctrl body is 24 bytes");
_Static_assert(sizeof(struct rm_wire_auth) == 72, "auth body is 72 bytes");
_Static_assert(sizeof(struct rm_wire_layout) == 16, "layout body is 16 bytes");
_Static_assert(RM_WIRE_MAX_CHUNKS <= UINT32_MAX, "a chunk index fits READY's field");

/*
 * Host <-> wire conversions.  The casts are where sparse's __bitwise checking
 * is told a conversion happens on purpose.
 */
#ifdef __CHECKER__
#define RM_WIRE_FORCE __attribute__((force))
#else
#define RM_WIRE_FORCE
#endif
static inline __le16 rm_wire_put16(uint16_t v) { return (RM_WIRE_FORCE __le16)htole16(v); }
static inline __le32 rm_wire_put32(uint32_t v) { return (RM_WIRE_FORCE __le32)htole32(v); }
static inline __le64 rm_wire_put64(uint64_t v) { return (RM_WIRE_FORCE __le64)htole64(v); }
static inline uint16_t rm_wire_get16(__le16 v) { return le16toh((RM_WIRE_FORCE uint16_t)v); }
static inline uint32_t rm_wire_get32(__le32 v) { return le32toh((RM_WIRE_FORCE uint32_t)v); }
static inline uint64_t rm_wire_get64(__le64 v) { return le64toh((RM_WIRE_FORCE uint64_t)v); }

/* Fill a header; len is the bytes after it, credits 0 except on RDMA. */
void rm_wire_hdr_init(struct rm_wire_hdr *h, uint16_t type, uint16_t flags, size_t len,
		      uint32_t credits);

/* Copy text into a NUL-padded wire text field (cut to RM_WIRE_TEXT - 1). */
void rm_wire_text(char *dst, const char *src);

/* Name of a header type for logs ("HELLO", "ENGINE(0x105)" is up to callers). */
const char *rm_wire_type_name(unsigned type);
/* Name of a refusal reason for logs. */
const char *rm_wire_refuse_name(unsigned reason);

#endif
