/*
 * tests/test-transport-rdma.c — the transport suite on the RDMA backend over
 * soft-RoCE (run on the bed: RDMAMIG_RXE_DEV / RDMAMIG_RXE_ADDR set), plus
 * what only verbs have: a WRITE outside the destination's region is refused
 * by the NIC, and the lazy registration strategy.
 */
#define SUITE_KIND RM_TRANSPORT_RDMA
#include "tests/test-transport-cases.h"

#include "transport/register.h"

static const char *suite_addr(void)
{
	const char *a = getenv("RDMAMIG_RXE_ADDR");

	if (!a || !*a)
		cr_skip_test("no soft-RoCE here (RDMAMIG_RXE_ADDR unset): run on the bed");
	return a;
}

TRANSPORT_CASES(rdma)

/* Lazy registration: chunks registered on first write, same result. */
Test(rdma, random_ranges_lazy_registration)
{
	case_reg = RM_REG_LAZY;
	case_reg_chunk = 2u << 20;
	case_random_ranges(2, 1000);
}

/* A source that aims a WRITE past the end of the destination's region gets
 * a failed completion (remote access error); nothing outside is touched. */
Test(rdma, write_outside_region_refused_by_nic)
{
	struct ram d, s;
	struct pair p;
	int err;

	ram_alloc(&d, 3, sizes3, 0);
	ram_alloc(&s, 3, sizes3, 2);
	err = pair_open(&p, opts_for(1), &d, &s);
	cr_assert_eq(err, 0);
	err = rm_rdma_raw_write(p.src, 2, sizes3[2] - PAGE, 2 * PAGE);
	cr_assert_eq(err, RDMAMIG_E_WC, "WRITE past the end gave %s", rdmamig_strerror(err));
	ram_assert_guards(&d);
	pair_close(&p);

	err = pair_open(&p, opts_for(1), &d, &s);
	cr_assert_eq(err, 0);
	err = rm_rdma_raw_write(p.src, 0, (uint64_t)-(int64_t)GUARD, PAGE);
	cr_assert_eq(err, RDMAMIG_E_WC, "WRITE before the start gave %s", rdmamig_strerror(err));
	ram_assert_guards(&d);
	ram_assert_zero(&d);
	pair_close(&p);
	ram_free(&d);
	ram_free(&s);
}

/* The node the library reads is the one sysfs gives for the device (-1
 * where sysfs names none, as for rxe, which has no PCI parent). */
Test(rdma, nic_numa_node_is_what_sysfs_says)
{
	const char *dev = getenv("RDMAMIG_RXE_DEV");
	char path[256];
	int node, want = -1;
	FILE *f;

	suite_addr();
	cr_assert(dev && *dev, "RDMAMIG_RXE_DEV unset on the bed");
	snprintf(path, sizeof(path), "/sys/class/infiniband/%s", dev);
	cr_assert_eq(access(path, F_OK), 0, "%s: no such device in sysfs", dev);
	snprintf(path, sizeof(path), "/sys/class/infiniband/%s/device/numa_node", dev);
	f = fopen(path, "r");
	if (f) {
		if (fscanf(f, "%d", &want) != 1 || want < 0)
			want = -1;
		fclose(f);
	}
	node = rm_nic_numa_node(dev);
	cr_assert_eq(node, want, "%s: library says node %d, sysfs %d", dev, node, want);
	cr_assert_eq(rm_nic_numa_node("../../etc"), -1);
	cr_log_info("%s NUMA node: %d", dev, node);
}

/* Whether the bed's device offers on-demand paging, asked of verbs directly. */
static bool device_has_odp(const char *name)
{
	struct ibv_device **list = ibv_get_device_list(NULL);
	bool odp = false, found = false;

	cr_assert_not_null(list, "ibv_get_device_list: %s", strerror(errno));
	for (int i = 0; list[i]; i++) {
		struct ibv_device_attr_ex attr;
		struct ibv_context *ctx;

		if (strcmp(ibv_get_device_name(list[i]), name))
			continue;
		found = true;
		ctx = ibv_open_device(list[i]);
		cr_assert_not_null(ctx, "ibv_open_device %s", name);
		memset(&attr, 0, sizeof(attr));
		cr_assert_eq(ibv_query_device_ex(ctx, NULL, &attr), 0);
		odp = attr.odp_caps.general_caps & IBV_ODP_SUPPORT;
		ibv_close_device(ctx);
	}
	ibv_free_device_list(list);
	cr_assert(found, "device %s not found by verbs", name);
	return odp;
}

