/*
 * transport/register.h — registering guest RAM with an RDMA device, for the
 * RDMA backend (rdma.c is its only user in the library).
 *
 * Strategies (enum rm_reg_strategy, transport.h):
 *   all   every region registered up front, regions in parallel threads;
 *   lazy  a fixed-size chunk registered the first time a write touches it,
 *         with no round trip to the peer (source side only: a destination
 *         registers chunk by chunk ahead of the source instead, staged,
 *         publishing each chunk's keys in a READY: rdma-stage.c);
 *   odp   one on-demand-paging MR per region, where the device offers ODP:
 *         nothing pinned, pages faulted in by the NIC.
 * Before pinning, the RLIMIT_MEMLOCK check says how many bytes are needed
 * and how to raise the limit.  Knows nothing of the wire or of KVM; uses only
 * the region and strategy types of transport.h.
 */
#ifndef RDMAMIG_TRANSPORT_REGISTER_H
#define RDMAMIG_TRANSPORT_REGISTER_H

#include <infiniband/verbs.h>
#include <stdint.h>

#include "transport/transport.h"

struct rm_reg;

/*
 * Register n regions with pd.  access: IBV_ACCESS_* (0 for a source that
 * only reads its RAM).  chunk: lazy chunk size (a power of two >= 2 MiB
 * suggested; 0 = 64 MiB).  0, -ENOMEM (memlock limit, logged with the number
 * needed), -EOPNOTSUPP (odp without device support), -errno.
 */
int rm_reg_open(struct rm_reg **out, struct ibv_pd *pd, const struct rm_region *r, unsigned n,
		enum rm_reg_strategy strategy, int access, size_t chunk);

/*
 * Keys for [off, off + len) of region index idx, registering a lazy chunk on
 * first use.  *avail is how many bytes from off the same keys cover (<= len).
 * 0 or -errno.
 */
int rm_reg_keys(struct rm_reg *g, unsigned idx, uint64_t off, uint64_t len, uint32_t *lkey,
		uint32_t *rkey, uint64_t *avail);

/*
 * Staged registration (a destination registering behind its LAYOUT,
 * rdma-stage.c, which keeps its own MRs): rm_reg_access() is access plus
 * relaxed ordering where pd's device takes it (probed once per call: call
 * it once per connection); rm_reg_range() registers [addr, addr + len)
 * with those flags, adding the call's time to *ns.  NULL with errno set.
 */
int rm_reg_access(struct ibv_pd *pd, int access);
struct ibv_mr *rm_reg_range(struct ibv_pd *pd, void *addr, size_t len, int access, uint64_t *ns);

/* Deregister everything (best effort, keeps going), free g.  NULL allowed.
 * 0 or the first error. */
int rm_reg_close(struct rm_reg *g);

/* Region idx's MR (strategies all and odp), for binding memory windows;
 * NULL for lazy or an index out of range. */
struct ibv_mr *rm_reg_mr(const struct rm_reg *g, unsigned idx);

/*
 * The memory windows the device offers (ibv_query_device_ex
 * device_cap_flags): RM_MW_* bits, 0 when none or the query fails.
 */
#define RM_MW_TYPE1 1u
#define RM_MW_TYPE2A 2u
#define RM_MW_TYPE2B 4u
unsigned rm_reg_mw_caps(struct ibv_context *ctx);

/* Bytes currently registered, and time spent registering (ns). */
uint64_t rm_reg_bytes(const struct rm_reg *g);
uint64_t rm_reg_ns(const struct rm_reg *g);

/*
 * Check that `bytes` more can be pinned under RLIMIT_MEMLOCK (or that the
 * process has CAP_IPC_LOCK).  0, or -ENOMEM after logging the limit, the
 * number needed and how to raise it.
 */
int rm_memlock_check(uint64_t bytes);

/* NUMA node of an RDMA device (/sys/class/infiniband/DEV/device/numa_node),
 * or -1 when unknown. */
int rm_nic_numa_node(const char *ibdev);

#endif
