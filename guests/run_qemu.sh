#!/bin/sh
# run_qemu.sh NAME [SMP]: run guests/out/NAME.elf on QEMU's virt machine with GICv3 + ITS,
# print the serial transcript and save it to out/NAME.log. Exit 0 when its last line is PASS.
# Environment: QEMU (binary), TIMEOUT (seconds, default 60), QEMU_EXTRA (more options).
set -u
here=$(cd "$(dirname "$0")" && pwd)
name=${1:?usage: run_qemu.sh NAME [SMP]}
default_smp() {
	case $1 in
	its_demo | its_irq_smp | timer_irq) echo 4 ;;
	its_mmu | its_mmu_64k | its_migrate) echo 2 ;;
	*) echo 1 ;;
	esac
}
smp=${2:-$(default_smp "$name")}
elf=$here/out/$name.elf
log=$here/out/$name.log
[ -f "$elf" ] || { echo "no $elf: run make -C guests" >&2; exit 2; }
timeout --foreground -k 5 "${TIMEOUT:-60}" "${QEMU:-qemu-system-aarch64}" \
	-M virt,gic-version=3,its=on -cpu cortex-a57 -m 512M -nographic -net none \
	-smp "$smp" -kernel "$elf" ${QEMU_EXTRA:-} </dev/null 2>&1 | tr -d '\r' | tee "$log"
last=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1)
[ "$last" = PASS ]
