# migration/ — the engine, VMM-agnostic: stages, convergence policy, wire
# protocol, stats.  Part of librdmamig.  Sees a VMM only through the ops table
# of include/rdmamig.h and a transport only through transport/transport.h;
# includes transport/, common/ and include/, never kvm/, pinning/ or cli/.
LIB_OBJS += migration/protocol.o
LIB_OBJS += migration/policy.o
LIB_OBJS += migration/ram.o
LIB_OBJS += migration/migration.o
LIB_OBJS += migration/handover.o
HOST_TESTS += test-migration
BED_TESTS  += test-migration
HOST_TESTS += test-migration-handover
BED_TESTS  += test-migration-handover
