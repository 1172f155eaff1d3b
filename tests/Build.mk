# tests/ — Criterion suites.  HOST_TESTS run on this host; BED_TESTS run on the
# soft-RoCE test bed (directly or inside scripts/soft-roce/vm.sh).  A suite
# that needs /dev/kvm runs in both lists' environments where it exists.
HOST_TESTS += test-common
HOST_TESTS += test-kvm-smoke
BED_TESTS  += test-verbs-smoke
BED_TESTS  += test-kvm-smoke
HOST_TESTS += test-linkage

# Linked against the shared library alone: only what it exports may link.
# (An explicit rule would become make's default goal: keep the Makefile's.)
tests_saved_goal := $(.DEFAULT_GOAL)
$(O)/tests/test-linkage: $(O)/tests/test-linkage.o $(LIB_SO)
	$(quiet) LINK $@
	$(Q)$(CC) -o $@ $< $(LDFLAGS) -L$(O) -Wl,-rpath,'$$ORIGIN/..' -l:librdmamig.so -lcriterion -ldl
.DEFAULT_GOAL := $(tests_saved_goal)
