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
