/*
 * kvm/vmm.h — the built-in VMM as the engine sees it: one implementation of
 * struct rdmamig_vmm_ops (include/rdmamig.h) over kvm/vm.h and kvm/dirty.h.
 * Another VMM replaces this file with its own table; the engine never knows.
 *
 * Source: rm_kvm_vmm_new_source() creates and boots a guest that runs a
 * workload.  Destination: rm_kvm_vmm_new_dest() creates nothing yet; the
 * engine's prepare() call creates a VM of the source's shape, and resume()
 * starts it once its state is loaded.  A VM created by prepare() is not
 * populated before the first byte moves: its RAM is mapped lazily and
 * threads populate it in the order the source sends it (pinning/populate.h)
 * while the migration runs, so setup no longer grows with the guest.
 */
#ifndef RDMAMIG_KVM_VMM_H
#define RDMAMIG_KVM_VMM_H

#include "kvm/dirty.h"
#include "pinning/populate.h"
#include "kvm/vm.h"
#include "rdmamig.h"

/* Version of the built-in VMM's device state (the vmstate sections). */
#define RM_KVM_VMM_PAYLOAD_VERSION 1

struct rm_kvm_vmm;

extern const struct rdmamig_vmm_ops rm_kvm_vmm_ops;

/* Create and boot a guest, running.  NULL + errno (logged). */
struct rm_kvm_vmm *rm_kvm_vmm_new_source(const struct rm_kvm_vm_opts *vm,
					 const struct rm_kvm_workload *wl, enum rm_dirty_kind tracker);
/* A destination.  With precreate NULL, prepare() creates a VM of the
 * source's shape on this backing; otherwise the VM is created now, and a
 * source whose VM differs is refused (the engine names the difference). */
struct rm_kvm_vmm *rm_kvm_vmm_new_dest(const struct rm_backing_opts *backing,
				       const struct rm_kvm_vm_opts *precreate);
/* A destination's background population (NULL when the VM was created
 * populated, or before prepare): its watermark and timing. */
struct rm_populator *rm_kvm_vmm_populator(struct rm_kvm_vmm *v);
/* The VM (NULL on a destination before prepare). */
struct rm_kvm_vm *rm_kvm_vmm_vm(struct rm_kvm_vmm *v);
/* Stop any throttling, destroy the VM, free.  NULL-safe. */
void rm_kvm_vmm_free(struct rm_kvm_vmm *v);

#endif
