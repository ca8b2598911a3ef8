#!/usr/bin/env bash
# make bench-doorbell: doorbell round trips (A rings B, B rings back;
# ROUNDS timed rounds, default 10000, after one warm-up round), in one run:
#   shmvm <-> shmvm   two shmvm guests (test kernel) on shmvm's ivshmem-server
#   qemu  <-> qemu    two QEMU 10 guests (q35, QEMU's ivshmem-doorbell), same server
#   shmvm  -> host    a shmvm guest pings a host program (ivshmem-peer pong)
#   host   -> shmvm   a host program pings a shmvm guest (measured on the host)
# Guests measure with the TSC in ring 3 (interrupt taken by a CPL0 stub).
# Each shmvm guest's --stats=json must show zero doorbell exits and zero
# BAR0 writes: every ring stayed in the kernel (ioeventfd -> eventfd -> irqfd).
# Needs /dev/kvm, qemu-system-x86_64, target/release/{shmvm,ivshmem-server,
# ivshmem-peer} and build/guest/testkernel.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-10000}
# HALT=1 (default): guests wait in `hlt` at CPL0, so a waiting vCPU sleeps;
# HALT=0: they spin in ring 3 (lower median on PVM, where CPL0 is emulated,
# but two spinning guests take both cores of a 2-core host: p99 is then the
# scheduler's).
HALT=${HALT:-1}
SHMVM=${SHMVM_BIN:-target/release/shmvm}
SERVER=target/release/ivshmem-server
PEER=target/release/ivshmem-peer
KERNEL=${SHMVM_TESTKERNEL:-build/guest/testkernel}
for f in "$SHMVM" "$SERVER" "$PEER" "$KERNEL"; do
    [[ -f $f ]] || { echo "bench-doorbell: $f is missing (make build)" >&2; exit 1; }
done
[[ -r /dev/kvm && -w /dev/kvm ]] || { echo "bench-doorbell: needs /dev/kvm" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "bench-doorbell: needs qemu-system-x86_64 (make deps)" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "bench-doorbell: $*" >&2; exit 1; }

# until SECONDS CMD...: polls CMD every 50 ms.
until_ok() {
    local end=$((SECONDS + $1)); shift
    until "$@"; do (( SECONDS < end )) || return 1; sleep 0.05; done
}

server() { # NAME: a fresh server with 1 vector and 1 MiB
    "$SERVER" -F -v -S "$tmp/$1.sock" -M "/shmvm-bench-$$-$1" -l 1M -n 1 2>"$tmp/$1.server" &
    pids+=($!)
    until_ok 10 test -S "$tmp/$1.sock" || fail "$1: server did not start: $(cat "$tmp/$1.server")"
}
joined() { # NAME ID: wait until peer ID is connected
    until_ok 60 grep -q "peer $2 connected" "$tmp/$1.server" || fail "$1: peer $2 never connected"
}
append() { # TEST ID PEER
    echo "shmvm.test=$1 shmvm.ivposition=$2 shmvm.peer=$3 shmvm.rounds=$ROUNDS shmvm.halt=$HALT shmvm.timeout_ms=300000"
}
shmvm_guest() { # NAME OUT TEST ID PEER
    "$SHMVM" -kernel "$KERNEL" -m 64M -serial stdio -device isa-debug-exit \
        -chardev "socket,path=$tmp/$1.sock,id=iv" -device ivshmem-doorbell,chardev=iv \
        -append "$(append "$3" "$4" "$5")" --stats=json >"$tmp/$2" 2>&1 || true
}
qemu_guest() { # NAME OUT TEST ID PEER
    qemu-system-x86_64 -M q35 -accel kvm -cpu host,-arch-capabilities -m 128M \
        -nodefaults -no-user-config -nographic -serial stdio \
        -device isa-debug-exit,iobase=0xf4,iosize=4 \
        -chardev "socket,path=$tmp/$1.sock,id=iv" -device ivshmem-doorbell,chardev=iv \
        -kernel "$KERNEL" -append "$(append "$3" "$4" "$5")" >"$tmp/$2" 2>&1 || true
}
passed() { grep -q 'verdict=pass' "$tmp/$1" || fail "$1 failed: $(cat "$tmp/$1")"; }
pingline() { grep -o 'median_ns=[0-9]* p99_ns=[0-9]*' "$tmp/$1" || fail "$1: no result line"; }
# zero_exits OUT: the guest's doorbell rang only through ioeventfds.
zero_exits() {
    local j
    j=$(grep '^{"shmvm_stats"' "$tmp/$1") || fail "$1: no --stats=json line"
    python3 - "$1" "$j" <<'PY'
import json, sys
d = json.loads(sys.argv[2])["ivshmem_doorbell"][0]
bar0 = [b for b in json.loads(sys.argv[2])["buses"] if b["name"].endswith("bar0")][0]
if d["doorbell_exits"] or bar0["writes"] or d["errors"]:
    sys.exit(f"bench-doorbell: {sys.argv[1]}: {d['doorbell_exits']} doorbell exits, {bar0['writes']} BAR0 writes, {d['errors']} errors")
print(f"  {sys.argv[1]}: doorbell_exits=0 bar0_writes=0 ioeventfds={d['ioeventfds']} irqfds={d['irqfds']}")
PY
}

