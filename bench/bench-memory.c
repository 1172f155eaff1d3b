/*
 * bench/bench-memory.c — what guest RAM costs before it can take a migration:
 * populating it (one thread, and the destination's background populator of
 * pinning/populate.h with N threads) and registering it with an RDMA device
 * (transport/register.c: all, lazy, odp; on populated RAM, and "all" on
 * fresh RAM, where pinning faults every page in itself), per GiB, for each
 * page backing: 4 KiB anonymous, anonymous with transparent huge pages,
 * hugetlbfs 2 MiB and 1 GiB.
 *
 *   bench-memory [--size 1G] [--kinds anon,thp,huge2m,huge1g] [--threads N]
 *                [--dev rxe0] [--json FILE] [--populator-only]
 *
 * Without --dev it measures population only (any host).  A kind whose pages
 * are missing (hugetlbfs pools too small, 1 GiB pages not offered) is
 * reported as skipped with the reason; the caller raises the pools
 * (bench/setup-overlap does, and puts them back).  Every figure is one
 * measurement on fresh memory: first touch varies run to run on shared
 * hosts, so compare kinds within one run.  On hosts that are themselves
 * guests, memory a process frees goes back to the hypervisor after a few
 * seconds and is slow to touch again ("cold"), while memory just freed
 * within the process is fast ("warm"): each kind's first measurement (one
 * thread) is cold, the populator's right after it warm.  --populator-only
 * measures the populator alone, first, so that a fresh process started a
 * few seconds after any other gets the cold figure a new destination pays.
 */
#include <errno.h>
#include <getopt.h>
#include <infiniband/verbs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common/log.h"
#include "pinning/backing.h"
#include "pinning/populate.h"
#include "transport/register.h"

#define GiB (1ull << 30)

struct kind {
	const char *name;
	enum rm_backing_kind kind;
	bool thp;
};

static const struct kind kinds[] = {
	{ "anon", RM_BACKING_ANON, false },
	{ "thp", RM_BACKING_ANON, true },
	{ "huge2m", RM_BACKING_HUGE_2M, false },
	{ "huge1g", RM_BACKING_HUGE_1G, false },
};

static FILE *json;
static bool populator_only;
static bool first_row = true;

static void quiet(void *o, enum rdmamig_log_level l, const char *msg)
{
	(void)o;
	if (l <= RDMAMIG_LOG_WARN)
		fprintf(stderr, "  %s\n", msg);
}

static uint64_t parse_size(const char *s)
{
	char *end;
	unsigned long long v = strtoull(s, &end, 10);

	switch (*end) {
	case 'G': case 'g': return v << 30;
	case 'M': case 'm': return v << 20;
	case 'K': case 'k': return v << 10;
	case '\0': return v;
	}
	return 0;
}

static double per_gib(uint64_t ns, uint64_t bytes)
{
	return bytes ? (double)ns / 1e6 * GiB / (double)bytes : 0;
}

/* One figure: printed and, with --json, one row. */
static void report(const struct kind *k, const char *what, uint64_t bytes, uint64_t ns, const char *skip)
{
	if (skip)
		printf("%-7s %-24s skipped: %s\n", k->name, what, skip);
	else
		printf("%-7s %-24s %8.1f ms/GiB  (%llu MiB in %.1f ms)\n", k->name, what, per_gib(ns, bytes),
		       (unsigned long long)(bytes >> 20), ns / 1e6);
	if (!json)
		return;
	fprintf(json, "%s\n  {\"backing\": \"%s\", \"what\": \"%s\", \"bytes\": %llu, \"ns\": %llu, "
		"\"ms_per_gib\": %.2f, \"skipped\": \"%s\"}", first_row ? "" : ",", k->name, what,
		(unsigned long long)bytes, (unsigned long long)ns, skip ? 0 : per_gib(ns, bytes),
		skip ? skip : "");
	first_row = false;
}

static int alloc(const struct kind *k, struct rm_ram *ram, uint64_t size)
{
	struct rm_backing_opts o = { .kind = k->kind, .numa_node = -1, .thp = k->thp };

	return rm_ram_alloc(ram, size, &o);
}

