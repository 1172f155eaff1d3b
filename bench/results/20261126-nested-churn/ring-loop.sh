#!/bin/bash
# The bed's share of test-kvm-dirty (the ring oracles) in a loop for SECS.
secs=${1:-900}; t0=$(date +%s); i=0; f=0
while [ $(($(date +%s) - t0)) -lt $secs ]; do
	i=$((i + 1)); s=$(date +%s)
	out=$(build/tests/test-kvm-dirty --filter '@(kvm_dirty/stamp_oracle_ring|kvm_dirty/stamp_oracle_ring_that_fills_up)' --verbose 2>&1)
	n=$(echo "$out" | grep -c '^\[FAIL\]')
	echo "pass $i: $n failed, $(($(date +%s) - s)) s $(echo "$out" | grep -m1 -o 'ring   tracker: 150 rounds.*missed')"
	[ "$n" != 0 ] && { f=$((f + 1)); echo "$out" | grep -E '^\[FAIL\]|shut down|round [0-9]+:' | cut -c1-300 | head -4; }
done
echo "ring-loop: $f of $i passes failed"
