#!/usr/bin/env bash
# Install the Debian packages vgic's guests and differential tests use, when they are
# missing and we may (root, apt-get present). Without them the Python model and its tests
# still run; guest builds and QEMU comparisons are skipped with a message.
set -u
need=()
command -v qemu-system-aarch64 >/dev/null 2>&1 || need+=(qemu-system-arm)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
[ -f /usr/lib/u-boot/qemu_arm64/u-boot.bin ] || need+=(u-boot-qemu)
command -v dtc >/dev/null 2>&1 || need+=(device-tree-compiler)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: missing Debian packages (${need[*]}); not root or no apt-get, skipping" >&2
    exit 0
fi
echo "installing Debian packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || echo "warning: apt-get install ${need[*]} failed; continuing without them" >&2
exit 0
