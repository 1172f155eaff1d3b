/*
 * migration/ram.c — which guest RAM to send, and sending it: the VMM's dirty
 * bitmaps read a word at a time into runs of dirty pages, the runs turned
 * into transport ranges, zero pages skipped in the bulk pass, bandwidth
 * capping, and the RAM digest for --verify.
 *
 * One pass per iteration, over one bitmap, with one count.  dirty_sync()
 * hands over the VMM's own bitmaps with their exact count (the engine copies
 * nothing and counts nothing); the pass reads each word once, finds runs with
 * ctz of the word and of its inverse, names each 16 MiB chunk it will read to
 * dirty_clear() once, from its first dirty word on, and merges adjacent pages
 * into one range.  This is the only layer that merges: the transport gets
 * maximal runs and only splits them into writes.
 *
 * Memory: nothing per page.  Whatever the guest's size the engine holds a
 * pointer per region to the VMM's bitmap and one batch of BATCH_RANGES
 * ranges (6 KiB, on the stack).  The VMM's bitmap is one bit per page:
 * 32 MiB per TiB of 4 KiB pages (64 MiB for KVM's ring tracker, which keeps
 * a second one to harvest into).
 *
 * This file reads the VMM's bitmaps and never writes them; it reaches the
 * transport only through rm_tr_write() and rm_tr_fence().
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "migration/engine.h"

#define BATCH_RANGES 256
/* The pass works in chunks of this many pages (64 bitmap words, 16 MiB of
 * 4 KiB pages): dirty_clear() is called at most once per chunk, just before
 * the chunk's first page is read, and progress (and its report to the
 * destination), cancellation and the bandwidth cap are looked after between
 * chunks. */
#define CHUNK_PAGES 4096ull
/* What is ready (the batch and the open run) goes to the transport once it
 * holds this many bytes, or the batch is full: one rm_tr_write() then moves
 * at most 16 MiB, and between two chunks there is at most one, so progress
 * and cancellation are looked after at least that often on a slow link.
 * (Liveness does not hang on it: the transport's keep-alives flow during a
 * long write.)  It also caps a range at 16 MiB. */
#define FLUSH_BYTES (16ull << 20)

int rm_ram_setup(struct rdmamig *m)
{
	uint64_t ps = m->desc.page_size;

	/* page_is_zero() reads a page 32 bytes at a time. */
	if (ps < 64 || ps & (ps - 1)) {
		rm_err("migration: the VMM's page size %llu is not a power of two of at least 64 bytes",
		       (unsigned long long)ps);
		return -EINVAL;
	}
	for (uint32_t r = 0; r < m->desc.nr_regions; r++) {
		if (!m->desc.regions[r].size || m->desc.regions[r].size % ps) {
			rm_err("migration: region %u of %llu bytes is not a whole number of pages", r,
			       (unsigned long long)m->desc.regions[r].size);
			return -EINVAL;
		}
		m->npages[r] = m->desc.regions[r].size / ps;
	}
	return 0;
}

long rm_ram_sync(struct rdmamig *m)
{
	const uint64_t *bm[RDMAMIG_MAX_REGIONS] = { 0 };
	long n = m->ops->dirty_sync(m->vmm, bm);

	if (n < 0) {
		rm_err("migration: dirty log sync failed: %s", rdmamig_strerror((int)n));
		return n;
	}
	for (uint32_t r = 0; r < m->desc.nr_regions; r++) {
		if (!bm[r]) {
			rm_err("migration: the VMM's dirty_sync gave no bitmap for region %u", r);
			return -EINVAL;
		}
	}
	memcpy(m->bitmaps, bm, sizeof(m->bitmaps));
	m->reported = (uint64_t)n;
	return n;
}

void rm_ram_dirty_stop(struct rdmamig *m)
{
	m->ops->dirty_stop(m->vmm);
	/* The VMM may free the bitmaps now. */
	memset(m->bitmaps, 0, sizeof(m->bitmaps));
}

static bool page_is_zero(const uint8_t *p, size_t len)
{
	const uint64_t *q = (const uint64_t *)p;

	for (size_t i = 0; i < len / 8; i += 4)
		if (q[i] | q[i + 1] | q[i + 2] | q[i + 3])
			return false;
	return true;
}

