#!/usr/bin/env bash
# Builds ivshmem_db.ko against the lab kernel's headers (Debian's cloud
# kernel, the version linux-image-cloud-amd64 points at, or $KVER):
# downloads linux-headers-<ver>-cloud-amd64, its -common package and
# linux-kbuild with apt-get download, extracts them under build/guest/kheaders
# (no root install) and runs kbuild. Output: build/guest/ivshmem_db.ko.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/guest
kver=${KVER:-$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {sub("linux-image-", "", $2); print $2; exit}')}
[[ -n $kver ]] || { echo "ivshmem-db: can't tell the cloud kernel's version (apt-get update?)" >&2; exit 1; }
base=${kver%-cloud-amd64}
hdr=$out/kheaders/$kver
if [[ ! -d $hdr/root/usr/src/linux-headers-$kver ]]; then
    mkdir -p "$hdr/debs"
    series=$(sed 's/^\([0-9]*\.[0-9]*\).*/\1/' <<<"$kver")
    (cd "$hdr/debs" && apt-get download "linux-headers-$kver" "linux-headers-$base-common" "linux-kbuild-$series")
    for d in "$hdr"/debs/*.deb; do dpkg-deb -x "$d" "$hdr/root"; done
fi
src=$(realpath "$hdr/root/usr/src/linux-headers-$kver")
common=$(realpath "$hdr/root/usr/src/linux-headers-$base-common")
# The headers' Makefile includes the -common tree by its installed path.
sed -i "s|^include .*|include $common/Makefile|" "$src/Makefile"
make -C "$src" M="$(realpath guest/ivshmem-db)" modules
mkdir -p "$out"
cp guest/ivshmem-db/ivshmem_db.ko "$out/ivshmem_db.ko"
echo "ivshmem-db: $out/ivshmem_db.ko for $kver"
