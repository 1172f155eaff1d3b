#!/bin/bash
# tests/check-exports.sh — what librdmamig.so is, checked from the built files
# (run by tests/run.sh, so by `make test`):
#
#   1. The functions it exports (nm -D --defined-only), the functions
#      include/rdmamig.h declares, the names include/librdmamig.map lists and
#      the library functions tests/test-linkage.o references are one set, and
#      every one is named rdmamig_*.
#   2. It holds none of the built-in VMM: no symbol that librmvmm.a defines
#      (kvm/, the RAM backing, the guest payload) is in its symbol table, and
#      no kvm/ or pinning/ object went into it.
#
# Prints the reasons, then one "[PASS] check exports" or "[FAIL] check
# exports" line; exit 1 on any failure.  O is the build folder (default build).
set -uo pipefail
cd "$(dirname "$0")/.."
O=${O:-build}
SO=$O/librdmamig.so
VMM=$O/librmvmm.a
LINKAGE=$O/tests/test-linkage.o
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

bad() {
	echo "  check exports: $*"
	fail=1
}

for f in "$SO" "$VMM" "$LINKAGE"; do
	if [ ! -f "$f" ]; then
		echo "[FAIL] check exports: $f is missing (make all tests first)"
		exit 1
	fi
done

# 1. The four lists of public names.
nm -D --defined-only --format=posix "$SO" | awk '$2 != "A" { sub(/@.*/, "", $1); print $1 }' |
	sort -u > "$tmp/exported"
# The header's declarations, comments and strings removed by the preprocessor.
${CC:-cc} -E -P -Iinclude include/rdmamig.h | grep -oE '\brdmamig_[a-z0-9_]+[[:space:]]*\(' |
	sed 's/[[:space:](]//g' | sort -u > "$tmp/header"
sed -n '/global:/,/local:/p' include/librdmamig.map | grep -oE '^[[:space:]]*[A-Za-z0-9_*]+;' |
	tr -d ' \t;' | sort -u > "$tmp/map"
nm -u --format=posix "$LINKAGE" | awk '$1 ~ /^rdmamig_/ { print $1 }' | sort -u > "$tmp/linkage"

[ -s "$tmp/exported" ] || bad "$SO exports nothing"
for list in header map linkage; do
	if ! diff -q "$tmp/exported" "$tmp/$list" > /dev/null; then
		case $list in
		header)  what="include/rdmamig.h declares" ;;
		map)     what="include/librdmamig.map lists" ;;
		linkage) what="tests/test-linkage.c references" ;;
		esac
		bad "$SO exports and $what different functions:"
		diff "$tmp/exported" "$tmp/$list" | sed -n 's/^</    only exported:/p; s/^>/    only in the other list:/p'
	fi
done
if grep -v '^rdmamig_' "$tmp/exported" > "$tmp/stray"; then
	bad "$SO exports names outside rdmamig_*: $(tr '\n' ' ' < "$tmp/stray")"
fi

# 2. No VMM inside.  A stripped library would pass this vacuously: refuse.
nm --format=posix "$SO" 2> /dev/null | awk '{ print $1 }' | sort -u > "$tmp/all"
if ! grep -qx rm_log "$tmp/all"; then
	bad "$SO has no symbol table to check (stripped?)"
fi
nm --defined-only --extern-only --format=posix "$VMM" 2> /dev/null |
	awk 'NF >= 2 && $1 !~ /:$/ { print $1 }' | sort -u > "$tmp/vmm"
[ -s "$tmp/vmm" ] || bad "$VMM defines nothing"
comm -12 "$tmp/all" "$tmp/vmm" > "$tmp/leak"
if [ -s "$tmp/leak" ]; then
	bad "$SO holds built-in VMM code: $(head -8 "$tmp/leak" | tr '\n' ' ')"
fi
# Debug info names the sources that went in.
if readelf --debug-dump=info "$SO" 2> /dev/null | grep -E 'DW_AT_name.*(kvm|pinning)/' |
	head -3 > "$tmp/srcs" && [ -s "$tmp/srcs" ]; then
	bad "$SO was built from kvm/ or pinning/ sources: $(tr -s ' \n' ' ' < "$tmp/srcs")"
fi

if [ $fail = 0 ]; then
	echo "[PASS] check exports: $(wc -l < "$tmp/exported") functions, one set in the library, rdmamig.h, the map and test-linkage; no VMM code inside"
else
	echo "[FAIL] check exports"
fi
exit $fail
