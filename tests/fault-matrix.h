/*
 * tests/fault-matrix.h — the fault matrix's table: the steps a migration
 * meets (common/fault.h names them), the faults struck while one side is
 * held at a step, and what must come of each pair.  tests/test-fault-matrix.c
 * runs every pair on both transports and checks the outcome against
 * mx_expect(); the README's table is mx_render()'s output, and a case checks
 * that README.md still holds it.  The expectations are written from the
 * handover's rules (migration/protocol.h), not from what a run printed.
 */
#ifndef RDMAMIG_TESTS_FAULT_MATRIX_H
#define RDMAMIG_TESTS_FAULT_MATRIX_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

enum mx_step {
	MX_ACCEPTED,		/* dst: connected and authenticated, before SETUP */
	MX_SETUP,		/* dst: prepared, before SETUP_OK */
	MX_ITER0,		/* src: bulk pass sent, guest running */
	MX_STATE,		/* src: guest paused, final RAM sent, before STATE */
	MX_LOADED,		/* dst: state loaded, before LOADED */
	MX_GO,			/* src: LOADED in, before GO */
	MX_RESUMED,		/* dst: GO in, guest resumed, before RESUMED */
	MX_RECOVER,		/* src: RESUMED lost, before asking (dst runs it) */
	MX_NSTEPS,
};

enum mx_fault {
	MX_DELAY_IN,		/* hold the side there within the silence bound */
	MX_DELAY_PAST,		/* hold it 3x past the silence bound */
	MX_CUT,			/* the held side cuts its connection (RDMA: QP to error) */
	MX_DROP,		/* the held side loses the message it is about to send */
	MX_KILL_HELD,		/* SIGKILL the held side */
	MX_KILL_PEER,		/* SIGKILL the other side */
	MX_STOP_HELD,		/* SIGSTOP the held side until the other has given up */
	MX_STOP_PEER,		/* SIGSTOP the other side, likewise */
	MX_LINK_RESET,		/* TCP: the link resets (RST both ways) */
	MX_LINK_DOWN,		/* TCP: the link goes silent; RDMA: rxe's netdev down */
	MX_NFAULTS,
};

static const struct {
	const char *name;	/* common/fault.h's name */
	const char *side;	/* "src" or "dst": the side held there */
	bool message;		/* it sends a handover message: drop differs from cut */
	bool link;		/* a connection exists there */
} mx_steps[MX_NSTEPS] = {
	[MX_ACCEPTED] = { "accepted", "dst", false, true },
	[MX_SETUP] = { "setup", "dst", false, true },
	[MX_ITER0] = { "iteration-0", "src", false, true },
	[MX_STATE] = { "send-STATE", "src", false, true },
	[MX_LOADED] = { "send-LOADED", "dst", true, true },
	[MX_GO] = { "send-GO", "src", true, true },
	[MX_RESUMED] = { "send-RESUMED", "dst", true, true },
	[MX_RECOVER] = { "recover", "src", false, false },
};

static const char *const mx_fault_names[MX_NFAULTS] = {
	[MX_DELAY_IN] = "delay<bound", [MX_DELAY_PAST] = "delay>bound", [MX_CUT] = "cut",
	[MX_DROP] = "drop", [MX_KILL_HELD] = "kill held", [MX_KILL_PEER] = "kill peer",
	[MX_STOP_HELD] = "stop held", [MX_STOP_PEER] = "stop peer", [MX_LINK_RESET] = "link reset",
	[MX_LINK_DOWN] = "link down",
};

/* Who holds the guest, running, once everything has settled. */
enum mx_who {
	MX_NA,			/* the fault means nothing at this step */
	MX_SRC,			/* the source runs it; the destination discarded */
	MX_DST,			/* the destination runs it; the source released */
	MX_EITHER,		/* exactly one, settled by recovery: GO may or may
				 * not have reached a stopped destination */
	MX_LOST_SRC,		/* the source process, holding the only copy, was
				 * killed; the destination never runs it */
	MX_LOST_DST,		/* the destination, running the only copy, was
				 * killed; the source stays paused (exit 8) */
};

struct mx_outcome {
	enum mx_who who;
	bool indoubt;		/* the source's run ended RDMAMIG_E_INDOUBT (both
				 * paused, or the other side running), saying
				 * --recover; the test then asks as the operator */
};

static inline bool mx_src_side(enum mx_step s)
{
	return mx_steps[s].side[0] == 's';
}

static inline bool mx_applies(enum mx_step s, enum mx_fault f, bool rdma)
{
	if (f == MX_DROP && !mx_steps[s].message)
		return false;
	if ((f == MX_CUT || f == MX_LINK_RESET || f == MX_LINK_DOWN) && !mx_steps[s].link)
		return false;
	if (rdma && f == MX_LINK_RESET)
		return false;	/* no RST on RDMA: a QP in error is the cut row */
	/* Linux 6.1's rxe (the bed) does not come back after its netdev
	 * went down under traffic (test-fault-matrix.c, mx_bed_lock), so
	 * the recovery these two cells test — after a GO or a RESUMED lost
	 * with the link — cannot reach the other side there, and whether
	 * the source saw the port go down before it let GO go is a race
	 * with rxe's port event.  The same recovery is tested over TCP
	 * (link down: a blackhole) and RDMA's part by the cut rows. */
	if (rdma && f == MX_LINK_DOWN && (s == MX_GO || s == MX_RESUMED))
		return false;
	return true;
}

