/*
 * kvm/vm.c — the VM, its memslots and its vCPU threads: creation, boot of the
 * guest payload, the vCPU run loop, pause/resume and the progress port.
 *
 * A vCPU thread runs KVM_RUN in a loop.  To stop it, the controlling thread
 * sets a request bit, then the run struct's immediate_exit, then sends
 * RM_KVM_KICK_SIGNAL: a vCPU in guest mode leaves on the signal, one about to
 * enter sees immediate_exit and returns -EINTR at once, so no request is
 * lost.  Requests are acted on only after such an -EINTR return: KVM has then
 * completed any pending port I/O, and the vCPU's state is consistent to save.
 * A stopped vCPU parks on vm->cond until vm->run_allowed.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvm/kvm-internal.h"

extern const uint8_t rm_guest_image[];
extern const uint64_t rm_guest_image_size;

#define KVM_TSS_GPA 0xfffbd000ul	/* in the hole below 4 GiB, as QEMU puts it */

static void kick_handler(int sig)
{
	(void)sig;	/* its only job is to interrupt KVM_RUN */
}

static pthread_once_t kick_once = PTHREAD_ONCE_INIT;
static int kick_install_err;

static void kick_install(void)
{
	struct sigaction sa = { .sa_handler = kick_handler };

	sigemptyset(&sa.sa_mask);
	/* No SA_RESTART: KVM_RUN must come back with -EINTR. */
	if (sigaction(RM_KVM_KICK_SIGNAL, &sa, NULL) < 0)
		kick_install_err = -errno;
}

static void vcpu_kick(struct rm_kvm_vcpu *vcpu)
{
	__atomic_store_n(&vcpu->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	if (vcpu->thread_started)
		pthread_kill(vcpu->thread, RM_KVM_KICK_SIGNAL);
}

static void vcpu_fault(struct rm_kvm_vcpu *vcpu, int err, const char *what)
{
	struct kvm_regs regs = { 0 };
	int expected = 0;

	ioctl(vcpu->fd, KVM_GET_REGS, &regs);
	rm_err("kvm: vCPU %u stopped: %s (rip %#llx)", vcpu->id, what, (unsigned long long)regs.rip);
	atomic_compare_exchange_strong(&vcpu->vm->fault, &expected, err);
	vcpu->dead = true;
}

static void handle_io(struct rm_kvm_vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	uint32_t val = 0;

	if (run->io.direction != KVM_EXIT_IO_OUT || run->io.size != 4 || run->io.count != 1) {
		char what[96];

		snprintf(what, sizeof(what), "unexpected port access: port %#x size %u count %u dir %u",
			 run->io.port, run->io.size, run->io.count, run->io.direction);
		vcpu_fault(vcpu, -EIO, what);
		return;
	}
	memcpy(&val, (uint8_t *)run + run->io.data_offset, 4);
	switch (run->io.port) {
	case RM_GUEST_PORT_PROGRESS:
		atomic_fetch_add(&vcpu->progress, val);
		break;
	case RM_GUEST_PORT_ERROR:
		/* Log the first few: enough to see the pattern, not a flood. */
		if (atomic_fetch_add(&vcpu->errors, 1) < 8)
			rm_warn("kvm: vCPU %u: guest integrity check failed on work page %u", vcpu->id, val);
		atomic_fetch_add(&vcpu->vm->integrity_errors, 1);
		break;
	case RM_GUEST_PORT_DONE:
		break;
	case RM_GUEST_PORT_EXCEPTION: {
		struct kvm_regs regs = { 0 };
		char what[160];

		ioctl(vcpu->fd, KVM_GET_REGS, &regs);
		snprintf(what, sizeof(what), "guest CPU exception %u at rip %#llx, error code %#llx, cr2 %#llx",
			 val, (unsigned long long)regs.rcx, (unsigned long long)regs.rbx,
			 (unsigned long long)regs.rdx);
		vcpu_fault(vcpu, -EFAULT, what);
		break;
	}
	default: {
		char what[64];

		snprintf(what, sizeof(what), "write to unknown port %#x", run->io.port);
		vcpu_fault(vcpu, -EIO, what);
	}
	}
}

/* Run until a request arrives or the vCPU dies. */
static void vcpu_run(struct rm_kvm_vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	char what[128];

	while (!vcpu->dead) {
		int ret = ioctl(vcpu->fd, KVM_RUN, 0);

		atomic_fetch_add(&vcpu->exits, 1);
		if (ret < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				/* Clear before looking at requests: a requester sets
				 * the request first, so neither can be missed. */
				__atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST);
				if (atomic_load(&vcpu->req))
					return;
				continue;
			}
			snprintf(what, sizeof(what), "KVM_RUN: %s", strerror(errno));
			vcpu_fault(vcpu, -errno, what);
			return;
		}
		switch (run->exit_reason) {
		case KVM_EXIT_IO:
			handle_io(vcpu);
			break;
		case KVM_EXIT_DIRTY_RING_FULL:
			atomic_fetch_add(&vcpu->vm->ring_full_exits, 1);
			ret = rm_dirty_ring_full(vcpu->vm, vcpu);
			if (ret < 0)
				vcpu_fault(vcpu, ret, "dirty ring full and could not be harvested");
			break;
		case KVM_EXIT_SHUTDOWN:
			vcpu_fault(vcpu, -EIO, "guest shut down (triple fault)");
			break;
		case KVM_EXIT_FAIL_ENTRY:
			snprintf(what, sizeof(what), "entry failed, hardware reason %#llx",
				 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
			vcpu_fault(vcpu, -EIO, what);
			break;
		case KVM_EXIT_INTERNAL_ERROR:
			snprintf(what, sizeof(what), "KVM internal error, suberror %u", run->internal.suberror);
			vcpu_fault(vcpu, -EIO, what);
			break;
		case KVM_EXIT_MMIO:
			snprintf(what, sizeof(what), "access to unbacked guest-physical %#llx",
				 (unsigned long long)run->mmio.phys_addr);
			vcpu_fault(vcpu, -EFAULT, what);
			break;
		default:
			snprintf(what, sizeof(what), "unexpected exit reason %u", run->exit_reason);
			vcpu_fault(vcpu, -EIO, what);
			break;
		}
	}
}

