/*
 * kvm/vmm.c — struct rdmamig_vmm_ops over the built-in KVM VMM.
 *
 * Throttling (autoconverge) is a duty cycle run by a helper thread: in every
 * 100 ms period the vCPUs are paused for `percent` of it.  The helper and the
 * migration thread share the VM under `lock`; pause() stops the helper
 * before it pauses the VM for good, so the two never race.
 */
#include <cpuid.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "kvm/vmm.h"

#define PAUSE_TIMEOUT_NS 2000000000ull
#define THROTTLE_PERIOD_NS 100000000ull

struct rm_kvm_vmm {
	struct rm_kvm_vm *vm;
	enum rm_dirty_kind tracker;
	struct rm_dirty_tracker *dirty;
	struct rm_backing_opts backing;
	struct rm_populator *pop;	/* destination: populating RAM behind the migration */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t throttle_thread;
	bool throttle_running;
	bool throttle_stop;
	unsigned throttle;
};

static void cpu_model(char *out, size_t len)
{
	unsigned a, b, c, d, family, model;
	char vendor[13];

	if (!__get_cpuid(0, &a, &b, &c, &d)) {
		snprintf(out, len, "unknown");
		return;
	}
	memcpy(vendor, &b, 4);
	memcpy(vendor + 4, &d, 4);
	memcpy(vendor + 8, &c, 4);
	vendor[12] = '\0';
	__get_cpuid(1, &a, &b, &c, &d);
	family = (a >> 8) & 0xf;
	model = (a >> 4) & 0xf;
	if (family == 0xf)
		family += (a >> 20) & 0xff;
	if (family >= 6)
		model |= ((a >> 16) & 0xf) << 4;
	snprintf(out, len, "%s family %u model %u", vendor, family, model);
}

static struct rm_kvm_vmm *vmm_alloc(void)
{
	struct rm_kvm_vmm *v = calloc(1, sizeof(*v));

	if (!v)
		return NULL;
	pthread_mutex_init(&v->lock, NULL);
	pthread_cond_init(&v->cond, NULL);
	return v;
}

struct rm_kvm_vmm *rm_kvm_vmm_new_source(const struct rm_kvm_vm_opts *vm_opts,
					 const struct rm_kvm_workload *wl, enum rm_dirty_kind tracker)
{
	struct rm_kvm_vm_opts o = *vm_opts;
	struct rm_kvm_vmm *v = vmm_alloc();
	int err;

	if (!v)
		return NULL;
	v->tracker = tracker;
	if (tracker == RM_DIRTY_RING && !o.dirty_ring_entries)
		o.dirty_ring_entries = 4096;
	v->vm = rm_kvm_vm_create(&o);
	if (!v->vm)
		goto fail;
	if (!rm_dirty_supported(v->vm, tracker)) {
		rm_err("kvm: this KVM does not offer the %s dirty tracker", rm_dirty_name(tracker));
		errno = EOPNOTSUPP;
		goto fail;
	}
	err = rm_kvm_vm_boot(v->vm, wl);
	if (!err)
		err = rm_kvm_vm_resume(v->vm);
	if (err) {
		errno = -err;
		goto fail;
	}
	return v;
fail:
	err = errno;
	rm_kvm_vmm_free(v);
	errno = err;
	return NULL;
}

struct rm_kvm_vmm *rm_kvm_vmm_new_dest(const struct rm_backing_opts *backing,
				       const struct rm_kvm_vm_opts *precreate)
{
	struct rm_kvm_vmm *v = vmm_alloc();

	if (!v)
		return NULL;
	if (backing)
		v->backing = *backing;
	if (precreate) {
		v->vm = rm_kvm_vm_create(precreate);
		if (!v->vm) {
			int err = errno;

			rm_kvm_vmm_free(v);
			errno = err;
			return NULL;
		}
	}
	return v;
}

struct rm_populator *rm_kvm_vmm_populator(struct rm_kvm_vmm *v)
{
	return v->pop;
}

/*
 * A bare destination's RAM: populated by threads behind the migration, in
 * the order the source's bulk pass sends it (region by region, ascending),
 * instead of before the first byte may move.  A received page the threads
 * have not reached is faulted in by the receive itself; a page the guest
 * touches before them after resume likewise.  Only where the kernel cannot
 * populate without writing (no MADV_POPULATE_WRITE) is all of it populated
 * here, before anything is received, as before.
 */
static int populate_behind(struct rm_kvm_vmm *v)
{
	struct rm_populate_span spans[RM_KVM_MAX_REGIONS];
	const struct rm_ram *ram = rm_kvm_vm_ram(v->vm);
	unsigned n = rm_kvm_vm_nr_regions(v->vm);
	struct rm_populate_opts po = {
		.chunk = ram->page_size > (4u << 20) ? ram->page_size : (4u << 20),
		.fault_side = "dst",
	};
	int err;

	for (unsigned i = 0; i < n; i++) {
		const struct rm_kvm_region *r = rm_kvm_vm_region(v->vm, i);

		spans[i] = (struct rm_populate_span){ .addr = r->hva, .size = r->size };
	}
	err = rm_populate_start(&v->pop, spans, n, &po);
	if (!err)
		return 0;
	rm_info("kvm: populating %zu MiB of guest RAM before the migration (%s)", ram->size >> 20,
		strerror(-err));
	return rm_ram_prefault(ram);
}

