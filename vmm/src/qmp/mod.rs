//! A QMP monitor: QEMU's JSON control protocol on unix sockets, so QEMU's
//! own clients (`qemu.qmp`, `qmp-shell`, libvirt-style tooling) drive
//! shmvm unchanged.
//!
//! - [`config`]: `-qmp` and `-chardev socket,server=on` + `-mon`;
//! - [`server`]: the sockets (mode 0600, removed at exit), one thread,
//!   bounded per-client input and output;
//! - [`protocol`]: greeting, negotiation, validation, error classes,
//!   commands, HMP passthrough;
//! - [`control`]: what the machine implements ([`protocol::Machine`]) and
//!   the events it sends.

pub mod config;
pub mod control;
pub mod protocol;
pub mod server;

pub use config::MonitorConfig;
pub use control::{Event, EventSink, Request, RunState, ShutdownCause};
pub use server::{Server, StopHandle};
