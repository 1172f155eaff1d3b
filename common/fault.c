/* common/fault.c — RDMAMIG_FAULT, the test-only pause points (see fault.h). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fault.h"
#include "common/log.h"

#define POLL_US 5000

/* Split "action:side:step:file" into its four fields (in buf). */
static int parse(const char *spec, char *buf, size_t size, char *field[4])
{
	char *p = buf;

	if (snprintf(buf, size, "%s", spec) >= (int)size)
		return -ENAMETOOLONG;
	for (int i = 0; i < 4; i++) {
		field[i] = p;
		p = i < 3 ? strchr(p, ':') : NULL;
		if (i < 3 && !p)
			return -EINVAL;
		if (p)
			*p++ = '\0';
	}
	return field[0][0] && field[1][0] && field[2][0] && field[3][0] ? 0 : -EINVAL;
}

static int pause_at(const char *side, const char *step, const char *file, const atomic_int *cancelled)
{
	uint64_t end = rm_now_ns() + RM_FAULT_MAX_PAUSE_S * 1000000000ull;
	int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd < 0) {
		rm_err("fault: cannot create %s to pause %s at %s: %s", file, side, step, strerror(errno));
		return 0;
	}
	dprintf(fd, "%s %s %d\n", side, step, (int)getpid());
	close(fd);
	rm_warn("fault: %s paused at %s until %s is removed", side, step, file);
	while (access(file, F_OK) == 0) {
		if (atomic_load(cancelled)) {
			unlink(file);
			rm_warn("fault: %s cancelled while paused at %s", side, step);
			return RDMAMIG_E_ABORTED;
		}
		if (rm_now_ns() > end) {
			unlink(file);
			rm_warn("fault: %s resumes at %s after %d s: nobody released it", side, step,
				RM_FAULT_MAX_PAUSE_S);
			return 0;
		}
		usleep(POLL_US);
	}
	rm_warn("fault: %s released at %s", side, step);
	return 0;
}

/* cut and drop leave a file behind as the test's proof that they struck. */
static int strike(const char *side, const char *step, const char *file, int what)
{
	int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd >= 0) {
		dprintf(fd, "%s %s %d\n", side, step, (int)getpid());
		close(fd);
	}
	rm_warn("fault: %s %s at %s", side, what == RM_FAULT_CUT ? "cuts the link" : "drops the message",
		step);
	return what;
}

int rm_fault_point(const char *side, const char *step, const atomic_int *cancelled)
{
	const char *spec = getenv(RM_FAULT_ENV);
	char one[512], buf[512], *f[4];

	while (spec && *spec) {
		const char *comma = strchr(spec, ',');
		size_t n = comma ? (size_t)(comma - spec) : strlen(spec);

		snprintf(one, sizeof(one), "%.*s", (int)(n < sizeof(one) ? n : sizeof(one) - 1), spec);
		spec = comma ? comma + 1 : NULL;
		if (parse(one, buf, sizeof(buf), f)) {
			rm_err("fault: \"%s\" in %s is not action:side:step:file", one, RM_FAULT_ENV);
			continue;
		}
		if (strcmp(f[1], side) || strcmp(f[2], step))
			continue;
		if (!strcmp(f[0], "pause"))
			return pause_at(side, step, f[3], cancelled);
		if (!strcmp(f[0], "cut"))
			return strike(side, step, f[3], RM_FAULT_CUT);
		if (!strcmp(f[0], "drop"))
			return strike(side, step, f[3], RM_FAULT_DROP);
		rm_err("fault: unknown action \"%s\" in %s", f[0], RM_FAULT_ENV);
	}
	return 0;
}
