/*
 * tests/test-hugepages.h — how many hugepages of a size are free here, so a
 * hugepage test can tell "this machine has none" (the backing must say so)
 * from "they are there" (the backing must work).  tests/run.sh fills the
 * pools for a run.
 */
#ifndef RDMAMIG_TESTS_HUGEPAGES_H
#define RDMAMIG_TESTS_HUGEPAGES_H

#include <stdio.h>

/* Free hugepages of size_kb (2048, 1048576); 0 when the size is not offered. */
static inline long test_free_hugepages(unsigned long size_kb)
{
	char path[128];
	long n = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/hugepages-%lukB/free_hugepages", size_kb);
	f = fopen(path, "r");
	if (!f)
		return 0;
	if (fscanf(f, "%ld", &n) != 1)
		n = 0;
	fclose(f);
	return n;
}

#endif
