#!/usr/bin/env bash
# Fetches the arm64 lab's reference L2 VMM (README, "The arm64 lab"):
# Debian's arm64 qemu-system-aarch64, the same version as the host's
# qemu-system-arm (bookworm-backports' with 'make deps'), with exactly the
# shared libraries it loads, into DIR/qemu/ as a root tree for the arm64
# L1 initramfs (usr/bin/qemu-system-aarch64, lib/ld-linux-aarch64.so.1,
# lib/aarch64-linux-gnu/*). No firmware: -M virt with -kernel needs none.
#
# The packages are not installed (arm64 QEMU would replace the host's):
# each is `apt-get download`ed and unpacked. Which ones: the binary's
# DT_NEEDED sonames (readelf -d), then theirs, each looked up in the
# library packages (Section: libs) that the packages already providing a
# needed file depend on, level by level; a soname that no such package
# provides is an error. Idempotent: a stamp names the version.
# Usage: fetch-qemu.sh DIR
set -euo pipefail
dir=${1:?usage: fetch-qemu.sh DIR}
out=$dir/qemu
die() { echo "lab-fetch-arm64-qemu: $*" >&2; exit 1; }
command -v readelf >/dev/null || die "readelf not found (binutils)"
ver=$(dpkg-query -W -f='${Version}' qemu-system-arm 2>/dev/null) ||
    die "qemu-system-arm is not installed on the host ('make deps')"
stamp="qemu-system-arm:arm64=$ver"
bin=usr/bin/qemu-system-aarch64
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ] && [ -x "$out/$bin" ]; then
    echo "lab-fetch-arm64-qemu: $stamp cached in $out"
    exit 0
fi
tmp=$(mktemp -d); chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/deb" "$tmp/pkg"

# Downloads and unpacks packages (NAME:arm64, NAME:arm64=VERSION) into pkg/NAME/.
fetch() {
    local p
    (cd "$tmp/deb" && apt-get download -q "$@" >/dev/null 2>"$tmp/apt.err") ||
        die "apt-get download $*: $(tail -n1 "$tmp/apt.err")"
    for p in "$@"; do
        p=${p%%=*}; p=${p%:arm64}
        mkdir -p "$tmp/pkg/$p"
        dpkg-deb -x "$(ls "$tmp"/deb/"${p}"_*_arm64.deb | head -n1)" "$tmp/pkg/$p"
    done
}

# The library packages (Section: libs) that packages (NAME:arm64 or
# NAME:arm64=VERSION) depend on: one apt-cache call for the dependencies,
# one for their sections.
lib_deps() {
    local deps
    deps=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$@" 2>/dev/null |
        awk '($1 == "Depends:" || $1 == "PreDepends:") && $2 !~ /^</ {sub(/:arm64$/, "", $2); print $2}' |
        sort -u)
    [ -n "$deps" ] || return 0
    # shellcheck disable=SC2046
    apt-cache show $(sed 's/$/:arm64/' <<<"$deps") 2>/dev/null |
        awk '/^Package:/ {p = $2} /^Section:/ && $2 == "libs" {print p}' | sort -u
}

# Where a soname lives in an unpacked package: its library path, or nothing.
find_so() {
    local root=$1 so=$2 d
    for d in lib/aarch64-linux-gnu usr/lib/aarch64-linux-gnu lib usr/lib; do
        if [ -e "$root/$d/$so" ]; then echo "$d/$so"; return; fi
    done
}

needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'; }

echo "lab-fetch-arm64-qemu: downloading qemu-system-arm:arm64=$ver and the libraries it loads"
fetch "qemu-system-arm:arm64=$ver"
[ -x "$tmp/pkg/qemu-system-arm/$bin" ] || die "no $bin in qemu-system-arm:arm64"
declare -A have=([qemu-system-arm]=1) expanded=() provider=() where=()
# Each round: the needed closure over what is unpacked; the packages that
# provide part of it have their library dependencies fetched, once.
while :; do
    todo=("$tmp/pkg/qemu-system-arm/$bin") missing=() seen=()
    declare -A done_so=()
    while [ ${#todo[@]} -gt 0 ]; do
        f=${todo[0]}; todo=("${todo[@]:1}")
        for so in $(needed "$f"); do
            [ -n "${done_so[$so]:-}" ] && continue
            done_so[$so]=1
            hit=
            for p in "${!have[@]}"; do
                rel=$(find_so "$tmp/pkg/$p" "$so")
                if [ -n "$rel" ]; then hit=$p; break; fi
            done
            if [ -z "$hit" ]; then missing+=("$so"); continue; fi
            provider[$so]=$hit where[$so]=$rel
            seen+=("$hit")
            todo+=("$(readlink -f "$tmp/pkg/$hit/$rel")")
        done
    done
    unset done_so
    [ ${#missing[@]} -eq 0 ] && break
    new=() expand=()
    for p in qemu-system-arm "${seen[@]}"; do
        [ -n "${expanded[$p]:-}" ] && continue
        expanded[$p]=1
        if [ "$p" = qemu-system-arm ]; then expand+=("$p:arm64=$ver"); else expand+=("$p:arm64"); fi
    done
    for d in $(lib_deps "${expand[@]}"); do
        [ -n "${have[$d]:-}" ] && continue
        have[$d]=1 new+=("$d")
    done
    [ ${#new[@]} -gt 0 ] || die "no library package provides ${missing[*]}"
    fetch "${new[@]/%/:arm64}"
done

rm -rf "$out.tmp"; mkdir -p "$out.tmp/usr/bin"
install -m 755 "$tmp/pkg/qemu-system-arm/$bin" "$out.tmp/$bin"
for so in "${!provider[@]}"; do
    install -D -m 755 "$(readlink -f "$tmp/pkg/${provider[$so]}/${where[$so]}")" "$out.tmp/${where[$so]}"
done
# The program interpreter at the path the binary names (a link to the
# loader's library path: it is a NEEDED entry too).
interp=$(readelf -l "$out.tmp/$bin" | sed -n 's/.*interpreter: \(.*\)\]$/\1/p')
[ -n "$interp" ] || die "$bin names no program interpreter"
loader=${where[${interp##*/}]:-}
[ -n "$loader" ] || die "$bin: its interpreter $interp is not among its libraries"
if [ "/$loader" != "$interp" ]; then
    mkdir -p "$out.tmp$(dirname "$interp")"
    ln -s "/$loader" "$out.tmp$interp"
fi
printf '%s\n' "${!provider[@]}" | sort >"$out.tmp/.libs"
echo "$stamp" >"$out.tmp/.stamp"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "lab-fetch-arm64-qemu: $stamp with ${#provider[@]} libraries from" \
    "$(printf '%s\n' "${provider[@]}" | sort -u | wc -l) packages in $out ($(du -sh "$out" | cut -f1))"
