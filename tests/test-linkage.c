/*
 * tests/test-linkage.c — the one public door: linked against librdmamig.so
 * (not the static library), this calls every function of rdmamig.h, and
 * checks that no internal name leaks out of the shared library.
 */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>

#include "rdmamig.h"

static void hook(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	(*(int *)opaque)++;
}

Test(linkage, every_public_function_links)
{
	struct rdmamig_stats st;
	struct rdmamig_opts bad = { 0 };
	int calls = 0;

	cr_assert_str_eq(rdmamig_version(), "0.1.0");
	cr_assert_str_eq(rdmamig_strerror(RDMAMIG_E_VERIFY), "guest RAM differs between source and destination");
	rdmamig_set_log(hook, &calls, RDMAMIG_LOG_DEBUG);
	rdmamig_log(RDMAMIG_LOG_INFO, "hello %d", 1);
	cr_assert_eq(calls, 1);
	errno = 0;
	cr_assert_null(rdmamig_new(&bad, NULL, NULL));
	cr_assert_eq(errno, EINVAL);
	cr_assert_eq(calls, 2, "a refused rdmamig_new says why through the hook");
	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_ERR);
	/* NULL-safe or harmless on what rdmamig_new refused. */
	rdmamig_free(NULL);
	(void)st;
	(void)rdmamig_run;
	(void)rdmamig_cancel;
	(void)rdmamig_get_stats;
	(void)rdmamig_listen_port;
}

Test(linkage, internal_names_stay_inside)
{
	void *self = dlopen(NULL, RTLD_NOW);
	const char *internal[] = { "rm_log", "rm_tr_connect", "rm_kvm_vm_create", "rm_policy_decide",
				   "rm_ram_alloc", "rm_dirty_start" };

	cr_assert_not_null(self);
	cr_assert_not_null(dlsym(self, "rdmamig_run"), "rdmamig_run not exported");
	for (unsigned i = 0; i < sizeof(internal) / sizeof(internal[0]); i++)
		cr_assert_null(dlsym(self, internal[i]), "%s leaks out of librdmamig.so", internal[i]);
	dlclose(self);
}
