/*
 * rdmamig.h — the one public header of librdmamig, an RDMA-first live-migration
 * transport for KVM virtual machines.
 *
 * Conventions: every int-returning function returns >= 0 on success and
 * -errno on failure; pointer-returning functions return NULL and set errno.
 * The library never prints and never exits: it reports through the log hook
 * installed with rdmamig_set_log().  Handles are opaque.
 */
#ifndef RDMAMIG_H
#define RDMAMIG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RDMAMIG_VERSION_MAJOR 0
#define RDMAMIG_VERSION_MINOR 1
#define RDMAMIG_VERSION_PATCH 0

/* Version of the library actually linked, as "MAJOR.MINOR.PATCH". */
const char *rdmamig_version(void);

/* Log levels, most severe first. */
enum rdmamig_log_level {
	RDMAMIG_LOG_ERR = 3,
	RDMAMIG_LOG_WARN = 4,
	RDMAMIG_LOG_INFO = 6,
	RDMAMIG_LOG_DEBUG = 7,
};

/*
 * Log hook.  Called from whichever library thread has something to say,
 * possibly concurrently: it must be thread-safe.  msg has no trailing newline.
 * With no hook installed the library is silent.
 */
typedef void (*rdmamig_log_fn)(void *opaque, enum rdmamig_log_level level, const char *msg);

/* Install (or with fn == NULL, remove) the process-wide log hook.  Messages
 * above max_level are dropped before they are formatted. */
void rdmamig_set_log(rdmamig_log_fn fn, void *opaque, enum rdmamig_log_level max_level);

/*
 * Text for an error returned by the library (a negative errno, or one of the
 * library's own codes below).  Never NULL.
 */
const char *rdmamig_strerror(int err);

/* The library's own error codes, beyond errno's range. */
enum rdmamig_error {
	RDMAMIG_E_PROTO = -1000,	/* the peer broke the wire protocol */
	RDMAMIG_E_REFUSED = -1001,	/* the peer refused the handshake */
	RDMAMIG_E_ABORTED = -1002,	/* the peer (or the user) aborted */
	RDMAMIG_E_WC = -1003,		/* an RDMA work completion failed */
};

#ifdef __cplusplus
}
#endif
#endif /* RDMAMIG_H */
