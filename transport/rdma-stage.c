/*
 * transport/rdma-stage.c — a destination that registers its RAM behind its
 * LAYOUT, chunk by chunk, while the source already writes (wire.h steps 2
 * and 2a, a "staged" LAYOUT).
 *
 * Registering guest RAM pins it, and pinning fresh RAM faults in every
 * page: ~29 s per GiB of fresh 4 KiB pages in the nested test bed, and
 * still 0.3 s per GiB of populated RAM.  Done up front (rdma-mw.c), the
 * source could write nothing before all of it was done.  Here the layout
 * op sends LAYOUT at once, with addresses and no keys, and a thread
 * registers one chunk at a time in the order the source's bulk pass writes
 * (regions in order, ascending offsets: migration/ram.c), exposes it —
 * one type-2 window per (chunk, QP) bound on that QP, or, where the device
 * has no type-2 windows, the chunk's MR with remote write — and sends a
 * READY with the chunk's keys.  The source writes a chunk only after its
 * READY (ctrl-stage.c), so population, registration and the transfer
 * overlap, and the first byte moves after one chunk, whatever the size.
 *
 * The seal (rd_seal, rdma-mw.c, under expose_lock) stops the thread and
 * revokes every chunk it published.  A chunk the thread holds "in hand"
 * when the seal comes — a plain MR being registered (its rkey works from
 * the registration on), or windows being bound — is not yet published for
 * the seal to find: the seal waits for the thread to put it down if it may
 * (a healthy connection: the caller is the engine or a cancel, outside the
 * backend's locks; deallocating a window under a pending bind would also
 * break the QP that COMMIT's answer still needs), and the thread, seeing
 * the stop, revokes it itself.  On a failed connection the seal cannot
 * wait (its caller may hold c->lock, which the binds need): the thread's
 * wait ends with the error at once and it revokes the chunk then.  No READY
 * leaves after a seal but one racing it, whose keys are dead already.
 *
 * Locks: the thread takes c->lock to bind and to send, expose_lock to
 * publish, never both at once; it never sleeps in poll() (another thread
 * that finds the CQs busy would spin), it polls and naps.  Threads: one per
 * connection, joined on every exit path (rd_stage_free, from teardown).
 * Test-only pause point (common/fault.h): "register-N" (dst) holds the
 * thread before it registers chunk N (counting every region's chunks in
 * order); a seal or a close releases it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/fault.h"
#include "transport/rdma.h"

#define STAGE_CHUNK_DEFAULT (8u << 20)	/* first byte after ~8 MiB pinned */
#define STAGE_NAP_US 500

/* Set on the registration thread: a seal it calls itself (its own failure)
 * must not wait for it. */
static __thread bool on_stage_thread;

struct rd_stage {
	struct rd_conn *c;
	pthread_t th;
	bool started;
	atomic_int stop;		/* seal or close: the thread ends (and a
					 * held fault pause is released) */
	unsigned n, shift;
	struct rm_region r[RM_WIRE_MAX_REGIONS];
	uint32_t base[RM_WIRE_MAX_REGIONS + 1];
	uint32_t nchunks;
	int access;
	bool windows;
	_Atomic uint64_t bytes, ns;	/* registered so far, time in the calls */
	uint64_t t0;
	/* Under c->expose_lock: what the seal revokes and teardown frees. */
	struct ibv_mr **mr;		/* per chunk, NULL until published */
	struct ibv_mw **mw;		/* nchunks * nchan: chunk g's at g * nchan */
	bool in_hand;			/* a chunk exposed or being exposed
					 * that the seal cannot find yet */
	pthread_cond_t idle;		/* in_hand went false */
};

/* The chunk size: the option's (a power of two) or the default, grown until
 * the chunks fit the wire's bound and the device's windows and MRs. */
