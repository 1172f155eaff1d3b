/*
 * kvm/dirty-internal.h — what the trackers of dirty.c (bitmap, clear) and
 * dirty-ring.c (ring) share, and the one entry the vCPU loop (vcpu.c) needs:
 * the handler for a vCPU whose dirty ring filled up.  Sits above
 * kvm-internal.h; nothing below includes it.
 */
#ifndef RDMAMIG_KVM_DIRTY_INTERNAL_H
#define RDMAMIG_KVM_DIRTY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvm/dirty.h"
#include "kvm/kvm-internal.h"

/* A tracker: the generic part (dirty.c) and its mechanism (ops). */
struct rm_dirty_ops {
	const char *name;
	bool (*supported)(struct rm_kvm_vm *vm);
	int (*start)(struct rm_dirty_tracker *t);
	/* Fill t->bitmap[] with what was dirtied since the last sync. */
	int (*sync)(struct rm_dirty_tracker *t);
	int (*clear)(struct rm_dirty_tracker *t, unsigned region, uint64_t first, uint64_t n); /* may be NULL */
	void (*stop)(struct rm_dirty_tracker *t);
};

struct rm_dirty_tracker {
	const struct rm_dirty_ops *ops;
	struct rm_kvm_vm *vm;
	uint64_t *bitmap[RM_KVM_MAX_REGIONS];	/* what the last sync reported */
	uint64_t *pending[RM_KVM_MAX_REGIONS];	/* ring: harvested, not yet reported */
	size_t words[RM_KVM_MAX_REGIONS];
};

extern const struct rm_dirty_ops rm_dirty_ring_ops;

/* dirty-ring.c: a vCPU exited with KVM_EXIT_DIRTY_RING_FULL.  Called on that
 * vCPU's thread. */
int rm_dirty_ring_full(struct rm_kvm_vm *vm, struct rm_kvm_vcpu *vcpu);
/* Why this host's KVM cannot keep a dirty ring from overrunning, or NULL.
 * Tests set rm_dirty_ring_allow_unsafe_host to watch the overrun checks. */
const char *rm_dirty_ring_hazard(void);
extern bool rm_dirty_ring_allow_unsafe_host;

#endif
