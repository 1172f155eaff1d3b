/*
 * tests/test-kvm-dirty.c — the stamp oracle (after KVM selftests'
 * dirty_log_test) for each dirty tracker, over many sync rounds while the
 * guest runs.  The guest writes the current round number ("stamp") into the
 * first word of random pages; after each sync the host bumps the stamp.  For
 * round i, with last[p] the last round page p was reported dirty:
 *
 *   - a page reported clean that holds i was written after this sync: it
 *     must be reported in round i + 1;
 *   - a page reported clean that holds v < i was written while the stamp was
 *     v, after sync v - 1: sync v or v + 1 must have reported it, so
 *     last[p] >= v;
 *   - no page ever holds more than i.
 *
 * A missed dirty page fails the test (it would be lost data in a migration).
 * A spurious one (reported, but holding an old stamp) is only counted: under
 * nested KVM on TCG instruction fetches look like writes, and the clear
 * tracker reports every page in its first round by design.
 */
#include <stdlib.h>

#include "kvm/dirty-internal.h"
#include "test-kvm-util.h"

#define FIRST_STAMP 2	/* pages written before tracking started hold 1 */

/* Runs the oracle and returns how many dirty pages it caught missing.
 * lose_one: drop one fresh dirty bit per round from the tracker's answer,
 * to show the oracle catches a tracker that loses pages. */
static unsigned long ring_fulls;
static unsigned min_sleep_us = 5000, max_sleep_us = 45000;
static bool fill_rings;
/* Set by a test that lets the ring overrun (see ring_overrun_is_never_silent):
 * an overrun ends the rounds early and is recorded here. */
static bool tolerate_overrun, overrun_reported;
static char overrun_how[256];

static void note_overrun(const char *how)
{
	overrun_reported = true;
	snprintf(overrun_how, sizeof(overrun_how), "%s: %s", how, test_last_err);
}

