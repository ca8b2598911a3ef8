#!/usr/bin/env bash
# Builds the L1 initramfs of the KVM lab.
# Usage: build-l1.sh OUT KERNEL_DIR L2_INITRD IVSHMEM_TOOL LAB_RUNNER SCENARIOS [SHMVM [IVSHMEM_SERVER]]
#   KERNEL_DIR   from fetch.sh (vmlinuz + modules/), used for L1 and L2 alike
#   LAB_RUNNER   the static lab runner (tests/src/bin/lab.rs), exec'd by l1-init
#   SCENARIOS    the scenario table (tests/lab/scenarios)
#   SHMVM        the shmvm binary under test (omit only for a QEMU-only run)
#   IVSHMEM_SERVER  shmvm's ivshmem-server (the doorbell scenarios' server)
# Contents: busybox-static, kvm modules (+ brd for an ext2 ramdisk), QEMU with
# its shared libraries and firmware (the reference L2 VMM), qemu-storage-daemon
# (the vhost-user-blk back-end), shmvm and ivshmem-server with their
# libraries, ivshmem-tool (host-side checker), the lab runner, the L2 kernel
# and initramfs, the scenario table and l1-init as /init.
set -euo pipefail
out=${1:?usage: build-l1.sh OUT KERNEL_DIR L2_INITRD IVSHMEM_TOOL LAB_RUNNER SCENARIOS [SHMVM [IVSHMEM_SERVER]]}
kdir=${2:?} l2_initrd=${3:?} tool=${4:?} runner=${5:?} scenarios=${6:?} shmvm=${7:-} server=${8:-}
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "l1-initramfs: $*" >&2; exit 1; }

qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 not installed ('make deps')"
[ -f "$kdir/vmlinuz" ] || die "$kdir/vmlinuz missing (tests/lab/fetch.sh)"
[ -f "$l2_initrd" ] || die "L2 initramfs $l2_initrd missing"
[ -x "$tool" ] || die "ivshmem tool $tool missing"
[ -x "$runner" ] || die "lab runner $runner missing"
[ -f "$scenarios" ] || die "scenario table $scenarios missing"
for b in "$tool" "$runner"; do
    { ldd "$b" 2>&1 || true; } | grep -q "not a dynamic" || die "$b is not a static binary"
done
[ -z "$shmvm" ] || [ -x "$shmvm" ] || die "shmvm binary $shmvm missing"
[ -z "$server" ] || [ -x "$server" ] || die "ivshmem-server binary $server missing"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,usr/bin,lab/modules,lab/l2,usr/share/qemu,proc,sys,dev,tmp}

# A binary and every shared library it loads, at their own paths.
copy_with_libs() {
    local bin=$1 dest=$2 lib
    install -D -m 755 "$bin" "$stage$dest"
    if ldd "$bin" >/dev/null 2>&1; then
        for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
            [ -e "$stage$lib" ] || install -D -m 755 "$(readlink -f "$lib")" "$stage$lib"
        done
    fi
}

cp /bin/busybox "$stage/bin/busybox"
install -m 755 "$here/l1-init" "$stage/init"
cp "$scenarios" "$stage/lab/scenarios"
m=$kdir/modules/kernel
for ko in virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-amd.ko drivers/block/brd.ko; do
    [ -f "$m/$ko" ] || die "module $m/$ko missing"
    cp "$m/$ko" "$stage/lab/modules/"
done
cp "$kdir/vmlinuz" "$stage/lab/l2/vmlinuz"
cp "$l2_initrd" "$stage/lab/l2/initrd.gz"
copy_with_libs "$qemu" /usr/bin/qemu-system-x86_64
# The vhost-user-blk back-end of the vub* scenarios (qemu-utils).
qsd=$(command -v qemu-storage-daemon) || die "qemu-storage-daemon not installed (qemu-utils; 'make deps')"
copy_with_libs "$qsd" /usr/bin/qemu-storage-daemon
# The vuser scenarios' back-ends (scripts/vhost-backends.sh, 'make deps').
for b in virtiofsd vhost-device-vsock vhost-device-rng; do
    p=$(command -v "$b" || command -v "$HOME/.cargo/bin/$b") || die "$b not installed ('make deps')"
    copy_with_libs "$p" "/usr/bin/$b"
done
for f in qboot.rom linuxboot_dma.bin pvh.bin kvmvapic.bin; do
    [ -f "/usr/share/qemu/$f" ] && cp "/usr/share/qemu/$f" "$stage/usr/share/qemu/"
done
[ -f "$stage/usr/share/qemu/qboot.rom" ] || die "/usr/share/qemu/qboot.rom missing"
install -m 755 "$tool" "$stage/usr/bin/ivshmem-tool"
install -m 755 "$runner" "$stage/usr/bin/lab"
[ -n "$shmvm" ] && copy_with_libs "$shmvm" /usr/bin/shmvm
[ -n "$server" ] && copy_with_libs "$server" /usr/bin/ivshmem-server

mkdir -p "$(dirname "$out")"
# lz4 (legacy frame, which the kernel's unpacker reads): fast to unpack under TCG.
(cd "$stage" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | lz4 -l -1 -q >"$out.tmp"
mv "$out.tmp" "$out"
echo "l1-initramfs: $out ($(du -h "$out" | cut -f1))${shmvm:+ with shmvm $shmvm}"
