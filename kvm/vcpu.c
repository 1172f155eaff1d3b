/*
 * kvm/vcpu.c — the vCPUs: their setup, one thread each running KVM_RUN, the
 * exits the guest payload makes (its report ports) and the ones it must not,
 * and pause, resume and kick.
 *
 * A vCPU thread runs KVM_RUN in a loop.  To stop it, the controlling thread
 * sets a request bit, then the run struct's immediate_exit, then sends
 * RM_KVM_KICK_SIGNAL: a vCPU in guest mode leaves on the signal, one about to
 * enter sees immediate_exit and returns -EINTR at once, so no request is
 * lost.  Requests are acted on only after such an -EINTR return: KVM has then
 * completed any pending port I/O, and the vCPU's state is consistent to save.
 * A stopped vCPU parks on vm->cond until vm->run_allowed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvm/dirty-internal.h"
#include "kvm/kvm-internal.h"
#include "kvm/vcpu.h"

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
			/* On AMD, KVM resets the vCPU before it reports this. */
			vcpu_fault(vcpu, -EIO, "guest shut down (triple fault; rip 0xfff0 is AMD KVM's reset, not the fault)");
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

/* ---- setup and threads ---- */

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

int rm_kvm_vcpu_init(struct rm_kvm_vm *vm, unsigned id)
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

void rm_kvm_vcpu_release(struct rm_kvm_vm *vm, struct rm_kvm_vcpu *vcpu)
{
	if (vcpu->ring)
		munmap(vcpu->ring, (size_t)vm->opts.dirty_ring_entries * sizeof(struct kvm_dirty_gfn));
	if (vcpu->run)
		munmap(vcpu->run, vm->run_size);
	if (vcpu->fd >= 0)
		close(vcpu->fd);
}

int rm_kvm_vcpus_start(struct rm_kvm_vm *vm)
{
	pthread_once(&kick_once, kick_install);
	if (kick_install_err) {
		rm_err("kvm: installing the vCPU kick signal handler: %s", strerror(-kick_install_err));
		return kick_install_err;
	}
	/* They start parked, since run_allowed is false. */
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		int ret = -pthread_create(&vm->vcpus[i].thread, NULL, vcpu_thread, &vm->vcpus[i]);

		if (ret < 0) {
			rm_err("kvm: starting vCPU thread %u: %s", i, strerror(-ret));
			return ret;
		}
		vm->vcpus[i].thread_started = true;
	}
	/* Return a VM that is paused in every sense: all threads parked. */
	pthread_mutex_lock(&vm->lock);
	while (vm->nr_parked < vm->nr_vcpus)
		pthread_cond_wait(&vm->cond, &vm->lock);
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

/* Join a vCPU thread that has been told to stop, kicking it again meanwhile
 * (a kick is cheap and a second one costs nothing if the first arrived). */
static int vcpu_join(struct rm_kvm_vcpu *vcpu, uint64_t timeout_ns)
{
	uint64_t end = rm_now_ns() + timeout_ns;

	for (;;) {
		struct timespec ts;

		vcpu_kick(vcpu);
		ts = rm_abstime_in(10000000ull);
		if (pthread_timedjoin_np(vcpu->thread, NULL, &ts) == 0)
			return 0;
		if (rm_now_ns() > end)
			return -ETIMEDOUT;
	}
}

int rm_kvm_vcpus_stop(struct rm_kvm_vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	vm->stopping = true;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		struct rm_kvm_vcpu *vcpu = &vm->vcpus[i];

		if (vcpu->thread_started) {
			atomic_fetch_or(&vcpu->req, VCPU_REQ_STOP);
			if (vcpu_join(vcpu, 10000000000ull) < 0) {
				rm_err("kvm: vCPU %u did not leave KVM_RUN within 10 s of being told to stop",
				       vcpu->id);
				return -ETIMEDOUT;
			}
			vcpu->thread_started = false;
		}
	}
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
