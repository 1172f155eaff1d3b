/*
 * tests/test-transport-cases.h — the transport suite, written once for every
 * backend.  test-transport-tcp.c (host) and test-transport-rdma.c (soft-RoCE
 * bed) include it after defining SUITE_KIND and suite_addr(); each then adds
 * the cases only its backend has.
 *
 * Guest RAM here is plain mmap()ed memory with canary guard bands before and
 * after every region: a peer that made either side write outside a region
 * would change a canary, and every case that moves data checks them.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "transport/priv.h"

/* RDMAMIG_TEST_VERBOSE=1: the library's log on stderr, to see why a case
 * failed on the bed. */
static void verbose_log(void *o, enum rdmamig_log_level l, const char *msg)
{
	fprintf(stderr, "  [lib] %s\n", msg);
}

__attribute__((constructor)) static void verbose_start(void)
{
	if (getenv("RDMAMIG_TEST_VERBOSE"))
		rdmamig_set_log(verbose_log, NULL, RDMAMIG_LOG_DEBUG);
}

#define GUARD (64u << 10)
#define CANARY 0xa5
#define PAGE 4096u
#define MAXR 8

/* Registration strategy for the source in the cases (RDMA). */
static enum rm_reg_strategy case_reg = RM_REG_ALL;
static size_t case_reg_chunk;
/* Address for the cases instead of suite_addr() (IPv6 runs). */
static const char *case_addr;

/* Provided by the including file. */
static const char *suite_addr(void);

struct ram {
	unsigned n;
	struct rm_region r[MAXR];
	void *map[MAXR];
	size_t maplen[MAXR];
};

/* Regions of the given sizes with ids 10, 11, ...; zeroed, or random (seed). */
static void ram_alloc(struct ram *m, unsigned n, const uint64_t *sizes, unsigned seed)
{
	memset(m, 0, sizeof(*m));
	m->n = n;
	for (unsigned i = 0; i < n; i++) {
		size_t len = sizes[i] + 2 * GUARD;
		char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		cr_assert_neq(p, MAP_FAILED, "mmap %zu bytes", len);
		memset(p, CANARY, GUARD);
		memset(p + GUARD + sizes[i], CANARY, GUARD);
		m->map[i] = p;
		m->maplen[i] = len;
		m->r[i] = (struct rm_region){ .id = 10 + i, .addr = p + GUARD, .size = sizes[i] };
		if (seed) {
			uint64_t x = seed * 0x9e3779b97f4a7c15ull + i;
			uint64_t *w = m->r[i].addr;

			for (size_t k = 0; k < sizes[i] / 8; k++) {
				x ^= x << 13;
				x ^= x >> 7;
				x ^= x << 17;
				w[k] = x;
			}
		}
	}
}

static void ram_free(struct ram *m)
{
	for (unsigned i = 0; i < m->n; i++)
		munmap(m->map[i], m->maplen[i]);
	m->n = 0;
}

static bool all_bytes(const void *p, int v, size_t len)
{
	const unsigned char *b = p;

	for (size_t i = 0; i < len; i++)
		if (b[i] != v)
			return false;
	return true;
}

static void ram_assert_guards(const struct ram *m)
{
	for (unsigned i = 0; i < m->n; i++) {
		cr_assert(all_bytes(m->map[i], CANARY, GUARD), "guard before region %u changed", i);
		cr_assert(all_bytes((char *)m->map[i] + GUARD + m->r[i].size, CANARY, GUARD),
			  "guard after region %u changed", i);
	}
}

static void ram_assert_zero(const struct ram *m)
{
	for (unsigned i = 0; i < m->n; i++)
		cr_assert(all_bytes(m->r[i].addr, 0, m->r[i].size), "region %u was written", i);
}

/* Options with key (NULL: no_auth). */
static struct rm_transport_opts opts_keyed(unsigned nchan, const char *key)
{
	struct rm_transport_opts o = {
		.kind = SUITE_KIND,
		.addr = case_addr ? case_addr : suite_addr(),
		.port = "0",
		.nchan = nchan,
		.timeout_ms = 5000,
		.max_write = 256u << 10,
		.reg = case_reg,
		.reg_chunk = case_reg_chunk,
		.no_auth = !key,
	};

	if (key) {
		o.psk_len = (unsigned)strlen(key);
		memcpy(o.psk, key, o.psk_len);
	}
	return o;
}