static unsigned pick_shift(struct rd_conn *c, const struct rm_region *r, unsigned n, bool windows)
{
	struct ibv_device_attr attr = { 0 };
	size_t want = c->base.opts.reg_chunk ? c->base.opts.reg_chunk : STAGE_CHUNK_DEFAULT;
	unsigned shift = 63 - __builtin_clzll(want);
	uint64_t max_mw = UINT64_MAX, max_mr = UINT64_MAX;

	/* A device that reports no bound (0) is taken at its word elsewhere:
	 * binding fails loudly if it was wrong. */
	if (!ibv_query_device(c->verbs, &attr)) {
		if (attr.max_mw > 0)
			max_mw = (uint64_t)attr.max_mw;
		if (attr.max_mr > 0)
			max_mr = (uint64_t)attr.max_mr;
	}
	if (shift < RM_WIRE_MIN_CHUNK_SHIFT)
		shift = RM_WIRE_MIN_CHUNK_SHIFT;
	for (; shift <= RM_WIRE_MAX_CHUNK_SHIFT; shift++) {
		uint64_t total = 0;

		for (unsigned i = 0; i < n; i++)
			total += rm_ctrl_chunks(r[i].size, shift);
		/* Half the device's objects at most: other users share it. */
		if (total <= RM_WIRE_MAX_CHUNKS && total <= max_mr / 2 &&
		    (!windows || total * c->base.nchan <= max_mw / 2))
			return shift;
	}
	return 0;
}

/* With c->lock held: make progress without sleeping in poll(). */
static int nap(struct rd_conn *c, uint64_t deadline)
{
	(void)deadline;
	int err = rd_progress(c, RM_NOW);

	pthread_mutex_unlock(&c->lock);
	usleep(STAGE_NAP_US);
	pthread_mutex_lock(&c->lock);
	return err ? err : rm_tr_check(&c->base);
}

/* Bind chunk g's windows, one per QP, and wait for the binds to complete:
 * after that a window answers WRITEs on its QP.  Not cut short by a stop
 * (see the top); by an error, and by a bound on silence-free waiting. */
static int bind_chunk(struct rd_stage *s, uint32_t g, void *addr, uint64_t len, struct ibv_mr *mr,
		      struct ibv_mw **mw, uint32_t *keys)
{
	struct rd_conn *c = s->c;
	uint64_t want[RM_WIRE_MAX_CHANNELS], deadline = rm_deadline(c->base.opts.timeout_ms);
	int err = 0;

	pthread_mutex_lock(&c->lock);
	for (unsigned ch = 0; ch < c->base.nchan && !err; ch++) {
		err = rd_post_bind(c, ch, mw[ch], mr, addr, len, &keys[ch]);
		want[ch] = c->q[ch].posted;
	}
	if (!err)
		err = rd_wait_retired(c, want, deadline, nap);
	if (err == -ETIMEDOUT)
		rm_err("transport rdma: binding chunk %u's memory windows not complete within %d ms",
		       g, c->base.opts.timeout_ms);
	pthread_mutex_unlock(&c->lock);
	return err;
}

/* Send chunk g's READY once the LAYOUT is out, as soon as a credit allows;
 * while the peer is alive, until a stop. */
static int send_ready(struct rd_stage *s, unsigned pos, uint32_t chunk, const uint32_t *keys)
{
	struct rd_conn *c = s->c;
	struct {
		struct rm_wire_ready r;
		__le32 k[RM_WIRE_MAX_CHANNELS];
	} m = { .r = { .region = rm_wire_put32(pos), .chunk = rm_wire_put32(chunk) } };
	int err = 0;

	for (unsigned ch = 0; ch < c->base.nchan; ch++)
		m.k[ch] = rm_wire_put32(keys[ch]);
	pthread_mutex_lock(&c->lock);
	for (;;) {
		if (atomic_load(&s->stop)) {
			err = -ECANCELED;
			break;
		}
		if (c->layout_posted) {
			err = rd_post_now(c, 0, RM_WIRE_READY, &m,
					  sizeof(m.r) + c->base.nchan * sizeof(__le32));
			if (err != -EAGAIN)
				break;
		}
		err = nap(c, RM_NOW);
		if (err)
			break;
	}
	pthread_mutex_unlock(&c->lock);
	return err;
}

