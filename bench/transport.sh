#!/bin/bash
# bench/transport.sh — the transport benchmark: in one run on the same rxe
# device, ib_write_bw (perftest) against the RDMA transport writing scattered
# dirty ranges, for 1/2/4 QPs and 64 KiB-2 MiB writes, with the ratio; then
# registration time per GiB (4 KiB vs 2 MiB pages).  Run on the host, it boots
# the soft-RoCE VM for the RDMA part and measures the TCP backend on the host
# loopback itself.
#
#   bench/transport.sh            (O=build-tr BENCH_TOTAL=256M by default)
#   BENCH_TOTAL=1G bench/transport.sh
#
# Ratios are what to read: rxe under TCG moves tens of MB/s, so absolute
# numbers say nothing about a real NIC.
set -uo pipefail
cd "$(dirname "$0")/.."
O=${O:-build-tr}
TOTAL=${BENCH_TOTAL:-256M}
QPS=${BENCH_QPS:-"1 2 4"}
WRITES=${BENCH_WRITES:-"64K 256K 1M 2M"}
REGION=${BENCH_REGION:-512M}	# scattered over this much RAM per side
bin=$O/bench/bench-transport
[ -x "$bin" ] || { echo "transport.sh: build first: make O=$O benches" >&2; exit 2; }

bytes() { numfmt --from=iec "$1"; }

if [ -z "${RDMAMIG_RXE_DEV:-}" ]; then
	echo "== TCP backend, host loopback, $TOTAL of scattered 1 MiB ranges"
	for c in $QPS; do "$bin" xfer --kind tcp --chans "$c" --write 1M --total "$TOTAL" --region 1G; done
	echo "== RDMA: booting the soft-RoCE VM"
	exec scripts/soft-roce/vm.sh -m 4G -t 3000 -- env O="$O" BENCH_TOTAL="$TOTAL" BENCH_QPS="$QPS" \
		BENCH_WRITES="$WRITES" BENCH_REGION="$REGION" bench/transport.sh
fi

dev=$RDMAMIG_RXE_DEV
addr=$RDMAMIG_RXE_ADDR
port=18515
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
		# Bounded: a perftest pair that loses its peer waits forever.
		timeout 120 ib_write_bw -d "$dev" -s "$s" -q "$q" -n "$n" -N -F -p "$port" >/dev/null 2>&1 &
		srv=$!
		sleep 1
		ib=$(timeout 120 ib_write_bw -d "$dev" -s "$s" -q "$q" -n "$n" -N -F -p "$port" "$addr" 2>/dev/null |
			awk -v s="$s" '$1 == s && NF >= 4 { print $4 }' | tail -1)
		wait "$srv" 2>/dev/null
		line=$(timeout 300 "$bin" xfer --kind rdma --addr "$addr" --chans "$q" --write "$w" --total "$TOTAL" \
			--region "$REGION")
		mine=$(sed -n 's/.*MBps=\([0-9.]*\).*/\1/p' <<< "$line")
		ratio=$(awk -v a="${mine:-0}" -v b="${ib:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
		printf '%-4s %-6s %14s %14s %7s\n' "$q" "$w" "${ib:-fail}" "${mine:-fail}" "$ratio"
	done
done

echo "== registration time per GiB on $dev"
echo 600 > /proc/sys/vm/nr_hugepages 2>/dev/null || true
"$bin" reg --dev "$dev" --region 1G
echo 0 > /proc/sys/vm/nr_hugepages 2>/dev/null || true
