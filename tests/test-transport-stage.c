/*
 * tests/test-transport-stage.c — the source's side of a staged LAYOUT
 * (transport/ctrl-stage.c) on the fake backend: every hostile form of a
 * staged LAYOUT and of READY is a protocol error, before anything is
 * allocated for it; a good READY fills the chunk's keys; and a write's wait
 * for its chunk ends with the READY, or with the connection's error.  The
 * RDMA destination that sends them is tested on the bed
 * (test-transport-rdma.c).
 */
#include <unistd.h>

#include "tests/test-transport-fake.h"

#define NCHAN 2

/* Three regions of 3, 1 and 1.5 chunks of 1 MiB: 3 + 1 + 2 chunks. */
static const uint64_t ssizes[] = { 3u << 20, 1u << 20, 3u << 19 };

static void sregions(struct rm_region *r)
{
	static char mem;

	for (unsigned i = 0; i < 3; i++)
		r[i] = (struct rm_region){ .id = 40 + i, .addr = &mem, .size = ssizes[i] };
}

/* A staged LAYOUT as an RDMA destination sends it (built by hand: the fake
 * backend's layout op hands out keys). */
struct slayout {
	struct rm_wire_layout l;
	struct rm_wire_region r[3];
} __attribute__((packed));

static struct slayout staged(void)
{
	struct slayout m = { .l = { .count = rm_wire_put32(3), .flags = rm_wire_put32(RM_WIRE_LAYOUT_STAGED),
				    .chunk_shift = rm_wire_put32(20) } };

	for (unsigned i = 0; i < 3; i++)
		m.r[i] = (struct rm_wire_region){ .id = rm_wire_put32(40 + i),
						  .size = rm_wire_put64(ssizes[i]),
						  .addr = rm_wire_put64(0x100000000ull * (i + 1)) };
	return m;
}

struct ready_msg {
	struct rm_wire_ready r;
	__le32 k[NCHAN];
};

static struct ready_msg ready(uint32_t pos, uint32_t chunk)
{
	return (struct ready_msg){ .r = { .region = rm_wire_put32(pos), .chunk = rm_wire_put32(chunk) },
				   .k = { rm_wire_put32(0x1000 + pos * 16 + chunk),
					  rm_wire_put32(0x2000 + pos * 16 + chunk) } };
}

/* fake_ops as a backend whose keys may come late (RDMA's). */
static struct rm_transport_ops late_ops;

static void late_keys(struct fake *k)
{
	late_ops = fake_ops;
	late_ops.late_keys = true;
	k->base.ops = &late_ops;
}

static struct fake *rdma_source(void)
{
	struct fake *s = fake_new(RM_ROLE_SOURCE, NCHAN, 100);
	struct rm_region r[3];

	late_keys(s);
	sregions(r);
	cr_assert_eq(rm_tr_set_regions(&s->base, r, 3), 0);
	return s;
}

static int rx_ready(struct fake *k, unsigned chan, struct ready_msg m, size_t len)
{
	const char *why = NULL;

	return rm_ctrl_rx(&k->base, chan, RM_WIRE_READY, 0, &m, len, &why);
}

static int rx_layout(struct fake *k, const struct slayout *m)
{
	const char *why = NULL;

	return rm_ctrl_rx(&k->base, 0, RM_WIRE_LAYOUT, 0, m, sizeof(*m), &why);
}

