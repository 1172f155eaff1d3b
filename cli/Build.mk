# cli/ — the rdmamig binary: flags, progress, JSON stats.  Uses only
# include/rdmamig.h (plus kvm/ as the built-in VMM).
CLI_OBJS += cli/main.o
HOST_TESTS += test-e2e
BED_TESTS  += test-e2e
