#!/bin/bash
# fuzz/run.sh — run the libFuzzer targets of build-fuzz/ (make fuzz,
# make fuzz-replay, make fuzz-merge call it; O names the build folder).
#
#   run.sh fuzz TARGET...    each for FUZZ_SECONDS: new inputs go to
#                            $O/corpus/TARGET, the checked-in fuzz/corpus/TARGET
#                            is read, crashes land in $O/artifacts/; prints
#                            executions, cov and ft per target
#   run.sh replay TARGET...  each over its checked-in corpus once (no new
#                            inputs): a crashing input fails it
#   run.sh merge TARGET...   minimize what fuzzing found into fuzz/corpus/
#
# Exit 0 only when no target crashed.
set -uo pipefail
cd "$(dirname "$0")/.."
O=${O:-build-fuzz}
mode=${1:?usage: run.sh fuzz|replay|merge TARGET...}
shift
rc=0
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p "$O/artifacts"

for t in "$@"; do
	bin=$O/fuzz/$t
	seeds=fuzz/corpus/$t
	if [ ! -x "$bin" ]; then
		echo "[FAIL] fuzz $t: $bin is not built (make fuzz-bins)"
		rc=1
		continue
	fi
	mkdir -p "$seeds"
	case $mode in
	replay)
		n=$(find "$seeds" -type f | wc -l)
		if out=$("$bin" -runs=0 -artifact_prefix="$O/artifacts/" "$seeds" 2>&1); then
			echo "[PASS] fuzz replay $t: $n inputs, $(grep -o 'cov: [0-9]* ft: [0-9]*' <<< "$out" | tail -1)"
		else
			echo "$out" | tail -30
			echo "[FAIL] fuzz replay $t: an input of $seeds crashes it (above)"
			rc=1
		fi
		;;
	fuzz)
		work=$O/corpus/$t
		log=$O/$t.log
		mkdir -p "$work"
		echo "== fuzz $t for ${FUZZ_SECONDS:-60} s (log $log)"
		"$bin" -max_total_time="${FUZZ_SECONDS:-60}" -print_final_stats=1 \
			-artifact_prefix="$O/artifacts/$t-" "$work" "$seeds" > "$log" 2>&1
		r=$?
		last=$(grep -E '^#[0-9]+' "$log" | tail -1)
		execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
		echo "   $t: ${execs:-?} executions; last: $last"
		if [ "$r" != 0 ]; then
			grep -E 'ERROR|SUMMARY|invariant|Test unit written' "$log" | head -10
			echo "[FAIL] fuzz $t: crashed (exit $r); the input is in $O/artifacts/"
			rc=1
		fi
		;;
	merge)
		work=$O/corpus/$t
		mkdir -p "$work"
		"$bin" -merge=1 "$seeds" "$work" > "$O/$t.merge.log" 2>&1 || {
			tail -20 "$O/$t.merge.log"
			rc=1
		}
		echo "   $t: $(find "$seeds" -type f | wc -l) inputs in $seeds"
		;;
	*)
		echo "run.sh: unknown mode $mode" >&2
		exit 2
		;;
	esac
done
exit $rc
