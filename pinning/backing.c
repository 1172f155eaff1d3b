/*
 * pinning/backing.c — guest RAM backings.  Every mapping is MAP_NORESERVE-free
 * and page aligned; hugetlb kinds go through a memfd so the RAM has an fd like
 * the memfd kind (a VMM can share it with another process).
 */
#include <linux/memfd.h>
#include <numaif.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/log.h"
#include "pinning/backing.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

const char *rm_backing_name(enum rm_backing_kind kind)
{
	switch (kind) {
	case RM_BACKING_ANON: return "anon";
	case RM_BACKING_MEMFD: return "memfd";
	case RM_BACKING_HUGE_2M: return "huge-2M";
	case RM_BACKING_HUGE_1G: return "huge-1G";
	}
	return "unknown";
}

static size_t backing_page_size(enum rm_backing_kind kind)
{
	switch (kind) {
	case RM_BACKING_HUGE_2M: return 2ul << 20;
	case RM_BACKING_HUGE_1G: return 1ul << 30;
	default: return (size_t)sysconf(_SC_PAGESIZE);
	}
}

/* Read one number from a sysfs file; -1 when it cannot be read. */
static long read_sysfs_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

/* Say exactly what is missing, since "Cannot allocate memory" alone sends
 * people looking in the wrong place. */
static void explain_missing_hugepages(size_t size, size_t page_size, int err)
{
	unsigned long kib = page_size >> 10;
	unsigned long need = size / page_size;
	char path[128];
	long total, free_pages;

	snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/hugepages-%lukB/nr_hugepages", kib);
	total = read_sysfs_long(path);
	snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/hugepages-%lukB/free_hugepages", kib);
	free_pages = read_sysfs_long(path);
	if (total < 0) {
		rm_err("backing: %lu kB hugepages are not offered by this kernel (%s)", kib, strerror(-err));
		return;
	}
	if (page_size == (2ul << 20))
		rm_err("backing: need %lu free 2 MiB hugepages for %zu MiB of RAM, %ld free of %ld (%s); "
		       "set sysctl vm.nr_hugepages=%lu or write it to "
		       "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
		       need, size >> 20, free_pages, total, strerror(-err), (unsigned long)total + need);
	else
		rm_err("backing: need %lu free 1 GiB hugepages for %zu MiB of RAM, %ld free of %ld (%s); "
		       "write %lu to /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages "
		       "(or boot with hugepagesz=1G hugepages=%lu)",
		       need, size >> 20, free_pages, total, strerror(-err),
		       (unsigned long)total + need, need);
}

/* Touch every page, writing, so the guest (and the NIC) never pays first-touch
 * faults.  MADV_POPULATE_WRITE does it in the kernel; older kernels get a loop. */
static int prefault(void *addr, size_t size, size_t page_size)
{
	if (madvise(addr, size, MADV_POPULATE_WRITE) == 0)
		return 0;
	if (errno != EINVAL)
		return -errno;
	for (size_t off = 0; off < size; off += page_size)
		((volatile char *)addr)[off] = 0;
	return 0;
}