#define CASE_KEY "the cases' pre-shared key, 32 B"

/* Every case runs authenticated, as the CLI does by default. */
static struct rm_transport_opts opts_for(unsigned nchan)
{
	return opts_keyed(nchan, CASE_KEY);
}

/* ---- a connected pair: destination accepted in a thread ---- */

struct pair {
	struct rm_listener *l;
	struct rm_transport *src, *dst;
	struct ram *dram;	/* NULL: no layout */
	int accept_err, dlayout_err;
};

static void *accept_thread(void *arg)
{
	struct pair *p = arg;

	p->accept_err = rm_tr_accept(p->l, &p->dst);
	if (!p->accept_err && p->dram)
		p->dlayout_err = rm_tr_layout(p->dst, p->dram->r, p->dram->n);
	return NULL;
}

/* As the engine waits: accept again after a timeout, a few times. */
static void *accept_patient(void *arg)
{
	struct pair *p = arg;

	for (int i = 0; i < 4; i++) {
		p->accept_err = rm_tr_accept(p->l, &p->dst);
		if (p->accept_err != -ETIMEDOUT)
			break;
	}
	return NULL;
}

/*
 * Connect a source to a fresh destination.  With RAM given, both sides also
 * exchange the layout; returns the source's layout result (0 expected).
 */
static int pair_open(struct pair *p, struct rm_transport_opts o, struct ram *dram, struct ram *sram)
{
	char port[16];
	pthread_t th;
	int err, serr = 0;

	memset(p, 0, sizeof(*p));
	p->dram = dram;
	err = rm_tr_listen(&o, &p->l);
	cr_assert_eq(err, 0, "listen: %s", rdmamig_strerror(err));
	snprintf(port, sizeof(port), "%d", rm_tr_listener_port(p->l));
	cr_assert_eq(pthread_create(&th, NULL, accept_thread, p), 0);
	o.port = port;
	err = rm_tr_connect(&o, &p->src);
	if (!err && sram)
		serr = rm_tr_layout(p->src, sram->r, sram->n);
	pthread_join(th, NULL);
	cr_assert_eq(err, 0, "connect: %s", rdmamig_strerror(err));
	cr_assert_eq(p->accept_err, 0, "accept: %s", rdmamig_strerror(p->accept_err));
	return serr;
}

/* RDMA, a staged layout: wait (bounded) until the source has every chunk's
 * READY, so a case that seals or writes afterwards finds all of RAM
 * exposed, as an up-front layout leaves it.  A no-op otherwise. */
static void pair_wait_staged(struct pair *p)
{
	struct rm_ctrl *q = &p->src->ctrl;
	bool done = false;

	for (int i = 0; i < 6000 && !done; i++) {
		pthread_mutex_lock(&q->lock);
		done = !q->stage_shift || q->stage_nready == q->stage_base[q->peer_nregions];
		pthread_mutex_unlock(&q->lock);
		if (!done)
			usleep(10000);
	}
	cr_assert(done, "the destination did not expose all of its RAM within 60 s");
}

static void pair_close(struct pair *p)
{
	rm_tr_close(p->src);
	rm_tr_close(p->dst);
	rm_tr_listener_close(p->l);
}

static const uint64_t sizes3[] = { 8u << 20, 4u << 20, (2u << 20) + 3 * PAGE };

static void case_layout(void)
{
	struct ram d, s, bad;
	uint64_t badsizes[] = { 8u << 20, 4u << 20, 2u << 20 };
	struct pair p;
	struct rm_msg msg;
	int err;

	ram_alloc(&d, 3, sizes3, 0);
	ram_alloc(&s, 3, sizes3, 1);
	err = pair_open(&p, opts_for(2), &d, &s);
	cr_assert_eq(err, 0, "source layout: %s", rdmamig_strerror(err));
	cr_assert_eq(p.dlayout_err, 0, "destination layout: %s", rdmamig_strerror(p.dlayout_err));
	pair_close(&p);

	/* A source whose third region is 3 pages shorter is refused, and the
	 * destination hears why. */
	ram_alloc(&bad, 3, badsizes, 1);
	err = pair_open(&p, opts_for(2), &d, &bad);
	cr_assert_eq(err, RDMAMIG_E_REFUSED, "mismatch gave %s", rdmamig_strerror(err));
	err = rm_tr_recv(p.dst, &msg, 3000);
	cr_assert_eq(err, RDMAMIG_E_REFUSED, "destination saw %s", rdmamig_strerror(err));
	pair_close(&p);
	ram_assert_zero(&d);
	ram_assert_guards(&d);
	ram_free(&d);
	ram_free(&s);
	ram_free(&bad);
}

