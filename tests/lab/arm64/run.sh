#!/usr/bin/env bash
# The arm64 lab (README, "The arm64 lab"): an arm64 L1 Linux under
# qemu-system-aarch64 TCG with EL2 (a real /dev/kvm inside), the aarch64
# shmvm in it booting the stock Debian arm64 kernel as L2 once per line of
# the scenario table. Builds both initramfs, runs L1, judges every scenario.
# Usage: run.sh SHMVM_AARCH64 [SCENARIOS]   (after tests/lab/fetch-arm64.sh)
set -euo pipefail
shmvm=${1:?usage: run.sh SHMVM_AARCH64 [SCENARIOS]}
here=$(cd "$(dirname "$0")" && pwd)
scenarios=${2:-$here/scenarios}
dir=${LAB_ARM64_DIR:-build/lab-arm64}
timeout=${LAB_ARM64_TIMEOUT:-600}
die() { echo "lab-arm64: $*" >&2; exit 1; }
command -v qemu-system-aarch64 >/dev/null || die "qemu-system-aarch64 missing ('make deps')"
[ -f "$dir/vmlinuz" ] && [ -x "$dir/busybox" ] || die "$dir: run tests/lab/fetch-arm64.sh"
file -L "$shmvm" | grep -q "ARM aarch64.*statically linked" || die "$shmvm is not a static aarch64 binary"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
marker="initrd-$$-$RANDOM"
# L2: busybox and its init, plus a marker the guest must read back.
mkdir -p "$stage/l2/bin"
cp "$dir/busybox" "$stage/l2/bin/busybox"
install -m 755 "$here/l2-init" "$stage/l2/init"
echo "$marker" >"$stage/l2/lab-initrd-marker"
(cd "$stage/l2" && find . | sort | cpio -o -H newc --quiet -R 0:0) | gzip -1 >"$stage/l2.cpio.gz"
# L1: busybox, its init, shmvm, the L2 kernel and initramfs, the table.
mkdir -p "$stage/l1/bin" "$stage/l1/usr/bin" "$stage/l1/lab"
cp "$dir/busybox" "$stage/l1/bin/busybox"
install -m 755 "$here/l1-init" "$stage/l1/init"
install -m 755 "$shmvm" "$stage/l1/usr/bin/shmvm"
cp "$dir/vmlinuz" "$stage/l1/lab/vmlinuz"
cp "$stage/l2.cpio.gz" "$stage/l1/lab/l2.cpio.gz"
cp "$scenarios" "$stage/l1/lab/scenarios"
(cd "$stage/l1" && find . | sort | cpio -o -H newc --quiet -R 0:0) | lz4 -l -1 -q >"$stage/l1.cpio.lz4"

log=$dir/l1.log
start=$(date +%s.%N)
timeout "$timeout" qemu-system-aarch64 -M virt,virtualization=on,gic-version=3 -cpu max \
    -accel tcg,thread=multi -smp 2 -m 2048 -nodefaults -no-user-config -nographic \
    -serial stdio -no-reboot -kernel "$dir/vmlinuz" -initrd "$stage/l1.cpio.lz4" \
    -append "console=ttyAMA0 panic=-1 quiet" </dev/null >"$log" 2>&1 || true
end=$(date +%s.%N)
grep -a "LAB-ARM64\|^\[" "$log" || true
grep -aq "LAB-ARM64 DONE" "$log" || die "L1 did not finish (log: $log)"

pass=0 fail=0
while read -r name backend mem smp action; do
    case $name in ''|'#'*) continue ;; esac
    line=$(grep -a "^LAB-ARM64 name=$name " "$log" | tr -d '\r' || true)
    why=""
    [ -n "$line" ] || why="no result line"
    [ -z "$why" ] && ! grep -q " rc=0 " <<<"$line" && why="shmvm exit code: ${line#* rc=}"
    [ -z "$why" ] && ! grep -q "L2-INIT " <<<"$line" && why="the guest never reached its init"
    [ -z "$why" ] && ! grep -q " cpus=$smp " <<<"$line" && why="guest CPUs differ from -smp $smp"
    [ -z "$why" ] && ! grep -q " initrd=$marker " <<<"$line" && why="the initrd marker differs"
    [ -z "$why" ] && ! grep -q "lab.name=$name lab.action=$action" <<<"$line" && why="command line lost"
    if [ -z "$why" ]; then
        memkb=$(sed 's/.* memkb=\([0-9]*\).*/\1/' <<<"$line")
        want=$(( ${mem%M} * 1024 ))
        # MemTotal is RAM less the kernel's own reservations: at least 3/4 of it.
        [ "$memkb" -le "$want" ] && [ "$memkb" -ge $(( want * 3 / 4 )) ] || why="MemTotal $memkb kB for $mem"
    fi
    if [ -z "$why" ]; then
        pass=$((pass + 1)); echo "lab-arm64: PASS $name ($backend $mem smp=$smp $action)"
    else
        fail=$((fail + 1)); echo "lab-arm64: FAIL $name: $why"
    fi
done <"$scenarios"
echo "lab-arm64: L1 run $(awk "BEGIN {printf \"%.1f\", $end - $start}") s (log: $log)"
echo "lab-arm64: $pass passed, $fail failed"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
