//! The sandbox's seccomp programs, compiled while shmvm itself is compiled.
//!
//! Each thread kind's allow list (sandbox.rs) becomes a classic BPF program
//! in a `static` through the `const fn`s here, so entering the sandbox
//! copies one array, writes the process id into it, and makes one `seccomp`
//! call: nothing is built at run time, and no filter compiler is linked in.
//! (Firecracker compiles its filters at build time too, with a build
//! script; a `const fn` needs none, and takes the call numbers and
//! constants from `libc` as built for the target.)
//!
//! The program's shape is chosen for the kernel's cost of installing and
//! running it, not only for its size:
//! - the architecture check, then clone3 (fails with EPERM, see
//!   sandbox.rs), then a binary search over the allowed call numbers:
//!   a call is decided after about log2(n) comparisons instead of a walk
//!   along a chain of every allowed call;
//! - each leaf of the search tests a few call numbers, then returns
//!   "trap"; an allowed call jumps to the leaf's own "allow"; a call
//!   allowed only with some argument values jumps to a block that loads
//!   the argument (its low 32 bits: the kernel reads these arguments as
//!   `int`s) once and compares it with each value.
//!
//! When a filter is installed, the kernel runs it once for every call
//! number (with unknown arguments) to find the calls it always allows
//! (those then skip the filter). Along a chain that is ~450 calls times a
//! few hundred instructions; along the tree it is a few thousand: on the
//! development host, installing the main thread's filter went from
//! ~0.28 ms to ~0.05 ms (README, "Boot latency and memory").

use libc::sock_filter;

