#!/bin/busybox sh
# vm-init.sh — /init of the test-bed VM's initramfs (see vm.sh).
# Mounts the host root read-only and the work tree read-write over 9p, then
# runs the requested command in a chroot of the host root, after setup.sh has
# made rxe0 and kvm_amd has made /dev/kvm.  Reports the exit code on the
# console as "@@RDMAMIG-VM-EXIT N" and powers off.  "@@RDMAMIG-VM-START"
# marks the moment the command starts: a failure before it is the VM's, one
# after it the command's.  The kernel log from then on is left next to the
# command (dmesg) for vm.sh to show when the command fails.
#
# The VM kernel never moves the RAM of the KVM guests that run inside it:
# khugepaged does not collapse pages and compaction runs only when an
# allocation needs it.  Under nested KVM on TCG, guest RAM replaced under a
# running nested guest (a huge-page collapse) corrupts memory — the nested
# guest's, and with QEMU 7.2 the VM kernel's own (its "corrupted stack end"
# panics, issue 10; bench/nested-churn reproduces it).  Nor does it remap
# that RAM between huge and small pages: transparent huge pages only where a
# process asks (madvise), so guest RAM is not split from 2 MiB mappings
# under a running guest (300-360 PMD splits in every bed run before).  After
# the command the console says how many pages were collapsed or migrated
# meanwhile, and the other memory events.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m; done

for arg in $(cat /proc/cmdline); do
	case $arg in
	rdmamig.work=*) work=${arg#*=} ;;
	rdmamig.cmd=*) cmd=${arg#*=} ;;
	esac
done

fail() { echo "vm-init: $*"; echo "@@RDMAMIG-VM-EXIT 125"; poweroff -f; }
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $opts,ro,cache=loose hostroot /newroot || fail "cannot mount the host root"
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
ln -sf /proc/self/fd /newroot/dev/fd
ln -sf /proc/self/fd/0 /newroot/dev/stdin
ln -sf /proc/self/fd/1 /newroot/dev/stdout
ln -sf /proc/self/fd/2 /newroot/dev/stderr
mkdir -p /newroot/dev/shm /newroot/dev/hugepages
mount -t tmpfs shm /newroot/dev/shm
mount -t hugetlbfs hugetlbfs /newroot/dev/hugepages
mount -t tmpfs tmp /newroot/tmp
mount -t tmpfs run /newroot/run
# The work tree last: it may live under /tmp or /run, which are fresh
# tmpfs mounts now (the directory is made there if so).
mkdir -p "/newroot$work" 2>/dev/null
mount -t 9p -o $opts work "/newroot$work" || fail "cannot mount the work tree at $work"

chroot /newroot /usr/bin/env -i HOME=/tmp TERM=dumb PATH=/usr/sbin:/usr/bin:/sbin:/bin \
	RDMAMIG_BED=vm /bin/bash -c '
	ip link set lo up
	modprobe kvm_amd 2>/dev/null || modprobe kvm_intel 2>/dev/null ||
		echo "vm-init: no nested KVM (kvm_amd/kvm_intel did not load)"
	eval "$("$1"/scripts/soft-roce/setup.sh --env)" || exit 125
	ulimit -l unlimited
	thp=/sys/kernel/mm/transparent_hugepage
	echo 8 > $thp/khugepaged/pages_to_scan
	echo 4294967295 > $thp/khugepaged/scan_sleep_millisecs
	echo never > $thp/defrag
	echo madvise > $thp/enabled
	echo 0 > /proc/sys/vm/compaction_proactiveness
	moved() { awk "/^(thp_collapse_alloc|pgmigrate_success) /{ n += \$2 } END { print n + 0 }" /proc/vmstat; }
	before=$(moved)
	# Other memory events that change the mappings of nested guests, for
	# correlating the failure of a nested guest with them (issue 10).
	events="thp_fault_alloc|thp_split_pmd|thp_split_page|compact_stall|pgsteal_kswapd|pgsteal_direct"
	grep -E "^($events) " /proc/vmstat > /tmp/vmstat.before
	echo "rdmamig: the command starts" > /dev/kmsg
	echo @@RDMAMIG-VM-START
	(. "$2")
	rc=$?
	dmesg | sed -n "/rdmamig: the command starts/,\$p" > "${2%/*}/dmesg" 2>/dev/null
	echo "vm-init: pages the VM kernel collapsed or migrated under the command: $(( $(moved) - before ))"
	echo "vm-init: and meanwhile: $(grep -E "^($events) " /proc/vmstat |
		awk "NR == FNR { b[\$1] = \$2; next } { printf \"%s %d, \", \$1, \$2 - b[\$1] }" /tmp/vmstat.before - |
		sed "s/, \$//")"
	exit $rc' bed "$work" "$cmd"
rc=$?
echo "@@RDMAMIG-VM-EXIT $rc"
sync
poweroff -f