Test(stage, staged_layout_hostile_forms)
{
	static const char *const cases[] = {
		"chunk under 1 MiB", "chunk over 1 GiB", "chunk size without the flag",
		"staged with channel keys", "a region with a key", "reserved field set",
		"a region of more chunks than the bound",
		"regions of more chunks than the bound together", "a region of 2^64-1 bytes",
		"an empty region",
	};

	for (unsigned k = 0; k < ARRAY_SIZE(cases); k++) {
		struct fake *s = rdma_source();
		struct slayout m = staged();

		switch (k) {
		case 0: m.l.chunk_shift = rm_wire_put32(RM_WIRE_MIN_CHUNK_SHIFT - 1); break;
		case 1: m.l.chunk_shift = rm_wire_put32(RM_WIRE_MAX_CHUNK_SHIFT + 1); break;
		case 2: m.l.flags = 0; break;
		case 3: m.l.flags = rm_wire_put32(RM_WIRE_LAYOUT_STAGED | RM_WIRE_LAYOUT_CHAN_KEYS); break;
		case 4: m.r[1].rkey = rm_wire_put32(5); break;
		case 5: m.l.reserved = rm_wire_put32(1); break;
		case 6: m.r[0].size = rm_wire_put64((uint64_t)(RM_WIRE_MAX_CHUNKS + 1) << 20); break;
		case 7:
			m.r[0].size = rm_wire_put64((uint64_t)(RM_WIRE_MAX_CHUNKS / 2 + 1) << 20);
			m.r[2].size = rm_wire_put64((uint64_t)(RM_WIRE_MAX_CHUNKS / 2) << 20);
			break;
		case 8: m.r[2].size = rm_wire_put64(UINT64_MAX); break;
		case 9: m.r[1].size = 0; break;
		}
		if (k == 3) {
			/* With channel keys the length grows by count * (nchan - 1). */
			struct { struct slayout m; __le32 k[3]; } __attribute__((packed)) mk = { m, { 0 } };
			const char *why;

			cr_assert_eq(rm_ctrl_rx(&s->base, 0, RM_WIRE_LAYOUT, 0, &mk, sizeof(mk), &why),
				     RDMAMIG_E_PROTO, "%s", cases[k]);
		} else {
			cr_assert_eq(rx_layout(s, &m), RDMAMIG_E_PROTO, "%s", cases[k]);
		}
		cr_assert(!s->base.ctrl.have_layout, "%s: taken", cases[k]);
		cr_assert_null(s->base.ctrl.stage_keys, "%s: a key table was allocated", cases[k]);
		fake_free(s);
	}
	/* The largest allowed: exactly RM_WIRE_MAX_CHUNKS chunks together. */
	{
		struct fake *s = rdma_source();
		struct slayout m = staged();

		m.r[0].size = rm_wire_put64((uint64_t)(RM_WIRE_MAX_CHUNKS - 3) << 20);
		cr_assert_eq(rx_layout(s, &m), 0, "a LAYOUT of exactly the bound was refused");
		cr_assert_eq(s->base.ctrl.stage_base[3], RM_WIRE_MAX_CHUNKS);
		fake_free(s);
	}
}

Test(stage, staged_layout_refused_on_tcp)
{
	struct fake *s = rdma_source();
	struct slayout m = staged();

	s->base.ops = &fake_ops;
	cr_assert_eq(rx_layout(s, &m), RDMAMIG_E_PROTO, "a staged LAYOUT over TCP");
	m.l.flags = 0;
	m.l.chunk_shift = 0;
	cr_assert_eq(rx_layout(s, &m), 0, "the same LAYOUT, unstaged");
	cr_assert_eq(rx_ready(s, 0, ready(0, 0), sizeof(struct ready_msg)), RDMAMIG_E_PROTO,
		     "READY over TCP");
	fake_free(s);
}

Test(stage, ready_hostile_forms)
{
	struct fake *s = rdma_source(), *d = fake_new(RM_ROLE_DEST, NCHAN, 100);
	struct slayout m = staged();
	const size_t len = sizeof(struct ready_msg);
	char why[120];

	late_keys(d);
	cr_assert_eq(rx_ready(s, 0, ready(0, 0), len), RDMAMIG_E_PROTO, "READY before LAYOUT");
	cr_assert_eq(rx_layout(s, &m), 0);
	cr_assert_eq(rm_ctrl_layout_match(&s->base, why, sizeof(why)), 0, "%s", why);
	cr_assert_eq(s->base.ctrl.stage_shift, 20);
	cr_assert_eq(rx_ready(d, 0, ready(0, 0), len), RDMAMIG_E_PROTO, "READY to a destination");
	cr_assert_eq(rx_ready(s, 1, ready(0, 0), len), RDMAMIG_E_PROTO, "READY off channel 0");
	cr_assert_eq(rx_ready(s, 0, ready(0, 0), len - 4), RDMAMIG_E_PROTO, "READY short of a key");
	cr_assert_eq(rx_ready(s, 0, ready(0, 0), len - 8), RDMAMIG_E_PROTO, "READY without keys");
	cr_assert_eq(rx_ready(s, 0, ready(3, 0), len), RDMAMIG_E_PROTO, "READY for region 3 of 3");
	cr_assert_eq(rx_ready(s, 0, ready(UINT32_MAX, 0), len), RDMAMIG_E_PROTO, "region 2^32-1");
	cr_assert_eq(rx_ready(s, 0, ready(0, 3), len), RDMAMIG_E_PROTO, "chunk 3 of a 3-chunk region");
	cr_assert_eq(rx_ready(s, 0, ready(1, 1), len), RDMAMIG_E_PROTO, "chunk 1 of a 1-chunk region");
	cr_assert_eq(rx_ready(s, 0, ready(2, UINT32_MAX), len), RDMAMIG_E_PROTO, "chunk 2^32-1");
	cr_assert_eq(s->base.ctrl.stage_nready, 0, "a hostile READY was taken");
	{
		struct ready_msg r = ready(2, 1);
		const char *w;

		cr_assert_eq(rm_ctrl_rx(&s->base, 0, RM_WIRE_READY, RM_WIRE_F_FIRST, &r, len, &w),
			     RDMAMIG_E_PROTO, "READY with flags");
	}
	cr_assert_eq(rx_ready(s, 0, ready(2, 1), len), 0, "the last chunk of the last region");
	cr_assert_eq(s->base.ctrl.stage_keys[5 * NCHAN + 0], 0x1000 + 2 * 16 + 1);
	cr_assert_eq(s->base.ctrl.stage_keys[5 * NCHAN + 1], 0x2000 + 2 * 16 + 1);
	cr_assert_eq(rx_ready(s, 0, ready(2, 1), len), RDMAMIG_E_PROTO, "a second READY for a chunk");
	cr_assert_eq(s->base.ctrl.stage_nready, 1);
	fake_free(s);
	fake_free(d);

	/* A READY after an unstaged LAYOUT, and one before authentication. */
	s = rdma_source();
	m.l.flags = 0;
	m.l.chunk_shift = 0;
	cr_assert_eq(rx_layout(s, &m), 0);
	cr_assert_eq(rx_ready(s, 0, ready(0, 0), len), RDMAMIG_E_PROTO, "READY without STAGED");
	fake_free(s);
	s = rdma_source();
	s->base.ctrl.authed = false;
	cr_assert_eq(rx_ready(s, 0, ready(0, 0), len), RDMAMIG_E_PROTO, "READY before authentication");
	fake_free(s);
}