/* Populate with the background populator, n threads, and wait for it. */
static int populate_threads(struct rm_ram *ram, unsigned n, uint64_t *ns)
{
	struct rm_populate_span span = { .addr = ram->addr, .size = ram->size };
	struct rm_populate_opts o = {
		.threads = n, .chunk = ram->page_size > (4u << 20) ? ram->page_size : (4u << 20),
	};
	struct rm_populator *p;
	int err = rm_populate_start(&p, &span, 1, &o);

	if (err)
		return err;
	err = rm_populate_wait(p, UINT64_MAX, -1);
	*ns = rm_populate_ns(p);
	rm_populate_stop(p);
	return err;
}

/* Register ram with one strategy; lazy registers every chunk, as a sender
 * that sends all of RAM does. */
static int reg(struct ibv_pd *pd, struct rm_ram *ram, enum rm_reg_strategy s, uint64_t *ns, uint64_t *dereg_ns)
{
	struct rm_region r = { .id = 0, .addr = ram->addr, .size = ram->size };
	struct rm_reg *g;
	uint64_t t0 = rm_now_ns();
	int err = rm_reg_open(&g, pd, &r, 1, s, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE, 0);

	if (err)
		return err;
	for (uint64_t off = 0; s == RM_REG_LAZY && off < ram->size;) {
		uint32_t lkey, rkey;
		uint64_t avail;

		err = rm_reg_keys(g, 0, off, ram->size - off, &lkey, &rkey, &avail);
		if (err)
			break;
		off += avail;
	}
	*ns = rm_now_ns() - t0;
	t0 = rm_now_ns();
	rm_reg_close(g);
	*dereg_ns = rm_now_ns() - t0;
	return err;
}

