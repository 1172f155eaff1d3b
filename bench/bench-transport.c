/*
 * bench/bench-transport.c — throughput of one transport writing scattered
 * dirty ranges, and memory registration time.  Prints one `key=value` line
 * per measurement so bench/transport.sh can set it against ib_write_bw.
 *
 *   bench-transport xfer --kind rdma|tcp --addr A [--total BYTES] [--region BYTES]
 *                        [--chans N] [--write BYTES] [--batch N] [--tls]
 *       Destination in a thread, source in the main thread, one process.
 *       The source writes --total bytes as ranges of --write bytes, in a
 *       shuffled order over a --region sized region (so neighbours are
 *       rarely adjacent and are not coalesced), then fences; the time from
 *       the first write to the fence's return is the result, with the CPU
 *       time both sides spent meanwhile (one process).  --tls (TCP): TLS
 *       on every channel; the line says which path its records took.
 *   bench-transport reg --dev DEV [--region BYTES]
 *       Registration time per GiB of populated anonymous 4 KiB pages,
 *       transparent huge pages, and 2 MiB and 1 GiB hugetlbfs pages (where
 *       reserved).
 *   bench-transport pop [--region BYTES]
 *       Population time per GiB: the first write to every page of fresh
 *       anonymous memory (the same four kinds of page): what a destination
 *       pays before it can receive into RAM it has not touched.  bench/model's
 *       --pop.
 */
#include <getopt.h>
#include <infiniband/verbs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include "transport/register.h"
#include "transport/priv.h"

static uint64_t parse_size(const char *s)
{
	char *end;
	double v = strtod(s, &end);

	switch (*end) {
	case 'k': case 'K': v *= 1024; break;
	case 'm': case 'M': v *= 1024 * 1024; break;
	case 'g': case 'G': v *= 1024.0 * 1024 * 1024; break;
	}
	return (uint64_t)v;
}

static void log_stderr(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	fprintf(stderr, "bench: %s\n", msg);
}

/* The page kinds a guest's RAM can have, as bench-transport measures them. */
enum page_kind { PAGE_4K, PAGE_THP, PAGE_2M, PAGE_1G, PAGE_KINDS };
static const char *const page_name[PAGE_KINDS] = { "4K", "THP", "2M", "1G" };
static const uint64_t page_size[PAGE_KINDS] = { 4096, 4096, 2ull << 20, 1ull << 30 };

/* Fresh anonymous memory of one kind, not yet touched; NULL when the kind
 * is not available (hugetlbfs pages not reserved, or the size is not a
 * multiple of the page). */