/* Hold the RAM sending rate under max_bandwidth. */
static void pace(struct rdmamig *m, uint64_t start_ns, uint64_t bytes)
{
	uint64_t cap = m->opts.max_bandwidth, due_ns, now;

	if (!cap)
		return;
	due_ns = start_ns + (uint64_t)((double)bytes * 1e9 / (double)cap);
	now = rm_now_ns();
	while (due_ns > now && !rm_mig_cancelled(m)) {
		uint64_t nap = due_ns - now > 50000000ull ? 50000000ull : due_ns - now;
		struct timespec ts = { .tv_sec = 0, .tv_nsec = (long)nap };

		nanosleep(&ts, NULL);
		now = rm_now_ns();
	}
}

/* One pass's sending state: the run being grown and the batch of ranges
 * not yet handed to the transport. */
struct sender {
	struct rdmamig *m;
	uint32_t id;			/* the current region's id */
	uint64_t run_first, run_len;	/* the open run, in pages; 0: none */
	size_t n;
	uint64_t batch_pages;		/* pages in r[0..n) */
	uint64_t flush_pages;		/* FLUSH_BYTES in pages */
	uint64_t pages;			/* pages in ranges made so far */
	struct rm_range r[BATCH_RANGES];
};

static int flush(struct sender *s)
{
	int err;

	if (!s->n)
		return 0;
	err = rm_tr_write(s->m->t, s->r, s->n);
	s->n = 0;
	s->batch_pages = 0;
	return err;
}

/* Close the open run: it becomes one range. */
static int emit(struct sender *s)
{
	uint64_t ps = s->m->desc.page_size;

	if (!s->run_len)
		return 0;
	if (s->n == BATCH_RANGES) {
		int err = flush(s);

		if (err)
			return err;
	}
	s->r[s->n++] = (struct rm_range){
		.region = s->id, .offset = s->run_first * ps, .length = s->run_len * ps,
	};
	s->batch_pages += s->run_len;
	s->pages += s->run_len;
	s->run_len = 0;
	return 0;
}

/* Pages [first, first + n) go: grow the open run, or close it and open one;
 * hand what is ready to the transport once there is FLUSH_BYTES of it. */
static inline int add(struct sender *s, uint64_t first, uint64_t n)
{
	int err = 0;

	if (s->run_len && s->run_first + s->run_len == first) {
		s->run_len += n;
	} else {
		err = emit(s);
		s->run_first = first;
		s->run_len = n;
	}
	if (!err && s->batch_pages + s->run_len >= s->flush_pages) {
		/* Cut the run where FLUSH_BYTES is reached; the rest stays
		 * open.  (Before this add less than that was ready, so the cut
		 * falls inside the pages just added.) */
		uint64_t over = s->batch_pages + s->run_len - s->flush_pages;

		s->run_len -= over;
		err = emit(s);
		if (!err)
			err = flush(s);
		s->run_first = first + n - over;
		s->run_len = over;
	}
	return err;
}

static int clear(struct rdmamig *m, uint32_t r, uint64_t first, uint64_t n)
{
	int err;

	if (!m->ops->dirty_clear)
		return 0;
	err = m->ops->dirty_clear(m->vmm, r, first, n);
	if (err)
		rm_err("migration: dirty_clear of region %u pages %llu+%llu: %s", r, (unsigned long long)first,
		       (unsigned long long)n, rdmamig_strerror(err));
	return err;
}

/* The bulk pass: every page of [first, end) but those that read as zero. */
static int bulk_chunk(struct sender *s, uint32_t r, uint64_t first, uint64_t end, uint64_t *zero)
{
	uint64_t ps = s->m->desc.page_size;
	const uint8_t *base = s->m->desc.regions[r].host_addr;
	int err = clear(s->m, r, first, end - first);

	for (uint64_t p = first; p < end && !err; p++) {
		if (page_is_zero(base + p * ps, ps))
			(*zero)++;
		else
			err = add(s, p, 1);
	}
	return err;
}

