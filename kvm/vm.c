/*
 * kvm/vm.c — the VM: creating it (KVM fd, VM fd, RAM, memslots, the
 * in-kernel irqchip and PIT, the dirty ring, the vCPUs), destroying it, and
 * reading what it is (regions, progress, the payload's work pages).  The
 * vCPUs and their threads are vcpu.c's, the boot is boot.c's, the state
 * sections are state.c's.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "kvm/kvm-internal.h"
#include "kvm/state.h"
#include "kvm/vcpu.h"

#define KVM_TSS_GPA 0xfffbd000ul	/* in the hole below 4 GiB, as QEMU puts it */

static int set_slot(struct rm_kvm_vm *vm, const struct rm_kvm_region *r, bool log_dirty)
{
	struct kvm_userspace_memory_region slot = {
		.slot = r->slot,
		.flags = log_dirty ? KVM_MEM_LOG_DIRTY_PAGES : 0,
		.guest_phys_addr = r->gpa,
		.memory_size = r->size,
		.userspace_addr = (uintptr_t)r->hva,
	};

	return kvm_ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot);
}

int rm_kvm_vm_set_dirty_logging(struct rm_kvm_vm *vm, bool on)
{
	int first = 0;

	for (unsigned i = 0; i < vm->nr_regions; i++) {
		int ret = set_slot(vm, &vm->regions[i], on);

		if (ret < 0 && !first)
			first = ret;
	}
	return first;
}

/* Lay `size` bytes of RAM out as a PC would: up to 3 GiB from 0, the rest
 * from 4 GiB, in slots of at most slot_size; vm NULL: only check that it
 * fits, before any RAM is allocated for it. */
static int layout_regions(struct rm_kvm_vm *vm, size_t size_all, size_t slot_size)
{
	unsigned n = 0;
	size_t off = 0;

	while (off < size_all) {
		uint64_t gpa = off < RM_GUEST_LOW_RAM_MAX ? off : RM_GUEST_HIGH_RAM_GPA + (off - RM_GUEST_LOW_RAM_MAX);
		size_t size = size_all - off;

		if (size > slot_size)
			size = slot_size;
		if (off < RM_GUEST_LOW_RAM_MAX && off + size > RM_GUEST_LOW_RAM_MAX)
			size = RM_GUEST_LOW_RAM_MAX - off;
		if (n == RM_KVM_MAX_REGIONS || gpa + size > (uint64_t)RM_GUEST_MAX_GIB << 30) {
			rm_err("kvm: %zu MiB of RAM does not fit the guest layout (max %d GiB of address space)",
			       size_all >> 20, RM_GUEST_MAX_GIB);
			return -E2BIG;
		}
		if (vm)
			vm->regions[n] = (struct rm_kvm_region){
				.slot = n, .gpa = gpa, .size = size, .hva = (uint8_t *)vm->ram.addr + off,
			};
		n++;
		off += size;
	}
	if (vm)
		vm->nr_regions = n;
	return 0;
}

static int get_supported_cpuid(struct rm_kvm_vm *vm)
{
	for (unsigned n = 64; n <= 4096; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));
		int ret;

		if (!c)
			return -ENOMEM;
		c->nent = n;
		ret = kvm_ioctl_quiet(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c);
		if (ret == 0) {
			vm->cpuid = c;
			return 0;
		}
		free(c);
		if (ret != -E2BIG) {
			rm_err("kvm: KVM_GET_SUPPORTED_CPUID: %s", strerror(-ret));
			return ret;
		}
	}
	return -E2BIG;
}

static int enable_dirty_ring(struct rm_kvm_vm *vm, unsigned entries)
{
	struct kvm_enable_cap cap = { 0 };
	size_t bytes = (size_t)entries * sizeof(struct kvm_dirty_gfn);
	int max;

	if (entries & (entries - 1)) {
		rm_err("kvm: dirty ring of %u entries: must be a power of two", entries);
		return -EINVAL;
	}
	/* x86 offers both; the acquire/release flavour is the one with defined
	 * ordering on every architecture, so prefer it. */
	cap.cap = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
	max = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, cap.cap);
	if (max <= 0) {
		cap.cap = KVM_CAP_DIRTY_LOG_RING;
		max = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, cap.cap);
	}
	if (max <= 0) {
		rm_err("kvm: this kernel offers no dirty ring");
		return -ENOTSUP;
	}
	if (bytes > (size_t)max) {
		rm_err("kvm: dirty ring of %u entries is %zu bytes, KVM allows at most %d", entries, bytes, max);
		return -EINVAL;
	}
	cap.args[0] = bytes;
	return kvm_ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap);
}

