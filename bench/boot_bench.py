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

A second kernel, generated here, loads its two segments at 2 MiB and 4 MiB
(a common link address for kernels): writing them must not make the VMM
fault in transparent huge pages of guest RAM (peak RSS <= 3 MiB either way).

--baseline PATH adds another shmvm build to the same interleaved runs, so an
old and a new binary are compared side by side.

usage: bench/boot_bench.py [--runs N] [--shmvm PATH] [--shmvm-dynamic PATH]
                           [--baseline PATH] [--kernel PATH]
"""
import re
import argparse
import os
import statistics
import struct
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


def kernel_at_2m_4m(path):
    """Writes a PVH ELF64 kernel: code at 2 MiB (prints "ok", exits 33 via
    isa-debug-exit at 0xf4), 8 KiB of data at 4 MiB, both written by the
    VMM's loader."""
    code = bytes([
        0x66, 0xba, 0xf8, 0x03,              # mov dx, 0x3f8
        0xb0, ord("o"), 0xee,                # mov al, 'o'; out dx, al
        0xb0, ord("k"), 0xee,                # mov al, 'k'; out dx, al
        0xb0, 0x0a, 0xee,                    # mov al, '\n'; out dx, al
        0xb0, 0x10, 0xe6, 0xf4,              # mov al, 0x10; out 0xf4, al
        0xf4, 0xeb, 0xfd,                    # hlt; jmp $-1
    ])
    data = bytes((i * 7 + 1) & 0xff for i in range(8192))
    # PVH note: name "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY), 32-bit entry.
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", 0x200000)
    ehsize, phsize, nph = 64, 56, 3
    off_code = 0x1000
    off_data = 0x2000
    off_note = off_data + len(data)
    eh = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0,
                     2, 0x3e, 1, 0x200000, ehsize, 0, 0, ehsize, phsize, nph, 0, 0, 0)
    ph = b""
    ph += struct.pack("<IIQQQQQQ", 1, 5, off_code, 0x200000, 0x200000, len(code), len(code), 0x1000)
    ph += struct.pack("<IIQQQQQQ", 1, 6, off_data, 0x400000, 0x400000, len(data), len(data), 0x1000)
    ph += struct.pack("<IIQQQQQQ", 4, 4, off_note, 0, 0, len(note), len(note), 4)
    img = bytearray(off_note + len(note))
    img[0:len(eh)] = eh
    img[ehsize:ehsize + len(ph)] = ph
    img[off_code:off_code + len(code)] = code
    img[off_data:off_data + len(data)] = data
    img[off_note:off_note + len(note)] = note
    with open(path, "wb") as f:
        f.write(img)


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


def measure(cmds, runs):
    """Interleaved runs of every command: medians of (first line, exit, RSS)."""
    res = {k: [] for k in cmds}
    # One warm-up each (page cache, KVM module state), not counted.
    for c in cmds.values():
        run_once(c)
    for _ in range(runs):
        for k, c in cmds.items():
            first, exit_s, code = run_once(c)
            if code != 33:
                raise SystemExit(f"{k}: guest did not pass (exit {code})")
            res[k].append((first, exit_s, time_v_rss(c)))
    return {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in res.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--shmvm", default=os.path.join(ROOT, "build/shmvm"))
    ap.add_argument("--shmvm-dynamic", default=None,
                    help="also measure this (dynamically linked) build")
    ap.add_argument("--baseline", default=None,
                    help="also measure this (older) shmvm build, side by side")
    ap.add_argument("--kernel", default=os.path.join(ROOT, "build/guest/testkernel"))
    a = ap.parse_args()
    cmds = {"shmvm": shmvm_cmd(a.shmvm, a.kernel), "qemu": qemu_cmd(a.kernel)}
    if a.shmvm_dynamic:
        cmds["shmvm-dynamic"] = shmvm_cmd(a.shmvm_dynamic, a.kernel)
    if a.baseline:
        cmds["baseline"] = shmvm_cmd(a.baseline, a.kernel)
    med = measure(cmds, a.runs)
    s, q = med["shmvm"], med["qemu"]
    print(f"{a.runs} interleaved runs each, medians; 128 MiB guest, PVH test kernel")
    print()
    print("| metric | shmvm | QEMU microvm+qboot | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| first serial line | {s[0]*1e3:.2f} ms | {q[0]*1e3:.2f} ms | {s[0]/q[0]:.3f}x | <= 0.07x |")
    print(f"| exit | {s[1]*1e3:.2f} ms | {q[1]*1e3:.2f} ms | {s[1]/q[1]:.3f}x | <= 0.1x |")
    print(f"| peak RSS | {s[2]/1024:.2f} MiB | {q[2]/1024:.2f} MiB | {s[2]/q[2]:.3f}x | <= 3 MiB |")
    for name, label in (("shmvm-dynamic", "Default dynamic build (target/release/shmvm)"),
                        ("baseline", f"Baseline build ({a.baseline})")):
        if name in med:
            d = med[name]
            print()
            print(f"{label}, same runs:")
            print(f"first line {d[0]*1e3:.2f} ms ({d[0]/q[0]:.3f}x), exit {d[1]*1e3:.2f} ms "
                  f"({d[1]/q[1]:.3f}x), peak RSS {d[2]/1024:.2f} MiB")
    with tempfile.TemporaryDirectory(prefix="shmvm-bench-") as tmp:
        k2 = os.path.join(tmp, "kernel-2m-4m.elf")
        kernel_at_2m_4m(k2)
        cmds2 = {"shmvm": shmvm_cmd(a.shmvm, k2), "qemu": qemu_cmd(k2)}
        if a.baseline:
            cmds2["baseline"] = shmvm_cmd(a.baseline, k2)
        med2 = measure(cmds2, a.runs)
    s2, q2 = med2["shmvm"], med2["qemu"]
    print()
    print("A kernel loaded at 2 MiB and 4 MiB (generated; prints one line), same way:")
    print()
    print("| VMM | first line | exit | peak RSS |")
    print("| --- | --- | --- | --- |")
    for k, v in med2.items():
        print(f"| {k} | {v[0]*1e3:.2f} ms | {v[1]*1e3:.2f} ms | {v[2]/1024:.2f} MiB |")
    breakdown(a.shmvm, a.kernel, a.runs)
    missed = [m for m, bad in (("first serial line", s[0] / q[0] > 0.07),
                               ("exit", s[1] / q[1] > 0.1),
                               ("peak RSS", s[2] > 3 * 1024),
                               ("peak RSS, kernel at 2 MiB", s2[2] > 3 * 1024)) if bad]
    if missed:
        print(f"\nMISSED targets: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
