/*
 * kvm/boot.c — booting the built-in guest payload (kvm/guest/) straight into
 * x86 64-bit long mode: the image copied to its address, a GDT, identity
 * page tables of 2 MiB pages over all of RAM, the parameters block the
 * payload reads its workload from, and every vCPU's registers at the entry
 * point.  No firmware and no real-mode start: the payload is ours.
 */
#include <string.h>

#include "kvm/kvm-internal.h"

extern const uint8_t rm_guest_image[];
extern const uint64_t rm_guest_image_size;

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
