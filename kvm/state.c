/*
 * kvm/state.c — everything but RAM that a guest needs to continue elsewhere,
 * described as vmstate sections: "vm" (the shape, checked on load),
 * "kvmclock", "irqchip" (PIC, IOAPIC and PIT), one "cpu" per vCPU (registers,
 * special registers, FPU/XSAVE, XCRs, the MSRs KVM lists, local APIC, pending
 * events, MP state, debug registers) and "progress" (the guest's report port).
 *
 * Load order follows what KVM needs (as its selftests' state_test does):
 * SREGS before MSRs (EFER and the APIC base come first), the LAPIC before
 * the events that may inject into it, MP state and general registers last.
 */
#include <stdlib.h>

#include "kvm/kvm-internal.h"
#include "kvm/state.h"

#define CPU_MAX_MSRS	512
#define CPU_MAX_XSAVE	(64 * 1024)

/* One vCPU's state as the "cpu" section describes it. */
struct cpu_state {
	struct rm_kvm_vm *vm;
	/* Which optional parts the stream carried (set by post_load); the
	 * parser gives each vCPU a zeroed cpu_state of its own, so one vCPU
	 * never inherits another's subsections. */
	bool got_xsave, got_xcrs, got_debugregs;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_fpu fpu;
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events events;
	struct kvm_mp_state mp;
	struct kvm_debugregs debugregs;
	struct kvm_xcrs xcrs;
	uint32_t nr_msrs;
	uint32_t msr_index[CPU_MAX_MSRS];
	uint64_t msr_value[CPU_MAX_MSRS];
	uint32_t xsave_len;
	uint8_t xsave[CPU_MAX_XSAVE] __attribute__((aligned(64)));
};


static bool cpu_has_xsave(void *opaque)
{
	return ((struct cpu_state *)opaque)->vm->xsave_size != 0;
}

static bool cpu_has_xcrs(void *opaque)
{
	return ((struct cpu_state *)opaque)->vm->has_xcrs;
}

static bool cpu_has_debugregs(void *opaque)
{
	return ((struct cpu_state *)opaque)->vm->has_debugregs;
}

static int cpu_xsave_loaded(void *opaque, uint32_t version)
{
	((struct cpu_state *)opaque)->got_xsave = true;
	return 0;
}

static int cpu_xcrs_loaded(void *opaque, uint32_t version)
{
	((struct cpu_state *)opaque)->got_xcrs = true;
	return 0;
}

static int cpu_debugregs_loaded(void *opaque, uint32_t version)
{
	((struct cpu_state *)opaque)->got_debugregs = true;
	return 0;
}

static const struct rm_vms_field cpu_xsave_fields[] = {
	RM_VMS_VARRAY(struct cpu_state, xsave, RM_VMS_BYTES, xsave_len),
	RM_VMS_END,
};

static const struct rm_vms_desc cpu_xsave_desc = {
	.name = "cpu/xsave", .version_id = 1, .minimum_version_id = 1,
	.fields = cpu_xsave_fields, .needed = cpu_has_xsave, .post_load = cpu_xsave_loaded,
};

static const struct rm_vms_field cpu_xcrs_fields[] = {
	RM_VMS_BUF(struct cpu_state, xcrs),
	RM_VMS_END,
};

static const struct rm_vms_desc cpu_xcrs_desc = {
	.name = "cpu/xcrs", .version_id = 1, .minimum_version_id = 1,
	.fields = cpu_xcrs_fields, .needed = cpu_has_xcrs, .post_load = cpu_xcrs_loaded,
};

static const struct rm_vms_field cpu_debugregs_fields[] = {
	RM_VMS_BUF(struct cpu_state, debugregs),
	RM_VMS_END,
};

static const struct rm_vms_desc cpu_debugregs_desc = {
	.name = "cpu/debugregs", .version_id = 1, .minimum_version_id = 1,
	.fields = cpu_debugregs_fields, .needed = cpu_has_debugregs, .post_load = cpu_debugregs_loaded,
};

static const struct rm_vms_desc *const cpu_subsections[] = {
	&cpu_xsave_desc, &cpu_xcrs_desc, &cpu_debugregs_desc, NULL,
};

