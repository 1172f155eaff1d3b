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
 */
#include <stdlib.h>

#include "kvm/dirty-internal.h"

/* Harvest one vCPU's ring into t->pending (or drop it, t == NULL). */
static unsigned harvest(struct rm_kvm_vm *vm, struct rm_kvm_vcpu *vcpu, struct rm_dirty_tracker *t)
{
	uint32_t mask = vm->opts.dirty_ring_entries - 1;
	unsigned n = 0;

	for (;;) {
		struct kvm_dirty_gfn *e = &vcpu->ring[vcpu->ring_fetch & mask];
		uint32_t slot;
		uint64_t off;

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
	return n;
}

static int reset_rings(struct rm_kvm_vm *vm)
{
	int ret = ioctl(vm->vm_fd, KVM_RESET_DIRTY_RINGS, 0);

	if (ret < 0) {
		ret = -errno;
		rm_err("kvm: KVM_RESET_DIRTY_RINGS: %s", strerror(-ret));
	}
	return ret;
}

int rm_dirty_ring_full(struct rm_kvm_vm *vm, struct rm_kvm_vcpu *vcpu)
{
	int ret = 0;

	pthread_mutex_lock(&vm->ring_lock);
	if (harvest(vm, vcpu, vm->ring_tracker))
		ret = reset_rings(vm);
	pthread_mutex_unlock(&vm->ring_lock);
	return ret;
}

static bool ring_supported(struct rm_kvm_vm *vm)
{
	return vm->opts.dirty_ring_entries && vm->vcpus && vm->vcpus[0].ring;
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
	unsigned n = 0;
	int ret;

	/* Hardware may buffer dirty GPAs (Intel PML) until the vCPU exits. */
	ret = rm_kvm_vm_kick_all(vm, 1000000000ull);
	if (ret < 0)
		rm_warn("kvm: dirty ring sync: a vCPU did not leave guest mode within 1 s");
	pthread_mutex_lock(&vm->ring_lock);
	for (unsigned i = 0; i < vm->nr_vcpus; i++)
		n += harvest(vm, &vm->vcpus[i], t);
	ret = n ? reset_rings(vm) : 0;
	/* The harvest becomes the report by a swap, not a copy. */
	for (unsigned r = 0; r < vm->nr_regions; r++) {
		uint64_t *report = t->pending[r];

		t->pending[r] = t->bitmap[r];
		t->bitmap[r] = report;
		memset(t->pending[r], 0, t->words[r] * sizeof(uint64_t));
	}
	pthread_mutex_unlock(&vm->ring_lock);
	return ret;
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
