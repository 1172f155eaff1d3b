/*
 * kvm/dirty-ring.c — the dirty-ring tracker.  Each vCPU has a ring of
 * (slot, page) entries that KVM fills as the guest dirties pages; we harvest
 * an entry by reading it (acquire) and flagging it for reset (release), then
 * KVM_RESET_DIRTY_RINGS re-protects the harvested pages.
 *
 * Two threads harvest: the tracker's owner on sync, and a vCPU thread whose
 * ring filled up (KVM stops that vCPU until there is room).  vm->ring_lock
 * makes harvest + reset one step, and the owner copies the harvested bits
 * out only under it: otherwise a page could be reported, sent, and written
 * again before KVM re-protected it, and that write would be lost.
 *
 * The ring is only as good as KVM's promise not to overrun it: KVM stops a
 * vCPU once its ring holds size - 64 entries (the "soft limit"), counting on
 * one instruction never dirtying more than the 64 entries it keeps in
 * reserve.  A KVM that emulates many guest instructions between two looks at
 * the soft limit breaks that promise: kvm-pvm runs guest kernel code in its
 * instruction emulator in batches (pvm_emul_batch, 1024 here), every emulated
 * store pushes an entry, and the ring wraps over entries nobody harvested
 * (the kernel logs "WARNING ... kvm_dirty_ring_push").  Those pages are lost,
 * and the ring's two ends no longer meet, so the vCPU exits "ring full"
 * forever with nothing to harvest.  So the tracker refuses such a host up
 * front, and everywhere it checks each harvest and reset for the marks an
 * overrun leaves, and fails (-EOVERFLOW, for good) rather than report a
 * dirty set it knows to be short.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "kvm/dirty-internal.h"

bool rm_dirty_ring_allow_unsafe_host;

static pthread_once_t hazard_once = PTHREAD_ONCE_INIT;
static char hazard[192];

/* Is this a KVM known to push past the ring's reserve?  kvm-pvm says so in
 * its module parameters; no other KVM we know of emulates guest code in
 * batches. */
