/* common/log.c — the library's only way to say anything: the embedder's hook. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>

#include "common/log.h"

struct log_hook {
	rdmamig_log_fn fn;
	void *opaque;
	enum rdmamig_log_level max_level;
};

/* The hook is meant to be set once, before any migration starts; hook_set
 * orders the field writes before the first read from another thread. */
static struct log_hook hook;
static _Atomic int hook_set;

RM_EXPORT void rdmamig_set_log(rdmamig_log_fn fn, void *opaque, enum rdmamig_log_level max_level)
{
	atomic_store(&hook_set, 0);
	hook.fn = fn;
	hook.opaque = opaque;
	hook.max_level = max_level;
	if (fn)
		atomic_store(&hook_set, 1);
}

/* This thread's capture buffer (rm_log_capture), or NULL. */
static __thread char *cap_buf;
static __thread size_t cap_len;

void rm_log_capture(char *buf, size_t len)
{
	cap_buf = len ? buf : NULL;
	cap_len = len;
	if (cap_buf)
		cap_buf[0] = '\0';
}

void rm_log(enum rdmamig_log_level level, const char *fmt, ...)
{
	bool capture = cap_buf && level <= RDMAMIG_LOG_WARN;
	char msg[1024];
	va_list ap;

	if (!capture && (!atomic_load(&hook_set) || level > hook.max_level))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (capture)
		snprintf(cap_buf, cap_len, "%s", msg);
	if (atomic_load(&hook_set) && level <= hook.max_level)
		hook.fn(hook.opaque, level, msg);
}
