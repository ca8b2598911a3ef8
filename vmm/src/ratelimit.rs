//! Rate limiting for guest-triggered log lines: the one implementation is
//! `devices::ratelimit` (device models use it too); re-exported here.

pub use devices::ratelimit::*;