/* kvm_regs is 18 u64s; described as such so a layout change is caught. */
_Static_assert(sizeof(struct kvm_regs) == 18 * 8, "kvm_regs layout");

static const struct rm_vms_field cpu_fields[] = {
	{ .name = "regs", .type = RM_VMS_U64, .offset = offsetof(struct cpu_state, regs), .count = 18 },
	RM_VMS_BUF(struct cpu_state, sregs),
	RM_VMS_BUF(struct cpu_state, fpu),
	RM_VMS_VARRAY(struct cpu_state, msr_index, RM_VMS_U32, nr_msrs),
	RM_VMS_VARRAY(struct cpu_state, msr_value, RM_VMS_U64, nr_msrs),
	RM_VMS_BUF(struct cpu_state, lapic),
	RM_VMS_BUF(struct cpu_state, events),
	RM_VMS_SCALAR(struct cpu_state, mp.mp_state, RM_VMS_U32),
	RM_VMS_END,
};

static const struct rm_vms_desc cpu_desc = {
	.name = "cpu", .version_id = 1, .minimum_version_id = 1,
	.fields = cpu_fields, .subsections = cpu_subsections,
};

int rm_cpu_state_probe(struct rm_kvm_vm *vm)
{
	struct kvm_msr_list probe = { .nmsrs = 0 }, *list;
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e;
	} one;
	int ret, xsave2;

	ret = kvm_ioctl_quiet(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe);
	if (ret < 0 && ret != -E2BIG) {
		rm_err("kvm: KVM_GET_MSR_INDEX_LIST: %s", strerror(-ret));
		return ret;
	}
	list = calloc(1, sizeof(*list) + probe.nmsrs * sizeof(list->indices[0]));
	vm->msr_index = calloc(probe.nmsrs + 1, sizeof(*vm->msr_index));
	if (!list || !vm->msr_index) {
		free(list);
		return -ENOMEM;
	}
	list->nmsrs = probe.nmsrs;
	ret = kvm_ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, list);
	if (ret < 0) {
		free(list);
		return ret;
	}
	/* KVM lists MSRs this CPU model may not have: keep the ones that read. */
	for (unsigned i = 0; i < list->nmsrs && vm->nr_msrs < CPU_MAX_MSRS; i++) {
		memset(&one, 0, sizeof(one));
		one.hdr.nmsrs = 1;
		one.e.index = list->indices[i];
		if (ioctl(vm->vcpus[0].fd, KVM_GET_MSRS, &one) == 1)
			vm->msr_index[vm->nr_msrs++] = list->indices[i];
		else
			rm_dbg("kvm: MSR %#x is listed but does not read; not migrated", list->indices[i]);
	}
	free(list);

	xsave2 = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
	if (xsave2 > 0)
		vm->xsave_size = (size_t)xsave2;
	else if (ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) > 0)
		vm->xsave_size = sizeof(struct kvm_xsave);
	if (vm->xsave_size > CPU_MAX_XSAVE) {
		rm_err("kvm: XSAVE area of %zu bytes, this build handles %d", vm->xsave_size, CPU_MAX_XSAVE);
		return -E2BIG;
	}
	vm->has_xcrs = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0;
	vm->has_debugregs = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DEBUGREGS) > 0;
	rm_dbg("kvm: vCPU state: %u MSRs, XSAVE %zu bytes, XCRs %s, debug registers %s", vm->nr_msrs,
	       vm->xsave_size, vm->has_xcrs ? "yes" : "no", vm->has_debugregs ? "yes" : "no");
	return 0;
}

static int get_msrs(struct rm_kvm_vcpu *vcpu, struct cpu_state *s)
{
	struct rm_kvm_vm *vm = vcpu->vm;
	struct kvm_msrs *m = calloc(1, sizeof(*m) + vm->nr_msrs * sizeof(m->entries[0]));
	int ret;

	if (!m)
		return -ENOMEM;
	m->nmsrs = vm->nr_msrs;
	for (unsigned i = 0; i < vm->nr_msrs; i++)
		m->entries[i].index = vm->msr_index[i];
	ret = kvm_ioctl(vcpu->fd, KVM_GET_MSRS, m);
	if (ret >= 0 && (unsigned)ret < vm->nr_msrs) {
		rm_err("kvm: vCPU %u: KVM_GET_MSRS stopped at MSR %#x (%d of %u read)", vcpu->id,
		       m->entries[ret].index, ret, vm->nr_msrs);
		ret = -EIO;
	}
	if (ret >= 0) {
		s->nr_msrs = vm->nr_msrs;
		for (unsigned i = 0; i < vm->nr_msrs; i++) {
			s->msr_index[i] = m->entries[i].index;
			s->msr_value[i] = m->entries[i].data;
		}
		ret = 0;
	}
	free(m);
	return ret;
}