static uint64_t rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* rxe in the nested test bed moves 5-20 MB/s, so every megabyte costs it a
 * tenth of a second: over RDMA the long ranges (up to 512 pages) are rarer
 * and the range counts smaller, for the same shapes — coalesced,
 * overlapping, split across writes — at a sixth of the bytes. */
#define RDMA_KIND (SUITE_KIND == RM_TRANSPORT_RDMA)
#define LONG_RANGE_ONE_IN (RDMA_KIND ? 64 : 8)

/*
 * Thousands of random page ranges (some adjacent, written as they come; some
 * overlapping) over several channels, with fences in between; after the
 * last fence and a DONE message the destination must equal the source on
 * every written page and be zero everywhere else.
 */
static void case_random_ranges(unsigned nchan, unsigned nranges)
{
	struct ram d, s;
	struct pair p;
	struct rm_range batch[64];
	struct rm_msg msg;
	struct rm_transport_stats st;
	uint8_t *written[MAXR];
	uint64_t x = 0x1234567 + nchan, total = 0;
	int err;

	ram_alloc(&d, 3, sizes3, 0);
	ram_alloc(&s, 3, sizes3, 7);
	err = pair_open(&p, opts_for(nchan), &d, &s);
	cr_assert_eq(err, 0, "layout: %s", rdmamig_strerror(err));
	for (unsigned i = 0; i < 3; i++)
		written[i] = calloc(sizes3[i] / PAGE, 1);

	for (unsigned done = 0, b = 0; done < nranges; b++) {
		unsigned n = 1 + rnd(&x) % 64;

		if (n > nranges - done)
			n = nranges - done;

		for (unsigned k = 0; k < n; k++, done++) {
			unsigned reg = rnd(&x) % 3;
			uint64_t pages = sizes3[reg] / PAGE;
			uint64_t len = 1 + (rnd(&x) % LONG_RANGE_ONE_IN == 0 ? rnd(&x) % 512 : rnd(&x) % 8);
			uint64_t first;

			if (len > pages)
				len = pages;
			first = rnd(&x) % (pages - len + 1);
			/* Every third range continues the previous one. */
			if (k && k % 3 == 0 && batch[k - 1].region == 10 + reg) {
				first = (batch[k - 1].offset + batch[k - 1].length) / PAGE;
				if (first + len > pages)
					first = pages - len;
			}
			batch[k] = (struct rm_range){ .region = 10 + reg, .offset = first * PAGE,
						      .length = len * PAGE };
			memset(written[reg] + first, 1, len);
			total += len * PAGE;
		}
		err = rm_tr_write(p.src, batch, n);
		cr_assert_eq(err, 0, "write batch %u: %s", b, rdmamig_strerror(err));
		if (b % 16 == 15) {
			err = rm_tr_fence(p.src);
			cr_assert_eq(err, 0, "fence: %s", rdmamig_strerror(err));
		}
	}
	err = rm_tr_fence(p.src);
	cr_assert_eq(err, 0, "fence: %s", rdmamig_strerror(err));
	err = rm_tr_send(p.src, RM_WIRE_ENGINE_FIRST, "DONE", 4);
	cr_assert_eq(err, 0, "send: %s", rdmamig_strerror(err));
	err = rm_tr_recv(p.dst, &msg, 20000);
	cr_assert_eq(err, 1, "recv DONE: %s", rdmamig_strerror(err));
	cr_assert_eq(msg.len, 4);
	cr_assert_eq(memcmp(msg.data, "DONE", 4), 0);
	rm_msg_free(&msg);

	for (unsigned i = 0; i < 3; i++) {
		for (uint64_t pg = 0; pg < sizes3[i] / PAGE; pg++) {
			const char *dp = (char *)d.r[i].addr + pg * PAGE;
			const char *sp = (char *)s.r[i].addr + pg * PAGE;

			if (written[i][pg])
				cr_assert(memcmp(dp, sp, PAGE) == 0, "region %u page %llu differs", i,
					  (unsigned long long)pg);
			else
				cr_assert(all_bytes(dp, 0, PAGE), "region %u page %llu written but not sent",
					  i, (unsigned long long)pg);
		}
		free(written[i]);
	}
	ram_assert_guards(&d);
	rm_tr_stats(p.src, &st);
	cr_assert_eq(st.bytes_written, total, "source counted %llu bytes, sent %llu",
		     (unsigned long long)st.bytes_written, (unsigned long long)total);
	cr_assert_eq(st.ranges, nranges);
	cr_assert(st.writes > 0 && st.writes <= nranges * 16);
	cr_assert(st.busy_ns > 0);
	cr_log_info("%u ranges, %llu bytes, %llu writes, %llu WRs, %llu completions over %u channels",
		    nranges, (unsigned long long)total, (unsigned long long)st.writes,
		    (unsigned long long)st.wrs_posted, (unsigned long long)st.completions, nchan);
	pair_close(&p);
	ram_free(&d);
	ram_free(&s);
}

