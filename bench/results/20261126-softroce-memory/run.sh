set -u
out=$1; sz=$2
hp=/sys/kernel/mm/hugepages
mib=$(( $(numfmt --from=iec "$sz") >> 20 ))
echo $(( mib / 2 )) > $hp/hugepages-2048kB/nr_hugepages
echo $(( (mib + 1023) / 1024 )) > $hp/hugepages-1048576kB/nr_hugepages 2>/dev/null
grep -H . $hp/*/nr_hugepages $hp/*/free_hugepages
uname -r; nproc; free -m | head -2
dev=${RDMAMIG_RXE_DEV:-rxe0}
ibv_devinfo -d $dev | head -12
build/bench/bench-memory --dev "$dev" --size "$sz" --json "$out/memory.json" 2>&1 | tee "$out/memory.txt"
