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
# With VNG_VENV (the project venv, build/venv) set, also virtme-ng for the vng
# scenarios (tests/src/lab/l1/vng.rs): Debian's python3.11 with the standard
# library files vng loads (tests/lab/vng-python-modules), vng's packages from
# the venv in /usr/lib/python3/dist-packages (its guest init included, at the
# path vng gives the guest, whose root is L1's /), vng and virtme-run,
# kmod's modprobe and depmod, udevadm as systemd-udevd (build/lab/udev, from
# fetch.sh), SeaBIOS for QEMU's pc machine, and the kernel as an installed
# one: /boot/vmlinuz-VERSION and the modules vng puts in its initramfs under
# /lib/modules/VERSION with their modules.dep. About 6 MB more lz4.
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

vng_in_l1() {
    local venv=$1 py site ver m f p
    py=$(readlink -f /usr/bin/python3.11) || die "python3.11 missing"
    site=$(echo "$venv"/lib/python3*/site-packages)
    [ -x "$site/virtme/guest/bin/virtme-ng-init" ] || die "virtme-ng not in $venv ('make deps')"
    [ -x "$kdir/../udev/udevadm" ] || die "$kdir/../udev/udevadm missing (tests/lab/fetch.sh)"
    copy_with_libs "$py" /usr/bin/python3.11
    ln -s python3.11 "$stage/usr/bin/python3"
    grep -v '^#' "$here/vng-python-modules" | while read -r f; do
        case "$f" in
            *.so) copy_with_libs "/usr/lib/python3.11/$f" "/usr/lib/python3.11/$f" ;;
            *) install -D -m 644 "$(readlink -f "/usr/lib/python3.11/$f")" "$stage/usr/lib/python3.11/$f" ;;
        esac
    done
    cp -r /usr/lib/python3.11/encodings "$stage/usr/lib/python3.11/"
    mkdir -p "$stage/usr/lib/python3/dist-packages"
    for p in virtme virtme_ng requests urllib3 charset_normalizer idna certifi argcomplete; do
        cp -r "$site/$p" "$site/$p"-*.dist-info "$stage/usr/lib/python3/dist-packages/" 2>/dev/null ||
            cp -r "$site/$p" "$stage/usr/lib/python3/dist-packages/"
    done
    # charset_normalizer's speed-ups: compiled for CPython 3.11, like Debian's.
    find "$stage/usr/lib/python3/dist-packages" -name '*.so' | while read -r f; do
        for m in $(ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// {print $3}'); do
            [ -e "$stage$m" ] || install -D -m 755 "$(readlink -f "$m")" "$stage$m"
        done
    done
    find "$stage/usr/lib/python3.11" "$stage/usr/lib/python3" -name __pycache__ -prune -exec rm -rf {} +
    # Byte-code once here, not under TCG at every start, in place of the
    # sources (-b: foo.pyc beside where foo.py was; half the size).
    "$py" -m compileall -q -b -j 0 -s "$stage" -p / \
        "$stage/usr/lib/python3.11" "$stage/usr/lib/python3/dist-packages" >/dev/null
    find "$stage/usr/lib/python3.11" "$stage/usr/lib/python3" -name '*.py' -delete
    for p in "vng virtme_ng.run" "virtme-run virtme.commands.run"; do
        set -- $p
        printf '#!/usr/bin/python3.11\nimport sys\nfrom %s import main\nsys.argv[0] = "%s"\nsys.exit(main())\n' \
            "$2" "$1" >"$stage/usr/bin/$1"
        chmod 755 "$stage/usr/bin/$1"
    done
    p=$(command -v kmod || command -v /usr/bin/kmod) || die "kmod not installed ('make deps')"
    copy_with_libs "$p" /usr/bin/kmod
    # In /bin, before l1-init's busybox applets (which skip names taken):
    # busybox's modprobe has no --show-depends, which vng asks.
    ln -s /usr/bin/kmod "$stage/bin/modprobe"
    ln -s /usr/bin/kmod "$stage/bin/depmod"
    # What vng's guest init expects of a root (the guest's is L1's /): the
    # mount points of its tmpfs and overlays, and a root user.
    mkdir -p "$stage"/{run,etc,var/log,var/tmp,home,opt,srv,mnt,root}
    echo 'root:x:0:0:root:/root:/bin/sh' >"$stage/etc/passwd"
    echo 'root:x:0:' >"$stage/etc/group"
    copy_with_libs "$kdir/../udev/udevadm" /usr/bin/udevadm
    mkdir -p "$stage/lib/systemd" "$stage/lib/udev/rules.d"
    ln -s /usr/bin/udevadm "$stage/lib/systemd/systemd-udevd"
    cp "$kdir/../udev/50-udev-default.rules" "$stage/lib/udev/rules.d/"
    # QEMU's pc machine boots SeaBIOS (Debian's QEMU looks in /usr/share/seabios too).
    f=/usr/share/seabios/bios-256k.bin
    [ -f "$f" ] || die "$f missing (seabios, with qemu-system-x86)"
    install -D -m 644 "$f" "$stage$f"
    # The kernel as installed: vng finds /lib/modules/VERSION next to /boot,
    # and (with no `file` here) the version in the image's name: a hard
    # link (cpio keeps it one file), not a symlink, which vng resolves.
    ver=$(basename "$(readlink -f "$kdir/modules")")
    mkdir -p "$stage/boot"
    ln "$stage/lab/l2/vmlinuz" "$stage/boot/vmlinuz-$ver"
    for m in fs/fuse fs/overlayfs drivers/virtio drivers/char/virtio_console.ko; do
        f=$kdir/modules/kernel/$m
        [ -e "$f" ] || die "$f missing"
        mkdir -p "$stage/lib/modules/$ver/kernel/$(dirname "$m")"
        cp -r "$f" "$stage/lib/modules/$ver/kernel/$m"
    done
    cp "$kdir"/modules/modules.builtin* "$kdir"/modules/modules.order "$stage/lib/modules/$ver/"
    depmod -b "$stage" "$ver" || die "depmod for $ver failed"
}
if [ -n "${VNG_VENV:-}" ]; then vng_in_l1 "$VNG_VENV"; fi

mkdir -p "$(dirname "$out")"
# lz4 (legacy frame, which the kernel's unpacker reads): fast to unpack under TCG.
(cd "$stage" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | lz4 -l -1 -q >"$out.tmp"
mv "$out.tmp" "$out"
echo "l1-initramfs: $out ($(du -h "$out" | cut -f1))${shmvm:+ with shmvm $shmvm}"
