# cli/ — the rdmamig binary: flags, progress, JSON stats.  Includes only
# include/rdmamig.h, kvm/vmm.h (the built-in VMM) and its own headers; links librmvmm.a and
# librdmamig.a.  Nothing includes cli/.
CLI_OBJS += cli/main.o
HOST_TESTS += test-e2e
BED_TESTS  += test-e2e
CLI_OBJS += cli/nic-node.o
