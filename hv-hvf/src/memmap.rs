//! Guest RAM slots for `hv_vm_map`: KVM's slot model (a slot number, set
//! again to replace, size 0 to delete) over HVF, which maps whole host
//! pages (16 KiB on Apple silicon: the host address, the guest address and
//! the size must all be multiples of it) and refuses overlapping maps.
//! Checked here, before Hypervisor.framework sees the region, so a bad
//! region fails with a message that names it.

/// One guest RAM region: `size` bytes of host memory at `host`, seen by
/// the guest at `gpa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub gpa: u64,
    pub host: usize,
    pub size: u64,
    pub readonly: bool,
}

impl Region {
    fn end(&self) -> Option<u64> {
        self.gpa.checked_add(self.size)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error(
        "guest RAM at {gpa:#x}: the {what} {value:#x} is not a multiple of the host page size ({page} bytes)"
    )]
    Misaligned {
        gpa: u64,
        what: &'static str,
        value: u64,
        page: u64,
    },
    #[error("guest RAM at {gpa:#x}: {size:#x} bytes run past the end of the address space")]
    Wraps { gpa: u64, size: u64 },
    #[error("guest RAM at {gpa:#x} (slot {slot}) overlaps slot {other} at {other_gpa:#x}")]
    Overlap {
        slot: u32,
        gpa: u64,
        other: u32,
        other_gpa: u64,
    },
}

/// Whether `r` can be mapped with pages of `page` bytes.
pub fn check(r: &Region, page: u64) -> Result<(), MapError> {
    let misaligned = |what, value: u64| MapError::Misaligned {
        gpa: r.gpa,
        what,
        value,
        page,
    };
    if !r.gpa.is_multiple_of(page) {
        return Err(misaligned("guest address", r.gpa));
    }
    if !(r.host as u64).is_multiple_of(page) {
        return Err(misaligned("host address", r.host as u64));
    }
    if !r.size.is_multiple_of(page) {
        return Err(misaligned("size", r.size));
    }
    if r.end().is_none() {
        return Err(MapError::Wraps {
            gpa: r.gpa,
            size: r.size,
        });
    }
    Ok(())
}

/// What `set` asks of Hypervisor.framework, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Unmap { gpa: u64, size: u64 },
    Map(Region),
}

/// The slots currently mapped.
#[derive(Debug, Default)]
pub struct MemoryMap {
    slots: Vec<(u32, Region)>,
}

impl MemoryMap {
    /// Sets `slot` to `r` (a size of 0 deletes it), KVM_SET_USER_MEMORY_REGION's
    /// rules; returns the unmap and map calls to make, and records the new
    /// map only once the caller says they succeeded ([`MemoryMap::commit`]).
    pub fn plan(&self, slot: u32, r: Region, page: u64) -> Result<Vec<Change>, MapError> {
        let mut changes = Vec::with_capacity(2);
        if let Some((_, old)) = self.slots.iter().find(|(s, _)| *s == slot) {
            changes.push(Change::Unmap {
                gpa: old.gpa,
                size: old.size,
            });
        }
        if r.size == 0 {
            return Ok(changes);
        }
        check(&r, page)?;
        let end = r.end().unwrap_or(u64::MAX);
        for (other, o) in self.slots.iter().filter(|(s, _)| *s != slot) {
            let o_end = o.end().unwrap_or(u64::MAX);
            if r.gpa < o_end && o.gpa < end {
                return Err(MapError::Overlap {
                    slot,
                    gpa: r.gpa,
                    other: *other,
                    other_gpa: o.gpa,
                });
            }
        }
        changes.push(Change::Map(r));
        Ok(changes)
    }

    /// Records `slot` as `r` (size 0: removed) after its changes were made.
    pub fn commit(&mut self, slot: u32, r: Region) {
        self.slots.retain(|(s, _)| *s != slot);
        if r.size != 0 {
            self.slots.push((slot, r));
        }
    }

