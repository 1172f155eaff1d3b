#!/bin/bash
# teardown.sh — undo setup.sh: remove rxe0 and the dummy netdev it made.
#   scripts/soft-roce/teardown.sh [--netdev DEV]
netdev=rdmamig0
[ "${1:-}" = --netdev ] && netdev=$2
rdma link delete rxe0 2>/dev/null || true
if ip -d link show "$netdev" 2>/dev/null | grep -q dummy; then
	ip link delete "$netdev"
fi
echo "rxe0 and $netdev removed"
