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
	case_random_ranges(2, 2000);
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

Test(rdma, nic_numa_node_is_read_or_unknown)
{
	const char *dev = getenv("RDMAMIG_RXE_DEV");
	int node;

	suite_addr();
	node = rm_nic_numa_node(dev);
	cr_assert(node >= -1, "node %d", node);
	cr_assert_eq(rm_nic_numa_node("../../etc"), -1);
	cr_log_info("%s NUMA node: %d", dev, node);
}

/* On-demand paging where the device has it; otherwise a clear refusal. */
Test(rdma, odp_registration_or_clear_refusal)
{
	struct ram d, s;
	struct pair p;
	int err;

	case_reg = RM_REG_ODP;
	ram_alloc(&d, 3, sizes3, 0);
	ram_alloc(&s, 3, sizes3, 2);
	err = pair_open(&p, opts_for(1), &d, &s);
	cr_assert(err == 0 || err == -EOPNOTSUPP, "odp source layout: %s", rdmamig_strerror(err));
	cr_assert(p.dlayout_err == 0 || p.dlayout_err == -EOPNOTSUPP, "odp destination layout: %s",
		  rdmamig_strerror(p.dlayout_err));
	cr_log_info("ODP on this device: %s", err ? "not offered" : "used");
	pair_close(&p);
	ram_free(&d);
	ram_free(&s);
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
