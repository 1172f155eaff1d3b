/*
 * transport/ctrl-stage.c — the source's side of a staged LAYOUT (wire.h,
 * steps 2 and 2a): checking the chunk size and count a destination names,
 * the table of per-chunk keys READYs fill, and the wait of a write for its
 * chunk's READY.
 *
 * A destination that registers its RAM behind its LAYOUT (RDMA,
 * transport/rdma-stage.c) tells the source nothing but where RAM is; the
 * keys come chunk by chunk.  Everything here is hostile input first: the
 * chunk shift is bounded, the number of chunks (so the table's size) is
 * bounded by RM_WIRE_MAX_CHUNKS before anything is allocated, and a READY
 * for a chunk that does not exist, a second one for a chunk, or one that
 * no staged LAYOUT announced breaks the protocol.
 */
#include <stdlib.h>
#include <string.h>

#include "transport/priv.h"

int rm_ctrl_stage_layout(struct rm_transport *t, uint32_t flags, uint32_t shift,
			 const struct rm_wire_region *r, unsigned n, const char **why)
{
	struct rm_ctrl *q = &t->ctrl;
	uint64_t total = 0;

	if (!(flags & RM_WIRE_LAYOUT_STAGED)) {
		if (shift) {
			*why = "LAYOUT with a chunk size but not staged";
			return RDMAMIG_E_PROTO;
		}
		return 0;
	}
	if (!t->ops->late_keys || (flags & RM_WIRE_LAYOUT_CHAN_KEYS) ||
	    shift < RM_WIRE_MIN_CHUNK_SHIFT || shift > RM_WIRE_MAX_CHUNK_SHIFT) {
		*why = "staged LAYOUT off RDMA, with keys, or with a chunk size out of range";
		return RDMAMIG_E_PROTO;
	}
	for (unsigned i = 0; i < n; i++) {
		uint64_t size = rm_wire_get64(r[i].size);

		/* Sizes are matched against ours later; only the count matters
		 * here, and each term is checked before the sum can wrap. */
		if (!size || r[i].rkey || rm_ctrl_chunks(size, shift) > RM_WIRE_MAX_CHUNKS) {
			*why = "staged LAYOUT region empty, with a key, or of too many chunks";
			return RDMAMIG_E_PROTO;
		}
		q->stage_base[i] = (uint32_t)total;
		total += rm_ctrl_chunks(size, shift);
		if (total > RM_WIRE_MAX_CHUNKS) {
			*why = "staged LAYOUT of more chunks than RM_WIRE_MAX_CHUNKS";
			return RDMAMIG_E_PROTO;
		}
	}
	q->stage_base[n] = (uint32_t)total;
	q->stage_keys = calloc(total * t->nchan + 1, sizeof(*q->stage_keys));
	q->stage_ready = calloc(total + 1, sizeof(*q->stage_ready));
	if (!q->stage_keys || !q->stage_ready) {
		free(q->stage_keys);
		free(q->stage_ready);
		q->stage_keys = NULL;
		q->stage_ready = NULL;
		*why = "chunk key table";
		return -ENOMEM;
	}
	q->stage_shift = shift;
	q->stage_nready = 0;
	return 0;
}

int rm_ctrl_rx_ready(struct rm_transport *t, unsigned chan, const void *body, size_t len,
		     const char **why)
{
	struct rm_ctrl *q = &t->ctrl;
	struct rm_wire_ready rd;
	uint32_t pos, chunk, g;
	int err = 0;

	if (chan != 0 || t->role != RM_ROLE_SOURCE || !t->ops->late_keys ||
	    len != sizeof(rd) + t->nchan * sizeof(__le32)) {
		*why = "READY to a destination, off channel 0, off RDMA or of the wrong length";
		return RDMAMIG_E_PROTO;
	}
	memcpy(&rd, body, sizeof(rd));
	pos = rm_wire_get32(rd.region);
	chunk = rm_wire_get32(rd.chunk);
	pthread_mutex_lock(&q->lock);
	if (!q->have_layout || !q->stage_shift) {
		*why = "READY without a staged LAYOUT before it";
		err = RDMAMIG_E_PROTO;
	} else if (pos >= q->peer_nregions ||
		   chunk >= q->stage_base[pos + 1] - q->stage_base[pos]) {
		*why = "READY for a region or chunk the LAYOUT has not";
		err = RDMAMIG_E_PROTO;
	} else if (atomic_load(&q->stage_ready[g = q->stage_base[pos] + chunk])) {
		*why = "a second READY for a chunk";
		err = RDMAMIG_E_PROTO;
	} else {
		const __le32 *k = (const void *)((const char *)body + sizeof(rd));

		for (unsigned c = 0; c < t->nchan; c++) {
			__le32 v;

			memcpy(&v, k + c, sizeof(v));
			q->stage_keys[(size_t)g * t->nchan + c] = rm_wire_get32(v);
		}
		/* Last: a writer that sees it set reads the keys without the lock. */
		atomic_store_explicit(&q->stage_ready[g], 1, memory_order_release);
		q->stage_nready++;
		pthread_cond_broadcast(&q->cond);
	}
	pthread_mutex_unlock(&q->lock);
	return err;
}

static bool chunk_ready(struct rm_transport *t, void *arg)
{
	return atomic_load(&t->ctrl.stage_ready[*(uint32_t *)arg]);
}

int rm_ctrl_stage_wait(struct rm_transport *t, unsigned idx, uint64_t off, uint64_t *end,
		       const uint32_t **keys)
{
	struct rm_ctrl *q = &t->ctrl;
	unsigned shift = q->stage_shift;
	uint64_t c = off >> shift, size = t->regions[idx].size;
	uint32_t g = q->stage_base[q->peer[idx].pos] + (uint32_t)c;
	int ret = 0;

	*end = (c + 1) << shift < size ? (c + 1) << shift : size;
	if (!atomic_load_explicit(&q->stage_ready[g], memory_order_acquire)) {
		uint64_t t0 = rm_now_ns();

		atomic_store(&q->stage_waiting, g + 1);
		/* While the peer is alive: it keeps sending KEEPALIVEs as it
		 * registers, and silence, an error or a cancel ends this. */
		ret = rm_ctrl_wait_for(t, RM_NO_DEADLINE, chunk_ready, &g);
		atomic_store(&q->stage_waiting, 0);
		atomic_fetch_add(&q->stage_wait_ns, rm_now_ns() - t0);
		if (ret < 0)
			return ret;
		if (!ret)
			return -ETIMEDOUT;	/* not reached: no deadline */
		atomic_thread_fence(memory_order_acquire);
	}
	*keys = &q->stage_keys[(size_t)g * t->nchan];
	return 0;
}
