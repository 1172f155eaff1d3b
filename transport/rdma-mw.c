/*
 * transport/rdma-mw.c — how the RDMA backend's destination exposes guest RAM
 * to the source's WRITEs, and how it takes that access back.
 *
 * Exposure starts in the layout op, which runs only on a connection whose
 * source has proven the key (rm_tr_accept() returns no other), so an
 * unauthenticated peer never sees an rkey.  It ends with the seal op: when
 * the engine knows the source's last fence is done (COMMIT arrived, before
 * the device state is loaded), and on the connection's first error (an ABORT
 * either way, a DISCONNECT, silence) or a cancel.
 *
 * Where the device binds type-2 memory windows, RAM is registered for local
 * access and window binding only, and each region is exposed through one
 * window per QP, bound with remote write by a BIND_MW work request on that
 * QP: a type-2 window answers only WRITEs that arrive on the QP it is bound
 * to, and deallocating it kills its rkey at once, while the MR (without
 * remote access) stays until close — sealing costs no deregistration on the
 * downtime path.  Elsewhere (no type-2 windows, or ODP, whose MRs are not
 * bound to here) each region is an MR with remote write, and sealing
 * deregisters it, which unpins the RAM: longer on a big guest.  The log says
 * which.
 */
#include <stdlib.h>

#include "transport/rdma.h"

/* Tests only: expose through plain MRs even where windows exist. */
bool rm_rdma_no_windows;
atomic_uint rm_rdma_exposures;

int rd_post_bind(struct rd_conn *c, unsigned chan, struct ibv_mw *mw, struct ibv_mr *mr,
		 void *addr, uint64_t len, uint32_t *rkey)
{
	struct rd_qp *q = &c->q[chan];
	struct ibv_send_wr wr = { 0 }, *bad;
	int ret;

	/* A type-2 window takes the key's low byte from the bind: a fresh
	 * one, so no key of an earlier binding could ever match. */
	*rkey = ibv_inc_rkey(mw->rkey);
	wr.wr_id = mk_wr_id(WR_BIND, chan, 0, q->posted + 1);
	wr.opcode = IBV_WR_BIND_MW;
	wr.send_flags = IBV_SEND_SIGNALED;
	wr.bind_mw.mw = mw;
	wr.bind_mw.rkey = *rkey;
	wr.bind_mw.bind_info = (struct ibv_mw_bind_info){
		.mr = mr,
		.addr = (uintptr_t)addr,
		.length = len,
		.mw_access_flags = IBV_ACCESS_REMOTE_WRITE,
	};
	ret = ibv_post_send(q->qp, &wr, &bad);
	if (ret)
		return -ret;
	q->posted++;
	q->mark[q->posted % SQ_DEPTH] = q->wbytes;
	c->base.st.wrs_posted++;
	return 0;
}

/* With c->lock held: every WR posted on every QP has completed. */
static int wait_sq_empty(struct rd_conn *c, uint64_t deadline)
{
	int err = rd_wait_retired(c, NULL, deadline, NULL);

	if (err == -ETIMEDOUT)
		rm_err("transport rdma: memory window binds not complete within %d ms",
		       c->base.opts.timeout_ms);
	return err;
}

/* Allocate and bind a window per (channel, region): mw[chan * n + i]; the
 * keys go to keys[chan * n + i].  On an error the caller frees mw[]. */
static int bind_windows(struct rd_conn *c, struct rm_reg *reg, const struct rm_region *r,
			unsigned n, struct ibv_mw **mw, uint32_t *keys)
{
	unsigned nchan = c->base.nchan;
	int err = 0;

	for (unsigned k = 0; k < nchan * n; k++) {
		mw[k] = ibv_alloc_mw(c->pd, IBV_MW_TYPE_2);
		if (!mw[k])
			return -(errno ? errno : ENOMEM);
	}
	pthread_mutex_lock(&c->lock);
	/* n <= RM_WIRE_MAX_REGIONS binds fit an empty send queue's share. */
	err = wait_sq_empty(c, rm_deadline(c->base.opts.timeout_ms));
	for (unsigned ch = 0; !err && ch < nchan; ch++)
		for (unsigned i = 0; !err && i < n; i++)
			err = rd_post_bind(c, ch, mw[ch * n + i], rm_reg_mr(reg, i), r[i].addr, r[i].size,
					&keys[ch * n + i]);
	if (!err)
		err = wait_sq_empty(c, rm_deadline(c->base.opts.timeout_ms));
	pthread_mutex_unlock(&c->lock);
	return err;
}

int rd_dealloc_mws(struct ibv_mw **mw, unsigned nmw)
{
	int first = 0;

	for (unsigned k = 0; mw && k < nmw; k++) {
		int ret;

		if (!mw[k])
			continue;
		ret = ibv_dealloc_mw(mw[k]);
		if (ret) {
			if (!first)
				first = -ret;
			continue;	/* still valid: teardown tries again */
		}
		mw[k] = NULL;
	}
	return first;
}

