/*
 * bench/bench-dirty-sync.c — what one dirty sync costs with each tracker, and
 * how long a pause takes, for guests of 1 GiB and 3 GiB running the uniform
 * workload on every vCPU.
 *
 * For each size and tracker it boots a fresh guest, starts tracking, lets the
 * guest run `interval` ms between syncs and times `rounds` syncs (for the
 * clear tracker, sync + clearing what was reported, in 64 MiB chunks as a
 * sender would).  It also times syncs of the paused guest, the
 * pure scanning cost.  Then it times `rounds` pause/resume cycles.
 *
 * Needs /dev/kvm; on this project's hosts that means the test VM, with room
 * for a 3 GiB guest:
 *
 *   make O=build-kvm benches
 *   scripts/soft-roce/vm.sh -m 6G -t 1200 -- build-kvm/bench/bench-dirty-sync
 *
 * Options: --sizes 1,3 (GiB)  --vcpus 2  --rounds 10  --interval-ms 200
 *          --ring-entries 4096  --rate PAGES_PER_S_PER_VCPU (0: unpaced)
 *          --no-prefault (leave guest RAM untouched until the guest writes:
 *          under nested KVM on TCG first touches then dominate the run)
 *          --thp (guest RAM on transparent huge pages: KVM maps it with 2 MiB
 *          pages until dirty logging splits them)
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "kvm/dirty.h"
#include "kvm/vm.h"

struct opts {
	bool prefault, thp;
	unsigned sizes[4], nr_sizes;
	unsigned vcpus, rounds, interval_ms, ring_entries;
	uint64_t rate;
};

static void log_hook(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	(void)opaque;
	fprintf(stderr, "%s: %s\n", level <= RDMAMIG_LOG_ERR ? "error" : "note", msg);
}

struct stat_ns {
	double sum, max;
	unsigned n;
};

static void stat_add(struct stat_ns *s, uint64_t ns)
{
	s->sum += (double)ns;
	s->max = (double)ns > s->max ? (double)ns : s->max;
	s->n++;
}

static double mean_ms(const struct stat_ns *s)
{
	return s->n ? s->sum / s->n / 1e6 : 0;
}

/* One sync, plus for the clear tracker re-protecting all that was reported,
 * 16 Ki pages (64 MiB) at a time, as a sender would before each chunk. */
static long sync_once(struct rm_kvm_vm *vm, struct rm_dirty_tracker *t, uint64_t *ns)
{
	uint64_t t0 = rm_now_ns();
	long n = rm_dirty_sync(t);

	for (unsigned r = 0; n >= 0 && r < rm_kvm_vm_nr_regions(vm); r++) {
		uint64_t pages = rm_kvm_vm_region(vm, r)->size / 4096;

		for (uint64_t f = 0; f < pages; f += 16384)
			if (rm_dirty_clear(t, r, f, pages - f < 16384 ? pages - f : 16384) < 0)
				return -1;
	}
	*ns = rm_now_ns() - t0;
	return n;
}

static int bench_tracker(const struct opts *o, unsigned gib, enum rm_dirty_kind kind)
{
	struct rm_kvm_vm_opts vo = {
		.nr_vcpus = o->vcpus, .ram_size = (size_t)gib << 30,
		.backing = { .kind = RM_BACKING_ANON, .numa_node = -1, .prefault = o->prefault,
			     .thp = o->thp },
		.dirty_ring_entries = kind == RM_DIRTY_RING ? o->ring_entries : 0,
	};
	struct rm_kvm_workload wl = { .kind = RM_GUEST_UNIFORM, .rate_pages_per_sec = o->rate, .seed = 7 };
	struct stat_ns run = { 0 }, idle = { 0 };
	uint64_t dirtied = 0, first_ns = 0, progress0;
	struct rm_dirty_tracker *t;
	struct rm_kvm_vm *vm;
	long first;

	vm = rm_kvm_vm_create(&vo);
	if (!vm)
		return -errno;
	if (!rm_dirty_supported(vm, kind)) {
		printf("%4u GiB  %-6s  not supported here\n", gib, rm_dirty_name(kind));
		rm_kvm_vm_destroy(vm);
		return 0;
	}
	if (rm_kvm_vm_boot(vm, &wl) < 0 || rm_kvm_vm_resume(vm) < 0)
		goto fail;
	usleep(200000);
	t = rm_dirty_start(vm, kind);
	if (!t)
		goto fail;
	/* The first sync after start is special (clear: every page). */
	first = sync_once(vm, t, &first_ns);
	progress0 = rm_kvm_vm_progress(vm);
	for (unsigned i = 0; i < o->rounds; i++) {
		uint64_t ns;
		long n;

		usleep(o->interval_ms * 1000);
		n = sync_once(vm, t, &ns);
		if (n < 0)
			goto stop;
		stat_add(&run, ns);
		dirtied += (uint64_t)n;
	}
	uint64_t writes = rm_kvm_vm_progress(vm) - progress0;
	if (rm_kvm_vm_pause(vm, 5000000000ull) < 0)
		goto stop;
	for (unsigned i = 0; i < o->rounds; i++) {
		uint64_t ns;

		if (sync_once(vm, t, &ns) < 0)
			goto stop;
		stat_add(&idle, ns);
	}
	printf("%4u GiB  %-6s  first %8.2f ms (%7ld pages)  running %8.2f ms = %7.2f ms/GiB (max %7.2f), "
	       "%7.0f pages/sync (guest wrote %5.0f/sync)  paused %7.2f ms = %6.2f ms/GiB\n",
	       gib, rm_dirty_name(kind), (double)first_ns / 1e6, first, mean_ms(&run), mean_ms(&run) / gib,
	       run.max / 1e6, (double)dirtied / o->rounds, (double)writes / o->rounds, mean_ms(&idle),
	       mean_ms(&idle) / gib);
	fflush(stdout);
	rm_dirty_stop(t);
	rm_kvm_vm_destroy(vm);
	return 0;
stop:
	rm_dirty_stop(t);
fail:
	rm_kvm_vm_destroy(vm);
	return -EIO;
}

