//! The host loops of `make bench-ivshmem` on their own (`bench-ivshmem`
//! runs them in-process): `host-bandwidth [MIB]` prints `host write_mbps=..
//! read_mbps=.. memcpy_mbps=.. bytes=..` (MB = 10^6 bytes).

use shmvm_tests::bandwidth;

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let h = bandwidth::host(mib);
    println!(
        "host write_mbps={} read_mbps={} memcpy_mbps={} bytes={}",
        h.write_mbps, h.read_mbps, h.memcpy_mbps, h.bytes
    );
}