/// What a thread may do once the guest runs: a system call with any
/// arguments, only with argument `arg` among `values`, or only with
/// argument `arg` equal to this process's id (filled in when the filter is
/// installed: `tgkill` to our own threads).
#[derive(Debug, Clone, Copy)]
pub enum Allow {
    Call(libc::c_long),
    Arg(libc::c_long, u8, &'static [u64]),
    OwnPid(libc::c_long, u8),
}

// Classic BPF opcodes (<linux/bpf_common.h>) and seccomp's return values
// and data layout (<linux/seccomp.h>).
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
pub(crate) const RET_ALLOW: u32 = 0x7fff_0000;
pub(crate) const RET_TRAP: u32 = 0x0003_0000;
pub(crate) const RET_ERRNO: u32 = 0x0005_0000;
pub(crate) const RET_KILL_PROCESS: u32 = 0x8000_0000;
/// The architecture the programs allow, the one shmvm is built for
/// (<linux/audit.h>): `AUDIT_ARCH`,
#[cfg(target_arch = "x86_64")]
pub(crate) const AUDIT_ARCH: u32 = 0xc000_003e;
/// `AUDIT_ARCH_AARCH64`.
#[cfg(target_arch = "aarch64")]
pub(crate) const AUDIT_ARCH: u32 = 0xc000_00b7;
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// `seccomp_data.args[i]` is at 16 + 8 i; its low half comes first
/// (little-endian).
const fn data_arg(i: u8) -> u32 {
    16 + 8 * i as u32
}

/// Room for a program while it is compiled (only the used part is kept:
/// [`exact`]); the kernel takes at most 4096 instructions.
pub const CAP: usize = 1024;
/// At most this many distinct call numbers in one allow list.
const MAX_CALLS: usize = 256;
/// At most this many call numbers per leaf of the search tree.
const LEAF: usize = 4;

/// A program being compiled, with where the process id goes.
#[derive(Debug, Clone, Copy)]
pub struct Program {
    pub insns: [sock_filter; CAP],
    pub len: usize,
    /// The instruction whose `k` is the process id ([`Allow::OwnPid`]).
    pub pid_at: Option<usize>,
}

const fn op(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

impl Program {
    const fn push(&mut self, i: sock_filter) {
        assert!(self.len < CAP, "seccomp program too long");
        self.insns[self.len] = i;
        self.len += 1;
    }
}

/// A forward jump of `n` instructions, which must fit a conditional jump.
const fn short(n: usize) -> u8 {
    assert!(n <= 255, "seccomp program: conditional jump too far");
    n as u8
}

/// The call number an entry is about.
const fn nr_of(a: &Allow) -> libc::c_long {
    match *a {
        Allow::Call(nr) | Allow::Arg(nr, _, _) | Allow::OwnPid(nr, _) => nr,
    }
}

/// The distinct call numbers of `lists`, ascending.
#[derive(Clone, Copy)]
struct Calls {
    nr: [libc::c_long; MAX_CALLS],
    n: usize,
}

const fn calls(lists: &[&[Allow]]) -> Calls {
    let mut c = Calls {
        nr: [0; MAX_CALLS],
        n: 0,
    };
    let mut l = 0;
    while l < lists.len() {
        let mut i = 0;
        while i < lists[l].len() {
            let nr = nr_of(&lists[l][i]);
            assert!(nr >= 0 && nr < 1 << 30, "seccomp program: bad call number");
            let mut at = 0;
            while at < c.n && c.nr[at] < nr {
                at += 1;
            }
            if at == c.n || c.nr[at] != nr {
                assert!(c.n < MAX_CALLS, "seccomp program: too many calls");
                let mut j = c.n;
                while j > at {
                    c.nr[j] = c.nr[j - 1];
                    j -= 1;
                }
                c.nr[at] = nr;
                c.n += 1;
            }
            i += 1;
        }
        l += 1;
    }
    c
}

/// Whether `nr` is allowed whatever its arguments.
const fn unconditional(lists: &[&[Allow]], nr: libc::c_long) -> bool {
    let mut l = 0;
    while l < lists.len() {
        let mut i = 0;
        while i < lists[l].len() {
            if let Allow::Call(n) = lists[l][i]
                && n == nr
            {
                return true;
            }
            i += 1;
        }
        l += 1;
    }
    false
}

/// Visits the argument checks of `nr` in order: (argument, values, own
/// pid). Written out twice below (sizing and emitting) through this one
/// walk, so the two cannot disagree.
const fn arg_entry(
    lists: &[&[Allow]],
    nr: libc::c_long,
    k: usize,
) -> Option<(u8, &'static [u64], bool)> {
    let mut seen = 0;
    let mut l = 0;
    while l < lists.len() {
        let mut i = 0;
        while i < lists[l].len() {
            let e = match lists[l][i] {
                Allow::Arg(n, arg, values) if n == nr => Some((arg, values, false)),
                Allow::OwnPid(n, arg) if n == nr => Some((arg, &[] as &[u64], true)),
                _ => None,
            };
            if let Some(e) = e {
                if seen == k {
                    return Some(e);
                }
                seen += 1;
            }
            i += 1;
        }
        l += 1;
    }
    None
}

/// Instructions of `nr`'s argument block: a load whenever the argument
/// changes, a comparison per value, then "trap" and "allow".
const fn arg_block_len(lists: &[&[Allow]], nr: libc::c_long) -> usize {
    let mut len = 2;
    let mut loaded: Option<u8> = None;
    let mut k = 0;
    while let Some((arg, values, pid)) = arg_entry(lists, nr, k) {
        if !matches!(loaded, Some(a) if a == arg) {
            len += 1;
            loaded = Some(arg);
        }
        len += if pid { 1 } else { values.len() };
        k += 1;
    }
    len
}

const fn emit_arg_block(p: &mut Program, lists: &[&[Allow]], nr: libc::c_long) {
    let end = p.len + arg_block_len(lists, nr);
    // The block's last instruction is its "allow".
    let allow = end - 1;
    let mut loaded: Option<u8> = None;
    let mut k = 0;
    while let Some((arg, values, pid)) = arg_entry(lists, nr, k) {
        if !matches!(loaded, Some(a) if a == arg) {
            p.push(op(LD_W_ABS, 0, 0, data_arg(arg)));
            loaded = Some(arg);
        }
        if pid {
            assert!(
                p.pid_at.is_none(),
                "seccomp program: one own-pid check at most"
            );
            p.pid_at = Some(p.len);
            p.push(op(JEQ_K, short(allow - p.len - 1), 0, 0));
        } else {
            let mut v = 0;
            while v < values.len() {
                assert!(
                    values[v] <= u32::MAX as u64,
                    "seccomp program: value over 32 bits"
                );
                p.push(op(JEQ_K, short(allow - p.len - 1), 0, values[v] as u32));
                v += 1;
            }
        }
        k += 1;
    }
    p.push(op(RET_K, 0, 0, RET_TRAP));
    p.push(op(RET_K, 0, 0, RET_ALLOW));
    assert!(p.len == end);
}

/// A leaf: each call number compared in turn, "trap", "allow", then the
/// argument blocks of the calls that have them.
const fn emit_leaf(p: &mut Program, lists: &[&[Allow]], c: &Calls, lo: usize, hi: usize) {
    let base = p.len;
    let m = hi - lo;
    let allow = base + m + 1;
    let mut block = allow + 1;
    let mut i = lo;
    while i < hi {
        let nr = c.nr[i];
        let target = if unconditional(lists, nr) {
            allow
        } else {
            let at = block;
            block += arg_block_len(lists, nr);
            at
        };
        p.push(op(JEQ_K, short(target - p.len - 1), 0, nr as u32));
        i += 1;
    }
    p.push(op(RET_K, 0, 0, RET_TRAP));
    p.push(op(RET_K, 0, 0, RET_ALLOW));
    let mut i = lo;
    while i < hi {
        if !unconditional(lists, c.nr[i]) {
            emit_arg_block(p, lists, c.nr[i]);
        }
        i += 1;
    }
    assert!(p.len == block);
}

/// The search over `c.nr[lo..hi]` (the call number is in the accumulator).
const fn emit_tree(p: &mut Program, lists: &[&[Allow]], c: &Calls, lo: usize, hi: usize) {
    if hi - lo <= LEAF {
        emit_leaf(p, lists, c, lo, hi);
        return;
    }
    let mid = lo + (hi - lo) / 2;
    // `nr >= c.nr[mid]` jumps over the lower half. Its length is known once
    // it is emitted: a slot is kept for the jump, and a second one made
    // (the lower half moved down; its jumps are relative) when the half is
    // too long for a conditional jump.
    let slot = p.len;
    p.push(op(JA, 0, 0, 0));
    emit_tree(p, lists, c, lo, mid);
    let left = p.len - slot - 1;
    let split = c.nr[mid] as u32;
    if left <= 255 {
        p.insns[slot] = op(JGE_K, left as u8, 0, split);
    } else {
        p.push(op(JA, 0, 0, 0));
        let mut i = p.len - 1;
        while i > slot + 1 {
            p.insns[i] = p.insns[i - 1];
            i -= 1;
        }
        if let Some(at) = p.pid_at
            && at > slot
        {
            p.pid_at = Some(at + 1);
        }
        // True: the next instruction, a long jump over the lower half.
        p.insns[slot] = op(JGE_K, 0, 1, split);
        p.insns[slot + 1] = op(JA, 0, 0, left as u32);
    }
    emit_tree(p, lists, c, mid, hi);
}

/// The program for the union of `lists`: the build's architecture only
/// (kills a call made through another ABI's entry), clone3 fails with EPERM, the listed calls
/// are allowed, anything else traps (SIGSYS).
pub const fn compile(lists: &[&[Allow]], clone3: libc::c_long) -> Program {
    let mut p = Program {
        insns: [op(0, 0, 0, 0); CAP],
        len: 0,
        pid_at: None,
    };
    p.push(op(LD_W_ABS, 0, 0, DATA_ARCH));
    p.push(op(JEQ_K, 1, 0, AUDIT_ARCH));
    p.push(op(RET_K, 0, 0, RET_KILL_PROCESS));
    p.push(op(LD_W_ABS, 0, 0, DATA_NR));
    p.push(op(JEQ_K, 0, 1, clone3 as u32));
    p.push(op(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32));
    let c = calls(lists);
    assert!(c.n > 0, "seccomp program: empty allow list");
    emit_tree(&mut p, lists, &c, 0, c.n);
    p
}

/// The used part of `p`, as an array of its exact length `N`.
pub const fn exact<const N: usize>(p: &Program) -> [sock_filter; N] {
    assert!(p.len == N);
    let mut out = [op(0, 0, 0, 0); N];
    let mut i = 0;
    while i < N {
        out[i] = p.insns[i];
        i += 1;
    }
    out
}

/// Runs `prog` as the kernel would for one call: (the return value, how
/// many instructions ran). Knows the instructions seccomp programs here
/// and seccompiler's use.
#[cfg(test)]
pub(crate) fn run(prog: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> (u32, usize) {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let (mut acc, mut pc, mut steps) = (0u32, 0usize, 0usize);
    loop {
        let i = prog
            .get(pc)
            .unwrap_or_else(|| panic!("ran off the program at {pc}"));
        steps += 1;
        let jump = |taken: bool| pc + 1 + usize::from(if taken { i.jt } else { i.jf });
        pc = match i.code {
            LD_W_ABS => {
                let at = i.k as usize;
                acc = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
                pc + 1
            }
            JEQ_K => jump(acc == i.k),
            JGE_K => jump(acc >= i.k),
            0x25 => jump(acc > i.k),      // BPF_JGT | BPF_K
            0x45 => jump(acc & i.k != 0), // BPF_JSET | BPF_K
            0x54 => {
                // BPF_ALU | BPF_AND | BPF_K
                acc &= i.k;
                pc + 1
            }
            JA => pc + 1 + i.k as usize,
            RET_K => return (i.k, steps),
            c => panic!("instruction {c:#x} at {pc}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOME: &[u64] = &[7, 9];

    fn lists_of(n: usize) -> Vec<Allow> {
        (0..n)
            .map(|i| {
                let nr = (i * 3) as libc::c_long;
                match i % 5 {
                    0 => Allow::Arg(nr, 1, SOME),
                    _ => Allow::Call(nr),
                }
            })
            .collect()
    }

    fn verdict(p: &Program, nr: u32, arg1: u64) -> (u32, usize) {
        run(&p.insns[..p.len], nr, AUDIT_ARCH, [0, arg1, 0, 0, 0, 0])
    }

    #[test]
    fn the_search_allows_exactly_the_listed_calls_at_every_size() {
        // From one call to enough that the lower half of the tree is too
        // long for a conditional jump (the long-jump form).
        for n in [1, 2, 4, 5, 9, 31, 100, 200] {
            let list = lists_of(n);
            let p = compile(&[&list], 435);
            if n == 200 {
                let long = p.insns[..p.len].iter().any(|i| i.code == JA);
                assert!(long, "the long-jump form is not exercised");
            }
            for nr in 0..(n as u32 * 3 + 5) {
                let listed = nr % 3 == 0 && (nr / 3) < n as u32;
                let with_args = listed && (nr / 3) % 5 == 0;
                for arg in [0u64, 7, 8, 9, 7 | 1 << 35] {
                    let want = if nr == 435 {
                        RET_ERRNO | libc::EPERM as u32
                    } else if listed && (!with_args || [7, 9].contains(&(arg as u32))) {
                        RET_ALLOW
                    } else {
                        RET_TRAP
                    };
                    let (got, steps) = verdict(&p, nr, arg);
                    assert_eq!(got, want, "n={n} nr={nr} arg={arg:#x}");
                    assert!(steps <= 30, "n={n} nr={nr}: {steps} steps");
                }
            }
        }
    }

    #[test]
    fn the_own_pid_check_is_found_and_other_architectures_are_killed() {
        let list = [Allow::Call(1), Allow::OwnPid(234, 0), Allow::Call(300)];
        let mut p = compile(&[&list], 435);
        let at = p.pid_at.expect("pid slot");
        p.insns[at].k = 4242;
        let run_with =
            |p: &Program, a0: u64, arch| run(&p.insns[..p.len], 234, arch, [a0, 0, 0, 0, 0, 0]).0;
        assert_eq!(run_with(&p, 4242, AUDIT_ARCH), RET_ALLOW);
        assert_eq!(run_with(&p, 1, AUDIT_ARCH), RET_TRAP);
        assert_eq!(run_with(&p, 4242, 0x4000_0003), RET_KILL_PROCESS);
    }

    #[test]
    fn exact_keeps_the_used_instructions() {
        const P: Program = compile(&[&[Allow::Call(0), Allow::Call(60)]], 435);
        const SHORT: [sock_filter; P.len] = exact(&P);
        assert_eq!(SHORT.len(), P.len);
        assert!(
            SHORT
                .iter()
                .zip(&P.insns)
                .all(|(a, b)| (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k))
        );
    }
}
