/*
 * common/fault.h — test-only fault injection: lets a test hold one side of a
 * migration at a named step, so it can act (kill the peer, cancel, send a
 * signal) while that side is provably there, however fast or slow the host.
 * It is driven by one environment variable and does nothing without it:
 *
 *   RDMAMIG_FAULT="<action>:<side>:<step>:<file>[,<action>:...]"
 *
 *   action pause  hold the side at the step (below)
 *          cut    the side breaks its connection at the step, as a cut
 *                 link would (no BYE, no ABORT), before what the step names
 *          drop   the side acts as if it sent the message the step names
 *                 ("send-GO": it counts GO as sent), but it is lost: the
 *                 side breaks the connection instead of sending it
 *   side   src or dst
 *   step   a step the engine names, in the order a migration meets them:
 *          "accepted" (dst) — the transport connected and both peers
 *          authenticated, before SETUP is read; "setup" (dst) — SETUP
 *          checked and prepare() done, before SETUP_OK and the layout;
 *          "iteration-N" (src) — the source has sent iteration N and synced
 *          the dirty log, and has not yet decided whether to switch over
 *          (its guest still runs); "send-STATE" (src) — the guest paused
 *          and the final RAM sent, before the device state; "send-LOADED"
 *          (dst), "send-GO" (src), "send-RESUMED" (dst) — just before that
 *          handover message (migration/handover.c); "recover" (src) — the
 *          source, its answer lost, is about to ask the destination (its
 *          guest paused).  Below the engine: "populate" (dst) — the
 *          populator threads after their first chunk (pinning/populate.c);
 *          "register-N" (dst) — an RDMA destination registering behind its
 *          LAYOUT, before chunk N (transport/rdma-stage.c).  At the steps that send no handover message
 *          (accepted, setup, iteration-N, send-STATE) drop acts as cut.
 *   file   pause: created when the side arrives at the step (the test's
 *          proof that it is there); the side waits until the file is
 *          removed, the migration is cancelled, or RM_FAULT_MAX_PAUSE_S
 *          pass, whichever comes first.  cut, drop: created when the fault
 *          strikes.
 *
 * Several faults, comma-separated, may name different steps.  Like the rest
 * of common/, this depends on libc and the public header only.
 */
#ifndef RDMAMIG_COMMON_FAULT_H
#define RDMAMIG_COMMON_FAULT_H

#include <stdatomic.h>

#define RM_FAULT_ENV "RDMAMIG_FAULT"
#define RM_FAULT_MAX_PAUSE_S 120
#define RM_FAULT_CUT 1		/* the caller breaks its connection here */
#define RM_FAULT_DROP 2		/* the caller loses the message, then breaks */

/* side ("src"/"dst") reached step: act on RDMAMIG_FAULT if it names this
 * point.  Returns 0 to go on, RDMAMIG_E_ABORTED when *cancelled became set
 * during a pause, or RM_FAULT_CUT / RM_FAULT_DROP for the caller to act. */
int rm_fault_point(const char *side, const char *step, const atomic_int *cancelled);

#endif
