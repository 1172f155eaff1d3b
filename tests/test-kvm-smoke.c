/*
 * tests/test-kvm-smoke.c — the test bed's KVM is real: a VM with one memslot
 * under dirty logging runs a tiny 32-bit guest that writes three pages and
 * halts; KVM_GET_DIRTY_LOG must report those pages and no page the guest did
 * not touch.  The page the guest executes from may show dirty too: under
 * nested KVM on QEMU's TCG (the test bed), instruction fetches reach KVM as
 * write faults.  A spurious dirty page costs a resend; a missed one would
 * lose data, so the check is strict in that direction.
 *
 * Runs on the host and inside the test VM (nested KVM).  Skips, saying why,
 * only where /dev/kvm cannot exist.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define MEM_SIZE (1u << 20)
#define PAGE 4096u
#ifndef CODE_GPA
#define CODE_GPA 0x1000u
#endif

static const unsigned dirty_pages[] = { 0x10, 0x13, 0x9f };

static int kvm_open_or_skip(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0) {
		char why[160];
		FILE *f = fopen("/proc/misc", "r");
		int misc = 0;

		if (f) {
			char line[64];

			while (fgets(line, sizeof(line), f))
				misc |= strstr(line, " kvm\n") != NULL;
			fclose(f);
		}
		snprintf(why, sizeof(why), "/dev/kvm: %s (%s)", strerror(errno),
			 misc ? "KVM is registered: create the node"
			      : "this kernel offers no KVM (e.g. it is itself a PVM guest)");
		cr_skip_test("%s", why);
	}
	return fd;
}

Test(kvm_smoke, guest_writes_are_exactly_the_dirty_pages)
{
	int kvm = kvm_open_or_skip();

	cr_assert_eq(ioctl(kvm, KVM_GET_API_VERSION, 0), KVM_API_VERSION);
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	cr_assert_geq(vm, 0, "KVM_CREATE_VM: %s", strerror(errno));

	uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	cr_assert_neq(mem, MAP_FAILED);

	/* 32-bit protected mode, flat segments: mov dword [page * 4096], i; hlt. */
	uint8_t *p = mem + CODE_GPA;
	for (unsigned i = 0; i < ARRAY_SIZE(dirty_pages); i++) {
		uint32_t addr = dirty_pages[i] * PAGE, val = 0xc0de0000u + i;

		*p++ = 0xc7;
		*p++ = 0x05;
		memcpy(p, &addr, 4), p += 4;
		memcpy(p, &val, 4), p += 4;
	}
	*p++ = 0xf4;

	struct kvm_userspace_memory_region slot = {
		.slot = 0,
		.flags = KVM_MEM_LOG_DIRTY_PAGES,
		.guest_phys_addr = 0,
		.memory_size = MEM_SIZE,
		.userspace_addr = (uintptr_t)mem,
	};
	cr_assert_eq(ioctl(vm, KVM_SET_USER_MEMORY_REGION, &slot), 0,
		     "KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	cr_assert_geq(vcpu, 0, "KVM_CREATE_VCPU: %s", strerror(errno));
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	cr_assert_gt(run_size, 0);
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	cr_assert_neq(run, MAP_FAILED);

	struct kvm_sregs sregs;
	cr_assert_eq(ioctl(vcpu, KVM_GET_SREGS, &sregs), 0);
	struct kvm_segment flat = {
		.base = 0, .limit = 0xffffffff, .present = 1, .s = 1, .g = 1, .db = 1,
	};
	flat.type = 11; /* code: execute/read, accessed */
	flat.selector = 8;
	sregs.cs = flat;
	flat.type = 3; /* data: read/write, accessed */
	flat.selector = 16;
	sregs.ds = sregs.es = sregs.ss = sregs.fs = sregs.gs = flat;
	sregs.cr0 |= 1; /* PE */
	cr_assert_eq(ioctl(vcpu, KVM_SET_SREGS, &sregs), 0);
	struct kvm_regs regs = { .rip = CODE_GPA, .rflags = 2 };
	cr_assert_eq(ioctl(vcpu, KVM_SET_REGS, &regs), 0);

	cr_assert_eq(ioctl(vcpu, KVM_RUN, 0), 0, "KVM_RUN: %s", strerror(errno));
	cr_assert_eq(run->exit_reason, KVM_EXIT_HLT, "exit reason %u, expected HLT", run->exit_reason);

	uint64_t bitmap[MEM_SIZE / PAGE / 64] = { 0 };
	struct kvm_dirty_log log = { .slot = 0, .dirty_bitmap = bitmap };
	cr_assert_eq(ioctl(vm, KVM_GET_DIRTY_LOG, &log), 0, "KVM_GET_DIRTY_LOG: %s", strerror(errno));

	unsigned ndirty = 0;
	int code_dirty = 0;
	for (unsigned pg = 0; pg < MEM_SIZE / PAGE; pg++) {
		int dirty = !!(bitmap[pg / 64] & (1ull << (pg % 64)));
		int expect = 0;

		for (unsigned i = 0; i < ARRAY_SIZE(dirty_pages); i++)
			expect |= dirty_pages[i] == pg;
		ndirty += dirty;
		if (pg == CODE_GPA / PAGE) {
			code_dirty = dirty;
			continue;
		}
		cr_expect_eq(dirty, expect, "page %#x: dirty=%d, expected %d", pg, dirty, expect);
	}
	for (unsigned i = 0; i < ARRAY_SIZE(dirty_pages); i++) {
		uint32_t v;

		memcpy(&v, mem + dirty_pages[i] * PAGE, 4);
		cr_expect_eq(v, 0xc0de0000u + i, "page %#x holds %#x", dirty_pages[i], v);
	}
	printf("kvm smoke: guest wrote %u pages, dirty log shows %u (code page %s)\n",
	       (unsigned)ARRAY_SIZE(dirty_pages), ndirty, code_dirty ? "dirty" : "clean");

	munmap(run, run_size);
	close(vcpu);
	munmap(mem, MEM_SIZE);
	close(vm);
	close(kvm);
}
