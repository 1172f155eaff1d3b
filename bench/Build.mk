# bench/ — benchmark harness, model and plots.  Prints figures and ratios;
# never part of `make test`.  Benches link librmvmm.a and librdmamig.a and may
# include any layer's headers, never cli/'s; no layer includes bench/.
# bench/model: the pre-copy model; it asks migration/policy.c what to do.
BENCH_BINS += model
# bench/bench-engine: the engine's iterate pass alone, over a memory-only VMM
# and a null transport: guest GiB scanned and ranges made per second.
BENCH_BINS += bench-engine
# bench/bench-soak: 100 migrations back and forth between two processes,
# their RSS and open fds (issue 11's soak).
BENCH_BINS += bench-soak
# bench/bench-memory: populating guest RAM (1 thread, the populator's N) and
# registering it (all, lazy, odp) per GiB, for 4K, THP, 2M and 1G pages.
BENCH_BINS += bench-memory

# bench/qemu-guest.elf: the guest bench/qemu-peer has QEMU migrate, a
# freestanding 32-bit Multiboot ELF (QEMU's -kernel takes no 64-bit ELF).
QEMU_GUEST_CFLAGS := -std=gnu11 -O2 -m32 -march=i686 -ffreestanding -fno-pic -fno-pie -mno-red-zone
QEMU_GUEST_CFLAGS += -mgeneral-regs-only -fno-stack-protector -fcf-protection=none
QEMU_GUEST_CFLAGS += -fno-asynchronous-unwind-tables -MD -MP $(WARNINGS)

# The rules below would become make's default goal (the first rule read):
# keep whatever goal the Makefile had.
bench_saved_goal := $(.DEFAULT_GOAL)
benches: $(O)/bench/qemu-guest.elf

# `make bench`: the migration benchmark (bench/run; on a host without RDMA it
# boots the soft-RoCE test VM).
bench: all benches
	$(Q)O=$(O) bench/run
.PHONY: bench

$(O)/bench/qemu-guest.gobj: bench/qemu-guest.c
	$(quiet) CC $@
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(QEMU_GUEST_CFLAGS) -MF $(O)/bench/qemu-guest.d -c -o $@ $<

$(O)/bench/qemu-guest.elf: $(O)/bench/qemu-guest.gobj bench/qemu-guest.ld
	$(quiet) LD $@
	$(Q)ld -m elf_i386 -static -nostdlib -no-pie -z noexecstack --no-warn-rwx-segments \
		-T bench/qemu-guest.ld -o $@ $<
.DEFAULT_GOAL := $(bench_saved_goal)
