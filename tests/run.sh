#!/bin/bash
# tests/run.sh — run the Criterion suites on the beds this machine offers, and
# say which bed ran what.  Called by `make test`, which sets O, HOST_TESTS and
# BED_TESTS; `tests/run.sh --bed SUITE[:FILTER]...` is the part that runs on
# the RDMA bed.  Prints each suite's Criterion synthesis line and its time,
# then which beds ran which suites and one line "N passed, N failed, N
# skipped".  Before the suites it runs the build checks, tests/check-*.sh
# (layering, exports), each counted as one test that passes or fails.  Exit
# 0 only when nothing failed.  WRAP, if set, prefixes every suite (make
# check-valgrind sets it to valgrind).
#
# The beds:
# - this host: every HOST_TESTS suite.  Where /dev/kvm works here, KVM suites
#   run here at full speed.  Cases that need RDMA (Criterion suites named
#   *_rdma) are left to the RDMA bed rather than skipped.
# - the RDMA bed: soft-RoCE on this kernel if setup.sh can bring it up, else
#   the test VMs (scripts/soft-roce/vm.sh).  It runs the BED_TESTS suites,
#   except that a suite the host already ran with KVM runs there only for
#   its *_rdma cases (and not at all without any), and then the cases the
#   host's KVM had to skip.  The test VMs run while the host suites do (their
#   output is shown after theirs); rxe on this host runs after them.
#   Several test VMs (RDMAMIG_VM_BEDS, default one per host CPU, as memory
#   allows: each runs its vCPUs on one host thread) share one queue of
#   suites, longest first: each VM takes the next suite no other has taken
#   (an atomic mkdir in the shared work tree), so each suite runs once, on
#   whichever VM is free.
#
# Every suite is bounded (RDMAMIG_SUITE_TIMEOUT, 300 s; 3x that for the
# end-to-end suite), inside the VM too, so one hung suite does not take the
# others' verdicts with it.  No suite is run twice to get a pass.  The one
# retry: a test VM that fails before the suites start (boot, module load,
# rxe setup: vm.sh exit 125) is booted again, up to RDMAMIG_VM_TRIES times,
# and the summary says so.  A suite that fails, crashes or hangs fails the
# run, and vm.sh then prints the VM kernel's console and log.
#
# Hugepages: the pools the backing tests use (2 MiB, and 1 GiB where the
# kernel can find them at run time) are raised for the run and put back.
set -uo pipefail
set -f	# suite filters are globs for Criterion, not for the shell
cd "$(dirname "$0")/.."
O=${O:-build}
SUITE_TIMEOUT=${RDMAMIG_SUITE_TIMEOUT:-300}
VM_TRIES=${RDMAMIG_VM_TRIES:-3}
VM_MEM_MB=3072	# vm.sh's default -m
RDMA_CASES='*_rdma/*'
NO_RDMA_CASES='!(*_rdma)/*'

# A test that needs /dev/kvm gets it when the kernel has KVM but no node.
ensure_kvm_node() {
	if [ ! -e /dev/kvm ] && grep -qw kvm /proc/misc 2>/dev/null; then
		mknod -m 660 /dev/kvm c 10 "$(awk '$2 == "kvm" { print $1 }' /proc/misc)" 2>/dev/null || true
	fi
}

# KVM works here: /dev/kvm opens (on a host that is itself a PVM guest the
# node exists and open() fails with ENODEV).
kvm_works() {
	[ -e /dev/kvm ] && { : <> /dev/kvm; } 2>/dev/null
}

# The suite has cases that need RDMA (Criterion suites named *_rdma).
has_rdma_cases() {
	"$O/tests/$1" --list 2>/dev/null | grep -q '^[A-Za-z0-9_]*_rdma:'
}

