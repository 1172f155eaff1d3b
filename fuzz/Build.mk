# fuzz/ — the libFuzzer targets: one small file per parser that reads the
# peer's bytes (ctrl.c's frames and handshake, the TCP receive thread, the
# engine's messages, the device-state stream, the vCPU state loader), their
# checked-in corpora
# (fuzz/corpus/<target>/, seeded from a real migration's traffic by
# capture.py and minimized with -merge=1), and run.sh, which fuzzes or
# replays them.  Targets may include any layer but cli/ (they link both
# archives); nothing outside fuzz/ may include fuzz/.  Built only with
# FUZZ=1 (clang, -fsanitize=fuzzer,address,undefined, into build-fuzz/).
#
#   make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="fuzz-frames ..."]
#   make fuzz-replay      each target over its corpus once, no new inputs
#   make fuzz-merge       minimize build-fuzz/corpus/<t> into fuzz/corpus/<t>
FUZZ_TARGETS ?= fuzz-frames fuzz-tcp-rx fuzz-handshake fuzz-engine fuzz-vmstate fuzz-state
FUZZ_SECONDS ?= 60
FUZZ_O       := build-fuzz

fuzz_saved_goal := $(.DEFAULT_GOAL)

ifeq ($(FUZZ),1)
$(O)/fuzz/%: $(O)/fuzz/%.o $(VMM_A) $(LIB_A)
	$(quiet) LINK $@
	$(Q)$(CC) -fsanitize=fuzzer -o $@ $^ $(LDFLAGS) $(LIBS)

fuzz-bins: $(addprefix $(O)/fuzz/,$(FUZZ_TARGETS))
$(foreach t,$(FUZZ_TARGETS),$(eval $(O)/fuzz/$(t): $(O)/fuzz/$(t).o))
else
fuzz-bins:
	$(Q)$(MAKE) --no-print-directory FUZZ=1 SANITIZE=0 O=$(FUZZ_O) fuzz-bins
endif

fuzz: fuzz-bins
	$(Q)O=$(FUZZ_O) FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh fuzz $(FUZZ_TARGETS)

fuzz-replay: fuzz-bins
	$(Q)O=$(FUZZ_O) fuzz/run.sh replay $(FUZZ_TARGETS)

fuzz-merge: fuzz-bins
	$(Q)O=$(FUZZ_O) fuzz/run.sh merge $(FUZZ_TARGETS)

.DEFAULT_GOAL := $(fuzz_saved_goal)
