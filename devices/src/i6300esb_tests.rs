use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// A clock the test moves by hand.
#[derive(Default)]
struct FakeClock(AtomicU64);

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl FakeClock {
    fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::SeqCst);
    }
}

/// Every deadline the device announced.
#[derive(Default)]
struct Seen(Mutex<Vec<Option<u64>>>);

impl TimerEvents for Seen {
    fn deadline_changed(&self, d: Option<u64>) {
        self.0.lock().unwrap().push(d);
    }
}

fn device() -> (I6300esb, Arc<FakeClock>, Arc<Seen>) {
    let clock = Arc::new(FakeClock::default());
    let seen = Arc::new(Seen::default());
    let dev = I6300esb::new(clock.clone(), seen.clone());
    (dev, clock, seen)
}

fn unlock(d: &mut I6300esb) {
    d.write_bar(0, RELOAD_REG, &[0x80]);
    d.write_bar(0, RELOAD_REG, &[0x86]);
}

fn preload(d: &mut I6300esb, reg: u64, v: u32) {
    unlock(d);
    d.write_bar(0, reg, &v.to_le_bytes());
}

fn ping(d: &mut I6300esb) {
    unlock(d);
    d.write_bar(0, RELOAD_REG, &RELOAD_PING.to_le_bytes());
}

fn set_config(d: &mut I6300esb, v: u16) {
    d.write_config(CONFIG_REG, &v.to_le_bytes());
}

fn lock_reg(d: &mut I6300esb) -> u8 {
    let mut b = [0u8];
    d.read_config(LOCK_REG, &mut b);
    b[0]
}

#[test]
fn identity_and_bar_are_qemus() {
    let (mut d, _, _) = device();
    let mut id = [0u8; 4];
    d.read_config(0, &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x25ab_8086);
    let mut class = [0u8; 4];
    d.read_config(8, &mut class);
    assert_eq!(u32::from_le_bytes(class) >> 8, 0x08_80_00);
    let bars: Vec<_> = d.config().bars().collect();
    assert_eq!(
        bars,
        [(
            0,
            BarKind::Memory32 {
                prefetchable: false
            },
            16
        )]
    );
    // Power-on state: reboot on, 1 kHz, interrupt type 0, disabled.
    let mut c = [0u8; 2];
    d.read_config(CONFIG_REG, &mut c);
    assert_eq!(c, [0, 0]);
    assert_eq!(lock_reg(&mut d), 0);
}

#[test]
fn preloads_need_the_unlock_sequence() {
    let (mut d, clock, _) = device();
    // Without the sequence, and with it in the wrong order: ignored.
    d.write_bar(0, TIMER1_REG, &10u32.to_le_bytes());
    d.write_bar(0, RELOAD_REG, &[0x86]);
    d.write_bar(0, RELOAD_REG, &[0x80]);
    d.write_bar(0, TIMER1_REG, &10u32.to_le_bytes());
    assert_eq!(d.stats().locked_writes, 2);
    // A completed sequence lets exactly one write through; 20 bits kept.
    preload(&mut d, TIMER1_REG, 0xfff0_0010);
    d.write_bar(0, TIMER2_REG, &5u32.to_le_bytes());
    assert_eq!(d.stats().locked_writes, 3);
    set_config(&mut d, CONFIG_1MHZ);
    d.write_config(LOCK_REG, &[LOCK_ENABLE]);
    let want = Scale::Mhz1.duration_ns(0x10);
    assert_eq!(want, 0x10 * 32 * 30);
    assert_eq!(d.deadline(), Some(want));
    clock.advance(want);
    assert_eq!(d.expire(), Some(Expiry::Stage2Started));
    // Stage 2 still has its reset preload (0xfffff at 1 MHz: ~1 s).
    assert_eq!(
        d.deadline(),
        Some(want + Scale::Mhz1.duration_ns(PRELOAD_MASK))
    );
}

#[test]
fn enable_counts_stage_one_then_two_then_fires_and_resets() {
    let (mut d, clock, seen) = device();
    preload(&mut d, TIMER1_REG, 100);
    preload(&mut d, TIMER2_REG, 300);
    d.write_config(LOCK_REG, &[LOCK_ENABLE]);
    let s1 = Scale::Khz1.duration_ns(100);
    let s2 = Scale::Khz1.duration_ns(300);
    assert_eq!(s1, (100u64 << 15) * 30);
    assert_eq!(d.deadline(), Some(s1));
    // Early: nothing happens.
    clock.advance(s1 - 1);
    assert_eq!(d.expire(), None);
    clock.advance(1);
    assert_eq!(d.expire(), Some(Expiry::Stage2Started));
    assert_eq!(d.stage(), Stage::Two);
    assert_eq!(d.deadline(), Some(s1 + s2));
    clock.advance(s2);
    assert_eq!(d.expire(), Some(Expiry::Fired));
    // Reset: disabled, timer stopped, preloads back to 0xfffff, and the
    // previous-reboot flag set (both bits, for Linux's driver).
    assert!(!d.enabled());
    assert_eq!(d.deadline(), None);
    assert_eq!(
        *seen.0.lock().unwrap(),
        [Some(s1), Some(s1 + s2), None],
        "deadlines announced"
    );
    let mut r = [0u8; 2];
    d.read_bar(0, RELOAD_REG, &mut r);
    assert_eq!(u16::from_le_bytes(r), 0x1200);
    // A 4-byte read of the same register reads 0, as QEMU's.
    let mut r4 = [0xffu8; 4];
    d.read_bar(0, RELOAD_REG, &mut r4);
    assert_eq!(r4, [0; 4]);
    // Linux clears it by writing bit 12 after an unlock.
    unlock(&mut d);
    d.write_bar(0, RELOAD_REG, &RELOAD_TIMEOUT_FLAG_LINUX.to_le_bytes());
    d.read_bar(0, RELOAD_REG, &mut r);
    assert_eq!(r, [0, 0]);
    let st = d.stats();
    assert_eq!((st.stage1_expiries, st.fired), (1, 1));
}

