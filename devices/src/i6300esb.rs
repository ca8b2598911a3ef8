//! The Intel 6300ESB watchdog timer (8086:25ab), as QEMU's `-device
//! i6300esb` models it: the one virtme-ng adds to every x86 guest, and the
//! one Linux drives through its `i6300esb` module (`/dev/watchdog`).
//!
//! The registers:
//! - configuration space 0x60 (16-bit): bit 5 set turns the stage-2
//!   "reboot" off, bit 2 picks the 1 MHz scale (else 1 kHz), bits 1:0 the
//!   stage-1 interrupt type (QEMU, like this model, raises none);
//! - configuration space 0x68 (8-bit): bit 1 enables the timer, bit 0 locks
//!   the register until reset, bit 2 is free-running mode;
//! - BAR0, 16 bytes of memory: the stage-1 and stage-2 preload values at
//!   0x00 and 0x04 (20 bits, 32-bit writes) and the reload register at 0x0c.
//!   Each write to the preloads or the reload register must follow the
//!   unlock sequence 0x80, 0x86 written to 0x0c; a 16-bit write of bit 8
//!   there reloads the timer (the guest's "ping"), bit 9 (or bit 12, which
//!   Linux's driver uses) clears the "previous reboot was the watchdog's"
//!   flag, which a 16-bit read of 0x0c returns in both bits.
//!
//! Enabling (0 -> 1) or a ping starts stage 1 from its preload; when stage
//! 1 runs out stage 2 starts from its own; when stage 2 runs out and reboot
//! is on, the watchdog fires: the owner performs `-watchdog-action` and the
//! device goes back to its reset state (disabled). Each tick is 2^15 (1 kHz
//! scale) or 2^5 (1 MHz scale) PCI clocks of 30 ns.
//!
//! The model keeps no thread: it computes the deadline on its [`Clock`]
//! and tells its owner through [`TimerEvents`]; the owner calls
//! [`I6300esb::expire`] when the clock passes it. Tests inject the clock.

use std::sync::Arc;

use crate::pci::{BarChange, BarKind, ConfigSpace, PciDevice, PciIds};

pub const VENDOR_ID: u16 = 0x8086;
pub const DEVICE_ID: u16 = 0x25ab;
/// Class 08 (base system peripheral), subclass 80 (other).
pub const CLASS: u32 = 0x08_80_00;
/// QEMU's default subsystem IDs for a function that sets none.
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
pub const SUBSYSTEM_ID: u16 = 0x1100;

/// The register BAR and its size.
pub const REGISTER_BAR: usize = 0;
pub const REGISTER_BAR_SIZE: u64 = 16;

/// Configuration space registers.
pub const CONFIG_REG: usize = 0x60;
pub const LOCK_REG: usize = 0x68;

/// BAR0 registers.
pub const TIMER1_REG: u64 = 0x00;
pub const TIMER2_REG: u64 = 0x04;
pub const RELOAD_REG: u64 = 0x0c;

/// Lock register bits.
pub const LOCK_FREE_RUN: u8 = 1 << 2;
pub const LOCK_ENABLE: u8 = 1 << 1;
pub const LOCK_LOCKED: u8 = 1 << 0;

/// Configuration register bits.
pub const CONFIG_NO_REBOOT: u16 = 1 << 5;
pub const CONFIG_1MHZ: u16 = 1 << 2;
pub const CONFIG_INT_TYPE: u16 = 0x3;

/// Reload register bits.
pub const RELOAD_PING: u16 = 1 << 8;
pub const RELOAD_TIMEOUT_FLAG: u16 = 1 << 9;
/// The bit Linux's driver writes and reads for the flag.
pub const RELOAD_TIMEOUT_FLAG_LINUX: u16 = 1 << 12;

/// The unlock sequence, written to the reload register.
pub const UNLOCK1: u32 = 0x80;
pub const UNLOCK2: u32 = 0x86;

/// The preload registers are 20 bits wide.
pub const PRELOAD_MASK: u32 = 0xf_ffff;
/// One PCI clock.
pub const PCI_CLOCK_NS: u64 = 30;

/// Nanoseconds on a monotonic clock that stands still while the VM is
/// paused (QEMU's virtual clock).
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> u64;
}

/// What the owner of the timer hears: the deadline moved (None: stopped).
/// Called with the device locked: the owner must not lock it here.
pub trait TimerEvents: Send + Sync {
    fn deadline_changed(&self, deadline_ns: Option<u64>);
}

/// The tick rate the configuration register picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// 2^15 PCI clocks a tick (~0.98 ms).
    Khz1,
    /// 2^5 PCI clocks a tick (~0.96 us).
    Mhz1,
}