static void one_kind(const struct kind *k, uint64_t size, unsigned threads, struct ibv_pd *pd)
{
	static const struct {
		enum rm_reg_strategy s;
		const char *name, *dereg;
	} strat[] = {
		{ RM_REG_ALL, "register all", "deregister all" },
		{ RM_REG_LAZY, "register lazy (64M)", "deregister lazy" },
		{ RM_REG_ODP, "register odp", "deregister odp" },
	};
	struct rm_ram ram;
	uint64_t ns = 0, dns = 0;
	char why[128];
	int err;

	if (populator_only) {
		char what[64];

		snprintf(what, sizeof(what), "populate, %u threads", threads);
		err = alloc(k, &ram, size);
		if (!err) {
			err = populate_threads(&ram, threads, &ns);
			rm_ram_free(&ram);
		}
		report(k, what, size, ns, err ? strerror(-err) : NULL);
		return;
	}
	err = alloc(k, &ram, size);
	if (err) {
		snprintf(why, sizeof(why), "%s", strerror(-err));
		report(k, "populate, 1 thread", 0, 0, why);
		return;
	}
	ns = rm_now_ns();
	err = rm_ram_prefault(&ram);
	ns = rm_now_ns() - ns;
	report(k, "populate, 1 thread", ram.size, ns, err ? strerror(-err) : NULL);
	if (pd) {
		for (unsigned i = 0; i < sizeof(strat) / sizeof(strat[0]); i++) {
			err = reg(pd, &ram, strat[i].s, &ns, &dns);
			report(k, strat[i].name, ram.size, ns, err ? rdmamig_strerror(err) : NULL);
			if (!err)
				report(k, strat[i].dereg, ram.size, dns, NULL);
		}
	}
	rm_ram_free(&ram);

	if (alloc(k, &ram, size) == 0) {
		char what[64];

		snprintf(what, sizeof(what), "populate, %u threads", threads);
		err = populate_threads(&ram, threads, &ns);
		report(k, what, ram.size, ns, err ? strerror(-err) : NULL);
		rm_ram_free(&ram);
	}
	/* A bare destination registering RAM nothing has touched: the pins
	 * fault every page in (what populating ahead of the sender avoids). */
	if (pd && alloc(k, &ram, size) == 0) {
		err = reg(pd, &ram, RM_REG_ALL, &ns, &dns);
		report(k, "register all, fresh RAM", ram.size, ns, err ? rdmamig_strerror(err) : NULL);
		rm_ram_free(&ram);
	}
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "kinds", required_argument, NULL, 'k' },
		{ "threads", required_argument, NULL, 't' },
		{ "dev", required_argument, NULL, 'd' },
		{ "json", required_argument, NULL, 'j' },
		{ "populator-only", no_argument, NULL, 'p' },
		{ 0 },
	};
	uint64_t size = GiB;
	const char *list = "anon,thp,huge2m,huge1g", *dev = NULL;
	unsigned threads = 2;
	struct ibv_device **devs = NULL;
	struct ibv_context *ctx = NULL;
	struct ibv_pd *pd = NULL;
	int c;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 's': size = parse_size(optarg); break;
		case 'k': list = optarg; break;
		case 't': threads = (unsigned)atoi(optarg); break;
		case 'd': dev = optarg; break;
		case 'p': populator_only = true; break;
		case 'j':
			json = fopen(optarg, "w");
			if (!json) {
				perror(optarg);
				return 2;
			}
			break;
		default:
			fprintf(stderr, "usage: %s [--size 1G] [--kinds anon,thp,huge2m,huge1g] [--threads N] "
				"[--dev DEV] [--json FILE] [--populator-only]\n", argv[0]);
			return 2;
		}
	}
	if (!size || !threads || threads > RM_POPULATE_MAX_THREADS) {
		fprintf(stderr, "bench-memory: bad --size or --threads\n");
		return 2;
	}
	rdmamig_set_log(quiet, NULL, RDMAMIG_LOG_WARN);
	setvbuf(stdout, NULL, _IOLBF, 0);	/* each figure as it comes, through a pipe too */
	if (dev) {
		int n = 0;

		devs = ibv_get_device_list(&n);
		for (int i = 0; devs && i < n && !ctx; i++)
			if (!strcmp(ibv_get_device_name(devs[i]), dev))
				ctx = ibv_open_device(devs[i]);
		pd = ctx ? ibv_alloc_pd(ctx) : NULL;
		if (!pd) {
			fprintf(stderr, "bench-memory: cannot open %s: %s\n", dev, strerror(errno));
			return 1;
		}
	}
	printf("bench-memory: %llu MiB per kind, populator threads %u, device %s\n",
	       (unsigned long long)(size >> 20), threads, dev ? dev : "none (population only)");
	if (pd) {
		/* What register.c's probe learns (see there): does the device
		 * take IBV_ACCESS_RELAXED_ORDERING? */
		void *page = aligned_alloc(4096, 4096);
		struct ibv_mr *mr = page ? ibv_reg_mr(pd, page, 4096, IBV_ACCESS_LOCAL_WRITE |
						       IBV_ACCESS_RELAXED_ORDERING) : NULL;

		printf("bench-memory: %s %s IBV_ACCESS_RELAXED_ORDERING%s%s\n", dev, mr ? "takes" : "refuses",
		       mr ? "" : ": ", mr ? "" : strerror(errno));
		if (mr)
			ibv_dereg_mr(mr);
		free(page);
	}
	if (json)
		fprintf(json, "{\"size\": %llu, \"threads\": %u, \"device\": \"%s\", \"rows\": [",
			(unsigned long long)size, threads, dev ? dev : "");
	for (unsigned i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		char pat[32];

		snprintf(pat, sizeof(pat), ",%s,", kinds[i].name);
		char have[256];

		snprintf(have, sizeof(have), ",%s,", list);
		if (strstr(have, pat))
			one_kind(&kinds[i], size, threads, pd);
	}
	if (json) {
		fprintf(json, "\n]}\n");
		fclose(json);
	}
	if (pd)
		ibv_dealloc_pd(pd);
	if (ctx)
		ibv_close_device(ctx);
	if (devs)
		ibv_free_device_list(devs);
	return 0;
}
