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

Then QEMU side by side: the test kernel's `snapcount` mode (it counts
over 1 MiB of RAM round by round and prints a line every 8 rounds) runs
under shmvm and under QEMU 10 microvm (`-accel kvm`, qboot) with the same
RAM backend, memory-backend-file on /dev/shm with share=on. shmvm is
stopped and saved with x-shmvm-snapshot-save; QEMU saves the CPR way its
docs give (migrate-set-capabilities x-ignore-shared, then `migrate` to a
`file:` URI, which stops the VM; RAM is not written), and quits. Each
restore starts from a fresh copy of the saved RAM file (copied before the
clock starts: a restored guest goes on writing its RAM): `shmvm --restore
DIR -serial stdio` against `qemu-system-x86_64 ... -incoming defer` plus
QMP migrate-set-capabilities x-ignore-shared and migrate-incoming
`file:PATH` (QEMU has no command-line form of the capability). Timed for
both: from the spawn to the restored guest's first console byte, which
includes up to one progress interval of the guest (also printed).
Interleaved, medians and the QEMU/shmvm ratio.

usage: bench/snapshot_bench.py [--runs N] [--shmvm PATH] [--testkernel PATH]
       [--only-qemu-compare]
"""
import argparse
import json
import os
import re
import select
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


TK_APPEND = "shmvm.test=snapcount shmvm.rounds=4000000000 shmvm.snap_mib=1"
QEMU_MICROVM = [
    "qemu-system-x86_64", "-M", "microvm", "-accel", "kvm",
    "-cpu", "host,-arch-capabilities", "-bios", "/usr/share/qemu/qboot.rom",
    "-nodefaults", "-no-user-config", "-display", "none",
]


def first_byte(p, t0, what):
    """Milliseconds from t0 to the first byte on p's stdout."""
    ready, _, _ = select.select([p.stdout], [], [], 20)
    if not ready or not os.read(p.stdout.fileno(), 1):
        p.kill()
        err = p.stderr.read() if p.stderr else ""
        raise SystemExit(f"{what}: no console output from the restored guest: {err}")
    return (time.perf_counter() - t0) * 1e3


def wait_rounds(p, what, lines=12):
    """Reads the guest's console until it has printed `lines` snapcount lines;
    returns the mean milliseconds between lines after the first (its
    progress interval: the resolution of the first-byte clock)."""
    n, t_first, buf = 0, None, b""
    deadline = time.time() + 30
    while n < lines:
        ready, _, _ = select.select([p.stdout], [], [], 1)
        if time.time() > deadline or p.poll() is not None:
            raise SystemExit(f"{what}: the guest printed no snapcount rounds")
        if not ready:
            continue
        buf += os.read(p.stdout.fileno(), 4096)
        k = buf.count(b"snapcount round=")
        if k:
            buf = buf[buf.rfind(b"snapcount round=") + 1:]
            if t_first is None:
                t_first = time.perf_counter()
            else:
                n += k
    return (time.perf_counter() - t_first) * 1e3 / n


def ended(p):
    """Kills p if it still runs (a failed step must leave no VMM behind)."""
    if p.poll() is None:
        p.kill()
    p.wait()


