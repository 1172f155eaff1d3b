/*
 * kvm/snapshot.c — in-process snapshot and restore: a running guest's state
 * and RAM to a file, and back into a fresh VM that then continues.
 *
 * File layout, little-endian:
 *   struct snap_header, the vmstate stream (state_len bytes), then every
 *   region's RAM in region order (ram_size bytes in all).
 * The header gives the VM's shape so restore can build a matching VM before
 * the state stream checks it again in detail.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "kvm/kvm-internal.h"

#define SNAP_MAGIC "RMSNAP01"

struct snap_header {
	char magic[8];
	uint32_t nr_vcpus;
	uint32_t dirty_ring_entries;
	uint64_t ram_size;
	uint64_t slot_size;
	uint64_t state_len;
};

static int write_all(int fd, const void *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		p = (const uint8_t *)p + w;
		n -= (size_t)w;
	}
	return 0;
}

static int read_all(int fd, void *p, size_t n)
{
	while (n) {
		ssize_t r = read(fd, p, n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EPROTO;	/* short file */
		p = (uint8_t *)p + r;
		n -= (size_t)r;
	}
	return 0;
}

int rm_kvm_snapshot_save(struct rm_kvm_vm *vm, const char *path)
{
	struct rm_vms_buf state = { 0 };
	struct snap_header h = { .magic = SNAP_MAGIC };
	bool was_running = !rm_kvm_vm_is_paused(vm);
	int fd = -1, ret;

	ret = rm_kvm_vm_pause(vm, 5000000000ull);
	if (ret < 0)
		return ret;
	ret = rm_kvm_vm_save_state(vm, &state);
	if (ret < 0)
		goto resume;
	h.nr_vcpus = vm->nr_vcpus;
	h.dirty_ring_entries = vm->opts.dirty_ring_entries;
	h.ram_size = vm->ram.size;
	h.slot_size = vm->opts.slot_size ? vm->opts.slot_size : RM_KVM_MAX_SLOT_SIZE;
	h.state_len = state.len;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
		rm_err("kvm: snapshot %s: %s", path, strerror(-ret));
		goto free_state;
	}
	ret = write_all(fd, &h, sizeof(h));
	if (ret == 0)
		ret = write_all(fd, state.data, state.len);
	for (unsigned i = 0; ret == 0 && i < vm->nr_regions; i++)
		ret = write_all(fd, vm->regions[i].hva, vm->regions[i].size);
	if (ret == 0 && fsync(fd) < 0 && errno != EINVAL)
		ret = -errno;
	if (close(fd) < 0 && ret == 0)
		ret = -errno;
	if (ret < 0) {
		rm_err("kvm: writing snapshot %s: %s", path, strerror(-ret));
		unlink(path);
	}
free_state:
	rm_vms_buf_free(&state);
resume:
	/* The source guest must come out of this running, whatever happened. */
	if (was_running) {
		int r = rm_kvm_vm_resume(vm);

		if (ret == 0)
			ret = r;
	}
	return ret;
}

struct rm_kvm_vm *rm_kvm_snapshot_restore(const char *path, const struct rm_backing_opts *backing)
{
	struct rm_kvm_vm_opts opts = { .backing = { .kind = RM_BACKING_ANON, .numa_node = -1 } };
	struct rm_kvm_vm *vm = NULL;
	struct snap_header h;
	uint8_t *state = NULL;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		rm_err("kvm: snapshot %s: %s", path, strerror(-ret));
		errno = -ret;
		return NULL;
	}
	ret = read_all(fd, &h, sizeof(h));
	if (ret == 0 && memcmp(h.magic, SNAP_MAGIC, 8))
		ret = -EPROTO;
	/* The state stream is small (a few KiB per vCPU): anything big is not ours. */
	if (ret == 0 && (h.state_len > (64u << 20) || !h.nr_vcpus || h.nr_vcpus > RM_GUEST_MAX_VCPUS))
		ret = -EPROTO;
	if (ret < 0) {
		rm_err("kvm: %s is not a snapshot this build can read", path);
		goto out;
	}
	state = malloc(h.state_len);
	if (!state) {
		ret = -ENOMEM;
		goto out;
	}
	ret = read_all(fd, state, h.state_len);
	if (ret < 0) {
		rm_err("kvm: reading device state from snapshot %s: %s", path,
		       ret == -EPROTO ? "the file ends early (truncated?)" : strerror(-ret));
		goto out;
	}

	opts.nr_vcpus = h.nr_vcpus;
	opts.ram_size = h.ram_size;
	opts.slot_size = h.slot_size;
	opts.dirty_ring_entries = h.dirty_ring_entries;
	if (backing)
		opts.backing = *backing;
	vm = rm_kvm_vm_create(&opts);
	if (!vm) {
		ret = -errno;
		goto out;
	}
	for (unsigned i = 0; ret == 0 && i < vm->nr_regions; i++)
		ret = read_all(fd, vm->regions[i].hva, vm->regions[i].size);
	if (ret < 0) {
		rm_err("kvm: reading RAM from snapshot %s: %s", path,
		       ret == -EPROTO ? "the file ends early (truncated?)" : strerror(-ret));
		goto out;
	}
	ret = rm_kvm_vm_load_state(vm, state, h.state_len);
out:
	close(fd);
	free(state);
	if (ret < 0) {
		rm_kvm_vm_destroy(vm);
		errno = -ret;
		return NULL;
	}
	return vm;
}
