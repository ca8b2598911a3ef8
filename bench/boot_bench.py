#!/usr/bin/env python3
"""Boot latency and memory of shmvm against QEMU microvm + qboot.

Both boot the same PVH test kernel with 128 MiB of RAM and an isa-debug-exit
port; runs are interleaved (shmvm, qemu, shmvm, ...). For each run:
  first line: time from spawning the VMM to the guest's first serial line on
              its stdout
  exit:       time from spawning the VMM to reaping it
  peak RSS:   "Maximum resident set size" from /usr/bin/time -v, in a run of
              its own right after: /usr/bin/time's own exec (dynamic loader,
              libc start-up: ~0.7 ms here) would add to both timings, and a
              child spawned straight from Python inherits Python's RSS as its
              high-water mark (the kernel keeps the pre-exec maximum).
Prints medians and ratios (shmvm / qemu) as a Markdown table; exits 1 if a
target is missed.

Then where shmvm's time goes: medians of its own `-v` start-up timeline
(each step after main() starts), of `shmvm --version` (spawn to exit: the
process start and exit cost alone), and of the guest's run after KVM_RUN.

usage: bench/boot_bench.py [--runs N] [--shmvm PATH] [--shmvm-dynamic PATH] [--kernel PATH]
"""
import re
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
    """Returns (first_line_s, exit_s, exit_code)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    first = p.stdout.readline()
    t_first = time.perf_counter() - t0
    p.stdout.read()
    code = p.wait()
    t_exit = time.perf_counter() - t0
    p.stdout.close()
    if not first:
        raise SystemExit(f"no serial output from {cmd[0]} (exit {code})")
    return t_first, t_exit, code


def time_v_rss(cmd):
    """Peak RSS (KiB) as /usr/bin/time -v reports it."""
    with tempfile.NamedTemporaryFile(prefix="shmvm-bench-", suffix=".time") as tf:
        subprocess.run(["/usr/bin/time", "-v", "-o", tf.name] + cmd, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(tf.name) as f:
            for line in f:
                if "Maximum resident set size" in line:
                    return int(line.rsplit(":", 1)[1])
    raise SystemExit(f"/usr/bin/time -v gave no RSS for {cmd[0]}")


def spawn_to_exit(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


STEP = re.compile(r"startup:\s+([0-9.]+) ms \(\+([0-9.]+)\) (.*)$")
FIRST = re.compile(r"startup: first KVM_RUN at ([0-9.]+) ms")
ENDED = re.compile(r"VM ended after ([0-9.]+) ms")


def breakdown(shmvm, kernel, runs):
    """Medians of the -v timeline steps (ms)."""
    steps, first, ended, version = {}, [], [], []
    for _ in range(runs):
        version.append(spawn_to_exit([shmvm, "--version"]))
        p = subprocess.run(shmvm_cmd(shmvm, kernel) + ["-v"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in p.stderr.splitlines():
            m = STEP.search(line)
            if m:
                steps.setdefault(m.group(3), []).append(float(m.group(2)))
            m = FIRST.search(line)
            if m:
                first.append(float(m.group(1)))
            m = ENDED.search(line)
            if m:
                ended.append(float(m.group(1)))
    med = statistics.median
    print()
    print(f"Where shmvm's time goes ({runs} runs, medians; steps measured from main()):")
    print()
    print("| step | ms |")
    print("| --- | --- |")
    print(f"| process start + exit (`shmvm --version`, spawn to exit) | {med(version)*1e3:.2f} |")
    for name, v in steps.items():
        print(f"| {name} | {med(v):.3f} |")
    print(f"| **first KVM_RUN** (from main()) | {med(first):.3f} |")
    print(f"| guest run to its debug-exit write, VM ended (from main()) | {med(ended):.3f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--shmvm", default=os.path.join(ROOT, "build/shmvm"))
    ap.add_argument("--shmvm-dynamic", default=None,
                    help="also measure this (dynamically linked) build")
    ap.add_argument("--kernel", default=os.path.join(ROOT, "build/guest/testkernel"))
    a = ap.parse_args()
    cmds = {"shmvm": shmvm_cmd(a.shmvm, a.kernel), "qemu": qemu_cmd(a.kernel)}
    if a.shmvm_dynamic:
        cmds["shmvm-dynamic"] = shmvm_cmd(a.shmvm_dynamic, a.kernel)
    res = {k: [] for k in cmds}
    # One warm-up each (page cache, KVM module state), not counted.
    for k, c in cmds.items():
        run_once(c)
    for _ in range(a.runs):
        for k, c in cmds.items():
            first, exit_s, code = run_once(c)
            if code != 33:
                raise SystemExit(f"{k}: guest did not pass (exit {code})")
            res[k].append((first, exit_s, time_v_rss(c)))
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in res.items()}
    s, q = med["shmvm"], med["qemu"]
    print(f"{a.runs} interleaved runs each, medians; 128 MiB guest, PVH test kernel")
    print()
    print("| metric | shmvm | QEMU microvm+qboot | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| first serial line | {s[0]*1e3:.2f} ms | {q[0]*1e3:.2f} ms | {s[0]/q[0]:.3f}x | <= 0.07x |")
    print(f"| exit | {s[1]*1e3:.2f} ms | {q[1]*1e3:.2f} ms | {s[1]/q[1]:.3f}x | <= 0.1x |")
    print(f"| peak RSS | {s[2]/1024:.2f} MiB | {q[2]/1024:.2f} MiB | {s[2]/q[2]:.3f}x | <= 3 MiB |")
    if "shmvm-dynamic" in med:
        d = med["shmvm-dynamic"]
        print()
        print("Default dynamic build (target/release/shmvm), same runs:")
        print(f"first line {d[0]*1e3:.2f} ms ({d[0]/q[0]:.3f}x), exit {d[1]*1e3:.2f} ms "
              f"({d[1]/q[1]:.3f}x), peak RSS {d[2]/1024:.2f} MiB")
    breakdown(a.shmvm, a.kernel, a.runs)
    missed = [m for m, bad in (("first serial line", s[0] / q[0] > 0.07),
                               ("exit", s[1] / q[1] > 0.1),
                               ("peak RSS", s[2] > 3 * 1024)) if bad]
    if missed:
        print(f"\nMISSED targets: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