struct rm_kvm_vm *rm_kvm_vm_create(const struct rm_kvm_vm_opts *opts)
{
	size_t slot_size = opts->slot_size ? opts->slot_size : RM_KVM_MAX_SLOT_SIZE;
	struct rm_kvm_vm *vm;
	int ret;

	if (!opts->nr_vcpus || opts->nr_vcpus > RM_GUEST_MAX_VCPUS || opts->ram_size < RM_GUEST_MIN_RAM ||
	    opts->ram_size % (2u << 20) || slot_size > RM_KVM_MAX_SLOT_SIZE || (slot_size & (slot_size - 1)) ||
	    slot_size < (2u << 20)) {
		rm_err("kvm: bad VM shape: %u vCPUs (1..%d), %zu bytes of RAM (2 MiB multiple, >= %llu MiB), "
		       "slots of %zu bytes (power of two, 2 MiB..1 GiB)", opts->nr_vcpus, RM_GUEST_MAX_VCPUS,
		       opts->ram_size, RM_GUEST_MIN_RAM >> 20, slot_size);
		errno = EINVAL;
		return NULL;
	}
	vm = calloc(1, sizeof(*vm));
	if (!vm) {
		errno = ENOMEM;
		return NULL;
	}
	vm->opts = *opts;
	vm->kvm_fd = vm->vm_fd = -1;
	vm->ram.fd = -1;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_mutex_init(&vm->ring_lock, NULL);
	pthread_cond_init(&vm->cond, NULL);

	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		ret = -errno;
		rm_err("kvm: /dev/kvm: %s", strerror(-ret));
		goto fail;
	}
	ret = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (ret != KVM_API_VERSION) {
		rm_err("kvm: API version %d, this build speaks %d", ret, KVM_API_VERSION);
		ret = -ENOTSUP;
		goto fail;
	}
	ret = kvm_ioctl_val(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (ret < 0)
		goto fail;
	vm->run_size = (size_t)ret;
	vm->vm_fd = kvm_ioctl_val(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0) {
		ret = vm->vm_fd;
		goto fail;
	}

	/* Before RAM is allocated and populated: a guest that cannot fit the
	 * layout costs nothing. */
	ret = layout_regions(NULL, opts->ram_size, slot_size);
	if (ret < 0)
		goto fail;
	ret = rm_ram_alloc(&vm->ram, opts->ram_size, &opts->backing);
	if (ret < 0)
		goto fail;
	ret = layout_regions(vm, vm->ram.size, slot_size);
	if (ret < 0)
		goto fail;
	for (unsigned i = 0; i < vm->nr_regions; i++) {
		ret = set_slot(vm, &vm->regions[i], false);
		if (ret < 0)
			goto fail;
	}
	ret = kvm_ioctl_val(vm->vm_fd, KVM_SET_TSS_ADDR, KVM_TSS_GPA);
	if (ret < 0)
		goto fail;
	ret = kvm_ioctl_val(vm->vm_fd, KVM_CREATE_IRQCHIP, 0);
	if (ret < 0)
		goto fail;
	/* A PC has a PIT; the payload never programs it, but its state is part
	 * of what a real guest would need moved, so it is there and saved. */
	{
		struct kvm_pit_config pit = { .flags = 0 };

		ret = kvm_ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit);
		if (ret < 0)
			goto fail;
	}
	if (opts->dirty_ring_entries) {
		ret = enable_dirty_ring(vm, opts->dirty_ring_entries);
		if (ret < 0)
			goto fail;
	}
	ret = get_supported_cpuid(vm);
	if (ret < 0)
		goto fail;

	vm->vcpus = calloc(opts->nr_vcpus, sizeof(*vm->vcpus));
	if (!vm->vcpus) {
		ret = -ENOMEM;
		goto fail;
	}
	for (unsigned i = 0; i < opts->nr_vcpus; i++)
		vm->vcpus[i].fd = -1;
	vm->nr_vcpus = opts->nr_vcpus;
	for (unsigned i = 0; i < opts->nr_vcpus; i++) {
		ret = rm_kvm_vcpu_init(vm, i);
		if (ret < 0)
			goto fail;
	}
	ret = ioctl(vm->vcpus[0].fd, KVM_GET_TSC_KHZ, 0);
	vm->tsc_khz = ret > 0 ? (uint64_t)ret : 1000000;
	ret = rm_cpu_state_probe(vm);
	if (ret < 0)
		goto fail;

	/* Threads last: a VM is returned paused, its threads parked. */
	ret = rm_kvm_vcpus_start(vm);
	if (ret < 0)
		goto fail;
	return vm;