static int set_msrs(struct rm_kvm_vcpu *vcpu, const struct cpu_state *s)
{
	struct kvm_msrs *m = calloc(1, sizeof(*m) + s->nr_msrs * sizeof(m->entries[0]));
	int ret;

	if (!m)
		return -ENOMEM;
	m->nmsrs = s->nr_msrs;
	for (unsigned i = 0; i < s->nr_msrs; i++) {
		m->entries[i].index = s->msr_index[i];
		m->entries[i].data = s->msr_value[i];
	}
	ret = kvm_ioctl(vcpu->fd, KVM_SET_MSRS, m);
	if (ret >= 0 && (unsigned)ret < s->nr_msrs) {
		rm_err("kvm: vCPU %u: KVM refused MSR %#x = %#llx (%d of %u set)", vcpu->id,
		       m->entries[ret].index, (unsigned long long)m->entries[ret].data, ret, s->nr_msrs);
		ret = -EINVAL;
	}
	free(m);
	return ret < 0 ? ret : 0;
}

static int cpu_get(struct rm_kvm_vcpu *vcpu, struct cpu_state *s)
{
	struct rm_kvm_vm *vm = vcpu->vm;
	int fd = vcpu->fd, ret;

	memset(s, 0, offsetof(struct cpu_state, xsave));
	s->vm = vm;
	if ((ret = kvm_ioctl(fd, KVM_GET_REGS, &s->regs)) < 0 ||
	    (ret = kvm_ioctl(fd, KVM_GET_SREGS, &s->sregs)) < 0 ||
	    (ret = kvm_ioctl(fd, KVM_GET_FPU, &s->fpu)) < 0 ||
	    (ret = get_msrs(vcpu, s)) < 0 ||
	    (ret = kvm_ioctl(fd, KVM_GET_LAPIC, &s->lapic)) < 0 ||
	    (ret = kvm_ioctl(fd, KVM_GET_VCPU_EVENTS, &s->events)) < 0 ||
	    (ret = kvm_ioctl(fd, KVM_GET_MP_STATE, &s->mp)) < 0)
		return ret;
	if (vm->xsave_size) {
		memset(s->xsave, 0, vm->xsave_size);
		ret = vm->xsave_size > sizeof(struct kvm_xsave)
			? kvm_ioctl(fd, KVM_GET_XSAVE2, (struct kvm_xsave *)s->xsave)
			: kvm_ioctl(fd, KVM_GET_XSAVE, (struct kvm_xsave *)s->xsave);
		if (ret < 0)
			return ret;
		s->xsave_len = (uint32_t)vm->xsave_size;
	}
	if (vm->has_xcrs && (ret = kvm_ioctl(fd, KVM_GET_XCRS, &s->xcrs)) < 0)
		return ret;
	if (vm->has_debugregs && (ret = kvm_ioctl(fd, KVM_GET_DEBUGREGS, &s->debugregs)) < 0)
		return ret;
	return 0;
}

