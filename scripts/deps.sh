#!/bin/bash
# deps.sh — make sure the Debian packages rdmamig builds and tests with are
# installed.  As root, installs what is missing with apt-get; otherwise prints
# the one apt-get line to run and fails.  Cheap when nothing is missing.
#   scripts/deps.sh [--check]     --check: only report, never install
set -euo pipefail

pkgs=(
	gcc make pkg-config
	clang libclang-rt-14-dev
	rdma-core libibverbs-dev librdmacm-dev ibverbs-providers ibverbs-utils rdmacm-utils perftest
	libnuma-dev numactl libhugetlbfs-dev
	libssl-dev
	libcriterion-dev
	qemu-system-x86 linux-image-amd64 busybox-static cpio kmod iproute2
	gnuplot-nox jq
)

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

line="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "${1:-}" = --check ] || [ "$(id -u)" != 0 ]; then
	echo "deps.sh: missing packages: ${missing[*]}" >&2
	echo "deps.sh: as root, run: apt-get update && $line" >&2
	exit 1
fi
echo "deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/rdmamig-deps.log 2>&1 || {
	tail -20 /tmp/rdmamig-deps.log >&2
	echo "deps.sh: apt-get failed (full log: /tmp/rdmamig-deps.log)" >&2
	exit 1
}
echo "deps.sh: installed (log: /tmp/rdmamig-deps.log)"
