/*
 * tests/test-kvm-util.h — what the kvm/ suites share: skip (saying why) where
 * /dev/kvm cannot exist, a log hook that prints the library's messages and
 * keeps the last error for assertions, and waiting for guest progress.
 */
#ifndef RDMAMIG_TEST_KVM_UTIL_H
#define RDMAMIG_TEST_KVM_UTIL_H

#include <criterion/criterion.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "kvm/dirty.h"
#include "kvm/kvm-internal.h"
#include "kvm/vm.h"

static char test_last_err[1024];
static char test_all_msgs[16384];
static pthread_mutex_t test_log_lock = PTHREAD_MUTEX_INITIALIZER;

static void test_log(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	(void)opaque;
	pthread_mutex_lock(&test_log_lock);
	if (level <= RDMAMIG_LOG_ERR)
		snprintf(test_last_err, sizeof(test_last_err), "%s", msg);
	if (strlen(test_all_msgs) + strlen(msg) + 2 < sizeof(test_all_msgs)) {
		strcat(test_all_msgs, msg);
		strcat(test_all_msgs, "\n");
	}
	pthread_mutex_unlock(&test_log_lock);
	if (level <= RDMAMIG_LOG_INFO)
		fprintf(stderr, "  [lib] %s\n", msg);
}

static inline void test_log_reset(void)
{
	pthread_mutex_lock(&test_log_lock);
	test_last_err[0] = test_all_msgs[0] = '\0';
	pthread_mutex_unlock(&test_log_lock);
	rdmamig_set_log(test_log, NULL, RDMAMIG_LOG_INFO);
}

static inline void kvm_or_skip(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0) {
		FILE *f = fopen("/proc/misc", "r");
		char line[64];
		int misc = 0;

		while (f && fgets(line, sizeof(line), f))
			misc |= strstr(line, " kvm\n") != NULL;
		if (f)
			fclose(f);
		cr_skip_test("/dev/kvm: %s (%s)", strerror(errno),
			     misc ? "KVM is registered: create the node"
				  : "this kernel offers no KVM (e.g. it is itself a PVM guest); runs in the test VM");
	}
	close(fd);
	test_log_reset();
}

static inline struct rm_kvm_vm *test_vm(unsigned vcpus, size_t mib, unsigned ring)
{
	struct rm_kvm_vm_opts o = {
		.nr_vcpus = vcpus, .ram_size = mib << 20,
		.backing = { .kind = RM_BACKING_ANON, .numa_node = -1 },
		.dirty_ring_entries = ring,
	};
	struct rm_kvm_vm *vm = rm_kvm_vm_create(&o);

	cr_assert_not_null(vm, "rm_kvm_vm_create(%u vCPUs, %zu MiB): %s; last error: %s", vcpus, mib,
			   strerror(errno), test_last_err);
	return vm;
}

static inline void test_boot(struct rm_kvm_vm *vm, enum rm_guest_workload kind, uint64_t rate)
{
	struct rm_kvm_workload wl = { .kind = kind, .rate_pages_per_sec = rate, .seed = 42 };

	cr_assert_eq(rm_kvm_vm_boot(vm, &wl), 0, "boot: %s", test_last_err);
	cr_assert_eq(rm_kvm_vm_resume(vm), 0, "resume: %s", test_last_err);
}

/*
 * Say what each vCPU is doing, for a test that found one stuck: progress,
 * KVM_RUN returns (moving: it runs and exits; still: it never leaves the
 * kernel), then pause and read where it is.
 */
static inline void test_dump_vcpus(struct rm_kvm_vm *vm, char *out, size_t n)
{
	unsigned long exits[RM_GUEST_MAX_VCPUS];

	for (unsigned i = 0; i < vm->nr_vcpus; i++)
		exits[i] = atomic_load(&vm->vcpus[i].exits);
	usleep(500000);
	int paused = rm_kvm_vm_pause(vm, 3000000000ull);
	for (unsigned i = 0; i < vm->nr_vcpus; i++) {
		struct kvm_regs regs = { 0 };
		struct kvm_mp_state mp = { 0 };

		if (paused == 0) {
			ioctl(vm->vcpus[i].fd, KVM_GET_REGS, &regs);
			ioctl(vm->vcpus[i].fd, KVM_GET_MP_STATE, &mp);
		}
		snprintf(out + strlen(out), n - strlen(out),
			 " [vcpu%u progress %llu, KVM_RUN returns %lu (+%lu in 0.5 s), rip %#llx, mp_state %u]", i,
			 (unsigned long long)rm_kvm_vcpu_progress(vm, i), exits[i],
			 atomic_load(&vm->vcpus[i].exits) - exits[i], (unsigned long long)regs.rip, mp.mp_state);
	}
	snprintf(out + strlen(out), n - strlen(out), paused ? " (pause failed: %s)" : " (paused)",
		 strerror(-paused));
}

/* Wait until every vCPU has reported at least `each` units past `base[i]`
 * (NULL: 0).  Fails the test on a guest fault or after timeout_s. */
static inline void test_wait_progress(struct rm_kvm_vm *vm, const uint64_t *base, uint64_t each, double timeout_s)
{
	uint64_t end = rm_now_ns() + (uint64_t)(timeout_s * 1e9);

	for (;;) {
		unsigned behind = 0;

		for (unsigned i = 0; i < rm_kvm_vm_nr_vcpus(vm); i++)
			behind += rm_kvm_vcpu_progress(vm, i) < (base ? base[i] : 0) + each;
		cr_assert_eq(rm_kvm_vm_fault(vm), 0, "guest fault: %s", test_last_err);
		if (!behind)
			return;
		if (rm_now_ns() > end) {
			char got[1024] = "";

			test_dump_vcpus(vm, got, sizeof(got));
			cr_assert_fail("after %.0f s, %u vCPUs still below %llu units:%s", timeout_s, behind,
				       (unsigned long long)each, got);
		}
		usleep(2000);
	}
}

#endif
