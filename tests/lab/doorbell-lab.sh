#!/usr/bin/env bash
# The doorbell lab: stock Linux guests exchange ivshmem doorbells through
# the ivshmem_db module and ivshmem-tool: two under shmvm and one under QEMU
# (microvm with PCIe), all L2 guests of one L1 Linux under QEMU TCG with
# nested SVM, on shmvm's ivshmem-server in L1. A token goes 0 -> 1 -> 2 -> 0.
# Needs what `make lab` needs plus the module (make ivshmem-db) and a static
# ivshmem-tool (make guest-tool); release shmvm and ivshmem-server.
# Output: build/lab/doorbell-console.log; exit 0 if all three guests say OK.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
lab=$root/build/lab
die() { echo "doorbell-lab: FAIL: $*" >&2; exit 1; }
tests/lab/fetch.sh >/dev/null
kdir=$lab/kernel
ko=build/guest/ivshmem_db.ko
tool=${IVSHMEM_TOOL:-target/x86_64-unknown-linux-gnu/release/ivshmem-tool}
shmvm=${SHMVM:-target/release/shmvm}
server=target/release/ivshmem-server
for f in "$ko" "$tool" "$shmvm" "$server" "$kdir/vmlinuz" /bin/busybox; do
    [ -f "$f" ] || die "$f missing (make ivshmem-db guest-tool build)"
done
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# L2: busybox, the module, the tool.
mkdir -p "$stage/l2/bin"
cp /bin/busybox "$tool" "$stage/l2/bin/"
cp "$ko" "$stage/l2/"
install -m 755 tests/lab/doorbell/l2-init "$stage/l2/init"
(cd "$stage/l2" && find . | cpio -o -H newc --quiet -R 0:0 | gzip) >"$stage/l2.gz"
# L1: busybox, kvm modules, QEMU and firmware, shmvm, the server, L2.
l1=$stage/l1
mkdir -p "$l1"/{bin,usr/bin,lab,usr/share/qemu}
copy_with_libs() {
    local bin=$1 dest=$2 lib
    install -D -m 755 "$bin" "$l1$dest"
    if ldd "$bin" >/dev/null 2>&1; then
        for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
            [ -e "$l1$lib" ] || install -D -m 755 "$(readlink -f "$lib")" "$l1$lib"
        done
    fi
}
cp /bin/busybox "$l1/bin/"
install -m 755 tests/lab/doorbell/l1-init "$l1/init"
m=$kdir/modules/kernel
for ko in virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko arch/x86/kvm/kvm-amd.ko; do cp "$m/$ko" "$l1/lab/"; done
cp "$kdir/vmlinuz" "$l1/lab/vmlinuz"
cp "$stage/l2.gz" "$l1/lab/l2.gz"
copy_with_libs "$(command -v qemu-system-x86_64)" /usr/bin/qemu-system-x86_64
for f in qboot.rom linuxboot_dma.bin pvh.bin kvmvapic.bin; do
    [ -f "/usr/share/qemu/$f" ] && cp "/usr/share/qemu/$f" "$l1/usr/share/qemu/"
done
copy_with_libs "$shmvm" /usr/bin/shmvm
copy_with_libs "$server" /usr/bin/ivshmem-server
(cd "$l1" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) | lz4 -l -1 -q >"$stage/l1.lz4"
mkdir -p "$lab"
log=$lab/doorbell-console.log
echo "doorbell-lab: booting L1 (QEMU TCG, nested SVM)"
timeout 900 qemu-system-x86_64 -M q35 -accel tcg,thread=multi -smp 2 -cpu EPYC,+svm,+npt -m 4096 \
    -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
    -kernel "$kdir/vmlinuz" -initrd "$stage/l1.lz4" \
    -append "console=ttyS0 reboot=t panic=-1 quiet" >"$log" 2>&1 || true
grep -E "^DB-|^  " "$log" || true
grep -q "DB-END" "$log" || die "L1 did not finish (see $log)"
for id in 0 1 2; do
    grep -q "DB-L2 OK id=$id " "$log" || die "guest $id did not pass (see $log)"
done
echo "doorbell-lab: ok (two shmvm guests and one QEMU guest passed a doorbell token around)"
