#!/bin/bash
# Loop e2e_rdma::idle; dump the threads of any rdmamig alive for more than 25 s.
n=${1:-30}
( while :; do
	for p in $(pgrep -x rdmamig); do
		age=$(( $(date +%s) - $(stat -c %Y /proc/$p) ))
		if [ $age -gt 25 ] && [ ! -e /tmp/dumped.$p ]; then
			touch /tmp/dumped.$p
			echo "=== rdmamig $p alive ${age}s: $(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-200)"
			gdb -p $p -batch -ex "thread apply all bt" 2>/dev/null | grep -E "^Thread|^#" | head -80
		fi
	done
	sleep 2
done ) &
wd=$!
fails=0
for i in $(seq 1 $n); do
	out=$(build/tests/test-e2e --filter 'e2e_rdma/idle' --verbose 2>&1); rc=$?
	echo "run $i rc $rc $(echo "$out" | grep -m1 -o 'total [0-9.]* s')"
	[ $rc != 0 ] && { fails=$((fails+1)); echo "$out" | tail -25; }
done
kill $wd
echo "idle-loop: $fails of $n failed"
