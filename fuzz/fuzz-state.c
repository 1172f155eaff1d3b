/*
 * fuzz/fuzz-state.c — the vCPU and VM state loader (kvm/state.c) as a
 * destination meets a STATE message, without /dev/kvm: rm_kvm_state_parse()
 * reads and checks every section ("vm", "kvmclock", "irqchip", one "cpu"
 * with its subsections per vCPU, "progress") before any of it reaches KVM,
 * so this covers everything the network can steer; the KVM_SET_* calls
 * that follow a successful parse are not run here.
 *
 * Input: a 24-byte VM shape — u8 vCPUs (1..8), u8 flags (bit 0 XCRs, bit 1
 * debug registers), u16 reserved, u32 XSAVE bytes (0: none), u64 RAM
 * bytes (one region at GPA 0), u64 reserved — then the state stream as it
 * travels in STATE.  fuzz/capture.py writes that shape in front of a
 * captured stream so its seeds parse.
 */
#include "fuzz/fuzz.h"
#include "kvm/kvm-internal.h"
#include "kvm/state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct rm_kvm_vm vm;
	struct rm_kvm_state *s = NULL;
	uint32_t xsave;
	uint64_t ram;
	int ret;

	if (size < 24)
		return 0;
	memcpy(&xsave, data + 4, 4);
	memcpy(&ram, data + 8, 8);
	memset(&vm, 0, sizeof(vm));
	vm.nr_vcpus = data[0] % 8 + 1;
	vm.has_xcrs = data[1] & 1;
	vm.has_debugregs = data[1] & 2;
	vm.xsave_size = xsave % (64 * 1024 + 1);
	vm.ram.size = ram;
	vm.nr_regions = 1;
	vm.regions[0].gpa = 0;
	vm.regions[0].size = ram;
	vm.kvm_fd = vm.vm_fd = -1;

	ret = rm_kvm_state_parse(&vm, data + 24, size - 24, &s);
	FZ_CHECK((ret == 0) == (s != NULL));
	FZ_CHECK(ret == 0 || ret == -EPROTO || ret == -ENOTSUP || ret == -EINVAL || ret == -ENOMEM);
	rm_kvm_state_free(s);
	return 0;
}