struct waiter {
	struct fake *s;
	unsigned idx;
	uint64_t off, end;
	const uint32_t *keys;
	int err;
};

static void *wait_thread(void *arg)
{
	struct waiter *w = arg;

	w->err = rm_ctrl_stage_wait(&w->s->base, w->idx, w->off, &w->end, &w->keys);
	return NULL;
}

/* Until the source waits for global chunk g (bounded: the thread is
 * started and has nothing else to do). */
static void await_waiting(struct fake *s, uint32_t g)
{
	for (int i = 0; i < 1000 && atomic_load(&s->base.ctrl.stage_waiting) != g + 1; i++)
		usleep(5000);
	cr_assert_eq(atomic_load(&s->base.ctrl.stage_waiting), g + 1, "the write is not waiting for chunk %u", g);
}

Test(stage, a_write_waits_for_its_chunk_until_ready_or_failure)
{
	struct fake *s = rdma_source();
	struct slayout m = staged();
	struct waiter w = { 0 };
	pthread_t th;
	char why[120];

	cr_assert_eq(rx_layout(s, &m), 0);
	cr_assert_eq(rm_ctrl_layout_match(&s->base, why, sizeof(why)), 0, "%s", why);

	/* Region 1 (LAYOUT position 1, global chunk 3): ready first, no wait. */
	cr_assert_eq(rx_ready(s, 0, ready(1, 0), sizeof(struct ready_msg)), 0);
	w = (struct waiter){ .s = s, .idx = 1, .off = 4096 };
	wait_thread(&w);
	cr_assert_eq(w.err, 0);
	cr_assert_eq(w.end, 1u << 20, "the chunk ends with its 1 MiB region");
	cr_assert_eq(w.keys[1], 0x2000 + 16);

	/* Region 2's second chunk (1.5 MiB region: ends at 1.5 MiB) waits. */
	w = (struct waiter){ .s = s, .idx = 2, .off = (1u << 20) + 8192 };
	cr_assert_eq(pthread_create(&th, NULL, wait_thread, &w), 0);
	await_waiting(s, 5);
	cr_assert_eq(rx_ready(s, 0, ready(2, 0), sizeof(struct ready_msg)), 0, "another chunk's READY");
	usleep(20000);
	cr_assert_eq(atomic_load(&s->base.ctrl.stage_waiting), 6, "woke for another chunk's READY");
	cr_assert_eq(rx_ready(s, 0, ready(2, 1), sizeof(struct ready_msg)), 0);
	pthread_join(th, NULL);
	cr_assert_eq(w.err, 0);
	cr_assert_eq(w.end, 3u << 19);
	cr_assert_eq(w.keys[0], 0x1000 + 2 * 16 + 1);
	cr_assert_gt(atomic_load(&s->base.ctrl.stage_wait_ns), 0, "the wait was not counted");

	/* Region 0's chunk 2 never comes: the connection's failure ends it. */
	w = (struct waiter){ .s = s, .idx = 0, .off = 2u << 20 };
	cr_assert_eq(pthread_create(&th, NULL, wait_thread, &w), 0);
	await_waiting(s, 2);
	rm_tr_fail(&s->base, -ECONNRESET, "the destination vanished");
	pthread_join(th, NULL);
	cr_assert_eq(w.err, -ECONNRESET, "wait ended with %s", rdmamig_strerror(w.err));
	fake_free(s);
}
