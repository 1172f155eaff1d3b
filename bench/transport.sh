#!/bin/bash
# bench/transport.sh — the transport benchmark: in one run on the same rxe
# device, ib_write_bw (perftest) against the RDMA transport writing scattered
# dirty ranges, for 1/2/4 QPs and 64 KiB-2 MiB writes, with the ratio; then
# registration time per GiB (4 KiB, THP, 2 MiB and 1 GiB pages).  Run on the host, it boots
# the soft-RoCE VM for the RDMA part and measures the TCP backend on the host
# loopback itself.
#
#   bench/transport.sh            (O=build BENCH_TOTAL=256M by default)
#   BENCH_TOTAL=1G bench/transport.sh
#   bench/transport.sh --dir bench/results/<run>   add to an existing run
#
# Results, like bench/run's: bench/results/<date>-<machine>/ (or --dir) gets
# raw/transport/ (every tool's own output, host.txt, bed.txt) and
# transport.txt (the table, also printed).  Ratios are what to read: rxe
# under TCG moves tens of MB/s, so absolute numbers say nothing about a real
# NIC.
set -uo pipefail
cd "$(dirname "$0")/.."
O=${O:-build}
TOTAL=${BENCH_TOTAL:-256M}
QPS=${BENCH_QPS:-"1 2 4"}
WRITES=${BENCH_WRITES:-"64K 256K 1M 2M"}
REGION=${BENCH_REGION:-512M}	# scattered over this much RAM per side
bin=$O/bench/bench-transport
[ -x "$bin" ] || { echo "transport.sh: build first: make O=$O benches" >&2; exit 2; }

dir= inner=0
while [ $# -gt 0 ]; do
	case $1 in
	--dir) dir=$2; shift 2 ;;
	--inner) inner=1; dir=$2; shift 2 ;;
	-h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "transport.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
	esac
done

bytes() { numfmt --from=iec "$1"; }

# ---------------------------------------------------------------- host side
if [ $inner = 0 ] && [ -z "${RDMAMIG_RXE_DEV:-}" ]; then
	[ -n "$dir" ] || dir=bench/results/$(date -u +%Y%m%d-%H%M)-$(hostname -s)-softroce-vm
	raw=$dir/raw/transport
	mkdir -p "$raw"
	{
		echo "host_kernel=$(uname -r)"
		echo "host_cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
		echo "host_cpus=$(nproc)"
		echo "qemu=$(qemu-system-x86_64 --version 2>/dev/null | head -1)"
		echo "commit=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo +dirty)"
		echo "total=$TOTAL region=$REGION qps=$QPS writes=$WRITES"
		echo "started=$(date -u +%FT%TZ)"
	} > "$raw/host.txt"
	echo "transport.sh: results in $dir"
	{
		echo "== TCP backend, host loopback, $TOTAL of scattered 1 MiB ranges"
		for c in $QPS; do
			"$bin" xfer --kind tcp --chans "$c" --write 1M --total "$TOTAL" --region 1G |
				tee "$raw/tcp-c$c.txt"
		done
	} | tee "$dir/transport.txt"
	echo "== RDMA: booting the soft-RoCE VM"
	scripts/soft-roce/vm.sh -m 5G -t 3000 -- env O="$O" BENCH_TOTAL="$TOTAL" BENCH_QPS="$QPS" \
		BENCH_WRITES="$WRITES" BENCH_REGION="$REGION" bench/transport.sh --inner "$dir" |
		tee -a "$dir/transport.txt"
	rc=${PIPESTATUS[0]}
	echo "finished=$(date -u +%FT%TZ) rc=$rc" >> "$raw/host.txt"
	exit "$rc"
fi

# ------------------------------------------------ on the bed (or an RDMA host)
dev=$RDMAMIG_RXE_DEV
addr=$RDMAMIG_RXE_ADDR
port=18515
[ -n "$dir" ] || dir=bench/results/$(date -u +%Y%m%d-%H%M)-$(hostname -s)
raw=$dir/raw/transport
mkdir -p "$raw"
{
	echo "bed_kernel=$(uname -r)"
	echo "bed_cpus=$(nproc)"
	echo "bed=${RDMAMIG_BED:-host}"
	echo "device=$dev addr=$addr"
	echo "perftest=$(ib_write_bw --version 2>&1 | sed -n 's/^Version: *//p' | head -1)"
	echo "rdma_core=$(dpkg-query -W -f='${Version}' rdma-core 2>/dev/null)"
} > "$raw/bed.txt"
ibv_devinfo -v -d "$dev" > "$raw/devinfo.txt" 2>&1
echo "== $dev ($addr): ib_write_bw vs rdmamig RDMA transport, $TOTAL per run"
printf '%-4s %-6s %14s %14s %7s\n' QPs write ib_write_bw_MBps rdmamig_MBps ratio
for q in $QPS; do
	for w in $WRITES; do
		s=$(bytes "$w")
		# -n is per QP: the same total bytes as ours.  (-D duration mode
		# reported 0 iterations for >= 1 MiB messages on rxe.)
		n=$(( $(bytes "$TOTAL") / s / q ))
		[ "$n" -ge 5 ] || n=5
		port=$((port + 1))
		out=$raw/ib_write_bw-q$q-w$w.txt
		# Bounded: a perftest pair that loses its peer waits forever.
		timeout 120 ib_write_bw -d "$dev" -s "$s" -q "$q" -n "$n" -N -F -p "$port" > "$out.server" 2>&1 &
		srv=$!
		sleep 1
		timeout 120 ib_write_bw -d "$dev" -s "$s" -q "$q" -n "$n" -N -F -p "$port" "$addr" > "$out" 2>&1
		wait "$srv" 2>/dev/null
		ib=$(awk -v s="$s" '$1 == s && NF >= 4 { print $4 }' "$out" | tail -1)
		timeout 300 "$bin" xfer --kind rdma --addr "$addr" --chans "$q" --write "$w" --total "$TOTAL" \
			--region "$REGION" > "$raw/rdmamig-q$q-w$w.txt" 2>&1
		mine=$(sed -n 's/.*MBps=\([0-9.]*\).*/\1/p' "$raw/rdmamig-q$q-w$w.txt")
		ratio=$(awk -v a="${mine:-0}" -v b="${ib:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
		printf '%-4s %-6s %14s %14s %7s\n' "$q" "$w" "${ib:-fail}" "${mine:-fail}" "$ratio"
	done
done

echo "== registration time per GiB on $dev"
# 4 KiB, THP, 2 MiB and 1 GiB pages; hugetlbfs pages reserved only for it.
h1g=/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages
echo 520 > /proc/sys/vm/nr_hugepages 2>/dev/null || true
echo 1 > "$h1g" 2>/dev/null || true
"$bin" reg --dev "$dev" --region 1G 2>&1 | tee "$raw/reg.txt"
echo 0 > /proc/sys/vm/nr_hugepages 2>/dev/null || true
echo 0 > "$h1g" 2>/dev/null || true