int rd_expose(struct rd_conn *c, const struct rm_region *r, unsigned n, struct rm_wire_region *wire)
{
	struct rm_transport *t = &c->base;
	bool odp = t->opts.reg == RM_REG_ODP;
	unsigned caps = rm_reg_mw_caps(c->verbs), nmw = t->nchan * n;
	bool windows = !odp && (caps & (RM_MW_TYPE2A | RM_MW_TYPE2B)) && !rm_rdma_no_windows;
	uint32_t keys[RM_WIRE_MAX_CHANNELS * RM_WIRE_MAX_REGIONS];
	struct ibv_mw **mw = NULL;
	struct rm_reg *reg;
	int err;

	/* Remote write only, never remote read; through windows, not even
	 * that on the MR itself. */
	err = rm_reg_open(&reg, c->pd, r, n, odp ? RM_REG_ODP : RM_REG_ALL,
			  IBV_ACCESS_LOCAL_WRITE | (windows ? IBV_ACCESS_MW_BIND : IBV_ACCESS_REMOTE_WRITE),
			  0);
	if (err)
		return err;
	if (windows) {
		mw = calloc(nmw, sizeof(*mw));
		err = mw ? bind_windows(c, reg, r, n, mw, keys) : -ENOMEM;
		if (err) {
			rm_err("transport rdma: binding type-2 memory windows on %s: %s",
			       ibv_get_device_name(c->verbs->device), rdmamig_strerror(err));
			goto undo;
		}
	} else {
		for (unsigned i = 0; i < n; i++) {
			uint32_t lkey;
			uint64_t avail;

			rm_reg_keys(reg, i, 0, r[i].size, &lkey, &keys[i], &avail);
		}
	}

	/* A seal that came meanwhile (a cancel, a failure) finds nothing yet:
	 * it is honoured here, before any key leaves. */
	pthread_mutex_lock(&c->expose_lock);
	if (atomic_load(&t->sealed)) {
		pthread_mutex_unlock(&c->expose_lock);
		err = rm_tr_check(t) ? rm_tr_check(t) : -ECANCELED;
		goto undo;
	}
	c->reg = reg;
	c->windows = windows;
	c->mw = mw;
	c->nmw = windows ? nmw : 0;
	pthread_mutex_unlock(&c->expose_lock);
	atomic_fetch_add(&rm_rdma_exposures, 1);

	for (unsigned i = 0; i < n; i++) {
		wire[i].rkey = rm_wire_put32(keys[i]);
		wire[i].addr = rm_wire_put64((uintptr_t)r[i].addr);
	}
	if (windows && t->nchan > 1) {
		/* Region i's keys for channels 1.. in wire.h's order. */
		for (unsigned i = 0; i < n; i++)
			for (unsigned ch = 1; ch < t->nchan; ch++)
				t->ctrl.keys[i * (t->nchan - 1) + ch - 1] =
					rm_wire_put32(keys[ch * n + i]);
		t->ctrl.chan_keys = true;
	}
	if (windows)
		rm_info("transport rdma: registered %u regions in %llu ms, exposed through %u type-2 "
			"memory windows bound to the %u QPs (%s)", n,
			(unsigned long long)(rm_reg_ns(reg) / 1000000), nmw, t->nchan,
			caps & RM_MW_TYPE2B ? "2B" : "2A");
	else
		rm_info("transport rdma: registered %u regions for remote write in %llu ms, as plain "
			"MRs (%s): sealing deregisters them", n,
			(unsigned long long)(rm_reg_ns(reg) / 1000000),
			odp ? "on-demand paging" : rm_rdma_no_windows ? "windows turned off" :
			"the device has no type-2 memory windows");
	return 0;

undo:
	rd_dealloc_mws(mw, nmw);
	free(mw);
	rm_reg_close(reg);
	return err;
}

int rd_seal(struct rm_transport *t)
{
	struct rd_conn *c = (struct rd_conn *)t;
	uint64_t t0 = rm_now_ns();
	unsigned live = 0;
	bool had_mr, windows = c->windows;
	int err;

	pthread_mutex_lock(&c->expose_lock);
	for (unsigned k = 0; k < c->nmw; k++)
		live += c->mw[k] != NULL;
	had_mr = c->reg && !c->windows;
	err = rd_dealloc_mws(c->mw, c->nmw);
	if (had_mr) {
		/* The MR's rkey is the exposure: deregistering ends it. */
		int e = rm_reg_close(c->reg);

		c->reg = NULL;
		if (!err)
			err = e;
	}
	if (c->stage) {
		unsigned n = 0;
		int e = rd_stage_seal(c, &n, &windows);

		live += n;
		if (!err)
			err = e;
	}
	pthread_mutex_unlock(&c->expose_lock);
	if (err)
		rm_err("transport rdma: revoking the source's access to RAM: %s: RAM may stay "
		       "exposed until the connection closes", rdmamig_strerror(err));
	else if (live || had_mr)
		rm_info("transport rdma: RAM sealed in %llu us: %s", (unsigned long long)((rm_now_ns() - t0) / 1000),
			windows ? "memory windows invalidated" : "MRs deregistered");
	return err;
}

void rd_expose_free(struct rd_conn *c)
{
	rd_stage_free(c);
	rd_dealloc_mws(c->mw, c->nmw);
	free(c->mw);
	c->mw = NULL;
	c->nmw = 0;
}

unsigned rm_rdma_exposed(struct rm_transport *t)
{
	struct rd_conn *c = (struct rd_conn *)t;
	unsigned live = 0;

	pthread_mutex_lock(&c->expose_lock);
	for (unsigned k = 0; k < c->nmw; k++)
		live += c->mw[k] != NULL;
	if (c->reg && !c->windows)
		live++;
	if (c->stage)
		live += rd_stage_exposed(c);
	pthread_mutex_unlock(&c->expose_lock);
	return live;
}