    /// Every mapped region (for teardown).
    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.slots.iter().map(|(_, r)| r)
    }
}

/// The host's page size (16 KiB on Apple silicon, 4 KiB on most others).
pub fn host_page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&p| p > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P16K: u64 = 16 << 10;

    fn region(gpa: u64, host: usize, size: u64) -> Region {
        Region {
            gpa,
            host,
            size,
            readonly: false,
        }
    }

    #[test]
    fn regions_must_be_whole_16k_pages() {
        assert_eq!(
            check(&region(0x4000_0000, 0x1_0000_0000, 1 << 30), P16K),
            Ok(())
        );
        // 4 KiB aligned is not enough on Apple silicon.
        let e = check(&region(0x4000_1000, 0x1_0000_0000, 1 << 20), P16K).unwrap_err();
        assert_eq!(
            e.to_string(),
            "guest RAM at 0x40001000: the guest address 0x40001000 is not a multiple of the host page size (16384 bytes)"
        );
        assert!(matches!(
            check(&region(0x4000_0000, 0x1_0000_3000, 1 << 20), P16K),
            Err(MapError::Misaligned {
                what: "host address",
                ..
            })
        ));
        assert!(matches!(
            check(&region(0x4000_0000, 0x1_0000_0000, (1 << 20) + 4096), P16K),
            Err(MapError::Misaligned { what: "size", .. })
        ));
        // The same region is fine with 4 KiB pages.
        assert_eq!(
            check(&region(0x4000_1000, 0x1_0000_3000, 0x5000), 4096),
            Ok(())
        );
        assert!(matches!(
            check(&region(u64::MAX - P16K + 1, 0, 2 * P16K), P16K),
            Err(MapError::Wraps { .. })
        ));
    }

    #[test]
    fn slots_replace_delete_and_refuse_overlaps() {
        let mut m = MemoryMap::default();
        let ram = region(0x4000_0000, 0x1_0000_0000, 1 << 30);
        assert_eq!(m.plan(0, ram, P16K), Ok(vec![Change::Map(ram)]));
        m.commit(0, ram);
        // Another slot over the same addresses is refused, naming both.
        let clash = region(0x7fff_c000, 0x2_0000_0000, 2 * P16K);
        assert_eq!(
            m.plan(1, clash, P16K).unwrap_err().to_string(),
            "guest RAM at 0x7fffc000 (slot 1) overlaps slot 0 at 0x40000000"
        );
        // Adjacent is fine.
        let next = region(0x8000_0000, 0x2_0000_0000, P16K);
        assert_eq!(m.plan(1, next, P16K), Ok(vec![Change::Map(next)]));
        m.commit(1, next);
        // Setting a slot again unmaps the old region first.
        let smaller = region(0x4000_0000, 0x1_0000_0000, 1 << 20);
        assert_eq!(
            m.plan(0, smaller, P16K),
            Ok(vec![
                Change::Unmap {
                    gpa: 0x4000_0000,
                    size: 1 << 30
                },
                Change::Map(smaller)
            ])
        );
        m.commit(0, smaller);
        // Size 0 deletes.
        let gone = region(0, 0, 0);
        assert_eq!(
            m.plan(1, gone, P16K),
            Ok(vec![Change::Unmap {
                gpa: 0x8000_0000,
                size: P16K
            }])
        );
        m.commit(1, gone);
        assert_eq!(m.regions().copied().collect::<Vec<_>>(), vec![smaller]);
        // A refused plan changes nothing.
        assert!(m.plan(2, region(0x4000_0000, 0x1000, P16K), P16K).is_err());
        assert_eq!(m.regions().count(), 1);
    }

    #[test]
    fn the_host_page_size_is_a_power_of_two() {
        let p = host_page_size();
        assert!(p >= 4096 && p.is_power_of_two(), "{p}");
    }
}
