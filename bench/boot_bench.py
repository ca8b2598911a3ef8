#!/usr/bin/env python3
"""Boot latency and memory of shmvm against QEMU microvm + qboot.

Both boot the same PVH test kernel with 128 MiB of RAM and an isa-debug-exit
port; runs are interleaved (shmvm, qemu, shmvm, ...). For each run:
  first line: time from spawn to the guest's first serial line on stdout
  exit:       time from spawn to process exit
  peak RSS:   "Maximum resident set size" from /usr/bin/time -v
Prints medians and ratios (shmvm / qemu) as a Markdown table.

usage: bench/boot_bench.py [--runs N] [--shmvm PATH] [--kernel PATH]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def qemu_cmd(kernel):
    return [
        "qemu-system-x86_64", "-M", "microvm", "-accel", "kvm",
        "-cpu", "host,-arch-capabilities", "-bios", "/usr/share/qemu/qboot.rom",
        "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-m", "128M",
        "-kernel", kernel,
    ]


def shmvm_cmd(shmvm, kernel):
    return [shmvm, "-kernel", kernel, "-m", "128M", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]


def run_once(cmd):
    """Returns (first_line_s, exit_s, peak_rss_kib, exit_code)."""
    with tempfile.NamedTemporaryFile(prefix="shmvm-bench-", suffix=".time") as tf:
        full = ["/usr/bin/time", "-v", "-o", tf.name] + cmd
        t0 = time.perf_counter()
        p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        first = p.stdout.readline()
        t_first = time.perf_counter() - t0
        p.stdout.read()
        code = p.wait()
        t_exit = time.perf_counter() - t0
        rss = None
        with open(tf.name) as f:
            for line in f:
                if "Maximum resident set size" in line:
                    rss = int(line.rsplit(":", 1)[1])
        if not first:
            raise SystemExit(f"no serial output from {cmd[0]} (exit {code})")
        return t_first, t_exit, rss, code


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--shmvm", default=os.path.join(ROOT, "target/release/shmvm"))
    ap.add_argument("--kernel", default=os.path.join(ROOT, "build/guest/testkernel"))
    a = ap.parse_args()
    cmds = {"shmvm": shmvm_cmd(a.shmvm, a.kernel), "qemu": qemu_cmd(a.kernel)}
    res = {k: [] for k in cmds}
    # One warm-up each (page cache, KVM module state), not counted.
    for k, c in cmds.items():
        run_once(c)
    for _ in range(a.runs):
        for k, c in cmds.items():
            r = run_once(c)
            if r[3] != 33:
                raise SystemExit(f"{k}: guest did not pass (exit {r[3]})")
            res[k].append(r)
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in res.items()}
    s, q = med["shmvm"], med["qemu"]
    print(f"{a.runs} interleaved runs each, medians; 128 MiB guest, PVH test kernel")
    print()
    print("| metric | shmvm | QEMU microvm+qboot | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| first serial line | {s[0]*1e3:.2f} ms | {q[0]*1e3:.2f} ms | {s[0]/q[0]:.3f}x | <= 0.07x |")
    print(f"| exit | {s[1]*1e3:.2f} ms | {q[1]*1e3:.2f} ms | {s[1]/q[1]:.3f}x | <= 0.1x |")
    print(f"| peak RSS | {s[2]/1024:.2f} MiB | {q[2]/1024:.2f} MiB | {s[2]/q[2]:.3f}x | <= 3 MiB |")


if __name__ == "__main__":
    sys.exit(main())
