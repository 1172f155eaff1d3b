/*
 * kvm/guest/abi.h — the contract between the VMM (kvm/vm.c) and the guest
 * payload (kvm/guest/guest.c): where things live in guest-physical memory,
 * the parameter block the host fills before boot, the I/O ports the guest
 * reports through, and the layout of every page a workload writes.
 * Included by freestanding guest code: fixed-width types only, no libc.
 *
 * Guest-physical layout (identity mapped, 2 MiB pages, RAM below 3 GiB and,
 * beyond that, from 4 GiB up, leaving the APIC/IOAPIC hole alone):
 *
 *   0x000000  GDT (page 0)
 *   0x001000  PML4, 0x2000 PDPT, 0x3000.. page directories (one per GiB)
 *   0x018000  struct rm_guest_params
 *   0x020000  vCPU stacks, RM_GUEST_STACK_SIZE each
 *   0x100000  payload image (code + data)
 *   0x200000  per-page generation table (u32 per work page), then the work
 *             pages, 2 MiB aligned, to the end of RAM
 */
#ifndef RDMAMIG_KVM_GUEST_ABI_H
#define RDMAMIG_KVM_GUEST_ABI_H

#include <stdint.h>

#define RM_GUEST_PAGE		4096ull
#define RM_GUEST_GDT_GPA	0x0ull
#define RM_GUEST_PML4_GPA	0x1000ull
#define RM_GUEST_PDPT_GPA	0x2000ull
#define RM_GUEST_PD_GPA		0x3000ull
#define RM_GUEST_MAX_GIB	16		/* page directories 0x3000..0x12fff */
#define RM_GUEST_PARAMS_GPA	0x18000ull
#define RM_GUEST_STACKS_GPA	0x20000ull
#define RM_GUEST_STACK_SIZE	0x4000ull
#define RM_GUEST_MAX_VCPUS	48		/* stacks end below the image */
#define RM_GUEST_IMAGE_GPA	0x100000ull
#define RM_GUEST_IMAGE_MAX	0x100000ull
#define RM_GUEST_META_GPA	0x200000ull
#define RM_GUEST_LOW_RAM_MAX	(3ull << 30)	/* RAM above this moves to 4 GiB */
#define RM_GUEST_HIGH_RAM_GPA	(4ull << 30)
#define RM_GUEST_MIN_RAM	(8ull << 20)
#define RM_GUEST_MAX_RANGES	4

/* GDT selectors the host loads; the guest never reloads them. */
#define RM_GUEST_SEL_CODE	0x08
#define RM_GUEST_SEL_DATA	0x10

/*
 * I/O ports.  Each OUT is a VM exit to the host, so the guest batches:
 * PROGRESS carries the number of units (page writes, or idle spins / 4096)
 * done since the last report; ERROR carries the index of a work page whose
 * contents failed the guest's own check; DONE says the vCPU ran out of work
 * (never, for the built-in workloads) and is followed by HLT; EXCEPTION
 * reports a CPU exception (the guest has an IDT only for that).
 */
#define RM_GUEST_PORT_PROGRESS	0xe0
#define RM_GUEST_PORT_ERROR	0xe4
#define RM_GUEST_PORT_DONE	0xe8
/* A CPU exception in the guest: OUT of the vector number, with the error
 * code in RBX, the faulting RIP in RCX and CR2 in RDX; then HLT forever. */
#define RM_GUEST_PORT_EXCEPTION	0xec

enum rm_guest_workload {
	RM_GUEST_IDLE = 0,	/* spin, report progress, write nothing */
	RM_GUEST_UNIFORM = 1,	/* random page writes across the vCPU's share */
	RM_GUEST_HOTSET = 2,	/* hot_permille of the pages get hot_write_permille of the writes */
	RM_GUEST_SWEEP = 3,	/* sequential writes, wrapping */
	RM_GUEST_STAMP = 4,	/* random writes of params.stamp (the dirty-log oracle) */
	RM_GUEST_NR_WORKLOADS
};

struct rm_guest_range {
	uint64_t gpa;
	uint64_t pages;
};

/*
 * Filled by the host before the first run; the host updates only `stamp`
 * afterwards (volatile on the guest side).  Work page i (0 <= i < work_pages)
 * is found by walking `ranges`; vCPU v owns pages
 * [v * work_pages / nr_vcpus, (v + 1) * work_pages / nr_vcpus), so no two
 * vCPUs ever write the same page and the generation check needs no locks.
 */
struct rm_guest_params {
	uint32_t magic;			/* RM_GUEST_MAGIC */
	uint32_t workload;		/* enum rm_guest_workload */
	uint32_t nr_vcpus;
	uint32_t nr_ranges;
	uint64_t work_pages;
	uint64_t meta_gpa;		/* u32 generation per work page */
	uint64_t seed;
	uint64_t rate_pages_per_sec;	/* per vCPU; 0: as fast as it can */
	uint64_t tsc_khz;		/* for rate pacing */
	uint32_t hot_permille;		/* hotset: share of pages that are hot */
	uint32_t hot_write_permille;	/* hotset: share of writes that go to them */
	uint32_t report_every;		/* page writes per PROGRESS report */
	uint32_t pad;
	uint64_t stamp;			/* stamp workload: value to write; host bumps it */
	struct rm_guest_range ranges[RM_GUEST_MAX_RANGES];
	/*
	 * Written by the guest: seen[v][0] is the stamp vCPU v used for its
	 * last completed page write (one cache line per vCPU).  Once every
	 * vCPU shows stamp s, no write with an older stamp can still land: a
	 * vCPU may read the stamp, be descheduled for a long time, then store.
	 */
	uint64_t seen[RM_GUEST_MAX_VCPUS][8];
};

#define RM_GUEST_MAGIC 0x524d4750u	/* "PGMR" */

/*
 * The head of every work page.  A page with generation g (g == meta[i]) holds
 * gen == g and tag == rm_guest_tag(i, g); a never-written page is all zero and
 * meta[i] == 0.  Before each write the guest checks the page against meta[i],
 * so a page that went stale, moved or got corrupted (by a migration that lost
 * a dirty page, say) is reported on the ERROR port.
 */
struct rm_guest_page_head {
	uint64_t stamp;		/* offset 0: the stamp oracle reads this */
	uint64_t gen;
	uint64_t tag;
};

static inline uint64_t rm_guest_tag(uint64_t page, uint64_t gen)
{
	uint64_t x = (page + 1) * 0x9e3779b97f4a7c15ull ^ (gen * 0xbf58476d1ce4e5b9ull);

	x ^= x >> 31;
	x *= 0x94d049bb133111ebull;
	return x ^ (x >> 29);
}

#endif
