#!/usr/bin/env python3
"""QMP conformance of shmvm, checked with QEMU's own client library.

usage: qmp_check.py compare --shmvm BIN --kernel ELF [--qemu BIN]
       qmp_check.py abuse   --shmvm BIN --kernel ELF

compare: boots the same waiting kernel under shmvm and under QEMU microvm,
  drives both with qemu.qmp (negotiation, every command shmvm has, events)
  and checks shmvm's replies field by field against QEMU's where QEMU has
  the command; then quit, system_reset and SIGTERM each end a fresh pair
  with the same SHUTDOWN event.
abuse: malformed JSON, unknown commands, missing arguments, huge and
  endless lines, a client that never reads, clients that disconnect
  mid-command, 100 connect/disconnect cycles, several clients at once: the
  VM runs on and the last client still gets answers.

Prints one line per check; exits 1 on the first failure.
"""
import argparse
import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

from qemu.qmp import ExecuteError, QMPClient

RAM = "128M"


def log(msg):
    print(msg, flush=True)


def fail(msg):
    log(f"FAIL: {msg}")
    sys.exit(1)


def check(cond, what):
    if not cond:
        fail(what)
    log(f"ok: {what}")


class Vm:
    """One VMM process with a QMP socket."""

    def __init__(self, kind, binary, kernel, sock, smp=2, extra=(), umask=None,
                 backend="memory-backend-ram"):
        self.kind, self.sock = kind, sock
        common = ["-kernel", kernel, "-smp", str(smp),
                  "-object", f"{backend},id=mem0,size={RAM}",
                  "-machine", "memory-backend=mem0",
                  "-qmp", f"unix:{sock},server=on,wait=off", *extra]
        if kind == "qemu":
            cmd = [binary, "-M", "microvm", "-accel", "kvm",
                   "-cpu", "host,-arch-capabilities", "-bios", "/usr/share/qemu/qboot.rom",
                   "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                   "-m", RAM, *common]
            # -machine memory-backend= needs the machine type in the same option.
            i = cmd.index("-machine")
            cmd[i:i + 2] = ["-M", "microvm,memory-backend=mem0"]
            del cmd[cmd.index("-M", 0):cmd.index("-M", 0) + 2]
        else:
            cmd = [binary, "-serial", "none", *common]
        if os.path.exists(sock):
            os.unlink(sock)  # a previous VMM's, if it left one
        pre = (lambda: os.umask(umask)) if umask is not None else None
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=pre)
        deadline = time.time() + 10
        while not os.path.exists(sock):
            if self.proc.poll() is not None or time.time() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
                fail(f"{kind}: no socket {sock} ({' '.join(cmd)}): {err}")
            time.sleep(0.01)

    def alive(self):
        return self.proc.poll() is None

    def wait(self, timeout=10):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            fail(f"{self.kind} did not exit within {timeout} s")

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()


async def client(vm, name="check"):
    # The socket file exists a moment before it listens (bind, then
    # listen; QEMU alike): retry a refused connection briefly.
    deadline = time.time() + 5
    while True:
        c = QMPClient(name)
        try:
            await c.connect(vm.sock)
            return c
        except Exception:  # qemu.qmp wraps ConnectionRefusedError
            if time.time() > deadline:
                raise
            await asyncio.sleep(0.01)


async def close(c):
    """Disconnects; a server that already hung up (after quit) is fine."""
    try:
        await c.disconnect()
    except (EOFError, ConnectionResetError, BrokenPipeError):
        pass


async def next_event(c, name, timeout=5):
    """The next event called `name` (others are skipped)."""
    async def get():
        while True:
            e = await c.events.get()
            if e["event"] == name:
                return e
    try:
        return await asyncio.wait_for(get(), timeout)
    except asyncio.TimeoutError:
        fail(f"no {name} event within {timeout} s")


