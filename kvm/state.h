/*
 * kvm/state.h — the parts of state.c that are not public in vm.h: probing
 * what a vCPU's state consists of (vm.c calls it when it creates a VM), and
 * the loader's reading half, which fuzz/fuzz-state.c drives without KVM.
 */
#ifndef RDMAMIG_KVM_STATE_H
#define RDMAMIG_KVM_STATE_H

#include "kvm/kvm-internal.h"

/* Probe the MSR list, XSAVE size, XCRs and debug registers a vCPU's state
 * consists of, once vCPU 0 exists.  -errno, logged. */
int rm_cpu_state_probe(struct rm_kvm_vm *vm);

struct rm_kvm_state;		/* a read and checked stream; private to state.c */

/*
 * Read and check a whole state stream (from the network: hostile) for vm,
 * without touching KVM: every section, the shape against vm's, the irqchip
 * ids, each vCPU's XSAVE size, the progress count.  Reads only vm's shape
 * (nr_vcpus, ram.size, nr_regions, regions, xsave_size, has_xcrs,
 * has_debugregs), so a VM without KVM file descriptors will do.  0 with *out
 * (free with rm_kvm_state_free), -EPROTO or -ENOTSUP (logged), -EINVAL,
 * -ENOMEM.  rm_kvm_vm_load_state() parses with it, then sets.
 */
int rm_kvm_state_parse(const struct rm_kvm_vm *vm, const void *data, size_t len,
		       struct rm_kvm_state **out);
void rm_kvm_state_free(struct rm_kvm_state *s);

#endif