/* Undo a chunk the thread holds that was never published. */
static void undo(struct rd_stage *s, struct ibv_mr *mr, struct ibv_mw **mw)
{
	rd_dealloc_mws(mw, s->windows ? s->c->base.nchan : 0);
	if (mr)
		ibv_dereg_mr(mr);
}

/* Under expose_lock: the thread holds a chunk that is, or may become,
 * exposed without the seal finding it (on), or no longer (off). */
static void in_hand(struct rd_stage *s, bool on)
{
	s->in_hand = on;
	if (!on)
		pthread_cond_broadcast(&s->idle);
}

/* Register, expose and announce chunk g (chunk k of region i): 0, 1 when
 * stopped, or an error for the connection. */
static int stage_one(struct rd_stage *s, uint32_t g, unsigned i, uint32_t k)
{
	struct rd_conn *c = s->c;
	unsigned nchan = c->base.nchan;
	uint64_t off = (uint64_t)k << s->shift, ns = 0;
	uint64_t len = s->r[i].size - off < (1ull << s->shift) ? s->r[i].size - off : 1ull << s->shift;
	char *addr = (char *)s->r[i].addr + off, step[32];
	struct ibv_mw *mw[RM_WIRE_MAX_CHANNELS] = { 0 };
	uint32_t keys[RM_WIRE_MAX_CHANNELS];
	struct ibv_mr *mr;
	int err = 0;

	snprintf(step, sizeof(step), "register-%u", g);
	if (rm_fault_point("dst", step, &s->stop))
		return 1;
	/* A plain MR is exposed from its registration on (its rkey works at
	 * once); a window-bound MR only once its windows are bound. */
	pthread_mutex_lock(&c->expose_lock);
	if (atomic_load(&s->stop)) {
		pthread_mutex_unlock(&c->expose_lock);
		return 1;
	}
	in_hand(s, !s->windows);
	pthread_mutex_unlock(&c->expose_lock);
	mr = rm_reg_range(c->pd, addr, len, s->access, &ns);
	atomic_fetch_add(&s->ns, ns);
	if (!mr) {
		err = -errno;
		rm_err("transport rdma: registering chunk %u (%llu bytes at offset %#llx of region %u): %s",
		       g, (unsigned long long)len, (unsigned long long)off, s->r[i].id,
		       rdmamig_strerror(err));
	}
	for (unsigned ch = 0; !err && s->windows && ch < nchan; ch++) {
		mw[ch] = ibv_alloc_mw(c->pd, IBV_MW_TYPE_2);
		if (!mw[ch]) {
			err = -(errno ? errno : ENOMEM);
			rm_err("transport rdma: allocating chunk %u's memory windows: %s", g,
			       rdmamig_strerror(err));
		}
	}
	if (mr)
		atomic_fetch_add(&s->bytes, len);
	pthread_mutex_lock(&c->expose_lock);
	if (err || atomic_load(&s->stop)) {
		in_hand(s, false);
		pthread_mutex_unlock(&c->expose_lock);
		undo(s, mr, mw);
		return err ? err : 1;
	}
	s->mr[g] = mr;		/* published: the seal (plain MRs) and teardown find it */
	in_hand(s, s->windows);
	pthread_mutex_unlock(&c->expose_lock);

	if (s->windows) {
		err = bind_chunk(s, g, addr, len, mr, mw, keys);
		pthread_mutex_lock(&c->expose_lock);
		in_hand(s, false);
		if (err || atomic_load(&s->stop)) {
			pthread_mutex_unlock(&c->expose_lock);
			rd_dealloc_mws(mw, nchan);
			return err ? err : 1;
		}
		for (unsigned ch = 0; ch < nchan; ch++)
			s->mw[(size_t)g * nchan + ch] = mw[ch];
		pthread_mutex_unlock(&c->expose_lock);
	} else {
		for (unsigned ch = 0; ch < nchan; ch++)
			keys[ch] = mr->rkey;
	}
	err = send_ready(s, i, k, keys);
	return err == -ECANCELED && atomic_load(&s->stop) ? 1 : err;
}

