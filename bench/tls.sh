#!/bin/bash
# bench/tls.sh — what --tls costs the TCP transport: TLS against plain TCP,
# side by side in one run, alternating run by run so both see the same
# machine.  Two measures, each plain then TLS, BENCH_TLS_REPEATS times:
#   - the transport alone (bench-transport xfer: TOTAL bytes of scattered
#     1 MiB writes over loopback, 1 and 2 channels): MB/s and CPU s/GiB;
#   - a real migration (rdmamig, a guest that filled its RAM, switched over
#     after the bulk pass): the bulk pass's goodput, total and downtime.
# Where: here (this host's kernel: kernel TLS only with the tls ULP), then
# inside the soft-RoCE test VM, whose Debian 6.1 kernel has the tls module.
# Each run says which TLS path its records took (userspace, kernel-tx:
# the kernel encrypts what is sent and OpenSSL 3.0 decrypts in userspace).
#
#   bench/tls.sh                  host, then the VM (O=build by default)
#   bench/tls.sh --here           only here
#   BENCH_TLS_REPEATS=5 BENCH_TLS_TOTAL=1G BENCH_TLS_MEM=256M bench/tls.sh
#
# Results: bench/results/<date>-<host>-tls/{raw/,summary.txt}.  Ratios of
# the same run are what to read: the machines are shared and loopback TCP
# is no network.
set -uo pipefail
cd "$(dirname "$0")/.."
O=${O:-build}
REPEATS=${BENCH_TLS_REPEATS:-3}
bin=$O/bench/bench-transport
for f in "$bin" "$O/rdmamig"; do
	[ -x "$f" ] || { echo "tls.sh: $f missing; build first: make O=$O all benches" >&2; exit 2; }
done

here=0 inner= where=
case ${1:-} in
--here) here=1 ;;
--inner) inner=$2 where=$3 ;;
-h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
"") ;;
*) echo "tls.sh: unknown argument $1" >&2; exit 2 ;;
esac

log() { echo "[$(date -u +%T)] $*"; }

# One machine's share: everything here, appended under $dir/raw.
measure() {
	local dir=$1 where=$2 total mem port=17600 psk
	local raw=$dir/raw
	total=${BENCH_TLS_TOTAL:-$([ "$where" = vm ] && echo 256M || echo 1G)}
	mem=${BENCH_TLS_MEM:-$([ "$where" = vm ] && echo 64M || echo 256M)}
	psk=$(mktemp /tmp/rdmamig-bench-psk.XXXXXX)
	head -c 32 /dev/urandom > "$psk"
	{
		echo "where=$where kernel=$(uname -r) cpus=$(nproc)"
		echo "tcp_available_ulp=$(cat /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null)"
		echo "openssl=$(openssl version 2>/dev/null)"
		# What this CPU (or its emulation, in the VM) encrypts at: the
		# ceiling of any TLS figure below.
		echo "aes-128-gcm_16KiB=$(openssl speed -seconds 1 -bytes 16384 -evp aes-128-gcm 2>/dev/null |
			awk '/^AES-128-GCM/ { print $2 }')"
	} >> "$raw/machines.txt"
	for r in $(seq "$REPEATS"); do
		for c in 1 2; do
			for mode in plain tls; do
				timeout 300 "$bin" xfer --kind tcp --chans "$c" --write 1M --total "$total" \
					--region 512M $([ $mode = tls ] && echo --tls) |
					sed "s/^/where=$where repeat=$r /" >> "$raw/xfer.txt"
				log "$where xfer chans=$c $mode: $(tail -1 "$raw/xfer.txt" | grep -o 'MBps=[0-9.]*')"
			done
		done
		for mode in plain tls; do
			local id=$where-mig-$r-$mode tls=
			[ $mode = tls ] && tls=--tls
			port=$((port + 1))
			timeout 240 /usr/bin/time -f '%e %U %S' -o "$raw/$id.dst.time" "$O/rdmamig" --dst \
				--listen "127.0.0.1:$port" --transport tcp $tls --psk "$psk" --run-after 1 \
				--timeout 60000 --json "$raw/$id.dst.json" > "$raw/$id.dst.log" 2>&1 &
			local d=$!
			sleep 1
			timeout 240 /usr/bin/time -f '%e %U %S' -o "$raw/$id.src.time" "$O/rdmamig" --src \
				--connect "127.0.0.1:$port" --transport tcp $tls --psk "$psk" --mem "$mem" \
				--vcpus 1 --workload sweep:0 --warmup 2 --max-iterations 1 --timeout 60000 \
				--json "$raw/$id.src.json" 2>&1 | grep -v '^progress:' > "$raw/$id.src.log"
			wait "$d"
			log "$id: $(grep -o 'migrated.*' "$raw/$id.src.log" | head -1)"
		done
	done
	rm -f "$psk"
}

if [ -n "$inner" ]; then
	measure "$inner" "$where"
	exit 0
fi

dir=bench/results/$(date -u +%Y%m%d-%H%M)-$(hostname -s)-tls
mkdir -p "$dir/raw"
echo "tls.sh: results in $dir"
echo "commit=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo +dirty)" \
	> "$dir/raw/machines.txt"
measure "$dir" host
if [ $here = 0 ]; then
	log "booting the soft-RoCE test VM (kernel TLS)"
	scripts/soft-roce/vm.sh -t 1500 -- env O="$O" BENCH_TLS_REPEATS="$REPEATS" bench/tls.sh --inner "$dir" vm ||
		echo "tls.sh: the VM part ended with status $?; summarizing what there is" >&2
fi
bench/tls-report "$dir" | tee "$dir/summary.txt"
