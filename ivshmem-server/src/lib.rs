//! QEMU's ivshmem server protocol (`docs/specs/ivshmem-spec.rst` in QEMU),
//! both ends of it:
//!
//! - [`server::Server`]: what QEMU's `ivshmem-server` does, over shmvm's
//!   `memory` backends (a named POSIX shm object or a file);
//! - [`peer::Peer`]: a host program as a peer: connect, map the shared
//!   memory, learn its id, ring `(peer, vector)`, wait for doorbells and see
//!   peers come and go;
//! - [`protocol`]: the framing both use (and the VMM's `ivshmem-doorbell`
//!   device): 8-byte little-endian signed messages, each with at most one
//!   file descriptor (SCM_RIGHTS).
//!
//! The conversation, exactly as QEMU's server has it: on connect the new
//! peer gets the protocol version (0), its id, then -1 with the shared
//! memory fd; every existing peer gets the new id once per vector with the
//! new peer's eventfd for that vector; the new peer gets each existing
//! peer's id once per vector with its eventfds, then its own id once per
//! vector with its own eventfds. When a peer leaves (or sends anything,
//! which drops it), the others get its id with no fd. At exit the server
//! frees its peers in connection order, each remaining one told of each.

pub mod peer;
pub mod pingpong;
pub mod protocol;
pub mod server;

pub use peer::{Peer, PeerEvent};
pub use protocol::{Notice, PROTOCOL_VERSION, ProtocolError, Setup};
pub use server::{Server, ServerConfig, ShmSource};
