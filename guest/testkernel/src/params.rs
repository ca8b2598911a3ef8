//! `shmvm.*` command-line parameters (parsed in ring 3; see README.md).

#[cfg(not(test))]
use crate::Global;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    Boot,
    Memtest,
    Initrd,
    Ivshmem,
    IvshmemMove,
    IvshmemSlots,
    IvshmemBench,
    DoorbellSelf,
    DoorbellPing,
    DoorbellPong,
    DoorbellBad,
    DoorbellMasked,
    Snapcount,
    SnapcountIvshmem,
    Storm,
    /// aarch64: start the secondary CPUs with PSCI CPU_ON.
    Smp,
}

pub const MAX_TESTS: usize = 16;

pub struct Params {
    pub tests: [Test; MAX_TESTS],
    pub ntests: usize,
    pub expect_ram: Option<u64>,
    pub expect_cpus: Option<u64>,
    pub seed: u64,
    pub timeout_ms: u64,
    pub bar2: Option<u64>,
    pub slot: u64,
    pub parties: u64,
    pub bench_mib: u64,
    pub ivshmem_size: Option<u64>,
    pub ivposition: u64,
    /// The other peer of the doorbell ping-pong, and its rounds.
    pub peer: u64,
    pub rounds: u64,
    /// Doorbell ping-pong waits in `hlt` at CPL0 (1) or spins in ring 3 (0).
    pub halt: u64,
    /// MiB of RAM `snapcount` counts over.
    pub snap_mib: u64,
    /// Operations of the `storm` test.
    pub storm_ops: u64,
    /// First problem found: (reason, offset of the offending word in the
    /// command line).
    pub error: Option<(&'static str, usize)>,
}

#[cfg(not(test))]
pub static PARAMS: Global<Params> = Global::new(Params::DEFAULT);

impl Params {
    pub const DEFAULT: Params = Params {
        tests: [Test::Boot; MAX_TESTS],
        ntests: 0,
        expect_ram: None,
        expect_cpus: None,
        seed: 0x5eed,
        timeout_ms: 10_000,
        bar2: None,
        slot: 0,
        parties: 1,
        bench_mib: 64,
        ivshmem_size: None,
        ivposition: 0,
        peer: 0,
        rounds: 1000,
        halt: 0,
        snap_mib: 4,
        storm_ops: 2000,
        error: None,
    };

    /// Parses a command line (see README.md); problems land in `error`.
    pub fn parse(&mut self, line: &[u8]) {
        parse(line, self);
    }

    pub fn tests(&self) -> &[Test] {
        &self.tests[..self.ntests]
    }
}

/// Decimal, or hex with 0x; optional K/M/G suffix (powers of 1024).
pub fn parse_num(s: &[u8]) -> Option<u64> {
    let (mut digits, radix) = if s.len() > 2 && s[0] == b'0' && (s[1] == b'x' || s[1] == b'X') {
        (&s[2..], 16u64)
    } else {
        (s, 10u64)
    };
    let mut mult = 1u64;
    if let Some((&last, rest)) = digits.split_last() {
        let m = match last {
            b'k' | b'K' => 1 << 10,
            b'm' | b'M' => 1 << 20,
            b'g' | b'G' => 1 << 30,
            _ => 1,
        };
        if m != 1 && radix == 10 {
            mult = m;
            digits = rest;
        }
    }
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = match c {
            b'0'..=b'9' => u64::from(c - b'0'),
            b'a'..=b'f' if radix == 16 => u64::from(c - b'a' + 10),
            b'A'..=b'F' if radix == 16 => u64::from(c - b'A' + 10),
            _ => return None,
        };
        v = v.checked_mul(radix)?.checked_add(d)?;
    }
    v.checked_mul(mult)
}

fn test_by_name(s: &[u8]) -> Option<Test> {
    Some(match s {
        b"boot" => Test::Boot,
        b"memtest" => Test::Memtest,
        b"initrd" => Test::Initrd,
        b"ivshmem" => Test::Ivshmem,
        b"ivshmem-move" => Test::IvshmemMove,
        b"ivshmem-slots" => Test::IvshmemSlots,
        b"ivshmem-bench" => Test::IvshmemBench,
        b"doorbell-self" => Test::DoorbellSelf,
        b"doorbell-ping" => Test::DoorbellPing,
        b"doorbell-pong" => Test::DoorbellPong,
        b"doorbell-bad" => Test::DoorbellBad,
        b"doorbell-masked" => Test::DoorbellMasked,
        b"snapcount" => Test::Snapcount,
        b"snapcount-ivshmem" => Test::SnapcountIvshmem,
        b"storm" => Test::Storm,
        b"smp" => Test::Smp,
        _ => return None,
    })
}

