#!/bin/bash
# e2e_rdma/idle in a loop in the bed with the VM kernel's KVM tracepoints on,
# tracing stopped by the first SVM SHUTDOWN exit (triple fault); a
# destination alive > 40 s gets its kernel and user stacks dumped.
n=${1:-40}
T=/sys/kernel/tracing
mountpoint -q $T || mount -t tracefs nodev $T
echo 0 > $T/tracing_on
echo 16384 > $T/buffer_size_kb
echo 0 > $T/events/enable
for e in kvm_entry kvm_exit kvm_inj_exception kvm_inj_virq kvm_page_fault kvm_userspace_exit kvm_pio kvm_apic_accept_irq kvm_msr kvm_cr kvm_set_irq; do
	[ -d $T/events/kvm/$e ] && echo 1 > $T/events/kvm/$e/enable
done
echo 'traceoff if exit_reason == 127' > $T/events/kvm/kvm_exit/trigger
cat $T/events/kvm/kvm_exit/trigger
( while :; do
	for p in $(pgrep -f "rdmamig --dst"); do
		age=$(ps -o etimes= -p $p | tr -d ' ')
		[ -n "$age" ] && [ "$age" -gt 20 ] && [ ! -e /tmp/dumped.$p ] || continue
		touch /tmp/dumped.$p
		echo "=== slow destination $p, ${age}s: $(tr '\0' ' ' < /proc/$p/cmdline)"
		for k in 1 2 3 4 5 6 7 8; do
			echo "-- sample $k $(date +%T.%N | cut -c1-12) $(grep -E 'VmRSS|RssAnon' /proc/$p/status | tr -s ' \n' ' ')"
			grep -B1 -A3 "^Size: *65536 kB" /proc/$p/smaps | grep -E "^[0-9a-f]|^Rss" | tr '\n' ' '; echo
			for t in /proc/$p/task/*; do
				st=$(awk '{print $3}' $t/stat 2>/dev/null); sc=$(cut -d' ' -f1-3 $t/syscall 2>/dev/null)
				echo "  tid ${t##*/} $st sc=$sc sched=$(cat $t/schedstat 2>/dev/null) $(cat $t/stack 2>/dev/null | head -6 | awk '{print $2}' | tr '\n' ' ')"
			done
			sleep 1
		done
		pop=$(for t in /proc/$p/task/*; do cut -d' ' -f1 $t/syscall 2>/dev/null | grep -qx 28 && echo ${t##*/}; done | head -1)
		[ -n "$pop" ] && timeout 20 perf record -q -g -t $pop -o /tmp/perf.$p -- sleep 3 >/dev/null 2>&1 &&
			perf report -i /tmp/perf.$p --stdio --no-children 2>/dev/null | grep -v "^#" | grep . | head -60
	done
	sleep 2
done ) &
wd=$!
fails=0
for i in $(seq 1 $n); do
	echo > $T/trace
	echo 1 > $T/tracing_on
	out=$(build/tests/test-e2e --filter "e2e_rdma/idle" --verbose 2>&1); rc=$?
	on=$(cat $T/tracing_on)
	echo 0 > $T/tracing_on; [ $i = 1 ] && grep -m3 kvm_exit $T/trace
	echo "run $i rc $rc tracing_on=$on $(echo "$out" | grep -m1 -o 'total [0-9.]* s')"
	if [ $rc != 0 ] || [ $on = 0 ]; then
		fails=$((fails+1))
		echo "$out" | grep -v "^\[RUN\|^\[PASS" | tail -45
		f=/work/wt-loop/.cache/trace-run$i.txt
		cat $T/trace > $f
		echo "trace saved: $f ($(wc -l < $f) lines)"
		grep -n "reason.*0x7f\|SHUTDOWN\|shutdown" $f | tail -5
	fi
done
kill $wd
echo "idle-trace: $fails of $n failed"
