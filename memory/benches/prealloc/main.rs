//! Preallocation benchmark (`make bench-memory`).
//!
//! Preallocates SIZE (default 4 GiB) with each backend (ram, file on /dev/shm, memfd,
//! shm) and 1 and 2 threads, and compares, in the same run and interleaved:
//! - the kernel's limit: one MADV_POPULATE_WRITE over a fresh anonymous mapping;
//! - QEMU preallocating the same backend (`qemu-system-x86_64 -machine none -object
//!   memory-backend-...,prealloc=on,prealloc-threads=N -monitor stdio`): the time until
//!   its monitor prompt appears, minus the same for a QEMU run without prealloc.
//!
//! Usage: prealloc [--runs N] [--size SIZE] [--no-qemu]
//!
//! Linux only: its reference points (MADV_POPULATE_WRITE, memfd, QEMU's
//! memory-backend-memfd) exist nowhere else.

#[cfg(target_os = "linux")]
mod linux;

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
    #[cfg(not(target_os = "linux"))]
    {
        eprintln!("prealloc: this benchmark needs Linux (memfd, MADV_POPULATE_WRITE)");
        std::process::exit(1);
    }
}
