set -u
out=$1
hp=/sys/kernel/mm/hugepages
echo 1 > /proc/sys/vm/compact_memory
echo 1 > $hp/hugepages-1048576kB/nr_hugepages
grep -H . $hp/hugepages-1048576kB/*_hugepages
build/bench/bench-memory --dev ${RDMAMIG_RXE_DEV:-rxe0} --size 1G --kinds huge1g --json "$out/memory.json" 2>&1 | tee "$out/memory.txt"
