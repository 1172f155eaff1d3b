# pinning/ — guest-RAM backing (anonymous, memfd, hugetlbfs 2M/1G, NUMA node,
# prefault, THP) and its background population in address order.  Part of
# the built-in VMM's archive, librmvmm.a: the VMM maps what it returns into
# its guest.  Includes only common/ and include/; knows
# nothing of KVM, of the wire or of RDMA registration (transport/register.c).
VMM_OBJS += pinning/backing.o
VMM_OBJS += pinning/populate.o
