#!/bin/sh
# run every built guest under QEMU; report PASS/FAIL per guest
here=$(cd "$(dirname "$0")" && pwd)
rc=0
for elf in "$here"/out/*.elf; do
	name=$(basename "$elf" .elf)
	if "$here/run_qemu.sh" "$name" >/dev/null 2>&1; then
		echo "PASS $name"
	else
		echo "FAIL $name ($(tail -n 1 "$here/out/$name.log"))"
		rc=1
	fi
done
exit $rc