impl Scale {
    /// How long `ticks` last at this scale.
    pub fn duration_ns(self, ticks: u32) -> u64 {
        let shift = match self {
            Scale::Khz1 => 15,
            Scale::Mhz1 => 5,
        };
        (u64::from(ticks & PRELOAD_MASK) << shift) * PCI_CLOCK_NS
    }
}

/// Which preload the running timer counts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    One,
    Two,
}

/// What happened when the deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Stage 1 ran out: stage 2 runs now.
    Stage2Started,
    /// Stage 2 ran out with reboot on: perform the watchdog action (the
    /// device is back in its reset state).
    Fired,
    /// Stage 2 ran out with reboot off: nothing (the timer restarts at
    /// stage 1 in free-running mode).
    Quiet,
}

/// What the guest did with the device, for exit statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogStats {
    /// Reloads (pings) while enabled.
    pub pings: u64,
    pub stage1_expiries: u64,
    /// Stage-2 expiries that performed the action.
    pub fired: u64,
    /// Writes to the preload and reload registers that came without the
    /// unlock sequence (ignored).
    pub locked_writes: u64,
}

/// The registers a reset restores (the previous-reboot flag survives it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Regs {
    reboot: bool,
    scale: Scale,
    int_type: u8,
    free_run: bool,
    locked: bool,
    enabled: bool,
    preload: [u32; 2],
    stage: Stage,
    /// 0, then 1 after 0x80, then 2 after 0x86: the next write goes through.
    unlock: u8,
}

impl Default for Regs {
    fn default() -> Self {
        Regs {
            reboot: true,
            scale: Scale::Khz1,
            int_type: 0,
            free_run: false,
            locked: false,
            enabled: false,
            preload: [PRELOAD_MASK; 2],
            stage: Stage::One,
            unlock: 0,
        }
    }
}

/// The i6300esb function.
pub struct I6300esb {
    config: ConfigSpace,
    regs: Regs,
    previous_reboot: bool,
    deadline: Option<u64>,
    clock: Arc<dyn Clock>,
    events: Arc<dyn TimerEvents>,
    stats: WatchdogStats,
}

impl std::fmt::Debug for I6300esb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I6300esb")
            .field("regs", &self.regs)
            .field("deadline", &self.deadline)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl I6300esb {
    /// A disabled watchdog timing on `clock`, telling `events` where its
    /// deadline is.
    pub fn new(clock: Arc<dyn Clock>, events: Arc<dyn TimerEvents>) -> Self {
        let mut config = ConfigSpace::new(PciIds {
            vendor: VENDOR_ID,
            device: DEVICE_ID,
            revision: 0,
            class: CLASS,
            subsystem_vendor: SUBSYSTEM_VENDOR_ID,
            subsystem: SUBSYSTEM_ID,
        });
        // A 16-byte BAR is always valid: the one fixed size of this device.
        let _ = config.add_bar(
            REGISTER_BAR,
            BarKind::Memory32 {
                prefetchable: false,
            },
            REGISTER_BAR_SIZE,
        );
        I6300esb {
            config,
            regs: Regs::default(),
            previous_reboot: false,
            deadline: None,
            clock,
            events,
            stats: WatchdogStats::default(),
        }
    }

    pub fn stats(&self) -> WatchdogStats {
        self.stats
    }

    /// When the running stage runs out (None: the timer is stopped).
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }

    pub fn enabled(&self) -> bool {
        self.regs.enabled
    }

    pub fn stage(&self) -> Stage {
        self.regs.stage
    }

    fn set_deadline(&mut self, d: Option<u64>) {
        if self.deadline != d {
            self.deadline = d;
            self.events.deadline_changed(d);
        }
    }

    /// Starts `stage` from its preload (nothing while disabled).
    fn restart(&mut self, stage: Stage) {
        if !self.regs.enabled {
            return;
        }
        self.regs.stage = stage;
        let preload = match stage {
            Stage::One => self.regs.preload[0],
            Stage::Two => self.regs.preload[1],
        };
        let at = self
            .clock
            .now_ns()
            .saturating_add(self.regs.scale.duration_ns(preload));
        self.set_deadline(Some(at));
    }

    /// Back to the power-on state, keeping the previous-reboot flag.
    pub fn reset(&mut self) {
        self.regs = Regs::default();
        self.set_deadline(None);
    }

    /// The owner's timer saw the clock reach the deadline: runs the stage
    /// out (None: the deadline moved, or the timer stopped, meanwhile).
    pub fn expire(&mut self) -> Option<Expiry> {
        let deadline = self.deadline?;
        if self.clock.now_ns() < deadline {
            return None;
        }
        match self.regs.stage {
            Stage::One => {
                self.stats.stage1_expiries += 1;
                self.restart(Stage::Two);
                Some(Expiry::Stage2Started)
            }
            Stage::Two => {
                let fired = self.regs.reboot;
                if fired {
                    self.stats.fired += 1;
                    self.previous_reboot = true;
                    self.reset();
                }
                if self.regs.free_run {
                    self.restart(Stage::One);
                } else {
                    self.set_deadline(None);
                }
                Some(if fired { Expiry::Fired } else { Expiry::Quiet })
            }
        }
    }

    /// The unlock sequence's steps; true if `value` was one of them.
    fn unlock_step(&mut self, offset: u64, value: u32) -> bool {
        if offset != RELOAD_REG {
            return false;
        }
        if value == UNLOCK1 {
            self.regs.unlock = 1;
            true
        } else if value == UNLOCK2 && self.regs.unlock == 1 {
            self.regs.unlock = 2;
            true
        } else {
            false
        }
    }

    /// Whether the write after a completed unlock may go through (the
    /// unlock is used up either way).
    fn take_unlock(&mut self) -> bool {
        let open = self.regs.unlock == 2;
        if open {
            self.regs.unlock = 0;
        } else {
            self.stats.locked_writes += 1;
        }
        open
    }

    fn write_reload(&mut self, value: u16) {
        if value & RELOAD_PING != 0 {
            if self.regs.enabled {
                self.stats.pings += 1;
            }
            self.restart(Stage::One);
        }
        if value & (RELOAD_TIMEOUT_FLAG | RELOAD_TIMEOUT_FLAG_LINUX) != 0 {
            self.previous_reboot = false;
        }
    }

    fn write_lock(&mut self, value: u8) {
        if self.regs.locked {
            return;
        }
        let was = self.regs.enabled;
        self.regs.locked = value & LOCK_LOCKED != 0;
        self.regs.free_run = value & LOCK_FREE_RUN != 0;
        self.regs.enabled = value & LOCK_ENABLE != 0;
        if !was && self.regs.enabled {
            self.restart(Stage::One);
        } else if !self.regs.enabled {
            self.set_deadline(None);
        }
    }

    fn config_value(&self) -> u16 {
        let mut v = u16::from(self.regs.int_type);
        if !self.regs.reboot {
            v |= CONFIG_NO_REBOOT;
        }
        if self.regs.scale == Scale::Mhz1 {
            v |= CONFIG_1MHZ;
        }
        v
    }

    fn lock_value(&self) -> u8 {
        let mut v = 0;
        if self.regs.free_run {
            v |= LOCK_FREE_RUN;
        }
        if self.regs.locked {
            v |= LOCK_LOCKED;
        }
        if self.regs.enabled {
            v |= LOCK_ENABLE;
        }
        v
    }
}

