/*
 * kvm/dirty.c — the tracker interface (dirty.h) and the two bitmap-based
 * mechanisms; the ring lives in dirty-ring.c.  Dispatch goes through a small
 * ops table, so the engine never knows which mechanism runs.
 */
#include <stdlib.h>

#include "kvm/dirty-internal.h"

static uint64_t region_pages(const struct rm_kvm_vm *vm, unsigned r)
{
	return vm->regions[r].size / RM_GUEST_PAGE;
}

/* ---- bitmap: KVM_GET_DIRTY_LOG fetches and re-protects ---- */

static bool has_manual_protect(struct rm_kvm_vm *vm)
{
	return ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) > 0;
}

static int set_manual_protect(struct rm_kvm_vm *vm, uint64_t mode)
{
	struct kvm_enable_cap cap = { .cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, .args = { mode } };

	return kvm_ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap);
}

static bool bitmap_supported(struct rm_kvm_vm *vm)
{
	/* A VM with a dirty ring refuses KVM_GET_DIRTY_LOG. */
	return !vm->opts.dirty_ring_entries;
}

static int bitmap_start(struct rm_dirty_tracker *t)
{
	/* Manual protect is VM-wide and changes what GET_DIRTY_LOG does: make
	 * sure a previous clear tracker did not leave it on. */
	if (has_manual_protect(t->vm)) {
		int ret = set_manual_protect(t->vm, 0);

		if (ret < 0)
			return ret;
	}
	return rm_kvm_vm_set_dirty_logging(t->vm, true);
}

static int get_dirty_logs(struct rm_dirty_tracker *t)
{
	for (unsigned r = 0; r < t->vm->nr_regions; r++) {
		struct kvm_dirty_log log = { .slot = t->vm->regions[r].slot, .dirty_bitmap = t->bitmap[r] };
		int ret = kvm_ioctl(t->vm->vm_fd, KVM_GET_DIRTY_LOG, &log);

		if (ret < 0)
			return ret;
	}
	return 0;
}

static void log_stop(struct rm_dirty_tracker *t)
{
	rm_kvm_vm_set_dirty_logging(t->vm, false);
}

static const struct rm_dirty_ops bitmap_ops = {
	.name = "bitmap",
	.supported = bitmap_supported,
	.start = bitmap_start,
	.sync = get_dirty_logs,
	.stop = log_stop,
};

/* ---- clear: manual protect, KVM_CLEAR_DIRTY_LOG per chunk ---- */

static bool clear_supported(struct rm_kvm_vm *vm)
{
	return bitmap_supported(vm) && has_manual_protect(vm);
}

