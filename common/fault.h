/*
 * common/fault.h — test-only fault injection: lets a test hold one side of a
 * migration at a named step, so it can act (kill the peer, cancel, send a
 * signal) while that side is provably there, however fast or slow the host.
 * It is driven by one environment variable and does nothing without it:
 *
 *   RDMAMIG_FAULT="pause:<side>:<step>:<file>"
 *
 *   side  src or dst
 *   step  a step the engine names (see migration.c): "iteration-N" — the
 *         source has sent iteration N and synced the dirty log, and has not
 *         yet decided whether to switch over (its guest still runs)
 *   file  created when the side arrives at the step (the test's proof that it
 *         is there); the side waits until the file is removed, the migration
 *         is cancelled, or RM_FAULT_MAX_PAUSE_S pass, whichever comes first.
 *
 * Only "pause" exists today; the action field is there so that drop, delay
 * and cut can join it without changing the format.  Like the rest of
 * common/, this depends on libc and the public header only.
 */
#ifndef RDMAMIG_COMMON_FAULT_H
#define RDMAMIG_COMMON_FAULT_H

#include <stdatomic.h>

#define RM_FAULT_ENV "RDMAMIG_FAULT"
#define RM_FAULT_MAX_PAUSE_S 120

/* side ("src"/"dst") reached step: act on RDMAMIG_FAULT if it names this
 * point.  Returns 0 to go on, or RDMAMIG_E_ABORTED when *cancelled became
 * set during a pause. */
int rm_fault_point(const char *side, const char *step, const atomic_int *cancelled);

#endif