/*
 * On-demand paging: where the device has it, both sides register that way
 * and a transfer must arrive intact; where it has not, both refuse with
 * -EOPNOTSUPP (checked), and the case skips, saying so.
 */
Test(rdma, odp_registration)
{
	const char *dev = getenv("RDMAMIG_RXE_DEV");
	struct ram d, s;
	struct pair p;
	int err;

	suite_addr();
	cr_assert(dev && *dev, "RDMAMIG_RXE_DEV unset on the bed");
	case_reg = RM_REG_ODP;
	if (device_has_odp(dev)) {
		case_random_ranges(2, 1000);
		return;
	}
	ram_alloc(&d, 3, sizes3, 0);
	ram_alloc(&s, 3, sizes3, 2);
	err = pair_open(&p, opts_for(1), &d, &s);
	cr_assert_eq(err, -EOPNOTSUPP, "source asked for ODP without it: %s", rdmamig_strerror(err));
	cr_assert_eq(p.dlayout_err, -EOPNOTSUPP, "destination asked for ODP without it: %s",
		     rdmamig_strerror(p.dlayout_err));
	pair_close(&p);
	ram_free(&d);
	ram_free(&s);
	cr_skip_test("%s offers no on-demand paging: checked that both sides refuse it", dev);
}

/* rdma_cm over IPv6, where the bed gives the device an IPv6 address
 * (RDMAMIG_RXE_ADDR6): layout and random ranges as over IPv4. */
Test(rdma, ipv6_random_ranges)
{
	suite_addr();
	case_addr = getenv("RDMAMIG_RXE_ADDR6");
	if (!case_addr || !*case_addr)
		cr_skip_test("RDMAMIG_RXE_ADDR6 unset: the bed has no IPv6 address on rxe0");
	case_random_ranges(2, 500);
}

/* ---- the destination's RAM exposure (transport/rdma-mw.c) ---- */

enum seal_how { SEAL_FENCE, SEAL_ABORT, SEAL_DISCONNECT };

/*
 * The source's rkeys work until the destination seals its RAM — after the
 * last fence (rm_tr_seal), after an ABORT, after the source vanished — and
 * never after: a WRITE with an old rkey fails on the writer's QP with a
 * remote access error and leaves destination RAM as it was.  windows: the
 * device's type-2 memory windows (where it has them), or plain MRs.
 */
static void case_sealed(bool windows, enum seal_how how)
{
	const unsigned nchan = 2;
	struct ram d, s;
	struct pair p;
	struct rm_msg msg;
	char *page0, *page1;
	int err;

	suite_addr();
	rm_rdma_no_windows = !windows;
	ram_alloc(&d, 3, sizes3, 0);
	ram_alloc(&s, 3, sizes3, 2);
	err = pair_open(&p, opts_for(nchan), &d, &s);
	cr_assert_eq(err, 0, "source layout: %s", rdmamig_strerror(err));
	cr_assert_eq(p.dlayout_err, 0, "destination layout: %s", rdmamig_strerror(p.dlayout_err));
	/* One window per (QP, region), or the MRs counted once. */
	cr_assert_eq(rm_rdma_exposed(p.dst), windows ? nchan * 3 : 1, "exposures before the seal: %u",
		     rm_rdma_exposed(p.dst));
	page0 = d.r[0].addr;
	page1 = page0 + PAGE;

	/* The key works before: this WRITE lands. */
	err = rm_rdma_raw_write(p.src, 0, 0, PAGE);
	cr_assert_eq(err, 0, "WRITE before the seal: %s", rdmamig_strerror(err));
	cr_assert_eq(memcmp(page0, s.r[0].addr, PAGE), 0, "the WRITE before the seal did not land");

	switch (how) {
	case SEAL_FENCE:
		cr_assert_eq(rm_tr_seal(p.dst), 0);
		cr_assert_eq(rm_tr_seal(p.dst), 0, "a second seal");
		break;
	case SEAL_ABORT:
		rm_tr_abort(p.dst, RDMAMIG_E_ABORTED, "sealing test");
		/* The source has the ABORT; a hostile one writes on regardless. */
		err = rm_tr_recv(p.src, &msg, 5000);
		cr_assert_eq(err, RDMAMIG_E_ABORTED, "source after ABORT: %s", rdmamig_strerror(err));
		break;
	case SEAL_DISCONNECT:
		rm_tr_cut(p.src);
		p.src = NULL;
		err = rm_tr_recv(p.dst, &msg, 5000);
		cr_assert_eq(err, -ECONNRESET, "destination after the source vanished: %s",
			     rdmamig_strerror(err));
		break;
	}
	cr_assert_eq(rm_rdma_exposed(p.dst), 0, "%u exposures left after the seal", rm_rdma_exposed(p.dst));

	if (how != SEAL_DISCONNECT) {
		/* The old rkey, on the QP it was bound to: refused by the NIC. */
		err = rm_rdma_raw_write(p.src, 0, PAGE, PAGE);
		cr_assert_eq(err, RDMAMIG_E_WC, "WRITE with the old rkey gave %s", rdmamig_strerror(err));
	}
	cr_assert_eq(memcmp(page0, s.r[0].addr, PAGE), 0, "page 0 changed");
	cr_assert(all_bytes(page1, 0, d.r[0].size - PAGE), "RAM written after the seal");
	for (unsigned i = 1; i < d.n; i++)
		cr_assert(all_bytes(d.r[i].addr, 0, d.r[i].size), "region %u written", i);
	ram_assert_guards(&d);
	pair_close(&p);
	ram_free(&d);
	ram_free(&s);
	rm_rdma_no_windows = false;
}