/* ---- control messages ---- */

struct echo {
	struct rm_transport *t;
	unsigned count;
	int err;
};

/* Destination thread: echo every message back, count of them. */
static void *echo_thread(void *arg)
{
	struct echo *e = arg;

	for (unsigned i = 0; i < e->count; i++) {
		struct rm_msg m;
		int ret = rm_tr_recv(e->t, &m, 20000);

		if (ret != 1) {
			e->err = ret ? ret : -ETIMEDOUT;
			return NULL;
		}
		ret = rm_tr_send(e->t, m.type, m.data, m.len);
		rm_msg_free(&m);
		if (ret) {
			e->err = ret;
			return NULL;
		}
	}
	return NULL;
}

static void fill_pattern(uint8_t *b, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		b[i] = (uint8_t)(i * 131 + seed * 7 + (i >> 12));
}

/*
 * Messages from 0 bytes to several MiB go source -> destination -> source and
 * come back intact and in order, including a burst sent before any reply
 * is read (credits must flow without lock-step round trips).
 */
static void case_ctrl_roundtrip(void)
{
	static const size_t sizes[] = { 0, 1, 100, 4095, 4096, 65536 + 7, 1u << 20, (5u << 20) + 13,
					64, 3 };
	enum { BURST = 200 };
	unsigned nmsg = ARRAY_SIZE(sizes) + BURST;
	struct pair p;
	struct echo e;
	pthread_t th;
	uint8_t *buf = malloc(6u << 20);
	int err;

	pair_open(&p, opts_for(2), NULL, NULL);
	e = (struct echo){ .t = p.dst, .count = nmsg };
	cr_assert_eq(pthread_create(&th, NULL, echo_thread, &e), 0);
	for (unsigned i = 0; i < ARRAY_SIZE(sizes); i++) {
		struct rm_msg m;

		fill_pattern(buf, sizes[i], i);
		err = rm_tr_send(p.src, RM_WIRE_ENGINE_FIRST + i, buf, sizes[i]);
		cr_assert_eq(err, 0, "send %zu bytes: %s", sizes[i], rdmamig_strerror(err));
		err = rm_tr_recv(p.src, &m, 20000);
		cr_assert_eq(err, 1, "echo of %zu bytes: %s", sizes[i], rdmamig_strerror(err));
		cr_assert_eq(m.type, RM_WIRE_ENGINE_FIRST + i);
		cr_assert_eq(m.len, sizes[i]);
		fill_pattern(buf, sizes[i], i);
		cr_assert(sizes[i] == 0 || memcmp(m.data, buf, sizes[i]) == 0,
			  "echo of %zu bytes differs", sizes[i]);
		rm_msg_free(&m);
	}
	for (unsigned i = 0; i < BURST; i++) {
		uint32_t v = i;

		err = rm_tr_send(p.src, RM_WIRE_ENGINE_LAST, &v, sizeof(v));
		cr_assert_eq(err, 0, "burst send %u: %s", i, rdmamig_strerror(err));
	}
	for (unsigned i = 0; i < BURST; i++) {
		struct rm_msg m;

		err = rm_tr_recv(p.src, &m, 20000);
		cr_assert_eq(err, 1, "burst echo %u: %s", i, rdmamig_strerror(err));
		cr_assert_eq(m.len, 4);
		cr_assert_eq(*(uint32_t *)m.data, i, "burst out of order at %u", i);
		rm_msg_free(&m);
	}
	pthread_join(th, NULL);
	cr_assert_eq(e.err, 0, "echo side: %s", rdmamig_strerror(e.err));

	/* Types outside the engine range and oversize messages never leave. */
	cr_assert_eq(rm_tr_send(p.src, RM_WIRE_CTRL, buf, 1), -EINVAL);
	cr_assert_eq(rm_tr_send(p.src, 0, buf, 1), -EINVAL);
	cr_assert_eq(rm_tr_send(p.src, RM_WIRE_ENGINE_FIRST, buf, RM_WIRE_MAX_CTRL + 1ull), -EMSGSIZE);
	free(buf);
	pair_close(&p);
}

