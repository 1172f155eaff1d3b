/*
 * migration/ram.c — which guest RAM to send, and sending it: dirty bitmaps
 * (one bit per page, per region, owned here and filled by the VMM's
 * dirty_sync), runs of dirty pages turned into transport ranges, zero pages
 * skipped in the bulk pass, bandwidth capping, and the RAM digest for
 * --verify.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "migration/engine.h"

#define BATCH_RANGES 256
/* Re-arm dirty tracking (dirty_clear) in chunks of this many pages, just
 * before the chunk is read: 4096 pages = 16 MiB of 4 KiB pages. */
#define CLEAR_CHUNK_PAGES 4096ull

int rm_ram_alloc_bitmaps(struct rdmamig *m)
{
	for (uint32_t r = 0; r < m->desc.nr_regions; r++) {
		uint64_t pages = m->desc.regions[r].size / m->desc.page_size;

		m->npages[r] = pages;
		m->bitmaps[r] = calloc((pages + 63) / 64, sizeof(uint64_t));
		if (!m->bitmaps[r]) {
			rm_ram_free_bitmaps(m);
			return -ENOMEM;
		}
	}
	return 0;
}

void rm_ram_free_bitmaps(struct rdmamig *m)
{
	for (unsigned r = 0; r < RDMAMIG_MAX_REGIONS; r++) {
		free(m->bitmaps[r]);
		m->bitmaps[r] = NULL;
	}
}

void rm_ram_mark_all(struct rdmamig *m)
{
	for (uint32_t r = 0; r < m->desc.nr_regions; r++) {
		uint64_t words = (m->npages[r] + 63) / 64;

		memset(m->bitmaps[r], 0xff, words * 8);
		if (m->npages[r] % 64)
			m->bitmaps[r][words - 1] = (1ull << (m->npages[r] % 64)) - 1;
	}
}

uint64_t rm_ram_count_dirty(const struct rdmamig *m)
{
	uint64_t n = 0;

	for (uint32_t r = 0; r < m->desc.nr_regions; r++)
		for (uint64_t w = 0; w < (m->npages[r] + 63) / 64; w++)
			n += (uint64_t)__builtin_popcountll(m->bitmaps[r][w]);
	return n;
}

long rm_ram_sync(struct rdmamig *m)
{
	long n = m->ops->dirty_sync(m->vmm, m->bitmaps);

	if (n < 0)
		rm_err("migration: dirty log sync failed: %s", rdmamig_strerror((int)n));
	return n < 0 ? n : (long)rm_ram_count_dirty(m);
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

struct batch {
	struct rm_range r[BATCH_RANGES];
	size_t n;
};

static int flush(struct rdmamig *m, struct batch *b)
{
	int err;

	if (!b->n)
		return 0;
	err = rm_tr_write(m->t, b->r, b->n);
	b->n = 0;
	return err;
}

/* Append pages [first, first + n) of region r, merging with the last range. */
static int add_run(struct rdmamig *m, struct batch *b, uint32_t r, uint64_t first, uint64_t n)
{
	uint64_t ps = m->desc.page_size;
	struct rm_range *last = b->n ? &b->r[b->n - 1] : NULL;

	if (last && last->region == m->desc.regions[r].id && last->offset + last->length == first * ps) {
		last->length += n * ps;
		return 0;
	}
	if (b->n == BATCH_RANGES) {
		int err = flush(m, b);

		if (err)
			return err;
	}
	b->r[b->n++] = (struct rm_range){
		.region = m->desc.regions[r].id, .offset = first * ps, .length = n * ps,
	};
	return 0;
}

int rm_ram_send_pass(struct rdmamig *m, bool skip_zero, struct rm_pass *out)
{
	uint64_t ps = m->desc.page_size, t0 = rm_now_ns();
	struct batch *b = malloc(sizeof(*b));
	int err = 0;

	memset(out, 0, sizeof(*out));
	if (!b)
		return -ENOMEM;
	b->n = 0;
	for (uint32_t r = 0; r < m->desc.nr_regions && !err; r++) {
		const uint8_t *base = m->desc.regions[r].host_addr;
		uint64_t *bm = m->bitmaps[r], npages = m->npages[r];

		for (uint64_t c = 0; c < npages && !err; c += CLEAR_CHUNK_PAGES) {
			uint64_t end = c + CLEAR_CHUNK_PAGES < npages ? c + CLEAR_CHUNK_PAGES : npages;
			bool any = false;

			for (uint64_t w = c / 64; w < (end + 63) / 64; w++)
				any |= bm[w] != 0;
			if (!any)
				continue;
			if (m->ops->dirty_clear) {
				err = m->ops->dirty_clear(m->vmm, r, c, end - c);
				if (err) {
					rm_err("migration: dirty_clear of region %u pages %llu+%llu: %s", r,
					       (unsigned long long)c, (unsigned long long)(end - c),
					       rdmamig_strerror(err));
					break;
				}
			}
			for (uint64_t p = c; p < end && !err;) {
				uint64_t word = bm[p / 64] >> (p % 64);

				if (!word) {
					p = (p / 64 + 1) * 64;
					continue;
				}
				p += (uint64_t)__builtin_ctzll(word);
				if (p >= end)
					break;
				/* A run of set bits from p. */
				uint64_t q = p;
				while (q < end && (bm[q / 64] >> (q % 64)) & 1) {
					bm[q / 64] &= ~(1ull << (q % 64));
					q++;
				}
				if (!skip_zero) {
					err = add_run(m, b, r, p, q - p);
					out->pages += q - p;
				} else {
					for (uint64_t i = p; i < q && !err; i++) {
						if (page_is_zero(base + i * ps, ps)) {
							out->zero_pages++;
							continue;
						}
						err = add_run(m, b, r, i, 1);
						out->pages++;
					}
				}
				p = q;
			}
			if (!err)
				err = flush(m, b);
			if (!err)
				err = rm_mig_tick(m, false);
			if (!err && rm_mig_cancelled(m))
				err = RDMAMIG_E_ABORTED;
			pace(m, t0, out->pages * ps);
			pthread_mutex_lock(&m->lock);
			m->progress.sent_bytes = m->stats.bytes + out->pages * ps;
			pthread_mutex_unlock(&m->lock);
		}
	}
	if (!err)
		err = flush(m, b);
	if (!err)
		err = rm_tr_fence(m->t);
	free(b);
	out->bytes = out->pages * ps;
	out->ns = rm_now_ns() - t0;
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
