#!/usr/bin/env bash
# Builds the arm64 lab's vhost-user back-end: vhost-device-rng from crates.io,
# cross-built for aarch64 with the project's aarch64 toolchain (Debian's Rust
# 1.96 and aarch64-linux-gnu-gcc, `make deps`), static, into
# build/aarch64/vhost/bin/. Pure Rust: no arm64 C library is needed. Cached:
# the binary at its pinned version is not rebuilt. Cold: ~2-3 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
name=vhost-device-rng version=0.1.0
root=build/aarch64/vhost
bin=$root/bin/$name
stamp=$root/.$name-$version
if [ -x "$bin" ] && [ -f "$stamp" ]; then
    echo "deps: $name $version (aarch64) present"
    exit 0
fi
echo "deps: cargo install --locked $name@$version --target aarch64-unknown-linux-gnu"
PATH=/usr/bin:$PATH CARGO_TARGET_DIR=target/cross-backends \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo install --locked -q "$name@$version" --target aarch64-unknown-linux-gnu --root "$root"
file "$bin" | grep -q "ARM aarch64.*statically linked" || { echo "deps: $bin is not a static aarch64 binary" >&2; exit 1; }
touch "$stamp"
