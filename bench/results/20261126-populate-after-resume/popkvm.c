/* popcow with the spinner a KVM vCPU (real mode `jmp .`) whose VM has the
 * populated region as a memslot: the bed's destination after resume. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static int vcpu; static struct kvm_run *run; static atomic_int stop;
static void *spin(void *a)
{
	while (!atomic_load(&stop)) {
		ioctl(vcpu, KVM_RUN, 0);
		if (run->exit_reason != KVM_EXIT_INTR && run->exit_reason != KVM_EXIT_IO) { printf("exit %d\n", run->exit_reason); break; }
	}
	return a;
}
static void on_alarm(int s) { (void)s; }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv)
{
	size_t sz = 64ul << 20;
	int thp = argc > 1 && atoi(argv[1]);
	int kvm = open("/dev/kvm", O_RDWR), vm = ioctl(kvm, KVM_CREATE_VM, 0);
	char *low = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	low[0] = (char)0xeb; low[1] = (char)0xfe;	/* jmp . */
	struct kvm_userspace_memory_region m0 = { .slot = 0, .guest_phys_addr = 0, .memory_size = 1 << 20, .userspace_addr = (uintptr_t)low };
	ioctl(vm, KVM_SET_USER_MEMORY_REGION, &m0);
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	run = mmap(NULL, ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	struct kvm_sregs sr; ioctl(vcpu, KVM_GET_SREGS, &sr); sr.cs.base = 0; sr.cs.selector = 0; ioctl(vcpu, KVM_SET_SREGS, &sr);
	struct kvm_regs r = { .rip = 0, .rflags = 2 }; ioctl(vcpu, KVM_SET_REGS, &r);
	signal(SIGALRM, on_alarm);
	for (int slot = 1, spinner = 0; spinner < 2; spinner++)
		for (int readfirst = 0; readfirst < 2; readfirst++, slot++) {
			char *p = mmap(NULL, sz + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			p = (char *)(((uintptr_t)p + (2 << 20) - 1) & ~((uintptr_t)(2 << 20) - 1));
			madvise(p, sz, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
			struct kvm_userspace_memory_region m = { .slot = slot, .guest_phys_addr = (uint64_t)slot << 30, .memory_size = sz, .userspace_addr = (uintptr_t)p };
			ioctl(vm, KVM_SET_USER_MEMORY_REGION, &m);
			volatile uint64_t sum = 0;
			if (readfirst)
				for (size_t o = 0; o < sz; o += 4096) sum += *(volatile char *)(p + o);
			pthread_t th;
			atomic_store(&stop, 0);
			if (spinner) { pthread_create(&th, NULL, spin, NULL); usleep(200000); }
			double t0 = now();
			int rc = madvise(p, sz, 23);
			double t = now() - t0;
			if (spinner) { atomic_store(&stop, 1); pthread_kill(th, SIGALRM); pthread_join(th, NULL); }
			printf("kvm thp=%d vcpu-running=%d readfirst=%d: populate 64 MiB %.3f s (rc %d)\n", thp, spinner, readfirst, t, rc);
			fflush(stdout);
		}
	return 0;
}