static void *vcpu_thread(void *arg)
{
	struct rm_kvm_vcpu *vcpu = arg;
	struct rm_kvm_vm *vm = vcpu->vm;
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, RM_KVM_KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);

	pthread_mutex_lock(&vm->lock);
	for (;;) {
		while (!vm->stopping && (!vm->run_allowed || vcpu->dead)) {
			if (!vcpu->parked) {
				vcpu->parked = true;
				vm->nr_parked++;
				pthread_cond_broadcast(&vm->cond);
			}
			pthread_cond_wait(&vm->cond, &vm->lock);
		}
		if (vm->stopping)
			break;
		if (vcpu->parked) {
			vcpu->parked = false;
			vm->nr_parked--;
		}
		/* Requests made before this resume are stale. */
		atomic_store(&vcpu->req, 0);
		pthread_mutex_unlock(&vm->lock);
		vcpu_run(vcpu);
		pthread_mutex_lock(&vm->lock);
	}
	if (!vcpu->parked) {
		vcpu->parked = true;
		vm->nr_parked++;
		pthread_cond_broadcast(&vm->cond);
	}
	pthread_mutex_unlock(&vm->lock);
	return NULL;
}

/* ---- creation ---- */

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

/* Lay RAM out as a PC would: up to 3 GiB from 0, the rest from 4 GiB, in
 * slots of at most slot_size. */