#[test]
fn pings_restart_stage_one_and_keep_it_from_firing() {
    let (mut d, clock, _) = device();
    preload(&mut d, TIMER1_REG, 10);
    preload(&mut d, TIMER2_REG, 10);
    d.write_config(LOCK_REG, &[LOCK_ENABLE]);
    let stage = Scale::Khz1.duration_ns(10);
    for _ in 0..50 {
        clock.advance(stage - 1);
        assert_eq!(d.expire(), None);
        ping(&mut d);
    }
    // A ping without the unlock is ignored: the timer runs out.
    d.write_bar(0, RELOAD_REG, &RELOAD_PING.to_le_bytes());
    clock.advance(stage);
    assert_eq!(d.expire(), Some(Expiry::Stage2Started));
    // A ping during stage 2 goes back to stage 1.
    ping(&mut d);
    assert_eq!(d.stage(), Stage::One);
    clock.advance(2 * stage);
    assert_eq!(d.expire(), Some(Expiry::Stage2Started));
    clock.advance(stage);
    assert_eq!(d.expire(), Some(Expiry::Fired));
    assert_eq!(d.stats().pings, 51);
}

#[test]
fn lock_bit_freezes_enable_until_reset() {
    let (mut d, clock, _) = device();
    preload(&mut d, TIMER1_REG, 1);
    preload(&mut d, TIMER2_REG, 1);
    d.write_config(LOCK_REG, &[LOCK_ENABLE | LOCK_LOCKED]);
    assert_eq!(lock_reg(&mut d), LOCK_ENABLE | LOCK_LOCKED);
    // Disabling is refused while locked.
    d.write_config(LOCK_REG, &[0]);
    assert!(d.enabled());
    assert!(d.deadline().is_some());
    let stage = Scale::Khz1.duration_ns(1);
    clock.advance(stage);
    d.expire();
    clock.advance(stage);
    assert_eq!(d.expire(), Some(Expiry::Fired));
    // The reset unlocks it.
    assert_eq!(lock_reg(&mut d), 0);
    d.write_config(LOCK_REG, &[LOCK_ENABLE]);
    assert!(d.enabled());
    d.write_config(LOCK_REG, &[0]);
    assert!(!d.enabled());
    assert_eq!(d.deadline(), None);
}

#[test]
fn reboot_off_is_quiet_and_free_running_restarts() {
    let (mut d, clock, _) = device();
    preload(&mut d, TIMER1_REG, 2);
    preload(&mut d, TIMER2_REG, 3);
    set_config(&mut d, CONFIG_NO_REBOOT | CONFIG_INT_TYPE);
    let mut c = [0u8; 2];
    d.read_config(CONFIG_REG, &mut c);
    assert_eq!(u16::from_le_bytes(c), CONFIG_NO_REBOOT | CONFIG_INT_TYPE);
    d.write_config(LOCK_REG, &[LOCK_ENABLE | LOCK_FREE_RUN]);
    let (s1, s2) = (Scale::Khz1.duration_ns(2), Scale::Khz1.duration_ns(3));
    clock.advance(s1);
    assert_eq!(d.expire(), Some(Expiry::Stage2Started));
    clock.advance(s2);
    assert_eq!(d.expire(), Some(Expiry::Quiet));
    // Free-running: stage 1 again.
    assert_eq!(d.stage(), Stage::One);
    assert_eq!(d.deadline(), Some(s1 + s2 + s1));
    // Not free-running: the timer stops after a quiet stage 2.
    d.write_config(LOCK_REG, &[LOCK_ENABLE]);
    clock.advance(s1);
    d.expire();
    clock.advance(s2);
    assert_eq!(d.expire(), Some(Expiry::Quiet));
    assert_eq!(d.deadline(), None);
    assert!(d.enabled());
    assert_eq!(d.stats().fired, 0);
}

#[test]
fn other_widths_fall_through_to_the_plain_header() {
    let (mut d, _, _) = device();
    // A 4-byte write at 0x68 is not the lock register (QEMU: byte only).
    d.write_config(LOCK_REG, &[LOCK_ENABLE, 0, 0, 0]);
    assert!(!d.enabled());
    // A byte write at 0x60 does not change the configuration register.
    d.write_config(CONFIG_REG, &[CONFIG_1MHZ as u8]);
    let mut c = [0u8; 2];
    d.read_config(CONFIG_REG, &mut c);
    assert_eq!(c, [0, 0]);
    // A 4-byte read at 0x60 reads the header's zeros.
    let mut c4 = [0xffu8; 4];
    d.read_config(CONFIG_REG, &mut c4);
    assert_eq!(c4, [0; 4]);
    // BAR writes of other widths, and reads, never panic.
    for len in [1, 2, 3, 4, 8] {
        let mut buf = vec![0xffu8; len];
        for off in 0..16 {
            d.write_bar(0, off, &buf);
            d.read_bar(0, off, &mut buf);
        }
    }
}

#[test]
fn preload_and_scale_bound_the_deadline() {
    // The longest: 0xfffff ticks at 1 kHz, ~1031 s; no overflow.
    assert_eq!(
        Scale::Khz1.duration_ns(u32::MAX),
        u64::from(PRELOAD_MASK) * 32768 * 30
    );
    assert_eq!(Scale::Mhz1.duration_ns(1), 960);
}