static int cpu_set(struct rm_kvm_vcpu *vcpu, struct cpu_state *s)
{
	int fd = vcpu->fd, ret;

	if ((ret = kvm_ioctl(fd, KVM_SET_SREGS, &s->sregs)) < 0 ||
	    (ret = set_msrs(vcpu, s)) < 0)
		return ret;
	if (s->got_xsave)
		ret = kvm_ioctl(fd, KVM_SET_XSAVE, (struct kvm_xsave *)s->xsave);
	else
		ret = kvm_ioctl(fd, KVM_SET_FPU, &s->fpu);
	if (ret < 0)
		return ret;
	if (s->got_xcrs && (ret = kvm_ioctl(fd, KVM_SET_XCRS, &s->xcrs)) < 0)
		return ret;
	if (s->got_debugregs && (ret = kvm_ioctl(fd, KVM_SET_DEBUGREGS, &s->debugregs)) < 0)
		return ret;
	if ((ret = kvm_ioctl(fd, KVM_SET_LAPIC, &s->lapic)) < 0 ||
	    (ret = kvm_ioctl(fd, KVM_SET_VCPU_EVENTS, &s->events)) < 0 ||
	    (ret = kvm_ioctl(fd, KVM_SET_MP_STATE, &s->mp)) < 0 ||
	    (ret = kvm_ioctl(fd, KVM_SET_REGS, &s->regs)) < 0)
		return ret;
	return 0;
}

/* ---- the VM's own sections ---- */

struct vm_shape {
	struct rm_kvm_vm *vm;
	uint32_t nr_vcpus;
	uint64_t ram_size;
	uint32_t nr_regions;
	uint64_t region_gpa[RM_KVM_MAX_REGIONS];
	uint64_t region_size[RM_KVM_MAX_REGIONS];
};

static int vm_shape_check(void *opaque, uint32_t version)
{
	struct vm_shape *s = opaque;
	struct rm_kvm_vm *vm = s->vm;
	bool same = s->nr_vcpus == vm->nr_vcpus && s->ram_size == vm->ram.size && s->nr_regions == vm->nr_regions;

	for (unsigned i = 0; same && i < s->nr_regions; i++)
		same = s->region_gpa[i] == vm->regions[i].gpa && s->region_size[i] == vm->regions[i].size;
	if (!same) {
		rm_err("kvm: state is for %u vCPUs and %llu MiB in %u slots; this VM has %u vCPUs and %zu MiB in %u slots",
		       s->nr_vcpus, (unsigned long long)(s->ram_size >> 20), s->nr_regions, vm->nr_vcpus,
		       vm->ram.size >> 20, vm->nr_regions);
		return -ENOTSUP;
	}
	return 0;
}

static const struct rm_vms_field vm_shape_fields[] = {
	RM_VMS_SCALAR(struct vm_shape, nr_vcpus, RM_VMS_U32),
	RM_VMS_SCALAR(struct vm_shape, ram_size, RM_VMS_U64),
	RM_VMS_VARRAY(struct vm_shape, region_gpa, RM_VMS_U64, nr_regions),
	RM_VMS_VARRAY(struct vm_shape, region_size, RM_VMS_U64, nr_regions),
	RM_VMS_END,
};

static const struct rm_vms_desc vm_shape_desc = {
	.name = "vm", .version_id = 1, .minimum_version_id = 1,
	.fields = vm_shape_fields, .post_load = vm_shape_check,
};

struct clock_state {
	uint64_t clock;
	uint32_t flags;
};

static const struct rm_vms_field clock_fields[] = {
	RM_VMS_SCALAR(struct clock_state, clock, RM_VMS_U64),
	RM_VMS_SCALAR(struct clock_state, flags, RM_VMS_U32),
	RM_VMS_END,
};

static const struct rm_vms_desc clock_desc = {
	.name = "kvmclock", .version_id = 1, .minimum_version_id = 1, .fields = clock_fields,
};

struct irqchip_state {
	struct kvm_irqchip pic_master, pic_slave, ioapic;
	struct kvm_pit_state2 pit;
};

static const struct rm_vms_field irqchip_fields[] = {
	RM_VMS_BUF(struct irqchip_state, pic_master),
	RM_VMS_BUF(struct irqchip_state, pic_slave),
	RM_VMS_BUF(struct irqchip_state, ioapic),
	RM_VMS_BUF(struct irqchip_state, pit),
	RM_VMS_END,
};

static const struct rm_vms_desc irqchip_desc = {
	.name = "irqchip", .version_id = 1, .minimum_version_id = 1, .fields = irqchip_fields,
};

/* The progress port: what the host has counted so far, so a restored
 * guest's counter continues instead of starting over. */
struct progress_state {
	uint32_t nr_vcpus;
	uint64_t progress[RM_GUEST_MAX_VCPUS];
	uint64_t errors[RM_GUEST_MAX_VCPUS];
	uint64_t integrity_errors;
};

