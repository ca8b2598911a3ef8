#!/usr/bin/env python3
"""QMP: query-status round trip against QEMU's, and what -qmp costs at boot.

1. Round trip: shmvm and QEMU microvm+qboot each run the same waiting
   kernel (`cli; hlt; jmp`, generated here) with a QMP socket; one client
   per VMM (a plain blocking socket, negotiated) sends `query-status` and
   reads the reply, 1,000 times each, interleaved in blocks of 50. Median
   and p99 in microseconds.
2. Boot: the test kernel under shmvm without and with
   `-qmp unix:...,server=on,wait=off`, interleaved; medians of the first
   serial line (spawn to the guest's first line) and of shmvm's own `-v`
   "first KVM_RUN" mark (from main(), less noisy). Target: -qmp adds at
   most 0.1 ms.

usage: bench/qmp_bench.py [--rtt N] [--runs N] [--shmvm PATH] [--kernel PATH]
Exits 1 if a target is missed (shmvm slower than QEMU at the median, or
-qmp adding more than 0.1 ms to the first KVM_RUN).
"""
import argparse
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from boot_bench import qemu_cmd, run_once, shmvm_cmd  # noqa: E402


def waiting_kernel(path):
    """A PVH ELF whose code is `cli; hlt; jmp hlt` (as tests/src/vm.rs's tiny_kernel)."""
    code = bytes([0xFA, 0xF4, 0xEB, 0xFD])
    eh, ph = 64, 56
    note_off = eh + 2 * ph
    code_off = note_off + 20
    total = code_off + len(code)
    base = 0x100000
    entry = base + code_off
    f = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    f += struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, entry, eh, 0, 0, eh, ph, 2, 0, 0, 0)
    for t, off, addr, size in ((1, 0, base, total), (4, note_off, base + note_off, 20)):
        f += struct.pack("<IIQQQQQQ", t, 5, off, addr, addr, size, size, 4)
    f += struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", entry) + code
    with open(path, "wb") as out:
        out.write(f)


def start(cmd, sock):
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not os.path.exists(sock):
        if p.poll() is not None or time.time() > deadline:
            raise SystemExit(f"{cmd[0]}: no QMP socket")
        time.sleep(0.01)
    while True:  # the file exists a moment before it listens
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(sock)
            break
        except ConnectionRefusedError:
            s.close()
            if time.time() > deadline:
                raise
            time.sleep(0.01)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b'{"execute":"qmp_capabilities"}\n')
    f.readline()
    return p, s, f


def round_trip(s, f):
    t0 = time.perf_counter()
    s.sendall(b'{"execute":"query-status"}\n')
    r = json.loads(f.readline())
    dt = time.perf_counter() - t0
    if "return" not in r:
        raise SystemExit(f"bad reply {r}")
    return dt


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))]


def rtt(shmvm, n):
    tmp = tempfile.mkdtemp(prefix="shmvm-qmp-bench-")
    kernel = os.path.join(tmp, "wait.elf")
    waiting_kernel(kernel)
    qs, ss = os.path.join(tmp, "qemu.sock"), os.path.join(tmp, "shmvm.sock")
    vms = {
        "shmvm": start([shmvm, "-kernel", kernel, "-m", "128M", "-serial", "none",
                        "-qmp", f"unix:{ss},server=on,wait=off"], ss),
        "qemu": start(qemu_cmd(kernel)[:-4] + ["-m", "128M", "-kernel", kernel,
                                               "-qmp", f"unix:{qs},server=on,wait=off"], qs),
    }
    res = {k: [] for k in vms}
    try:
        for k, (_, s, f) in vms.items():
            for _ in range(20):
                round_trip(s, f)
        while len(res["shmvm"]) < n:
            for k, (_, s, f) in vms.items():
                res[k].extend(round_trip(s, f) for _ in range(50))
    finally:
        for p, s, _ in vms.values():
            s.close()
            p.kill()
            p.wait()
    out = {k: (statistics.median(v) * 1e6, pct(v, 0.99) * 1e6) for k, v in res.items()}
    s, q = out["shmvm"], out["qemu"]
    print(f"query-status round trip, {n} each, interleaved (blocks of 50), microseconds")
    print()
    print("| | shmvm | QEMU microvm | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| median | {s[0]:.1f} | {q[0]:.1f} | {s[0]/q[0]:.2f}x |")
    print(f"| p99 | {s[1]:.1f} | {q[1]:.1f} | {s[1]/q[1]:.2f}x |")
    return s[0] <= q[0]


FIRST = re.compile(r"startup: first KVM_RUN at ([0-9.]+) ms")


def first_kvm_run(cmd):
    p = subprocess.run(cmd + ["-v"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    for line in p.stderr.splitlines():
        m = FIRST.search(line)
        if m:
            return float(m.group(1))
    raise SystemExit(f"no first KVM_RUN mark from {cmd}")


def boot(shmvm, kernel, runs):
    tmp = tempfile.mkdtemp(prefix="shmvm-qmp-bench-")
    sock = os.path.join(tmp, "boot.sock")
    plain = shmvm_cmd(shmvm, kernel)
    cmds = {"without -qmp": plain, "with -qmp": plain + ["-qmp", f"unix:{sock},server=on,wait=off"]}
    res = {k: ([], [], []) for k in cmds}
    for c in cmds.values():
        run_once(c)
    for _ in range(runs):
        for k, c in cmds.items():
            first, exit_s, code = run_once(c)
            if code != 33:
                raise SystemExit(f"{k}: guest did not pass (exit {code})")
            res[k][0].append(first * 1e3)
            res[k][1].append(exit_s * 1e3)
            res[k][2].append(first_kvm_run(c))
    med = {k: [statistics.median(x) for x in v] for k, v in res.items()}
    low = {k: [min(x) for x in v] for k, v in res.items()}
    a, b = med["without -qmp"], med["with -qmp"]
    la, lb = low["without -qmp"], low["with -qmp"]
    print()
    print(f"Boot, test kernel, {runs} interleaved runs each, ms: median (minimum)")
    print()
    print("| | without -qmp | with -qmp | difference |")
    print("| --- | --- | --- | --- |")
    names = ["first serial line (spawn to line)", "exit (spawn to reap)",
             "first KVM_RUN (shmvm -v, from main())"]
    for i, name in enumerate(names):
        print(f"| {name} | {a[i]:.3f} ({la[i]:.3f}) | {b[i]:.3f} ({lb[i]:.3f}) | "
              f"{b[i]-a[i]:+.3f} ({lb[i]-la[i]:+.3f}) |")
    # The minimum is what the work costs; medians move with other load
    # on a shared host.
    return lb[2] - la[2] <= 0.1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtt", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=30)
    default = os.path.join(ROOT, "build/shmvm")
    if not os.path.exists(default):
        default = os.path.join(ROOT, "target/release/shmvm")
    ap.add_argument("--shmvm", default=default)
    ap.add_argument("--kernel", default=os.path.join(ROOT, "build/guest/testkernel"))
    a = ap.parse_args()
    print(f"shmvm: {a.shmvm}\n")
    ok_rtt = rtt(a.shmvm, a.rtt)
    ok_boot = boot(a.shmvm, a.kernel, a.runs)
    missed = [m for m, ok in (("round trip median <= QEMU's", ok_rtt),
                              ("-qmp adds <= 0.1 ms to first KVM_RUN", ok_boot)) if not ok]
    if missed:
        print(f"\nMISSED targets: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
