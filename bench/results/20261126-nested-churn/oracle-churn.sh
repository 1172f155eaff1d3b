#!/bin/bash
# The stamp oracle in a loop while the L1 kernel moves guest RAM around.
# CHURN: compact (compaction every 200 ms), khuge (khugepaged at full speed),
# both, none.  THP=never|always sets the L1 THP mode first.
[ -n "${MODULE:-}" ] && insmod "$MODULE" && echo "stackend loaded"
n=${1:-20}; filter=${2:-kvm_dirty/stamp_oracle_bitmap}; churn=${CHURN:-both}
[ -n "${THP:-}" ] && echo "$THP" > /sys/kernel/mm/transparent_hugepage/enabled
echo "churn=$churn thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled)"
case $churn in khuge|both)
	echo 0 > /sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs
	echo 0 > /sys/kernel/mm/transparent_hugepage/khugepaged/alloc_sleep_millisecs
	echo 65536 > /sys/kernel/mm/transparent_hugepage/khugepaged/pages_to_scan ;;
esac
case $churn in compact|both)
	( while :; do echo 1 > /proc/sys/vm/compact_memory; sleep 0.2; done ) & cpid=$! ;;
esac
fails=0
for i in $(seq 1 $n); do
	t0=$(date +%s%N)
	build/tests/test-kvm-dirty --filter "$filter" --verbose > /tmp/run.out 2>&1 &
	tp=$!
	for s in $(seq 1 150); do kill -0 $tp 2>/dev/null || break; sleep 1; done
	if kill -0 $tp 2>/dev/null; then
		echo "run $i: still running after 150 s: kernel stacks of every test thread:"
		for t in /proc/[0-9]*/task/*; do
			grep -q test-kvm-dirty $t/cmdline 2>/dev/null || continue
			echo "-- $t $(cat $t/comm) state $(awk '{print $3}' $t/stat) wchan $(cat $t/wchan)"
			cat $t/stack
		done
		echo w > /proc/sysrq-trigger; dmesg | tail -60
		kill -9 $tp
	fi
	wait $tp; rc=$?
	out=$(cat /tmp/run.out)
	line=$(echo "$out" | grep -E "tracker:" | head -1)
	echo "run $i rc $rc $(( ($(date +%s%N)-t0)/1000000 )) ms :: $line"
	if [ $rc != 0 ]; then
		fails=$((fails+1))
		echo "$out" | grep -E "Assertion|round|MISSED|integrity" | head -5
		for rip in $(echo "$out" | grep -o "rip 0xffff[0-9a-f]*" | awk '{print $2}' | sort -u); do
			awk -v r="$rip" 'BEGIN{ r=strtonum(r) } { a=strtonum("0x"$1); if (a<=r && a>best) { best=a; s=$3" "$4 } } END{ printf "  %s is %s+%#x\n", "'$rip'", s, r-best }' /proc/kallsyms
		done
	fi
	grep -E "thp_collapse_alloc |compact_isolated |thp_split_pmd |pgmigrate_success " /proc/vmstat | tr '\n' ' '; echo
done
echo "RESULT churn=$churn thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled): $fails of $n runs failed"
[ -n "${cpid:-}" ] && kill $cpid
dmesg | grep -iE "warn|bug|panic" | tail -5