/* Orderly close: the peer's recv returns what was queued, then -EPIPE. */
static void case_close_and_cancel(void)
{
	struct pair p;
	struct rm_msg m;
	uint64_t t0;
	int err;

	pair_open(&p, opts_for(2), NULL, NULL);
	cr_assert_eq(rm_tr_send(p.dst, RM_WIRE_ENGINE_FIRST, "bye", 3), 0);
	rm_tr_close(p.dst);
	p.dst = NULL;
	err = rm_tr_recv(p.src, &m, 5000);
	cr_assert_eq(err, 1, "queued message before close: %s", rdmamig_strerror(err));
	rm_msg_free(&m);
	err = rm_tr_recv(p.src, &m, 5000);
	cr_assert(err == -EPIPE || err == -ECONNRESET, "after close: %s", rdmamig_strerror(err));
	pair_close(&p);

	/* A recv timeout leaves the connection usable; cancel ends waits. */
	pair_open(&p, opts_for(1), NULL, NULL);
	t0 = rm_now_ns();
	err = rm_tr_recv(p.src, &m, 300);
	cr_assert_eq(err, -ETIMEDOUT, "recv with nothing sent: %s", rdmamig_strerror(err));
	cr_assert((rm_now_ns() - t0) / 1000000 < 2000, "timeout of 300 ms took too long");
	cr_assert_eq(rm_tr_recv(p.src, &m, 0), 0);
	cr_assert_eq(rm_tr_send(p.dst, RM_WIRE_ENGINE_FIRST, "x", 1), 0);
	cr_assert_eq(rm_tr_recv(p.src, &m, 5000), 1);
	rm_msg_free(&m);
	rm_tr_cancel(p.src);
	cr_assert_eq(rm_tr_recv(p.src, &m, 5000), -ECANCELED);
	pair_close(&p);
}

/* Once the destination sealed its RAM (the source's last fence done), a
 * source that writes on lands nothing: RDMA refuses its old rkeys (the
 * WRITE's completion fails), TCP takes its WRITE frame as a protocol
 * error; the destination hears of it as an error, not a message. */
static void case_write_after_seal(void)
{
	struct rm_range r = { .region = 10, .offset = PAGE, .length = 4 * PAGE };
	struct ram d, s;
	struct pair p;
	struct rm_msg m;
	int err;

	ram_alloc(&d, 3, sizes3, 0);
	ram_alloc(&s, 3, sizes3, 5);
	cr_assert_eq(pair_open(&p, opts_for(2), &d, &s), 0);
	cr_assert_eq(p.dlayout_err, 0);
	/* Every rkey out first: a staged source would otherwise wait for the
	 * READY of a chunk the seal stopped (staged_seal_while_registering_*
	 * in test-transport-rdma.c shows that nothing lands then either). */
	pair_wait_staged(&p);
	cr_assert_eq(rm_tr_seal(p.dst), 0);
	cr_assert_eq(rm_tr_seal(p.src), -EINVAL, "a source has no RAM to seal");
	err = rm_tr_write(p.src, &r, 1);
	if (!err)
		err = rm_tr_fence(p.src);
	if (!err)
		err = rm_tr_send(p.src, RM_WIRE_ENGINE_FIRST, "x", 1);
	err = rm_tr_recv(p.dst, &m, 5000);
	cr_assert(err < 0 && err != -ETIMEDOUT, "destination after a WRITE to sealed RAM: %s",
		  err == 1 ? "a message" : rdmamig_strerror(err));
	ram_assert_zero(&d);
	ram_assert_guards(&d);
	pair_close(&p);
	ram_free(&d);
	ram_free(&s);
}

