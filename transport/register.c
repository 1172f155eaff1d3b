/*
 * transport/register.c — memory registration strategies (all / lazy / odp), the
 * RLIMIT_MEMLOCK check and the NIC's NUMA node.  See register.h.
 *
 * Relaxed ordering: every MR asks for IBV_ACCESS_RELAXED_ORDERING where the
 * device takes it.  Verbs offers no capability bit for it: it is an
 * "optional" access flag (IBV_ACCESS_OPTIONAL_RANGE), which libibverbs passes
 * through ibv_reg_mr_iova2() and masks on a kernel that cannot take optional
 * flags, and which kernel drivers honour (mlx5, where the device and PCIe
 * allow) or drop (efa, mana, rxe since the fix to 02ed253770fb).  Some rxe
 * kernels between those two commits refused it with EINVAL instead, so the
 * one way to ask is to register one page with it: rm_reg_open() does that
 * once and uses the flag only if the device took it.  Relaxed ordering lets
 * the NIC's writes into RAM land out of order; nothing here reads RAM for a
 * flag written by an RDMA WRITE — the destination learns that writes have
 * landed from a SEND's completion, which the NIC writes strictly ordered
 * after them — so the order does not matter to the protocol.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common/log.h"
#include "transport/register.h"

struct reg_region {
	void *addr;
	uint64_t size;
	struct ibv_mr *mr;		/* all, odp */
	struct ibv_mr **chunk;		/* lazy: one per chunk, NULL until used */
	size_t nchunks;
	int err;			/* parallel registration result */
};

struct rm_reg {
	struct ibv_pd *pd;
	enum rm_reg_strategy strategy;
	int access;
	size_t chunk;
	unsigned n;
	uint64_t bytes, ns;
	struct reg_region r[];
};

static int has_cap_ipc_lock(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	unsigned long long eff = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "CapEff: %llx", &eff) == 1)
			break;
	fclose(f);
	return (eff >> 14) & 1;	/* CAP_IPC_LOCK */
}

int rm_memlock_check(uint64_t bytes)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_MEMLOCK, &rl) < 0)
		return -errno;
	if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= bytes || has_cap_ipc_lock())
		return 0;
	rm_err("registering guest RAM pins %llu KiB but RLIMIT_MEMLOCK allows %llu KiB: "
	       "raise it with `ulimit -l %llu` (or `ulimit -l unlimited`), LimitMEMLOCK= in a "
	       "systemd unit, or a memlock line in /etc/security/limits.conf",
	       (unsigned long long)(bytes >> 10), (unsigned long long)(rl.rlim_cur >> 10),
	       (unsigned long long)((bytes + 1023) >> 10));
	return -ENOMEM;
}

int rm_nic_numa_node(const char *ibdev)
{
	char path[256];
	FILE *f;
	int node = -1;

	if (!ibdev || strchr(ibdev, '/'))
		return -1;
	snprintf(path, sizeof(path), "/sys/class/infiniband/%s/device/numa_node", ibdev);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%d", &node) != 1)
		node = -1;
	fclose(f);
	return node < 0 ? -1 : node;
}

/* IBV_ACCESS_RELAXED_ORDERING if pd's device takes it, else 0 (see top). */
static int relaxed_ordering(struct ibv_pd *pd)
{
	size_t page = 4096;
	void *buf = aligned_alloc(page, page);
	struct ibv_mr *mr;

	if (!buf)
		return 0;
	mr = ibv_reg_mr(pd, buf, page, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_RELAXED_ORDERING);
	if (mr)
		ibv_dereg_mr(mr);
	free(buf);
	rm_dbg("registration: %s %s relaxed ordering", ibv_get_device_name(pd->context->device),
	       mr ? "takes (or silently drops)" : "refuses");
	return mr ? IBV_ACCESS_RELAXED_ORDERING : 0;
}

int rm_reg_access(struct ibv_pd *pd, int access)
{
	return access | relaxed_ordering(pd);
}

