#!/usr/bin/env python3
"""Snapshot save and restore times, scaling with guest RAM and vCPUs.

For each case a waiting kernel (`cli; hlt`, generated here) runs with its
RAM in a named shm object (memory-backend-shm,name=...,keep=on), is
stopped over QMP and saved with x-shmvm-snapshot-save (its reply gives
the state time, without RAM, and the total), then quits. The snapshot is
restored N times with `shmvm --restore DIR -v` (RAM shared, and as a
copy-on-write clone); each restore's own -v mark "first KVM_RUN at X ms"
(from main() to the restored guest's next instruction) is read, and the
process is killed. Medians in milliseconds.

QEMU's loadvm is not measured side by side (not done yet; see README).

usage: bench/snapshot_bench.py [--runs N] [--shmvm PATH]
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from qmp_bench import waiting_kernel  # noqa: E402

FIRST_RUN = re.compile(r"first KVM_RUN at ([0-9.]+) ms")


def qmp(sock_path):
    s = socket.socket(socket.AF_UNIX)
    deadline = time.time() + 10
    while True:
        try:
            s.connect(sock_path)
            break
        except OSError:
            if time.time() > deadline:
                raise SystemExit("no QMP socket")
            time.sleep(0.01)
    f = s.makefile("rw")
    f.readline()

    def cmd(name, args=None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        f.write(json.dumps(msg) + "\n")
        f.flush()
        while True:
            r = json.loads(f.readline())
            if "event" in r:
                continue
            if "error" in r:
                raise SystemExit(f"{name}: {r['error']['desc']}")
            return r["return"]

    cmd("qmp_capabilities")
    return s, cmd


def save(shmvm, kernel, tmp, mib, cpus, shm):
    snap = os.path.join(tmp, f"snap-{mib}-{cpus}")
    sock = os.path.join(tmp, "qmp.sock")
    p = subprocess.Popen(
        [shmvm, "-kernel", kernel, "-smp", str(cpus), "-serial", "none",
         "-object", f"memory-backend-shm,id=ram,size={mib}M,name={shm},keep=on",
         "-machine", "memory-backend=ram", "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s, cmd = qmp(sock)
    time.sleep(0.05)
    cmd("stop")
    r = cmd("x-shmvm-snapshot-save", {"path": snap})
    try:
        cmd("quit")
    except (SystemExit, json.JSONDecodeError, OSError):
        pass
    s.close()
    p.wait(timeout=10)
    return snap, r["state-ms"], r["total-ms"]


def restore_once(shmvm, snap, mode):
    t0 = time.perf_counter()
    p = subprocess.Popen([shmvm, "--restore", snap, "--restore-ram", mode, "-serial", "none", "-v"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    ms = None
    for line in p.stderr:
        m = FIRST_RUN.search(line)
        if m:
            ms = float(m.group(1))
            break
    wall = (time.perf_counter() - t0) * 1e3
    p.kill()
    p.wait()
    if ms is None:
        raise SystemExit(f"restore of {snap} printed no first KVM_RUN")
    return ms, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--shmvm", default=os.path.join(ROOT, "target/release/shmvm"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="shmvm-snapbench-")
    kernel = os.path.join(tmp, "wait.elf")
    waiting_kernel(kernel)
    cases = [(m, 1) for m in (128, 512, 1024, 2048, 4096)] + [(1024, c) for c in (2, 4, 8)]
    print(f"load: {os.getloadavg()[0]:.2f} (1 min)")
    print("RAM MiB  vCPUs  save state ms  save total ms  restore shared ms (median/min)  restore clone ms  spawn-to-mark ms")
    try:
        for mib, cpus in cases:
            shm = f"/shmvm-snapbench-{os.getpid()}-{mib}-{cpus}"
            try:
                snap, state_ms, total_ms = save(a.shmvm, kernel, tmp, mib, cpus, shm)
                shared = [restore_once(a.shmvm, snap, "shared") for _ in range(a.runs)]
                clone = [restore_once(a.shmvm, snap, "clone") for _ in range(a.runs)]
            finally:
                try:
                    os.unlink("/dev/shm" + shm)
                except FileNotFoundError:
                    pass
            sm = [x[0] for x in shared]
            cm = [x[0] for x in clone]
            wall = [x[1] for x in shared]
            print(f"{mib:7d}  {cpus:5d}  {state_ms:13.3f}  {total_ms:13.3f}  "
                  f"{statistics.median(sm):10.3f} / {min(sm):.3f}  "
                  f"{statistics.median(cm):10.3f}        {statistics.median(wall):8.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
