/*
 * cli/nic-node.c — the NUMA node of the NIC behind an address: the local
 * address that reaches it (for a source, what a connected UDP socket gets
 * from the routing table; nothing is sent), its interface (getifaddrs), and
 * that interface's PCI device's node in sysfs.  RDMA devices sit on the
 * netdev they carry RoCE for, so this is their node too.
 */
#include <ifaddrs.h>
#include <netdb.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli/nic-node.h"

static bool same_addr(const struct sockaddr *a, const struct sockaddr *b)
{
	if (a->sa_family != b->sa_family)
		return false;
	if (a->sa_family == AF_INET)
		return !memcmp(&((const struct sockaddr_in *)a)->sin_addr,
			       &((const struct sockaddr_in *)b)->sin_addr, sizeof(struct in_addr));
	if (a->sa_family == AF_INET6)
		return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
			       &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr));
	return false;
}

static int iface_node(const char *ifname)
{
	char path[128];
	FILE *f;
	int node = -1;

	snprintf(path, sizeof(path), "/sys/class/net/%s/device/numa_node", ifname);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%d", &node) != 1)
		node = -1;
	fclose(f);
	return node;
}

int cli_nic_numa_node(const char *addr, const char *port, bool src)
{
	struct addrinfo hints = { .ai_socktype = SOCK_DGRAM, .ai_flags = src ? 0 : AI_PASSIVE }, *ai;
	struct sockaddr_storage local;
	socklen_t len = sizeof(local);
	struct ifaddrs *ifs;
	int node = -1;

	/* One node: nothing to choose. */
	if (access("/sys/devices/system/node/node1", F_OK))
		return -1;
	if (!addr || getaddrinfo(addr, port, &hints, &ai))
		return -1;
	if (src) {
		int fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);

		if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) ||
		    getsockname(fd, (struct sockaddr *)&local, &len)) {
			if (fd >= 0)
				close(fd);
			freeaddrinfo(ai);
			return -1;
		}
		close(fd);
	} else {
		memcpy(&local, ai->ai_addr, ai->ai_addrlen < sizeof(local) ? ai->ai_addrlen : sizeof(local));
	}
	freeaddrinfo(ai);
	if (getifaddrs(&ifs))
		return -1;
	for (struct ifaddrs *i = ifs; i && node < 0; i = i->ifa_next)
		if (i->ifa_addr && same_addr(i->ifa_addr, (struct sockaddr *)&local))
			node = iface_node(i->ifa_name);
	freeifaddrs(ifs);
	return node;
}
