#!/bin/bash
# tests/check-layers.sh — the layering rule, checked on every #include line
# of the tree (run by tests/run.sh, so by `make test`).  Layers, bottom up:
#
#   include/, common/    the public header; private helpers (common/ may
#                        include include/, nothing else)
#   transport/           the transports and RDMA registration: common/, include/
#   pinning/             guest-RAM backing: common/, include/
#   migration/           the engine: transport/, common/, include/
#   kvm/                 the built-in VMM, beside the engine: pinning/,
#                        common/, include/; never transport/ or migration/
#   kvm/guest/           the freestanding guest payload: kvm/guest/ only
#   cli/                 cli/, include/rdmamig.h and kvm/vmm.h, nothing else
#   tests/, bench/,      any layer, never cli/
#   fuzz/
#
# An include is resolved as the compiler does (the including file's folder,
# then include/, then the top folder); one that names a project header that
# does not exist fails too.  On top, the project's headers must include each
# other without a cycle (tsort finds any).  Prints one "[PASS] check layers"
# or "[FAIL] check layers" line after the reasons; exit 1 on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

# allowed FOLDER: the folders FOLDER's files may include from.
allowed() {
	case $1 in
	include)	echo "include" ;;
	common)		echo "common include" ;;
	transport)	echo "transport common include" ;;
	pinning)	echo "pinning common include" ;;
	migration)	echo "migration transport common include" ;;
	kvm/guest)	echo "kvm/guest" ;;
	kvm)		echo "kvm pinning common include" ;;
	cli)		echo "cli include kvm/vmm.h" ;;
	tests|bench|fuzz)	echo "include common transport pinning migration kvm tests bench fuzz" ;;
	*)		echo "" ;;
	esac
}

# layer PATH: the folder whose rule applies to PATH.
layer() {
	case $1 in
	kvm/guest/*)	echo kvm/guest ;;
	*/*)		echo "${1%%/*}" ;;
	*)		echo . ;;
	esac
}

files=$(find include common transport pinning migration kvm cli tests bench fuzz \
	-type f \( -name '*.c' -o -name '*.h' -o -name '*.S' \) | sort)
[ -n "$files" ] || { echo "[FAIL] check layers: no sources found"; exit 1; }

nincl=0
for f in $files; do
	dir=$(dirname "$f")
	from=$(layer "$f")
	rules=$(allowed "$from")
	if [ -z "$rules" ]; then
		echo "  $f: folder $from has no layering rule (add one to tests/check-layers.sh)"
		fail=1
		continue
	fi
	while IFS=: read -r line kind name; do
		target=
		if [ -f "$dir/$name" ]; then
			target=$dir/$name
		elif [ -f "include/$name" ]; then
			target=include/$name
		elif [ -f "$name" ]; then
			target=$name
		elif [ "$kind" = '"' ]; then
			echo "  $f:$line: #include \"$name\" names no file of the project"
			fail=1
			continue
		else
			continue	# a system header
		fi
		target=$(realpath --relative-to=. "$target")
		nincl=$((nincl + 1))
		ok=0
		for a in $rules; do
			case $target in
			"$a"|"$a"/*) ok=1 ;;
			esac
		done
		if [ "$ok" = 0 ]; then
			echo "  $f:$line: includes $target, but $from/ may include only: $rules"
			fail=1
		fi
		case $f in *.h) echo "$f $target" >> "$tmp/edges" ;; esac
	done < <(awk '{
			if (!match($0, /^[ \t]*#[ \t]*include[ \t]*[<"][^>"]+[>"]/))
				next
			s = substr($0, RSTART, RLENGTH)
			sub(/^[ \t]*#[ \t]*include[ \t]*/, "", s)
			print NR ":" substr(s, 1, 1) ":" substr(s, 2, length(s) - 2)
		}' "$f")
done

if [ -s "$tmp/edges" ] && ! tsort "$tmp/edges" > /dev/null 2> "$tmp/loop"; then
	echo "  the project's headers include each other in a cycle:"
	sed 's/^/    /' "$tmp/loop"
	fail=1
fi

if [ $fail = 0 ]; then
	echo "[PASS] check layers: $nincl project includes in $(echo "$files" | wc -l) files follow the layer rules; headers form no cycle"
else
	echo "[FAIL] check layers"
fi
exit $fail
