/*
 * migration/engine.h — the engine's private state, shared by migration.c
 * (stages and messages), handover.c (COMMIT to the settled outcome, and
 * recovery) and ram.c (what RAM to send, and sending it).
 */
#ifndef RDMAMIG_MIGRATION_ENGINE_H
#define RDMAMIG_MIGRATION_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "migration/policy.h"
#include "migration/protocol.h"
#include "rdmamig.h"
#include "transport/transport.h"

struct rdmamig {
	struct rdmamig_opts opts;
	const struct rdmamig_vmm_ops *ops;
	void *vmm;

	struct rm_transport_opts topts;	/* addr and port point at the copies: */
	char *addr, *port;
	struct rm_listener *listener;
	struct rm_transport *t;
	atomic_int cancelled;
	bool refused;			/* destination: REFUSE sent */
	atomic_int listen_port;

	/* The handover (migration/protocol.h).  state is where this side is
	 * in the state table; the rest settles a lost answer. */
	enum rm_mig_state state;
	uint64_t migration_id;		/* the source's, from SETUP */
	bool got_go;			/* destination: GO arrived */
	bool ran;			/* destination: the guest was resumed here */
	bool indoubt;			/* source: GO sent, answer not known yet */
	bool paused;			/* source: the guest is paused by us */
	uint64_t t_pause;		/* source: when it was paused */
	uint64_t split_ns;		/* source: the downtime split so far */

	struct rdmamig_vm_desc desc;	/* this side's VM */
	/* Source: the VMM's dirty bitmaps from the last dirty_sync(), read
	 * only, valid until the next sync or dirty_stop; and their count. */
	const uint64_t *bitmaps[RDMAMIG_MAX_REGIONS];
	uint64_t reported;
	uint64_t npages[RDMAMIG_MAX_REGIONS];

	uint64_t start_ns;
	uint64_t last_progress_ns;
	uint64_t last_report_ns;
	struct rdmamig_progress progress;

	pthread_mutex_t lock;		/* guards stats and t against cancel */
	struct rdmamig_stats stats;
};

/* What one pass over the bitmaps sent. */
struct rm_pass {
	uint64_t pages;
	uint64_t bytes;
	uint64_t zero_pages;
	uint64_t ns;
};

/* ram.c */
/* Source, after describe(): check the layout and size the pass.  Allocates
 * nothing.  0 or -EINVAL (logged). */
int rm_ram_setup(struct rdmamig *m);
/* Ask the VMM what was dirtied since the last sync (dirty_sync): keeps its
 * bitmaps for the next pass and returns their count, or -errno (logged). */
long rm_ram_sync(struct rdmamig *m);
/* Stop dirty logging (dirty_stop) and forget the VMM's bitmaps. */
void rm_ram_dirty_stop(struct rdmamig *m);
/* Send pages, then fence if asked.  bulk: every page but those that read as
 * all zeroes (the first pass: destination RAM starts zeroed); otherwise the
 * pages the last rm_ram_sync() reported — each report must be sent before
 * the next sync, which replaces it.  0 or error. */
int rm_ram_send_pass(struct rdmamig *m, bool bulk, bool fence, struct rm_pass *out);
/* A digest of all guest RAM, the same on both sides for the same bytes. */
uint64_t rm_ram_digest(const struct rdmamig_vm_desc *desc);

/* migration.c */
bool rm_mig_cancelled(struct rdmamig *m);
/* Close this side's connection, if any. */
void rm_mig_close_transport(struct rdmamig *m);
/* Install t as this side's connection (cancel reaches it). */
void rm_mig_set_transport(struct rdmamig *m, struct rm_transport *t);
/* Send REFUSE {reason, text} to the peer, best-effort. */
void rm_mig_refuse(struct rdmamig *m, int reason, const char *text);
/* Wait up to timeout_ms (< 0: the transport's bound) for the next message
 * and run it through the state table for m->state: 0 with *msg taken and
 * m->state moved on (RM_ACT_TAKE), RDMAMIG_E_REFUSED (reason logged),
 * RDMAMIG_E_PROTO for a message outside its state, or the transport's
 * error.  Heartbeats (RM_ACT_PROGRESS) are noted and waited past. */
int rm_mig_expect(struct rdmamig *m, struct rm_msg *msg, int timeout_ms);
/* A test's fault point (common/fault.h) named by fmt: 0 to go on,
 * RDMAMIG_E_ABORTED, RM_FAULT_CUT or RM_FAULT_DROP. */
int rm_mig_fault(struct rdmamig *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A fault point at a step that sends no handover message of its own
 * ("iteration-N", "accepted", "setup", "send-STATE"): cut and drop both
 * break the link there.  0 to go on, or a negative error to fail with. */
int rm_mig_fault_step(struct rdmamig *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Break the connection as a cut link would: no BYE, no ABORT. */
void rm_mig_cut(struct rdmamig *m);
void rm_mig_set_stage(struct rdmamig *m, int stage);

/* handover.c */
/* Source, after STATE and COMMIT went out: LOADED, GO, RESUMED, and a
 * recovery if the answer is lost.  0: the destination runs the guest
 * (release it here); RDMAMIG_E_INDOUBT: unknown, the guest stays paused;
 * another error: the destination never got GO — the caller resumes. */
int rm_handover_source(struct rdmamig *m, uint64_t digest);
/* Source: the recovery the run falls back on when an error left it
 * COMMITTED (never sent GO): tell a destination that may hold the loaded
 * guest that it will not get GO, so it discards now.  Best-effort. */
void rm_handover_abandon(struct rdmamig *m);
/* Destination, COMMIT and STATE received and checked: load, LOADED, GO,
 * resume, RESUMED; serve recovery where the outcome became unknown.
 * 0 when the guest runs here; an error when it was discarded. */
int rm_handover_dest(struct rdmamig *m, const struct rm_mig_commit *commit, const struct rm_msg *state);
/* Progress callback (at most every 100 ms) and, on the source, a progress
 * report (ITER) to the destination (at most every second), unless force. */
int rm_mig_tick(struct rdmamig *m, bool force);

#endif
