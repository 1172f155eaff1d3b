#!/bin/bash
# vm.sh — run one command on a soft-RoCE test bed inside a QEMU VM.
#
# For hosts whose kernel cannot load rdma_rxe (no RDMA, no loadable modules).
# Boots Debian's kernel under TCG with `-cpu max` and no NIC, shares the host
# root read-only and the work tree read-write over 9p, loads the RDMA modules
# and kvm_amd (nested KVM), creates rxe0 on dummy0, then runs the command in a
# chroot of the host root so binaries built on the host run unchanged.  The
# command's output streams to stdout; the script exits with its exit code.
#
#   scripts/soft-roce/vm.sh [-t SECONDS] [-m MEM] [-c CPUS] -- CMD [ARGS...]
#
# Exit codes: the command's own; 125 when the VM failed before the command
# started (boot, module load, rxe setup, or a timeout in those: the only case
# a caller may retry); 124 when the command timed out; 123 when the VM died
# while the command ran (a kernel panic, say).
#
# The VM's console (kernel warnings and worse, QEMU's own messages, boot
# output) goes to a log instead of stdout, and the kernel log from the
# command's start on is saved when it ends; both are printed, after the
# command's output, whenever the exit code is not 0 or the kernel logged a
# warning, a BUG, an oops or a call trace.
# Environment: RDMAMIG_VM_TIMEOUT, RDMAMIG_VM_MEM, RDMAMIG_VM_CPUS, RDMAMIG_CACHE,
# RDMAMIG_VM_CPU (QEMU's -cpu model, default max), RDMAMIG_VM_TCG_THREAD
# (single: one host thread runs every vCPU, the default; multi: one each —
# QEMU's nested SVM then loses guest state, see bench/README.md) and
# RDMAMIG_VM_APPEND (more kernel command-line arguments), the last three for
# comparing bed variants.
# Inside, the command sees RDMAMIG_BED=vm, RDMAMIG_RXE_DEV=rxe0 and
# RDMAMIG_RXE_ADDR=10.77.0.1 (an address that exists only inside the VM).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(cd "$here/../.." && pwd)
cache=${RDMAMIG_CACHE:-$work/.cache/soft-roce}
timeout=${RDMAMIG_VM_TIMEOUT:-900}
mem=${RDMAMIG_VM_MEM:-3G}
cpus=${RDMAMIG_VM_CPUS:-$(nproc)}
cpu=${RDMAMIG_VM_CPU:-max}
tcg_thread=${RDMAMIG_VM_TCG_THREAD:-single}
append=${RDMAMIG_VM_APPEND:-}

while [ $# -gt 0 ]; do
	case $1 in
	-t) timeout=$2; shift 2 ;;
	-m) mem=$2; shift 2 ;;
	-c) cpus=$2; shift 2 ;;
	--) shift; break ;;
	-h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || { echo "vm.sh: no command given (try --help)" >&2; exit 125; }

die() { echo "vm.sh: $*" >&2; exit 125; }

for tool in qemu-system-x86_64 busybox cpio modprobe; do
	command -v "$tool" >/dev/null ||
		die "$tool not found; run 'make deps' (or: apt-get install qemu-system-x86 busybox-static cpio kmod)"
done
# Under huge-page churn QEMU 7.2's TCG corrupts this VM's kernel memory within
# a few nested-KVM runs, QEMU 10's far less often (issue 10,
# bench/nested-churn; vm-init.sh keeps the churn away): say so on 7.x.
qver=$(qemu-system-x86_64 --version | sed -n '1s/.*version \([0-9]*\)\..*/\1/p')
if [ -n "$qver" ] && [ "$qver" -lt 8 ]; then
	echo "vm.sh: warning: QEMU $qver.x corrupts nested KVM guests' memory more often than 8.0 and newer (bench/README.md); 'make deps' installs a newer one" >&2
fi

