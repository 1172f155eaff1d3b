#!/bin/bash
# demo.sh — a live migration of a busy KVM guest between two rdmamig
# processes over soft-RoCE, with progress and the final stats.  `make demo`
# runs it.  Uses rxe on this host where the kernel can (setup.sh) and /dev/kvm
# exists; otherwise runs itself inside the test VM (vm.sh).
#   scripts/demo.sh [--inner]
set -uo pipefail
cd "$(dirname "$0")/.."
O=${O:-build}

if [ "${1:-}" != --inner ]; then
	if [ -e /dev/kvm ] && env=$(scripts/soft-roce/setup.sh --env 2>/dev/null); then
		eval "$env"
		ulimit -l unlimited
		exec env O="$O" "$0" --inner
	fi
	echo "demo: this host has no soft-RoCE or no /dev/kvm; running the demo in the test VM"
	exec scripts/soft-roce/vm.sh -t 600 -- env O="$O" scripts/demo.sh --inner
fi

addr=${RDMAMIG_RXE_ADDR:?no soft-RoCE address}
port=7471
json=${RDMAMIG_DEMO_JSON:-$O/demo-stats.json}
# Both sides prove they hold the same key before the destination creates
# anything; a real deployment copies the key file to both hosts.
key=$(mktemp /tmp/rdmamig-demo-key.XXXXXX)
dstlog=$(mktemp /tmp/rdmamig-demo-dst.XXXXXX)
trap 'rm -f "$key" "$dstlog"' EXIT
head -c 32 /dev/urandom > "$key"
echo "demo: key:         head -c 32 /dev/urandom > $key"
echo "demo: destination: $O/rdmamig --dst --listen $addr:$port --psk $key"
echo "demo: source:      $O/rdmamig --src --connect $addr:$port --psk $key --mem 128M --vcpus 2 --workload hotset:3000 --verify"
"$O/rdmamig" --dst --listen "$addr:$port" --psk "$key" --run-after 3 > >(tee "$dstlog" | sed -u 's/^/[dst] /') 2>&1 &
dst=$!
# Start the source once the destination listens (it says so), not after a
# guess at how long that takes; give up after 30 s or when it has died.
for _ in $(seq 300); do
	grep -q "waiting for a source" "$dstlog" && break
	kill -0 "$dst" 2>/dev/null || break
	sleep 0.1
done
if ! grep -q "waiting for a source" "$dstlog"; then
	echo "demo: the destination did not start listening on $addr:$port (its output is above)"
	kill "$dst" 2>/dev/null
	exit 1
fi
"$O/rdmamig" --src --connect "$addr:$port" --psk "$key" --mem 128M --vcpus 2 --workload hotset:3000 \
	--warmup 2 --verify --json "$json" 2>&1 | sed -u 's/^/[src] /'
src_rc=${PIPESTATUS[0]}
wait $dst
dst_rc=$?
echo "demo: source exit $src_rc, destination exit $dst_rc; stats in $json"
[ "$src_rc" = 0 ] && [ "$dst_rc" = 0 ]