/* ABORT from either side reaches the other as RDMAMIG_E_ABORTED, and every
 * later op on both sides keeps failing with it. */
static void case_abort(bool from_source)
{
	struct pair p;
	struct rm_msg m;
	struct rm_transport *a, *b;
	int err;

	pair_open(&p, opts_for(2), NULL, NULL);
	a = from_source ? p.src : p.dst;
	b = from_source ? p.dst : p.src;
	cr_assert_eq(rm_tr_abort(a, -ECANCELED, "operator cancelled"), 0);
	err = rm_tr_recv(b, &m, 5000);
	cr_assert_eq(err, RDMAMIG_E_ABORTED, "peer of the aborter got %s", rdmamig_strerror(err));
	cr_assert_eq(rm_tr_send(b, RM_WIRE_ENGINE_FIRST, "x", 1), RDMAMIG_E_ABORTED);
	cr_assert_eq(rm_tr_recv(a, &m, 0), RDMAMIG_E_ABORTED);
	cr_assert_eq(rm_tr_send(a, RM_WIRE_ENGINE_FIRST, "x", 1), RDMAMIG_E_ABORTED);
	pair_close(&p);
}

/* ---- a peer that vanishes: the other one is a child process, killed ---- */

/*
 * The child is the destination (dest_child) or the source; it reports its
 * listening port through a pipe, then works until SIGKILL.
 */
static void child_work(bool dest_child, int pfd, int cfd)
{
	struct rm_transport_opts o = opts_for(2);
	struct ram m;
	struct rm_transport *t = NULL;
	char port[16];
	int err;

	ram_alloc(&m, 3, sizes3, dest_child ? 0 : 3);
	if (dest_child) {
		struct rm_listener *l;

		if (rm_tr_listen(&o, &l))
			_exit(2);
		snprintf(port, sizeof(port), "%d", rm_tr_listener_port(l));
		if (write(pfd, port, sizeof(port)) != sizeof(port))
			_exit(2);
		if (rm_tr_accept(l, &t) || rm_tr_layout(t, m.r, m.n))
			_exit(3);
		for (;;)
			pause();
	}
	if (read(cfd, port, sizeof(port)) != sizeof(port))
		_exit(2);
	o.port = port;
	err = rm_tr_connect(&o, &t);
	if (!err)
		err = rm_tr_layout(t, m.r, m.n);
	if (err)
		_exit(3);
	if (write(pfd, "ok", 2) != 2)
		_exit(2);
	for (uint64_t i = 0;; i++) {
		struct rm_range r = { .region = 10, .offset = (i % 2040) * PAGE, .length = 4 * PAGE };

		err = rm_tr_write(t, &r, 1);
		if (!err && i % 64 == 0)
			err = rm_tr_fence(t);
		if (err) {
			fprintf(stderr, "child source: write %llu: %s\n", (unsigned long long)i,
				rdmamig_strerror(err));
			_exit(4);
		}
	}
}

