# pinning/ — guest-RAM backing (anonymous, memfd, hugetlbfs 2M/1G, NUMA node)
# and memory registration strategies.  Knows nothing of KVM or of the wire.
LIB_OBJS += pinning/register.o