static void *stage_thread(void *arg)
{
	struct rd_stage *s = arg;
	uint32_t g = 0;
	int err = 0;

	on_stage_thread = true;
	for (unsigned i = 0; i < s->n && !err; i++)
		for (uint32_t k = 0; g < s->base[i + 1] && !err; k++, g++)
			err = stage_one(s, g, i, k);
	if (err < 0 && err != -ECANCELED)	/* a cancel is the connection's already */
		rm_tr_fail(&s->c->base, err, "registering RAM behind the layout");
	else if (!err)
		rm_info("transport rdma: registered %llu MiB in %u chunks of %u KiB behind the layout in "
			"%llu ms (%llu ms in the registration calls)",
			(unsigned long long)(atomic_load(&s->bytes) >> 20), s->nchunks,
			(1u << s->shift) >> 10, (unsigned long long)((rm_now_ns() - s->t0) / 1000000),
			(unsigned long long)(atomic_load(&s->ns) / 1000000));
	else
		rm_dbg("transport rdma: registration stopped at chunk %u of %u (sealed or closed)", g,
		       s->nchunks);
	return NULL;
}

static void stage_free_mem(struct rd_stage *s)
{
	free(s->mr);
	free(s->mw);
	pthread_cond_destroy(&s->idle);
	free(s);
}

int rd_stage_start(struct rd_conn *c, const struct rm_region *r, unsigned n,
		   struct rm_wire_region *wire)
{
	struct rm_transport *t = &c->base;
	unsigned caps = rm_reg_mw_caps(c->verbs);
	bool windows = (caps & (RM_MW_TYPE2A | RM_MW_TYPE2B)) && !rm_rdma_no_windows;
	uint64_t total = 0;
	struct rd_stage *s;
	int err;

	for (unsigned i = 0; i < n; i++)
		total += r[i].size;
	err = rm_memlock_check(total);
	if (err)
		return err;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	pthread_cond_init(&s->idle, NULL);
	s->c = c;
	s->n = n;
	s->windows = windows;
	s->shift = pick_shift(c, r, n, windows);
	if (!s->shift) {
		rm_err("transport rdma: %llu MiB in %u regions do not fit %u chunks of at most 1 GiB",
		       (unsigned long long)(total >> 20), n, RM_WIRE_MAX_CHUNKS);
		stage_free_mem(s);
		return -E2BIG;
	}
	for (unsigned i = 0; i < n; i++) {
		s->r[i] = r[i];
		s->base[i + 1] = s->base[i] + (uint32_t)rm_ctrl_chunks(r[i].size, s->shift);
	}
	s->nchunks = s->base[n];
	s->mr = calloc(s->nchunks, sizeof(*s->mr));
	s->mw = windows ? calloc((size_t)s->nchunks * t->nchan, sizeof(*s->mw)) : NULL;
	if (!s->mr || (windows && !s->mw)) {
		stage_free_mem(s);
		return -ENOMEM;
	}
	/* Remote write only, never remote read; through windows, not even
	 * that on the MR itself. */
	s->access = rm_reg_access(c->pd, IBV_ACCESS_LOCAL_WRITE |
					 (windows ? IBV_ACCESS_MW_BIND : IBV_ACCESS_REMOTE_WRITE));
	s->t0 = rm_now_ns();

