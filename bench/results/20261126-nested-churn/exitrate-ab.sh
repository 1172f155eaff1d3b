#!/bin/bash
# e2e_tcp/idle alternating: build (idle guest exits every 4096 PAUSEs) and
# build-x (every PAUSE: ~the highest exit rate).  Counts triple faults.
secs=${1:-900}
declare -A f=([build]=0 [build-x]=0) r=([build]=0 [build-x]=0) tf=([build]=0 [build-x]=0)
t0=$(date +%s) i=0
while [ $(($(date +%s) - t0)) -lt $secs ]; do
	i=$((i + 1))
	for o in build build-x; do
		out=$(O=$o $o/tests/test-e2e --filter "e2e_tcp/idle" --verbose 2>&1); rc=$?
		r[$o]=$((r[$o]+1))
		t=$(echo "$out" | grep -c "triple fault")
		tf[$o]=$((tf[$o]+t))
		[ $rc != 0 ] && f[$o]=$((f[$o]+1))
		echo "run $i $o rc $rc triple=$t $(echo "$out" | grep -o 'e2e_tcp::idle: ([0-9.]*s)')"
		[ $rc != 0 ] && echo "$out" | grep -E "triple|stopped|Assert|exited|still" | head -4
	done
done
for o in build build-x; do echo "exitrate-ab: $o: ${f[$o]} of ${r[$o]} failed, ${tf[$o]} triple-fault lines"; done