static const struct rm_vms_field progress_fields[] = {
	RM_VMS_VARRAY(struct progress_state, progress, RM_VMS_U64, nr_vcpus),
	RM_VMS_VARRAY(struct progress_state, errors, RM_VMS_U64, nr_vcpus),
	RM_VMS_SCALAR(struct progress_state, integrity_errors, RM_VMS_U64),
	RM_VMS_END,
};

static const struct rm_vms_desc progress_desc = {
	.name = "progress", .version_id = 1, .minimum_version_id = 1, .fields = progress_fields,
};

int rm_kvm_vm_save_state(struct rm_kvm_vm *vm, struct rm_vms_buf *buf)
{
	struct vm_shape shape = { .vm = vm, .nr_vcpus = vm->nr_vcpus, .ram_size = vm->ram.size,
				  .nr_regions = vm->nr_regions };
	struct clock_state clock = { 0 };
	struct irqchip_state irq = { .pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER,
				     .pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE,
				     .ioapic.chip_id = KVM_IRQCHIP_IOAPIC };
	struct progress_state *prog = NULL;
	struct cpu_state *cpu = NULL;
	int ret;

	if (!vm->booted || !rm_kvm_vm_is_paused(vm)) {
		rm_err("kvm: saving state wants a paused VM with a guest");
		return -EBUSY;
	}
	for (unsigned i = 0; i < vm->nr_regions; i++) {
		shape.region_gpa[i] = vm->regions[i].gpa;
		shape.region_size[i] = vm->regions[i].size;
	}
	/* Pause saved the clock; a VM paused before boot has none yet. */
	if (!vm->clock_valid) {
		ret = kvm_ioctl(vm->vm_fd, KVM_GET_CLOCK, &vm->clock);
		if (ret < 0)
			return ret;
		vm->clock_valid = true;
	}
	clock.clock = vm->clock.clock;
	clock.flags = vm->clock.flags;
	if ((ret = kvm_ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &irq.pic_master)) < 0 ||
	    (ret = kvm_ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &irq.pic_slave)) < 0 ||
	    (ret = kvm_ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &irq.ioapic)) < 0 ||
	    (ret = kvm_ioctl(vm->vm_fd, KVM_GET_PIT2, &irq.pit)) < 0)
		return ret;

	cpu = malloc(sizeof(*cpu));
	prog = calloc(1, sizeof(*prog));
	if (!cpu || !prog) {
		ret = -ENOMEM;
		goto out;
	}
	if ((ret = rm_vms_begin(buf)) < 0 ||
	    (ret = rm_vms_save(buf, &vm_shape_desc, 0, &shape)) < 0 ||
	    (ret = rm_vms_save(buf, &clock_desc, 0, &clock)) < 0 ||
	    (ret = rm_vms_save(buf, &irqchip_desc, 0, &irq)) < 0)
		goto out;
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		ret = cpu_get(&vm->vcpus[i], cpu);
		if (ret < 0)
			goto out;
		ret = rm_vms_save(buf, &cpu_desc, i, cpu);
		if (ret < 0)
			goto out;
	}
	prog->nr_vcpus = vm->nr_vcpus;
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		prog->progress[i] = atomic_load(&vm->vcpus[i].progress);
		prog->errors[i] = atomic_load(&vm->vcpus[i].errors);
	}
	prog->integrity_errors = atomic_load(&vm->integrity_errors);
	if ((ret = rm_vms_save(buf, &progress_desc, 0, prog)) < 0)
		goto out;
	ret = rm_vms_end(buf);
out:
	free(cpu);
	free(prog);
	return ret;
}

/* A whole stream, read and checked, not yet given to KVM. */
struct rm_kvm_state {
	struct vm_shape shape;
	struct clock_state clock;
	struct irqchip_state irq;
	struct progress_state prog;
	unsigned nr_cpus;
	struct cpu_state cpu[];
};

void rm_kvm_state_free(struct rm_kvm_state *s)
{
	free(s);
}

int rm_kvm_state_parse(const struct rm_kvm_vm *vm, const void *data, size_t len,
		       struct rm_kvm_state **out)
{
	/* The descriptors' callbacks take a mutable VM; parsing only reads it. */
	struct rm_kvm_vm *v = (struct rm_kvm_vm *)vm;
	struct rm_kvm_state *s;
	struct rm_vms_reader r;
	int ret;