fn le(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

impl PciDevice for I6300esb {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    /// QEMU decodes its two registers only at their own widths; any other
    /// access is the plain header's (zeros there).
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        match (offset, data.len()) {
            (CONFIG_REG, 2) => data.copy_from_slice(&self.config_value().to_le_bytes()),
            (LOCK_REG, 1) => data[0] = self.lock_value(),
            _ => self.config.read(offset, data),
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<BarChange> {
        match (offset, data.len()) {
            (CONFIG_REG, 2) => {
                let v = u16::from_le_bytes([data[0], data[1]]);
                self.regs.reboot = v & CONFIG_NO_REBOOT == 0;
                self.regs.scale = if v & CONFIG_1MHZ != 0 {
                    Scale::Mhz1
                } else {
                    Scale::Khz1
                };
                self.regs.int_type = (v & CONFIG_INT_TYPE) as u8;
                Vec::new()
            }
            (LOCK_REG, 1) => {
                self.write_lock(data[0]);
                Vec::new()
            }
            _ => self.config.write(offset, data),
        }
    }

    fn read_bar(&mut self, _index: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == RELOAD_REG && data.len() == 2 && self.previous_reboot {
            let v = RELOAD_TIMEOUT_FLAG | RELOAD_TIMEOUT_FLAG_LINUX;
            data.copy_from_slice(&v.to_le_bytes());
        }
    }

    fn write_bar(&mut self, _index: usize, offset: u64, data: &[u8]) {
        let value = le(data);
        if self.unlock_step(offset, value) {
            return;
        }
        match data.len() {
            // Bytes only ever take part in the unlock sequence.
            1 => {}
            // The unlock is used up by any write of these widths.
            // (take_unlock first: a 16-bit write elsewhere uses it up too.)
            2 if self.take_unlock() && offset == RELOAD_REG => self.write_reload(value as u16),
            4 if self.take_unlock() => match offset {
                TIMER1_REG => self.regs.preload[0] = value & PRELOAD_MASK,
                TIMER2_REG => self.regs.preload[1] = value & PRELOAD_MASK,
                _ => {}
            },
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "i6300esb_tests.rs"]
mod tests;