struct rm_kvm_vm *rm_kvm_vmm_vm(struct rm_kvm_vmm *v)
{
	return v->vm;
}

static void throttle_stop(struct rm_kvm_vmm *v)
{
	pthread_mutex_lock(&v->lock);
	if (!v->throttle_running) {
		pthread_mutex_unlock(&v->lock);
		return;
	}
	v->throttle_stop = true;
	pthread_cond_broadcast(&v->cond);
	pthread_mutex_unlock(&v->lock);
	pthread_join(v->throttle_thread, NULL);
	v->throttle_running = false;
	v->throttle_stop = false;
}

void rm_kvm_vmm_free(struct rm_kvm_vmm *v)
{
	if (!v)
		return;
	throttle_stop(v);
	rm_dirty_stop(v->dirty);
	/* Before the RAM is unmapped under it. */
	rm_populate_stop(v->pop);
	rm_kvm_vm_destroy(v->vm);
	pthread_cond_destroy(&v->cond);
	pthread_mutex_destroy(&v->lock);
	free(v);
}

static int vmm_describe(void *opaque, struct rdmamig_vm_desc *d)
{
	struct rm_kvm_vmm *v = opaque;
	unsigned n;

	if (!v->vm)
		return -ENODEV;
	n = rm_kvm_vm_nr_regions(v->vm);
	if (n > RDMAMIG_MAX_REGIONS)
		return -E2BIG;
	memset(d, 0, sizeof(*d));
	d->page_size = RM_GUEST_PAGE;
	d->nr_vcpus = rm_kvm_vm_nr_vcpus(v->vm);
	cpu_model(d->cpu_model, sizeof(d->cpu_model));
	d->payload_version = RM_KVM_VMM_PAYLOAD_VERSION;
	d->nr_regions = n;
	for (unsigned i = 0; i < n; i++) {
		const struct rm_kvm_region *r = rm_kvm_vm_region(v->vm, i);

		d->regions[i] = (struct rdmamig_ram_region){
			.id = r->slot, .host_addr = r->hva, .size = r->size, .gpa = r->gpa,
		};
	}
	return 0;
}

static int vmm_prepare(void *opaque, const struct rdmamig_vm_desc *src)
{
	struct rm_kvm_vmm *v = opaque;
	uint64_t ram = 0, slot = 0;

	if (v->vm)
		return 0;	/* pre-created: describe() + the engine's check decide */
	for (uint32_t i = 0; i < src->nr_regions; i++) {
		ram += src->regions[i].size;
		if (src->regions[i].size > slot)
			slot = src->regions[i].size;
	}
	/* Slots are a power of two; the last may be shorter. */
	uint64_t pow2 = RM_GUEST_PAGE;
	while (pow2 < slot)
		pow2 <<= 1;
	slot = pow2;
	if (src->page_size != RM_GUEST_PAGE || !src->nr_vcpus || src->nr_vcpus > RM_GUEST_MAX_VCPUS ||
	    ram < RM_GUEST_MIN_RAM || slot > RM_KVM_MAX_SLOT_SIZE) {
		rm_err("kvm: cannot host the source's VM: %u vCPUs, %llu bytes of RAM in slots of %llu, pages of %u",
		       src->nr_vcpus, (unsigned long long)ram, (unsigned long long)slot, src->page_size);
		return -EINVAL;
	}
	struct rm_kvm_vm_opts o = {
		.nr_vcpus = src->nr_vcpus, .ram_size = ram, .slot_size = slot, .backing = v->backing,
	};
	o.backing.prefault = false;	/* populate_behind() does it */
	v->vm = rm_kvm_vm_create(&o);
	if (!v->vm)
		return -errno;
	return v->backing.prefault ? populate_behind(v) : 0;
}

static int vmm_dirty_start(void *opaque)
{
	struct rm_kvm_vmm *v = opaque;

	v->dirty = rm_dirty_start(v->vm, v->tracker);
	if (!v->dirty)
		return -errno;
	/*
	 * The clear tracker starts with every page reported dirty and
	 * unprotected (KVM_DIRTY_LOG_INITIALLY_SET).  The engine's bulk pass
	 * sends all RAM anyway: take that first report now and drop it, so
	 * the engine's dirty_clear() before each chunk re-protects exactly the
	 * pages it is about to read, and the next sync reports only what the
	 * guest wrote after that — not all of RAM a second time.
	 */
	if (v->tracker == RM_DIRTY_CLEAR) {
		long n = rm_dirty_sync(v->dirty);

		if (n < 0) {
			rm_dirty_stop(v->dirty);
			v->dirty = NULL;
			return (int)n;
		}
	}
	return 0;
}

