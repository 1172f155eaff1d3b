/*
 * migration/protocol.h — the engine's messages, carried as CTRL messages of
 * the transport (types RM_WIRE_ENGINE_FIRST..LAST, see transport/wire.h).
 * All fields little-endian, all structs packed, type 0x100 unused.
 *
 *   source                                   destination
 *   (transport connect + HELLO)          ->  (transport accept)
 *   SETUP {vm description}               ->  prepare(): create/check the VM
 *                                        <-  SETUP_OK, or REFUSE {text}
 *   (transport LAYOUT: regions, rkeys)   <-> (both sides)
 *   RAM writes (RDMA WRITE / TCP WRITE) ...
 *   fence; ITER {index, pages, bytes}    ->  progress only
 *   ... iterations ...
 *   pause; final sync; RAM; fence
 *   STATE {device state bytes}           ->  kept until COMMIT
 *   COMMIT {digest, flags}               ->  compare digest (if asked), load
 *                                            state, resume the guest
 *                                        <-  RESUMED {resume_ns, digest}
 *                                            or REFUSE {text} (guest not run)
 *   source releases its guest; on anything else before RESUMED (error,
 *   cancel, timeout, REFUSE) it resumes its guest and the destination
 *   discards everything.
 */
#ifndef RDMAMIG_MIGRATION_PROTOCOL_H
#define RDMAMIG_MIGRATION_PROTOCOL_H

#include <stdint.h>

#include "rdmamig.h"
#include "transport/wire.h"

#define RM_MIG_VERSION 1

enum rm_mig_type {
	RM_MIG_SETUP = RM_WIRE_ENGINE_FIRST + 1,
	RM_MIG_SETUP_OK,
	RM_MIG_REFUSE,
	RM_MIG_ITER,
	RM_MIG_STATE,
	RM_MIG_COMMIT,
	RM_MIG_RESUMED,
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

struct rm_mig_resumed {
	uint64_t resume_ns;		/* destination: load + resume time */
	uint64_t digest;		/* destination's RAM digest (when verifying) */
	uint64_t verify_ns;		/* destination: time to compute it */
} __attribute__((packed));

const char *rm_mig_type_name(uint16_t type);

/* Encode desc into a malloc()ed SETUP message.  NULL + errno. */
struct rm_mig_setup *rm_mig_setup_encode(const struct rdmamig_vm_desc *desc, uint32_t flags,
					 size_t *len);
/* Decode a peer's SETUP of len bytes, checking every field.  0, or
 * RDMAMIG_E_PROTO with the reason written to why. */
int rm_mig_setup_decode(const void *buf, size_t len, struct rdmamig_vm_desc *desc,
			uint32_t *flags, char *why, size_t whylen);
/* Compare the source's description with the destination's.  0 if they
 * match; else -EINVAL with the first mismatch, named, in why. */
int rm_mig_desc_compare(const struct rdmamig_vm_desc *src, const struct rdmamig_vm_desc *dst,
			char *why, size_t whylen);

#endif