/* What the device offers, printed for the report; and the windows are what
 * the backend uses wherever it offers type 2. */
static unsigned bed_mw_caps(void)
{
	const char *dev = getenv("RDMAMIG_RXE_DEV");
	struct ibv_device **list;
	unsigned caps = 0;
	bool found = false;

	suite_addr();
	cr_assert(dev && *dev, "RDMAMIG_RXE_DEV unset on the bed");
	list = ibv_get_device_list(NULL);
	cr_assert_not_null(list, "ibv_get_device_list: %s", strerror(errno));
	for (int i = 0; list[i]; i++) {
		struct ibv_device_attr_ex attr;
		struct ibv_context *ctx;

		if (strcmp(ibv_get_device_name(list[i]), dev))
			continue;
		found = true;
		ctx = ibv_open_device(list[i]);
		cr_assert_not_null(ctx, "ibv_open_device %s", dev);
		memset(&attr, 0, sizeof(attr));
		cr_assert_eq(ibv_query_device_ex(ctx, NULL, &attr), 0);
		caps = rm_reg_mw_caps(ctx);
		cr_log_info("%s: device_cap_flags %#x, max_mw %d: MEM_WINDOW %d, TYPE_2A %d, TYPE_2B %d",
			    dev, attr.orig_attr.device_cap_flags, attr.orig_attr.max_mw,
			    !!(attr.orig_attr.device_cap_flags & IBV_DEVICE_MEM_WINDOW),
			    !!(attr.orig_attr.device_cap_flags & IBV_DEVICE_MEM_WINDOW_TYPE_2A),
			    !!(attr.orig_attr.device_cap_flags & IBV_DEVICE_MEM_WINDOW_TYPE_2B));
		ibv_close_device(ctx);
	}
	ibv_free_device_list(list);
	cr_assert(found, "device %s not found by verbs", dev);
	return caps;
}

Test(rdma, sealed_windows_refuse_old_rkey_after_last_fence)
{
	if (!(bed_mw_caps() & (RM_MW_TYPE2A | RM_MW_TYPE2B)))
		cr_skip_test("the device binds no type-2 memory windows (plain MRs: the next cases)");
	case_sealed(true, SEAL_FENCE);
}

Test(rdma, sealed_windows_refuse_old_rkey_after_abort)
{
	if (!(bed_mw_caps() & (RM_MW_TYPE2A | RM_MW_TYPE2B)))
		cr_skip_test("the device binds no type-2 memory windows (plain MRs: the next cases)");
	case_sealed(true, SEAL_ABORT);
}

Test(rdma, sealed_windows_after_disconnect)
{
	if (!(bed_mw_caps() & (RM_MW_TYPE2A | RM_MW_TYPE2B)))
		cr_skip_test("the device binds no type-2 memory windows (plain MRs: the next cases)");
	case_sealed(true, SEAL_DISCONNECT);
}

Test(rdma, sealed_mrs_refuse_old_rkey_after_last_fence)
{
	case_sealed(false, SEAL_FENCE);
}

Test(rdma, sealed_mrs_refuse_old_rkey_after_abort)
{
	case_sealed(false, SEAL_ABORT);
}

Test(rdma, sealed_mrs_after_disconnect)
{
	case_sealed(false, SEAL_DISCONNECT);
}

/* Fallback: random ranges over 4 QPs through plain MRs arrive intact, as
 * they do through windows (TRANSPORT_CASES). */
Test(rdma, random_ranges_plain_mrs)
{
	rm_rdma_no_windows = true;
	case_random_ranges(4, 500);
	rm_rdma_no_windows = false;
}
