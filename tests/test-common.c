/* tests/test-common.c — the log hook and error text (host suite). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"

struct captured {
	int calls;
	enum rdmamig_log_level level;
	char msg[256];
};

static void capture(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	struct captured *c = opaque;

	c->calls++;
	c->level = level;
	snprintf(c->msg, sizeof(c->msg), "%s", msg);
}

Test(common, log_hook_formats_and_filters)
{
	struct captured c = { 0 };

	rm_err("dropped: no hook yet %d", 1);
	rdmamig_set_log(capture, &c, RDMAMIG_LOG_INFO);
	rm_info("region %u at %#x", 3u, 0x1000u);
	cr_assert_eq(c.calls, 1);
	cr_assert_eq(c.level, RDMAMIG_LOG_INFO);
	cr_assert_str_eq(c.msg, "region 3 at 0x1000");
	rm_dbg("above max level: dropped");
	cr_assert_eq(c.calls, 1);
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_DEBUG);
	rm_err("no hook: dropped");
	cr_assert_eq(c.calls, 1);
}

Test(common, strerror_covers_errno_and_own_codes)
{
	cr_assert_str_eq(rdmamig_strerror(-ENOMEM), strerror(ENOMEM));
	cr_assert_str_eq(rdmamig_strerror(RDMAMIG_E_REFUSED), "the peer refused the handshake");
	cr_assert_str_eq(rdmamig_strerror(12345), "unknown error");
	cr_assert_str_eq(rdmamig_version(), "0.1.0");
}
