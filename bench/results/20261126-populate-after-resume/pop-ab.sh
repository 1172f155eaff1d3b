#!/bin/bash
# e2e_rdma/idle alternating: A = build (population runs on beside the guest),
# B = build-b (population ends at the state load).  Per run: the case's time
# and the destination's lifetime (sampled each 0.5 s); a destination older
# than 20 s gets its threads' syscalls and kernel stacks dumped once.
n=${1:-15}
( while :; do
	for p in $(pgrep -f "rdmamig --dst"); do
		age=$(ps -o etimes= -p $p | tr -d ' ')
		echo "$age" > /tmp/age.$p
		[ -n "$age" ] && [ "$age" -gt 20 ] && [ ! -e /tmp/dumped.$p ] || continue
		touch /tmp/dumped.$p
		echo "=== destination $p alive ${age}s ($(readlink /proc/$p/exe))"
		for t in /proc/$p/task/*; do
			echo "  tid ${t##*/} $(awk '{print $3}' $t/stat 2>/dev/null) sc=$(cut -d' ' -f1-3 $t/syscall 2>/dev/null) $(head -3 $t/stack 2>/dev/null | awk '{print $2}' | tr '\n' ' ')"
		done
	done
	sleep 0.5
done ) &
wd=$!
declare -A f=([build]=0 [build-b]=0) sum=([build]=0 [build-b]=0)
for i in $(seq 1 $n); do
	for o in build build-b; do
		rm -f /tmp/age.*
		out=$(O=$o $o/tests/test-e2e --filter "e2e_rdma/idle" --verbose 2>&1); rc=$?
		t=$(echo "$out" | grep -o "e2e_rdma::idle: ([0-9.]*s)" | grep -o "[0-9.]*s" | tr -d s)
		life=$(cat /tmp/age.* 2>/dev/null | sort -n | tail -1)
		tf=$(echo "$out" | grep -c "triple fault")
		echo "run $i $o rc $rc case ${t:-?} s dst-life ${life:-?} s triple=$tf"
		[ $rc != 0 ] && { f[$o]=$((f[$o]+1)); echo "$out" | grep -E "triple|stopped|Assert|exited|still running" | head -5; }
	done
done
kill $wd
echo "pop-ab: A (build) ${f[build]} of $n failed, B (build-b) ${f[build-b]} of $n failed"