struct ibv_mr *rm_reg_range(struct ibv_pd *pd, void *addr, size_t len, int access, uint64_t *ns)
{
	uint64_t t0 = rm_now_ns();
	struct ibv_mr *mr = ibv_reg_mr(pd, addr, len, access);

	if (!mr && !errno)
		errno = ENOMEM;
	*ns += rm_now_ns() - t0;
	return mr;
}

struct reg_job {
	struct rm_reg *g;
	unsigned idx;
};

static void *reg_one(void *arg)
{
	struct reg_job *j = arg;
	struct reg_region *r = &j->g->r[j->idx];
	int access = j->g->access | (j->g->strategy == RM_REG_ODP ? IBV_ACCESS_ON_DEMAND : 0);

	r->mr = ibv_reg_mr(j->g->pd, r->addr, r->size, access);
	r->err = r->mr ? 0 : -(errno ? errno : ENOMEM);
	return NULL;
}

static int odp_supported(struct ibv_context *ctx)
{
	struct ibv_device_attr_ex attr;

	memset(&attr, 0, sizeof(attr));
	if (ibv_query_device_ex(ctx, NULL, &attr))
		return 0;
	return !!(attr.odp_caps.general_caps & IBV_ODP_SUPPORT);
}

int rm_reg_open(struct rm_reg **out, struct ibv_pd *pd, const struct rm_region *r, unsigned n,
		enum rm_reg_strategy strategy, int access, size_t chunk)
{
	struct rm_reg *g;
	uint64_t total = 0, t0 = rm_now_ns();
	pthread_t th[RM_WIRE_MAX_REGIONS];
	struct reg_job job[RM_WIRE_MAX_REGIONS];
	int err = 0;

	if (!pd || !r || !n || n > RM_WIRE_MAX_REGIONS)
		return -EINVAL;
	if (!chunk)
		chunk = 64u << 20;
	g = calloc(1, sizeof(*g) + n * sizeof(g->r[0]));
	if (!g)
		return -ENOMEM;
	*g = (struct rm_reg){ .pd = pd, .strategy = strategy, .access = access | relaxed_ordering(pd),
			      .chunk = chunk, .n = n };
	for (unsigned i = 0; i < n; i++) {
		g->r[i].addr = r[i].addr;
		g->r[i].size = r[i].size;
		total += r[i].size;
	}

	switch (strategy) {
	case RM_REG_ODP:
		if (!odp_supported(pd->context)) {
			rm_err("registration: %s offers no on-demand paging; use 'all' or 'lazy'",
			       ibv_get_device_name(pd->context->device));
			err = -EOPNOTSUPP;
			goto free_g;
		}
		/* One MR per region, as for all, but nothing pinned. */
		__attribute__((fallthrough));
	case RM_REG_ALL:
		if (strategy == RM_REG_ALL) {
			err = rm_memlock_check(total);
			if (err)
				goto free_g;
		}
		for (unsigned i = 0; i < n; i++) {
			job[i] = (struct reg_job){ .g = g, .idx = i };
			if (n == 1 || pthread_create(&th[i], NULL, reg_one, &job[i])) {
				reg_one(&job[i]);
				th[i] = 0;
			}
		}
		for (unsigned i = 0; i < n; i++) {
			if (th[i])
				pthread_join(th[i], NULL);
			if (g->r[i].err && !err) {
				err = g->r[i].err;
				rm_err("registration: region at %p (%llu bytes): %s", g->r[i].addr,
				       (unsigned long long)g->r[i].size, rdmamig_strerror(err));
			}
		}
		if (err)
			goto dereg;
		g->bytes = total;
		break;
	case RM_REG_LAZY:
		err = rm_memlock_check(chunk);
		if (err)
			goto free_g;
		for (unsigned i = 0; i < n; i++) {
			g->r[i].nchunks = (g->r[i].size + chunk - 1) / chunk;
			g->r[i].chunk = calloc(g->r[i].nchunks, sizeof(g->r[i].chunk[0]));
			if (!g->r[i].chunk) {
				err = -ENOMEM;
				goto dereg;
			}
		}
		break;
	default:
		err = -EINVAL;
		goto free_g;
	}
	g->ns = rm_now_ns() - t0;
	*out = g;
	return 0;

dereg:
	rm_reg_close(g);
	return err;
free_g:
	free(g);
	return err;
}

