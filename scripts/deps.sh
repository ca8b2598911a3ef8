#!/usr/bin/env bash
# Installs the system packages shmvm's build, tests and lab need.
# QEMU 10 (for memory-backend-shm and the KVM lab) comes from bookworm-backports.
set -euo pipefail

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu)
# qemu-storage-daemon: the vhost-user-blk back-end of the tests and the lab.
command -v qemu-storage-daemon >/dev/null || need+=(qemu-utils)
# libc6-dev: static glibc for the guest tool (make guest-tool, the KVM lab).
# rustc-web, cargo-web, rust-web-clippy, rust-web-src: Debian's Rust 1.96 and
# its std source, for make check-portable (macOS and BSD type-checks).
# kmod: modprobe and depmod, for virtme-ng's initramfs in the KVM lab.
for p in busybox-static cpio lz4 time hyperfine acpica-tools libc6-dev kmod \
    rustc-web cargo-web rust-web-clippy rust-web-src; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done

# qemu.qmp (PyPI), QEMU's own QMP client, in a project venv (build/venv):
# the QMP tests and bench drive shmvm and QEMU with it. Debian 12's python3
# is "externally managed", so no system-wide pip.
VENV="$(cd "$(dirname "$0")/.." && pwd)/build/venv"
python_deps() {
    if ! "$VENV/bin/python3" -c 'import qemu.qmp' 2>/dev/null; then
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q 'qemu.qmp>=0.0.3'
    fi
    echo "deps: qemu.qmp in $VENV"
    # virtme-ng: its `vng --dry-run` command line is what shmvm must take.
    "$VENV/bin/vng" --version 2>/dev/null | grep -q 'virtme-ng 1.42' ||
        "$VENV/bin/pip" install -q 'virtme-ng==1.42'
}

python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)

# The aarch64 build and the arm64 lab (README, "Architectures"): Debian's Rust 1.96
# (/usr/bin/cargo, behind rustup's on PATH) with the arm64 std, the cross
# linker, qemu-system-aarch64 for the arm64 L1.
arm64=0
dpkg --print-foreign-architectures | grep -qx arm64 || arm64=1
# (arm64 busybox would replace the host's: tests/lab/fetch-arm64.sh unpacks it.)
for p in rustc-web cargo-web rust-web-clippy libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || arm64=1
done
command -v qemu-system-aarch64 >/dev/null || arm64=1
[ $arm64 -eq 1 ] && need+=(arm64-toolchain)

# The real vhost-user back-ends (virtiofsd, vhost-device-vsock,
# vhost-device-rng) from crates.io: see scripts/vhost-backends.sh.
backends() { "$(dirname "$0")/vhost-backends.sh"; }
[ ${#need[@]} -eq 0 ] && { echo "deps: all present"; python_deps; backends; exit 0; }

if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing ${need[*]}; run 'make deps' as root" >&2
    exit 1
fi

src=/etc/apt/sources.list.d/shmvm-backports.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat >"$src" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q -t bookworm-backports qemu-system-x86 qemu-utils
apt-get install -y -q busybox-static cpio lz4 time hyperfine kmod
# iasl checks the VMM's ACPI tables (vmm unit tests).
apt-get install -y -q acpica-tools
# Static glibc for the guest tool and the KVM lab.
apt-get install -y -q libc6-dev
# Debian's Rust 1.96 (bookworm-security) with clippy and the std source:
# make check-portable builds std for macOS and the BSDs from it. Its binaries
# land in /usr/bin, behind rustup's on PATH.
apt-get install -y -q --no-install-recommends rustc-web cargo-web rust-web-clippy rust-web-src
# python3-venv: the project venv for qemu.qmp (above).
apt-get install -y -q python3-venv
# aarch64: cross Rust and linker, the arm64 L1's QEMU (no UEFI firmware:
# the lab boots with -kernel) and its busybox (see above).
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get update -q
fi
apt-get install -y -q --no-install-recommends rustc-web cargo-web rust-web-clippy libstd-rust-web-dev:arm64 \
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross
apt-get install -y -q -t bookworm-backports --no-install-recommends qemu-system-arm
python_deps
backends
