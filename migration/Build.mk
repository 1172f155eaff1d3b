# migration/ — the engine, VMM-agnostic: stages, convergence policy, wire
# protocol, stats.  Sees a VMM only through the ops table and a transport only
# through transport.h.
LIB_OBJS += migration/protocol.o
LIB_OBJS += migration/policy.o
LIB_OBJS += migration/ram.o
LIB_OBJS += migration/migration.o
HOST_TESTS += test-migration
BED_TESTS  += test-migration
