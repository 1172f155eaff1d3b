/*
 * bench/bench-engine.c — what the engine alone can feed a NIC: how fast an
 * iterate pass turns dirty bitmaps into transport ranges, with nothing else
 * in the way.
 *
 * The VMM is memory only: guest RAM is untouched anonymous memory (an
 * iterate pass never reads it; only the bulk pass's zero-page check would,
 * and that pass is not measured here), and its dirty log is a synthetic
 * bitmap per region with a chosen pattern, standing where KVM's
 * KVM_GET_DIRTY_LOG would have written it.  Its dirty_sync() does exactly
 * the user-space work kvm/vmm.c and kvm/dirty.c do for the bitmap tracker,
 * and with --clear its dirty_clear() does the user-space part of the clear
 * tracker (everything but the ioctl), so the figures are the engine plus
 * the VMM's share of the contract, never the kernel's.
 *
 * The transport is a null backend behind the real rm_tr_write() (built here
 * from transport/priv.h, so transport/ is untouched): it counts writes and
 * bytes and moves nothing; the wrapper counts the ranges, resolves their
 * region ids and cuts them by max_write, as it does for every backend.  The engine runs its own functions — the
 * sync (rm_ram_sync) and the pass (rm_ram_send_pass) of migration/ram.c —
 * on a real struct rdmamig, as run_source() does for each iteration.
 *
 * For each pattern it times `--reps` iterations (sync + pass) over the same
 * bitmap and prints the median and the spread of: guest GiB covered per
 * second (the bitmap scanned, in guest bytes), ranges per second, and the
 * sync's and the pass's share.  Each iteration checks that the pass sent
 * exactly the pattern's pages, as many bytes as the transport saw.
 *
 * Times are the thread's CPU time by default: the engine's pass is one
 * thread's work, and on a shared machine wall time mostly measures who else
 * ran.  --wall times by the clock instead.
 *
 *   make benches && build/bench/bench-engine --gib 16 --reps 9
 *
 * Options: --gib 16 (guest size)  --region-gib 1 (kvm/'s slot size)
 *          --reps 9  --patterns all,half,rand10,sparse,runs16  --clear  --wall
 *          --check (compare the pages sent with the pattern, page by page:
 *          slow, for testing the engine rather than timing it)
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "common/log.h"
#include "migration/engine.h"
#include "transport/priv.h"

#define PAGE 4096ull
#define MAX_REPS 64

/* ---- the memory-only VMM ---- */

struct memvmm {
	unsigned nregions;
	uint64_t region_size;
	uint8_t *ram;			/* nregions * region_size, never touched */
	uint64_t *log[RDMAMIG_MAX_REGIONS];	/* the synthetic dirty log */
	uint64_t clear_calls, clear_pages;
};

static uint64_t vmm_pages(const struct memvmm *v)
{
	return v->region_size / PAGE;
}

static uint64_t vmm_words(const struct memvmm *v)
{
	return (vmm_pages(v) + 63) / 64;
}

static int mem_describe(void *o, struct rdmamig_vm_desc *d)
{
	struct memvmm *v = o;

	memset(d, 0, sizeof(*d));
	d->page_size = PAGE;
	d->nr_vcpus = 1;
	snprintf(d->cpu_model, sizeof(d->cpu_model), "bench");
	d->nr_regions = v->nregions;
	for (unsigned r = 0; r < v->nregions; r++)
		d->regions[r] = (struct rdmamig_ram_region){
			.id = r, .host_addr = v->ram + r * v->region_size, .size = v->region_size,
			.gpa = r * v->region_size,
		};
	return 0;
}

/* What kvm/vmm.c's dirty_sync does after the ioctl: count the report
 * (rm_dirty_sync) and hand the engine the tracker's bitmaps. */
static long mem_dirty_sync(void *o, const uint64_t **bitmaps)
{
	struct memvmm *v = o;
	long n = 0;

	for (unsigned r = 0; r < v->nregions; r++) {
		for (uint64_t w = 0; w < vmm_words(v); w++)
			n += __builtin_popcountll(v->log[r][w]);
		bitmaps[r] = v->log[r];
	}
	return n;
}

/* What kvm/dirty.c's clear tracker does before its ioctl: nothing, since
 * the engine names only ranges holding reported pages. */