static void case_peer_vanishes(bool dest_dies)
{
	struct rm_transport_opts o = opts_for(2);
	struct rm_listener *l = NULL;
	struct rm_transport *t = NULL;
	struct ram m;
	char port[16] = "";
	int pfd[2], cfd[2], err = 0, status;
	uint64_t t0;
	pid_t pid;

	/* Fork before any RDMA call: librdmacm's device contexts do not
	 * survive into a child. */
	cr_assert_eq(pipe(pfd), 0);
	cr_assert_eq(pipe(cfd), 0);
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		close(pfd[0]);
		close(cfd[1]);
		child_work(dest_dies, pfd[1], cfd[0]);
		_exit(0);
	}
	close(cfd[0]);
	if (!dest_dies) {
		/* We are the destination: listen, then tell the child where. */
		cr_assert_eq(rm_tr_listen(&o, &l), 0);
		snprintf(port, sizeof(port), "%d", rm_tr_listener_port(l));
		cr_assert_eq(write(cfd[1], port, sizeof(port)), (ssize_t)sizeof(port));
	}
	close(pfd[1]);
	ram_alloc(&m, 3, sizes3, dest_dies ? 5 : 0);
	if (dest_dies) {
		cr_assert_eq(read(pfd[0], port, sizeof(port)), (ssize_t)sizeof(port));
		o.port = port;
		err = rm_tr_connect(&o, &t);
		cr_assert_eq(err, 0, "connect: %s", rdmamig_strerror(err));
		err = rm_tr_layout(t, m.r, m.n);
		cr_assert_eq(err, 0, "layout: %s", rdmamig_strerror(err));
		/* Transfer for a while, then kill the destination mid-transfer. */
		t0 = rm_now_ns();
		for (uint64_t i = 0; !err; i++) {
			struct rm_range r = { .region = 11, .offset = (i % 1000) * PAGE, .length = 8 * PAGE };

			if (i == 200)
				kill(pid, SIGKILL), t0 = rm_now_ns();
			err = rm_tr_write(t, &r, 1);
			if (!err && i % 32 == 0)
				err = rm_tr_fence(t);
			if (!err && i > 200) {
				struct rm_msg msg;

				err = rm_tr_recv(t, &msg, 0);
				cr_assert(err <= 0);
			}
			cr_assert((rm_now_ns() - t0) / 1000000 < 15000, "no error 15 s after the peer died");
		}
	} else {
		struct rm_msg msg;
		char ok[2];

		err = rm_tr_accept(l, &t);
		cr_assert_eq(err, 0, "accept: %s", rdmamig_strerror(err));
		err = rm_tr_layout(t, m.r, m.n);
		cr_assert_eq(err, 0, "layout: %s", rdmamig_strerror(err));
		cr_assert_eq(read(pfd[0], ok, 2), 2);
		usleep(300000);
		kill(pid, SIGKILL);
		t0 = rm_now_ns();
		err = rm_tr_recv(t, &msg, 15000);
	}
	cr_log_info("peer killed: %s after %llu ms", rdmamig_strerror(err),
		    (unsigned long long)((rm_now_ns() - t0) / 1000000));
	cr_assert(err < 0 && err != -ETIMEDOUT, "expected a connection error, got %s",
		  rdmamig_strerror(err));
	cr_assert((rm_now_ns() - t0) / 1000000 < 15000);
	waitpid(pid, &status, 0);
	cr_assert(WIFSIGNALED(status), "child exited early with %d", WEXITSTATUS(status));
	rm_tr_close(t);
	rm_tr_listener_close(l);
	ram_assert_guards(&m);
	close(pfd[0]);
	close(cfd[1]);
	ram_free(&m);
}

/* Hostile peers, ABORT reasons and authentication: the cases that speak
 * the wire as a peer would, in their own file. */
#include "tests/test-transport-cases-peer.h"

#define TRANSPORT_CASES(suite)                                                     \
	Test(suite, layout_exchange_and_mismatch) { case_layout(); }               \
	Test(suite, random_ranges_1chan) { case_random_ranges(1, 1000); }          \
	Test(suite, random_ranges_4chan) { case_random_ranges(4, RDMA_KIND ? 2000 : 5000); } \
	Test(suite, ctrl_large_roundtrip_and_burst) { case_ctrl_roundtrip(); }     \
	Test(suite, close_timeout_cancel) { case_close_and_cancel(); }             \
	Test(suite, write_after_seal_lands_nothing) { case_write_after_seal(); }  \
	Test(suite, abort_from_source) { case_abort(true); }                       \
	Test(suite, abort_from_destination) { case_abort(false); }                 \
	Test(suite, destination_vanishes) { case_peer_vanishes(true); }            \
	Test(suite, source_vanishes) { case_peer_vanishes(false); }                \
	Test(suite, hostile_source_refused) { case_hostile_source(); }             \
	Test(suite, hostile_destination_refused) { case_hostile_dest(); }         \
	Test(suite, abort_reason_out_of_range) { case_abort_reason_out_of_range(); } \
	Test(suite, auth_no_key_wrong_key_refused_right_key_works) { case_auth(); } \
	Test(suite, auth_keyed_source_refuses_open_destination) { case_auth_dest_without_key(); } \
	Test(suite, silent_sources_do_not_block_a_real_one) { case_silent_sources_do_not_block(); } \
	Test(suite, silent_destination_named_in_the_timeout) {                     \
		case_silent_destination_named_in_the_timeout();                    \
	}