static int clear_start(struct rm_dirty_tracker *t)
{
	int caps = ioctl(t->vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
	/* INITIALLY_SET: logging starts with every page dirty and nothing
	 * write-protected, so starting costs no protection pass over RAM. */
	int ret = set_manual_protect(t->vm, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE |
					    (caps & KVM_DIRTY_LOG_INITIALLY_SET));

	if (ret < 0)
		return ret;
	return rm_kvm_vm_set_dirty_logging(t->vm, true);
}

static int clear_range(struct rm_dirty_tracker *t, unsigned r, uint64_t first, uint64_t n)
{
	struct kvm_clear_dirty_log c = {
		.slot = t->vm->regions[r].slot,
		.num_pages = (uint32_t)n,
		.first_page = first,
		.dirty_bitmap = t->bitmap[r] + first / 64,
	};

	/* No look for reported pages first: the caller names only ranges it
	 * found some in (rm_dirty_clear()), and the kernel skips zero words. */
	return kvm_ioctl(t->vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &c);
}

static void clear_stop(struct rm_dirty_tracker *t)
{
	rm_kvm_vm_set_dirty_logging(t->vm, false);
	set_manual_protect(t->vm, 0);
}

static const struct rm_dirty_ops clear_ops = {
	.name = "clear",
	.supported = clear_supported,
	.start = clear_start,
	.sync = get_dirty_logs,
	.clear = clear_range,
	.stop = clear_stop,
};

/* ---- the interface ---- */

static const struct rm_dirty_ops *const trackers[RM_DIRTY_NR_KINDS] = {
	[RM_DIRTY_BITMAP] = &bitmap_ops,
	[RM_DIRTY_CLEAR] = &clear_ops,
	[RM_DIRTY_RING] = &rm_dirty_ring_ops,
};

const char *rm_dirty_name(enum rm_dirty_kind kind)
{
	return (unsigned)kind < RM_DIRTY_NR_KINDS ? trackers[kind]->name : "unknown";
}

bool rm_dirty_supported(struct rm_kvm_vm *vm, enum rm_dirty_kind kind)
{
	return (unsigned)kind < RM_DIRTY_NR_KINDS && trackers[kind]->supported(vm);
}

static void tracker_free(struct rm_dirty_tracker *t)
{
	for (unsigned r = 0; r < RM_KVM_MAX_REGIONS; r++) {
		free(t->bitmap[r]);
		free(t->pending[r]);
	}
	free(t);
}

struct rm_dirty_tracker *rm_dirty_start(struct rm_kvm_vm *vm, enum rm_dirty_kind kind)
{
	struct rm_dirty_tracker *t;
	int ret;

	if (kind == RM_DIRTY_RING && vm->opts.dirty_ring_entries && rm_dirty_ring_hazard()) {
		rm_err("kvm: the ring dirty tracker is not available: %s; use bitmap or clear", rm_dirty_ring_hazard());
		errno = ENOTSUP;
		return NULL;
	}
	if (!rm_dirty_supported(vm, kind)) {
		rm_err("kvm: the %s dirty tracker is not available on this VM%s", rm_dirty_name(kind),
		       kind == RM_DIRTY_RING ? " (create it with dirty_ring_entries)"
		       : vm->opts.dirty_ring_entries ? " (it has a dirty ring)" : "");
		errno = ENOTSUP;
		return NULL;
	}
	if (vm->tracking) {
		rm_err("kvm: a dirty tracker is already running on this VM");
		errno = EBUSY;
		return NULL;
	}
	t = calloc(1, sizeof(*t));
	if (!t) {
		errno = ENOMEM;
		return NULL;
	}
	t->ops = trackers[kind];
	t->vm = vm;
	for (unsigned r = 0; r < vm->nr_regions; r++) {
		t->words[r] = (region_pages(vm, r) + 63) / 64;
		t->bitmap[r] = calloc(t->words[r], sizeof(uint64_t));
		/* Only the ring harvests between syncs, into a second bitmap. */
		if (kind == RM_DIRTY_RING)
			t->pending[r] = calloc(t->words[r], sizeof(uint64_t));
		if (!t->bitmap[r] || (kind == RM_DIRTY_RING && !t->pending[r])) {
			tracker_free(t);
			errno = ENOMEM;
			return NULL;
		}
	}
	ret = t->ops->start(t);
	if (ret < 0) {
		rm_err("kvm: starting the %s dirty tracker: %s", t->ops->name, strerror(-ret));
		t->ops->stop(t);
		tracker_free(t);
		errno = -ret;
		return NULL;
	}
	vm->tracking = true;
	return t;
}

long rm_dirty_sync(struct rm_dirty_tracker *t)
{
	long dirty = 0;
	int ret = t->ops->sync(t);

	if (ret < 0)
		return ret;
	for (unsigned r = 0; r < t->vm->nr_regions; r++)
		for (size_t w = 0; w < t->words[r]; w++)
			dirty += __builtin_popcountll(t->bitmap[r][w]);
	return dirty;
}

const uint64_t *rm_dirty_bitmap(const struct rm_dirty_tracker *t, unsigned region)
{
	return region < t->vm->nr_regions ? t->bitmap[region] : NULL;
}

int rm_dirty_clear(struct rm_dirty_tracker *t, unsigned region, uint64_t first_page, uint64_t npages)
{
	uint64_t pages;

	if (region >= t->vm->nr_regions)
		return -EINVAL;
	pages = region_pages(t->vm, region);
	if (first_page % 64 || first_page > pages || npages > pages - first_page ||
	    (npages % 64 && first_page + npages != pages))
		return -EINVAL;
	return t->ops->clear ? t->ops->clear(t, region, first_page, npages) : 0;
}

void rm_dirty_stop(struct rm_dirty_tracker *t)
{
	if (!t)
		return;
	t->ops->stop(t);
	t->vm->tracking = false;
	tracker_free(t);
}