/* The tracker's own bitmaps go to the engine as they are: it reads them
 * until the next sync, and rm_dirty_sync() has counted them. */
static long vmm_dirty_sync(void *opaque, const uint64_t **bitmaps)
{
	struct rm_kvm_vmm *v = opaque;
	long n = rm_dirty_sync(v->dirty);

	if (n < 0)
		return n;
	for (unsigned r = 0; r < rm_kvm_vm_nr_regions(v->vm); r++)
		bitmaps[r] = rm_dirty_bitmap(v->dirty, r);
	return n;
}

static int vmm_dirty_clear(void *opaque, unsigned r, uint64_t first, uint64_t n)
{
	struct rm_kvm_vmm *v = opaque;

	return rm_dirty_clear(v->dirty, r, first, n);
}

static void vmm_dirty_stop(void *opaque)
{
	struct rm_kvm_vmm *v = opaque;

	rm_dirty_stop(v->dirty);
	v->dirty = NULL;
}

static int vmm_pause(void *opaque)
{
	struct rm_kvm_vmm *v = opaque;
	int err;

	throttle_stop(v);
	pthread_mutex_lock(&v->lock);
	err = rm_kvm_vm_pause(v->vm, PAUSE_TIMEOUT_NS);
	pthread_mutex_unlock(&v->lock);
	return err;
}

static int vmm_resume(void *opaque)
{
	struct rm_kvm_vmm *v = opaque;
	int err;

	pthread_mutex_lock(&v->lock);
	err = rm_kvm_vm_resume(v->vm);
	pthread_mutex_unlock(&v->lock);
	return err;
}

static int vmm_save_state(void *opaque, void **buf, size_t *len)
{
	struct rm_kvm_vmm *v = opaque;
	struct rm_vms_buf b = { 0 };
	int err = rm_kvm_vm_save_state(v->vm, &b);

	if (err) {
		rm_vms_buf_free(&b);
		return err;
	}
	*buf = b.data;
	*len = b.len;
	return 0;
}

static int vmm_load_state(void *opaque, const void *buf, size_t len)
{
	struct rm_kvm_vmm *v = opaque;

	if (!v->vm)
		return -ENODEV;
	/* The state comes after the last RAM: population, which only spares
	 * the receive its page faults, has no more purpose; a page still
	 * missing is a zero page the guest faults in when it touches it.
	 * Left running, it would go on beside the guest, and (on pages that
	 * --verify's digest read in as the shared zero page) copy each on
	 * write with a TLB shootdown into the CPUs that run the guest: in the
	 * nested test bed, under load, tens of seconds holding the mmap lock
	 * a chunk at a time (issue 10).  Not waited for: a thread finishes
	 * the chunk it is in behind the switchover. */
	rm_populate_cancel(v->pop);
	return rm_kvm_vm_load_state(v->vm, buf, len);
}

static void nap_until(struct rm_kvm_vmm *v, uint64_t ns)
{
	struct timespec ts = rm_abstime_in(ns);

	pthread_cond_timedwait(&v->cond, &v->lock, &ts);
}

static void *throttle_main(void *arg)
{
	struct rm_kvm_vmm *v = arg;

	pthread_mutex_lock(&v->lock);
	while (!v->throttle_stop) {
		uint64_t off = THROTTLE_PERIOD_NS * v->throttle / 100;

		if (v->throttle && rm_kvm_vm_pause(v->vm, PAUSE_TIMEOUT_NS) == 0) {
			nap_until(v, off);
			rm_kvm_vm_resume(v->vm);
		}
		if (!v->throttle_stop)
			nap_until(v, THROTTLE_PERIOD_NS - off);
	}
	pthread_mutex_unlock(&v->lock);
	return NULL;
}

static int vmm_throttle(void *opaque, unsigned percent)
{
	struct rm_kvm_vmm *v = opaque;

	if (percent > 99)
		percent = 99;
	if (!percent) {
		throttle_stop(v);
		v->throttle = 0;
		return 0;
	}
	pthread_mutex_lock(&v->lock);
	v->throttle = percent;
	if (!v->throttle_running) {
		int err = pthread_create(&v->throttle_thread, NULL, throttle_main, v);

		if (err) {
			pthread_mutex_unlock(&v->lock);
			return -err;
		}
		v->throttle_running = true;
	}
	pthread_mutex_unlock(&v->lock);
	return 0;
}

const struct rdmamig_vmm_ops rm_kvm_vmm_ops = {
	.version = RDMAMIG_VMM_OPS_VERSION,
	.describe = vmm_describe,
	.prepare = vmm_prepare,
	.dirty_start = vmm_dirty_start,
	.dirty_sync = vmm_dirty_sync,
	.dirty_clear = vmm_dirty_clear,
	.dirty_stop = vmm_dirty_stop,
	.pause = vmm_pause,
	.resume = vmm_resume,
	.save_state = vmm_save_state,
	.load_state = vmm_load_state,
	.throttle = vmm_throttle,
};
