#!/usr/bin/env bash
# Builds ivshmem_db.ko against a lab kernel's headers (Debian's cloud
# kernel, the version linux-image-cloud-<arch> points at, or $KVER):
# downloads linux-headers-<ver>-cloud-<arch>, its -common package and
# linux-kbuild with apt-get download, extracts them under build/guest/kheaders
# (no root install) and runs kbuild.
#   build.sh          x86 lab (amd64): build/guest/ivshmem_db.ko
#   build.sh arm64    arm64 lab, cross-built with aarch64-linux-gnu-gcc (the
#                     headers are arch:arm64, the kbuild tools the host's):
#                     build/guest/arm64/ivshmem_db.ko
set -euo pipefail
cd "$(dirname "$0")/../.."
arch=${1:-amd64}
case $arch in
    amd64) out=build/guest pkgarch= kmake=() ;;
    arm64) out=build/guest/arm64 pkgarch=:arm64 kmake=(ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-) ;;
    *) echo "ivshmem-db: unknown architecture '$arch' (amd64 or arm64)" >&2; exit 2 ;;
esac
kver=${KVER:-$(apt-cache depends "linux-image-cloud-$arch$pkgarch" 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {sub("linux-image-", "", $2); sub(":.*", "", $2); print $2; exit}')}
[[ -n $kver ]] || { echo "ivshmem-db: can't tell the $arch cloud kernel's version (apt-get update?)" >&2; exit 1; }
base=${kver%-cloud-$arch}
hdr=build/guest/kheaders/$kver
if [[ ! -d $hdr/root/usr/src/linux-headers-$kver ]]; then
    rm -rf "$hdr"
    mkdir -p "$hdr/debs"
    series=$(sed 's/^\([0-9]*\.[0-9]*\).*/\1/' <<<"$kver")
    (cd "$hdr/debs" && apt-get download "linux-headers-$kver$pkgarch" "linux-headers-$base-common" "linux-kbuild-$series")
    for d in "$hdr"/debs/*.deb; do dpkg-deb -x "$d" "$hdr/root"; done
fi
src=$(realpath "$hdr/root/usr/src/linux-headers-$kver")
common=$(realpath "$hdr/root/usr/src/linux-headers-$base-common")
# The headers' Makefile includes the -common tree by its installed path.
sed -i "s|^include .*|include $common/Makefile|" "$src/Makefile"
# Built in a copy: the amd64 and arm64 builds leave objects side by side.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp guest/ivshmem-db/Kbuild guest/ivshmem-db/ivshmem_db.c "$work/"
make -C "$src" "${kmake[@]}" M="$work" modules
mkdir -p "$out"
cp "$work/ivshmem_db.ko" "$out/ivshmem_db.ko.tmp" && mv -f "$out/ivshmem_db.ko.tmp" "$out/ivshmem_db.ko"
echo "ivshmem-db: $out/ivshmem_db.ko for $kver"
