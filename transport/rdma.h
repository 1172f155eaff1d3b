/*
 * transport/rdma.h — what the RDMA backend's files share: the connection
 * object, its constants and the functions rdma-cm.c (connections), rdma.c
 * (data path, completions, control ring), rdma-mw.c (exposing RAM up front,
 * the seal) and rdma-stage.c (exposing it chunk by chunk) call in each
 * other.  Private to the RDMA backend.
 */
#ifndef RDMAMIG_TRANSPORT_RDMA_H
#define RDMAMIG_TRANSPORT_RDMA_H

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include "transport/priv.h"
#include "transport/register.h"

#define RD_SLICE_MS 100
#define CTRL_BUF (64u << 10)	/* control buffer, header included */
#define RX_CTRL 32		/* control receive buffers on QP 0 */
#define RX_DATA 64		/* receive buffers on the other QPs */
#define DATA_BUF 256
#define TX_N 32			/* control send slots */
#define SQ_DEPTH 512
#define SIG_EVERY 64
/* Send-queue entries WRITEs leave free on each QP, so a MARKER or a KEEPALIVE
 * never waits behind a send queue the writer refills as fast as it drains. */
#define SQ_CTRL_RESERVE 8
/*
 * Bytes of WRITEs in flight on one QP, at most (a single larger WRITE goes
 * alone).  A KEEPALIVE or MARKER posted behind them reaches the peer only
 * after them, and the peer sees nothing of WRITEs: bounding the queue keeps
 * its silence bound a matter of time, not of our queue's depth (4 MiB drain
 * in 0.2 s at rxe's 20 MB/s).  Still far above a LAN's bandwidth-delay
 * product, so throughput does not suffer.  A WR is signalled at least every
 * quarter of it, so the bytes retire as they complete.
 */
#define INFLIGHT_BYTES (4u << 20)
#define CHAIN 32		/* WRs per ibv_post_send */
#define CQ_DEPTH (SQ_DEPTH + RX_DATA + 64)
#define CREDIT_BATCH 8		/* return grants on their own at this count */
/* The largest CTRL fragment that fits one control buffer. */
#define FRAG_MAX (CTRL_BUF - sizeof(struct rm_wire_hdr) - sizeof(struct rm_wire_ctrl))

enum { WR_WRITE = 1, WR_SEND = 2, WR_RECV = 3, WR_BIND = 4 };

struct rd_stage;

static inline uint64_t mk_wr_id(unsigned kind, unsigned chan, unsigned slot, uint64_t seq)
{
	return (uint64_t)kind << 56 | (uint64_t)chan << 48 | (uint64_t)(slot & 0xffff) << 32 |
	       (seq & 0xffffffffu);
}

struct rd_qp {
	struct rdma_cm_id *id;
	struct ibv_cq *cq;
	struct ibv_qp *qp;
	bool established;
	uint64_t posted, retired;	/* send sequence numbers */
	unsigned unsig;			/* WRITEs since the last signalled WR */
	uint64_t unsig_bytes;		/* and their bytes */
	uint64_t wbytes;		/* WRITE bytes queued, ever */
	uint64_t wbytes_done;		/* of which completed */
	uint64_t mark[SQ_DEPTH];	/* wbytes after WR seq, at seq % SQ_DEPTH */
	struct ibv_send_wr chain[CHAIN];
	struct ibv_sge sge[CHAIN];
	unsigned nchain;
	char *rx_buf;
	struct ibv_mr *rx_mr;
	unsigned rx_n;
	size_t rx_size;
};

struct rd_conn {
	struct rm_transport base;	/* first */
	/* Everything below that the data path touches — QPs, CQs, tx slots,
	 * credits — is under lock: the owner holds it inside every op, except
	 * while it sleeps in poll(), and the liveness thread takes it (trylock:
	 * it never waits for the owner) to poll the CQs and post a KEEPALIVE
	 * while the owner is away.  While the owner is in, rd_progress() posts
	 * the keep-alives that are due. */
	pthread_mutex_t lock;
	struct rdma_event_channel *ec;
	struct ibv_context *verbs;
	struct ibv_pd *pd;
	struct ibv_comp_channel *comp;
	struct rd_qp q[RM_WIRE_MAX_CHANNELS];
	char *tx_buf;
	struct ibv_mr *tx_mr;
	uint64_t tx_free;		/* bitmap of free tx slots */
	unsigned credits;		/* peer's QP 0 buffers we may send into */
	unsigned peer_rx;		/* how many it posted: credits never exceed */
	unsigned grant;			/* our reposted buffers not yet reported */
	bool in_progress;		/* guards re-entry from the receive path */
	struct rm_reg *reg;
	unsigned next_chan;
	/* Destination: how RAM is exposed to the source (rdma-mw.c).  Under
	 * expose_lock, never held while taking lock: the seal op runs on any
	 * thread, inside an op's lock or not. */
	pthread_mutex_t expose_lock;
	bool windows;			/* reg is local only; mw[] expose it */
	unsigned nmw;
	struct ibv_mw **mw;		/* nchan * nregions, NULL once revoked */
	/* Destination, staged registration behind the LAYOUT (rdma-stage.c);
	 * NULL for an up-front one. */
	struct rd_stage *stage;
	bool layout_posted;		/* under lock: LAYOUT went out on QP 0 */
};

