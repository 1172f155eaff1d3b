#!/bin/bash
# deps.sh — make sure the Debian packages rdmamig builds and tests with are
# installed.  As root, installs what is missing with apt-get; otherwise prints
# the one apt-get line to run and fails.  Cheap when nothing is missing.
#   scripts/deps.sh [--check]     --check: only report, never install
#
# QEMU for the soft-RoCE test VM is 8.0 or newer: when the VM's khugepaged
# collapses the RAM of KVM guests running inside it, QEMU 7.2's TCG (Debian
# 12's own) corrupts the VM kernel's memory within a few runs — the
# "corrupted stack end" panics of issue 10, bench/nested-churn — and QEMU 10
# far less often (bench/README.md).  On Debian 12 the newer QEMU comes from
# Debian's bookworm-backports.
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

# qemu_too_old — the installed QEMU is older than 8.0 (or absent).
qemu_too_old() {
	local v
	v=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null) || return 0
	v=${v#*:}
	[ "${v%%.*}" -lt 8 ] 2>/dev/null
}
backports=
if qemu_too_old && grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
	backports=bookworm-backports
	keep=()
	for p in "${missing[@]}"; do [ "$p" = qemu-system-x86 ] || keep+=("$p"); done
	missing=(${keep[@]+"${keep[@]}"})
fi
[ ${#missing[@]} -eq 0 ] && [ -z "$backports" ] && exit 0

line="apt-get install -y --no-install-recommends ${missing[*]}"
[ -n "$backports" ] && line="${missing[*]:+$line && }apt-get install -y --no-install-recommends -t $backports qemu-system-x86 (after adding $backports to apt's sources)"
if [ "${1:-}" = --check ] || [ "$(id -u)" != 0 ]; then
	echo "deps.sh: missing packages: ${missing[*]}${backports:+ qemu-system-x86 (8.0 or newer)}" >&2
	echo "deps.sh: as root, run: apt-get update && $line" >&2
	exit 1
fi
echo "deps.sh: installing ${missing[*]}${backports:+ qemu-system-x86 from $backports}"
export DEBIAN_FRONTEND=noninteractive
if [ -n "$backports" ]; then
	# Debian's own archive, its backports suite: apt takes nothing from it
	# unless asked by -t, so only QEMU (and what it needs) comes from there.
	src=/etc/apt/sources.list.d/rdmamig-$backports.sources
	printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
		"$backports" > "$src"
	echo "deps.sh: QEMU older than 8.0 here: taking qemu-system-x86 from $backports ($src)"
fi
apt-get update -qq
fail() {
	tail -20 /tmp/rdmamig-deps.log >&2
	echo "deps.sh: apt-get failed (full log: /tmp/rdmamig-deps.log)" >&2
	exit 1
}
: >/tmp/rdmamig-deps.log
if [ ${#missing[@]} -gt 0 ]; then
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >>/tmp/rdmamig-deps.log 2>&1 || fail
fi
if [ -n "$backports" ]; then
	apt-get install -y -qq --no-install-recommends -t "$backports" qemu-system-x86 >>/tmp/rdmamig-deps.log 2>&1 || fail
	qemu_too_old && { echo "deps.sh: QEMU is still older than 8.0 after installing from $backports" >&2; exit 1; }
fi
echo "deps.sh: installed (log: /tmp/rdmamig-deps.log)"
