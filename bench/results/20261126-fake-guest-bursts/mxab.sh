#!/bin/bash
# run one matrix binary's rdma cases; print wall time and the VM's CPU busy share
bin=$1
read -r _ u1 n1 s1 i1 w1 q1 sq1 _ < /proc/stat
t0=$(date +%s.%N)
$bin --jobs 1 --filter 'matrix_rdma/*' 2>&1 | grep -E "^matrix rdma:|FAIL|matrix:"
t1=$(date +%s.%N)
read -r _ u2 n2 s2 i2 w2 q2 sq2 _ < /proc/stat
busy=$(( (u2+n2+s2+q2+sq2) - (u1+n1+s1+q1+sq1) )); idle=$(( (i2+w2) - (i1+w1) ))
echo "$bin: wall $(echo "$t1 - $t0" | bc) s; VM CPU busy $((100 * busy / (busy + idle)))% ($busy of $((busy + idle)) ticks, 2 vCPUs)"
