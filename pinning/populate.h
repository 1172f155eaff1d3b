/*
 * pinning/populate.h — populate guest RAM in background threads, in address
 * order, while the migration already runs.
 *
 * A destination created on demand (the source's shape known only when it
 * connects) used to populate all of its RAM before the first byte could
 * move: 2.5 s for 1 GiB on the test hosts, minutes for a big guest.  Instead
 * the RAM is mapped lazily and this populator faults it in behind the
 * scenes, chunk by chunk in the order the source's bulk pass sends it
 * (spans in the order given, ascending addresses within each), so the
 * receiver mostly finds its pages already there.  A receiver that gets ahead
 * of the populator faults the pages itself (a TCP receive copies into them);
 * nothing is lost either way, since a page not yet populated reads as zero,
 * which is what destination RAM holds before it is written.
 *
 * rm_populate_done() is a watermark: every byte below it (counting the spans
 * as one sequence) is populated.  What needs RAM to be present before it
 * may be used (a registration that must not fault pages in one at a time)
 * waits for the watermark to pass it.
 *
 * State: a fixed struct plus one slot per thread, whatever the RAM's size.
 * Knows nothing of KVM or of the wire.  Test-only pause point: the step
 * "populate" (common/fault.h) holds every populating thread once the first
 * chunk is done, so a test can show that data flows before population ends.
 */
#ifndef RDMAMIG_PINNING_POPULATE_H
#define RDMAMIG_PINNING_POPULATE_H

#include <stddef.h>
#include <stdint.h>

#define RM_POPULATE_MAX_SPANS 1024
#define RM_POPULATE_MAX_THREADS 16

struct rm_populate_span {
	void *addr;		/* page aligned */
	size_t size;		/* a multiple of the backing's page size */
};

struct rm_populate_opts {
	unsigned threads;	/* 0: one per online CPU, at most 4 */
	size_t chunk;		/* bytes per step, a multiple of every span's page
				 * size; 0: 4 MiB */
	const char *fault_side;	/* "src"/"dst" for the "populate" pause point; NULL: none */
};

struct rm_populator;

/* Start populating spans[0..n) (copied).  0 or -errno (nothing started). */
int rm_populate_start(struct rm_populator **out, const struct rm_populate_span *spans, unsigned n,
		      const struct rm_populate_opts *opts);

/* Bytes populated from the start, in order (the watermark).  Any thread. */
uint64_t rm_populate_done(const struct rm_populator *p);
/* Total bytes to populate. */
uint64_t rm_populate_total(const struct rm_populator *p);
/* Wall time from start to the end of population (the last chunk done, or
 * the last thread out after a cancel or an error), 0 while it runs. */
uint64_t rm_populate_ns(const struct rm_populator *p);

/* Wait until the watermark reaches bytes (capped at the total) or
 * timeout_ms passes (-1: no bound).  0, -ETIMEDOUT, the first error a
 * thread met (the watermark stops below the chunk that failed), or
 * -ECANCELED once a cancel or stop has let every thread out below it. */
int rm_populate_wait(struct rm_populator *p, uint64_t bytes, int timeout_ms);

/* Ask the threads to stop without waiting for them: each finishes the
 * chunk it is in and claims no other (a held pause point is released).
 * For when population has no more purpose but the caller must not wait
 * (a destination whose RAM has all arrived, about to run the guest).  The
 * watermark and timing stay readable; rm_populate_stop() still joins and
 * frees.  Any thread; NULL-safe. */
void rm_populate_cancel(struct rm_populator *p);

/* Stop (threads finish the chunk they are in, a held pause point is
 * released), join and free.  The RAM must stay mapped until this returns.
 * Returns the first error a thread met, 0 otherwise.  NULL-safe. */
int rm_populate_stop(struct rm_populator *p);

#endif
