# transport/ — one ops table (transport.h), the control protocol both
# backends speak (ctrl.c; handshake bodies in ctrl-hello.c, the pre-shared-key
# exchange in ctrl-auth.c, keep-alives in ctrl-live.c, staged layouts in
# ctrl-stage.c), and the backends: rdma
# (libibverbs + librdmacm, with RDMA memory registration in register.c) and
# tcp (with TLS in tcp-tls.c).  Part of librdmamig.  Includes common/ and include/ only: never
# migration/ (it sits above), kvm/ or pinning/.
LIB_OBJS += transport/wire.o
LIB_OBJS += transport/transport.o
LIB_OBJS += transport/ctrl.o
LIB_OBJS += transport/ctrl-hello.o
LIB_OBJS += transport/ctrl-auth.o
LIB_OBJS += transport/ctrl-live.o
LIB_OBJS += transport/ctrl-stage.o
LIB_OBJS += transport/net.o
LIB_OBJS += transport/register.o
LIB_OBJS += transport/tcp.o
LIB_OBJS += transport/tcp-conn.o
LIB_OBJS += transport/tcp-tls.o
LIB_OBJS += transport/rdma.o
LIB_OBJS += transport/rdma-cm.o
LIB_OBJS += transport/rdma-mw.o
LIB_OBJS += transport/rdma-stage.o
HOST_TESTS += test-transport-ctrl
HOST_TESTS += test-transport-stage
HOST_TESTS += test-transport-hello
HOST_TESTS += test-transport-auth
HOST_TESTS += test-transport-tcp
BED_TESTS += test-transport-rdma
BENCH_BINS += bench-transport
