#!/usr/bin/env bash
# Builds the L2 initramfs of the KVM lab: busybox-static, ivshmem-tool and the
# scenario init (./init) with the doorbell steps it sources (./doorbell.sh), plus a payload whose checksum proves the initrd
# arrived intact.  Usage: build.sh OUT.cpio.gz IVSHMEM_TOOL [KERNEL_MODULES_DIR [IVSHMEM_DB_KO]]
# With KERNEL_MODULES_DIR (lib/modules/<version> of the L2 kernel), the virtio
# modules go to /lib/modules/virtio/, loaded by the init on lab.modules=virtio.
# IVSHMEM_DB_KO (make ivshmem-db, built for that kernel) goes to
# /lib/modules/ivshmem_db.ko, loaded by the init on lab.doorbell=N.
set -euo pipefail
out=${1:?usage: build.sh OUT.cpio.gz IVSHMEM_TOOL}
tool=${2:?usage: build.sh OUT.cpio.gz IVSHMEM_TOOL}
moddir=${3:-}
dbko=${4:-}
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
install -D -m 644 "$here/doorbell.sh" "$stage/lib/lab/doorbell.sh"
chmod 755 "$stage/init" "$stage/bin/busybox" "$stage/bin/ivshmem-tool"
if [ -n "$moddir" ]; then
    mkdir -p "$stage/lib/modules/virtio"
    # Load order (each module's depends= comes before it).
    order="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio virtio_blk virtio-rng virtio_console"
    for m in $order; do
        f=$(find "$moddir/kernel/drivers" -name "$m.ko" | head -n1)
        [ -n "$f" ] || die "module $m.ko not found under $moddir"
        cp "$f" "$stage/lib/modules/virtio/"
    done
    echo "$order" >"$stage/lib/modules/virtio/order"
    # The vhost-user fs and vsock drivers (lab.vuser), after virtio (whose
    # list has virtio-rng, which the vhost-user-rng device binds to).
    mkdir -p "$stage/lib/modules/vhostuser"
    order="fuse virtiofs vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport"
    for m in $order; do
        f=$(find "$moddir/kernel" -name "$m.ko" | head -n1)
        [ -n "$f" ] || die "module $m.ko not found under $moddir"
        cp "$f" "$stage/lib/modules/vhostuser/"
    done
    echo "$order" >"$stage/lib/modules/vhostuser/order"
    # The ACPI power button (lab.action=powerdown): both are modules in the
    # Debian cloud kernel (CONFIG_ACPI_BUTTON=m, CONFIG_INPUT_EVDEV=m).
    mkdir -p "$stage/lib/modules/button"
    for m in evdev button; do
        f=$(find "$moddir/kernel/drivers" -name "$m.ko" | head -n1)
        [ -n "$f" ] || die "module $m.ko not found under $moddir"
        cp "$f" "$stage/lib/modules/button/"
    done
fi
if [ -n "$dbko" ]; then
    [ -f "$dbko" ] || die "$dbko missing (make ivshmem-db)"
    install -D -m 644 "$dbko" "$stage/lib/modules/ivshmem_db.ko"
fi
head -c 262144 /dev/urandom >"$stage/lab/payload"
md5sum "$stage/lab/payload" | cut -d' ' -f1 >"$stage/lab/payload.md5"
mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -6 >"$out.tmp"
mv "$out.tmp" "$out"
echo "l2-initramfs: $out ($(du -h "$out" | cut -f1))"