	/* A seal that came meanwhile (a cancel, a failure) is honoured here:
	 * nothing starts.  Otherwise the seal finds the thread from now on. */
	pthread_mutex_lock(&c->expose_lock);
	if (atomic_load(&t->sealed)) {
		pthread_mutex_unlock(&c->expose_lock);
		stage_free_mem(s);
		err = rm_tr_check(t);
		return err ? err : -ECANCELED;
	}
	err = -pthread_create(&s->th, NULL, stage_thread, s);
	if (!err) {
		s->started = true;
		c->stage = s;
	}
	pthread_mutex_unlock(&c->expose_lock);
	if (err) {
		stage_free_mem(s);
		return err;
	}
	atomic_fetch_add(&rm_rdma_exposures, 1);
	for (unsigned i = 0; i < n; i++)
		wire[i].addr = rm_wire_put64((uintptr_t)r[i].addr);
	t->ctrl.chunk_shift = s->shift;
	rm_info("transport rdma: layout sent before registration: %u chunks of %u KiB registered "
		"behind it in the source's order, each exposed through %s and announced by a READY",
		s->nchunks, (1u << s->shift) >> 10,
		windows ? "type-2 memory windows bound to each QP" :
		rm_rdma_no_windows ? "its MR (windows turned off)" :
		"its MR (the device has no type-2 memory windows)");
	return 0;
}

int rd_stage_seal(struct rd_conn *c, unsigned *live, bool *windows)
{
	struct rd_stage *s = c->stage;
	int err = 0;

	atomic_store(&s->stop, 1);
	if (s->in_hand && !atomic_load(&c->base.error) && !on_stage_thread) {
		struct timespec ts = rm_abstime_in((uint64_t)c->base.opts.timeout_ms * 1000000ull);

		while (s->in_hand)
			if (pthread_cond_timedwait(&s->idle, &c->expose_lock, &ts) == ETIMEDOUT)
				break;
	}
	*live = rd_stage_exposed(c);
	*windows = s->windows;
	if (s->windows)
		return rd_dealloc_mws(s->mw, s->nchunks * c->base.nchan);
	for (uint32_t g = 0; g < s->nchunks; g++) {
		int e;

		if (!s->mr[g])
			continue;
		/* The MR's rkey is the exposure: deregistering ends it. */
		e = ibv_dereg_mr(s->mr[g]);
		if (e) {
			if (!err)
				err = -e;
			continue;
		}
		s->mr[g] = NULL;
	}
	return err;
}

unsigned rd_stage_exposed(struct rd_conn *c)
{
	struct rd_stage *s = c->stage;
	unsigned live = 0;

	if (s->windows) {
		for (unsigned k = 0; k < s->nchunks * c->base.nchan; k++)
			live += s->mw[k] != NULL;
	} else {
		for (uint32_t g = 0; g < s->nchunks; g++)
			live += s->mr[g] != NULL;
	}
	return live;
}

void rd_stage_cost(struct rd_conn *c, uint64_t *bytes, uint64_t *ns)
{
	struct rd_stage *s = c->stage;

	*bytes = s ? atomic_load(&s->bytes) : 0;
	*ns = s ? atomic_load(&s->ns) : 0;
}

void rd_stage_free(struct rd_conn *c)
{
	struct rd_stage *s;

	pthread_mutex_lock(&c->expose_lock);
	s = c->stage;
	if (s)
		atomic_store(&s->stop, 1);
	pthread_mutex_unlock(&c->expose_lock);
	if (!s)
		return;
	if (s->started)
		pthread_join(s->th, NULL);
	pthread_mutex_lock(&c->expose_lock);
	c->stage = NULL;
	pthread_mutex_unlock(&c->expose_lock);
	rd_dealloc_mws(s->mw, s->windows ? s->nchunks * c->base.nchan : 0);
	for (uint32_t g = 0; g < s->nchunks; g++)
		if (s->mr[g])
			ibv_dereg_mr(s->mr[g]);
	stage_free_mem(s);
}
