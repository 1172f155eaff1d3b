# transport/ — one ops table (transport.h) and its backends: rdma (libibverbs +
# librdmacm) and tcp.  Never includes kvm/ or migration/.
