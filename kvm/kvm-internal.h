/*
 * kvm/kvm-internal.h — the VM and its vCPUs as the files of kvm/ see them:
 * the structs, the checked ioctl wrappers, and the one function of vm.c that
 * only kvm/ calls.  Outside kvm/ only the KVM suites look in here.  The
 * other files' private interfaces sit above this header, each in its own:
 * vcpu.h (vcpu.c), state.h (state.c), dirty-internal.h (dirty.c and
 * dirty-ring.c); none of them is included from here.
 */
#ifndef RDMAMIG_KVM_INTERNAL_H
#define RDMAMIG_KVM_INTERNAL_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/ioctl.h>

#include "common/log.h"
#include "kvm/vm.h"

/*
 * kvm_ioctl(fd, KVM_X, &arg): the argument's size is checked against the one
 * encoded in the command at compile time, failures are logged with the
 * command's name and come back as -errno.  kvm_ioctl_quiet does not log (for
 * probes and expected failures); kvm_ioctl_val passes a plain integer.
 */
#define kvm_ioctl_quiet(fd, cmd, arg) ({					\
	_Static_assert(sizeof(*(arg)) == _IOC_SIZE(cmd), "argument size of " #cmd); \
	int kvm_ret_ = ioctl(fd, cmd, arg);					\
	kvm_ret_ < 0 ? -errno : kvm_ret_;					\
})
#define kvm_ioctl(fd, cmd, arg) ({						\
	int kvm_r_ = kvm_ioctl_quiet(fd, cmd, arg);				\
	if (kvm_r_ < 0)								\
		rm_err("kvm: %s: %s", #cmd, strerror(-kvm_r_));			\
	kvm_r_;									\
})
#define kvm_ioctl_val(fd, cmd, val) ({						\
	int kvm_v_ = ioctl(fd, cmd, (unsigned long)(val));			\
	kvm_v_ = kvm_v_ < 0 ? -errno : kvm_v_;					\
	if (kvm_v_ < 0)								\
		rm_err("kvm: %s: %s", #cmd, strerror(-kvm_v_));			\
	kvm_v_;									\
})

struct rm_dirty_tracker;

struct rm_kvm_vcpu {
	struct rm_kvm_vm *vm;
	unsigned id;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
	bool thread_started;

	/* Dirty ring, when the VM has one: mapped from the vCPU fd.  `fetch`
	 * is the next entry to harvest; guarded by the tracker's ring lock. */
	struct kvm_dirty_gfn *ring;
	uint32_t ring_fetch;

	/* Requests from the controlling thread (VCPU_REQ_*), acted on when
	 * KVM_RUN returns -EINTR (the requester set immediate_exit). */
	atomic_uint req;
	atomic_ulong exits;		/* KVM_RUN returns, for kick_all */
	bool parked;			/* under vm->lock */
	bool dead;			/* stopped on an unexpected exit */

	atomic_ulong progress;
	atomic_ulong errors;
};

#define VCPU_REQ_PAUSE	0x1
#define VCPU_REQ_STOP	0x2

struct rm_kvm_vm {
	int kvm_fd;
	int vm_fd;
	size_t run_size;
	struct rm_kvm_vm_opts opts;

	struct rm_ram ram;
	unsigned nr_regions;
	struct rm_kvm_region regions[RM_KVM_MAX_REGIONS];

	unsigned nr_vcpus;
	struct rm_kvm_vcpu *vcpus;

	/* Parking lot: vCPU threads run only while run_allowed. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool run_allowed;
	bool stopping;
	unsigned nr_parked;

	/* KVM clock: saved at pause, set again at resume (or from a stream). */
	struct kvm_clock_data clock;
	bool clock_valid;

	bool booted;			/* booted or loaded: has a guest */
	struct rm_guest_params *params;	/* in guest RAM */
	uint64_t tsc_khz;

	/* What every vCPU's state is made of (probed once). */
	struct kvm_cpuid2 *cpuid;
	uint32_t *msr_index;
	unsigned nr_msrs;
	size_t xsave_size;		/* 0: no XSAVE; then FPU */
	bool has_xcrs;
	bool has_debugregs;

	/* The dirty ring tracker while logging, for vCPUs whose ring fills;
	 * ring_lock covers harvesting and resetting all rings, so a page is
	 * never reported before KVM has re-protected it. */
	pthread_mutex_t ring_lock;
	struct rm_dirty_tracker *ring_tracker;
	bool tracking;
	uint64_t ring_flagged;		/* harvested since the last reset (ring_lock) */
	bool ring_overrun;		/* KVM overran a ring: the tracker fails for good */

	atomic_ulong ring_full_exits;	/* for tests and stats */
	atomic_int fault;
	atomic_ulong integrity_errors;
};

/* vm.c: set memslot dirty logging on or off for every region. */
int rm_kvm_vm_set_dirty_logging(struct rm_kvm_vm *vm, bool on);

#endif
