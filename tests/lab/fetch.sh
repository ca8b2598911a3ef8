#!/usr/bin/env bash
# Fetches the Debian cloud kernel used as both L1 and L2 kernel of the KVM lab
# (see ../../README.md, "The KVM lab") into build/lab/kernel/.
# Idempotent: the extracted tree is kept and reused; a stamp names the version.
set -euo pipefail

out=${LAB_DIR:-build/lab}/kernel
mkdir -p "$out"
out=$(cd "$out" && pwd)

die() { echo "lab-fetch: $*" >&2; exit 1; }
command -v apt-get >/dev/null || die "apt-get not found (the lab needs Debian's apt)"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

# The versioned package the meta package points at, e.g. linux-image-6.1.0-56-cloud-amd64.
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
      awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
    if [ "$(id -u)" -eq 0 ]; then apt-get update -q >/dev/null; fi
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
          awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || die "cannot resolve linux-image-cloud-amd64 (run 'apt-get update')"
ver=${pkg#linux-image-}

# udev for the vng scenarios: virtme-ng's guest init (whose root is L1's /)
# starts systemd-udevd, whose default rules make /dev/virtio-ports/NAME,
# where it finds its script's ports. udevadm is the daemon too; bookworm's
# needs no libsystemd-shared. Into build/lab/udev/ (udevadm and that rule file).
udev=$(dirname "$out")/udev
if [ ! -x "$udev/udevadm" ]; then
    echo "lab-fetch: downloading udev"
    utmp=$(mktemp -d); chmod 755 "$utmp"
    (cd "$utmp" && apt-get download -q udev >/dev/null 2>&1) || die "apt-get download udev failed"
    dpkg-deb -x "$utmp"/udev_*.deb "$utmp/x"
    mkdir -p "$udev"
    cp "$utmp/x/lib/udev/rules.d/50-udev-default.rules" "$udev/"
    cp "$utmp/x/bin/udevadm" "$udev/udevadm.tmp" && mv "$udev/udevadm.tmp" "$udev/udevadm"
    rm -rf "$utmp"
fi

if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$ver" ] && [ -f "$out/vmlinuz" ]; then
    echo "lab-fetch: kernel $ver cached in $out"
    exit 0
fi

echo "lab-fetch: downloading $pkg"
tmp=$(mktemp -d); chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q "$pkg" >/dev/null) || die "apt-get download $pkg failed"
deb=$(ls "$tmp"/*.deb)
rm -rf "$out/root"
mkdir -p "$out/root"
dpkg-deb -x "$deb" "$out/root"
cp "$out/root/boot/vmlinuz-$ver" "$out/vmlinuz"
moddir="$out/root/lib/modules/$ver"
[ -d "$moddir" ] || die "no modules in $pkg"
ln -sfn "root/lib/modules/$ver" "$out/modules"
echo "$ver" >"$out/.stamp"
echo "lab-fetch: kernel $ver in $out"