static int layout_regions(struct rm_kvm_vm *vm, size_t slot_size)
{
	size_t off = 0;

	while (off < vm->ram.size) {
		uint64_t gpa = off < RM_GUEST_LOW_RAM_MAX ? off : RM_GUEST_HIGH_RAM_GPA + (off - RM_GUEST_LOW_RAM_MAX);
		size_t size = vm->ram.size - off;
		struct rm_kvm_region *r;

		if (size > slot_size)
			size = slot_size;
		if (off < RM_GUEST_LOW_RAM_MAX && off + size > RM_GUEST_LOW_RAM_MAX)
			size = RM_GUEST_LOW_RAM_MAX - off;
		if (vm->nr_regions == RM_KVM_MAX_REGIONS || gpa + size > (uint64_t)RM_GUEST_MAX_GIB << 30) {
			rm_err("kvm: %zu MiB of RAM does not fit the guest layout (max %d GiB of address space)",
			       vm->ram.size >> 20, RM_GUEST_MAX_GIB);
			return -E2BIG;
		}
		r = &vm->regions[vm->nr_regions];
		*r = (struct rm_kvm_region){
			.slot = vm->nr_regions, .gpa = gpa, .size = size, .hva = (uint8_t *)vm->ram.addr + off,
		};
		vm->nr_regions++;
		off += size;
	}
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

/* The supported CPUID, with this vCPU's APIC ID where the guest looks for it. */
static int set_vcpu_cpuid(struct rm_kvm_vm *vm, struct rm_kvm_vcpu *vcpu)
{
	size_t size = sizeof(*vm->cpuid) + vm->cpuid->nent * sizeof(vm->cpuid->entries[0]);
	struct kvm_cpuid2 *c = malloc(size);
	int ret;

	if (!c)
		return -ENOMEM;
	memcpy(c, vm->cpuid, size);
	for (unsigned i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];

		if (e->function == 1)
			e->ebx = (e->ebx & 0x00ffffff) | (vcpu->id << 24);
		else if (e->function == 0xb || e->function == 0x1f)
			e->edx = vcpu->id;
	}
	ret = kvm_ioctl(vcpu->fd, KVM_SET_CPUID2, c);
	free(c);
	return ret;
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

static int create_vcpu(struct rm_kvm_vm *vm, unsigned id)
{
	struct rm_kvm_vcpu *vcpu = &vm->vcpus[id];
	int ret;

	vcpu->vm = vm;
	vcpu->id = id;
	vcpu->fd = kvm_ioctl_val(vm->vm_fd, KVM_CREATE_VCPU, id);
	if (vcpu->fd < 0)
		return vcpu->fd;
	vcpu->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd, 0);
	if (vcpu->run == MAP_FAILED) {
		vcpu->run = NULL;
		return -errno;
	}
	if (vm->opts.dirty_ring_entries) {
		size_t bytes = (size_t)vm->opts.dirty_ring_entries * sizeof(struct kvm_dirty_gfn);

		vcpu->ring = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu->fd,
				  KVM_DIRTY_LOG_PAGE_OFFSET * sysconf(_SC_PAGESIZE));
		if (vcpu->ring == MAP_FAILED) {
			ret = -errno;
			vcpu->ring = NULL;
			rm_err("kvm: mapping vCPU %u's dirty ring: %s", id, strerror(-ret));
			return ret;
		}
	}
	return set_vcpu_cpuid(vm, vcpu);
}

struct rm_kvm_vm *rm_kvm_vm_create(const struct rm_kvm_vm_opts *opts)
{
	size_t slot_size = opts->slot_size ? opts->slot_size : RM_KVM_MAX_SLOT_SIZE;
	struct rm_kvm_vm *vm;
	int ret;

	pthread_once(&kick_once, kick_install);
	if (kick_install_err) {
		errno = -kick_install_err;
		return NULL;
	}
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

