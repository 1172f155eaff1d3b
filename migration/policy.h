/*
 * migration/policy.h — when to switch over, and how hard to throttle: the
 * pre-copy convergence policy as pure functions, so the engine, its tests and
 * the bench model (bench/model) all follow the very same rules.
 *
 * After each iteration the engine knows what it sent, how long that took, and
 * how many bytes the guest dirtied meanwhile (still to send).  The source
 * switches over as soon as the first of these holds:
 *   1. converged: remaining / bandwidth <= downtime limit;
 *   2. the iteration cap is reached;
 *   3. a deadline is set and the next iteration would end after it.
 * Otherwise it iterates again.  Throttling (autoconverge, or implied by a
 * deadline): an iteration whose dirtied bytes exceed half of what it sent is
 * "slow"; after two slow iterations in a row the throttle starts at
 * throttle_initial, then rises by throttle_step up to throttle_max.  With a
 * deadline there is no waiting: every slow iteration raises it.
 */
#ifndef RDMAMIG_MIGRATION_POLICY_H
#define RDMAMIG_MIGRATION_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "rdmamig.h"

struct rm_policy {
	uint64_t downtime_ns;
	unsigned max_iterations;	/* iterations after the bulk pass included */
	uint64_t deadline_ns;		/* since the start; 0: none */
	bool autoconverge;
	unsigned throttle_initial, throttle_step, throttle_max;
};

struct rm_policy_state {
	unsigned slow_rounds;
	unsigned throttle;		/* percent now in force */
};

/* What one iteration measured. */
struct rm_policy_input {
	unsigned iteration;		/* index of the iteration just done, 0 = bulk */
	uint64_t sent_bytes;
	uint64_t duration_ns;		/* of that iteration, fence included */
	uint64_t remaining_bytes;	/* dirty after it (the sync that followed) */
	uint64_t elapsed_ns;		/* since the migration started */
};

/* Fill p from public options, with the documented defaults. */
void rm_policy_from_opts(struct rm_policy *p, const struct rdmamig_opts *o);

/* Bandwidth in bytes/s of an iteration (at least 1). */
uint64_t rm_policy_bandwidth(uint64_t bytes, uint64_t ns);

/* Decide after an iteration.  Returns RDMAMIG_SWITCH_NONE to iterate again
 * (s->throttle may have changed: apply it), else the reason to switch over. */
enum rdmamig_switchover rm_policy_decide(const struct rm_policy *p, struct rm_policy_state *s,
					 const struct rm_policy_input *in);

#endif
