#!/bin/bash
# The RDMA fault matrix N times, full output; a run older than 200 s gets
# every process of it dumped (threads, states, wait channels, kernel stacks).
n=${1:-3}
( while :; do
	for p in $(pgrep -f "test-fault-matrix --filter"); do
		age=$(ps -o etimes= -p $p | tr -d ' ')
		[ -n "$age" ] && [ "$age" -gt 200 ] && [ ! -e /tmp/dumped.$p ] || continue
		touch /tmp/dumped.$p
		echo "=== matrix $p running ${age}s; its process tree:"
		ps -eLo pid,ppid,tid,stat,etimes,wchan:28,comm,args --sort=pid | awk -v p=$p 'NR==1 || $1==p || $2==p || /rdmamig|test-fault/' | cut -c1-220
		for t in /proc/[0-9]*/task/*; do
			c=$(cat $t/comm 2>/dev/null) || continue
			case $c in rdmamig*|test-fault*) ;; *) continue ;; esac
			echo "-- ${t#/proc/} $c $(awk '{print $3}' $t/stat) sc=$(cut -d' ' -f1 $t/syscall)"
			head -8 $t/stack | awk '{print "     " $2}'
		done
	done
	sleep 5
done ) &
wd=$!
for i in $(seq 1 $n); do
	echo "##### run $i"
	timeout 700 build/tests/test-fault-matrix --filter 'matrix_rdma/*' --verbose 2>&1
	echo "##### run $i exit $?"
done
kill $wd
