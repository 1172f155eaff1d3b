/*
 * tests/test-transport-rdma.c — the transport suite on the RDMA backend over
 * soft-RoCE (run on the bed: RDMAMIG_RXE_DEV / RDMAMIG_RXE_ADDR set), plus
 * what only verbs have: a WRITE outside the destination's region is refused
 * by the NIC, the registration strategies, the seal, and the destination
 * that registers behind its LAYOUT (staged, the default).
 */
#define SUITE_KIND RM_TRANSPORT_RDMA
#include "tests/test-transport-cases.h"

#include "common/fault.h"
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

/* A staged destination exposes chunk by chunk: wait (bounded) until it
 * has exposed want, and check it stops there. */
static void wait_exposed(struct rm_transport *dst, unsigned want)
{
	for (int i = 0; i < 3000 && rm_rdma_exposed(dst) < want; i++)
		usleep(10000);
	cr_assert_eq(rm_rdma_exposed(dst), want, "exposures: %u, expected %u", rm_rdma_exposed(dst),
		     want);
}

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
	/* Staged at the default chunk size, each region is one chunk: one
	 * window per (QP, chunk), or one MR per chunk, once all are ready. */
	wait_exposed(p.dst, windows ? nchan * 3 : 3);
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

/* ---- a destination that registers behind its LAYOUT (rdma-stage.c) ---- */

/* The cases' RAM in 1 MiB chunks: 8 + 4 + 3 (the last one short). */
#define STAGE_CHUNK (1u << 20)
#define STAGE_CHUNKS 15

/* Many chunks: pieces cut at every chunk end, every chunk's keys right. */
Test(rdma, random_ranges_staged_in_1mib_chunks)
{
	case_reg_chunk = STAGE_CHUNK;
	case_random_ranges(2, 1000);
}

/* The old way, all registered before the LAYOUT, still moves data. */
Test(rdma, random_ranges_registered_up_front)
{
	case_reg = RM_REG_UPFRONT;
	case_random_ranges(2, 500);
}

/* RDMAMIG_FAULT holding the destination's registration before chunk g;
 * the file is created when it holds (fault.h). */
static void hold_chunk(char *file, size_t n, unsigned g)
{
	char spec[160];

	snprintf(file, n, "/tmp/rdmamig-stage-%d-%u", (int)getpid(), g);
	unlink(file);
	snprintf(spec, sizeof(spec), "pause:dst:register-%u:%s", g, file);
	setenv(RM_FAULT_ENV, spec, 1);
}

static void await_file(const char *file, bool exists)
{
	for (int i = 0; i < 6000 && (access(file, F_OK) == 0) != exists; i++)
		usleep(10000);
	cr_assert_eq(access(file, F_OK) == 0, exists, "%s %s", file, exists ? "never came" : "stayed");
}

static unsigned ready_count(struct rm_transport *src)
{
	unsigned n;

	pthread_mutex_lock(&src->ctrl.lock);
	n = src->ctrl.stage_nready;
	pthread_mutex_unlock(&src->ctrl.lock);
	return n;
}

struct writer {
	struct rm_transport *t;
	struct rm_range r[2];
	int err;
};

static void *write_thread(void *arg)
{
	struct writer *w = arg;

	w->err = rm_tr_write(w->t, w->r, 2);
	if (!w->err)
		w->err = rm_tr_fence(w->t);
	return NULL;
}

/*
 * The source never writes a chunk before its READY: with the destination
 * held before registering chunk 9 (region 11's second), a write of regions
 * 10 and 11 whole waits for chunk 9 and has put nothing there nor after;
 * released, it completes and every byte arrives.  Then a second READY for
 * a chunk, sent raw, is a protocol error at the source.
 */
Test(rdma, staged_source_waits_for_the_chunk_held_back)
{
	char file[96];
	struct ram d, s;
	struct pair p;
	struct writer w;
	struct rm_msg msg;
	pthread_t th;
	unsigned per;	/* exposures per chunk: a window per QP, or its MR */
	int err;

	per = bed_mw_caps() & (RM_MW_TYPE2A | RM_MW_TYPE2B) ? 2 : 1;
	case_reg_chunk = STAGE_CHUNK;
	hold_chunk(file, sizeof(file), 9);
	ram_alloc(&d, 3, sizes3, 0);
	ram_alloc(&s, 3, sizes3, 3);
	err = pair_open(&p, opts_for(2), &d, &s);
	cr_assert_eq(err, 0, "source layout: %s", rdmamig_strerror(err));
	cr_assert_eq(p.dlayout_err, 0, "destination layout: %s", rdmamig_strerror(p.dlayout_err));
	cr_assert_eq(p.src->ctrl.stage_shift, 20, "the LAYOUT was not staged in 1 MiB chunks");
	await_file(file, true);

	w = (struct writer){ .t = p.src, .r = { { .region = 10, .length = sizes3[0] },
						{ .region = 11, .length = sizes3[1] } } };
	cr_assert_eq(pthread_create(&th, NULL, write_thread, &w), 0);
	for (int i = 0; i < 6000 && atomic_load(&p.src->ctrl.stage_waiting) != 9 + 1; i++)
		usleep(10000);
	cr_assert_eq(atomic_load(&p.src->ctrl.stage_waiting), 9 + 1, "the source does not wait for chunk 9");
	cr_assert_eq(ready_count(p.src), 9, "READYs before the held chunk");
	cr_assert(all_bytes((char *)d.r[1].addr + STAGE_CHUNK, 0, d.r[1].size - STAGE_CHUNK),
		  "bytes landed in or after the chunk held back");
	cr_assert(all_bytes(d.r[2].addr, 0, d.r[2].size), "region 12 written");
	cr_assert_eq(rm_rdma_exposed(p.dst), 9 * per, "exposed beyond the held chunk");

	unlink(file);
	pthread_join(th, NULL);
	cr_assert_eq(w.err, 0, "write after the release: %s", rdmamig_strerror(w.err));
	cr_assert_eq(memcmp(d.r[0].addr, s.r[0].addr, d.r[0].size), 0, "region 10 differs");
	cr_assert_eq(memcmp(d.r[1].addr, s.r[1].addr, d.r[1].size), 0, "region 11 differs");
	cr_assert(all_bytes(d.r[2].addr, 0, d.r[2].size), "region 12 written");
	ram_assert_guards(&d);
	wait_exposed(p.dst, STAGE_CHUNKS * per);
	{
		struct rm_transport_stats st;

		rm_tr_stats(p.src, &st);
		cr_assert_gt(st.ready_wait_ns, 0, "the source's wait for READY was not counted");
		rm_tr_stats(p.dst, &st);
		cr_assert_eq(st.reg_bytes, sizes3[0] + sizes3[1] + sizes3[2], "registered %llu bytes",
			     (unsigned long long)st.reg_bytes);
	}
	{
		struct { struct rm_wire_hdr h; struct rm_wire_ready r; __le32 k[2]; } m = {
			.h = { .type = htole16(RM_WIRE_READY), .len = htole32(sizeof(m) - sizeof(m.h)) },
			.r = { .region = htole32(0), .chunk = htole32(0) } };

		cr_assert_eq(rm_tr_raw_send(p.dst, 0, &m, sizeof(m)), 0);
		err = rm_tr_recv(p.src, &msg, 5000);
		cr_assert_eq(err, RDMAMIG_E_PROTO, "a second READY for chunk 0 gave %s", rdmamig_strerror(err));
	}
	pair_close(&p);
	unsetenv(RM_FAULT_ENV);
	ram_free(&d);
	ram_free(&s);
}

