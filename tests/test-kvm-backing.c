/*
 * tests/test-kvm-backing.c — guest RAM backings: anonymous and memfd RAM is
 * usable, prefaulted on request, and memfd RAM has an fd that maps the same
 * pages; a hugepage backing works with the right page size wherever the
 * pages are free (tests/run.sh reserves them), and elsewhere fails with a
 * message saying how many pages are needed and which sysctl gives them; a
 * NUMA binding to node 0 works.  Host suite: no KVM needed.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "common/log.h"
#include "pinning/backing.h"
#include "test-hugepages.h"

static char last_err[1024];

static void hook(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	(void)opaque;
	if (level <= RDMAMIG_LOG_ERR)
		snprintf(last_err, sizeof(last_err), "%s", msg);
}

static void setup(void)
{
	last_err[0] = '\0';
	rdmamig_set_log(hook, NULL, RDMAMIG_LOG_INFO);
}

TestSuite(backing, .init = setup);

static void use(struct rm_ram *ram)
{
	for (size_t off = 0; off < ram->size; off += ram->page_size)
		((volatile uint8_t *)ram->addr)[off] = (uint8_t)(off >> 12);
	for (size_t off = 0; off < ram->size; off += ram->page_size)
		cr_assert_eq(((uint8_t *)ram->addr)[off], (uint8_t)(off >> 12));
}

Test(backing, anon_and_memfd)
{
	const enum rm_backing_kind kinds[] = { RM_BACKING_ANON, RM_BACKING_MEMFD };

	for (unsigned k = 0; k < 2; k++) {
		struct rm_backing_opts o = { .kind = kinds[k], .numa_node = -1, .prefault = true };
		struct rm_ram ram;

		cr_assert_eq(rm_ram_alloc(&ram, (8 << 20) + 1, &o), 0, "%s: %s", rm_backing_name(kinds[k]), last_err);
		cr_expect_eq(ram.size, (8 << 20) + 4096, "size rounds up to the page size");
		cr_expect_eq(ram.page_size, 4096);
		cr_expect_eq(ram.fd >= 0, kinds[k] == RM_BACKING_MEMFD);
		cr_expect_eq(ram.kind, kinds[k]);
		use(&ram);
		if (ram.fd >= 0) {
			uint8_t *again = mmap(NULL, ram.size, PROT_READ, MAP_SHARED, ram.fd, 0);

			cr_assert_neq(again, MAP_FAILED);
			cr_expect_eq(again[5 * 4096], 5, "the fd maps other pages than the RAM");
			munmap(again, ram.size);
		}
		rm_ram_free(&ram);
		cr_expect_null(ram.addr);
		rm_ram_free(&ram);	/* twice is fine */
	}
	rm_ram_free(NULL);
}

Test(backing, hugepages_work_or_say_what_is_missing)
{
	const enum rm_backing_kind kinds[] = { RM_BACKING_HUGE_2M, RM_BACKING_HUGE_1G };

	for (unsigned k = 0; k < 2; k++) {
		struct rm_backing_opts o = { .kind = kinds[k], .numa_node = -1, .prefault = true };
		size_t page = kinds[k] == RM_BACKING_HUGE_2M ? 2u << 20 : 1u << 30;
		struct rm_ram ram;
		int ret;

		long free_pages = test_free_hugepages(page >> 10);

		last_err[0] = '\0';
		ret = rm_ram_alloc(&ram, 2 * page, &o);
		if (free_pages >= 2)
			cr_assert_eq(ret, 0, "%s: %ld pages free, yet: %s", rm_backing_name(kinds[k]), free_pages,
				     last_err);
		if (ret == 0) {
			cr_expect_eq(ram.page_size, page);
			use(&ram);
			printf("%s: 2 pages allocated\n", rm_backing_name(kinds[k]));
		} else {
			printf("%s: not here, %ld free (%s)\n", rm_backing_name(kinds[k]), free_pages, last_err);
			cr_expect_null(ram.addr);
			cr_expect(strstr(last_err, "hugepages"), "message: %s", last_err);
			cr_expect(strstr(last_err, kinds[k] == RM_BACKING_HUGE_2M ? "need 2 free 2 MiB hugepages"
						   : "1 GiB") || strstr(last_err, "not offered"),
				  "message does not say how many: %s", last_err);
			cr_expect(strstr(last_err, "nr_hugepages") || strstr(last_err, "not offered"),
				  "message does not say how to get them: %s", last_err);
		}
		rm_ram_free(&ram);
	}
}

Test(backing, numa_node_zero)
{
	struct rm_backing_opts o = { .kind = RM_BACKING_ANON, .numa_node = 0, .prefault = true };
	struct rm_ram ram;

	cr_assert_eq(rm_ram_alloc(&ram, 4 << 20, &o), 0, "%s", last_err);
	use(&ram);
	rm_ram_free(&ram);

	o.numa_node = 4000;
	cr_expect_lt(rm_ram_alloc(&ram, 4 << 20, &o), 0);
	cr_expect_null(ram.addr);
}