	ret = rm_ram_alloc(&vm->ram, opts->ram_size, &opts->backing);
	if (ret < 0)
		goto fail;
	ret = layout_regions(vm, slot_size);
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
		ret = create_vcpu(vm, i);
		if (ret < 0)
			goto fail;
	}
	ret = ioctl(vm->vcpus[0].fd, KVM_GET_TSC_KHZ, 0);
	vm->tsc_khz = ret > 0 ? (uint64_t)ret : 1000000;
	ret = rm_cpu_state_probe(vm);
	if (ret < 0)
		goto fail;

	/* Threads last: they start parked, since run_allowed is false. */
	for (unsigned i = 0; i < opts->nr_vcpus; i++) {
		ret = -pthread_create(&vm->vcpus[i].thread, NULL, vcpu_thread, &vm->vcpus[i]);
		if (ret < 0) {
			rm_err("kvm: starting vCPU thread %u: %s", i, strerror(-ret));
			goto fail;
		}
		vm->vcpus[i].thread_started = true;
	}
	/* Return a VM that is paused in every sense: all threads parked. */
	pthread_mutex_lock(&vm->lock);
	while (vm->nr_parked < vm->nr_vcpus)
		pthread_cond_wait(&vm->cond, &vm->lock);
	pthread_mutex_unlock(&vm->lock);
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
		pthread_mutex_lock(&vm->lock);
		vm->stopping = true;
		pthread_cond_broadcast(&vm->cond);
		pthread_mutex_unlock(&vm->lock);
		for (unsigned i = 0; i < vm->nr_vcpus; i++) {
			struct rm_kvm_vcpu *vcpu = &vm->vcpus[i];

			if (vcpu->thread_started) {
				atomic_fetch_or(&vcpu->req, VCPU_REQ_STOP);
				vcpu_kick(vcpu);
				pthread_join(vcpu->thread, NULL);
			}
		}
		for (unsigned i = 0; i < vm->nr_vcpus; i++) {
			struct rm_kvm_vcpu *vcpu = &vm->vcpus[i];

			if (vcpu->ring)
				munmap(vcpu->ring, (size_t)vm->opts.dirty_ring_entries * sizeof(struct kvm_dirty_gfn));
			if (vcpu->run)
				munmap(vcpu->run, vm->run_size);
			if (vcpu->fd >= 0)
				close(vcpu->fd);
		}
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

/* ---- boot ---- */

static int set_boot_state(struct rm_kvm_vm *vm, struct rm_kvm_vcpu *vcpu)
{
	struct kvm_mp_state mp = { .mp_state = KVM_MP_STATE_RUNNABLE };
	struct kvm_segment code = {
		.base = 0, .limit = 0xffffffff, .selector = RM_GUEST_SEL_CODE,
		.type = 11, .present = 1, .s = 1, .l = 1, .g = 1,
	};
	struct kvm_segment data = {
		.base = 0, .limit = 0xffffffff, .selector = RM_GUEST_SEL_DATA,
		.type = 3, .present = 1, .s = 1, .db = 1, .g = 1,
	};
	struct kvm_sregs sregs;
	struct kvm_regs regs = { 0 };
	int ret;

	ret = kvm_ioctl(vcpu->fd, KVM_GET_SREGS, &sregs);
	if (ret < 0)
		return ret;
	sregs.cs = code;
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
	sregs.gdt.base = RM_GUEST_GDT_GPA;
	sregs.gdt.limit = 3 * 8 - 1;
	sregs.cr3 = RM_GUEST_PML4_GPA;
	sregs.cr4 = 0x20 | 0x200 | 0x400;	/* PAE, OSFXSR, OSXMMEXCPT */
	sregs.cr0 = 0x80000000u | 0x20 | 0x10 | 0x2 | 0x1; /* PG, NE, ET, MP, PE */
	sregs.efer = 0x500;			/* LME, LMA */
	ret = kvm_ioctl(vcpu->fd, KVM_SET_SREGS, &sregs);
	if (ret < 0)
		return ret;
	regs.rip = RM_GUEST_IMAGE_GPA;
	/* The ABI wants rsp + 8 16-byte aligned at function entry. */
	regs.rsp = RM_GUEST_STACKS_GPA + (vcpu->id + 1) * RM_GUEST_STACK_SIZE - 8;
	regs.rdi = vcpu->id;
	regs.rflags = 0x2;
	ret = kvm_ioctl(vcpu->fd, KVM_SET_REGS, &regs);
	if (ret < 0)
		return ret;
	/* With the in-kernel APIC, APs wait for INIT/SIPI: start them directly. */
	return kvm_ioctl(vcpu->fd, KVM_SET_MP_STATE, &mp);
}