/*
 * A seal while the destination still registers (a COMMIT that comes before
 * every chunk: a guest whose later chunks are zero and never sent; an
 * abort; a cancel): the chunks exposed so far are revoked at once, the
 * thread stops where it is, and nothing after is exposed — no window, no
 * MR, no READY.
 */
static void case_seal_while_registering(bool windows)
{
	const unsigned nchan = 2;
	char file[96];
	struct ram d, s;
	struct pair p;
	struct rm_msg msg;
	int err;

	suite_addr();
	rm_rdma_no_windows = !windows;
	case_reg_chunk = STAGE_CHUNK;
	hold_chunk(file, sizeof(file), 3);
	ram_alloc(&d, 3, sizes3, 0);
	ram_alloc(&s, 3, sizes3, 6);
	err = pair_open(&p, opts_for(nchan), &d, &s);
	cr_assert_eq(err, 0, "source layout: %s", rdmamig_strerror(err));
	cr_assert_eq(p.dlayout_err, 0);
	await_file(file, true);
	for (int i = 0; i < 3000 && ready_count(p.src) < 3; i++)
		usleep(10000);
	cr_assert_eq(ready_count(p.src), 3, "READYs before the held chunk");
	cr_assert_eq(rm_rdma_exposed(p.dst), windows ? 3 * nchan : 3);
	err = rm_rdma_raw_write(p.src, 0, 0, PAGE);
	cr_assert_eq(err, 0, "WRITE into a ready chunk: %s", rdmamig_strerror(err));

	cr_assert_eq(rm_tr_seal(p.dst), 0);
	cr_assert_eq(rm_rdma_exposed(p.dst), 0, "%u exposures after the seal", rm_rdma_exposed(p.dst));
	/* The held thread is let go by the seal (it removes the file). */
	await_file(file, false);
	cr_assert_eq(rm_rdma_exposed(p.dst), 0, "exposed after the thread went on");
	/* Whatever the thread sent before this message on QP 0 has arrived. */
	cr_assert_eq(rm_tr_send(p.dst, RM_WIRE_ENGINE_FIRST, "x", 1), 0);
	cr_assert_eq(rm_tr_recv(p.src, &msg, 5000), 1);
	rm_msg_free(&msg);
	cr_assert_eq(ready_count(p.src), 3, "a READY after the seal");
	{
		struct rm_transport_stats st;

		rm_tr_stats(p.dst, &st);
		cr_assert_eq(st.reg_bytes, 3 * STAGE_CHUNK, "registered on after the seal: %llu bytes",
			      (unsigned long long)st.reg_bytes);
	}
	/* The old key, on the QP it was bound to: refused by the NIC. */
	err = rm_rdma_raw_write(p.src, 0, PAGE, PAGE);
	cr_assert_eq(err, RDMAMIG_E_WC, "WRITE with a revoked chunk's key gave %s", rdmamig_strerror(err));
	cr_assert_eq(memcmp(d.r[0].addr, s.r[0].addr, PAGE), 0, "page 0 changed");
	cr_assert(all_bytes((char *)d.r[0].addr + PAGE, 0, d.r[0].size - PAGE), "RAM written after the seal");
	ram_assert_guards(&d);
	pair_close(&p);
	unsetenv(RM_FAULT_ENV);
	ram_free(&d);
	ram_free(&s);
	rm_rdma_no_windows = false;
}

Test(rdma, staged_seal_while_registering_windows)
{
	if (!(bed_mw_caps() & (RM_MW_TYPE2A | RM_MW_TYPE2B)))
		cr_skip_test("the device binds no type-2 memory windows (plain MRs: the next case)");
	case_seal_while_registering(true);
}

Test(rdma, staged_seal_while_registering_mrs)
{
	case_seal_while_registering(false);
}