static uint64_t stamp_oracle(enum rm_dirty_kind kind, unsigned ring_entries, unsigned rounds, bool lose_one)
{
	kvm_or_skip();
	struct rm_kvm_vm *vm = test_vm(2, 64, ring_entries);

	if (!rm_dirty_supported(vm, kind)) {
		const char *why = kind == RM_DIRTY_RING ? rm_dirty_ring_hazard() : NULL;

		rm_kvm_vm_destroy(vm);
		cr_skip_test("the %s tracker is not offered by this KVM%s%s", rm_dirty_name(kind),
			     why ? ": " : "", why ? why : "");
	}
	test_boot(vm, RM_GUEST_STAMP, 0);
	test_wait_progress(vm, NULL, 64, 30);

	uint64_t npages = rm_kvm_vm_work_pages(vm);
	uint32_t *last = calloc(npages, sizeof(*last));
	uint8_t *track = calloc(npages, 1), *track_next = calloc(npages, 1);
	cr_assert(last && track && track_next);

	struct rm_dirty_tracker *t = rm_dirty_start(vm, kind);
	cr_assert_not_null(t, "start %s: %s", rm_dirty_name(kind), test_last_err);
	rm_kvm_vm_set_stamp(vm, FIRST_STAMP);
	cr_assert_eq(rm_kvm_vm_wait_stamp_seen(vm, FIRST_STAMP, 30000000000ull), 0);

	uint64_t missed = 0, spurious = 0, reported = 0, fresh = 0, sync_ns = 0;
	unsigned seed = 1, done = 0;
	for (uint64_t i = FIRST_STAMP; i < FIRST_STAMP + rounds; i++, done++) {
		if (fill_rings) {
			/* Let every vCPU write more pages than its ring holds
			 * (bounded: a slow bed must not hang the test). */
			uint64_t base[2] = { rm_kvm_vcpu_progress(vm, 0) + 320, rm_kvm_vcpu_progress(vm, 1) + 320 };
			uint64_t end = rm_now_ns() + 20000000000ull;

			while ((rm_kvm_vcpu_progress(vm, 0) < base[0] || rm_kvm_vcpu_progress(vm, 1) < base[1]) &&
			       rm_now_ns() < end && !rm_kvm_vm_fault(vm))
				usleep(1000);
		} else {
			usleep(min_sleep_us + rand_r(&seed) % (max_sleep_us - min_sleep_us));
		}
		uint64_t t0 = rm_now_ns();
		long n = rm_dirty_sync(t);
		if (tolerate_overrun && n == -EOVERFLOW) {
			note_overrun("sync failed");
			break;
		}
		cr_assert_geq(n, 0, "round %llu: sync: %s", (unsigned long long)i, test_last_err);
		/* The clear tracker: re-protect in chunks before reading, as a
		 * sender would before sending. */
		for (unsigned r = 0; r < rm_kvm_vm_nr_regions(vm); r++) {
			uint64_t pages = rm_kvm_vm_region(vm, r)->size / 4096;

			for (uint64_t f = 0; f < pages; f += 4096)
				cr_assert_eq(rm_dirty_clear(t, r, f, pages - f < 4096 ? pages - f : 4096), 0,
					     "clear: %s", test_last_err);
		}
		sync_ns += rm_now_ns() - t0;
		reported += (uint64_t)n;
		bool lost_this_round = false;

		for (uint64_t p = 0; p < npages; p++) {
			uint64_t gpa = rm_kvm_vm_work_page_gpa(vm, p);
			const struct rm_kvm_region *reg = NULL;

			for (unsigned r = 0; r < rm_kvm_vm_nr_regions(vm); r++) {
				reg = rm_kvm_vm_region(vm, r);
				if (gpa >= reg->gpa && gpa - reg->gpa < reg->size)
					break;
			}
			uint64_t pg = (gpa - reg->gpa) / 4096;
			int dirty = !!(rm_dirty_bitmap(t, reg->slot)[pg / 64] & (1ull << (pg % 64)));
			uint64_t v = __atomic_load_n((uint64_t *)rm_kvm_vm_gpa_to_hva(vm, gpa), __ATOMIC_ACQUIRE);

			cr_assert_leq(v, i, "round %llu: page %llu holds stamp %llu from the future",
				      (unsigned long long)i, (unsigned long long)p, (unsigned long long)v);
			if (dirty && lose_one && v == i - 1 && !lost_this_round) {
				lost_this_round = true;
				dirty = 0;
			}
			if (dirty) {
				last[p] = (uint32_t)i;
				fresh += v >= i - 1;
				spurious += v < i - 1;
				continue;
			}
			if (track[p] || (v >= FIRST_STAMP && v < i && last[p] < v)) {
				if (missed++ < 10)
					fprintf(stderr, "MISSED round %llu: page %llu holds %llu, last reported dirty in round %u%s\n",
						(unsigned long long)i, (unsigned long long)p, (unsigned long long)v,
						last[p], track[p] ? " (written after the previous sync)" : "");
				last[p] = (uint32_t)i;	/* count each loss once */
			}
			if (v == i)
				track_next[p] = 1;
		}
		memcpy(track, track_next, npages);
		memset(track_next, 0, npages);
		rm_kvm_vm_set_stamp(vm, i + 1);
		/* Writes of stamp <= i must all have landed before sync i + 1. */
		if (tolerate_overrun && rm_kvm_vm_fault(vm) == -EOVERFLOW) {
			note_overrun("a vCPU stopped");
			break;
		}
		if (rm_kvm_vm_wait_stamp_seen(vm, i + 1, 30000000000ull) < 0) {
			if (tolerate_overrun && rm_kvm_vm_fault(vm) == -EOVERFLOW) {
				note_overrun("a vCPU stopped");
				break;
			}
			char why[1024] = "";

			test_dump_vcpus(vm, why, sizeof(why));
			cr_assert_fail("round %llu: a vCPU did not take up the new stamp within 30 s:%s",
				       (unsigned long long)i, why);
		}
	}
	cr_assert_eq(rm_kvm_vm_pause(vm, 2000000000ull), 0);
	/* Paused, the rings hold still: the last sync sees any overrun since
	 * the one before (a migration's final sync is this one). */
	if (tolerate_overrun && !overrun_reported && rm_dirty_sync(t) == -EOVERFLOW)
		note_overrun("the final sync failed");
	rm_dirty_stop(t);

	printf("%-6s tracker: %u rounds, %llu pages reported (%llu fresh, %llu spurious), %llu missed, "
	       "mean sync %.2f ms, guest wrote %llu pages, %lu ring-full exits\n",
	       rm_dirty_name(kind), done, (unsigned long long)reported, (unsigned long long)fresh,
	       (unsigned long long)spurious, (unsigned long long)missed, done ? (double)sync_ns / done / 1e6 : 0.0,
	       (unsigned long long)rm_kvm_vm_progress(vm), atomic_load(&vm->ring_full_exits));
	ring_fulls = atomic_load(&vm->ring_full_exits);
	cr_expect_eq(rm_kvm_vm_integrity_errors(vm), 0);
	if (!overrun_reported) {
		/* The oracle must have had something to check. */
		cr_expect_gt(fresh, rounds, "only %llu fresh dirty pages over %u rounds", (unsigned long long)fresh,
			     rounds);
		cr_expect_eq(rm_kvm_vm_fault(vm), 0, "a vCPU stopped: %s", test_last_err);
	}
	free(last);
	free(track);
	free(track_next);
	rm_kvm_vm_destroy(vm);
	return missed;
}

