#!/usr/bin/env python3
"""Host-side peer for the test kernel's ivshmem protocols (README.md).

    ivshmem_peer.py handshake FILE [--timeout S]
        Waits for the guest's P1, verifies it, writes P2, waits for the
        guest's verdict. Exit 0 when the guest reports GUEST_OK.
    ivshmem_peer.py slot FILE --slot N --parties P --seed S [--timeout S]
        Acts as party N of the slots test: writes slot N, waits for all
        P slots, verifies them. Exit 0 when all slots are correct.

FILE is the shared-memory backend's file (e.g. /dev/shm/NAME). Start from a
zeroed region: stale headers from an earlier run would be taken as fresh.
"""

import argparse
import mmap
import os
import struct
import sys
import time
from array import array

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MAGIC = 0x564D4853  # "SHMV"
DATA_OFF = 0x1000
STATE_GUEST_WROTE, STATE_HOST_WROTE, STATE_GUEST_OK, STATE_GUEST_BAD, STATE_HOST_BAD = 1, 2, 3, 4, 5
SLOT_SIZE = 0x1000
SLOT_MAGIC = 0x544F4C53564D4853  # "SHMVSLOT"


def p1(o, seed):
    return ((o * GOLDEN) & MASK) ^ seed


def p2(o, seed):
    return p1(o, seed) ^ MASK


def slot_word(seed, n, i):
    return ((seed ^ ((n + 1) << 32) ^ i) * GOLDEN) & MASK


def words(fn, offsets):
    return array("Q", (fn(o) for o in offsets)).tobytes()


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            sys.exit(f"ivshmem_peer: timeout waiting for {what}")
        time.sleep(0.001)


def handshake(m, size, timeout):
    u32 = lambda off: struct.unpack_from("<I", m, off)[0]
    u64 = lambda off: struct.unpack_from("<Q", m, off)[0]
    wait_for(lambda: u32(0) == MAGIC and u32(8) == STATE_GUEST_WROTE, timeout, "GUEST_WROTE")
    seed, off, length = u64(0x10), u64(0x18), u64(0x20)
    if off != DATA_OFF or off + length != size:
        sys.exit(f"ivshmem_peer: bad header data_off={off:#x} data_len={length:#x} size={size:#x}")
    offsets = range(off, off + length, 8)
    if m[off:off + length] != words(lambda o: p1(o, seed), offsets):
        struct.pack_into("<I", m, 8, STATE_HOST_BAD)
        sys.exit("ivshmem_peer: P1 mismatch")
    m[off:off + length] = words(lambda o: p2(o, seed), offsets)
    struct.pack_into("<I", m, 8, STATE_HOST_WROTE)
    wait_for(lambda: u32(8) in (STATE_GUEST_OK, STATE_GUEST_BAD), timeout, "guest verdict")
    if u32(8) != STATE_GUEST_OK:
        sys.exit("ivshmem_peer: guest saw a P2 mismatch")
    print(f"ivshmem_peer: handshake ok seed={seed:#x} data_len={length}")


def slot(m, size, n, parties, seed, timeout):
    if n >= parties or parties * SLOT_SIZE > size:
        sys.exit("ivshmem_peer: bad slot/parties for this region")
    u64 = lambda off: struct.unpack_from("<Q", m, off)[0]
    base = n * SLOT_SIZE
    m[base + 32:base + SLOT_SIZE] = words(lambda i: slot_word(seed, n, i), range(4, SLOT_SIZE // 8))
    struct.pack_into("<QQQ", m, base + 8, n, parties, seed)
    struct.pack_into("<Q", m, base, SLOT_MAGIC)
    for k in range(parties):
        s = k * SLOT_SIZE
        wait_for(lambda: u64(s) == SLOT_MAGIC and u64(s + 8) == k and u64(s + 24) == seed,
                 timeout, f"slot {k}")
    for k in range(parties):
        s = k * SLOT_SIZE
        want = words(lambda i: slot_word(seed, k, i), range(4, SLOT_SIZE // 8))
        if u64(s + 16) != parties or m[s + 32:s + SLOT_SIZE] != want:
            sys.exit(f"ivshmem_peer: slot {k} content mismatch")
    print(f"ivshmem_peer: slots ok parties={parties}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["handshake", "slot"])
    ap.add_argument("file")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--slot", type=int, default=0)
    ap.add_argument("--parties", type=int, default=2)
    ap.add_argument("--seed", type=lambda s: int(s, 0), default=0x5EED)
    a = ap.parse_args()
    fd = os.open(a.file, os.O_RDWR)
    size = os.fstat(fd).st_size
    m = mmap.mmap(fd, size, mmap.MAP_SHARED)
    if a.mode == "handshake":
        handshake(m, size, a.timeout)
    else:
        slot(m, size, a.slot, a.parties, a.seed, a.timeout)


if __name__ == "__main__":
    main()
