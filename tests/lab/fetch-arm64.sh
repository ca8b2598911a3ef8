#!/usr/bin/env bash
# Fetches the arm64 lab's Debian packages (README, "The arm64 lab") into
# build/lab-arm64/: the arm64 cloud kernel (L1 and L2 alike; KVM, GICv3,
# PSCI, 8250-of-platform consoles and initrd support are built in; the
# virtio-pci drivers are modules, kept in modules/virtio/ with their load
# order) and an arm64 busybox-static (unpacked, not installed: it would
# replace the host's), and (tests/lab/arm64/fetch-qemu.sh) the arm64 QEMU
# that is the reference L2 VMM. Idempotent: a stamp names each version.
set -euo pipefail
out=${LAB_ARM64_DIR:-build/lab-arm64}
mkdir -p "$out"
out=$(cd "$out" && pwd)
die() { echo "lab-fetch-arm64: $*" >&2; exit 1; }
dpkg --print-foreign-architectures | grep -qx arm64 || die "arm64 is not a dpkg architecture ('make deps')"

# The versioned package a meta package points at.
versioned() {
    apt-cache depends "$1" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
kpkg=$(versioned linux-image-cloud-arm64:arm64)
[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-arm64:arm64 (run 'apt-get update')"
kpkg=${kpkg%:arm64}
bver=$(apt-cache policy busybox-static:arm64 | awk '/Candidate:/ {print $2}')
stamp="$kpkg busybox-$bver virtio-modules"
bash "$(dirname "$0")/arm64/fetch-qemu.sh" "$out"
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ] && [ -f "$out/vmlinuz" ] &&
    [ -x "$out/busybox" ]; then
    echo "lab-fetch-arm64: $stamp cached in $out"
    exit 0
fi
tmp=$(mktemp -d); chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "lab-fetch-arm64: downloading $kpkg:arm64 busybox-static:arm64"
(cd "$tmp" && apt-get download -q "$kpkg:arm64" busybox-static:arm64 >/dev/null) ||
    die "apt-get download failed"
mkdir -p "$tmp/k" "$tmp/b"
dpkg-deb -x "$tmp"/linux-image-*.deb "$tmp/k"
dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/b"
cp "$tmp"/k/boot/vmlinuz-* "$out/vmlinuz"
# The L2's virtio drivers (built-in virtio-blk/-rng/-serial on PCI), in
# dependency order.
rm -rf "$out/modules"; mkdir -p "$out/modules/virtio"
order="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk virtio-rng virtio_console"
for m in $order; do
    f=$(find "$tmp/k/lib/modules" -name "$m.ko" | head -n1)
    [ -n "$f" ] || die "module $m.ko not found in $kpkg"
    cp "$f" "$out/modules/virtio/"
done
echo "$order" >"$out/modules/virtio/order"
cp "$tmp/b/bin/busybox" "$out/busybox"
echo "$stamp" >"$out/.stamp"
echo "lab-fetch-arm64: $stamp in $out"