def compare_save(shmvm, kernel, tmp, mib, mem):
    """Boots snapcount under both VMMs (RAM in the file `mem`, one per VMM)
    and saves each; returns the shmvm snapshot dir, QEMU's state file and
    the guest's progress interval under each."""
    snap = os.path.join(tmp, f"cmp-snap-{mib}")
    state = os.path.join(tmp, f"cmp-qemu-{mib}.state")
    obj = f"memory-backend-file,id=mem,size={mib}M,mem-path={mem['shmvm']},share=on"
    sock = os.path.join(tmp, "cmp-shmvm.sock")
    p = subprocess.Popen(
        [shmvm, "-kernel", kernel, "-append", TK_APPEND, "-serial", "stdio",
         "-object", obj, "-machine", "memory-backend=mem",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        gap_shmvm = wait_rounds(p, "shmvm")
        s, cmd = qmp(sock)
        cmd("stop")
        cmd("x-shmvm-snapshot-save", {"path": snap})
        s.close()
    finally:
        ended(p)
    sock = os.path.join(tmp, "cmp-qemu.sock")
    p = subprocess.Popen(
        qemu_restore_cmd(kernel, mib, mem["qemu"]) + ["-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        gap_qemu = wait_rounds(p, "QEMU")
        s, cmd = qmp(sock)
        cmd("migrate-set-capabilities",
            {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
        cmd("migrate", {"uri": f"file:{state}"})
        deadline = time.time() + 30
        while True:
            st = cmd("query-migrate").get("status")
            if st == "completed":
                break
            if st == "failed" or time.time() > deadline:
                raise SystemExit(f"QEMU migrate to {state}: {st}")
            time.sleep(0.005)
        s.close()
    finally:
        ended(p)
    return snap, state, gap_shmvm, gap_qemu


def qemu_restore_cmd(kernel, mib, mem_file):
    return QEMU_MICROVM + [
        "-m", f"{mib}M",
        "-object", f"memory-backend-file,id=mem,size={mib}M,mem-path={mem_file},share=on",
        "-machine", "memory-backend=mem", "-serial", "stdio",
        "-kernel", kernel, "-append", TK_APPEND,
    ]


def fresh_ram(pristine, path):
    subprocess.run(["cp", "--sparse=always", pristine, path], check=True)


def restore_shmvm(shmvm, snap):
    t0 = time.perf_counter()
    p = subprocess.Popen([shmvm, "--restore", snap, "-serial", "stdio", "-v"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        ms = first_byte(p, t0, "shmvm --restore")
    finally:
        p.kill()
    m = FIRST_RUN.search(p.communicate()[1])
    if not m:
        raise SystemExit(f"restore of {snap} printed no first KVM_RUN")
    return ms, float(m.group(1))


def restore_qemu(kernel, mib, mem_file, state, tmp):
    sock = os.path.join(tmp, "cmp-qemu-in.sock")
    t0 = time.perf_counter()
    p = subprocess.Popen(
        qemu_restore_cmd(kernel, mib, mem_file)
        + ["-qmp", f"unix:{sock},server=on,wait=off", "-incoming", "defer"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        s, cmd = qmp(sock)
        cmd("migrate-set-capabilities",
            {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
        cmd("migrate-incoming", {"uri": f"file:{state}"})
        ms = first_byte(p, t0, "QEMU -incoming")
        s.close()
    finally:
        ended(p)
    return ms


def compare(shmvm, kernel, tmp, runs):
    print("QEMU side by side: snapcount, RAM in memory-backend-file on /dev/shm share=on, "
          "spawn to the restored guest's first console byte")
    print("RAM MiB  shmvm ms (median/min)  QEMU ms (median/min)  QEMU/shmvm  "
          "guest line interval ms (shmvm/QEMU)  shmvm first KVM_RUN ms (median)")
    for mib in (128, 1024):
        mem = {v: f"/dev/shm/shmvm-snapbench-cmp-{os.getpid()}-{v}" for v in ("shmvm", "qemu")}
        pristine = {v: f + ".saved" for v, f in mem.items()}
        try:
            snap, state, gap_s, gap_q = compare_save(shmvm, kernel, tmp, mib, mem)
            for v in mem:
                os.rename(mem[v], pristine[v])
            sm, qm, marks = [], [], []
            for _ in range(runs):
                fresh_ram(pristine["shmvm"], mem["shmvm"])
                ms, mark = restore_shmvm(shmvm, snap)
                sm.append(ms)
                marks.append(mark)
                fresh_ram(pristine["qemu"], mem["qemu"])
                qm.append(restore_qemu(kernel, mib, mem["qemu"], state, tmp))
        finally:
            for f in list(mem.values()) + list(pristine.values()):
                try:
                    os.unlink(f)
                except FileNotFoundError:
                    pass
        ms, mq = statistics.median(sm), statistics.median(qm)
        print(f"{mib:7d}  {ms:10.2f} / {min(sm):.2f}  {mq:10.2f} / {min(qm):.2f}  "
              f"{mq / ms:10.1f}x  {gap_s:.2f} / {gap_q:.2f}  {statistics.median(marks):.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--shmvm", default=os.path.join(ROOT, "target/release/shmvm"))
    ap.add_argument("--testkernel", default=os.path.join(ROOT, "build/guest/testkernel"))
    ap.add_argument("--only-qemu-compare", action="store_true")
    a = ap.parse_args()
    for need in ("/dev/kvm", a.testkernel):
        if not os.path.exists(need):
            raise SystemExit(f"bench-snapshot: {need} missing (make testkernel; /dev/kvm)")
    if not shutil.which("qemu-system-x86_64"):
        raise SystemExit("bench-snapshot: qemu-system-x86_64 missing (scripts/deps.sh)")
    tmp = tempfile.mkdtemp(prefix="shmvm-snapbench-")
    kernel = os.path.join(tmp, "wait.elf")
    waiting_kernel(kernel)
    cases = [(m, 1) for m in (128, 512, 1024, 2048, 4096)] + [(1024, c) for c in (2, 4, 8)]
    print(f"load: {os.getloadavg()[0]:.2f} (1 min)")
    if a.only_qemu_compare:
        cases = []
    try:
        compare(a.shmvm, a.testkernel, tmp, a.runs)
        if cases:
            print("RAM MiB  vCPUs  save state ms  save total ms  restore shared ms (median/min)  restore clone ms  spawn-to-mark ms")
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
