/*
 * tests/test-linkage.c — the one public door: linked against librdmamig.so
 * alone (not the static libraries), this calls every function of rdmamig.h
 * through the shared library, and checks that no internal name leaks out.
 *
 * public_functions[] is what this file references: tests/check-exports.sh
 * compares the names this object leaves undefined with what the library
 * exports and with include/librdmamig.map, so a function missing from any of
 * them fails `make test`.
 */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "fake-vmm.h"
#include "rdmamig.h"

#define PUBLIC(fn) { #fn, (void (*)(void))(fn) }

/* Every function of rdmamig.h, by name and address. */
static const struct {
	const char *name;
	void (*fn)(void);
} public_functions[] = {
	PUBLIC(rdmamig_version),
	PUBLIC(rdmamig_set_log),
	PUBLIC(rdmamig_strerror),
	PUBLIC(rdmamig_new),
	PUBLIC(rdmamig_run),
	PUBLIC(rdmamig_cancel),
	PUBLIC(rdmamig_get_stats),
	PUBLIC(rdmamig_listen_port),
	PUBLIC(rdmamig_free),
	PUBLIC(rdmamig_log),
};

static void hook(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	(*(int *)opaque)++;
}

/* Each address this binary holds is the one the dynamic linker finds by
 * name: the function resolved from librdmamig.so, not from anywhere else. */
Test(linkage, every_public_function_resolves_from_the_library)
{
	void *lib = dlopen("librdmamig.so.0", RTLD_NOW | RTLD_NOLOAD);

	cr_assert_not_null(lib, "librdmamig.so.0 is not loaded: %s", dlerror());
	for (unsigned i = 0; i < sizeof(public_functions) / sizeof(public_functions[0]); i++) {
		void *sym = dlsym(lib, public_functions[i].name);

		cr_assert_not_null(sym, "%s is not exported", public_functions[i].name);
		cr_assert_eq(sym, (void *)public_functions[i].fn, "%s resolves elsewhere",
			     public_functions[i].name);
	}
	dlclose(lib);
}

static void *run_thread(void *arg)
{
	return (void *)(intptr_t)rdmamig_run(arg);
}

Test(linkage, every_public_function_works)
{
	struct rdmamig_opts bad = { 0 };
	struct rdmamig_opts dst = {
		.role = RDMAMIG_DESTINATION, .transport = RDMAMIG_TRANSPORT_TCP,
		.addr = "127.0.0.1", .port = "0", .timeout_ms = 2000,
		.psk = "linkage test key", .psk_len = 16,
	};
	struct rdmamig_stats st;
	struct fake_vmm vmm;
	pthread_t thread;
	void *ret;
	rdmamig_t *m;
	int calls = 0, port = -1;

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
	rdmamig_free(NULL);

	/* A destination that listens, is cancelled before any source comes,
	 * and says so: run, listen_port, cancel and get_stats for real. */
	cr_assert_eq(fake_vmm_init(&vmm, 1, 1 << 20, 0), 0);
	m = rdmamig_new(&dst, &fake_ops, &vmm);
	cr_assert_not_null(m, "rdmamig_new: %s", strerror(errno));
	cr_assert_eq(pthread_create(&thread, NULL, run_thread, m), 0);
	for (int i = 0; i < 500 && (port = rdmamig_listen_port(m)) <= 0; i++)
		usleep(10000);
	cr_assert_gt(port, 0, "the destination never listened (%d)", port);
	rdmamig_cancel(m);
	cr_assert_eq(pthread_join(thread, &ret), 0);
	cr_assert_eq((int)(intptr_t)ret, RDMAMIG_E_ABORTED, "rdmamig_run returned %d",
		     (int)(intptr_t)ret);
	memset(&st, 0xa5, sizeof(st));
	rdmamig_get_stats(m, &st);
	cr_assert_eq(st.switchover, RDMAMIG_SWITCH_NONE);
	cr_assert_eq(st.bytes, 0);
	rdmamig_free(m);
	fake_vmm_destroy(&vmm);
	cr_assert_eq(rdmamig_recover(NULL), -EINVAL, "nothing to recover");
	cr_assert_str_eq(rdmamig_strerror(RDMAMIG_E_INDOUBT),
			 "the outcome of the handover is unknown; the guest stays paused");
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