static void expect_no_miss(enum rm_dirty_kind kind, unsigned ring_entries)
{
	uint64_t missed = stamp_oracle(kind, ring_entries, fill_rings ? 20 : 150, false);

	cr_expect_eq(missed, 0, "%s tracker missed %llu dirty pages", rm_dirty_name(kind),
		     (unsigned long long)missed);
}

Test(kvm_dirty, oracle_catches_a_tracker_that_loses_pages, .timeout = 300)
{
	uint64_t missed = stamp_oracle(RM_DIRTY_BITMAP, 0, 30, true);

	cr_expect_gt(missed, 0, "one dropped dirty page per round went unnoticed");
}

Test(kvm_dirty, stamp_oracle_bitmap, .timeout = 300)
{
	expect_no_miss(RM_DIRTY_BITMAP, 0);
}

Test(kvm_dirty, stamp_oracle_clear, .timeout = 300)
{
	expect_no_miss(RM_DIRTY_CLEAR, 0);
}

/* A small ring (256 entries, the least KVM takes) so vCPUs fill it between
 * syncs and the ring-full path harvests too. */
Test(kvm_dirty, stamp_oracle_ring, .timeout = 300)
{
	expect_no_miss(RM_DIRTY_RING, 256);
}

/* Long gaps between syncs: the vCPUs fill their rings and harvest them
 * themselves (KVM_EXIT_DIRTY_RING_FULL); nothing may get lost there either. */
Test(kvm_dirty, stamp_oracle_ring_that_fills_up, .timeout = 300)
{
	fill_rings = true;
	expect_no_miss(RM_DIRTY_RING, 256);
	cr_expect_gt(ring_fulls, 0, "no ring ever filled up: the full-ring path went untested");
}

Test(kvm_dirty, trackers_refuse_what_the_vm_cannot_do)
{
	kvm_or_skip();
	struct rm_kvm_vm *vm = test_vm(1, 16, 0);

	cr_expect(!rm_dirty_supported(vm, RM_DIRTY_RING), "ring offered on a VM created without one");
	cr_expect_null(rm_dirty_start(vm, RM_DIRTY_RING));
	cr_expect_eq(errno, ENOTSUP);
	cr_expect(strstr(test_last_err, "dirty_ring_entries"), "message: %s", test_last_err);
	rm_kvm_vm_destroy(vm);

	vm = test_vm(1, 16, 256);
	cr_expect(!rm_dirty_supported(vm, RM_DIRTY_BITMAP), "bitmap offered on a VM with a dirty ring");
	if (rm_dirty_ring_hazard()) {
		/* A KVM that overruns rings gets no ring tracker, and is told why. */
		cr_expect(!rm_dirty_supported(vm, RM_DIRTY_RING), "ring offered where KVM overruns it");
		cr_expect_null(rm_dirty_start(vm, RM_DIRTY_RING));
		cr_expect(strstr(test_last_err, "overruns"), "message: %s", test_last_err);
	} else {
		cr_expect(rm_dirty_supported(vm, RM_DIRTY_RING));
	}
	rm_kvm_vm_destroy(vm);
}

/*
 * A KVM that overruns the ring (kvm-pvm emulating guest code in batches, see
 * kvm/dirty-ring.c) loses dirty pages no harvest can bring back.  The tracker
 * refuses such a host; here it is let run anyway, its rings filled as above,
 * and every page it lost must come with an overrun report (a failed sync or
 * a vCPU stopped with -EOVERFLOW), by the final sync of a paused VM at the
 * latest.
 */
Test(kvm_dirty, ring_overrun_is_never_silent, .timeout = 300)
{
	kvm_or_skip();
	/* Where KVM keeps its reserve, stamp_oracle_ring_that_fills_up runs
	 * the same rings and fails on any overrun report (a false alarm). */
	if (!rm_dirty_ring_hazard())
		cr_skip_test("this KVM keeps the dirty ring's reserve: stamp_oracle_ring_that_fills_up covers it");
	rm_dirty_ring_allow_unsafe_host = true;
	fill_rings = true;
	tolerate_overrun = true;
	uint64_t missed = stamp_oracle(RM_DIRTY_RING, 256, 20, false);

	printf("ring overrun: %llu pages missed, %s\n", (unsigned long long)missed,
	       overrun_reported ? overrun_how : "no overrun reported");
	cr_expect(missed == 0 || overrun_reported, "the ring lost %llu dirty pages and nothing said so",
		  (unsigned long long)missed);
}
