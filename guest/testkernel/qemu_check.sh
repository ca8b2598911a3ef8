#!/usr/bin/env bash
# Boots the test kernel in QEMU (a second, independent VMM) and checks its
# report: PVH boot via qboot on microvm (MP table + ACPI, then MP only),
# memtest, initrd hash, a failing expectation, and the ivshmem tests on q35
# (SeaBIOS assigns the BARs) with the host peer (shm-peer). Needs /dev/kvm and
# qemu-system-x86_64; fails loudly without them.
set -euo pipefail
cd "$(dirname "$0")/../.."
K=${SHMVM_TESTKERNEL:-build/guest/testkernel}
# The host side of the protocols (tests/src/bin/shm-peer.rs, guest/protocol).
PEER=${SHM_PEER:-target/release/shm-peer}
[ -e /dev/kvm ] || { echo "qemu_check (needs /dev/kvm): FAIL: /dev/kvm missing" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "qemu_check: FAIL: qemu-system-x86_64 missing" >&2; exit 1; }
[ -f "$K" ] || { echo "qemu_check: FAIL: $K missing (make testkernel)" >&2; exit 1; }
[ -x "$PEER" ] || { echo "qemu_check: FAIL: $PEER missing (make build)" >&2; exit 1; }

tmp=$(mktemp -d)
shm=/dev/shm/shmvm-tk-check-$$
trap 'rm -rf "$tmp" "$shm"' EXIT
# Failures are counted in a file: `run` may execute in a background subshell.
fail() { echo "qemu_check: FAIL: $*" >&2; echo x >>"$tmp/failures"; }

head -c 200000 /dev/urandom >"$tmp/initrd"
want_hash=$("$PEER" fnv1a64 "$tmp/initrd")

# run NAME EXPECTED_EXIT MACHINE-ARGS... -- APPEND
run() {
    local name=$1 want=$2 rc=0
    shift 2
    local args=()
    while [ "$1" != -- ]; do args+=("$1"); shift; done
    timeout 120 qemu-system-x86_64 "${args[@]}" -accel kvm -cpu host,-arch-capabilities \
        -nodefaults -no-user-config -nographic -serial stdio \
        -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$K" -append "$2" \
        >"$tmp/$name.out" 2>"$tmp/$name.err" || rc=$?
    [ "$rc" = "$want" ] || fail "$name: exit $rc, want $want; output:$(echo; cat "$tmp/$name.out" "$tmp/$name.err")"
}
has() { grep -qxF "$2" "$tmp/$1.out" || fail "$1: no line '$2'"; }

QBOOT=(-bios /usr/share/qemu/qboot.rom -m 128M -smp 2)
run acpi 33 -M microvm "${QBOOT[@]}" -initrd "$tmp/initrd" -- \
    "shmvm.test=boot,memtest,initrd shmvm.expect_cpus=2 shmvm.expect_ram=128M"
has acpi "shmvm: entry=pvh"
has acpi "shmvm: cmdline=shmvm.test=boot,memtest,initrd shmvm.expect_cpus=2 shmvm.expect_ram=128M"
has acpi "shmvm: cpus=2"
grep -qE "^shmvm: initrd size=200000 fnv1a64=$want_hash addr=0x[0-9a-f]+\$" "$tmp/acpi.out" || fail "acpi: initrd hash (want $want_hash)"
grep -qE '^shmvm: memtest bytes=[0-9]{9} ok$' "$tmp/acpi.out" || fail "acpi: no memtest ok line"
grep -qE '^shmvm: cpu tables .* madt_cpus=2$' "$tmp/acpi.out" || fail "acpi: MADT not counted"
has acpi "shmvm: verdict=pass"

run mponly 33 -M microvm,acpi=off "${QBOOT[@]}" -- "shmvm.expect_cpus=2"
grep -qE '^shmvm: cpu tables mp=0x[0-9a-f]+ .* mp_cpus=2 rsdp=0x0 madt=0x0 madt_cpus=0$' "$tmp/mponly.out" \
    || fail "mponly: MP table not used"

run wrongcpus 35 -M microvm "${QBOOT[@]}" -- "shmvm.expect_cpus=3"
has wrongcpus "shmvm: verdict=fail reason=cpus_mismatch"

truncate -s 1M "$shm"
IVSHMEM=(-M q35 -m 128M -object "memory-backend-file,id=hm,mem-path=$shm,size=1M,share=on"
         -device ivshmem-plain,memdev=hm)
run ivshmem 33 "${IVSHMEM[@]}" -- \
    "shmvm.test=ivshmem,ivshmem-move,ivshmem-bench shmvm.seed=0x1234 shmvm.ivshmem_size=1M shmvm.timeout_ms=60000" &
qemu=$!
"$PEER" handshake "$shm" 60000 >"$tmp/peer.out" 2>&1 || fail "peer: $(cat "$tmp/peer.out")"
wait $qemu
has ivshmem "shmvm: ivshmem handshake start seed=0x1234 data_len=1044480"
grep -qE '^shmvm: ivshmem handshake ok ms=[0-9]+$' "$tmp/ivshmem.out" || fail "ivshmem: handshake not ok"
grep -qE '^shmvm: bench bar2 write_mbps=[0-9]+ read_mbps=[0-9]+$' "$tmp/ivshmem.out" || fail "ivshmem: no bench line"
grep -qE '^shmvm: bench ram addr=0x[0-9a-f]+ bytes=1048576$' "$tmp/ivshmem.out" || fail "ivshmem: no bench ram line"
has ivshmem "shmvm: verdict=pass"

[ ! -s "$tmp/failures" ] || { echo "qemu_check: $(wc -l <"$tmp/failures") failure(s)" >&2; exit 1; }
echo "qemu_check: ok (microvm PVH with ACPI and MP-only, memtest, initrd, ivshmem on q35)"
