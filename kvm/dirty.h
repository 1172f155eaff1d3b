/*
 * kvm/dirty.h — dirty page tracking for a VM's RAM, one interface over three
 * KVM mechanisms (after KVM selftests' dirty_log_test log modes):
 *
 *   bitmap  KVM_GET_DIRTY_LOG: fetch and re-protect in one call per slot.
 *   clear   KVM_GET_DIRTY_LOG with manual protect, then KVM_CLEAR_DIRTY_LOG
 *           in chunks just before those pages are sent (as QEMU does), so a
 *           page stays writable, and unlogged, only while it waits to go.
 *           The first sync reports every page (KVM_DIRTY_LOG_INITIALLY_SET).
 *   ring    KVM's per-vCPU dirty rings, harvested (acquire/release) and reset.
 *           The VM must be created with dirty_ring_entries.
 *
 * The caller asks "which pages were dirtied since the last call" with
 * rm_dirty_sync(), which counts them, then reads one bitmap per region (bit i
 * = page i of rm_kvm_vm_region()) in place: the tracker's own, valid until
 * the next sync or stop, never to be written by the caller.  With the clear
 * tracker the caller must call rm_dirty_clear() on a range before reading
 * those pages' contents; the other trackers accept the call and do nothing.
 * All calls from one thread.
 */
#ifndef RDMAMIG_KVM_DIRTY_H
#define RDMAMIG_KVM_DIRTY_H

#include <stdbool.h>
#include <stdint.h>

#include "kvm/vm.h"

enum rm_dirty_kind {
	RM_DIRTY_BITMAP,
	RM_DIRTY_CLEAR,
	RM_DIRTY_RING,
	RM_DIRTY_NR_KINDS
};

struct rm_dirty_tracker;

const char *rm_dirty_name(enum rm_dirty_kind kind);
/* Can this VM use that tracker?  A probe: logs nothing. */
bool rm_dirty_supported(struct rm_kvm_vm *vm, enum rm_dirty_kind kind);

/* Turn dirty logging on.  NULL + errno (logged) on failure.  One tracker per VM. */
struct rm_dirty_tracker *rm_dirty_start(struct rm_kvm_vm *vm, enum rm_dirty_kind kind);
/* Pages dirtied since start or the last sync: returns how many, or -errno. */
long rm_dirty_sync(struct rm_dirty_tracker *t);
/* The last sync's bitmap for region i (ceil(pages / 64) words). */
const uint64_t *rm_dirty_bitmap(const struct rm_dirty_tracker *t, unsigned region);
/*
 * Re-protect the pages of region [first_page, first_page + npages) that the
 * last sync reported, so writes from now on are caught again.  first_page
 * must be a multiple of 64, npages too unless the range ends the region.
 * It does not look for reported pages first (the caller has, while reading
 * the bitmap): a range without any still costs an ioctl.
 */
int rm_dirty_clear(struct rm_dirty_tracker *t, unsigned region, uint64_t first_page, uint64_t npages);
/* Turn logging off and free.  NULL-safe.  Call before rm_kvm_vm_destroy():
 * a tracker points at its VM. */
void rm_dirty_stop(struct rm_dirty_tracker *t);

#endif
