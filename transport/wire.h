/*
 * transport/wire.h — the transport's wire protocol, readable from this comment.
 *
 * Every message starts with a fixed 16-byte little-endian header followed by a
 * body whose size is fixed per type (WRITE and CTRL then carry `len` payload
 * bytes).  Type 0 is reserved as invalid, so a zeroed buffer means nothing.
 * Multi-byte fields are little-endian on the wire; rm_wire_* helpers convert.
 *
 * Roles: the destination listens, the source connects.  A connection is
 * `nchan` channels (TCP connections or RC QPs); channel 0 also carries control.
 *
 *   source (connect)                         destination (listen)
 *   1. HELLO {version range, caps, nchan,
 *      chan, session} on every channel   ->  checks magic, version, caps, nchan
 *                                        <-  HELLO_ACK {version, caps, credits}
 *                                            or REFUSE {reason, text}; close
 *      (RDMA: HELLO rides in the rdma_cm connect private data, HELLO_ACK in
 *       the accept's, REFUSE in the reject's.)
 *   2.                                   <-  LAYOUT {count, regions[]:
 *                                              id, size, addr, rkey}
 *      source checks every region id and size against its own RAM; on a
 *      mismatch it sends REFUSE {RM_REFUSE_LAYOUT} and fails.
 *   3. WRITE {region, offset, length} + data   (TCP only; RDMA uses one-sided
 *      RDMA WRITEs that never show on the wire as messages)
 *      ... on any channel, any number ...
 *   4. MARKER {epoch} on every channel       (fence: after that channel's writes)
 *   5. CTRL {type, total, epoch} + fragment  (either direction, channel 0;
 *      a message of `total` bytes is split into fragments, reassembled in
 *      order; the destination delivers a CTRL tagged with epoch e only after
 *      MARKER e arrived on every channel)
 *   6. CREDIT {credits}                      (RDMA control ring: receive
 *      buffers reposted since the last grant; every header also piggybacks)
 *   7. ABORT {reason, text}                  (either side, any time; final)
 *      BYE                                   (orderly close; final)
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
 */
#ifndef RDMAMIG_TRANSPORT_WIRE_H
#define RDMAMIG_TRANSPORT_WIRE_H

#include <endian.h>
#include <stdint.h>

#define RM_WIRE_MAGIC 0x474d4452u	/* "RDMG" read as little-endian bytes */
#define RM_WIRE_VERSION 1		/* the version this build speaks */
#define RM_WIRE_VERSION_MIN 1		/* the oldest version it accepts */

/* Bounds every receiver checks before using a peer's number. */
#define RM_WIRE_MAX_REGIONS 64
#define RM_WIRE_MAX_CHANNELS 16
#define RM_WIRE_MAX_CTRL (64u << 20)	/* largest control message, bytes */
#define RM_WIRE_MAX_WRITE (64u << 20)	/* largest TCP WRITE frame payload */
#define RM_WIRE_TEXT 48			/* REFUSE / ABORT text, NUL-padded */

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
	RM_WIRE_TRANSPORT_LAST = 0xff,

	/* Engine messages ride inside CTRL.  migration/ owns this range. */
	RM_WIRE_ENGINE_FIRST = 0x100,
	RM_WIRE_ENGINE_LAST = 0x1ff,
};

/* Capability bits offered in HELLO; HELLO_ACK returns the agreed subset. */
enum rm_wire_cap {
	RM_CAP_MULTICHAN = 1u << 0,	/* more than one channel */
	RM_CAP_FENCE_EPOCH = 1u << 1,	/* CTRL held until its fence epoch: required */
	RM_CAP_ODP = 1u << 2,		/* destination RAM registered on-demand */
};
#define RM_CAP_REQUIRED RM_CAP_FENCE_EPOCH
#define RM_CAP_KNOWN (RM_CAP_MULTICHAN | RM_CAP_FENCE_EPOCH | RM_CAP_ODP)

