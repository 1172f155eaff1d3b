/*
 * migration/engine.h — the engine's private state, shared by migration.c
 * (stages and messages) and ram.c (what RAM to send, and sending it).
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
/* Progress callback (at most every 100 ms) and, on the source, a progress
 * report (ITER) to the destination (at most every second), unless force. */
int rm_mig_tick(struct rdmamig *m, bool force);

#endif
