/*
 * kvm/state.h — the one part of state.c that VM creation (vm.c) calls:
 * probing what a vCPU's state consists of.  Saving and loading the whole
 * state are public, in vm.h.
 */
#ifndef RDMAMIG_KVM_STATE_H
#define RDMAMIG_KVM_STATE_H

#include "kvm/kvm-internal.h"

/* Probe the MSR list, XSAVE size, XCRs and debug registers a vCPU's state
 * consists of, once vCPU 0 exists.  -errno, logged. */
int rm_cpu_state_probe(struct rm_kvm_vm *vm);

#endif