/* What must come of fault f struck while a side is held at step s. */
static inline struct mx_outcome mx_expect(enum mx_step s, enum mx_fault f, bool rdma)
{
	bool src_killed = (f == MX_KILL_HELD) == mx_src_side(s) && (f == MX_KILL_HELD || f == MX_KILL_PEER);
	bool dst_stopped = (f == MX_STOP_HELD) != mx_src_side(s) && (f == MX_STOP_HELD || f == MX_STOP_PEER);
	bool after_go = s >= MX_RESUMED;	/* the destination has run it */

	if (!mx_applies(s, f, rdma))
		return (struct mx_outcome){ MX_NA, false };
	switch (f) {
	case MX_DELAY_IN:
	case MX_DELAY_PAST:	/* keep-alives flow while a side is held */
		return (struct mx_outcome){ MX_DST, false };
	case MX_LINK_DOWN:
	case MX_CUT:
	case MX_DROP:
	case MX_LINK_RESET:
		/* A GO lost with the link is settled by asking: no GO, the
		 * source resumes; a lost RESUMED: the destination runs it. */
		return (struct mx_outcome){ after_go ? MX_DST : MX_SRC, false };
	case MX_KILL_HELD:
	case MX_KILL_PEER:
		if (src_killed)
			return (struct mx_outcome){ after_go ? MX_DST : MX_LOST_SRC, false };
		/* A destination killed before GO: the source saw it die
		 * before it let GO go, and runs on. */
		return (struct mx_outcome){ after_go ? MX_LOST_DST : MX_SRC, after_go };
	case MX_STOP_HELD:
	case MX_STOP_PEER:
		if (!dst_stopped)	/* the source stopped: its peer gives up */
			return (struct mx_outcome){ after_go ? MX_DST : MX_SRC, false };
		/* The destination stopped: a source that sent GO cannot learn
		 * the outcome while it is stopped, and says so. */
		if (s == MX_GO)
			return (struct mx_outcome){ MX_EITHER, true };
		return (struct mx_outcome){ after_go ? MX_DST : MX_SRC, after_go };
	default:
		return (struct mx_outcome){ MX_NA, false };
	}
}

/* The CLI's exit codes for the outcome (README "Exit codes"): source,
 * destination; -1 killed. */
static inline void mx_exit_codes(struct mx_outcome o, enum mx_fault f, enum mx_step s, int *src, int *dst)
{
	bool src_killed = (f == MX_KILL_HELD) == mx_src_side(s) && (f == MX_KILL_HELD || f == MX_KILL_PEER);
	bool dst_killed = (f == MX_KILL_HELD || f == MX_KILL_PEER) && !src_killed;

	*src = o.who == MX_DST ? 0 : o.who == MX_LOST_DST ? 8 : 1;
	*dst = o.who == MX_DST ? 0 : 1;
	if (src_killed)
		*src = -1;
	if (dst_killed)
		*dst = -1;
}

static inline const char *mx_who_text(enum mx_who w)
{
	switch (w) {
	case MX_SRC: return "src";
	case MX_DST: return "dst";
	case MX_EITHER: return "one";
	case MX_LOST_SRC: return "none†";
	case MX_LOST_DST: return "none‡";
	default: return "–";
	}
}

/* The README table: one row per step, one column per fault; a cell says who
 * runs the guest and the exit codes (source/destination, k: killed), with
 * "?" where the source first said the outcome is unknown.  rdma picks the
 * RDMA column set (no link reset; link down is rxe's netdev). */
static inline int mx_render(char *buf, size_t size)
{
	size_t n = 0;

#define MX_PUT(...) do { int k_ = snprintf(buf + n, n < size ? size - n : 0, __VA_ARGS__); \
		n += k_ > 0 ? (size_t)k_ : 0; } while (0)
	MX_PUT("| step (side held) |");
	for (int f = 0; f < MX_NFAULTS; f++)
		MX_PUT(" %s |", mx_fault_names[f]);
	MX_PUT("\n|---|");
	for (int f = 0; f < MX_NFAULTS; f++)
		MX_PUT("---|");
	MX_PUT("\n");
	for (int s = 0; s < MX_NSTEPS; s++) {
		MX_PUT("| %s (%s) |", mx_steps[s].name, mx_steps[s].side);
		for (int f = 0; f < MX_NFAULTS; f++) {
			struct mx_outcome o = mx_expect(s, f, false);
			int se, de;

			if (o.who == MX_NA) {
				MX_PUT(" – |");
				continue;
			}
			mx_exit_codes(o, f, s, &se, &de);
			if (o.who == MX_EITHER)
				MX_PUT(" one? 0/0·1/1 |");
			else if (se < 0 || de < 0)
				MX_PUT(" %s%s %s/%s |", mx_who_text(o.who), o.indoubt ? "?" : "",
				       se < 0 ? "k" : se == 0 ? "0" : se == 1 ? "1" : "8",
				       de < 0 ? "k" : de == 0 ? "0" : "1");
			else
				MX_PUT(" %s%s %d/%d |", mx_who_text(o.who), o.indoubt ? "?" : "", se, de);
		}
		MX_PUT("\n");
	}
#undef MX_PUT
	return n < size ? 0 : -1;
}

#endif