fail:
	/* destroy is best-effort and copes with any partly built VM. */
	rm_kvm_vm_destroy(vm);
	errno = -ret;
	return NULL;
}

void rm_kvm_vm_destroy(struct rm_kvm_vm *vm)
{
	if (!vm)
		return;
	if (vm->vcpus) {
		/* A thread stuck in KVM_RUN still uses the VM: leak it all
		 * rather than free memory under it. */
		if (rm_kvm_vcpus_stop(vm) < 0) {
			rm_err("kvm: leaving the VM allocated");
			return;
		}
		for (unsigned i = 0; i < vm->nr_vcpus; i++)
			rm_kvm_vcpu_release(vm, &vm->vcpus[i]);
		free(vm->vcpus);
	}
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	/* RAM after the VM fd: KVM must not map it any more. */
	rm_ram_free(&vm->ram);
	free(vm->cpuid);
	free(vm->msr_index);
	pthread_cond_destroy(&vm->cond);
	pthread_mutex_destroy(&vm->ring_lock);
	pthread_mutex_destroy(&vm->lock);
	free(vm);
}

/* ---- accessors ---- */

unsigned rm_kvm_vm_nr_vcpus(const struct rm_kvm_vm *vm) { return vm->nr_vcpus; }
unsigned rm_kvm_vm_nr_regions(const struct rm_kvm_vm *vm) { return vm->nr_regions; }
size_t rm_kvm_vm_ram_size(const struct rm_kvm_vm *vm) { return vm->ram.size; }
const struct rm_ram *rm_kvm_vm_ram(const struct rm_kvm_vm *vm) { return &vm->ram; }

const struct rm_kvm_region *rm_kvm_vm_region(const struct rm_kvm_vm *vm, unsigned i)
{
	return i < vm->nr_regions ? &vm->regions[i] : NULL;
}

void *rm_kvm_vm_gpa_to_hva(const struct rm_kvm_vm *vm, uint64_t gpa)
{
	for (unsigned i = 0; i < vm->nr_regions; i++) {
		const struct rm_kvm_region *r = &vm->regions[i];

		if (gpa >= r->gpa && gpa - r->gpa < r->size)
			return (uint8_t *)r->hva + (gpa - r->gpa);
	}
	return NULL;
}

uint64_t rm_kvm_vcpu_progress(const struct rm_kvm_vm *vm, unsigned vcpu)
{
	return vcpu < vm->nr_vcpus ? atomic_load(&vm->vcpus[vcpu].progress) : 0;
}

uint64_t rm_kvm_vm_progress(const struct rm_kvm_vm *vm)
{
	uint64_t sum = 0;

	for (unsigned i = 0; i < vm->nr_vcpus; i++)
		sum += atomic_load(&vm->vcpus[i].progress);
	return sum;
}

uint64_t rm_kvm_vm_integrity_errors(const struct rm_kvm_vm *vm)
{
	return atomic_load(&vm->integrity_errors);
}

int rm_kvm_vm_fault(const struct rm_kvm_vm *vm)
{
	return atomic_load(&vm->fault);
}

void rm_kvm_vm_set_stamp(struct rm_kvm_vm *vm, uint64_t stamp)
{
	if (vm->params)
		__atomic_store_n(&vm->params->stamp, stamp, __ATOMIC_SEQ_CST);
}

int rm_kvm_vm_wait_stamp_seen(struct rm_kvm_vm *vm, uint64_t stamp, uint64_t timeout_ns)
{
	uint64_t end = rm_now_ns() + timeout_ns;

	if (!vm->params)
		return -EINVAL;
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		while (__atomic_load_n(&vm->params->seen[i][0], __ATOMIC_ACQUIRE) < stamp) {
			if (rm_now_ns() > end || vm->vcpus[i].dead)
				return -ETIMEDOUT;
			usleep(100);
		}
	}
	return 0;
}

uint64_t rm_kvm_vm_work_pages(const struct rm_kvm_vm *vm)
{
	return vm->params ? vm->params->work_pages : 0;
}

uint64_t rm_kvm_vm_work_page_gpa(const struct rm_kvm_vm *vm, uint64_t idx)
{
	const struct rm_guest_params *p = vm->params;

	for (uint32_t r = 0; p && r < p->nr_ranges && r < RM_GUEST_MAX_RANGES; r++) {
		if (idx < p->ranges[r].pages)
			return p->ranges[r].gpa + idx * RM_GUEST_PAGE;
		idx -= p->ranges[r].pages;
	}
	return UINT64_MAX;
}
