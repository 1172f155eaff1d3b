#!/bin/bash
# e2e_rdma/idle in a loop; a destination alive > 30 s gets its threads dumped.
n=${1:-20}
( while :; do
	for p in $(pgrep -f "rdmamig --dst"); do
		age=$(ps -o etimes= -p $p | tr -d ' ')
		[ -n "$age" ] && [ "$age" -gt 30 ] && [ ! -e /tmp/dumped.$p ] || continue
		touch /tmp/dumped.$p
		echo "=== stuck destination $p, ${age}s"
		for t in /proc/$p/task/*; do
			echo "-- $(cat $t/comm) wchan=$(cat $t/wchan) state=$(awk '{print $3}' $t/stat)"
			cat $t/stack 2>/dev/null | head -12
		done
		timeout 60 gdb -p $p -batch -ex "thread apply all bt" 2>&1 | grep -E "^Thread|^#|rror" | head -120
	done
	sleep 2
done ) &
wd=$!
for i in $(seq 1 $n); do
	out=$(build/tests/test-e2e --filter "e2e_rdma/idle" --verbose 2>&1); rc=$?
	echo "run $i rc $rc"
	[ $rc != 0 ] && echo "$out" | grep -v "^\[RUN\|^\[PASS" | tail -40
done
kill $wd
