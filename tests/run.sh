#!/bin/bash
# tests/run.sh — run the Criterion suites: host suites here, then the test-bed
# suites on soft-RoCE (directly where setup.sh works, else inside vm.sh).
# Prints each suite's Criterion synthesis line and its time, and at the end
# one line "N passed, N failed, N skipped".  Before the suites it runs the
# build checks, tests/check-*.sh (layering, exports), each counted as one
# test that passes or fails.  Called by `make test`, which sets
# O, HOST_TESTS and BED_TESTS; `tests/run.sh --bed SUITE...` is the part that
# runs on the bed.  Exit 0 only when nothing failed.  WRAP, if set, prefixes
# every suite (make check-valgrind sets it to valgrind).
#
# In the test VM each bed suite gets a VM of its own, bounded in time (5 min,
# 15 for the end-to-end suite: 2-3x what they take), and a suite that fails or times out runs again in a
# fresh VM, up to 3 runs in all: nested KVM under
# QEMU's TCG has shown sporadic vCPU stalls (once with the L1 kernel stuck in
# KVM_RUN, where no signal reaches the process) that no test on a real host
# has.  Both runs stay in the log, the first one's synthesis line is marked
# superseded, and the summary names every retried suite.
set -uo pipefail
cd "$(dirname "$0")/.."
O=${O:-build}
SUITE_TIMEOUT=${RDMAMIG_SUITE_TIMEOUT:-300}
TRIES=${RDMAMIG_SUITE_TRIES:-3}

# A test that needs /dev/kvm gets it when the kernel has KVM but no node.
ensure_kvm_node() {
	if [ ! -e /dev/kvm ] && grep -qw kvm /proc/misc 2>/dev/null; then
		mknod -m 660 /dev/kvm c 10 "$(awk '$2 == "kvm" { print $1 }' /proc/misc)" 2>/dev/null || true
	fi
}

# elapsed T0_NS — seconds since T0, one decimal.
elapsed() {
	local ms=$(( ($(date +%s%N) - $1) / 1000000 ))
	printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100))
}

# run_suite BIN — one suite, Criterion's own output kept (--verbose for the
# [SKIP] lines and their reasons), the chatter dropped.
run_suite() {
	${WRAP:-} "$O/tests/$1" --jobs 1 --verbose 2>&1 |
		grep --line-buffered -v -E '^\[(RUN |PASS)\] |^\[====\] Running|^\[----\] Criterion v'
	return "${PIPESTATUS[0]}"
}

# run_suites WHERE BIN... — each suite with its time.
run_suites() {
	local where=$1; shift
	local rc=0 t0 s
	for s in "$@"; do
		echo "== $where: $s"
		t0=$(date +%s%N)
		run_suite "$s" || rc=1
		echo "== $where: $s took $(elapsed "$t0")"
	done
	return $rc
}

# vm_suite SUITE — one bed suite in a fresh test VM, up to TRIES times.
vm_suite() {
	local s=$1 try out rc t0
	local bound=$SUITE_TIMEOUT
	# The end-to-end suite runs 14 migrations of real guests: ~5 minutes.
	[ "$s" = test-e2e ] && bound=$((SUITE_TIMEOUT * 3))
	for try in $(seq "$TRIES"); do
		out=$(mktemp)
		t0=$(date +%s%N)
		# Streamed, with the synthesis line held back until we know
		# whether it counts.
		scripts/soft-roce/vm.sh -t "$bound" -- env O="$O" tests/run.sh --bed "$s" 2>&1 |
			tee "$out" | grep --line-buffered -v 'Synthesis:'
		rc=${PIPESTATUS[0]}
		if [ "$rc" = 0 ]; then
			grep 'Synthesis:' "$out"
		elif [ "$try" -lt "$TRIES" ]; then
			grep 'Synthesis:' "$out" | sed 's/Synthesis:/run '"$try"' (superseded by the retry):/'
			echo "== test VM: $s FAILED once (run $try, vm.sh exit $rc after $(elapsed "$t0")); RETRYING it in a fresh VM"
		else
			grep 'Synthesis:' "$out"
			# A VM that died or timed out leaves the suite unreported.
			[ "$rc" != 1 ] && echo "[FAIL] the test bed did not finish $s (vm.sh exit $rc)"
		fi
		rm -f "$out"
		[ "$rc" = 0 ] && return 0
	done
	return 1
}

if [ "${1:-}" = --bed ]; then
	shift
	[ $# -gt 0 ] || set -- ${BED_TESTS:-}
	ensure_kvm_node
	run_suites "bed ($RDMAMIG_BED, ${RDMAMIG_RXE_DEV:-no rxe})" "$@"
	exit $?
fi

log=$(mktemp)
trap 'rm -f "$log" "$log.env"' EXIT
rc=0
# The build checks: what the tree and the built library must be.
for c in tests/check-*.sh; do
	O=$O "$c" 2>&1 | tee -a "$log"
	[ "${PIPESTATUS[0]}" = 0 ] || rc=1
done
ensure_kvm_node
run_suites host ${HOST_TESTS} 2>&1 | tee -a "$log" || rc=1

# The bed: soft-RoCE on this kernel if it can, else the QEMU VM.
if [ -n "${BED_TESTS// /}" ]; then
	if scripts/soft-roce/setup.sh --env > "$log.env" 2>/dev/null; then
		echo "== test bed: rxe on this host"
		(eval "$(cat "$log.env")"; ulimit -l unlimited; RDMAMIG_BED=host \
			O=$O tests/run.sh --bed ${BED_TESTS}) 2>&1 | tee -a "$log" || rc=1
	else
		echo "== test bed: this kernel cannot load rdma_rxe; each suite runs in the soft-RoCE test VM"
		t0=$(date +%s%N)
		for s in ${BED_TESTS}; do
			vm_suite "$s" 2>&1 | tee -a "$log" || rc=1
		done
		echo "== test bed: VM runs took $(elapsed "$t0") (boots included)"
	fi
fi

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
	/\[SKIP\]/ { s++ }
	/^\[FAIL\] the test bed did not finish/ { f++; suites++ }
	/FAILED once .*RETRYING/ { r++ }
	END {
		if (suites == 0) { print "0 passed, 1 failed (no suite reported)"; exit 1 }
		if (r) printf "note: %d failed run(s) in the test VM were retried: see RETRYING above\n", r
		printf "%d passed, %d failed, %d skipped\n", p, f + c, s
		exit (f + c > 0)
	}' "$log" || rc=1
exit $rc