fn parse(line: &[u8], p: &mut Params) {
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i] == b' ' {
            i += 1;
        }
        let start = i;
        while i < line.len() && line[i] != b' ' {
            i += 1;
        }
        let word = &line[start..i];
        let Some(rest) = word.strip_prefix(b"shmvm.") else {
            continue;
        };
        let Some(eq) = rest.iter().position(|&c| c == b'=') else {
            continue;
        };
        let (key, val) = (&rest[..eq], &rest[eq + 1..]);
        let mut bad = |why: &'static str| {
            if p.error.is_none() {
                p.error = Some((why, start));
            }
        };
        if key == b"test" {
            for name in val.split(|&c| c == b',') {
                match test_by_name(name) {
                    Some(t) if p.ntests < MAX_TESTS => {
                        p.tests[p.ntests] = t;
                        p.ntests += 1;
                    }
                    Some(_) => bad("too_many_tests"),
                    None => bad("unknown_test"),
                }
            }
            continue;
        }
        let slot: Option<&mut Option<u64>> = match key {
            b"expect_ram" => Some(&mut p.expect_ram),
            b"expect_cpus" => Some(&mut p.expect_cpus),
            b"bar2" => Some(&mut p.bar2),
            b"ivshmem_size" => Some(&mut p.ivshmem_size),
            _ => None,
        };
        if let Some(slot) = slot {
            match parse_num(val) {
                Some(v) => *slot = Some(v),
                None => bad("bad_number"),
            }
            continue;
        }
        let field: &mut u64 = match key {
            b"seed" => &mut p.seed,
            b"timeout_ms" => &mut p.timeout_ms,
            b"slot" => &mut p.slot,
            b"parties" => &mut p.parties,
            b"bench_mib" => &mut p.bench_mib,
            b"ivposition" => &mut p.ivposition,
            b"peer" => &mut p.peer,
            b"rounds" => &mut p.rounds,
            b"halt" => &mut p.halt,
            b"snap_mib" => &mut p.snap_mib,
            b"storm_ops" => &mut p.storm_ops,
            _ => continue,
        };
        match parse_num(val) {
            Some(v) => *field = v,
            None => bad("bad_number"),
        }
    }
    if p.ntests == 0 && p.error.is_none() {
        p.tests[0] = Test::Boot;
        p.ntests = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Params {
        let mut p = Params::DEFAULT;
        p.parse(line.as_bytes());
        p
    }

    #[test]
    fn numbers_decimal_hex_and_suffixes() {
        assert_eq!(parse_num(b"42"), Some(42));
        assert_eq!(parse_num(b"0x1F"), Some(31));
        assert_eq!(parse_num(b"128M"), Some(128 << 20));
        assert_eq!(parse_num(b"4G"), Some(4 << 30));
        assert_eq!(parse_num(b"2k"), Some(2048));
        assert_eq!(parse_num(b"0x"), None);
        assert_eq!(parse_num(b"M"), None);
        assert_eq!(parse_num(b"12x"), None);
        assert_eq!(parse_num(b"99999999999999999999"), None);
        assert_eq!(parse_num(b"17179869184G"), None);
    }

    #[test]
    fn default_test_is_boot_and_other_words_are_ignored() {
        let p = parsed("console=ttyS0 quiet shmvm.unknown=1 shmvm.seed");
        assert_eq!(p.tests(), &[Test::Boot]);
        assert!(p.error.is_none());
        assert_eq!(p.seed, 0x5eed);
    }

    #[test]
    fn tests_in_order_and_parameters() {
        let p = parsed(
            "  shmvm.test=memtest,ivshmem-slots,initrd shmvm.expect_ram=128M shmvm.expect_cpus=2 \
             shmvm.slot=1 shmvm.parties=3 shmvm.seed=0x99 shmvm.bar2=0x100100000 shmvm.timeout_ms=5",
        );
        assert_eq!(
            p.tests(),
            &[Test::Memtest, Test::IvshmemSlots, Test::Initrd]
        );
        assert_eq!(p.expect_ram, Some(128 << 20));
        assert_eq!(p.expect_cpus, Some(2));
        assert_eq!((p.slot, p.parties, p.seed, p.timeout_ms), (1, 3, 0x99, 5));
        assert_eq!(p.bar2, Some(0x1_0010_0000));
        assert!(p.error.is_none());
    }

    #[test]
    fn snapcount_and_its_region_size() {
        let p = parsed("shmvm.test=snapcount,snapcount-ivshmem shmvm.snap_mib=8 shmvm.rounds=600");
        assert_eq!(p.tests(), &[Test::Snapcount, Test::SnapcountIvshmem]);
        assert_eq!((p.snap_mib, p.rounds), (8, 600));
        assert_eq!(parsed("").snap_mib, 4);
    }

    #[test]
    fn storm_and_its_operations() {
        let p = parsed("shmvm.test=storm shmvm.seed=7 shmvm.storm_ops=5000");
        assert_eq!(p.tests(), &[Test::Storm]);
        assert_eq!((p.seed, p.storm_ops), (7, 5000));
        assert_eq!(parsed("").storm_ops, 2000);
    }

    #[test]
    fn smp_is_a_test_name() {
        assert_eq!(
            parsed("shmvm.test=boot,smp").tests(),
            &[Test::Boot, Test::Smp]
        );
    }

    #[test]
    fn errors_name_the_first_bad_word() {
        let p = parsed("a=b shmvm.test=boot,bogus shmvm.seed=zz");
        assert_eq!(p.error, Some(("unknown_test", 4)));
        let p = parsed("shmvm.seed=zz");
        assert_eq!(p.error, Some(("bad_number", 0)));
        assert!(p.tests().is_empty());
    }
}