# ---- hugepages: raise the pools for the run, put them back at exit.
HP_SYS=/sys/kernel/mm/hugepages
hp_saved=()
hp_raise() {	# hp_raise SIZE_KB WANT_FREE
	local d=$HP_SYS/hugepages-$1kB nr free
	[ -w "$d/nr_hugepages" ] || return 0
	nr=$(cat "$d/nr_hugepages") free=$(cat "$d/free_hugepages")
	[ "$free" -ge "$2" ] && return 0
	hp_saved+=("$d/nr_hugepages=$nr")
	echo $((nr + $2 - free)) > "$d/nr_hugepages" 2>/dev/null
}
hp_restore() {
	local e
	for e in "${hp_saved[@]}"; do
		echo "${e#*=}" > "${e%%=*}" 2>/dev/null
	done
	hp_saved=()
}
hp_report() {
	local d kb
	for kb in 2048 1048576; do
		d=$HP_SYS/hugepages-${kb}kB
		[ -r "$d/free_hugepages" ] || continue
		printf ' %s: %s free of %s;' "$([ $kb = 2048 ] && echo 2M || echo 1G)" \
			"$(cat "$d/free_hugepages")" "$(cat "$d/nr_hugepages")"
	done
}
# 64 x 2 MiB: a 64 MiB guest on huge-2M (tests/test-kvm-guest.c) with room to
# spare; 2 x 1 GiB: tests/test-kvm-backing.c allocates two pages of each size.
hugepages_for_tests() {
	if [ "$(id -u)" != 0 ]; then
		echo "== hugepages: not root, pools left as they are:$(hp_report)"
		return
	fi
	hp_raise 2048 64
	hp_raise 1048576 2
	echo "== hugepages for the run:$(hp_report) (put back at exit)"
}

# elapsed T0_NS — seconds since T0, one decimal.
elapsed() {
	local ms=$(( ($(date +%s%N) - $1) / 1000000 ))
	printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100))
}

# suite_bound NAME — seconds a suite may take: 2-3x what it takes on the
# nested bed.  The end-to-end suite migrates real guests, the fault matrix
# waits out silence bounds case by case: minutes there.
suite_bound() {
	case $1 in
	test-e2e|test-fault-matrix) echo $((SUITE_TIMEOUT * 3)) ;;
	*) echo "$SUITE_TIMEOUT" ;;
	esac
}

# run_suite BIN [FILTER] — one suite, bounded (unless WRAP slows it down on
# purpose), Criterion's own output kept (--verbose for the [SKIP] lines and
# their reasons, and each case's time), the chatter, the cases the filter
# leaves out and the passing cases under 2 s dropped: what is left says
# where a suite's time goes.  The suite writes to a file that is followed
# until the suite's own process ends, not to a pipe: a process it leaves
# behind holding its output (one the kernel wedged, which no signal ends)
# cannot keep the run waiting for an end of file.
run_suite() {
	local bound= out pid rc
	[ -z "${WRAP:-}" ] && bound="timeout -k 10 $(suite_bound "$1")"
	out=$(mktemp)
	$bound ${WRAP:-} "$O/tests/$1" --jobs 1 --verbose ${2:+--filter "$2"} > "$out" 2>&1 &
	pid=$!
	tail -n +1 -s 0.2 -f --pid="$pid" "$out" |
		grep --line-buffered -v -E '^\[RUN \] |^\[PASS\] .*: \([01]\.[0-9]+s\)$|^\[====\] Running|^\[----\] Criterion v|: Test is disabled$'
	wait "$pid"
	rc=$?
	rm -f "$out"
	return "$rc"
}