/* Reasons carried by REFUSE. */
enum rm_wire_refuse {
	RM_REFUSE_VERSION = 1,	/* no common protocol version */
	RM_REFUSE_CAPS = 2,	/* a required capability is missing */
	RM_REFUSE_CHANNELS = 3,	/* nchan or channel index out of range */
	RM_REFUSE_LAYOUT = 4,	/* RAM layouts differ */
	RM_REFUSE_BUSY = 5,	/* already serving a migration */
	RM_REFUSE_MAGIC = 6,	/* not an rdmamig peer */
};

/* Flags in rm_wire_hdr.flags. */
#define RM_WIRE_F_FIRST 0x1	/* CTRL: first fragment of a message */
#define RM_WIRE_F_LAST 0x2	/* CTRL: last fragment of a message */

/*
 * The fixed header.  `len` is the number of bytes after the header (body plus
 * payload); `credits` piggybacks control-ring credits on RDMA (0 on TCP).
 */
struct rm_wire_hdr {
	uint16_t type;
	uint16_t flags;
	uint32_t len;
	uint32_t credits;
	uint32_t reserved;	/* zero */
};

struct rm_wire_hello {		/* RDMA: header + body <= 56 B of private data */
	uint32_t magic;
	uint16_t version_min;
	uint16_t version_max;
	uint32_t caps;
	uint16_t nchan;
	uint16_t chan;
	uint64_t session;	/* random; ties a source's channels together */
	uint32_t max_write;	/* source's largest single write */
	uint32_t credits;	/* RDMA: control receive buffers the source posted */
};

struct rm_wire_hello_ack {
	uint16_t version;
	uint16_t nchan;
	uint32_t caps;
	uint32_t credits;	/* control receive buffers the destination posted */
	uint32_t ctrl_buf;	/* size of each, bytes, header included */
};

struct rm_wire_refuse_body {
	uint32_t reason;	/* enum rm_wire_refuse */
	uint32_t detail;	/* e.g. the offending region id or version */
	char text[RM_WIRE_TEXT];
};

struct rm_wire_abort_body {
	uint32_t reason;	/* positive errno or -RDMAMIG_E_* of the aborting side */
	uint32_t reserved;
	char text[RM_WIRE_TEXT];
};

struct rm_wire_region {
	uint32_t id;
	uint32_t rkey;		/* RDMA: remote key of the region; TCP: 0 */
	uint64_t size;
	uint64_t addr;		/* RDMA: remote virtual address; TCP: 0 */
};

struct rm_wire_layout {		/* followed by count rm_wire_region entries */
	uint32_t count;
	uint32_t page_size;
};

struct rm_wire_write {		/* TCP: followed by length bytes of RAM */
	uint32_t region;
	uint32_t reserved;
	uint64_t offset;
	uint64_t length;
};

struct rm_wire_marker {
	uint64_t epoch;
	uint32_t chan;
	uint32_t reserved;
};

struct rm_wire_ctrl {		/* followed by this fragment's bytes */
	uint16_t type;		/* RM_WIRE_ENGINE_FIRST..LAST */
	uint16_t reserved;
	uint32_t frag_len;
	uint64_t total_len;	/* <= RM_WIRE_MAX_CTRL */
	uint64_t epoch;		/* source's fence count when it was sent */
};

struct rm_wire_credit {
	uint32_t credits;
	uint32_t reserved;
};

_Static_assert(sizeof(struct rm_wire_hdr) == 16, "wire header is 16 bytes");
_Static_assert(sizeof(struct rm_wire_hdr) + sizeof(struct rm_wire_hello) <= 56,
	       "HELLO must fit rdma_cm's RC connect private data");
_Static_assert(sizeof(struct rm_wire_region) == 24, "region entry is 24 bytes");
_Static_assert(sizeof(struct rm_wire_ctrl) == 24, "ctrl body is 24 bytes");

/* Name of a header type for logs ("HELLO", "ENGINE(0x105)" is up to callers). */
const char *rm_wire_type_name(unsigned type);
/* Name of a refusal reason for logs. */
const char *rm_wire_refuse_name(unsigned reason);

#endif
