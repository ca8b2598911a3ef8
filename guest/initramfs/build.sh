#!/usr/bin/env bash
# Builds the L2 initramfs of the KVM lab: busybox-static, ivshmem-tool and the
# scenario init (./init), plus a payload whose checksum proves the initrd
# arrived intact.  Usage: build.sh OUT.cpio.gz IVSHMEM_TOOL
set -euo pipefail
out=${1:?usage: build.sh OUT.cpio.gz IVSHMEM_TOOL}
tool=${2:?usage: build.sh OUT.cpio.gz IVSHMEM_TOOL}
here=$(cd "$(dirname "$0")" && pwd)
busybox=/bin/busybox
die() { echo "l2-initramfs: $*" >&2; exit 1; }
[ -x "$busybox" ] || die "$busybox missing (apt-get install busybox-static; 'make deps')"
{ ldd "$busybox" 2>&1 || true; } | grep -q "not a dynamic" || die "$busybox is not static (install busybox-static)"
[ -x "$tool" ] || die "ivshmem tool $tool missing (make guest-tool)"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,lab,proc,sys,dev,tmp}
cp "$busybox" "$stage/bin/busybox"
cp "$tool" "$stage/bin/ivshmem-tool"
cp "$here/init" "$stage/init"
chmod 755 "$stage/init" "$stage/bin/busybox" "$stage/bin/ivshmem-tool"
head -c 262144 /dev/urandom >"$stage/lab/payload"
md5sum "$stage/lab/payload" | cut -d' ' -f1 >"$stage/lab/payload.md5"
mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -6 >"$out.tmp"
mv "$out.tmp" "$out"
echo "l2-initramfs: $out ($(du -h "$out" | cut -f1))"
