"""The virt machine: QEMU's ``-M virt,gic-version=3,its=on`` memory map on Unicorn CPUs.

:class:`VirtMachine` owns guest RAM, the GIC (distributor, redistributors, ITS), the
PL011, PSCI, the generic timers and the CPUs, and runs the CPUs round-robin, one engine
at a time (docs/machine.md, "CPU engine"): by default each CPU runs for a slice of host
time (``MachineConfig.time_slice_us``) or until it waits, and yields early when another
CPU's interrupt is raised; with ``MachineConfig.deterministic`` each runs a fixed number
of instructions (``MachineConfig.slice``), which makes the interleaving reproducible for
a given image and input (time, read from the host clock as QEMU does, is then the one
outside input). A CPU in WFI sleeps until one of its interrupt lines rises; when every
CPU sleeps the machine waits for the next timer deadline or serial input.
"""

from __future__ import annotations

import enum
import os
import select
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from vgic import ucnative
from vgic.events import EventLog, Kind
from vgic.gic import Gic, GicConfig
from vgic.its.config import ErrorPolicy
from vgic.machine import fdt, pci, psci
from vgic.machine.cpu import Cpu, CpuState, GuestCrash, MmioRegion
from vgic.machine.loader import ImageError, load_image
from vgic.machine.pl011 import PL011_SIZE, Pl011
from vgic.machine.state import MachineState, MachineStateConfig
from vgic.machine.timer import CNTFRQ
from vgic.memory import GuestMemory
from vgic.profiles import DEFAULT_PROFILE, gic_config

RAM_BASE = 0x4000_0000
FLASH_BASE = 0x0  # two 64 MiB flash banks, as QEMU's virt: firmware, then variables
FLASH_SIZE = 0x0400_0000
RTC_BASE, FW_CFG_BASE = 0x0901_0000, 0x0902_0000
DEFAULT_SLICE = 20_000  # instructions per slice in the deterministic mode
DEFAULT_TIME_SLICE_US = 2_000  # host microseconds per slice in the default (timed) mode
NS_PER_TICK = 1_000_000_000 // CNTFRQ  # 16 ns: Unicorn's counter runs at CNTFRQ = 62.5 MHz
INPUT_POLL_NS = 2_000_000
GIC_WORK_PER_ROUND = 64  # units of deferred GIC work (vgic.gic.Gic.work) between rounds


class ExitStatus(enum.IntEnum):
    """``vgic run`` exit statuses (docs/machine.md)."""

    OFF = 0  # PSCI SYSTEM_OFF
    ERROR = 1  # bad image or options: nothing ran
    CRASH = 3  # an exception the guest cannot take
    HANG = 4  # every CPU off or asleep with nothing that could wake it
    TIMEOUT = 5
    RESET = 6  # PSCI SYSTEM_RESET (QEMU would reboot)
    PAUSED = 7  # stopped at a pause point (--snapshot-on, --migrate-on): the machine can go on


@dataclass
class MachineConfig:
    """What ``vgic run``'s options set. ``deterministic`` picks the CPU engine's mode
    (docs/machine.md): False runs each CPU for up to ``time_slice_us`` of host time,
    True for exactly ``slice`` instructions (reproducible, several times slower)."""

    memory: int = 512 << 20
    smp: int = 1
    profile: str = DEFAULT_PROFILE  # vgic.profiles: the GIC's IMPLEMENTATION DEFINED choices
    its_errors: ErrorPolicy | None = None  # overrides the profile's ITS error policies
    bootargs: str = ""
    psci_conduit: str = "hvc"
    slice: int = DEFAULT_SLICE
    deterministic: bool = False  # counted slices of ``slice`` instructions: reproducible interleaving
    time_slice_us: int = DEFAULT_TIME_SLICE_US


@dataclass
class RunResult:
    status: ExitStatus
    reason: str
    seconds: float = 0.0
    instructions: int = 0  # the instruction budgets handed out (deterministic mode only)


