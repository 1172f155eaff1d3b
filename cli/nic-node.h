/*
 * cli/nic-node.h — which NUMA node the network device behind an address sits
 * on, so that guest RAM can be placed near the NIC that moves it.
 */
#ifndef RDMAMIG_CLI_NIC_NODE_H
#define RDMAMIG_CLI_NIC_NODE_H

#include <stdbool.h>

/* The NUMA node of the local network device that carries traffic to (src)
 * or from (destination: the address it listens on) addr, or -1 when it is
 * not known: one node only, a wildcard address, a virtual device without a
 * PCI parent (loopback, dummy, veth), or no route.  Sends nothing. */
int cli_nic_numa_node(const char *addr, const char *port, bool src);

#endif
