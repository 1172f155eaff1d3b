# tests/ — Criterion suites.  HOST_TESTS run on this host; BED_TESTS run on the
# soft-RoCE test bed (directly or inside scripts/soft-roce/vm.sh).  A suite
# that needs /dev/kvm runs in both lists' environments where it exists.
HOST_TESTS += test-common
HOST_TESTS += test-kvm-smoke
BED_TESTS  += test-verbs-smoke
BED_TESTS  += test-kvm-smoke
