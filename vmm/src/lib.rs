//! shmvm: a small KVM virtual machine monitor whose guest RAM is a host
//! memory backend (ram, file, memfd, shm).

pub mod boot;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod console_out;
pub mod cpuid;
pub mod exit;
pub mod guest_ram;
pub mod hv;
pub mod interrupts;
pub mod io;
pub mod ivshmem;
pub mod ivshmem_doorbell;
pub mod layout;
pub mod machine;
pub mod pci;
pub mod qmp;
pub mod ratelimit;
pub mod sandbox;
pub mod serial_mux;
pub mod signals;
pub mod snapshot;
pub mod stats;
pub mod teardown;
pub mod terminal;
pub mod vcpu;
pub mod vhost_user;
pub mod virtio;
