#!/bin/bash
# tests/check-fuzz.sh — replay every fuzz target of fuzz/ over its checked-in
# corpus once (no new fuzzing; a few seconds), so an input that once crashed
# a parser, kept there as its regression, fails `make test` if the bug comes
# back.  Run by tests/run.sh; the targets are built by `make test` (make
# fuzz-bins: clang, into build-fuzz/).  Prints one "[PASS] check fuzz
# replay" or "[FAIL] check fuzz replay" line; exit 1 on any failure, a
# missing target included (clang is a dependency: scripts/deps.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
targets=$(sed -n 's/^FUZZ_TARGETS ?= //p' fuzz/Build.mk)
if out=$(O=build-fuzz fuzz/run.sh replay $targets 2>&1); then
	echo "$out" | sed 's/^\[PASS\] fuzz replay /  /'
	echo "[PASS] check fuzz replay: $(echo $targets | wc -w) targets over $(find fuzz/corpus -type f | wc -l) inputs, no crash"
	exit 0
fi
echo "$out"
echo "[FAIL] check fuzz replay"
exit 1
