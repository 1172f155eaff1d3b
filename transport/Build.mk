# transport/ — one ops table (transport.h) and its backends: rdma (libibverbs +
# librdmacm, with RDMA memory registration in register.c) and tcp.  Never
# includes kvm/, migration/ or pinning/.
LIB_OBJS += transport/wire.o
LIB_OBJS += transport/transport.o
LIB_OBJS += transport/tcp.o
LIB_OBJS += transport/register.o
LIB_OBJS += transport/rdma.o
HOST_TESTS += test-transport-tcp
BED_TESTS += test-transport-rdma
BENCH_BINS += bench-transport
