/*
 * migration/protocol.h — the engine's messages, carried as CTRL messages of
 * the transport (types RM_WIRE_ENGINE_FIRST..LAST, see transport/wire.h),
 * and the handover state machine both sides run.  All fields little-endian,
 * all structs packed, type 0x100 unused.
 *
 *   source                                   destination
 *   (transport connect + HELLO)          ->  (transport accept; the listener
 *                                             stays open until the outcome
 *                                             is settled, for RECOVER)
 *   SETUP {vm description, migration id} ->  prepare(): create/check the VM
 *                                        <-  SETUP_OK, or REFUSE {text}
 *   (transport LAYOUT: regions, rkeys)   <-> (both sides)
 *   RAM writes (RDMA WRITE / TCP WRITE) ...
 *   fence; ITER {index, pages, bytes}    ->  progress only
 *   ... iterations ...
 *   pause; final sync; RAM; fence
 *   STATE {device state bytes}           ->  kept until COMMIT
 *   COMMIT {digest, flags}               ->  compare digest (if asked), load
 *                                            state; the guest stays paused
 *                                        <-  LOADED {load_ns, digest}
 *                                            or REFUSE {text} (discarded)
 *   GO                                   ->  (from here the source never
 *                                             resumes on its own)
 *                                            resume the guest
 *                                        <-  RESUMED {resume_ns}
 *   source releases its guest; BYE       ->  done
 *
 * Exactly one copy.  Before GO leaves the source, every failure — the
 * destination's, the link's, a cancel, a REFUSE, a message outside its
 * state — resumes the source guest, and the destination, which has not run
 * the guest, discards it.  Once GO has been sent (source) or LOADED has been
 * sent (destination), a broken link leaves the outcome unknown to the side
 * that sees it: both keep the guest paused and intact, and recovery settles
 * it.  The destination that received GO runs the guest (it has: GO is the
 * source giving its copy up) and answers RECOVER with "ran".  A destination
 * that never received GO keeps the loaded guest paused, answers RECOVER
 * with "no GO", then discards it; the source resumes on that answer.  The
 * source that sent GO never resumes on a timeout: it waits for RESUMED or an
 * OUTCOME, reconnecting for a bounded time (opts.recover_ms), and after that
 * returns RDMAMIG_E_INDOUBT with its guest paused, for rdmamig_recover().
 *
 * Recovery, on a new connection to the destination's same address:
 *   RECOVER {migration id, flags}        ->  matched against the migration
 *                                        <-  OUTCOME {migration id, got_go,
 *                                                     ran}
 *   BYE                                  ->  the destination settles: a guest
 *                                            that got no GO is discarded
 * RECOVER with RM_MIG_RECOVER_ABANDON is the source saying it resumed (it
 * never sent GO): the destination discards without waiting out its window.
 *
 * The state machine (rm_mig_rules[] in protocol.c is what the engine
 * consults; a message outside its state is a protocol error, which fails
 * as the state's failure column says):
 *
 *   side state        message    action                    next state
 *   src  SETUP        SETUP_OK   exchange layout           ITERATE
 *   src  SETUP        REFUSE     fail: refused              -
 *   src  ITERATE      REFUSE     fail: refused              -
 *   src  COMMITTED    LOADED     send GO                   GO_SENT
 *   src  COMMITTED    REFUSE     fail: refused              -
 *   src  GO_SENT      RESUMED    release the guest         DONE
 *   src  RECOVER      OUTCOME    ran: release; else resume DONE
 *   dst  SETUP        SETUP      prepare, SETUP_OK         RECEIVE
 *   dst  RECEIVE      ITER       progress                  RECEIVE
 *   dst  RECEIVE      STATE      keep the state            RECEIVE
 *   dst  RECEIVE      COMMIT     load, send LOADED         LOADED
 *   dst  LOADED       ITER       (a late heartbeat)        LOADED
 *   dst  LOADED       GO         resume, send RESUMED      RUNNING
 *   dst  RUNNING      (none: BYE or a broken link ends it)
 *   dst  RECOVER      RECOVER    send OUTCOME              (settled)
 *   any  other pair              fail: protocol error       -
 *
 *   side state        on any failure (error, cancel, timeout, protocol)
 *   src  SETUP, ITERATE, COMMITTED   resume the guest
 *   src  GO_SENT, RECOVER            keep it paused: recover, else INDOUBT
 *   dst  SETUP, RECEIVE              discard
 *   dst  LOADED                      keep it paused: serve RECOVER for
 *                                    2 * recover_ms, then discard
 *   dst  RUNNING                     it runs here: serve RECOVER for
 *                                    2 * recover_ms
 */
#ifndef RDMAMIG_MIGRATION_PROTOCOL_H
#define RDMAMIG_MIGRATION_PROTOCOL_H

#include <stdint.h>

#include "rdmamig.h"
#include "transport/wire.h"

#define RM_MIG_VERSION 2	/* 2: LOADED/GO handover, migration id, RECOVER */

enum rm_mig_type {
	RM_MIG_SETUP = RM_WIRE_ENGINE_FIRST + 1,
	RM_MIG_SETUP_OK,
	RM_MIG_REFUSE,
	RM_MIG_ITER,
	RM_MIG_STATE,
	RM_MIG_COMMIT,
	RM_MIG_RESUMED,
	RM_MIG_LOADED,
	RM_MIG_GO,
	RM_MIG_RECOVER,
	RM_MIG_OUTCOME,
	RM_MIG_LAST_TYPE,
};

#define RM_MIG_TEXT 160

struct rm_mig_region {
	uint32_t id;
	uint32_t reserved;
	uint64_t size;
	uint64_t gpa;
} __attribute__((packed));