	*out = NULL;
	if (!vm->nr_vcpus || vm->nr_vcpus > RM_GUEST_MAX_VCPUS)
		return -EINVAL;
	s = calloc(1, sizeof(*s) + vm->nr_vcpus * sizeof(s->cpu[0]));
	if (!s)
		return -ENOMEM;
	s->shape.vm = v;
	s->nr_cpus = vm->nr_vcpus;
	/* The shape first, so a wrong-sized VM is refused up front. */
	if ((ret = rm_vms_reader_init(&r, data, len)) < 0 ||
	    (ret = rm_vms_load(&r, &vm_shape_desc, 0, &s->shape)) < 0 ||
	    (ret = rm_vms_load(&r, &clock_desc, 0, &s->clock)) < 0 ||
	    (ret = rm_vms_load(&r, &irqchip_desc, 0, &s->irq)) < 0)
		goto fail;
	if (s->irq.pic_master.chip_id != KVM_IRQCHIP_PIC_MASTER ||
	    s->irq.pic_slave.chip_id != KVM_IRQCHIP_PIC_SLAVE ||
	    s->irq.ioapic.chip_id != KVM_IRQCHIP_IOAPIC) {
		rm_err("kvm: irqchip section names the wrong chips");
		ret = -EPROTO;
		goto fail;
	}
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		struct cpu_state *c = &s->cpu[i];

		c->vm = v;
		ret = rm_vms_load(&r, &cpu_desc, i, c);
		if (ret < 0)
			goto fail;
		if (c->got_xsave && c->xsave_len != vm->xsave_size) {
			rm_err("kvm: vCPU %u: stream's XSAVE area is %u bytes, this host's is %zu", i,
			       c->xsave_len, vm->xsave_size);
			ret = -ENOTSUP;
			goto fail;
		}
	}
	ret = rm_vms_load(&r, &progress_desc, 0, &s->prog);
	if (ret < 0)
		goto fail;
	if (s->prog.nr_vcpus != vm->nr_vcpus) {
		rm_err("kvm: progress section has %u vCPUs, the VM %u", s->prog.nr_vcpus, vm->nr_vcpus);
		ret = -EPROTO;
		goto fail;
	}
	ret = rm_vms_reader_end(&r);
	if (ret < 0)
		goto fail;
	*out = s;
	return 0;
fail:
	free(s);
	return ret;
}

int rm_kvm_vm_load_state(struct rm_kvm_vm *vm, const void *data, size_t len)
{
	struct rm_kvm_state *s;
	int ret;

	if (!rm_kvm_vm_is_paused(vm)) {
		rm_err("kvm: loading state wants a paused VM");
		return -EBUSY;
	}
	/* Every section is read and checked before KVM sees any of it: a
	 * malformed or hostile stream leaves the VM as it was. */
	ret = rm_kvm_state_parse(vm, data, len, &s);
	if (ret < 0)
		return ret;
	if ((ret = kvm_ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s->irq.pic_master)) < 0 ||
	    (ret = kvm_ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s->irq.pic_slave)) < 0 ||
	    (ret = kvm_ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &s->irq.ioapic)) < 0 ||
	    (ret = kvm_ioctl(vm->vm_fd, KVM_SET_PIT2, &s->irq.pit)) < 0)
		goto out;
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		ret = cpu_set(&vm->vcpus[i], &s->cpu[i]);
		if (ret < 0)
			goto out;
	}
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		atomic_store(&vm->vcpus[i].progress, s->prog.progress[i]);
		atomic_store(&vm->vcpus[i].errors, s->prog.errors[i]);
	}
	atomic_store(&vm->integrity_errors, s->prog.integrity_errors);
	vm->clock.clock = s->clock.clock;
	vm->clock.flags = s->clock.flags;
	vm->clock_valid = true;		/* resume sets it */
	vm->params = rm_kvm_vm_gpa_to_hva(vm, RM_GUEST_PARAMS_GPA);
	vm->booted = true;
out:
	rm_kvm_state_free(s);
	return ret;
}
