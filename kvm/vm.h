/*
 * kvm/vm.h — the built-in VMM: a KVM VM with N vCPUs (one thread each), RAM
 * split into memslots of at most 1 GiB, and the guest payload of
 * kvm/guest/ running a chosen workload on every vCPU.  This is what the
 * migration engine's VMM ops table wraps; it knows nothing of transports.
 *
 * Life cycle:  rm_kvm_vm_create() → rm_kvm_vm_boot() (fresh guest) or
 * rm_kvm_vm_load_state() (restored guest) → rm_kvm_vm_resume() ⇄
 * rm_kvm_vm_pause() → rm_kvm_vm_destroy().  A VM is created paused.
 *
 * Threads: create/boot/pause/resume/state/destroy are called from one
 * controlling thread; the progress and error getters from any thread.  vCPU
 * threads are interrupted with RM_KVM_KICK_SIGNAL, which the library installs
 * a no-op handler for; the embedder must leave that signal alone.
 */
#ifndef RDMAMIG_KVM_VM_H
#define RDMAMIG_KVM_VM_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvm/guest/abi.h"
#include "kvm/vmstate.h"
#include "pinning/backing.h"

#define RM_KVM_KICK_SIGNAL	(SIGRTMIN + 4)
#define RM_KVM_MAX_SLOT_SIZE	(1ull << 30)	/* a single 4 GiB slot failed on a test host */
#define RM_KVM_MAX_REGIONS	(RM_GUEST_MAX_GIB)

struct rm_kvm_vm;

struct rm_kvm_vm_opts {
	unsigned nr_vcpus;		/* 1..RM_GUEST_MAX_VCPUS */
	size_t ram_size;		/* bytes, multiple of 2 MiB, >= RM_GUEST_MIN_RAM */
	size_t slot_size;		/* 0: RM_KVM_MAX_SLOT_SIZE; a power of two */
	struct rm_backing_opts backing;
	/* Entries per vCPU dirty ring (power of two), 0 for none.  KVM wants
	 * the ring before the vCPUs exist, and a VM with a ring cannot use the
	 * bitmap trackers: choose here. */
	unsigned dirty_ring_entries;
};

/* One memslot: what a dirty bitmap is relative to (bit i = page gpa + i*4K). */
struct rm_kvm_region {
	unsigned slot;
	uint64_t gpa;
	size_t size;
	void *hva;
};

struct rm_kvm_workload {
	enum rm_guest_workload kind;
	uint64_t rate_pages_per_sec;	/* per vCPU; 0: unpaced */
	unsigned hot_permille;		/* hotset: share of pages that are hot (default 100) */
	unsigned hot_write_permille;	/* hotset: share of writes that hit them (default 900) */
	uint64_t seed;
	unsigned report_every;		/* page writes per progress report (default 64) */
};

/* NULL + errno on failure (logged). */
struct rm_kvm_vm *rm_kvm_vm_create(const struct rm_kvm_vm_opts *opts);
/* Stops and joins the vCPU threads, frees everything.  NULL-safe. */
void rm_kvm_vm_destroy(struct rm_kvm_vm *vm);

unsigned rm_kvm_vm_nr_vcpus(const struct rm_kvm_vm *vm);
unsigned rm_kvm_vm_nr_regions(const struct rm_kvm_vm *vm);
const struct rm_kvm_region *rm_kvm_vm_region(const struct rm_kvm_vm *vm, unsigned i);
size_t rm_kvm_vm_ram_size(const struct rm_kvm_vm *vm);
/* The RAM behind all regions (its backing kind and page size). */
const struct rm_ram *rm_kvm_vm_ram(const struct rm_kvm_vm *vm);
/* Host address of guest-physical gpa, NULL if it is not RAM. */
void *rm_kvm_vm_gpa_to_hva(const struct rm_kvm_vm *vm, uint64_t gpa);

/* Put the payload, page tables and parameters in RAM and the vCPUs at the
 * entry point.  The VM must be paused and never booted or loaded. */
int rm_kvm_vm_boot(struct rm_kvm_vm *vm, const struct rm_kvm_workload *wl);

/*
 * Stop every vCPU: each leaves KVM_RUN (immediate_exit + signal) and parks.
 * Returns 0 once all are parked, -ETIMEDOUT if one did not within
 * timeout_ns (the VM is then left resumable).  Saves the KVM clock so that
 * resume can hide the stopped time from the guest.  Idempotent.
 */
int rm_kvm_vm_pause(struct rm_kvm_vm *vm, uint64_t timeout_ns);
/* Restore the KVM clock saved by pause (or loaded), then let vCPUs run. */
int rm_kvm_vm_resume(struct rm_kvm_vm *vm);
bool rm_kvm_vm_is_paused(const struct rm_kvm_vm *vm);

/*
 * Interrupt every running vCPU once and wait (bounded) until each has left
 * guest mode, so hardware-buffered dirty state (Intel PML) reaches KVM.
 */
int rm_kvm_vm_kick_all(struct rm_kvm_vm *vm, uint64_t timeout_ns);

/* Guest progress: units reported on the progress port, per vCPU or summed. */
uint64_t rm_kvm_vcpu_progress(const struct rm_kvm_vm *vm, unsigned vcpu);
uint64_t rm_kvm_vm_progress(const struct rm_kvm_vm *vm);
/* Pages the guest found corrupted (its own integrity check). */
uint64_t rm_kvm_vm_integrity_errors(const struct rm_kvm_vm *vm);
/* 0, or the -errno of the first vCPU that stopped on an unexpected exit. */
int rm_kvm_vm_fault(const struct rm_kvm_vm *vm);

/* Stamp workload: the value the guest writes from now on. */
void rm_kvm_vm_set_stamp(struct rm_kvm_vm *vm, uint64_t stamp);
/*
 * Wait until every vCPU has completed a page write with a stamp >= stamp, so
 * no write carrying an older stamp is still in flight.  -ETIMEDOUT if a vCPU
 * did not within timeout_ns (a guest not writing pages never will).
 */
int rm_kvm_vm_wait_stamp_seen(struct rm_kvm_vm *vm, uint64_t stamp, uint64_t timeout_ns);
/* Work pages: where the payload writes (for oracles). */
uint64_t rm_kvm_vm_work_pages(const struct rm_kvm_vm *vm);
uint64_t rm_kvm_vm_work_page_gpa(const struct rm_kvm_vm *vm, uint64_t idx);

/*
 * Save all vCPU and device state (not RAM) of a paused VM into buf, as a
 * self-describing vmstate stream (sections "vm", "kvmclock", "irqchip",
 * "cpu" per vCPU, "progress").  Load does the reverse into a paused VM
 * created with the same shape; it refuses, saying why, a stream that does
 * not fit.
 */
int rm_kvm_vm_save_state(struct rm_kvm_vm *vm, struct rm_vms_buf *buf);
int rm_kvm_vm_load_state(struct rm_kvm_vm *vm, const void *data, size_t len);

/*
 * Snapshot: pause (if running), write state and RAM to path, resume if it
 * was running.  Restore: create a VM of the snapshot's shape on the given
 * backing (NULL: anonymous), fill RAM, load state; returns it paused.
 */
int rm_kvm_snapshot_save(struct rm_kvm_vm *vm, const char *path);
struct rm_kvm_vm *rm_kvm_snapshot_restore(const char *path, const struct rm_backing_opts *backing);

#endif
