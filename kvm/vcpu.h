/*
 * kvm/vcpu.h — what vm.c asks of vcpu.c: set a vCPU up and tear it down,
 * start and stop the vCPU threads.  Pausing, resuming and kicking are public
 * (vm.h).  Sits above kvm-internal.h; nothing below includes it.
 */
#ifndef RDMAMIG_KVM_VCPU_H
#define RDMAMIG_KVM_VCPU_H

#include "kvm/kvm-internal.h"

/* Create vCPU id: its fd, run struct, dirty ring (if the VM has one) and
 * CPUID.  Leaves what it made in vm->vcpus[id] for rm_kvm_vcpu_release. */
int rm_kvm_vcpu_init(struct rm_kvm_vm *vm, unsigned id);
/* Unmap and close what rm_kvm_vcpu_init made; copes with a partial one. */
void rm_kvm_vcpu_release(struct rm_kvm_vm *vm, struct rm_kvm_vcpu *vcpu);

/* Start one thread per vCPU; returns once all are parked (the VM paused). */
int rm_kvm_vcpus_start(struct rm_kvm_vm *vm);
/* Stop and join every started vCPU thread.  Safe on a partly started VM.
 * -ETIMEDOUT (logged) if a thread does not come back from KVM_RUN within
 * 10 s: it still uses the VM, which must then not be freed. */
int rm_kvm_vcpus_stop(struct rm_kvm_vm *vm);

#endif