/* An iterate pass: the pages of [first, end) set in bm, a word at a time. */
static int dirty_chunk(struct sender *s, uint32_t r, const uint64_t *bm, uint64_t first, uint64_t end)
{
	uint64_t last = (s->m->npages[r] - 1) / 64;
	/* The VMM promises no bit past the region's end; a wrong one would
	 * make a range outside RAM, so mask it rather than trust it. */
	uint64_t tail = s->m->npages[r] % 64 ? (1ull << (s->m->npages[r] % 64)) - 1 : ~0ull;
	bool cleared = false;
	int err = 0;

	for (uint64_t w = first / 64; w < (end + 63) / 64 && !err; w++) {
		uint64_t x = w == last ? bm[w] & tail : bm[w];

		if (!x)
			continue;
		if (!cleared) {
			err = clear(s->m, r, w * 64, end - w * 64);
			cleared = true;
		}
		/* Each run: its first page is the lowest set bit, its length
		 * the number of ones from there (the trailing zeroes of the
		 * inverse).  Then drop every bit up to the run's end. */
		while (!err) {
			unsigned b = (unsigned)__builtin_ctzll(x);
			uint64_t inv = ~(x >> b);
			unsigned len = inv ? (unsigned)__builtin_ctzll(inv) : 64;

			err = add(s, w * 64 + b, len);
			if (b + len == 64)
				break;
			x &= ~0ull << (b + len);
			if (!x)
				break;
		}
	}
	return err;
}

int rm_ram_send_pass(struct rdmamig *m, bool bulk, bool fence, struct rm_pass *out)
{
	uint64_t ps = m->desc.page_size, t0 = rm_now_ns();
	struct sender s = { .m = m, .flush_pages = FLUSH_BYTES / ps ? FLUSH_BYTES / ps : 1 };
	int err = 0;

	memset(out, 0, sizeof(*out));
	for (uint32_t r = 0; r < m->desc.nr_regions && !err; r++) {
		const uint64_t *bm = m->bitmaps[r];
		uint64_t npages = m->npages[r];

		if (!bulk && !bm) {
			rm_err("migration: an iterate pass with no dirty bitmap for region %u", r);
			err = -EINVAL;
			break;
		}
		s.id = m->desc.regions[r].id;
		for (uint64_t c = 0; c < npages && !err; c += CHUNK_PAGES) {
			uint64_t end = c + CHUNK_PAGES < npages ? c + CHUNK_PAGES : npages;
			uint64_t before = s.pages + s.run_len;

			err = bulk ? bulk_chunk(&s, r, c, end, &out->zero_pages) : dirty_chunk(&s, r, bm, c, end);
			if (!err)
				err = rm_mig_tick(m, false);
			if (!err && rm_mig_cancelled(m))
				err = RDMAMIG_E_ABORTED;
			if (err || s.pages + s.run_len == before)
				continue;
			/* Under a cap, what is ready goes out before the nap —
			 * the open run too: pace() counts only pages in ranges,
			 * and a run left open to the region's end was never
			 * paced (a region of one chunk went out at full speed). */
			if (m->opts.max_bandwidth && ((err = emit(&s)) || (err = flush(&s))))
				continue;
			pace(m, t0, s.pages * ps);
			pthread_mutex_lock(&m->lock);
			m->progress.sent_bytes = m->stats.bytes + s.pages * ps;
			pthread_mutex_unlock(&m->lock);
		}
		/* A run never crosses regions. */
		if (!err)
			err = emit(&s);
	}
	if (!err)
		err = flush(&s);
	if (!err && fence)
		err = rm_tr_fence(m->t);
	out->pages = s.pages;
	out->bytes = s.pages * ps;
	out->ns = rm_now_ns() - t0;
	/* A wrong count misleads only the convergence decision (every set
	 * bit is sent): say so, and go on. */
	if (!err && !bulk && out->pages != m->reported)
		rm_warn("migration: the VMM's dirty_sync counted %llu pages, its bitmaps held %llu",
			(unsigned long long)m->reported, (unsigned long long)out->pages);
	return err;
}

/* 64-bit multiply-xorshift over 8-byte words, mixed per region id: not
 * cryptographic, only a check that both sides hold the same bytes. */
uint64_t rm_ram_digest(const struct rdmamig_vm_desc *desc)
{
	uint64_t h = 0x6a09e667f3bcc909ull;

	for (uint32_t r = 0; r < desc->nr_regions; r++) {
		const uint64_t *p = desc->regions[r].host_addr;
		uint64_t n = desc->regions[r].size / 8, a = h ^ desc->regions[r].id, c = 0;

		/* Two independent lanes, so the multiplies overlap. */
		for (uint64_t i = 0; i + 1 < n; i += 2) {
			a = (a ^ p[i]) * 0x9e3779b97f4a7c15ull;
			a ^= a >> 29;
			c = (c ^ p[i + 1]) * 0xbf58476d1ce4e5b9ull;
			c ^= c >> 31;
		}
		h = (h ^ a ^ (c << 1)) * 0x94d049bb133111ebull;
		h ^= h >> 32;
	}
	return h;
}