static int bench_pause(const struct opts *o, unsigned gib)
{
	struct rm_kvm_vm_opts vo = {
		.nr_vcpus = o->vcpus, .ram_size = (size_t)gib << 30,
		.backing = { .kind = RM_BACKING_ANON, .numa_node = -1, .prefault = o->prefault,
			     .thp = o->thp },
	};
	struct rm_kvm_workload wl = { .kind = RM_GUEST_UNIFORM, .rate_pages_per_sec = o->rate, .seed = 7 };
	struct stat_ns pause = { 0 }, resume = { 0 };
	struct rm_kvm_vm *vm = rm_kvm_vm_create(&vo);

	if (!vm)
		return -errno;
	if (rm_kvm_vm_boot(vm, &wl) < 0 || rm_kvm_vm_resume(vm) < 0) {
		rm_kvm_vm_destroy(vm);
		return -EIO;
	}
	for (unsigned i = 0; i < o->rounds * 3; i++) {
		uint64_t t0;

		usleep(o->interval_ms * 1000 / 4);
		t0 = rm_now_ns();
		if (rm_kvm_vm_pause(vm, 5000000000ull) < 0)
			break;
		stat_add(&pause, rm_now_ns() - t0);
		t0 = rm_now_ns();
		rm_kvm_vm_resume(vm);
		stat_add(&resume, rm_now_ns() - t0);
	}
	printf("%4u GiB  pause   mean %6.3f ms, max %6.3f ms over %u pauses of %u running vCPUs "
	       "(resume mean %.3f ms); integrity errors %llu\n",
	       gib, mean_ms(&pause), pause.max / 1e6, pause.n, o->vcpus, mean_ms(&resume),
	       (unsigned long long)rm_kvm_vm_integrity_errors(vm));
	rm_kvm_vm_destroy(vm);
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o = { .sizes = { 1, 3 }, .nr_sizes = 2, .vcpus = 2, .rounds = 10, .interval_ms = 200,
			  .ring_entries = 4096, .prefault = true };
	static const struct option longopts[] = {
		{ "sizes", required_argument, NULL, 's' },
		{ "vcpus", required_argument, NULL, 'c' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "interval-ms", required_argument, NULL, 'i' },
		{ "ring-entries", required_argument, NULL, 'e' },
		{ "rate", required_argument, NULL, 'R' },
		{ "no-prefault", no_argument, NULL, 'P' },
		{ "thp", no_argument, NULL, 'T' },
		{ 0 },
	};
	int c, rc = 0;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 's': {
			char *s = optarg, *end;

			o.nr_sizes = 0;
			while (*s && o.nr_sizes < 4) {
				o.sizes[o.nr_sizes++] = (unsigned)strtoul(s, &end, 10);
				s = *end ? end + 1 : end;
			}
			break;
		}
		case 'c': o.vcpus = (unsigned)atoi(optarg); break;
		case 'r': o.rounds = (unsigned)atoi(optarg); break;
		case 'i': o.interval_ms = (unsigned)atoi(optarg); break;
		case 'e': o.ring_entries = (unsigned)atoi(optarg); break;
		case 'R': o.rate = strtoull(optarg, NULL, 10); break;
		case 'P': o.prefault = false; break;
		case 'T': o.thp = true; break;
		default:
			fprintf(stderr, "usage: %s [--sizes 1,3] [--vcpus N] [--rounds N] [--interval-ms N] "
				"[--ring-entries N] [--rate PAGES] [--no-prefault] [--thp]\n", argv[0]);
			return 2;
		}
	}
	rdmamig_set_log(log_hook, NULL, RDMAMIG_LOG_WARN);
	printf("dirty sync cost: %u vCPUs, uniform workload (%s), RAM %s, %u syncs %u ms apart; "
	       "clear = sync + KVM_CLEAR_DIRTY_LOG of what was reported, in 64 MiB chunks\n",
	       o.vcpus, o.rate ? "paced" : "unpaced", o.prefault ? (o.thp ? "prefaulted, THP" : "prefaulted")
	       : (o.thp ? "lazy, THP" : "lazy"), o.rounds, o.interval_ms);
	for (unsigned s = 0; s < o.nr_sizes; s++) {
		for (int k = 0; k < RM_DIRTY_NR_KINDS; k++) {
			int ret = bench_tracker(&o, o.sizes[s], (enum rm_dirty_kind)k);

			if (ret < 0) {
				fprintf(stderr, "%u GiB %s: %s\n", o.sizes[s], rm_dirty_name(k), strerror(-ret));
				rc = 1;
			}
		}
		if (bench_pause(&o, o.sizes[s]) < 0)
			rc = 1;
	}
	return rc;
}