static int mem_dirty_clear(void *o, unsigned r, uint64_t first, uint64_t n)
{
	struct memvmm *v = o;

	v->clear_calls++;
	v->clear_pages += n;
	return 0;
}

static int mem_nop(void *o)
{
	return 0;
}

static void mem_stop(void *o)
{
}

static int mem_save_state(void *o, void **buf, size_t *len)
{
	return -ENOSYS;
}

static struct rdmamig_vmm_ops mem_ops = {
	.version = RDMAMIG_VMM_OPS_VERSION,
	.describe = mem_describe,
	.dirty_start = mem_nop,
	.dirty_sync = mem_dirty_sync,
	.dirty_stop = mem_stop,
	.pause = mem_nop,
	.resume = mem_nop,
	.save_state = mem_save_state,
};

/* ---- the patterns ---- */

static uint64_t xorshift(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* A page is dirty with probability num / den. */
static bool chance(uint64_t *x, uint64_t num, uint64_t den)
{
	return xorshift(x) % den < num;
}

static void fill_pattern(struct memvmm *v, const char *name)
{
	uint64_t x = 0x9e3779b97f4a7c15ull, pages = vmm_pages(v);

	for (unsigned r = 0; r < v->nregions; r++) {
		uint64_t *bm = v->log[r];

		memset(bm, 0, vmm_words(v) * 8);
		for (uint64_t p = 0; p < pages; p++) {
			bool dirty;

			if (!strcmp(name, "all"))
				dirty = true;
			else if (!strcmp(name, "half"))
				dirty = p % 2 == 0;
			else if (!strcmp(name, "rand10"))
				dirty = chance(&x, 1, 10);
			else if (!strcmp(name, "sparse"))
				dirty = chance(&x, 1, 1000);
			else {
				/* runs16: blocks of 16 pages, 10% of them dirty,
				 * shifted off the word boundaries by 5 pages. */
				uint64_t blk = (p + 5) / 16;

				if ((p + 5) % 16 == 0 || p == 0) {
					uint64_t h = blk * 0x9e3779b97f4a7c15ull;

					h ^= h >> 31;
					dirty = h % 10 == 0;
				} else {
					dirty = (bm[(p - 1) / 64] >> ((p - 1) % 64)) & 1;
				}
			}
			if (dirty)
				bm[p / 64] |= 1ull << (p % 64);
		}
	}
}

static uint64_t pattern_pages(const struct memvmm *v)
{
	uint64_t n = 0;

	for (unsigned r = 0; r < v->nregions; r++)
		for (uint64_t w = 0; w < vmm_words(v); w++)
			n += (uint64_t)__builtin_popcountll(v->log[r][w]);
	return n;
}

/* ---- the null transport ---- */

struct null_tr {
	struct rm_transport base;	/* first: the wrappers see this */
	uint64_t writes, bytes;
	uint64_t *seen[RDMAMIG_MAX_REGIONS];	/* --check: pages written, by region index */
};

static int null_write(struct rm_transport *t, unsigned idx, uint64_t off, uint64_t len, uint64_t *took,
		      uint64_t deadline)
{
	struct null_tr *nt = (struct null_tr *)t;

	nt->writes++;
	nt->bytes += len;
	*took = len;
	if (nt->seen[idx])
		for (uint64_t p = off / PAGE; p < (off + len) / PAGE; p++)
			nt->seen[idx][p / 64] |= 1ull << (p % 64);
	return 0;
}

static int null_flush(struct rm_transport *t, uint64_t deadline)
{
	return 0;
}

static int null_fence(struct rm_transport *t)
{
	return 0;
}

static void null_stats(struct rm_transport *t, struct rm_transport_stats *out)
{
	*out = t->st;
}

static const struct rm_transport_ops null_ops = {
	.name = "null",
	.write = null_write,
	.flush = null_flush,
	.fence = null_fence,
	.stats = null_stats,
};

/* A source connection laid out over d's regions, as rm_tr_layout() leaves
 * one, with the default max_write (the wrappers cut ranges by it). */
static int null_init(struct null_tr *nt, const struct rdmamig_vm_desc *d)
{
	struct rm_transport_opts defaults = { .no_auth = true };	/* a null transport: no peer */
	struct rm_region regions[RDMAMIG_MAX_REGIONS];
	int err;

	nt->base.ops = &null_ops;
	nt->base.role = RM_ROLE_SOURCE;
	nt->base.nchan = 1;
	err = rm_tr_opts_fill(&nt->base.opts, &defaults);
	for (unsigned r = 0; r < d->nr_regions; r++)
		regions[r] = (struct rm_region){
			.id = d->regions[r].id, .addr = d->regions[r].host_addr, .size = d->regions[r].size,
		};
	if (!err)
		err = rm_tr_set_regions(&nt->base, regions, d->nr_regions);
	nt->base.laid_out = !err;
	return err;
}

/* ---- measuring ---- */

static bool wall_clock;

static uint64_t now_ns(void)
{
	struct timespec ts;

	if (wall_clock)
		return rm_now_ns();
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, unsigned n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void log_hook(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	fprintf(stderr, "%s: %s\n", level <= RDMAMIG_LOG_ERR ? "error" : "note", msg);
}

static int bench_pattern(struct rdmamig *m, struct memvmm *v, struct null_tr *nt, const char *name,
			 unsigned reps)
{
	double gibs[MAX_REPS], rps[MAX_REPS], sync_ms[MAX_REPS], pass_ms[MAX_REPS];
	double guest_gib = (double)v->nregions * (double)v->region_size / (double)(1ull << 30);
	uint64_t want, ranges = 0;

	if (strcmp(name, "all") && strcmp(name, "half") && strcmp(name, "rand10") && strcmp(name, "sparse") &&
	    strcmp(name, "runs16")) {
		fprintf(stderr, "bench-engine: no pattern %s (all, half, rand10, sparse, runs16)\n", name);
		return -EINVAL;
	}
	fill_pattern(v, name);
	want = pattern_pages(v);
	for (unsigned i = 0; i < reps; i++) {
		uint64_t r0 = nt->base.st.ranges, b0 = nt->bytes, t0, t1, t2;
		struct rm_pass pass;
		long n;
		int err;

		t0 = now_ns();
		n = rm_ram_sync(m);
		t1 = now_ns();
		if (n < 0)
			return (int)n;
		err = rm_ram_send_pass(m, false, true, &pass);
		t2 = now_ns();
		if (err)
			return err;
		if ((uint64_t)n != want || pass.pages != want || nt->bytes - b0 != want * PAGE) {
			fprintf(stderr, "bench-engine: %s: %llu pages in the pattern, the sync said %ld, the pass "
				"sent %llu, the transport saw %llu bytes\n", name, (unsigned long long)want, n,
				(unsigned long long)pass.pages, (unsigned long long)(nt->bytes - b0));
			return -EIO;
		}
		for (unsigned r = 0; nt->seen[0] && r < v->nregions; r++) {
			for (uint64_t w = 0; w < vmm_words(v); w++) {
				if (nt->seen[r][w] != v->log[r][w]) {
					fprintf(stderr, "bench-engine: %s: region %u word %llu: sent %#llx, dirty %#llx\n",
						name, r, (unsigned long long)w, (unsigned long long)nt->seen[r][w],
						(unsigned long long)v->log[r][w]);
					return -EIO;
				}
			}
			memset(nt->seen[r], 0, vmm_words(v) * 8);
		}
		ranges = nt->base.st.ranges - r0;
		sync_ms[i] = (double)(t1 - t0) / 1e6;
		pass_ms[i] = (double)(t2 - t1) / 1e6;
		gibs[i] = guest_gib / ((double)(t2 - t0) / 1e9);
		rps[i] = (double)ranges / ((double)(t2 - t0) / 1e9);
	}
	double g_med, g_lo, g_hi, r_med;

	g_med = median(gibs, reps);
	g_lo = gibs[0];
	g_hi = gibs[reps - 1];
	r_med = median(rps, reps);
	printf("%-7s %8.2f%% %9llu ranges  %9.1f GiB/s [%7.1f .. %7.1f]  %8.2f Mranges/s [%6.2f .. %6.2f]  "
	       "sync %8.3f ms  pass %8.3f ms\n",
	       name, 100.0 * (double)want / (double)(vmm_pages(v) * v->nregions), (unsigned long long)ranges,
	       g_med, g_lo, g_hi, r_med / 1e6, rps[0] / 1e6, rps[reps - 1] / 1e6, median(sync_ms, reps),
	       median(pass_ms, reps));
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "gib", required_argument, NULL, 'g' },
		{ "region-gib", required_argument, NULL, 'R' },
		{ "reps", required_argument, NULL, 'r' },
		{ "patterns", required_argument, NULL, 'p' },
		{ "clear", no_argument, NULL, 'c' },
		{ "wall", no_argument, NULL, 'w' },
		{ "check", no_argument, NULL, 'k' },
		{ 0 },
	};
	unsigned gib = 16, region_gib = 1, reps = 9;
	char patterns[256] = "all,half,rand10,sparse,runs16";
	struct rdmamig_opts mo = { .role = RDMAMIG_SOURCE, .transport = RDMAMIG_TRANSPORT_TCP, .addr = "null",
				   .no_auth = 1 };
	struct memvmm v = { 0 };
	bool check = false;
	struct null_tr *ntp = calloc(1, sizeof(*ntp));
	struct rdmamig *m;
	int c, err = 0;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'g': gib = (unsigned)atoi(optarg); break;
		case 'R': region_gib = (unsigned)atoi(optarg); break;
		case 'r': reps = (unsigned)atoi(optarg); break;
		case 'p': snprintf(patterns, sizeof(patterns), "%s", optarg); break;
		case 'c': mem_ops.dirty_clear = mem_dirty_clear; break;
		case 'w': wall_clock = true; break;
		case 'k': check = true; break;
		default:
			fprintf(stderr, "usage: %s [--gib N] [--region-gib N] [--reps N] [--patterns a,b] [--clear] [--wall] [--check]\n",
				argv[0]);
			return 2;
		}
	}
	if (!gib || !region_gib || gib % region_gib || gib / region_gib > RDMAMIG_MAX_REGIONS || !reps ||
	    reps > MAX_REPS) {
		fprintf(stderr, "bench-engine: --gib must be a multiple of --region-gib, at most %u regions, "
			"1..%u reps\n", RDMAMIG_MAX_REGIONS, MAX_REPS);
		return 2;
	}
	rdmamig_set_log(log_hook, NULL, RDMAMIG_LOG_WARN);
	v.nregions = gib / region_gib;
	v.region_size = (uint64_t)region_gib << 30;
	v.ram = mmap(NULL, (size_t)gib << 30, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (v.ram == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (unsigned r = 0; r < v.nregions; r++) {
		v.log[r] = calloc(vmm_words(&v), 8);
		if (!v.log[r]) {
			perror("calloc");
			return 1;
		}
	}

	m = rdmamig_new(&mo, &mem_ops, &v);
	if (!m)
		return 1;
	err = m->ops->describe(m->vmm, &m->desc);
	if (!err)
		err = rm_ram_setup(m);
	if (err) {
		fprintf(stderr, "bench-engine: setup: %s\n", rdmamig_strerror(err));
		return 1;
	}
	if (!ntp || null_init(ntp, &m->desc)) {
		fprintf(stderr, "bench-engine: the null transport: %s\n", ntp ? "bad layout" : "no memory");
		return 1;
	}
	for (unsigned r = 0; check && r < v.nregions; r++) {
		ntp->seen[r] = calloc(vmm_words(&v), 8);
		if (!ntp->seen[r]) {
			perror("calloc");
			return 1;
		}
	}
	/* Stage 0, so no progress report (ITER): the null transport has no control channel
	 * (in a migration one goes out per second, nothing at this scale). */
	m->t = &ntp->base;

	printf("bench-engine: %u GiB guest in %u regions, %u iterate passes per pattern, dirty_clear %s, "
	       "%s time; median [min .. max]\n", gib, v.nregions, reps, mem_ops.dirty_clear ? "on" : "off",
	       wall_clock ? "wall" : "CPU");
	for (char *save = NULL, *p = strtok_r(patterns, ",", &save); p && !err; p = strtok_r(NULL, ",", &save))
		err = bench_pattern(m, &v, ntp, p, reps);

	m->t = NULL;
	rdmamig_free(m);
	free(ntp->base.widx);	/* rm_tr_write()'s scratch */
	for (unsigned r = 0; r < v.nregions; r++) {
		free(v.log[r]);
		free(ntp->seen[r]);
	}
	free(ntp);
	munmap(v.ram, (size_t)gib << 30);
	if (err)
		fprintf(stderr, "bench-engine: %s\n", rdmamig_strerror(err));
	return err ? 1 : 0;
}
