# kvm/ — the built-in VMM: KVM VM + vCPUs, guest payloads, dirty trackers,
# vCPU and device state, and vmm.c, its implementation of include/rdmamig.h's
# VMM ops table.  Built into librmvmm.a, never into librdmamig: the engine
# sees it only through that table.  Includes pinning/ (RAM backing), common/
# and include/; never transport/, migration/ or cli/.
VMM_OBJS += kvm/payload.o
VMM_OBJS += kvm/vmstate.o
VMM_OBJS += kvm/vm.o
VMM_OBJS += kvm/vcpu.o
VMM_OBJS += kvm/boot.o
VMM_OBJS += kvm/state.o
VMM_OBJS += kvm/dirty.o
VMM_OBJS += kvm/dirty-ring.o
VMM_OBJS += kvm/snapshot.o
VMM_OBJS += kvm/vmm.o

# The guest payload: freestanding C, linked flat at 1 MiB, embedded in the
# library by kvm/payload.S.  Its own flags: no red zone (no interrupts, but the
# host may inject one some day), no SSE, no PIC, no stack protector.
GUEST_CFLAGS := -std=gnu11 -O2 -m64 -ffreestanding -fno-pic -fno-pie -mno-red-zone
GUEST_CFLAGS += -mgeneral-regs-only -fno-stack-protector -fcf-protection=none
GUEST_CFLAGS += -fno-asynchronous-unwind-tables -mcmodel=small -I. -MD -MP $(WARNINGS)
GUEST_BIN := $(O)/kvm/guest/guest.bin

# Explicit rules would make the first of them make's default goal: keep
# whatever goal the Makefile had (empty means its next target, `all`).
kvm_saved_goal := $(.DEFAULT_GOAL)

$(O)/kvm/guest/guest.gobj: kvm/guest/guest.c
	$(quiet) CC $@
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(GUEST_CFLAGS) -MF $(O)/kvm/guest/guest.d -c -o $@ $<

$(O)/kvm/guest/guest.elf: $(O)/kvm/guest/guest.gobj kvm/guest/guest.ld
	$(quiet) LD $@
	$(Q)ld -static -nostdlib -no-pie -z noexecstack --no-warn-rwx-segments -T kvm/guest/guest.ld -o $@ $<

$(GUEST_BIN): $(O)/kvm/guest/guest.elf
	$(quiet) OBJCOPY $@
	$(Q)objcopy -O binary $< $@

$(O)/kvm/payload.o: kvm/payload.S $(GUEST_BIN)
	$(quiet) AS $@
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) -DRM_GUEST_BIN='"$(GUEST_BIN)"' -c -o $@ $<

.DEFAULT_GOAL := $(kvm_saved_goal)

HOST_TESTS += test-kvm-guest
BED_TESTS  += test-kvm-guest
HOST_TESTS += test-kvm-dirty
BED_TESTS  += test-kvm-dirty
HOST_TESTS += test-kvm-vmstate
HOST_TESTS += test-kvm-backing
HOST_TESTS += test-kvm-populate
BED_TESTS  += test-kvm-populate
HOST_TESTS += test-kvm-snapshot
BED_TESTS  += test-kvm-snapshot
BENCH_BINS += bench-dirty-sync
