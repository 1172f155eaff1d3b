# pinning/ — guest-RAM backing (anonymous, memfd, hugetlbfs 2M/1G, NUMA node).
# Knows nothing of KVM or of the wire.  (RDMA memory registration lives in
# transport/register.c: only the RDMA backend registers memory.)
