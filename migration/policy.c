/* migration/policy.c — the convergence policy; see policy.h for the rules. */
#include "migration/policy.h"

void rm_policy_from_opts(struct rm_policy *p, const struct rdmamig_opts *o)
{
	p->downtime_ns = (uint64_t)(o->downtime_ms ? o->downtime_ms : 300) * 1000000ull;
	p->max_iterations = o->max_iterations ? o->max_iterations : 30;
	p->deadline_ns = o->deadline_ms * 1000000ull;
	p->autoconverge = o->autoconverge;
	p->throttle_initial = o->throttle_initial ? o->throttle_initial : 20;
	p->throttle_step = o->throttle_step ? o->throttle_step : 10;
	p->throttle_max = o->throttle_max ? o->throttle_max : 99;
	if (p->throttle_max > 99)
		p->throttle_max = 99;
}

uint64_t rm_policy_bandwidth(uint64_t bytes, uint64_t ns)
{
	uint64_t bw;

	if (!ns)
		ns = 1;
	bw = (uint64_t)((double)bytes * 1e9 / (double)ns);
	return bw ? bw : 1;
}

static unsigned raise_throttle(const struct rm_policy *p, unsigned t)
{
	t = t ? t + p->throttle_step : p->throttle_initial;
	return t > p->throttle_max ? p->throttle_max : t;
}

enum rdmamig_switchover rm_policy_decide(const struct rm_policy *p, struct rm_policy_state *s,
					 const struct rm_policy_input *in)
{
	uint64_t bw = rm_policy_bandwidth(in->sent_bytes, in->duration_ns);
	double next_ns = (double)in->remaining_bytes * 1e9 / (double)bw;

	if (next_ns <= (double)p->downtime_ns)
		return RDMAMIG_SWITCH_CONVERGED;
	if (in->iteration + 1 >= p->max_iterations)
		return RDMAMIG_SWITCH_MAX_ITERATIONS;
	if (p->deadline_ns && (double)in->elapsed_ns + next_ns >= (double)p->deadline_ns)
		return RDMAMIG_SWITCH_DEADLINE;

	if (p->autoconverge || p->deadline_ns) {
		bool slow = in->remaining_bytes * 2 > in->sent_bytes;

		s->slow_rounds = slow ? s->slow_rounds + 1 : 0;
		if (s->slow_rounds >= 2 || (p->deadline_ns && slow)) {
			/* With a deadline there is no time to wait and see:
			 * every slow round pushes harder. */
			s->throttle = raise_throttle(p, s->throttle);
			s->slow_rounds = 0;
		}
	}
	return RDMAMIG_SWITCH_NONE;
}
