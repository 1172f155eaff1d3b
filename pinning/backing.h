/*
 * pinning/backing.h — where guest RAM comes from: anonymous memory, a memfd
 * (shareable by fd), or hugetlbfs pages of 2 MiB or 1 GiB, optionally bound
 * to one NUMA node, backed by transparent huge pages, and prefaulted.  Knows nothing of KVM or of the wire; the
 * VMM maps what this returns into its guest, registration pins it.
 */
#ifndef RDMAMIG_PINNING_BACKING_H
#define RDMAMIG_PINNING_BACKING_H

#include <stdbool.h>
#include <stddef.h>

enum rm_backing_kind {
	RM_BACKING_ANON,
	RM_BACKING_MEMFD,
	RM_BACKING_HUGE_2M,
	RM_BACKING_HUGE_1G,
};

struct rm_backing_opts {
	enum rm_backing_kind kind;
	int numa_node;		/* -1: any node */
	bool numa_preferred;	/* numa_node is a preference (MPOL_PREFERRED: other
				 * nodes when it is full), not a bind */
	bool prefault;		/* touch every page now, not on first guest access */
	bool thp;		/* anon/memfd: ask for transparent huge pages
				 * (MADV_HUGEPAGE); ignored by hugetlbfs kinds */
};

struct rm_ram {
	void *addr;
	size_t size;		/* rounded up to page_size */
	size_t page_size;
	int fd;			/* memfd behind the mapping, -1 if none */
	enum rm_backing_kind kind;
};

/*
 * Allocate size bytes of RAM (rounded up to the backing's page size).
 * Returns 0 or -errno; on failure *ram is left empty (safe to rm_ram_free).
 * When hugepages are missing the error log says how many are needed and
 * which sysctl provides them.  opts == NULL means anonymous, any node, lazy.
 */
int rm_ram_alloc(struct rm_ram *ram, size_t size, const struct rm_backing_opts *opts);

/* Populate all of ram now (what opts->prefault does).  Writes every page
 * where the kernel lacks MADV_POPULATE_WRITE: only for RAM nobody has
 * written yet.  0 or -errno. */
int rm_ram_prefault(const struct rm_ram *ram);

/* Release RAM from rm_ram_alloc.  NULL-safe and safe on an empty rm_ram. */
void rm_ram_free(struct rm_ram *ram);

/* Name of a backing kind ("anon", "memfd", "huge-2M", "huge-1G"). */
const char *rm_backing_name(enum rm_backing_kind kind);

#endif
