/*
 * common/log.h — private helpers every layer shares: logging through the
 * embedder's hook, and small utilities.  Depends on nothing but libc and the
 * public header; must not include any layer's header.
 */
#ifndef RDMAMIG_COMMON_LOG_H
#define RDMAMIG_COMMON_LOG_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "rdmamig.h"

#define RM_EXPORT __attribute__((visibility("default")))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

void rm_log(enum rdmamig_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Keep the last error or warning this thread logs in buf (len bytes, cut),
 * hook or no hook, until rm_log_capture(NULL, 0): how the engine tells a
 * peer why a VMM callback refused. */
void rm_log_capture(char *buf, size_t len);

#define rm_err(...) rm_log(RDMAMIG_LOG_ERR, __VA_ARGS__)
#define rm_warn(...) rm_log(RDMAMIG_LOG_WARN, __VA_ARGS__)
#define rm_info(...) rm_log(RDMAMIG_LOG_INFO, __VA_ARGS__)
#define rm_dbg(...) rm_log(RDMAMIG_LOG_DEBUG, __VA_ARGS__)

/* Wrap a libc call that returns -1 and sets errno: return -errno instead. */
static inline int rm_errno(int ret)
{
	return ret < 0 ? -errno : ret;
}

/* CLOCK_REALTIME ns from now: the absolute time pthread_cond_timedwait wants. */
static inline struct timespec rm_abstime_in(uint64_t ns)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ns += (uint64_t)ts.tv_nsec;
	ts.tv_sec += (time_t)(ns / 1000000000ull);
	ts.tv_nsec = (long)(ns % 1000000000ull);
	return ts;
}

/* Monotonic time in nanoseconds. */
static inline uint64_t rm_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
