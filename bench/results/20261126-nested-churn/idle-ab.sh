#!/bin/bash
# e2e idle over TCP and over RDMA, alternating, in the bed: does the
# destination's post-resume triple fault need RDMA?
n=${1:-20}
declare -A f=([tcp]=0 [rdma]=0) r=([tcp]=0 [rdma]=0)
for i in $(seq 1 $n); do
	for tr in tcp rdma; do
		out=$(build/tests/test-e2e --filter "e2e_$tr/idle" --verbose 2>&1); rc=$?
		r[$tr]=$((r[$tr]+1))
		tf=$(echo "$out" | grep -c "triple fault")
		echo "run $i $tr rc $rc triple=$tf $(echo "$out" | grep -m1 -o 'total [0-9.]* s')"
		[ $rc != 0 ] && { f[$tr]=$((f[$tr]+1)); echo "$out" | grep -E "triple|stopped|Assert|exited" | head -5; }
	done
done
echo "idle-ab: tcp ${f[tcp]} of ${r[tcp]} failed, rdma ${f[rdma]} of ${r[rdma]} failed"