# The newest Debian kernel that has its modules installed.
kver=
for k in $(ls /boot/vmlinuz-* 2>/dev/null | sort -V -r); do
	v=${k#/boot/vmlinuz-}
	if [ -d "/lib/modules/$v/kernel/drivers/infiniband/sw/rxe" ]; then kver=$v; break; fi
done
[ -n "$kver" ] || die "no kernel with rdma_rxe in /boot and /lib/modules; run 'make deps' (apt-get install linux-image-amd64)"
kernel=/boot/vmlinuz-$kver

# The initramfs holds only busybox and what mounting 9p needs; everything else
# (modprobe, ip, rdma, the modules themselves) comes from the host root.  It is
# cached by kernel version and by this script's contents.
stamp=$(cat "$0" "$here/vm-init.sh" | md5sum | cut -c1-8)
# Built under a lock: several VMs may start at once (tests/run.sh).
initrd=$cache/initrd-$kver-$stamp.cpio.gz
mkdir -p "$cache"
exec 9> "$cache/initrd.lock"
flock 9
if [ ! -s "$initrd" ]; then
	rm -f "$cache"/initrd-*.cpio.gz
	root=$(mktemp -d)
	trap 'rm -rf "$root"' EXIT
	mkdir -p "$root"/{bin,dev,proc,sys,newroot,mods}
	cp "$(command -v busybox)" "$root/bin/busybox"
	: > "$root/mods/order"
	for m in virtio_pci 9pnet_virtio 9p; do
		modprobe --show-depends -S "$kver" "$m" | while read -r _ path _; do
			base=$(basename "$path")
			grep -qx "$base" "$root/mods/order" && continue
			cp "$path" "$root/mods/$base"
			echo "$base" >> "$root/mods/order"
		done
	done
	cp "$here/vm-init.sh" "$root/init"
	chmod +x "$root/init"
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd.$$.tmp"
	mv "$initrd.$$.tmp" "$initrd"
	rm -rf "$root"
	trap - EXIT
fi
exec 9>&-

# The command travels as a script in the shared work tree.
run=$(mktemp -d "$cache/run.XXXXXX")
trap 'rm -rf "$run"' EXIT
{
	echo "cd $(printf %q "$PWD") 2>/dev/null || cd /"
	printf '%q ' "$@"; echo
} > "$run/cmd.sh"

# Serial output: strip the CRs the tty adds, show what the command prints
# (between the start and exit markers), send kernel console lines
# ("[   12.345678] ...") and all else QEMU prints to the console log, keep
# the exit code: the
# command's (125 from a started command becomes 1), or 200 when it never
# started, 201 when it started and the VM stopped without reporting.  A shell loop, because tr and mawk hold pipe
# output back in 4 KiB blocks.
console=$run/console.log
filter() {
	local line started=0 rc=200
	while IFS= read -r line || [ -n "$line" ]; do
		line=${line%$'\r'}
		if [[ $line =~ ^\[\ *[0-9]+\.[0-9]+\]\  ]]; then
			printf '%s\n' "$line" >> "$console"
			continue
		fi
		case $line in
		*@@RDMAMIG-VM-START) started=1; rc=201 ;;
		*@@RDMAMIG-VM-EXIT\ *)
			rc=${line##* }
			# 125 means "the VM failed before the command started", the
			# one failure a caller may retry: a command that itself
			# exits 125 must not pass for that.
			if [ $started = 1 ] && [ "$rc" = 125 ]; then
				echo "vm.sh: the command exited 125; reported as 1 (125 is the VM's own pre-start failure)" >&2
				rc=1
			fi
			started=0 ;;
		vm-init:*) printf '%s\n' "$line" ;;
		*) if [ $started = 1 ]; then printf '%s\n' "$line"; else printf '%s\n' "$line" >> "$console"; fi ;;
		esac
	done
	return "$rc"
}

# What the VM kernel said, for a run that failed.
show_kernel() {
	echo "vm.sh: --- VM console: kernel warnings and worse, and QEMU's and the boot's own output ---"
	[ -s "$console" ] && cat "$console" || echo "(nothing)"
	if [ -s "$run/dmesg" ]; then
		echo "vm.sh: --- VM kernel log while the command ran (dmesg) ---"
		cat "$run/dmesg"
	fi
	echo "vm.sh: --- end of VM kernel output ---"
}
set +e
timeout --foreground -k 10 "$timeout" qemu-system-x86_64 \
	-machine q35 -accel "tcg,thread=$tcg_thread" -cpu "$cpu" -smp "$cpus" -m "$mem" \
	-nographic -no-reboot -nic none -monitor none -serial stdio \
	-kernel "$kernel" -initrd "$initrd" \
	-append "console=ttyS0 quiet loglevel=5 panic=-1 rdmamig.work=$work rdmamig.cmd=$run/cmd.sh $append" \
	-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
	-virtfs "local,path=$work,mount_tag=work,security_model=none,multidevs=remap" \
	</dev/null 2>&1 | filter
status=("${PIPESTATUS[@]}")
set -e
rc=${status[1]}
if [ "$rc" = 200 ]; then
	if [ "${status[0]}" = 124 ]; then
		echo "vm.sh: timed out after ${timeout}s before the command started" >&2
	else
		echo "vm.sh: the VM stopped before the command started (qemu exit ${status[0]})" >&2
	fi
	rc=125
elif [ "${status[0]}" = 124 ]; then
	echo "vm.sh: the command timed out after ${timeout}s (raise with -t or RDMAMIG_VM_TIMEOUT)" >&2
	rc=124
elif [ "$rc" = 201 ]; then
	echo "vm.sh: the VM died while the command ran (qemu exit ${status[0]})" >&2
	rc=123
fi
if [ "$rc" != 0 ]; then
	show_kernel >&2
elif grep -qE 'WARNING:|BUG:|Oops|Call Trace:|general protection|corrupted' "$console" "$run/dmesg" 2>/dev/null; then
	# A kernel that complained while the command still passed is a bed
	# that may not be telling the truth: say so, with its log.
	echo "vm.sh: the command passed, but the VM kernel logged warnings or worse" >&2
	show_kernel >&2
fi
exit "$rc"
