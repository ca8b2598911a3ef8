//! A QMP monitor: QEMU's JSON control protocol on unix sockets, so QEMU's
//! own clients (`qemu.qmp`, `qmp-shell`, libvirt-style tooling) drive
//! shmvm unchanged.
//!
//! The options (`-qmp`, `-chardev socket,server=on` + `-mon`) are parsed
//! by the configuration layer ([`crate::config::chardev`]) into
//! [`crate::config::MonitorConfig`]s.
//!
//! - [`server`]: the sockets (mode 0600, removed at exit), one thread,
//!   bounded per-client input and output;
//! - [`protocol`]: greeting, negotiation, validation, error classes,
//!   commands, HMP passthrough;
//! - [`control`]: what the machine implements ([`protocol::Machine`]) and
//!   the events it sends.

pub mod control;
pub mod protocol;
pub mod server;

pub use control::{Event, EventSink, Request, RunState, ShutdownCause};
pub use server::{Server, StopHandle};
