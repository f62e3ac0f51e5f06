#!/bin/sh
# fetch-third-party.sh: put the third-party parts that tests/test_third_party.py,
# tests/test_linux_nvme.py and bench/run.py use into the cache (default .cache/third-party/,
# or $VGIC_THIRD_PARTY_DIR):
#   vmlinuz  Debian's arm64 Linux kernel for cloud VMs, an unmodified arm64 Image built
#            for (among others) QEMU's virt machine; PACKAGE names it.
#   busybox  Debian's busybox-static for arm64, the initramfs userspace; BUSYBOX_PACKAGE
#            names it.
# Both come from Debian's package registry with apt-get download and dpkg-deb -x (the arm64
# architecture is added to dpkg when it is missing, which needs root). Idempotent: a part
# already in the cache is not fetched again. Tolerant: a part that cannot be fetched is
# reported and the other is still tried; the exit status is 1 if any part is missing.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
dir=${VGIC_THIRD_PARTY_DIR:-$here/.cache/third-party}
meta=${VGIC_KERNEL_PACKAGE:-linux-image-cloud-arm64}
busybox_pkg=${VGIC_BUSYBOX_PACKAGE:-busybox-static}

have_kernel() { [ -s "$dir/vmlinuz" ] && [ -s "$dir/PACKAGE" ]; }
have_busybox() { [ -s "$dir/busybox" ] && [ -s "$dir/BUSYBOX_PACKAGE" ]; }

if have_kernel && have_busybox; then
	echo "third-party kernel already in $dir: $(cat "$dir/PACKAGE")"
	echo "third-party busybox already in $dir: $(cat "$dir/BUSYBOX_PACKAGE")"
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
updated=
# candidate PKG: true when apt knows an arm64 candidate for PKG (after one apt-get update
# if it does not, and we are root)
candidate() {
	if apt-cache policy "$1:arm64" 2>/dev/null | grep -q 'Candidate: [^(]'; then
		return 0
	fi
	if [ -z "$updated" ] && [ "$(id -u)" = 0 ]; then
		updated=1
		apt-get update -q
		apt-cache policy "$1:arm64" 2>/dev/null | grep -q 'Candidate: [^(]'
		return
	fi
	return 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
mkdir -p "$dir"

# fetch PKG (with or without :arm64) -> $tmp/PKG/x (unpacked) and $tmp/PKG/*.deb
fetch() {
	rm -rf "${tmp:?}/$1"
	mkdir -p "$tmp/$1"
	chmod 755 "$tmp/$1"
	(cd "$tmp/$1" && apt-get download -q "${1%:arm64}:arm64") && dpkg-deb -x "$tmp/$1"/*.deb "$tmp/$1/x"
}

status=0
if have_kernel; then
	echo "third-party kernel already in $dir: $(cat "$dir/PACKAGE")"
else
	candidate "$meta" || true
	pkg=$(apt-cache depends "$meta:arm64" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
	if [ -z "$pkg" ]; then
		echo "fetch-third-party: no arm64 package behind $meta" >&2
		status=1
	elif fetch "$pkg" && cp "$tmp/$pkg"/x/boot/vmlinuz-* "$dir/vmlinuz.new"; then
		mv "$dir/vmlinuz.new" "$dir/vmlinuz"
		echo "$pkg $(dpkg-deb -f "$tmp/$pkg"/*.deb Version)" >"$dir/PACKAGE"
		echo "third-party kernel in $dir: $(cat "$dir/PACKAGE")"
	else
		echo "fetch-third-party: could not fetch the kernel $pkg" >&2
		status=1
	fi
fi

if have_busybox; then
	echo "third-party busybox already in $dir: $(cat "$dir/BUSYBOX_PACKAGE")"
elif ! candidate "$busybox_pkg"; then
	echo "fetch-third-party: no arm64 candidate for $busybox_pkg" >&2
	status=1
elif fetch "$busybox_pkg" && cp "$tmp/$busybox_pkg/x/bin/busybox" "$dir/busybox.new"; then
	chmod 755 "$dir/busybox.new"
	mv "$dir/busybox.new" "$dir/busybox"
	echo "$busybox_pkg:arm64 $(dpkg-deb -f "$tmp/$busybox_pkg"/*.deb Version)" >"$dir/BUSYBOX_PACKAGE"
	echo "third-party busybox in $dir: $(cat "$dir/BUSYBOX_PACKAGE")"
else
	echo "fetch-third-party: could not fetch $busybox_pkg" >&2
	status=1
fi
exit $status