static void hazard_probe(void)
{
	char buf[32] = "";
	int fd = open("/sys/module/kvm_pvm/parameters/pvm_emul_batch", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return;
	if (read(fd, buf, sizeof(buf) - 1) < 0)
		buf[0] = '\0';
	close(fd);
	buf[strcspn(buf, "\n")] = '\0';
	snprintf(hazard, sizeof(hazard),
		 "this host's KVM (kvm-pvm) emulates guest kernel code in batches of %s instructions "
		 "without stopping at the dirty ring's soft limit, so the ring overruns and loses dirty pages",
		 buf[0] ? buf : "many");
}

const char *rm_dirty_ring_hazard(void)
{
	pthread_once(&hazard_once, hazard_probe);
	return hazard[0] && !rm_dirty_ring_allow_unsafe_host ? hazard : NULL;
}

/* Record an overrun, once per VM, and say what it means. */
static int overrun(struct rm_kvm_vm *vm, struct rm_kvm_vcpu *vcpu, const char *how)
{
	char who[32] = "a vCPU's";

	if (vcpu)
		snprintf(who, sizeof(who), "vCPU %u's", vcpu->id);
	if (!vm->ring_overrun)
		rm_err("kvm: %s dirty ring overran (%s): KVM pushed more entries than the ring holds, "
		       "so dirty pages were lost; this tracker can no longer be trusted (use bitmap or clear)",
		       who, how);
	vm->ring_overrun = true;
	return -EOVERFLOW;
}

/* Harvest one vCPU's ring into t->pending (or drop it, t == NULL).  Returns
 * how many entries it flagged for reset, or -EOVERFLOW. */
static int harvest(struct rm_kvm_vm *vm, struct rm_kvm_vcpu *vcpu, struct rm_dirty_tracker *t)
{
	uint32_t size = vm->opts.dirty_ring_entries, mask = size - 1;
	uint32_t n = 0;

	for (;;) {
		struct kvm_dirty_gfn *e = &vcpu->ring[vcpu->ring_fetch & mask];
		uint32_t slot;
		uint64_t off;

		/* After `size` entries we are back at one we just flagged:
		 * KVM cannot have reused it before the reset. */
		if (n == size)
			break;
		if (!(__atomic_load_n(&e->flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY))
			break;
		slot = e->slot & 0xffff;	/* address space in the high half: always 0 here */
		off = e->offset;
		if (t && slot < vm->nr_regions && off < vm->regions[slot].size / RM_GUEST_PAGE)
			t->pending[slot][off / 64] |= 1ull << (off % 64);
		else if (t)
			rm_warn("kvm: vCPU %u dirty ring names slot %u page %llu, outside RAM", vcpu->id,
				slot, (unsigned long long)off);
		__atomic_store_n(&e->flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
		vcpu->ring_fetch++;
		n++;
	}
	vm->ring_flagged += n;
	/*
	 * KVM keeps 64 entries in reserve past the soft limit so that a ring
	 * never fills: one dirty all the way round is full, and whether KVM's
	 * next push already overwrote an entry nobody harvested cannot be told
	 * from here.  Fail safe.
	 */
	if (n == size)
		return overrun(vm, vcpu, "every entry was dirty");
	return (int)n;
}

/*
 * Hand every flagged entry back to KVM.  KVM resets entries from where it
 * stopped last time for as long as they carry our RESET flag; it stops short
 * of what we flagged only if it pushed a new entry over one of them, i.e.
 * it overran the ring.
 */
static int reset_rings(struct rm_kvm_vm *vm)
{
	uint64_t flagged = vm->ring_flagged;
	int ret;

	if (!flagged)
		return 0;
	vm->ring_flagged = 0;
	ret = ioctl(vm->vm_fd, KVM_RESET_DIRTY_RINGS, 0);
	if (ret < 0) {
		ret = -errno;
		rm_err("kvm: KVM_RESET_DIRTY_RINGS: %s", strerror(-ret));
		return ret;
	}
	if ((uint64_t)ret < flagged) {
		char how[96];

		snprintf(how, sizeof(how), "KVM reset %d of the %llu entries handed back", ret,
			 (unsigned long long)flagged);
		return overrun(vm, NULL, how);
	}
	return 0;
}

/* Entries still dirty in a ring nobody is pushing to (its vCPU is stopped):
 * after a harvest there must be none, or KVM's end and ours have parted. */
static bool dirty_left(struct rm_kvm_vm *vm, struct rm_kvm_vcpu *vcpu)
{
	for (uint32_t i = 0; i < vm->opts.dirty_ring_entries; i++)
		if (__atomic_load_n(&vcpu->ring[i].flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY)
			return true;
	return false;
}

/* Called on the vCPU's own thread: its ring is quiescent while we look. */
int rm_dirty_ring_full(struct rm_kvm_vm *vm, struct rm_kvm_vcpu *vcpu)
{
	int ret, r;

	pthread_mutex_lock(&vm->ring_lock);
	if (vm->ring_overrun) {
		ret = -EOVERFLOW;
		goto out;
	}
	ret = harvest(vm, vcpu, vm->ring_tracker);
	if (ret >= 0 && dirty_left(vm, vcpu))
		ret = overrun(vm, vcpu, "dirty entries lie beyond the harvest point");
	r = reset_rings(vm);
	if (ret >= 0)
		ret = r;
out:
	pthread_mutex_unlock(&vm->ring_lock);
	return ret < 0 ? ret : 0;
}

static bool ring_supported(struct rm_kvm_vm *vm)
{
	return vm->opts.dirty_ring_entries && vm->vcpus && vm->vcpus[0].ring && !rm_dirty_ring_hazard();
}

static int ring_start(struct rm_dirty_tracker *t)
{
	struct rm_kvm_vm *vm = t->vm;

	pthread_mutex_lock(&vm->ring_lock);
	vm->ring_tracker = t;
	pthread_mutex_unlock(&vm->ring_lock);
	return rm_kvm_vm_set_dirty_logging(vm, true);
}

static int ring_sync(struct rm_dirty_tracker *t)
{
	struct rm_kvm_vm *vm = t->vm;
	bool paused = rm_kvm_vm_is_paused(vm);
	int ret, first = 0;

	/* Hardware may buffer dirty GPAs (Intel PML) until the vCPU exits. */
	ret = rm_kvm_vm_kick_all(vm, 1000000000ull);
	if (ret < 0)
		rm_warn("kvm: dirty ring sync: a vCPU did not leave guest mode within 1 s");
	pthread_mutex_lock(&vm->ring_lock);
	if (vm->ring_overrun)
		first = -EOVERFLOW;
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		ret = harvest(vm, &vm->vcpus[i], t);
		/* Paused, no ring moves: what the harvest left is a gap. */
		if (ret >= 0 && paused && dirty_left(vm, &vm->vcpus[i]))
			ret = overrun(vm, &vm->vcpus[i], "dirty entries lie beyond the harvest point");
		if (ret < 0 && !first)
			first = ret;
	}
	ret = reset_rings(vm);
	if (ret < 0 && !first)
		first = ret;
	/* The harvest becomes the report by a swap, not a copy. */
	for (unsigned r = 0; r < vm->nr_regions; r++) {
		uint64_t *report = t->pending[r];

		t->pending[r] = t->bitmap[r];
		t->bitmap[r] = report;
		memset(t->pending[r], 0, t->words[r] * sizeof(uint64_t));
	}
	pthread_mutex_unlock(&vm->ring_lock);
	return first;
}

static void ring_stop(struct rm_dirty_tracker *t)
{
	struct rm_kvm_vm *vm = t->vm;

	rm_kvm_vm_set_dirty_logging(vm, false);
	pthread_mutex_lock(&vm->ring_lock);
	/* Leave the rings empty for the next tracker. */
	for (unsigned i = 0; i < vm->nr_vcpus; i++)
		harvest(vm, &vm->vcpus[i], NULL);
	reset_rings(vm);
	vm->ring_tracker = NULL;
	pthread_mutex_unlock(&vm->ring_lock);
}

const struct rm_dirty_ops rm_dirty_ring_ops = {
	.name = "ring",
	.supported = ring_supported,
	.start = ring_start,
	.sync = ring_sync,
	.stop = ring_stop,
};
