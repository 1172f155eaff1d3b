#!/bin/bash
# setup.sh — bring up soft-RoCE (rxe) on a host whose kernel can load rdma_rxe.
#
#   scripts/soft-roce/setup.sh [--netdev DEV] [--addr ADDR/LEN] [--env]
#
# Loads the RDMA modules, creates DEV (default: a dummy device "rdmamig0", so no
# NIC is needed and no traffic leaves the host), gives it ADDR (default
# 10.77.0.1/24) and fd77::1/64, and creates rxe0 on it.  Idempotent.  Prints
# the device, or with --env the shell assignments RDMAMIG_RXE_DEV=...
# RDMAMIG_RXE_ADDR=... RDMAMIG_RXE_ADDR6=... to eval.
# teardown.sh undoes it.  Exit 0: rxe0 is usable; 1: this kernel cannot.
set -euo pipefail
netdev=rdmamig0
addr=10.77.0.1/24
addr6=fd77::1/64
env=0
while [ $# -gt 0 ]; do
	case $1 in
	--netdev) netdev=$2; shift 2 ;;
	--addr) addr=$2; shift 2 ;;
	--env) env=1; shift ;;
	-h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "setup.sh: unknown option $1" >&2; exit 2 ;;
	esac
done
say() { echo "setup.sh: $*" >&2; }

# crc32_generic first: without it `rdma link add` fails with ENOENT.
for m in crc32_generic udp_tunnel ip6_udp_tunnel ib_core ib_uverbs rdma_rxe \
	 ib_cm iw_cm rdma_cm rdma_ucm; do
	if ! modprobe "$m" 2>/dev/null && [ ! -d "/sys/module/$m" ]; then
		say "cannot load $m: this kernel has no soft-RoCE (use vm.sh)"
		exit 1
	fi
done
# Kernel TLS for the TCP transport's --tls, where the kernel has it (best
# effort: without it --tls runs in userspace).  The AEAD modules are loaded
# by name because a VM's kernel cannot load them on demand from the chroot.
for m in tls gcm ghash_generic aesni_intel ghash_clmulni_intel chacha20poly1305; do
	modprobe "$m" 2>/dev/null || true
done
if ! ip link show "$netdev" >/dev/null 2>&1; then
	modprobe dummy numdummies=0 2>/dev/null || true
	ip link add "$netdev" type dummy || { say "cannot create dummy netdev $netdev"; exit 1; }
fi
ip addr replace "$addr" dev "$netdev"
# An IPv6 address too, for rdma_cm over IPv6 (nodad: usable at once).
ip -6 addr replace "$addr6" dev "$netdev" nodad 2>/dev/null || addr6=
ip link set "$netdev" up
if ! rdma link show rxe0/1 >/dev/null 2>&1; then
	rdma link add rxe0 type rxe netdev "$netdev" || { say "rdma link add rxe0 failed"; exit 1; }
fi
for _ in $(seq 300); do	# up to 30 s: the nested bed can be slow to register it
	[ -e /sys/class/infiniband/rxe0 ] && break
	sleep 0.1
done
[ -e /sys/class/infiniband/rxe0 ] || { say "rxe0 did not appear"; exit 1; }
# Usable, not just there: the port ACTIVE and the address's GID (IPv4-mapped)
# in its table, which the kernel fills from a workqueue after the device
# appears.  An rdma_cm connect before that times out (seen after the fault
# matrix recreates rxe0 on a loaded bed).
IFS=. read -r a b c d <<< "${addr%/*}"
gid=$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' "$a" "$b" "$c" "$d")
for _ in $(seq 300); do
	grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state 2>/dev/null &&
		grep -qx "$gid" /sys/class/infiniband/rxe0/ports/1/gids/[0-7] 2>/dev/null && break
	sleep 0.1
done
grep -qx "$gid" /sys/class/infiniband/rxe0/ports/1/gids/[0-7] 2>/dev/null ||
	{ say "rxe0 has no GID for ${addr%/*} after 30 s"; exit 1; }
if [ $env = 1 ]; then
	echo "export RDMAMIG_RXE_DEV=rxe0 RDMAMIG_RXE_ADDR=${addr%/*} RDMAMIG_RXE_NETDEV=$netdev" \
		"RDMAMIG_RXE_ADDR6=${addr6%/*}"
else
	echo "rxe0 on $netdev (${addr%/*})"
fi
