/*
 * tests/test-kvm-snapshot.c — snapshot a running guest to a file, restore it
 * into a fresh VM, and the guest continues: its counter starts from the saved
 * value and moves on, and its own integrity checks (every page rewrite checks
 * the page against the generation table) find nothing.  The same checks must
 * fire when restored RAM is corrupted or a page is stale (what a lost dirty
 * page would look like), and a truncated snapshot is refused.
 *
 * Needs /dev/kvm: runs in the test VM.  Files go to /tmp (the VM's own tmpfs).
 */
#include <stdlib.h>
#include <sys/stat.h>

#include "test-kvm-util.h"

static void snap_path(char *buf, size_t n, const char *tag)
{
	snprintf(buf, n, "/tmp/rdmamig-snap-%d-%s", (int)getpid(), tag);
}

/* Snapshot a 2-vCPU guest that has done some work; returns its counters. */
static void make_snapshot(const char *path, uint64_t saved[2])
{
	struct rm_kvm_vm *vm = test_vm(2, 64, 0);

	test_boot(vm, RM_GUEST_UNIFORM, 0);
	test_wait_progress(vm, NULL, 2048, 60);
	cr_assert_eq(rm_kvm_vm_pause(vm, 1000000000ull), 0);
	saved[0] = rm_kvm_vcpu_progress(vm, 0);
	saved[1] = rm_kvm_vcpu_progress(vm, 1);
	cr_assert_eq(rm_kvm_snapshot_save(vm, path), 0, "snapshot: %s", test_last_err);
	cr_assert(rm_kvm_vm_is_paused(vm), "a paused VM must stay paused across a snapshot");
	cr_assert_eq(rm_kvm_vm_integrity_errors(vm), 0);
	rm_kvm_vm_destroy(vm);
}

Test(kvm_snapshot, restored_guest_continues, .timeout = 180)
{
	char path[128];
	uint64_t saved[2];
	struct stat st;

	kvm_or_skip();
	snap_path(path, sizeof(path), "ok");
	make_snapshot(path, saved);
	cr_assert_eq(stat(path, &st), 0);

	struct rm_kvm_vm *vm = rm_kvm_snapshot_restore(path, NULL);
	cr_assert_not_null(vm, "restore: %s", test_last_err);
	cr_expect_eq(rm_kvm_vcpu_progress(vm, 0), saved[0]);
	cr_expect_eq(rm_kvm_vcpu_progress(vm, 1), saved[1]);
	cr_assert_eq(rm_kvm_vm_resume(vm), 0, "%s", test_last_err);
	/* Enough writes that many pages written before the snapshot get
	 * rewritten, and so checked, after it. */
	test_wait_progress(vm, saved, 4096, 120);
	printf("snapshot: %lld bytes; counters %llu/%llu at save, %llu/%llu after restore and run; %llu integrity errors\n",
	       (long long)st.st_size, (unsigned long long)saved[0], (unsigned long long)saved[1],
	       (unsigned long long)rm_kvm_vcpu_progress(vm, 0), (unsigned long long)rm_kvm_vcpu_progress(vm, 1),
	       (unsigned long long)rm_kvm_vm_integrity_errors(vm));
	cr_expect_eq(rm_kvm_vm_integrity_errors(vm), 0);
	rm_kvm_vm_destroy(vm);
	unlink(path);
}

Test(kvm_snapshot, guest_catches_corrupt_and_stale_pages, .timeout = 180)
{
	char path[128];
	uint64_t saved[2], corrupted = 0, stale = 0;

	kvm_or_skip();
	snap_path(path, sizeof(path), "bad");
	make_snapshot(path, saved);
	struct rm_kvm_vm *vm = rm_kvm_snapshot_restore(path, NULL);
	cr_assert_not_null(vm, "restore: %s", test_last_err);

	/* Damage every written page: odd ones get a wrong tag, even ones go
	 * back one generation, consistently (a page that missed its last copy). */
	for (uint64_t p = 0; p < rm_kvm_vm_work_pages(vm); p++) {
		struct rm_guest_page_head *h = rm_kvm_vm_gpa_to_hva(vm, rm_kvm_vm_work_page_gpa(vm, p));

		if (h->gen < 2)
			continue;
		if (p & 1) {
			h->tag ^= 1;
			corrupted++;
		} else {
			h->gen--;
			h->tag = rm_guest_tag(p, h->gen);
			stale++;
		}
	}
	cr_assert_gt(corrupted + stale, 0, "no page had been written twice before the snapshot");
	cr_assert_eq(rm_kvm_vm_resume(vm), 0);
	test_wait_progress(vm, saved, 4096, 120);
	printf("damaged %llu pages (%llu corrupt, %llu stale): the guest reported %llu\n",
	       (unsigned long long)(corrupted + stale), (unsigned long long)corrupted, (unsigned long long)stale,
	       (unsigned long long)rm_kvm_vm_integrity_errors(vm));
	cr_expect_gt(rm_kvm_vm_integrity_errors(vm), 0, "the guest did not notice damaged pages");
	rm_kvm_vm_destroy(vm);
	unlink(path);
}

Test(kvm_snapshot, truncated_snapshot_is_refused, .timeout = 120)
{
	char path[128];
	uint64_t saved[2];
	struct stat st;

	kvm_or_skip();
	snap_path(path, sizeof(path), "cut");
	make_snapshot(path, saved);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert_eq(truncate(path, st.st_size - 4096), 0);
	cr_expect_null(rm_kvm_snapshot_restore(path, NULL));
	cr_expect(strstr(test_last_err, "reading RAM from snapshot") && strstr(test_last_err, "truncated"),
		  "message: %s", test_last_err);
	printf("truncated in RAM: %s\n", test_last_err);
	cr_assert_eq(truncate(path, 100), 0);
	cr_expect_null(rm_kvm_snapshot_restore(path, NULL));
	cr_expect(strstr(test_last_err, "reading device state from snapshot") && strstr(test_last_err, "truncated"),
		  "message: %s", test_last_err);
	printf("truncated in state: %s\n", test_last_err);
	unlink(path);
}
