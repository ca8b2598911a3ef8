//! Per-architecture machines behind the one seam of `lib.rs`. x86_64's
//! lives in the crate's older files (`layout.rs`, `boot/`, `machine/`);
//! aarch64's is here. Its pure parts (layout, image header, device tree)
//! build and are unit-tested on every host; its machine only on aarch64.

pub mod aarch64;