int rm_reg_keys(struct rm_reg *g, unsigned idx, uint64_t off, uint64_t len, uint32_t *lkey,
		uint32_t *rkey, uint64_t *avail)
{
	struct reg_region *r;
	struct ibv_mr **mr;
	uint64_t c, cstart, cend, t0;

	if (idx >= g->n || off >= g->r[idx].size)
		return -EINVAL;
	r = &g->r[idx];
	if (len > r->size - off)
		len = r->size - off;
	if (g->strategy != RM_REG_LAZY) {
		*lkey = r->mr->lkey;
		*rkey = r->mr->rkey;
		*avail = len;
		return 0;
	}
	c = off / g->chunk;
	cstart = c * g->chunk;
	cend = cstart + g->chunk < r->size ? cstart + g->chunk : r->size;
	mr = &r->chunk[c];
	if (!*mr) {
		int err = rm_memlock_check(g->bytes + (cend - cstart));

		if (err)
			return err;
		t0 = rm_now_ns();
		*mr = ibv_reg_mr(g->pd, (char *)r->addr + cstart, cend - cstart, g->access);
		if (!*mr) {
			err = -(errno ? errno : ENOMEM);
			rm_err("registration: lazy chunk %llu of region at %p: %s",
			       (unsigned long long)c, r->addr, rdmamig_strerror(err));
			return err;
		}
		g->ns += rm_now_ns() - t0;
		g->bytes += cend - cstart;
	}
	*lkey = (*mr)->lkey;
	*rkey = (*mr)->rkey;
	*avail = len < cend - off ? len : cend - off;
	return 0;
}

int rm_reg_close(struct rm_reg *g)
{
	int first = 0, err;

	if (!g)
		return 0;
	for (unsigned i = 0; i < g->n; i++) {
		struct reg_region *r = &g->r[i];

		if (r->mr) {
			err = ibv_dereg_mr(r->mr);
			if (err && !first)
				first = -err;
		}
		for (size_t c = 0; r->chunk && c < r->nchunks; c++) {
			if (r->chunk[c]) {
				err = ibv_dereg_mr(r->chunk[c]);
				if (err && !first)
					first = -err;
			}
		}
		free(r->chunk);
	}
	free(g);
	return first;
}

struct ibv_mr *rm_reg_mr(const struct rm_reg *g, unsigned idx)
{
	return g && idx < g->n ? g->r[idx].mr : NULL;
}

unsigned rm_reg_mw_caps(struct ibv_context *ctx)
{
	struct ibv_device_attr_ex attr;
	uint64_t f;

	memset(&attr, 0, sizeof(attr));
	if (ibv_query_device_ex(ctx, NULL, &attr))
		return 0;
	/* The legacy flags carry the window bits; the _ex word repeats them
	 * on providers that fill it. */
	f = attr.orig_attr.device_cap_flags | attr.device_cap_flags_ex;
	return (f & IBV_DEVICE_MEM_WINDOW ? RM_MW_TYPE1 : 0) |
	       (f & IBV_DEVICE_MEM_WINDOW_TYPE_2A ? RM_MW_TYPE2A : 0) |
	       (f & IBV_DEVICE_MEM_WINDOW_TYPE_2B ? RM_MW_TYPE2B : 0);
}

uint64_t rm_reg_bytes(const struct rm_reg *g)
{
	return g ? g->bytes : 0;
}

uint64_t rm_reg_ns(const struct rm_reg *g)
{
	return g ? g->ns : 0;
}
