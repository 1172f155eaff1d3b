# tests/ — Criterion suites, run.sh, and the build checks check-*.sh (the
# layering rule, the library's exports) that run.sh runs first.  HOST_TESTS
# run on this host; BED_TESTS run on the soft-RoCE test bed (directly or
# inside scripts/soft-roce/vm.sh).  A suite that needs /dev/kvm is in both
# lists: run.sh runs it on the host where /dev/kvm works there, and on the
# bed only for its RDMA cases (Criterion suites named *_rdma) — or in full
# where the host has no KVM.  Suites link librmvmm.a and librdmamig.a, so
# they may include any layer's headers; never cli/'s.
HOST_TESTS += test-common
HOST_TESTS += test-kvm-smoke
BED_TESTS  += test-verbs-smoke
BED_TESTS  += test-kvm-smoke
HOST_TESTS += test-linkage
HOST_TESTS += test-hostile
HOST_TESTS += test-hostile-peer
# The fault matrix (issue 11): TCP cases here, RDMA cases (matrix_rdma) on the bed.
HOST_TESTS += test-fault-matrix
BED_TESTS  += test-fault-matrix
HOST_TESTS += test-soak
BED_TESTS  += test-soak

# Linked against the shared library alone: only what it exports may link.
# (An explicit rule would become make's default goal: keep the Makefile's.)
tests_saved_goal := $(.DEFAULT_GOAL)
$(O)/tests/test-linkage: $(O)/tests/test-linkage.o $(LIB_SO)
	$(quiet) LINK $@
	$(Q)$(CC) -o $@ $< $(LDFLAGS) -L$(O) -Wl,-rpath,'$$ORIGIN/..' -l:librdmamig.so -lcriterion -ldl
.DEFAULT_GOAL := $(tests_saved_goal)
