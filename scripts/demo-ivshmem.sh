#!/usr/bin/env bash
# The ivshmem part of `make demo`: a guest and a separate host process share
# a named POSIX shm object through an ivshmem-plain device. The guest (test
# kernel) writes a pattern into BAR2, the host process (shm-peer, which
# shm_open()s the object) checks it and writes a second one, the guest
# checks that, then moves BAR2 and checks the region followed. --stats shows
# the device's counters: "bar2 exits 0" means no guest access to the shared
# memory ever left the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
SHMVM=${SHMVM_BIN:-target/release/shmvm}
KERNEL=${SHMVM_TESTKERNEL:-build/guest/testkernel}
name=/shmvm-demo-$$
set -x
"$SHMVM" -kernel "$KERNEL" -m 64M -device isa-debug-exit,iobase=0xf4,iosize=4 \
    -object memory-backend-shm,id=shared,size=4M,name=$name \
    -device ivshmem-plain,memdev=shared \
    -append "shmvm.test=ivshmem,ivshmem-move" --stats &
vm=$!
target/release/shm-peer handshake "shm:$name" 30000
set +e
wait $vm
rc=$?
set +x
if [[ $rc != 33 ]]; then
    echo "demo-ivshmem: the guest did not pass (exit $rc)" >&2
    exit 1
fi
[[ ! -e /dev/shm${name} ]] || { echo "demo-ivshmem: $name was left behind" >&2; exit 1; }
echo "demo-ivshmem: guest and host process shared $name; the VMM removed it at exit"