class _Stop(Exception):
    def __init__(self, status: ExitStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _raz(offset: int, size: int) -> int:
    return 0


def _wi(offset: int, size: int, value: int) -> None:
    return None


class VirtMachine:
    def __init__(
        self,
        config: MachineConfig | None = None,
        output: Callable[[bytes], None] | None = None,
        log: EventLog | None = None,
        bios: bytes | None = None,
        gic: GicConfig | None = None,
    ) -> None:
        """``gic`` replaces the configuration built from ``config.profile`` (a restore)."""
        self.config = cfg = config or MachineConfig()
        if not 1 <= cfg.smp <= 64:
            raise ValueError("--smp must be 1 to 64")
        self.memory = GuestMemory()
        self.memory.add_ram(RAM_BASE, cfg.memory)
        if bios is not None:
            if len(bios) > FLASH_SIZE:
                raise ImageError(f"firmware of {len(bios)} bytes is larger than the 64 MiB flash")
            self.memory.add_ram(FLASH_BASE, 2 * FLASH_SIZE)
            self.memory.write_bytes(FLASH_BASE, bios)
        self.log = log or EventLog.quiet()
        if gic is None:
            gic = gic_config(cfg.profile, cfg.smp, cfg.its_errors)
        elif gic.num_cpus != cfg.smp:
            raise ValueError("the GIC configuration has a different number of CPUs")
        self.gic = Gic(self.memory, gic, self.log)
        self._out = output or _stdout
        self.uart = Pl011(self.log, self._tx, lambda level: self.gic.set_spi(32 + fdt.PL011_SPI, level))
        self.psci_conduit = cfg.psci_conduit
        self._counter_offset = time.monotonic_ns() // NS_PER_TICK  # the count starts at 0
        self.mmio: list[MmioRegion] = [
            *self.gic.regions,
            (fdt.PL011_BASE, PL011_SIZE, self.uart.read, self.uart.write),
            (RTC_BASE, 0x1000, _raz, _wi),
            (FW_CFG_BASE, 0x1000, _raz, _wi),
            (fdt.VIRTIO_BASE, fdt.VIRTIO_SLOTS * fdt.VIRTIO_SLOT_SIZE, _raz, _wi),
        ]
        # Devices with deferred work: called between scheduling rounds; True = did some work.
        self.pollers: list[Callable[[], bool]] = []
        self.pci = pci.host(self.memory, self.log, self.gic)
        self.mmio.extend(self.pci.regions)  # ECAM and the windows
        self.pollers.append(self.pci.poll)
        # The timed mode needs the native block hook; without a C compiler the machine
        # runs in counted slices instead (docs/machine.md).
        self.deterministic = cfg.deterministic or not ucnative.available()
        if self.deterministic and not cfg.deterministic:
            self.log.record(Kind.DIAGNOSTIC, "machine", "no native helper (C compiler): CPUs run in counted slices")
        self._stop: _Stop | None = None
        self.current_cpu: int | None = None  # the CPU running now (for traces)
        self.cpus = [Cpu(self, i, self.deterministic) for i in range(cfg.smp)]
        self._timer_due: int | None = None  # the earliest timer deadline of any CPU (a count)
        for cpu in self.cpus:
            cpu.set_counter_offset(self._counter_offset)
            cpu.timer.on_deadline = self._timer_deadlines_changed
        self.exceptions = 0
        self.last_exception: str = ""
        self.input: BinaryIO | None = None
        self._input_open = False
        self.dtb_address = 0
        self.pause_when: Callable[[], bool] | None = None  # checked between scheduling slices
        self._pause_marker: bytes | None = None
        self.pause_requested = False  # a CPU stops at its next device access and the run pauses
        self._output_tail = b""

    # == save/restore (vgic.snapshot) ===============================================
    def save_state(self) -> MachineState:
        cfg = self.config
        config = MachineStateConfig(cfg.memory, cfg.smp, self.gic.config, cfg.bootargs, cfg.psci_conduit, cfg.slice,
                                    any(r.base == FLASH_BASE for r in self.memory.regions), cfg.deterministic,
                                    cfg.time_slice_us)  # fmt: skip
        return MachineState(config, self.clock(), self.dtb_address, self.gic.save_state(), self.uart.save_state(),
                            tuple(c.save_state() for c in self.cpus))  # fmt: skip

    @staticmethod
    def ram_regions(config: MachineStateConfig) -> list[tuple[int, int]]:
        """(base, size) of the RAM a machine of ``config`` has, as ``__init__`` maps it."""
        return [*([(FLASH_BASE, 2 * FLASH_SIZE)] if config.flash else []), (RAM_BASE, config.memory)]

    @classmethod
    def from_state_config(
        cls, state: MachineState, output: Callable[[bytes], None] | None = None, log: EventLog | None = None
    ) -> VirtMachine:
        """An empty machine configured as the one a snapshot was taken of."""
        c = state.config
        config = MachineConfig(memory=c.memory, smp=c.smp, profile=c.gic.profile, bootargs=c.bootargs,
                               psci_conduit=c.psci_conduit, slice=c.slice, deterministic=c.deterministic,
                               time_slice_us=c.time_slice_us)  # fmt: skip
        return cls(config, output=output, log=log, bios=b"" if c.flash else None, gic=c.gic)

    def load_state(self, state: MachineState) -> None:
        if len(state.cpus) != len(self.cpus):
            raise ValueError("the snapshot has a different number of CPUs")
        self._counter_offset = time.monotonic_ns() // NS_PER_TICK - state.counter
        for cpu in self.cpus:
            cpu.set_counter_offset(self._counter_offset)
        self.dtb_address = state.dtb_address
        self.uart.load_state(state.uart)
        for cpu, s in zip(self.cpus, state.cpus, strict=True):
            cpu.load_state(s)
        self.gic.load_state(state.gic)
        self._stop = None
        self._timer_deadlines_changed()

    # == host services for devices ==================================================
    def clock(self) -> int:
        """The system counter: host time at CNTFRQ (62.5 MHz), as QEMU does. The CPUs'
        CNTVCT_EL0 is Unicorn's count of the same clock less CNTVOFF_EL2 = the offset."""
        return time.monotonic_ns() // NS_PER_TICK - self._counter_offset

    def _timer_deadlines_changed(self) -> None:
        due = [c.timer.deadline for c in self.cpus if c.timer.deadline is not None]
        self._timer_due = min(due) if due else None

    def _poll_timers(self, count: int) -> None:
        """Raise the timer outputs whose deadline has come (nothing to do before that)."""
        if self._timer_due is not None and count >= self._timer_due:
            for c in self.cpus:
                c.timer.poll(count)

    def _tx(self, byte: int) -> None:
        self._output_tail = (self._output_tail + bytes([byte]))[-256:]
        if self._pause_marker is not None and self._pause_marker in self._output_tail:
            self.pause_requested = True  # stop the printing CPU right after this store
        self._out(bytes([byte]))

    def pause_on(self, what: str) -> None:
        """Pause when the guest waits for serial input (``input``) or prints ``what``."""
        if what == "input":
            self.uart.reads_waiting = 0
            self.pause_when = lambda: self.uart.reads_waiting >= 64
        else:
            self._pause_marker = what.encode()
            self._output_tail = b""
            self.pause_when = lambda: self.pause_requested

    # == boot ============================================================================
    def load(self, image: bytes, initrd: bytes | None = None, dtb: bytes | None = None) -> int:
        """Load a kernel image as QEMU's -kernel does; returns its entry point."""
        loaded = load_image(self.memory, image, RAM_BASE)
        initrd_range = None
        top = loaded.high
        if initrd is not None:
            start = RAM_BASE + min(self.config.memory // 2, 128 << 20)
            start = max(start, (top + 0xFFFF) & ~0xFFFF)
            if start + len(initrd) > RAM_BASE + self.config.memory:
                raise ImageError("the initrd does not fit in RAM")
            self.memory.write_bytes(start, initrd)
            initrd_range = (start, start + len(initrd))
            top = start + len(initrd)
        self.dtb_address = self._place_dtb(dtb, initrd_range, top)
        self.cpus[0].power_on(loaded.entry, dtb=self.dtb_address)
        return loaded.entry

    def boot_bios(self, dtb: bytes | None = None) -> None:
        """Firmware in the flash at 0: the DTB at the start of RAM, as QEMU's -bios does."""
        blob = dtb if dtb is not None else self.device_tree()
        self.memory.write_bytes(RAM_BASE, blob)
        self.dtb_address = RAM_BASE
        self.cpus[0].power_on(FLASH_BASE, dtb=0)

    def device_tree(self, initrd: tuple[int, int] | None = None) -> bytes:
        return fdt.build(
            fdt.FdtOptions(
                ram_base=RAM_BASE,
                ram_size=self.config.memory,
                mpidrs=tuple(c.mpidr for c in self.cpus),
                gic=self.gic.config,
                bootargs=self.config.bootargs,
                initrd=initrd,
                psci_method=self.psci_conduit,
                pcie=self.pci.layout,
            )
        )

    def _place_dtb(self, dtb: bytes | None, initrd: tuple[int, int] | None, top: int) -> int:
        blob = dtb if dtb is not None else self.device_tree(initrd)
        addr = (max(top, RAM_BASE + min(self.config.memory // 2, 128 << 20)) + 0x1FFFFF) & ~0x1FFFFF
        if addr + len(blob) > RAM_BASE + self.config.memory:
            addr = (top + 0xFFF) & ~0xFFF
        if addr + len(blob) > RAM_BASE + self.config.memory:
            raise ImageError("no room in RAM for the device tree")
        self.memory.write_bytes(addr, blob)
        return addr

    # == PSCI (vgic.machine.psci.PsciHost) =============================================
    def psci_call(self, cpu: int, fn: int, a1: int, a2: int, a3: int) -> int | None:
        return psci.call(self, cpu, fn, a1, a2, a3)

    def cpu_by_mpidr(self, mpidr: int) -> int | None:
        mpidr &= 0xFF_00FF_FFFF
        for c in self.cpus:
            if c.mpidr == mpidr:
                return c.index
        return None

    def cpu_is_on(self, cpu: int) -> bool:
        return self.cpus[cpu].state is not CpuState.OFF

    def cpu_on(self, cpu: int, entry: int, context: int) -> None:
        self.cpus[cpu].power_on(entry, context)
        if self.current_cpu is not None:
            self.cpus[self.current_cpu].others_can_run()

    def cpu_off(self, cpu: int) -> None:
        self.cpus[cpu].state = CpuState.OFF

    def cpu_suspend(self, cpu: int) -> None:
        self.cpus[cpu].state = CpuState.WFI

    def system_off(self) -> None:
        self._stop = _Stop(ExitStatus.OFF, "PSCI SYSTEM_OFF")

    def system_reset(self) -> None:
        self._stop = _Stop(ExitStatus.RESET, "PSCI SYSTEM_RESET")

    # == the CPUs' host (vgic.machine.cpu.CpuHost) =================================
    @property
    def halted(self) -> bool:
        return self._stop is not None

    def note_exception(self, cpu: int, kind: int, elr: int, esr: int | None) -> None:
        self.exceptions += 1
        if esr is not None:
            self.last_exception = f"CPU{cpu} synchronous exception ESR={esr:#x} ELR={elr:#x}"

    def note_abort(self, cpu: int, address: int, pc: int) -> None:
        self.log.record(Kind.DIAGNOSTIC, f"cpu{cpu}", f"external abort: nothing at physical address {address:#x} "
                        f"(PC {pc:#x})", cpu=cpu)  # fmt: skip

    def broadcast_tlbi(self, source: int, op2: int, value: int) -> None:
        """TLBI <op>IS reaches every CPU of the Inner Shareable domain (Arm ARM D8.13)."""
        for c in self.cpus:
            if c.index != source:
                c.queue_tlbi(op2, value)

    def broadcast_code_change(self, source: int, address: int | None) -> None:
        """IC IVAU (one line) / IC IALLU[IS] (None): every CPU may hold translations of
        the old instructions (Arm ARM D7.5.9: IC IVAU is broadcast to the Inner Shareable
        domain)."""
        for c in self.cpus:
            if c.index != source:
                c.invalidate_code(address)

    def interrupt_raised(self, target: int) -> None:
        """A CPU's interrupt line rose while another runs: end that run soon, so the
        target (perhaps asleep in WFI) takes it without waiting out a whole slice."""
        if self.current_cpu is not None and self.current_cpu != target:
            self.cpus[self.current_cpu].others_can_run()
            self.cpus[self.current_cpu].yield_now()

    # == the run loop ===================================================================
    def attach_input(self, stream: BinaryIO | None) -> None:
        self.input = stream
        self._input_open = stream is not None

    def _poll_input(self, wait: float = 0.0) -> None:
        if not self._input_open or self.input is None:
            if wait:
                time.sleep(wait)
            return
        try:
            fd = self.input.fileno()
            ready, _, _ = select.select([fd], [], [], wait)
            if ready:
                data = os.read(fd, 4096)
                if data:
                    self.uart.feed(data)
                else:
                    self._input_open = False
        except (OSError, ValueError):
            self._input_open = False

    def run(self, timeout: float | None = None) -> RunResult:
        """Run until SYSTEM_OFF/RESET, a crash, a hang or ``timeout`` seconds."""
        start = time.monotonic()
        self._stop = None
        try:
            if self.deterministic:
                self._loop_counted(start, timeout)
            else:
                self._loop_timed(start, timeout)
        except _Stop as stop:
            self._stop = stop
        except GuestCrash as crash:
            self._stop = _Stop(ExitStatus.CRASH, str(crash))
        finally:
            self.current_cpu = None
        assert self._stop is not None
        return RunResult(self._stop.status, self._stop.reason, time.monotonic() - start,
                         sum(c.instructions for c in self.cpus))  # fmt: skip

    def _check_pause(self) -> None:
        if self.pause_when is not None and self.pause_when() and not any(c.busy for c in self.cpus):
            self.pause_when = None
            self._pause_marker = None
            self.pause_requested = False
            raise _Stop(ExitStatus.PAUSED, "paused")

    def _loop_timed(self, start: float, timeout: float | None) -> None:
        """Round-robin in slices of host time; per slice only what the slice changed."""
        slice_ns = self.config.time_slice_us * 1000
        next_poll = 0
        while self._stop is None:
            ran = False
            now = time.monotonic_ns()
            for cpu in self.cpus:
                now = time.monotonic_ns()
                self._poll_timers(now // NS_PER_TICK - self._counter_offset)
                if not cpu.runnable:
                    continue
                deadline = now + slice_ns
                if self._timer_due is not None:  # any CPU's timer: its interrupt is taken promptly
                    deadline = min(deadline, (self._timer_due + self._counter_offset) * NS_PER_TICK)
                self.current_cpu = cpu.index
                cpu.run_until(deadline, any(c.runnable for c in self.cpus if c is not cpu))
                self.current_cpu = None
                ran = True
                if self._stop is not None:
                    return
                self._check_pause()
            if now >= next_poll:
                self._poll_input()
                next_poll = now + INPUT_POLL_NS
            if timeout is not None and time.monotonic() - start > timeout:
                raise _Stop(ExitStatus.TIMEOUT, f"timeout after {timeout:g} s")
            if not ran:
                self._idle(start, timeout)

    def _loop_counted(self, start: float, timeout: float | None) -> None:
        """Round-robin in slices of ``MachineConfig.slice`` instructions (reproducible)."""
        budget = self.config.slice
        rounds = 0
        while self._stop is None:
            ran = False
            for cpu in self.cpus:
                if cpu.state is CpuState.OFF:
                    continue
                self._poll_timers(self.clock())
                before = cpu.state
                self.current_cpu = cpu.index
                cpu.run(budget)
                self.current_cpu = None
                ran = ran or before is CpuState.RUNNING or cpu.state is CpuState.RUNNING
                if self._stop is not None:
                    return
                self._check_pause()
            rounds += 1
            for poll in self.pollers:
                ran = poll() or ran
            if self.gic.busy:  # ITS commands and LPI-wide jobs left over from guest accesses
                self.gic.work(GIC_WORK_PER_ROUND)
                ran = True
            if rounds % 16 == 0:
                self._poll_input()
            if timeout is not None and time.monotonic() - start > timeout:
                raise _Stop(ExitStatus.TIMEOUT, f"timeout after {timeout:g} s")
            if not ran:
                self._idle(start, timeout)

    def _idle(self, start: float, timeout: float | None) -> None:
        """Every CPU is off or in WFI: wait for a timer deadline or serial input."""
        if all(c.state is CpuState.OFF for c in self.cpus):
            raise _Stop(ExitStatus.HANG, "every CPU is off (no SYSTEM_OFF)")
        self._poll_timers(self.clock())
        if any(c.runnable for c in self.cpus):
            return
        deadlines = [d for c in self.cpus if c.state is not CpuState.OFF and (d := c.timer.deadline) is not None]
        if not deadlines and not self._input_open:
            raise _Stop(ExitStatus.HANG, "every CPU waits for an interrupt that nothing can raise")
        wait = 0.01
        if deadlines:
            wait = max(0.0, min(wait, (min(deadlines) - self.clock()) / CNTFRQ))
        if timeout is not None:
            wait = max(0.0, min(wait, timeout - (time.monotonic() - start)))
        self._poll_input(wait)
