//! Host-side unit tests of the test kernel's pure modules (command-line
//! parsing, free-RAM arithmetic, shared patterns). The kernel itself only
//! links for bare metal, so `make testkernel-unit` compiles these files
//! into a normal test binary: `rustc --edition 2024 --test host_tests.rs`.

#[path = "src/params.rs"]
mod params;
#[path = "src/ranges.rs"]
mod ranges;