extern const struct rm_transport_ops rm_transport_rdma_ops;

/* rdma-cm.c */
int rd_listen(const struct rm_transport_opts *in, struct rm_listener **out);
int rd_accept(struct rm_listener *lp, uint64_t deadline, struct rm_transport **out);
void rd_listener_close(struct rm_listener *lp);
int rd_connect(const struct rm_transport_opts *o, uint64_t session, uint64_t deadline,
	       struct rm_transport **out);
/* Best effort, keeps going, reports the first error; frees c. */
int rd_teardown(struct rd_conn *c);

/* rdma-mw.c */
/* The destination's part of the layout op, up front: register RAM and expose it to
 * this connection's QPs; fills wire[].rkey/.addr and t->ctrl.keys. */
int rd_expose(struct rd_conn *c, const struct rm_region *r, unsigned n,
	      struct rm_wire_region *wire);
int rd_seal(struct rm_transport *t);
/* Bind one window over [addr, addr + len) of mr on channel chan; *rkey is
 * the key it will answer to.  With c->lock held. */
int rd_post_bind(struct rd_conn *c, unsigned chan, struct ibv_mw *mw, struct ibv_mr *mr,
		 void *addr, uint64_t len, uint32_t *rkey);
/* Deallocate every window of mw[0..nmw) left (NULL-safe), NULLing each one
 * that went; 0 or the first -errno (those stay, for teardown to retry). */
int rd_dealloc_mws(struct ibv_mw **mw, unsigned nmw);
/* Teardown: revoke what is left, free the window list. */
void rd_expose_free(struct rd_conn *c);

/* rdma-stage.c: a destination's registration behind a staged LAYOUT,
 * and its part of the seal. */
/* The layout op, staged: start the registration thread; fills wire[].addr
 * (no keys) and t->ctrl.chunk_shift.  0, or -errno before anything ran. */
int rd_stage_start(struct rd_conn *c, const struct rm_region *r, unsigned n,
		   struct rm_wire_region *wire);
/* With expose_lock held: stop the thread, wait (when the connection is
 * healthy and the caller is not the thread) until it has put down a chunk
 * it holds in hand, and revoke every chunk it exposed.  *live: how many
 * exposures were revoked; *windows: windows (else MRs).  0 or the first
 * -errno. */
int rd_stage_seal(struct rd_conn *c, unsigned *live, bool *windows);
/* With expose_lock held: the live exposures (bound windows, plain MRs). */
unsigned rd_stage_exposed(struct rd_conn *c);
/* Registered bytes and time of the registration calls so far. */
void rd_stage_cost(struct rd_conn *c, uint64_t *bytes, uint64_t *ns);
/* Teardown: stop and join the thread, undo everything, free. */
void rd_stage_free(struct rd_conn *c);

/* rdma.c */
int rd_post_recv(struct rd_conn *c, unsigned i, unsigned slot);
/* Post one control message now if it fits (a tx slot, a send-queue entry,
 * a credit), else -EAGAIN; with c->lock held. */
int rd_post_now(struct rd_conn *c, unsigned chan, uint16_t type, const void *body, size_t blen);
/* Handle completions and cm events, waiting at most a slice: 0 or error.
 * With c->lock held; it is dropped while poll() sleeps. */
int rd_progress(struct rd_conn *c, uint64_t deadline);
/* Wait until each QP i has retired its sends up to want[i] (want NULL:
 * every send posted so far), with c->lock held: 0, the connection's error,
 * or -ETIMEDOUT at the deadline.  step makes progress between checks:
 * NULL is rd_progress, which sleeps in poll(); a thread that must not
 * (the staging thread) passes its own. */
int rd_wait_retired(struct rd_conn *c, const uint64_t *want, uint64_t deadline,
		    int (*step)(struct rd_conn *c, uint64_t deadline));

#endif