static void write_page_tables(struct rm_kvm_vm *vm, uint64_t top)
{
	uint64_t *pml4 = rm_kvm_vm_gpa_to_hva(vm, RM_GUEST_PML4_GPA);
	uint64_t *pdpt = rm_kvm_vm_gpa_to_hva(vm, RM_GUEST_PDPT_GPA);
	unsigned gib = (unsigned)((top + (1ull << 30) - 1) >> 30);
	uint64_t *gdt = rm_kvm_vm_gpa_to_hva(vm, RM_GUEST_GDT_GPA);

	gdt[0] = 0;
	gdt[1] = 0x00af9b000000ffffull;	/* 64-bit code, accessed */
	gdt[2] = 0x00cf93000000ffffull;	/* data, accessed */
	memset(pml4, 0, RM_GUEST_PAGE);
	memset(pdpt, 0, RM_GUEST_PAGE);
	pml4[0] = RM_GUEST_PDPT_GPA | 0x3;
	for (unsigned i = 0; i < gib; i++) {
		uint64_t *pd = rm_kvm_vm_gpa_to_hva(vm, RM_GUEST_PD_GPA + i * RM_GUEST_PAGE);

		pdpt[i] = (RM_GUEST_PD_GPA + i * RM_GUEST_PAGE) | 0x3;
		for (unsigned j = 0; j < 512; j++)
			pd[j] = ((uint64_t)i << 30) + ((uint64_t)j << 21) + 0x83; /* P, RW, 2M */
	}
}

int rm_kvm_vm_boot(struct rm_kvm_vm *vm, const struct rm_kvm_workload *wl)
{
	uint64_t pages = vm->ram.size / RM_GUEST_PAGE;
	uint64_t meta_bytes = (pages * 4 + (2u << 20) - 1) & ~((2ull << 20) - 1);
	uint64_t low_end = vm->ram.size < RM_GUEST_LOW_RAM_MAX ? vm->ram.size : RM_GUEST_LOW_RAM_MAX;
	uint64_t high = vm->ram.size - low_end;
	uint64_t work_start = RM_GUEST_META_GPA + meta_bytes;
	struct rm_guest_params *p;
	int ret;

	if (vm->booted || !rm_kvm_vm_is_paused(vm)) {
		rm_err("kvm: boot wants a paused VM that has no guest yet");
		return -EBUSY;
	}
	if (wl->kind >= RM_GUEST_NR_WORKLOADS || work_start >= low_end) {
		rm_err("kvm: workload %u on %zu MiB: unknown workload or RAM too small", wl->kind,
		       vm->ram.size >> 20);
		return -EINVAL;
	}
	if (rm_guest_image_size > RM_GUEST_IMAGE_MAX)
		return -E2BIG;
	memcpy(rm_kvm_vm_gpa_to_hva(vm, RM_GUEST_IMAGE_GPA), rm_guest_image, rm_guest_image_size);
	write_page_tables(vm, high ? RM_GUEST_HIGH_RAM_GPA + high : low_end);
	memset(rm_kvm_vm_gpa_to_hva(vm, RM_GUEST_META_GPA), 0, meta_bytes);

	p = rm_kvm_vm_gpa_to_hva(vm, RM_GUEST_PARAMS_GPA);
	*p = (struct rm_guest_params){
		.magic = RM_GUEST_MAGIC,
		.workload = wl->kind,
		.nr_vcpus = vm->nr_vcpus,
		.meta_gpa = RM_GUEST_META_GPA,
		.seed = wl->seed,
		.rate_pages_per_sec = wl->rate_pages_per_sec,
		.tsc_khz = vm->tsc_khz,
		.hot_permille = wl->hot_permille ? wl->hot_permille : 100,
		.hot_write_permille = wl->hot_write_permille ? wl->hot_write_permille : 900,
		.report_every = wl->report_every ? wl->report_every : 64,
		.stamp = 1,
	};
	p->ranges[p->nr_ranges++] = (struct rm_guest_range){ work_start, (low_end - work_start) / RM_GUEST_PAGE };
	if (high)
		p->ranges[p->nr_ranges++] = (struct rm_guest_range){ RM_GUEST_HIGH_RAM_GPA, high / RM_GUEST_PAGE };
	for (unsigned i = 0; i < p->nr_ranges; i++)
		p->work_pages += p->ranges[i].pages;
	vm->params = p;

	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		ret = set_boot_state(vm, &vm->vcpus[i]);
		if (ret < 0)
			return ret;
	}
	vm->booted = true;
	return 0;
}

