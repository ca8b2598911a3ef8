#!/usr/bin/env bash
# Installs the real vhost-user back-ends the vhost-user tests and the lab
# start: virtiofsd (vhost-user-fs), vhost-device-vsock and vhost-device-rng,
# all from crates.io into ~/.cargo/bin. Cached: a back-end already on PATH at
# its pinned version is not rebuilt, so a second run is instant. A cold run
# costs ~8 min on 2 cores (virtiofsd ~3, vsock ~3, rng ~1.5).
# qemu-storage-daemon (vhost-user-blk) comes from scripts/deps.sh.
set -euo pipefail

# name version (pinned so a fresh machine builds what the tests were run with)
backends=(
    "virtiofsd 1.14.0"
    "vhost-device-vsock 0.3.0"
    "vhost-device-rng 0.1.0"
)

export PATH="$HOME/.cargo/bin:$PATH"
todo=()
for b in "${backends[@]}"; do
    set -- $b
    if "$1" --version 2>/dev/null | grep -q "$2"; then
        echo "deps: $1 $2 present"
    else
        todo+=("$1@$2")
    fi
done
[ ${#todo[@]} -eq 0 ] && exit 0

# virtiofsd links libseccomp and libcap-ng.
need=()
for p in libseccomp-dev libcap-ng-dev pkg-config; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "deps: missing ${need[*]}; run 'make deps' as root" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
for t in "${todo[@]}"; do
    echo "deps: cargo install --locked $t"
    cargo install --locked -q "$t"
done