static void *map_kind(uint64_t size, enum page_kind kind)
{
	int flags = MAP_PRIVATE | MAP_ANONYMOUS;
	void *p;

	/* A hugetlbfs mapping is whole pages: a part of one would be timed as
	 * the whole (and its munmap refused). */
	if (size % page_size[kind])
		return NULL;
	if (kind == PAGE_2M)
		flags |= MAP_HUGETLB | (21 << MAP_HUGE_SHIFT);
	else if (kind == PAGE_1G)
		flags |= MAP_HUGETLB | (30 << MAP_HUGE_SHIFT);
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	if (kind == PAGE_4K || kind == PAGE_THP)
		madvise(p, size, kind == PAGE_THP ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return p;
}

static void *map_ram(uint64_t size, enum page_kind kind)
{
	void *p = map_kind(size, kind);

	if (!p)
		return NULL;
	/* Touch every page now: first touch is slow here and is not what we time. */
	for (uint64_t o = 0; o < size; o += 4096)
		((volatile char *)p)[o] = (char)(o >> 12 | 1);
	return p;
}

struct dst_arg {
	struct rm_listener *l;
	struct rm_transport *t;
	struct rm_region r;
	int err;
};

static void *dst_thread(void *arg)
{
	struct dst_arg *d = arg;
	struct rm_msg m;

	d->err = rm_tr_accept(d->l, &d->t);
	if (!d->err)
		d->err = rm_tr_layout(d->t, &d->r, 1);
	/* Serve the control channel (credits, markers) until the source closes. */
	while (!d->err) {
		int ret = rm_tr_recv(d->t, &m, 60000);

		if (ret == 1)
			rm_msg_free(&m);
		else
			break;
	}
	return NULL;
}

/* CPU seconds this process has used, user + system. */
static double cpu_s(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
	       (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int xfer(enum rm_transport_kind kind, const char *addr, uint64_t total, uint64_t region,
		unsigned chans, uint64_t wsize, unsigned batch, bool tls)
{
	static const char *const paths[] = { "off", "userspace", "kernel-tx", "kernel" };
	struct rm_transport_opts o = {
		.kind = kind, .addr = addr, .port = "0", .nchan = chans,
		.max_write = (uint32_t)(wsize > (64u << 20) ? (64u << 20) : wsize),
		.timeout_ms = 60000,
		.psk_len = 32,	/* authenticated, as deployed; the key's bytes don't matter */
		.tls = tls,
	};
	double cpu0;
	struct dst_arg d = { 0 };
	struct rm_transport *src = NULL;
	struct rm_transport_stats st;
	struct rm_range *r;
	uint64_t nchunks = region / wsize, n = total / wsize, *perm, t0, ns, x = 88172645463325252ull;
	void *sram, *dram;
	pthread_t th;
	char port[16];
	int err;

	if (!nchunks || !n) {
		fprintf(stderr, "bench: region and total must hold at least one write\n");
		return 2;
	}
	sram = map_ram(region, PAGE_4K);
	dram = map_ram(region, PAGE_4K);
	perm = calloc(nchunks, sizeof(*perm));
	r = calloc(n, sizeof(*r));
	if (!sram || !dram || !perm || !r) {
		fprintf(stderr, "bench: out of memory for %llu-byte regions\n", (unsigned long long)region);
		return 2;
	}
	for (uint64_t i = 0; i < nchunks; i++)
		perm[i] = i;
	for (uint64_t i = nchunks - 1; i > 0; i--) {
		uint64_t j, tmp;

		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		j = x % (i + 1);
		tmp = perm[i], perm[i] = perm[j], perm[j] = tmp;
	}
	for (uint64_t i = 0; i < n; i++)
		r[i] = (struct rm_range){ .region = 1, .offset = perm[i % nchunks] * wsize, .length = wsize };

	err = rm_tr_listen(&o, &d.l);
	if (err)
		goto out;
	d.r = (struct rm_region){ .id = 1, .addr = dram, .size = region };
	snprintf(port, sizeof(port), "%d", rm_tr_listener_port(d.l));
	pthread_create(&th, NULL, dst_thread, &d);
	o.port = port;
	err = rm_tr_connect(&o, &src);
	if (!err)
		err = rm_tr_layout(src, &(struct rm_region){ .id = 1, .addr = sram, .size = region }, 1);
	if (err)
		goto join;
	t0 = rm_now_ns();
	cpu0 = cpu_s();
	for (uint64_t i = 0; i < n && !err; i += batch)
		err = rm_tr_write(src, r + i, n - i < batch ? n - i : batch);
	if (!err)
		err = rm_tr_fence(src);
	ns = rm_now_ns() - t0;
	if (!err) {
		/* The destination's last bytes are in its RAM once the fence is
		 * back (a MARKER follows them on every channel). */
		double cpu = cpu_s() - cpu0;

		rm_tr_stats(src, &st);
		printf("xfer kind=%s tls=%s chans=%u write=%llu bytes=%llu secs=%.3f MBps=%.1f "
		       "cpu_s=%.3f cpu_s_per_GiB=%.3f writes=%llu wrs=%llu completions=%llu\n",
		       kind == RM_TRANSPORT_RDMA ? "rdma" : "tcp", paths[st.tls & 3], chans,
		       (unsigned long long)wsize, (unsigned long long)st.bytes_written, ns / 1e9,
		       st.bytes_written / 1e6 / (ns / 1e9), cpu,
		       cpu / ((double)st.bytes_written / (1ull << 30)), (unsigned long long)st.writes,
		       (unsigned long long)st.wrs_posted, (unsigned long long)st.completions);
		/* Spot-check that the data arrived. */
		if (memcmp((char *)sram + r[0].offset, (char *)dram + r[0].offset, wsize) ||
		    memcmp((char *)sram + r[n - 1].offset, (char *)dram + r[n - 1].offset, wsize)) {
			fprintf(stderr, "bench: destination differs from source\n");
			err = -EIO;
		}
	}
join:
	rm_tr_close(src);
	pthread_join(th, NULL);
	rm_tr_close(d.t);
	rm_tr_listener_close(d.l);
out:
	if (err)
		fprintf(stderr, "bench: %s\n", rdmamig_strerror(err));
	munmap(sram, region);
	munmap(dram, region);
	free(perm);
	free(r);
	return err ? 1 : 0;
}

static int reg_bench(const char *dev, uint64_t region)
{
	struct ibv_device **list = ibv_get_device_list(NULL);
	struct ibv_context *ctx = NULL;
	struct ibv_pd *pd;

	for (int i = 0; list && list[i]; i++)
		if (!dev || !strcmp(ibv_get_device_name(list[i]), dev))
			ctx = ctx ? ctx : ibv_open_device(list[i]);
	if (list)
		ibv_free_device_list(list);
	if (!ctx || !(pd = ibv_alloc_pd(ctx))) {
		fprintf(stderr, "bench: cannot open RDMA device %s\n", dev ? dev : "(any)");
		return 2;
	}
	for (int kind = 0; kind < PAGE_KINDS; kind++) {
		void *p = map_ram(region, (enum page_kind)kind);
		struct rm_reg *g;
		struct rm_region r;
		uint64_t t0, ns;
		int err;

		if (!p) {
			printf("reg page=%s unavailable (reserve hugepages: vm.nr_hugepages; "
			       "--region a multiple of the page)\n", page_name[kind]);
			continue;
		}
		r = (struct rm_region){ .id = 1, .addr = p, .size = region };
		t0 = rm_now_ns();
		err = rm_reg_open(&g, pd, &r, 1, RM_REG_ALL, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE, 0);
		ns = rm_now_ns() - t0;
		if (err) {
			printf("reg page=%s failed: %s\n", page_name[kind], rdmamig_strerror(err));
		} else {
			t0 = rm_now_ns();
			rm_reg_close(g);
			printf("reg page=%s bytes=%llu reg_ms=%.1f ms_per_GiB=%.1f dereg_ms=%.1f\n",
			       page_name[kind], (unsigned long long)region, ns / 1e6,
			       ns / 1e6 * (double)(1ull << 30) / (double)region, (rm_now_ns() - t0) / 1e6);
		}
		munmap(p, region);
	}
	ibv_dealloc_pd(pd);
	ibv_close_device(ctx);
	return 0;
}

/* Fresh memory of each kind, timed from mmap to the last first write, then
 * given back (freed memory is returned to the hypervisor here, so the next
 * mapping is fresh again). */
static int pop_bench(uint64_t region)
{
	for (int kind = 0; kind < PAGE_KINDS; kind++) {
		uint64_t t0 = rm_now_ns(), ns;
		void *p = map_kind(region, (enum page_kind)kind);

		if (!p) {
			printf("pop page=%s unavailable (reserve hugepages: vm.nr_hugepages; "
			       "--region a multiple of the page)\n", page_name[kind]);
			continue;
		}
		for (uint64_t o = 0; o < region; o += 4096)
			((volatile char *)p)[o] = 1;
		ns = rm_now_ns() - t0;
		printf("pop page=%s bytes=%llu pop_ms=%.1f ms_per_GiB=%.1f GBps=%.2f\n", page_name[kind],
		       (unsigned long long)region, ns / 1e6, ns / 1e6 * (double)(1ull << 30) / (double)region,
		       region / (ns / 1e9) / 1e9);
		munmap(p, region);
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "kind", required_argument, NULL, 'k' }, { "addr", required_argument, NULL, 'a' },
		{ "total", required_argument, NULL, 't' }, { "region", required_argument, NULL, 'r' },
		{ "chans", required_argument, NULL, 'c' }, { "write", required_argument, NULL, 'w' },
		{ "batch", required_argument, NULL, 'b' }, { "dev", required_argument, NULL, 'd' },
		{ "verbose", no_argument, NULL, 'v' }, { "tls", no_argument, NULL, 'T' }, { 0 },
	};
	enum rm_transport_kind kind = RM_TRANSPORT_TCP;
	const char *addr = "127.0.0.1", *dev = NULL;
	uint64_t total = 1ull << 30, region = 1ull << 30, wsize = 1u << 20;
	unsigned chans = 1, batch = 256;
	bool tls = false;
	int c;

	if (argc < 2) {
		fprintf(stderr, "usage: bench-transport xfer|reg|pop [options] (see the source's top comment)\n");
		return 2;
	}
	rdmamig_set_log(log_stderr, NULL, RDMAMIG_LOG_WARN);
	while ((c = getopt_long(argc - 1, argv + 1, "", lopts, NULL)) != -1) {
		switch (c) {
		case 'k': kind = !strcmp(optarg, "rdma") ? RM_TRANSPORT_RDMA : RM_TRANSPORT_TCP; break;
		case 'a': addr = optarg; break;
		case 't': total = parse_size(optarg); break;
		case 'r': region = parse_size(optarg); break;
		case 'c': chans = (unsigned)atoi(optarg); break;
		case 'w': wsize = parse_size(optarg); break;
		case 'b': batch = (unsigned)atoi(optarg); break;
		case 'd': dev = optarg; break;
		case 'v': rdmamig_set_log(log_stderr, NULL, RDMAMIG_LOG_DEBUG); break;
		case 'T': tls = true; break;
		default: return 2;
		}
	}
	if (!strcmp(argv[1], "xfer"))
		return xfer(kind, addr, total, region, chans, wsize, batch ? batch : 256, tls);
	if (!strcmp(argv[1], "reg"))
		return reg_bench(dev, region);
	if (!strcmp(argv[1], "pop"))
		return pop_bench(region);
	fprintf(stderr, "bench-transport: unknown mode %s\n", argv[1]);
	return 2;
}
