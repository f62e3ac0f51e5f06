"""PSCI 1.1 firmware calls over HVC or SMC (Arm DEN 0022), as QEMU's virt machine offers.

The machine passes the function ID and arguments (x0..x3) and gets x0 back; what a call
does to CPUs (power on at an entry point, off, system off/reset) is asked of the machine
through the small :class:`PsciHost` interface.
"""

from __future__ import annotations

from typing import Protocol

PSCI_VERSION = 0x8400_0000
CPU_SUSPEND_32, CPU_SUSPEND_64 = 0x8400_0001, 0xC400_0001
CPU_OFF = 0x8400_0002
CPU_ON_32, CPU_ON_64 = 0x8400_0003, 0xC400_0003
AFFINITY_INFO_32, AFFINITY_INFO_64 = 0x8400_0004, 0xC400_0004
MIGRATE_32, MIGRATE_64 = 0x8400_0005, 0xC400_0005
MIGRATE_INFO_TYPE = 0x8400_0006
SYSTEM_OFF = 0x8400_0008
SYSTEM_RESET = 0x8400_0009
PSCI_FEATURES = 0x8400_000A

SUCCESS = 0
NOT_SUPPORTED = -1
INVALID_PARAMETERS = -2
DENIED = -3
ALREADY_ON = -4
ON_PENDING = -5
INTERNAL_FAILURE = -6

VERSION_1_1 = 0x0001_0001
TOS_NOT_PRESENT_MP = 2  # MIGRATE_INFO_TYPE: no Trusted OS needing migration

SUPPORTED = {
    PSCI_VERSION, CPU_SUSPEND_32, CPU_SUSPEND_64, CPU_OFF, CPU_ON_32, CPU_ON_64, AFFINITY_INFO_32,
    AFFINITY_INFO_64, MIGRATE_INFO_TYPE, SYSTEM_OFF, SYSTEM_RESET, PSCI_FEATURES,
}  # fmt: skip


class PsciHost(Protocol):
    def cpu_by_mpidr(self, mpidr: int) -> int | None: ...
    def cpu_is_on(self, cpu: int) -> bool: ...
    def cpu_on(self, cpu: int, entry: int, context: int) -> None: ...
    def cpu_off(self, cpu: int) -> None: ...
    def cpu_suspend(self, cpu: int) -> None: ...
    def system_off(self) -> None: ...
    def system_reset(self) -> None: ...


def call(host: PsciHost, cpu: int, fn: int, a1: int, a2: int, a3: int) -> int | None:
    """Run one PSCI call; returns x0, or None when the function ID is not PSCI's."""
    fn &= 0xFFFF_FFFF
    if fn >> 24 != 0x84 and fn >> 24 != 0xC4:
        return None
    if fn == PSCI_VERSION:
        return VERSION_1_1
    if fn == PSCI_FEATURES:
        return SUCCESS if (a1 & 0xFFFF_FFFF) in SUPPORTED else NOT_SUPPORTED
    if fn == MIGRATE_INFO_TYPE:
        return TOS_NOT_PRESENT_MP
    if fn in (CPU_ON_32, CPU_ON_64):
        target = host.cpu_by_mpidr(a1 if fn == CPU_ON_64 else a1 & 0xFFFF_FFFF)
        if target is None:
            return INVALID_PARAMETERS
        if host.cpu_is_on(target):
            return ALREADY_ON
        host.cpu_on(target, a2, a3)
        return SUCCESS
    if fn in (AFFINITY_INFO_32, AFFINITY_INFO_64):
        if a2 != 0:
            return INVALID_PARAMETERS  # only level 0 (a single PE) is supported
        target = host.cpu_by_mpidr(a1)
        if target is None:
            return INVALID_PARAMETERS
        return 0 if host.cpu_is_on(target) else 1
    if fn == CPU_OFF:
        host.cpu_off(cpu)
        return SUCCESS
    if fn in (CPU_SUSPEND_32, CPU_SUSPEND_64):
        host.cpu_suspend(cpu)
        return SUCCESS
    if fn == SYSTEM_OFF:
        host.system_off()
        return SUCCESS
    if fn == SYSTEM_RESET:
        host.system_reset()
        return SUCCESS
    return NOT_SUPPORTED