# run_suites WHERE SUITE[:FILTER]... — each suite with its time.  A suite
# that exits non-zero without a failing case in its synthesis line (a crash
# of the runner, a signal, its time bound) is reported as a failure of its
# own.
run_suites() {
	local where=$1; shift
	local rc=0 t0 s name filter out src
	out=$(mktemp)
	for s in "$@"; do
		name=${s%%:*} filter=
		[ "$name" != "$s" ] && filter=${s#*:}
		echo "== $where: $name${filter:+ (cases $filter)}"
		t0=$(date +%s%N)
		run_suite "$name" "$filter" | tee "$out"
		src=${PIPESTATUS[0]}
		if [ "$src" != 0 ]; then
			rc=1
			[ "$src" = 124 ] && echo "== $where: $name HUNG: stopped after $(suite_bound "$name") s"
			grep -q 'Synthesis:.*Failing: [1-9]\|Synthesis:.*Crashing: [1-9]' "$out" ||
				echo "[FAIL] $name exited $src without a failing case in its synthesis"
		fi
		echo "== $where: $name took $(elapsed "$t0")"
	done
	rm -f "$out"
	return $rc
}

# by_cost SUITE[:FILTER]... — the same, longest first (by their bounds, which
# follow what they cost), so that with several test VMs the long suites
# start first and the short ones fill in around them.
by_cost() {
	local s
	for s in "$@"; do printf '%s\t%s\n' "$(suite_bound "${s%%:*}")" "$s"; done |
		sort -s -t $'\t' -k1,1nr | cut -f2-
}

# bed_suites TAG SUITE[:FILTER]... — run_suites on the bed, for the suites
# this bed takes: with a queue (BED_QUEUE, a directory of the shared work
# tree), those no other test VM has taken, claimed one at a time by making
# TAG.N there (mkdir is atomic, over 9p too).
bed_suites() {
	local tag=$1 i=0 s rc=0; shift
	for s in "$@"; do
		i=$((i + 1))
		if [ -n "${BED_QUEUE:-}" ]; then
			mkdir "$BED_QUEUE/$tag.$i" 2>/dev/null || continue
		fi
		run_suites "$BED_WHERE" "$s" || rc=1
	done
	return $rc
}

# more_suites FILE WAIT — after its own suites, the bed runs the ones the
# host hands it in FILE (one SUITE[:FILTER] a line; the host writes it,
# perhaps empty, when its suites are done), waiting for it at most WAIT
# seconds: the host's suites run meanwhile, each with its own bound.
more_suites() {
	local file=$1 wait=$2 t0 more=()
	t0=$(date +%s)
	while [ ! -e "$file" ]; do
		if [ $(($(date +%s) - t0)) -ge "$wait" ]; then
			echo "[FAIL] the host did not say within $wait s which cases it leaves to the bed ($file)"
			return 1
		fi
		sleep 1
	done
	mapfile -t more < <(by_cost $(cat "$file"))
	[ ${#more[@]} -eq 0 ] && return 0
	bed_suites more "${more[@]}"
}

# vm_bed K [--more FILE WAIT N] SUITE[:FILTER]... — test VM number K: the
# bed suites it takes from the queue, each bounded in there, then (with
# --more) those the host hands over in FILE once its suites (bounded by WAIT
# in all) are done: up to N more suite bounds.  The VM's bound is the longer
# of the two, plus those (as if it ran every suite itself).  Booted again
# only when the VM failed before the suites started.
vm_bed() {
	local k=$1 try rc t0 s bound=60 own=0 wait=0 handing=0 more=()
	shift
	if [ "${1:-}" = --more ]; then
		more=(--more "$2" "$3")
		wait=$3 handing=$4
		shift 4
	fi
	for s in "$@"; do own=$((own + $(suite_bound "${s%%:*}") + 10)); done
	bound=$((bound + (own > wait ? own : wait) + handing * SUITE_TIMEOUT))
	for try in $(seq "$VM_TRIES"); do
		t0=$(date +%s%N)
		scripts/soft-roce/vm.sh -t "$bound" -- env O="$O" RDMAMIG_SUITE_TIMEOUT="$SUITE_TIMEOUT" \
			RDMAMIG_BED_QUEUE="$queue" RDMAMIG_BED_VM="$k" tests/run.sh --bed "${more[@]}" "$@" 2>&1
		rc=$?
		[ "$rc" = 125 ] || break
		echo "== test VM $k: the VM failed before the suites started (boot, modules or rxe setup; vm.sh exit 125 after $(elapsed "$t0"))"
		[ "$try" -lt "$VM_TRIES" ] && echo "== test VM $k: BOOTING A FRESH VM (boot $((try + 1)) of $VM_TRIES)"
	done
	return $(( rc != 0 ))
}

# vm_count — how many test VMs: RDMAMIG_VM_BEDS, else one per host CPU (each
# runs its vCPUs on one host thread), at most 4, as many as leave 1 GiB of
# the host's available memory after their RAM.
vm_count() {
	local n=${RDMAMIG_VM_BEDS:-} avail
	if [ -z "$n" ]; then
		n=$(nproc)
		[ "$n" -gt 4 ] && n=4
		avail=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
		while [ "$n" -gt 1 ] && [ $((n * VM_MEM_MB + 1024)) -gt "$avail" ]; do n=$((n - 1)); done
	fi
	[ "$n" -ge 1 ] 2>/dev/null || n=1
	echo "$n"
}

# unfinished LOG SUITE[:FILTER]... — a suite (each time it is listed) with
# no time line in LOG did not finish: its VM died or hung (a wedged kernel
# stops even `timeout`).
unfinished() {
	local log=$1 s name want have; shift
	for name in $(printf '%s\n' "${@%%:*}" | sort -u); do
		want=0
		for s in "$@"; do [ "${s%%:*}" = "$name" ] && want=$((want + 1)); done
		have=$(grep -c "^== bed .*: $name took " "$log")
		[ "$have" -ge "$want" ] ||
			echo "[FAIL] the test bed did not finish $name ($have of $want runs ended)"
	done
}

if [ "${1:-}" = --bed ]; then
	shift
	more_file= more_wait=
	if [ "${1:-}" = --more ]; then
		more_file=$2 more_wait=$3
		shift 3
	fi
	[ $# -gt 0 ] || set -- ${BED_TESTS:-}
	ensure_kvm_node
	trap hp_restore EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	hugepages_for_tests
	BED_QUEUE=${RDMAMIG_BED_QUEUE:-}
	BED_WHERE="bed ($RDMAMIG_BED${RDMAMIG_BED_VM:+ $RDMAMIG_BED_VM}, ${RDMAMIG_RXE_DEV:-no rxe})"
	brc=0
	bed_suites own "$@" || brc=1
	if [ -n "$more_file" ]; then
		more_suites "$more_file" "$more_wait" || brc=1
	fi
	exit $brc
fi

log=$(mktemp)
trap 'hp_restore; rm -f "$log" "$log.env" "$log.hp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
rc=0
t_all=$(date +%s%N)
# The build checks: what the tree and the built library must be.
set +f
checks=(tests/check-*.sh)
set -f
for c in "${checks[@]}"; do
	O=$O "$c" 2>&1 | tee -a "$log"
	[ "${PIPESTATUS[0]}" = 0 ] || rc=1
done
ensure_kvm_node
if kvm_works; then
	host_kvm=1
	echo "== host: /dev/kvm works here: the KVM suites run on this host"
else
	host_kvm=0
	echo "== host: no usable /dev/kvm here: KVM cases skip on the host and run on the RDMA bed"
fi
# Not in a pipeline: the pools to put back must be known to this shell.
hugepages_for_tests > "$log.hp"
tee -a "$log" < "$log.hp"

# Host suites; cases that need RDMA are left to the bed.
host_list=() ran_host=() host_bound=0 handing=0
for s in ${HOST_TESTS}; do
	if has_rdma_cases "$s"; then
		host_list+=("$s:$NO_RDMA_CASES") ran_host+=("$s (without *_rdma)")
	else
		host_list+=("$s") ran_host+=("$s")
	fi
	host_bound=$((host_bound + $(suite_bound "$s") + 10))
	[[ " ${BED_TESTS} " == *" $s "* ]] && handing=$((handing + 1))
done

# The RDMA bed's share: of a suite the host runs too, only the RDMA cases,
# and later the cases the host skipped (its KVM cases, on a host without
# KVM) — never again what passed here.
bed_list=() ran_bed=() not_bed=()
for s in ${BED_TESTS}; do
	if [[ " ${HOST_TESTS} " == *" $s "* ]]; then
		if has_rdma_cases "$s"; then
			bed_list+=("$s:$RDMA_CASES") ran_bed+=("$s (*_rdma)")
		else
			not_bed+=("$s")
		fi
	else
		bed_list+=("$s") ran_bed+=("$s")
	fi
done

# Cases the host skipped run on the bed, whose nested KVM has what they
# need: every KVM case on a host without KVM; on one with it, what its KVM
# lacks (kvm-pvm's dirty ring overruns, so the ring tracker is refused
# there).  A skip is not a result where a bed can give one.  One line per
# suite, SUITE:@(CASE|CASE...), so the bed runs each suite once.
host_skipped() {
	awk -v bed=" ${BED_TESTS} " '/^== host: / && $4 != "took" { bin = $3 }
		/^\[SKIP\] / && index(bed, " " bin " ") {
			c = $2; sub(/:$/, "", c); sub(/::/, "/", c)
			if (!k[bin]++) { order[n++] = bin; cases[bin] = c }
			else cases[bin] = cases[bin] "|" c
		}
		END { for (i = 0; i < n; i++) print order[i] ":@(" cases[order[i]] ")" }' "$log"
}
# Say so, and name them in the summary.
note_handed() {
	local h k
	for h in "$@"; do
		k=$(tr -cd '|' <<< "$h" | wc -c)
		ran_bed+=("${h%%:*} ($((k + 1)) case(s) skipped on this host)")
		echo "== host-skipped cases go to the RDMA bed: ${h%%:*} ${h#*:}" | tee -a "$log"
	done
}

# The test VMs run while the host suites do: a VM is one process that
# mostly waits (its suites wait out silence bounds and recovery windows
# case by case) and the host suites mostly wait too, so they overlap
# instead of adding up.  Each VM's output goes to a file and is shown after
# the host's, whole.  They learn the host-skipped cases from a file the host
# writes when its suites are done.  One process group for them all, so that
# an interrupted run takes QEMU with it.
bed=
vm_pid=
if [ ${#bed_list[@]} -gt 0 ] && ! scripts/soft-roce/setup.sh --env > "$log.env" 2>/dev/null; then
	vms=$(vm_count)
	bed="the soft-RoCE test VMs ($vms, one queue)"
	echo "== test bed: this kernel cannot load rdma_rxe; the bed suites run in $vms soft-RoCE test VM(s) sharing one queue, while the host suites run"
	handoff=$O/.run-bed-more.$$
	queue=$(cd "$O" && pwd)/.run-bed-queue.$$
	rm -rf "$handoff" "$handoff.tmp" "$queue"
	mkdir "$queue"
	mapfile -t bed_queue < <(by_cost "${bed_list[@]}")
	set -m
	(
		t0=$(date +%s%N)
		pids=()
		for k in $(seq "$vms"); do
			vm_bed "$k" --more "$handoff" "$host_bound" "$handing" "${bed_queue[@]}" > "$log.vm$k" 2>&1 &
			pids+=($!)
		done
		vrc=0
		for p in "${pids[@]}"; do wait "$p" || vrc=1; done
		echo "== test bed: the VM run took $(elapsed "$t0") (boot included; $vms VM(s))" >> "$log.vm$vms"
		exit $vrc
	) &
	vm_pid=$!
	set +m
	trap 'kill -TERM -- -$vm_pid 2>/dev/null; hp_restore; rm -rf "$log" "$log.env" "$log.hp" "$log.bed" "$handoff" "$handoff.tmp" "$queue"; for k in $(seq "$vms"); do rm -f "$log.vm$k"; done' EXIT
fi

t_host=$(date +%s%N)
run_suites host "${host_list[@]}" 2>&1 | tee -a "$log" || rc=1
echo "== host: the host suites took $(elapsed "$t_host")" | tee -a "$log"
mapfile -t handed < <(host_skipped)
note_handed "${handed[@]}"

if [ -n "$vm_pid" ]; then
	printf '%s\n' "${handed[@]}" | grep . > "$handoff.tmp"
	mv "$handoff.tmp" "$handoff"
	# In the background, so that a signal to this script is handled at
	# once (bash runs a trap only between foreground commands; `wait`
	# returns for it).  VM 1 as it goes, the others once all are done.
	(for k in $(seq "$vms"); do
		echo "== test VM $k of $vms:"
		tail -n +1 -f --pid="$vm_pid" "$log.vm$k"
	done) | tee -a "$log" &
	show_pid=$!
	wait "$vm_pid" || rc=1
	wait "$show_pid"
	vm_pid=
	for k in $(seq "$vms"); do cat "$log.vm$k"; done > "$log.bed"
	unfinished "$log.bed" "${bed_list[@]}" "${handed[@]}" > "$log.bed.fail"
	[ -s "$log.bed.fail" ] && rc=1
	tee -a "$log" < "$log.bed.fail"
	rm -f "$log.bed.fail"
elif [ ${#bed_list[@]} -gt 0 ]; then
	bed="soft-RoCE on this host"
	echo "== test bed: rxe on this host"
	(eval "$(cat "$log.env")"; ulimit -l unlimited; RDMAMIG_BED=host \
		O=$O tests/run.sh --bed "${bed_list[@]}" "${handed[@]}") 2>&1 | tee -a "$log" || rc=1
fi

echo "== beds: this host (KVM $([ $host_kvm = 1 ] && echo yes || echo no)) ran: ${ran_host[*]}"
[ ${#ran_bed[@]} -gt 0 ] && echo "== beds: $bed ran: ${ran_bed[*]}"
[ ${#not_bed[@]} -gt 0 ] && echo "== beds: not again on the RDMA bed (need KVM only, ran on this host): ${not_bed[*]}"
echo "== all suites took $(elapsed "$t_all")"

# Sum Criterion's synthesis lines:
# [====] Synthesis: Tested: 3 | Passing: 2 | Failing: 1 | Crashing: 0
awk '
	/Synthesis:/ {
		for (i = 1; i <= NF; i++) {
			if ($i == "Passing:") p += $(i + 1)
			if ($i == "Failing:") f += $(i + 1)
			if ($i == "Crashing:") c += $(i + 1)
		}
		suites++
	}
	/^\[PASS\] check / { p++; suites++ }
	/^\[FAIL\] check / { f++; suites++ }
	/^\[SKIP\]/ { s++ }
	/^== host-skipped cases go to the RDMA bed: / { moved += gsub(/\|/, "|") + 1 }
	/^\[FAIL\] the test bed did not finish/ { f++; suites++ }
	/^\[FAIL\] the host did not say/ { f++; suites++ }
	/^\[FAIL\] .* exited .* without a failing case/ { f++ }
	/BOOTING A FRESH VM/ { r++ }
	END {
		if (suites == 0) { print "0 passed, 1 failed (no suite reported)"; exit 1 }
		if (r) printf "note: %d test VM boot(s) failed before their suite started and were booted again: see BOOTING A FRESH VM above\n", r
		if (moved) printf "note: %d case(s) skipped on this host ran on the RDMA bed instead (counted there)\n", moved
		printf "%d passed, %d failed, %d skipped\n", p, f + c, s - moved
		exit (f + c > 0)
	}' "$log" || rc=1
exit $rc
