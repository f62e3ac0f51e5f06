#!/bin/sh
# fetch-third-party.sh: put the third-party guest that tests/test_third_party.py runs into
# the cache (default .cache/third-party/, or $VGIC_THIRD_PARTY_DIR): Debian's arm64 Linux
# kernel for cloud VMs, an unmodified arm64 Image built for (among others) QEMU's virt
# machine. It comes from Debian's package registry with apt-get download (the arm64
# architecture is added to dpkg when it is missing, which needs root). Idempotent: does
# nothing when the kernel is already there.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${VGIC_THIRD_PARTY_DIR:-$here/.cache/third-party}
meta=${VGIC_KERNEL_PACKAGE:-linux-image-cloud-arm64}
if [ -s "$dir/vmlinuz" ] && [ -s "$dir/PACKAGE" ]; then
	echo "third-party kernel already in $dir: $(cat "$dir/PACKAGE")"
	exit 0
fi
for tool in apt-get apt-cache dpkg dpkg-deb; do
	command -v "$tool" >/dev/null || { echo "fetch-third-party: $tool not found (Debian only)" >&2; exit 1; }
done
if ! dpkg --print-foreign-architectures | grep -qx arm64 && [ "$(dpkg --print-architecture)" != arm64 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "fetch-third-party: run as root once (dpkg --add-architecture arm64; apt-get update)" >&2
		exit 1
	fi
	dpkg --add-architecture arm64
	apt-get update -q
fi
pkg=$(apt-cache depends "$meta:arm64" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [ -z "$pkg" ]; then
	[ "$(id -u)" = 0 ] && apt-get update -q
	pkg=$(apt-cache depends "$meta:arm64" | awk '/Depends: linux-image-/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "fetch-third-party: no arm64 package behind $meta" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
(cd "$tmp" && apt-get download -q "$pkg")
dpkg-deb -x "$tmp"/*.deb "$tmp/x"
mkdir -p "$dir"
cp "$tmp"/x/boot/vmlinuz-* "$dir/vmlinuz.new"
mv "$dir/vmlinuz.new" "$dir/vmlinuz"
version=$(dpkg-deb -f "$tmp"/*.deb Version)
echo "$pkg $version" >"$dir/PACKAGE"
echo "third-party kernel in $dir: $pkg $version"