def shape(v):
    """The structure of a JSON value: key sets of objects, element shapes of lists."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [shape(v[0])] if v else []
    return type(v).__name__


async def error_class(c, cmd, args=None):
    try:
        await c.execute(cmd, args)
    except ExecuteError as e:
        return e.error_class
    return None


def strip(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


async def compare(args):
    tmp = tempfile.mkdtemp(prefix="shmvm-qmp-")
    s = Vm("shmvm", args.shmvm, args.kernel, f"{tmp}/shmvm.sock")
    q = Vm("qemu", args.qemu, args.kernel, f"{tmp}/qemu.sock")
    try:
        mode = stat.S_IMODE(os.stat(s.sock).st_mode)
        check(mode == 0o600, f"shmvm socket mode {mode:o} is 600")
        # Before and after negotiation, on plain sockets: the same errors.
        # (First: QEMU's -qmp socket serves one client at a time.)
        seen = []
        for vm in (s, q):
            r, f = raw(vm.sock, negotiate=False)
            before = ask(r, f, '{"execute":"query-status","id":"b"}')
            first = ask(r, f, '{"execute":"qmp_capabilities","id":"n1"}')
            again = ask(r, f, '{"execute":"qmp_capabilities","id":"n2"}')
            f.close()  # the makefile holds the fd open too
            r.close()
            seen.append((before, first, again))
        check(seen[0] == seen[1] and seen[0][0]["error"]["class"] == "CommandNotFound",
              f"before qmp_capabilities / negotiated twice: {seen[0]} as QEMU")
        cs, cq = await client(s), await client(q)
        gs, gq = cs.greeting._raw, cq.greeting._raw
        check(set(gs["QMP"]) == set(gq["QMP"]) and shape(gs["QMP"]["version"]) == shape(gq["QMP"]["version"]),
              "greeting has QEMU's fields (QMP.version.qemu.major/minor/micro, package, capabilities)")
        for cmd in ["query-version", "query-name", "query-status", "query-cpus-fast", "query-memdev"]:
            rs, rq = await cs.execute(cmd), await cq.execute(cmd)
            check(shape(rs) == shape(rq), f"{cmd}: same fields as QEMU: {json.dumps(rs)}")
        check(await cs.execute("query-status") == await cq.execute("query-status"), "query-status: same values")
        check(await cs.execute("query-name") == await cq.execute("query-name"), "query-name: same values")
        check(await cs.execute("query-memdev") == await cq.execute("query-memdev"),
              "query-memdev: same values (id, size, merge, dump, prealloc, share, reserve, host-nodes, policy)")
        cpus_s, cpus_q = await cs.execute("query-cpus-fast"), await cq.execute("query-cpus-fast")
        # qom-path names QEMU's object tree (its CPU 1 is device[2] on
        # microvm, after an object shmvm has not): same form, not same value.
        check([strip(c, "thread-id", "qom-path") for c in cpus_s] ==
              [strip(c, "thread-id", "qom-path") for c in cpus_q] and
              all(c["qom-path"].startswith("/machine/") for c in cpus_s),
              "query-cpus-fast: same cpu-index, props, target; qom-path under /machine/")
        check(all(os.path.exists(f"/proc/{s.proc.pid}/task/{c['thread-id']}") for c in cpus_s),
              "query-cpus-fast: every thread-id is a thread of shmvm")
        cmds_s = {c["name"] for c in await cs.execute("query-commands")}
        cmds_q = {c["name"] for c in await cq.execute("query-commands")}
        check({c for c in cmds_s if not c.startswith("x-shmvm-")} <= cmds_q,
              f"query-commands: every command but x-shmvm-* is QEMU's ({len(cmds_s)})")
        pci = await cs.execute("query-pci")
        dev = pci[0]["devices"][0]
        check(set(pci[0]) >= {"bus", "devices"} and
              {"bus", "slot", "function", "class_info", "id", "irq_pin", "qdev_id", "regions"} <= set(dev) and
              dev["class_info"]["class"] == 0x0600,
              "query-pci: PciInfo/PciDeviceInfo fields of QEMU's schema, host bridge at 00.0")
        stats = await cs.execute("x-shmvm-query-stats")
        check(stats.get("shmvm_stats") == 1 and isinstance(stats.get("buses"), list),
              "x-shmvm-query-stats: the typed statistics")
        for c in (cs, cq):
            await c.execute("stop")
        for c in (cs, cq):
            await next_event(c, "STOP")
        rs, rq = await cs.execute("query-status"), await cq.execute("query-status")
        check(rs == rq == {"status": "paused", "running": False}, "stop: STOP event, status paused (both)")
        hs = await cs.execute("human-monitor-command", {"command-line": "info status"})
        hq = await cq.execute("human-monitor-command", {"command-line": "info status"})
        check(hs == hq, f"HMP info status: {hs!r} as QEMU")
        for c in (cs, cq):
            await c.execute("cont")
            await next_event(c, "RESUME")
        check(await cs.execute("query-status") == await cq.execute("query-status") ==
              {"status": "running", "running": True}, "cont: RESUME event, status running (both)")
        for c in (cs, cq):
            await c.execute("human-monitor-command", {"command-line": "stop"})
            await next_event(c, "STOP")
            await c.execute("human-monitor-command", {"command-line": "cont"})
            await next_event(c, "RESUME")
        log("ok: HMP stop/cont: STOP and RESUME events (both)")
        hs = await cs.execute("human-monitor-command", {"command-line": "bogus"})
        hq = await cq.execute("human-monitor-command", {"command-line": "bogus"})
        check(hs == hq, f"HMP unknown command: {hs!r} as QEMU")
        for cmd, a in [("no-such-command", None), ("human-monitor-command", None),
                       ("query-status", {"x": 1}),
                       ("human-monitor-command", {"command-line": 5})]:
            es, eq = await error_class(cs, cmd, a), await error_class(cq, cmd, a)
            check(es == eq and es is not None, f"{cmd} {a}: error class {es} as QEMU")
        for c in (cs, cq):
            await c.execute("system_powerdown")
            await next_event(c, "POWERDOWN")
        log("ok: system_powerdown: POWERDOWN event (both)")
        check(s.alive() and q.alive(), "both still run")
        for c in (cs, cq):
            await c.execute("quit")
        es, eq = await next_event(cs, "SHUTDOWN"), await next_event(cq, "SHUTDOWN")
        check(es["data"] == eq["data"] == {"guest": False, "reason": "host-qmp-quit"},
              f"quit: SHUTDOWN {es['data']} as QEMU")
        check(s.wait() == 0 and q.wait() == 0, "quit: both exit 0")
        check(not os.path.exists(s.sock), "shmvm removed its socket")
        for c in (cs, cq):
            await close(c)

        # system_reset (-no-reboot for QEMU: shmvm never reboots), SIGTERM,
        # and HMP quit / q; the HMP runs on other backends, whose
        # query-memdev must match QEMU's too.
        for how, reason, backend in [
                ("system_reset", "host-qmp-system-reset", "memory-backend-ram"),
                ("SIGTERM", "host-signal", "memory-backend-ram"),
                ("quit", "host-qmp-quit", "memory-backend-memfd,share=on,prealloc=on"),
                ("q", "host-qmp-quit", "memory-backend-ram,share=on,merge=off,dump=off")]:
            s = Vm("shmvm", args.shmvm, args.kernel, f"{tmp}/shmvm.sock", backend=backend)
            q = Vm("qemu", args.qemu, args.kernel, f"{tmp}/qemu.sock", backend=backend)
            cs, cq = await client(s), await client(q)
            if backend != "memory-backend-ram":
                ms, mq = await cs.execute("query-memdev"), await cq.execute("query-memdev")
                check(ms == mq, f"query-memdev of {backend}: {json.dumps(ms)} as QEMU")
            for c, vm in ((cs, s), (cq, q)):
                if how == "SIGTERM":
                    # Paused first: parked vCPUs must still see the signal.
                    await c.execute("stop")
                    vm.proc.send_signal(signal.SIGTERM)
                elif how in ("quit", "q"):
                    await c.execute("human-monitor-command", {"command-line": how})
                else:
                    await c.execute(how)
            es, eq = await next_event(cs, "SHUTDOWN"), await next_event(cq, "SHUTDOWN")
            check(es["data"] == eq["data"] == {"guest": False, "reason": reason},
                  f"{how}{' while paused' if how == 'SIGTERM' else ''}: SHUTDOWN {es['data']} as QEMU")
            rc = s.wait()
            q.wait()
            if how != "SIGTERM":
                check(rc == 0, f"{how}: shmvm exits 0")
            check(not os.path.exists(s.sock), f"{how}: shmvm removed its socket")
            for c in (cs, cq):
                await close(c)
    finally:
        s.kill()
        q.kill()


def raw(sock_path, negotiate=True):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    deadline = time.time() + 5
    while True:  # the socket file exists a moment before it listens
        try:
            s.connect(sock_path)
            break
        except ConnectionRefusedError:
            if time.time() > deadline:
                raise
            time.sleep(0.01)
    f = s.makefile("rb")
    greeting = json.loads(f.readline())
    assert "QMP" in greeting
    if negotiate:
        s.sendall(b'{"execute":"qmp_capabilities"}\n')
        assert "return" in json.loads(f.readline())
    return s, f


def ask(s, f, text):
    s.sendall(text.encode() + b"\n")
    while True:
        m = json.loads(f.readline())
        if "event" not in m:
            return m


async def abuse(args):
    tmp = tempfile.mkdtemp(prefix="shmvm-qmp-")
    # umask 0: the socket must still be 0600.
    vm = Vm("shmvm", args.shmvm, args.kernel, f"{tmp}/s.sock", umask=0)
    try:
        mode = stat.S_IMODE(os.stat(vm.sock).st_mode)
        check(mode == 0o600, f"socket mode {mode:o} is 600 under umask 0")
        watcher = await client(vm, "watcher")
        s, f = raw(vm.sock)
        r = ask(s, f, "{bad json")
        r2 = ask(s, f, '{"execute":"query-status","id":1}')
        check(r["error"]["class"] == "GenericError" and r2.get("id") == 1 and r2["return"]["running"],
              "malformed JSON: GenericError, the connection answers on")
        r = ask(s, f, '{"execute":"no-such","id":"u"}')
        check(r["error"]["class"] == "CommandNotFound" and r["id"] == "u", "unknown command: CommandNotFound with id")
        r = ask(s, f, '{"execute":"human-monitor-command","id":2}')
        check(r["error"]["class"] == "GenericError" and r["id"] == 2, "missing argument: GenericError with id")
        r = ask(s, f, '{"execute":"query-status","id":3}{"execute":"query-name","id":4}')
        r2 = json.loads(f.readline())
        check((r["id"], r2["id"]) == (3, 4), "two messages on one line: two replies in order")
        s.close()

        # A huge message and an endless line: that client is dropped.
        for what, data in [("huge", b'{"execute":"query-status","arguments":{"x":"' + b"a" * (3 << 20)),
                           ("endless", b"[" * 64 + b"1," * (2 << 20))]:
            s, f = raw(vm.sock)
            try:
                s.sendall(data)
                rest = f.read()
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                rest = b""
            s.close()
            check(vm.alive() and (await watcher.execute("query-status"))["running"],
                  f"{what} line: client dropped ({len(rest)} bytes of error), VM runs, others answered")

        # A client that never reads: flood it; it is dropped, not the VM.
        s, f = raw(vm.sock)
        s.setblocking(False)
        sent, t0 = 0, time.time()
        msg = b'{"execute":"query-commands"}\n' * 64
        while time.time() - t0 < 20:
            try:
                sent += s.send(msg)
            except BlockingIOError:
                t1 = time.time()
                st = await watcher.execute("query-status")
                dt = time.time() - t1
                if dt > 1:
                    fail(f"the others waited {dt:.1f} s while a client did not read")
                await asyncio.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            fail("a client that never reads was not dropped within 20 s")
        s.close()
        check(vm.alive(), f"a client that never reads was dropped after {sent >> 10} KiB; VM runs")

        # Disconnects mid-command and 100 connect/disconnect cycles.
        for i in range(100):
            s = socket.socket(socket.AF_UNIX)
            s.connect(vm.sock)
            if i % 3 == 1:
                s.sendall(b'{"execute":"qmp_capabilities"}\n{"execute":"query-st')
            elif i % 3 == 2:
                s.sendall(b'{"execute":"qmp_capabilities"}\n{"execute":"stop"}\n{"execute":"cont"}\n')
            s.close()
        await asyncio.sleep(0.2)
        st = await watcher.execute("query-status")
        check(vm.alive() and st["running"], "100 connect/disconnect cycles (some mid-command): VM runs")

        # Several clients at once, events to all.
        others = [await client(vm, f"c{i}") for i in range(4)]
        await others[0].execute("stop")
        for c in others + [watcher]:
            await next_event(c, "STOP")
        await others[1].execute("cont")
        for c in others + [watcher]:
            await next_event(c, "RESUME")
        rs = await asyncio.gather(*(c.execute("query-status") for c in others))
        check(all(r["running"] for r in rs), "5 clients at once: each gets STOP and RESUME, all answered")
        for c in others:
            await close(c)

        last = await client(vm, "last")
        check((await last.execute("query-status"))["running"], "the last client still gets answers")
        await last.execute("stop")
        await last.execute("quit")
        check(vm.wait() == 0 and not os.path.exists(vm.sock), "quit while paused: exit 0, socket removed")
        await close(last)
        await close(watcher)
    finally:
        vm.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["compare", "abuse"])
    ap.add_argument("--shmvm", required=True)
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--kernel", required=True)
    args = ap.parse_args()
    asyncio.run(compare(args) if args.mode == "compare" else abuse(args))
    log("PASS")


if __name__ == "__main__":
    main()
