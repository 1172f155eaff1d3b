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

	/* What the guest runs on (GDT, page tables, code and its IDT) lies
	 * below the first work page and must come out of this untouched. */
	uint64_t npages = rm_kvm_vm_work_pages(vm), work_gpa = rm_kvm_vm_work_page_gpa(vm, 0);
	cr_assert(work_gpa >= RM_GUEST_META_GPA + npages * 4 && work_gpa % (2u << 20) == 0,
		  "work pages start at %#llx, inside the guest's own structures", (unsigned long long)work_gpa);
	struct { uint64_t gpa, len; } keep[] = {
		{ RM_GUEST_GDT_GPA, RM_GUEST_PAGE },		/* GDT */
		{ RM_GUEST_PML4_GPA, 3 * RM_GUEST_PAGE },	/* PML4, PDPT, first PD */
		{ RM_GUEST_IMAGE_GPA, RM_GUEST_PAGE },		/* code, and the IDT in its .bss */
	};
	uint8_t *before[3];
	for (unsigned k = 0; k < 3; k++) {
		before[k] = malloc(keep[k].len);
		cr_assert_not_null(before[k]);
		memcpy(before[k], rm_kvm_vm_gpa_to_hva(vm, keep[k].gpa), keep[k].len);
	}

	/* Damage every written page: odd ones get a wrong tag, even ones go
	 * back one generation, consistently (a page that missed its last copy).
	 * The first and last work pages, next to the generation table and at
	 * the end of RAM, get a wrong tag whatever their generation. */
	for (uint64_t p = 0; p < npages; p++) {
		uint64_t gpa = rm_kvm_vm_work_page_gpa(vm, p);
		struct rm_guest_page_head *h = rm_kvm_vm_gpa_to_hva(vm, gpa);
		bool edge = p == 0 || p == npages - 1;

		cr_assert(gpa >= work_gpa && h, "work page %llu at %#llx", (unsigned long long)p,
			  (unsigned long long)gpa);
		if (h->gen < 2 && !edge)
			continue;
		if ((p & 1) || edge) {
			h->tag ^= 1;
			corrupted++;
		} else {
			h->gen--;
			h->tag = rm_guest_tag(p, h->gen);
			stale++;
		}
	}
	cr_assert_gt(corrupted + stale, 2, "no page had been written twice before the snapshot");
	cr_assert_eq(rm_kvm_vm_resume(vm), 0);
	test_wait_progress(vm, saved, 4096, 120);
	cr_assert_eq(rm_kvm_vm_pause(vm, 5000000000ull), 0);
	printf("damaged %llu pages (%llu corrupt, %llu stale; work pages from %#llx): the guest reported %llu\n",
	       (unsigned long long)(corrupted + stale), (unsigned long long)corrupted, (unsigned long long)stale,
	       (unsigned long long)work_gpa, (unsigned long long)rm_kvm_vm_integrity_errors(vm));
	cr_expect_gt(rm_kvm_vm_integrity_errors(vm), 0, "the guest did not notice damaged pages");
	for (unsigned k = 0; k < 3; k++) {
		const uint64_t *was = (const uint64_t *)before[k], *now = rm_kvm_vm_gpa_to_hva(vm, keep[k].gpa);

		/* The CPU may set accessed and dirty bits in page-table
		 * entries (and the GDT's are set already): ignore those. */
		for (uint64_t w = 0; w < keep[k].len / 8; w++)
			cr_expect_eq(was[w] & ~0x60ull, now[w] & ~0x60ull, "guest structure at %#llx changed",
				     (unsigned long long)(keep[k].gpa + w * 8));
		free(before[k]);
	}
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
