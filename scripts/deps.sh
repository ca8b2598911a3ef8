#!/usr/bin/env bash
# Installs the system packages shmvm's build, tests and lab need.
# QEMU 10 (for memory-backend-shm and the KVM lab) comes from bookworm-backports.
set -euo pipefail

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu)
# qemu-storage-daemon: the vhost-user-blk back-end of the tests and the lab.
command -v qemu-storage-daemon >/dev/null || need+=(qemu-utils)
# libc6-dev: static glibc for the guest tool (make guest-tool, the KVM lab).
for p in busybox-static cpio lz4 time hyperfine acpica-tools libc6-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && { echo "deps: all present"; exit 0; }

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
apt-get install -y -q busybox-static cpio lz4 time hyperfine
# iasl checks the VMM's ACPI tables (vmm unit tests).
apt-get install -y -q acpica-tools
# Static glibc for the guest tool and the KVM lab.
apt-get install -y -q libc6-dev