/* ---- pause / resume ---- */

bool rm_kvm_vm_is_paused(const struct rm_kvm_vm *vm)
{
	struct rm_kvm_vm *m = (struct rm_kvm_vm *)vm;
	bool paused;

	pthread_mutex_lock(&m->lock);
	paused = !m->run_allowed && m->nr_parked == m->nr_vcpus;
	pthread_mutex_unlock(&m->lock);
	return paused;
}

static void deadline_after(struct timespec *ts, uint64_t ns)
{
	*ts = rm_abstime_in(ns);
}

int rm_kvm_vm_pause(struct rm_kvm_vm *vm, uint64_t timeout_ns)
{
	struct timespec deadline;
	int ret = 0;

	pthread_mutex_lock(&vm->lock);
	vm->run_allowed = false;
	pthread_mutex_unlock(&vm->lock);
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		atomic_fetch_or(&vm->vcpus[i].req, VCPU_REQ_PAUSE);
		vcpu_kick(&vm->vcpus[i]);
	}

	deadline_after(&deadline, timeout_ns);
	pthread_mutex_lock(&vm->lock);
	while (vm->nr_parked < vm->nr_vcpus && ret == 0)
		ret = -pthread_cond_timedwait(&vm->cond, &vm->lock, &deadline);
	if (vm->nr_parked < vm->nr_vcpus) {
		/* Leave the VM as it was: running. */
		rm_err("kvm: pause: only %u of %u vCPUs stopped within %llu ms", vm->nr_parked,
		       vm->nr_vcpus, (unsigned long long)(timeout_ns / 1000000));
		vm->run_allowed = true;
		pthread_cond_broadcast(&vm->cond);
		pthread_mutex_unlock(&vm->lock);
		return -ETIMEDOUT;
	}
	pthread_mutex_unlock(&vm->lock);

	if (vm->booted && !vm->clock_valid) {
		ret = kvm_ioctl(vm->vm_fd, KVM_GET_CLOCK, &vm->clock);
		if (ret < 0)
			return ret;
		vm->clock_valid = true;
	}
	return 0;
}

int rm_kvm_vm_resume(struct rm_kvm_vm *vm)
{
	if (!vm->booted) {
		rm_err("kvm: resume: the VM has no guest (boot or load state first)");
		return -EINVAL;
	}
	if (vm->clock_valid) {
		/* Only the clock value: the guest sees no time pass while paused. */
		struct kvm_clock_data c = { .clock = vm->clock.clock };
		int ret = kvm_ioctl(vm->vm_fd, KVM_SET_CLOCK, &c);

		if (ret < 0)
			return ret;
		vm->clock_valid = false;
	}
	pthread_mutex_lock(&vm->lock);
	vm->run_allowed = true;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

int rm_kvm_vm_kick_all(struct rm_kvm_vm *vm, uint64_t timeout_ns)
{
	unsigned long *before = calloc(vm->nr_vcpus, sizeof(*before));
	uint64_t end = rm_now_ns() + timeout_ns;
	int ret = 0;

	if (!before)
		return -ENOMEM;
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		before[i] = atomic_load(&vm->vcpus[i].exits);
		vcpu_kick(&vm->vcpus[i]);
	}
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		struct rm_kvm_vcpu *vcpu = &vm->vcpus[i];

		for (;;) {
			bool parked;

			if (atomic_load(&vcpu->exits) != before[i])
				break;
			pthread_mutex_lock(&vm->lock);
			parked = vcpu->parked;
			pthread_mutex_unlock(&vm->lock);
			if (parked)
				break;
			if (rm_now_ns() > end) {
				ret = -ETIMEDOUT;
				break;
			}
			/* A lost kick (signal landed in user space) resolves
			 * at the vCPU's next exit; kick again meanwhile. */
			vcpu_kick(vcpu);
			usleep(50);
		}
	}
	free(before);
	return ret;
}
