#!/bin/bash
# One pass of the nested work a bed does most: the RDMA e2e cases and the
# dirty-tracking oracles; times and verdicts.
echo "thp-ab: THP $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
for s in "test-e2e:e2e_rdma/*" "test-kvm-dirty:kvm_dirty/stamp_oracle_*"; do
	t=$(date +%s%N)
	out=$(build/tests/${s%%:*} --filter "${s#*:}" --verbose 2>&1)
	echo "thp-ab: ${s%%:*} $(echo "$out" | grep Synthesis) $(( ($(date +%s%N) - t) / 1000000 )) ms"
	echo "$out" | grep -E "^\[FAIL\]|shut down|triple" | head -3
done