int rm_ram_alloc(struct rm_ram *ram, size_t size, const struct rm_backing_opts *opts)
{
	static const struct rm_backing_opts defaults = { .kind = RM_BACKING_ANON, .numa_node = -1 };
	int flags = MAP_SHARED;
	int ret;

	if (!opts)
		opts = &defaults;
	*ram = (struct rm_ram){ .fd = -1, .kind = opts->kind };
	if (!size)
		return -EINVAL;
	ram->page_size = backing_page_size(opts->kind);
	ram->size = (size + ram->page_size - 1) & ~(ram->page_size - 1);

	switch (opts->kind) {
	case RM_BACKING_ANON:
		flags = MAP_PRIVATE | MAP_ANONYMOUS;
		break;
	case RM_BACKING_MEMFD:
		ram->fd = memfd_create("rdmamig-ram", MFD_CLOEXEC);
		break;
	case RM_BACKING_HUGE_2M:
		ram->fd = memfd_create("rdmamig-ram-2M", MFD_CLOEXEC | MFD_HUGETLB | MFD_HUGE_2MB);
		break;
	case RM_BACKING_HUGE_1G:
		ram->fd = memfd_create("rdmamig-ram-1G", MFD_CLOEXEC | MFD_HUGETLB | MFD_HUGE_1GB);
		break;
	default:
		return -EINVAL;
	}
	if (opts->kind != RM_BACKING_ANON) {
		if (ram->fd < 0) {
			ret = -errno;
			if (opts->kind == RM_BACKING_HUGE_2M || opts->kind == RM_BACKING_HUGE_1G)
				explain_missing_hugepages(ram->size, ram->page_size, ret);
			else
				rm_err("backing: memfd_create: %s", strerror(-ret));
			goto fail;
		}
		if (ftruncate(ram->fd, (off_t)ram->size) < 0) {
			ret = -errno;
			rm_err("backing: sizing the %s memfd to %zu bytes: %s",
			       rm_backing_name(opts->kind), ram->size, strerror(-ret));
			goto close_fd;
		}
	}

	ram->addr = mmap(NULL, ram->size, PROT_READ | PROT_WRITE, flags, ram->fd, 0);
	if (ram->addr == MAP_FAILED) {
		ret = -errno;
		ram->addr = NULL;
		/* hugetlbfs reserves pages at mmap time: this is where a shortage shows. */
		if (opts->kind == RM_BACKING_HUGE_2M || opts->kind == RM_BACKING_HUGE_1G)
			explain_missing_hugepages(ram->size, ram->page_size, ret);
		else
			rm_err("backing: mmap of %zu bytes (%s): %s", ram->size,
			       rm_backing_name(opts->kind), strerror(-ret));
		goto close_fd;
	}

	if (opts->numa_node >= 0) {
		unsigned long mask[16] = { 0 };

		if (opts->numa_node >= (int)(sizeof(mask) * 8)) {
			ret = -EINVAL;
			rm_err("backing: NUMA node %d out of range", opts->numa_node);
			goto unmap;
		}
		mask[opts->numa_node / (8 * sizeof(long))] |= 1ul << (opts->numa_node % (8 * sizeof(long)));
		/* Bind before the first touch: pages land where they are first faulted. */
		if (mbind(ram->addr, ram->size, opts->numa_preferred ? MPOL_PREFERRED : MPOL_BIND, mask,
			  sizeof(mask) * 8, opts->numa_preferred ? 0 : MPOL_MF_STRICT) < 0) {
			ret = -errno;
			rm_err("backing: binding %zu MiB to NUMA node %d: %s", ram->size >> 20,
			       opts->numa_node, strerror(-ret));
			goto unmap;
		}
	}

	/* Before the first touch, so that the first fault of each 2 MiB
	 * already gets a huge page.  The kernel may refuse (THP "never", or a
	 * shmem memfd with shmem_enabled "never"): then the RAM stays on 4 KiB
	 * pages, slower to populate and register but correct. */
	if (opts->thp && (opts->kind == RM_BACKING_ANON || opts->kind == RM_BACKING_MEMFD) &&
	    madvise(ram->addr, ram->size, MADV_HUGEPAGE))
		rm_info("backing: no transparent huge pages for %zu MiB (%s): %s", ram->size >> 20,
			rm_backing_name(opts->kind), strerror(errno));

	if (opts->prefault) {
		ret = prefault(ram->addr, ram->size, ram->page_size);
		if (ret < 0) {
			rm_err("backing: prefaulting %zu MiB (%s): %s", ram->size >> 20,
			       rm_backing_name(opts->kind), strerror(-ret));
			goto unmap;
		}
	}
	return 0;

unmap:
	munmap(ram->addr, ram->size);
	ram->addr = NULL;
close_fd:
	if (ram->fd >= 0)
		close(ram->fd);
	ram->fd = -1;
fail:
	ram->size = 0;
	return ret;
}

int rm_ram_prefault(const struct rm_ram *ram)
{
	return prefault(ram->addr, ram->size, ram->page_size);
}

void rm_ram_free(struct rm_ram *ram)
{
	if (!ram)
		return;
	if (ram->addr)
		munmap(ram->addr, ram->size);
	if (ram->fd >= 0)
		close(ram->fd);
	*ram = (struct rm_ram){ .fd = -1 };
}
