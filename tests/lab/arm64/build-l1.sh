#!/usr/bin/env bash
# Builds the arm64 lab's two initramfs images (README, "The arm64 lab").
# Usage: build-l1.sh DIR SHMVM_AARCH64 LAB_AARCH64 SCENARIOS TOOL_AARCH64
#   DIR      from tests/lab/fetch-arm64.sh (vmlinuz, busybox); gets l1.cpio.lz4
#   SHMVM_AARCH64, LAB_AARCH64, TOOL_AARCH64   static aarch64 shmvm, lab
#            runner and ivshmem-tool
# L2: busybox, ivshmem-tool, the virtio modules, tests/lab/arm64/l2-init as /init and a random
# marker the guest must read back (proves the initrd arrived). L1: busybox,
# l1-init as /init, shmvm, the lab runner, ivshmem-tool (the host side of
# the ivshmem scenarios), QEMU (the reference L2 VMM: DIR/qemu/ from
# tests/lab/arm64/fetch-qemu.sh, the binary with its loader and libraries at
# their own paths), the L2 kernel and initramfs, the marker and the
# scenario table.
set -euo pipefail
dir=${1:?usage: build-l1.sh DIR SHMVM_AARCH64 LAB_AARCH64 SCENARIOS TOOL_AARCH64}
shmvm=${2:?} runner=${3:?} scenarios=${4:?} tool=${5:?}
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "lab-arm64: $*" >&2; exit 1; }
[ -f "$dir/vmlinuz" ] && [ -x "$dir/busybox" ] || die "$dir: run tests/lab/fetch-arm64.sh"
[ -x "$dir/qemu/usr/bin/qemu-system-aarch64" ] || die "$dir/qemu: run tests/lab/fetch-arm64.sh"
for b in "$shmvm" "$runner" "$tool"; do
    file -L "$b" | grep -q "ARM aarch64.*statically linked" || die "$b is not a static aarch64 binary"
done
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
marker="initrd-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
mkdir -p "$stage/l2/bin" "$stage/l1/bin" "$stage/l1/usr/bin" "$stage/l1/lab"
cp "$dir/busybox" "$stage/l2/bin/busybox"
install -m 755 "$tool" "$stage/l2/bin/ivshmem-tool"
[ -f "$dir/modules/virtio/order" ] || die "$dir/modules/virtio: run tests/lab/fetch-arm64.sh"
mkdir -p "$stage/l2/lib/modules"
cp -r "$dir/modules/virtio" "$stage/l2/lib/modules/virtio"
install -m 755 "$here/l2-init" "$stage/l2/init"
echo "$marker" >"$stage/l2/lab-initrd-marker"
(cd "$stage/l2" && find . | sort | cpio -o -H newc --quiet -R 0:0) | gzip -1 >"$stage/l1/lab/l2.cpio.gz"
cp "$dir/busybox" "$stage/l1/bin/busybox"
(cd "$dir/qemu" && find . ! -name '.*' | cpio -pdm --quiet "$stage/l1")
install -m 755 "$here/l1-init" "$stage/l1/init"
install -m 755 "$shmvm" "$stage/l1/usr/bin/shmvm"
install -m 755 "$runner" "$stage/l1/usr/bin/lab"
install -m 755 "$tool" "$stage/l1/usr/bin/ivshmem-tool"
cp "$dir/vmlinuz" "$stage/l1/lab/vmlinuz"
echo "$marker" >"$stage/l1/lab/l2-marker"
cp "$scenarios" "$stage/l1/lab/scenarios"
# lz4 (legacy frame): fast to unpack under TCG.
(cd "$stage/l1" && find . | sort | cpio -o -H newc --quiet -R 0:0) | lz4 -l -1 -q >"$dir/l1.cpio.lz4.tmp"
mv "$dir/l1.cpio.lz4.tmp" "$dir/l1.cpio.lz4"
echo "lab-arm64: $dir/l1.cpio.lz4 ($(du -h "$dir/l1.cpio.lz4" | cut -f1))"