struct rm_mig_setup {
	uint32_t version;		/* RM_MIG_VERSION */
	uint32_t page_size;
	uint32_t nr_vcpus;
	uint32_t payload_version;
	char cpu_model[RDMAMIG_CPU_MODEL_LEN];
	uint32_t nr_regions;		/* <= RDMAMIG_MAX_REGIONS */
	uint32_t flags;			/* RM_MIG_F_* */
	uint64_t migration_id;		/* random, non-zero: names it in RECOVER */
	struct rm_mig_region regions[];	/* nr_regions of them */
} __attribute__((packed));

#define RM_MIG_F_VERIFY 1u

struct rm_mig_refuse {
	int32_t reason;			/* negative errno or RDMAMIG_E_* */
	char text[RM_MIG_TEXT];		/* NUL-terminated */
} __attribute__((packed));

struct rm_mig_iter {
	uint32_t index;
	uint32_t reserved;
	uint64_t pages;
	uint64_t bytes;
	uint64_t remaining_bytes;
} __attribute__((packed));

struct rm_mig_commit {
	uint64_t digest;		/* RAM digest at switchover, when verifying */
	uint32_t flags;			/* RM_MIG_F_VERIFY */
	uint32_t reserved;
	uint64_t state_len;		/* must equal the STATE message's length */
} __attribute__((packed));

struct rm_mig_loaded {
	uint64_t load_ns;		/* destination: COMMIT to LOADED, its clock */
	uint64_t digest;		/* destination's RAM digest (when verifying) */
	uint64_t verify_ns;		/* destination: time to compute it */
} __attribute__((packed));

struct rm_mig_resumed {
	uint64_t resume_ns;		/* destination: GO to RESUMED, its clock */
} __attribute__((packed));

#define RM_MIG_RECOVER_ABANDON 1u	/* the source resumed; it never sent GO */

struct rm_mig_recover {
	uint64_t migration_id;
	uint32_t flags;			/* RM_MIG_RECOVER_* */
	uint32_t reserved;
} __attribute__((packed));

struct rm_mig_outcome {
	uint64_t migration_id;
	uint32_t got_go;		/* 1: GO arrived, the guest runs there */
	uint32_t ran;			/* 1: the destination resumed the guest */
} __attribute__((packed));

/* The handover states of both sides (see the tables above). */
enum rm_mig_state {
	RM_ST_SRC_SETUP,
	RM_ST_SRC_ITERATE,
	RM_ST_SRC_COMMITTED,
	RM_ST_SRC_GO_SENT,
	RM_ST_SRC_RECOVER,
	RM_ST_SRC_DONE,
	RM_ST_DST_SETUP,
	RM_ST_DST_RECEIVE,
	RM_ST_DST_LOADED,
	RM_ST_DST_RUNNING,
	RM_ST_DST_RECOVER,
	RM_ST_COUNT,
};

/* What a side does on a failure in a state. */
enum rm_mig_on_fail {
	RM_FAIL_RESUME,		/* source: resume its guest */
	RM_FAIL_DISCARD,	/* destination: the guest never ran; drop it */
	RM_FAIL_RECOVER,	/* the outcome is unknown: keep the guest paused,
				 * settle it by RECOVER/OUTCOME */
};

/* What a message does in a state. */
enum rm_mig_action {
	RM_ACT_PROTO = 0,	/* outside its state: protocol error (the default) */
	RM_ACT_TAKE,		/* the state's expected message: act, move on */
	RM_ACT_PROGRESS,	/* a heartbeat: note it, stay */
	RM_ACT_REFUSED,		/* the peer refused: fail as refused */
};

struct rm_mig_rule {
	enum rm_mig_state state;
	uint16_t type;
	enum rm_mig_action action;
	enum rm_mig_state next;
};

extern const struct rm_mig_rule rm_mig_rules[];
extern const unsigned rm_mig_nr_rules;

/* The rule for type in state; *next is set for RM_ACT_TAKE. */
enum rm_mig_action rm_mig_lookup(enum rm_mig_state state, uint16_t type, enum rm_mig_state *next);
enum rm_mig_on_fail rm_mig_on_fail(enum rm_mig_state state);
const char *rm_mig_state_name(enum rm_mig_state state);
/* The message a state waits for (its first RM_ACT_TAKE rule), for logs. */
const char *rm_mig_expected_name(enum rm_mig_state state);

const char *rm_mig_type_name(uint16_t type);

/* Check the body of a message the state table took or noted (TAKE,
 * PROGRESS): the exact length of a fixed-size message, reserved fields
 * zero, flags and booleans in range.  SETUP (rm_mig_setup_decode), STATE
 * (the VMM's loader) and REFUSE (read leniently, as text) pass.  0, or
 * RDMAMIG_E_PROTO with the reason in why. */
int rm_mig_body_check(uint16_t type, const void *body, size_t len, char *why, size_t whylen);

/* Encode desc into a malloc()ed SETUP message.  NULL + errno. */
struct rm_mig_setup *rm_mig_setup_encode(const struct rdmamig_vm_desc *desc, uint32_t flags,
					 uint64_t migration_id, size_t *len);
/* Decode a peer's SETUP of len bytes, checking every field.  0, or
 * RDMAMIG_E_PROTO with the reason written to why. */
int rm_mig_setup_decode(const void *buf, size_t len, struct rdmamig_vm_desc *desc,
			uint32_t *flags, uint64_t *migration_id, char *why, size_t whylen);
/* Compare the source's description with the destination's.  0 if they
 * match; else -EINVAL with the first mismatch, named, in why. */
int rm_mig_desc_compare(const struct rdmamig_vm_desc *src, const struct rdmamig_vm_desc *dst,
			char *why, size_t whylen);

#endif