echo "bench-doorbell: $ROUNDS rounds each, guests $( ((HALT)) && echo halt || echo spin) while waiting; host load: $(cut -d' ' -f1-3 /proc/loadavg)"
# shmvm <-> shmvm
server s
shmvm_guest s s-pong.out doorbell-pong 0 1 & pids+=($!); pong=$!
joined s 0
shmvm_guest s s-ping.out doorbell-ping 1 0
wait "$pong" || true
passed s-ping.out; passed s-pong.out
r_shmvm=$(pingline s-ping.out)
exits=$(zero_exits s-ping.out; zero_exits s-pong.out)

# qemu <-> qemu
server q
qemu_guest q q-pong.out doorbell-pong 0 1 & pids+=($!); pong=$!
joined q 0
qemu_guest q q-ping.out doorbell-ping 1 0
wait "$pong" || true
passed q-ping.out; passed q-pong.out
r_qemu=$(pingline q-ping.out)

# shmvm -> host peer, host peer -> shmvm
server h
"$PEER" -S "$tmp/h.sock" -t 300 pong 1 "$ROUNDS" >"$tmp/h-pong.out" 2>&1 & pids+=($!); pong=$!
joined h 0
shmvm_guest h h-ping.out doorbell-ping 1 0
wait "$pong" || fail "host pong: $(cat "$tmp/h-pong.out")"
passed h-ping.out
r_g2h=$(pingline h-ping.out)
exits+=$'\n'$(zero_exits h-ping.out)
server g
shmvm_guest g g-pong.out doorbell-pong 0 1 & pids+=($!); pong=$!
joined g 0
"$PEER" -S "$tmp/g.sock" -t 300 ping 0 "$ROUNDS" >"$tmp/g-ping.out" 2>&1 || fail "host ping: $(cat "$tmp/g-ping.out")"
wait "$pong" || true
passed g-pong.out
r_h2g=$(pingline g-ping.out)
exits+=$'\n'$(zero_exits g-pong.out)

us() { awk -v n="$1" 'BEGIN { printf "%.1f", n / 1000 }'; }
row() { # LABEL "median_ns=A p99_ns=B"
    local m p
    m=$(sed -n 's/median_ns=\([0-9]*\).*/\1/p' <<<"$2"); p=$(sed -n 's/.*p99_ns=\([0-9]*\)/\1/p' <<<"$2")
    printf '%-28s %12s %12s\n' "$1" "$(us "$m")" "$(us "$p")"
}
echo
printf '%-28s %12s %12s\n' "doorbell round trip" "median µs" "p99 µs"
row "shmvm guest <-> shmvm guest" "$r_shmvm"
row "QEMU guest <-> QEMU guest" "$r_qemu"
row "shmvm guest -> host peer" "$r_g2h"
row "host peer -> shmvm guest" "$r_h2g"
echo
echo "VM exits to user space per doorbell (shmvm --stats=json):"
echo "$exits"
