#!/bin/bash
# build.sh — build stackend.ko (see stackend.c) for the bed VM's kernel into
# .cache/soft-roce/stackend/; needs linux-headers-<the bed's kernel>, which
# only this diagnostic needs (it is not in scripts/deps.sh).  Prints the path.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(cd "$here/../../.." && pwd)
kver=$(ls /boot/vmlinuz-* | sort -V -r | head -1 | sed 's|/boot/vmlinuz-||')
out=${RDMAMIG_CACHE:-$work/.cache/soft-roce}/stackend
[ -d "/lib/modules/$kver/build" ] ||
	{ echo "build.sh: no headers for $kver; apt-get install linux-headers-$kver" >&2; exit 2; }
mkdir -p "$out"
cp "$here/stackend.c" "$here/Kbuild" "$out/"
make -s -C "/lib/modules/$kver/build" M="$out" modules >&2
echo "$out/stackend.ko"
