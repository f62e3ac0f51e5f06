"""Unit tests of the virt machine's pieces, driven by tiny guests assembled at test time.

Each guest is a few lines of AArch64 assembly built with Debian's ``aarch64-linux-gnu-gcc``
(skipped when it is not installed) into a flat image at RAM + 0x80000, run on an
in-process :class:`VirtMachine`, and checked through the registers it leaves behind when
it powers off: the common vector table records which vector was taken (x19) with ESR,
ELR, SPSR, FAR and ICC_IAR1 (x20-x24), then calls PSCI SYSTEM_OFF.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("unicorn")
libfdt = pytest.importorskip("libfdt")

from unicorn import arm64_const as A  # noqa: E402

from vgic import ucnative  # noqa: E402
from vgic.events import EventLog  # noqa: E402
from vgic.machine import psci  # noqa: E402
from vgic.machine.loader import ImageError, load_image  # noqa: E402
from vgic.machine.pl011 import FR_RXFE, FR_TXFE, INT_RX, INT_TX, Pl011  # noqa: E402
from vgic.machine.timer import CNTFRQ, CNTV_CTL_EL0, CNTV_CVAL_EL0, CNTV_TVAL_EL0, GenericTimer  # noqa: E402
from vgic.machine.virt import RAM_BASE, ExitStatus, MachineConfig, VirtMachine  # noqa: E402
from vgic.memory import GuestMemory  # noqa: E402

CROSS = "aarch64-linux-gnu-"
LOAD = RAM_BASE + 0x80000
HAVE_CROSS = all(shutil.which(CROSS + t) for t in ("gcc", "ld", "objcopy"))
needs_cross = pytest.mark.skipif(not HAVE_CROSS, reason="aarch64-linux-gnu-gcc/binutils not installed")

# -- assembling ------------------------------------------------------------------------

PRELUDE = r"""
.macro off
    ldr x0, =0x84000008
    hvc #0
.endm
.macro psci fn, a1=xzr, a2=xzr, a3=xzr
    mov x1, \a1
    mov x2, \a2
    mov x3, \a3
    ldr x0, =\fn
    hvc #0
.endm
.text
.globl _start
_start:
    adr x0, vectors
    msr vbar_el1, x0
    isb
    b main

.balign 2048
vectors:
.irp off, 0x000,0x080,0x100,0x180,0x200,0x280,0x300,0x380,0x400,0x480,0x500,0x580,0x600,0x680,0x700,0x780
.balign 128
    mov x19, #\off
    b common
.endr
common:
    mrs x20, esr_el1
    mrs x21, elr_el1
    mrs x22, spsr_el1
    mrs x23, far_el1
    mrs x24, S3_0_C12_C12_0     // ICC_IAR1_EL1
    off
"""

_cache: dict[str, bytes] = {}


def assemble(body: str) -> bytes:
    """PRELUDE + body, linked at RAM + 0x80000, as a flat binary."""
    src = PRELUDE + body + "\n.ltorg\n"
    if src not in _cache:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d)
            (p / "g.S").write_text(src)
            subprocess.run([CROSS + "gcc", "-c", "-o", str(p / "g.o"), str(p / "g.S")], check=True)
            subprocess.run([CROSS + "ld", "-Ttext", hex(LOAD), "-e", "_start", "-o", str(p / "g.elf"), str(p / "g.o")],
                           check=True)  # fmt: skip
            subprocess.run([CROSS + "objcopy", "-O", "binary", str(p / "g.elf"), str(p / "g.bin")], check=True)
            _cache[src] = (p / "g.bin").read_bytes()
    return _cache[src]


# Tests of scheduling-sensitive behaviour run in both CPU engine modes (docs/machine.md).
# Without the native helper (no C compiler, VGIC_NATIVE=0) "timed" runs counted too.
both_modes = pytest.mark.parametrize("deterministic", [False, True], ids=["timed", "counted"])
needs_native = pytest.mark.skipif(not ucnative.available(), reason="the timed mode needs the native helper")


class Guest:
    def __init__(
        self, body: str, smp: int = 1, timeout: float = 10.0, run: bool = True, deterministic: bool = False
    ) -> None:
        self.out = bytearray()
        config = MachineConfig(smp=smp, memory=128 << 20, deterministic=deterministic)
        self.m = VirtMachine(config, output=self.out.extend)
        self.image = assemble(body)
        self.m.load(self.image)
        if run:
            self.result = self.m.run(timeout=timeout)

    def x(self, n: int, cpu: int = 0) -> int:
        return self.m.cpus[cpu].reg(getattr(A, f"UC_ARM64_REG_X{n}"))

    def sx(self, n: int, cpu: int = 0) -> int:
        """x<n> as a signed 64-bit value (PSCI return codes)."""
        v = self.x(n, cpu)
        return v - (1 << 64) if v >> 63 else v

    def off(self) -> None:
        assert self.result.status is ExitStatus.OFF, self.result


def word_at(g: Guest, insn: int) -> int:
    """Address of the first occurrence of instruction word ``insn`` in the image."""
    data = g.image
    for off in range(0, len(data), 4):
        if struct.unpack_from("<I", data, off)[0] == insn:
            return LOAD + off
    raise AssertionError(f"{insn:#x} not in the image")


# -- PSCI --------------------------------------------------------------------------------


@needs_cross
def test_psci_queries() -> None:
    g = Guest(
        """
main:
    psci 0x84000000
    mov x10, x0                     // PSCI_VERSION
    ldr x4, =0xC4000003
    psci 0x8400000A, x4
    mov x11, x0                     // FEATURES(CPU_ON_64)
    ldr x4, =0x840000FF
    psci 0x8400000A, x4
    mov x12, x0                     // FEATURES(unknown)
    psci 0x84000006
    mov x13, x0                     // MIGRATE_INFO_TYPE
    psci 0x840000FF
    mov x14, x0                     // an unknown PSCI function
    ldr x4, =0x84000008
    psci 0x8400000A, x4
    mov x15, x0                     // FEATURES(SYSTEM_OFF)
    off
"""
    )
    g.off()
    assert g.x(10) == psci.VERSION_1_1
    assert g.sx(11) == psci.SUCCESS
    assert g.sx(12) == psci.NOT_SUPPORTED
    assert g.x(13) == psci.TOS_NOT_PRESENT_MP
    assert g.sx(14) == psci.NOT_SUPPORTED
    assert g.sx(15) == psci.SUCCESS


SMP_PSCI = """
main:
    ldr x4, =flag
    str xzr, [x4]
    mov x5, #1
    adr x6, secondary
    mov x7, #0x55
    psci 0xC4000003, x5, x6, x7
    mov x10, x0                     // CPU_ON cpu1: SUCCESS
    psci 0xC4000003, x5, x6, x7
    mov x11, x0                     // again: ALREADY_ON
    mov x8, #7
    psci 0xC4000003, x8, x6, x7
    mov x12, x0                     // no such MPIDR: INVALID_PARAMETERS
    psci 0xC4000004, x5
    mov x13, x0                     // AFFINITY_INFO(cpu1) = ON (0)
    mov x8, #1
    psci 0xC4000004, x5, x8
    mov x14, x0                     // level 1: INVALID_PARAMETERS
    mov x8, #1
    str x8, [x4]                    // let cpu1 turn itself off
1:  psci 0xC4000004, x5
    cbz x0, 1b
    mov x15, x0                     // AFFINITY_INFO(cpu1) = OFF (1)
    off

secondary:
    mov x9, x0                      // context id
    mrs x10, mpidr_el1
    ldr x4, =flag
2:  ldr x8, [x4]
    cbz x8, 2b
    psci 0x84000002                 // CPU_OFF
    b .

.balign 8
flag: .quad 0
"""


@needs_cross
@both_modes
def test_psci_cpu_on_off_affinity(deterministic: bool) -> None:
    g = Guest(SMP_PSCI, smp=2, deterministic=deterministic)
    g.off()
    assert g.sx(10) == psci.SUCCESS
    assert g.sx(11) == psci.ALREADY_ON
    assert g.sx(12) == psci.INVALID_PARAMETERS
    assert g.sx(13) == 0
    assert g.sx(14) == psci.INVALID_PARAMETERS
    assert g.sx(15) == 1
    assert g.x(9, cpu=1) == 0x55  # context id in x0 at the entry point
    assert g.x(10, cpu=1) & 0xFF_00FF_FFFF == 1  # its own MPIDR
    assert g.m.cpus[1].state.value == "off"


@needs_cross
def test_psci_system_reset() -> None:
    g = Guest("main:\n    psci 0x84000009\n    b .\n")
    assert g.result.status is ExitStatus.RESET


# -- synchronous exceptions --------------------------------------------------------------


def _ec(esr: int) -> int:
    return esr >> 26 & 0x3F


@needs_cross
def test_svc_enters_sync_vector_with_ec_0x15() -> None:
    g = Guest("main:\n    svc #0x42\n    b .\n")
    g.off()
    assert g.x(19) == 0x200  # current EL with SP_ELx, synchronous
    assert g.x(20) == 0x15 << 26 | 1 << 25 | 0x42
    assert g.x(21) == word_at(g, 0xD4000841) + 4  # ELR: the instruction after the SVC
    assert g.x(22) & 0xF == 0b0101  # SPSR.M = EL1h


@needs_cross
def test_undefined_instruction_is_ec_0() -> None:
    g = Guest("main:\n    nop\n    .word 0x00000000\n    b .\n")
    g.off()
    assert g.x(19) == 0x200
    assert _ec(g.x(20)) == 0 and g.x(20) & 1 << 25
    assert g.x(21) == word_at(g, 0x00000000)  # ELR: the UNDEFINED instruction itself


@needs_cross
def test_hvc_that_is_not_psci_is_undefined() -> None:
    g = Guest("main:\n    ldr x0, =0x12345\n    hvc #7\n    b .\n")
    g.off()
    assert g.x(19) == 0x200
    assert _ec(g.x(20)) == 0  # no EL2 behind it: UNDEFINED at EL1, as on QEMU
    assert g.x(21) == word_at(g, 0xD40000E2)


@needs_cross
def test_data_abort_outside_ram_sets_esr_and_far() -> None:
    g = Guest("main:\n    ldr x1, =0x0C000010\n    str x2, [x1]\n    b .\n")
    g.off()
    esr = g.x(20)
    assert _ec(esr) == 0x25  # data abort, current EL
    assert esr & 1 << 6  # WnR: a write
    assert esr & 0x3F == 0x10  # DFSC: synchronous external abort
    assert g.x(23) == 0x0C000010
    assert g.x(21) == word_at(g, 0xF9000022)  # str x2, [x1]


# -- IRQs: the virtual timer (PPI 27) through the GIC to each vector ---------------------

GIC_TIMER_SETUP = """
    ldr x1, =0x08000000             // GICD_CTLR: ARE, EnableGrp1
    mov w2, #0x12
    str w2, [x1]
    ldr x1, =0x080A0000             // GICR_WAKER: wake the redistributor
    str wzr, [x1, #0x14]
    ldr x1, =0x080B0000             // SGI frame
    mov w2, #(1 << 27)
    str w2, [x1, #0x80]             // IGROUPR0: group 1
    str w2, [x1, #0x100]            // ISENABLER0
    mov w2, #0x80
    strb w2, [x1, #0x41b]           // IPRIORITYR[27]
    mov x2, #0xff
    msr S3_0_C4_C6_0, x2            // ICC_PMR_EL1
    mov x2, #1
    msr S3_0_C12_C12_7, x2          // ICC_IGRPEN1_EL1
    isb
    ldr x2, =100
    msr cntv_tval_el0, x2
    mov x2, #1
    msr cntv_ctl_el0, x2            // ENABLE, not masked: fires after 100 ticks
"""


@needs_cross
@pytest.mark.parametrize(
    ("mode", "vector", "spsr_m"),
    [("el1h", 0x280, 0b0101), ("el1t", 0x080, 0b0100), ("el0", 0x480, 0b0000)],
)
def test_irq_vector_offset_and_spsr(mode: str, vector: int, spsr_m: int) -> None:
    enter = {
        "el1h": "    msr daifclr, #2\n1:  b 1b\n",
        "el1t": "    msr spsel, #0\n    msr daifclr, #2\n1:  b 1b\n",
        "el0": "    adr x2, user\n    msr elr_el1, x2\n    msr spsr_el1, xzr\n    eret\nuser:\n1:  b 1b\n",
    }[mode]
    g = Guest("main:\n" + GIC_TIMER_SETUP + enter)
    g.off()
    assert g.x(19) == vector
    assert g.x(22) & 0x1F == spsr_m
    assert not g.x(22) & 1 << 7  # the interrupted context had IRQs unmasked
    assert g.x(24) == 27  # ICC_IAR1_EL1: the virtual timer's PPI


@needs_cross
@both_modes
def test_timer_istatus_and_wfi_wakeup(deterministic: bool) -> None:
    g = Guest(
        "main:\n"
        + GIC_TIMER_SETUP.replace("=100", "=3125000")  # 50 ms: surely not yet fired at the first read
        + """
    mrs x10, cntv_ctl_el0           // not yet fired: ISTATUS 0
    mrs x11, cntvct_el0
1:  wfi                             // IRQs masked: WFI still wakes on the pending IRQ
    mrs x12, cntv_ctl_el0
    tbz x12, #2, 1b
    mrs x13, cntvct_el0
    mrs x14, cntv_cval_el0
    mrs x15, S3_0_C12_C12_0         // acknowledge with IRQs still masked: IAR1 = 27
    mov x2, #3
    msr cntv_ctl_el0, x2            // IMASK: the line drops, ISTATUS stays
    mrs x16, cntv_ctl_el0
    mrs x17, cntfrq_el0
    off
""",
        deterministic=deterministic,
    )
    g.off()
    assert g.x(10) == 1
    assert g.x(12) == 5  # ENABLE | ISTATUS
    assert g.x(13) >= g.x(14)  # fired only once the count reached CVAL
    assert g.x(15) == 27
    assert g.x(16) == 7
    assert g.x(17) == CNTFRQ


def test_generic_timer_model() -> None:
    now = [1000]
    levels: list[tuple[int, bool]] = []
    t = GenericTimer(lambda: now[0], lambda intid, level: levels.append((intid, level)))
    t.write(CNTV_TVAL_EL0, 50)
    assert t.read(CNTV_CVAL_EL0) == 1050
    t.write(CNTV_CTL_EL0, 1)
    assert t.read(CNTV_CTL_EL0) == 1 and t.next_deadline() == 1050
    now[0] = 1050
    t.update()
    assert levels == [(27, True)] and t.read(CNTV_CTL_EL0) == 5
    assert t.read(CNTV_TVAL_EL0) == 0
    now[0] = 1060
    assert t.read(CNTV_TVAL_EL0) == (-10) & 0xFFFF_FFFF  # TVAL counts down past zero
    t.write(CNTV_CTL_EL0, 3)  # IMASK
    assert levels[-1] == (27, False) and t.read(CNTV_CTL_EL0) == 7 and t.next_deadline() is None
    t.write(CNTV_TVAL_EL0, 0xFFFF_FFF0)  # negative TVAL: CVAL in the past
    assert t.read(CNTV_CVAL_EL0) == 1060 - 16


# -- PL011 --------------------------------------------------------------------------------


def test_pl011_tx_rx_flags_interrupt() -> None:
    tx: list[int] = []
    irq: list[bool] = []
    u = Pl011(EventLog(), tx.append, irq.append)
    assert u.read(0x18, 4) == FR_TXFE | FR_RXFE
    u.write(0x000, 4, ord("A"))
    assert tx == [ord("A")]
    assert u.read(0xFE0, 4) == 0x11 and u.read(0xFFC, 4) == 0xB1  # PrimeCell IDs
    u.write(0x038, 4, INT_RX)  # IMSC: receive
    assert irq == []
    u.feed(b"hi")
    assert irq == [True]
    assert not u.read(0x18, 4) & FR_RXFE
    assert u.read(0x040, 4) & INT_RX  # MIS
    assert u.read(0x000, 4) == ord("h")
    assert u.read(0x000, 4) == ord("i")
    assert irq == [True, False]  # FIFO empty: the interrupt drops
    assert u.read(0x18, 4) & FR_RXFE
    u.write(0x038, 4, INT_TX)
    assert irq[-1] is True  # TX interrupt: the transmit FIFO is always empty
    u.write(0x044, 4, INT_TX)  # ICR
    assert irq[-1] is False


def test_pl011_takes_the_16_bit_accesses_linux_makes() -> None:
    """Linux's amba-pl011 driver uses readw/writew (QEMU's device tree sets no reg-io-width):
    UARTCR reads back, UARTIMSC takes effect, a byte store to DR's upper lanes sends nothing."""
    tx: list[int] = []
    irq: list[bool] = []
    log = EventLog()
    u = Pl011(log, tx.append, irq.append)
    assert u.read(0x030, 2) == 0x300  # UARTCR reset: TXE | RXE
    u.write(0x030, 2, 0x301)
    assert u.read(0x030, 4) == 0x301
    u.write(0x038, 2, INT_RX)  # UARTIMSC, 16 bits
    u.feed(b"x")
    assert irq == [True] and u.read(0x040, 2) == INT_RX
    u.write(0x039, 1, 0)  # the upper byte of IMSC: RXIM (bit 4) stays
    assert u.read(0x038, 4) == INT_RX
    assert u.read(0x000, 2) == ord("x") and irq == [True, False]
    u.write(0x000, 2, ord("B"))
    u.write(0x001, 1, ord("C"))
    assert tx == [ord("B")]
    assert u.read(0x018, 2) & FR_TXFE
    assert log.diagnostics == []


@needs_cross
def test_pl011_from_a_guest() -> None:
    g = Guest(
        """
main:
    ldr x1, =0x09000000
    mov w2, #'o'
    str w2, [x1]
    mov w2, #'k'
    str w2, [x1]
1:  ldr w3, [x1, #0x18]             // wait for input (FR.RXFE clear)
    tbnz w3, #4, 1b
    ldr w4, [x1]
    mov x10, x4
    off
""",
        run=False,
    )
    g.m.uart.feed(b"z")
    g.result = g.m.run(timeout=10)
    g.off()
    assert bytes(g.out) == b"ok"
    assert g.x(10) == ord("z")


@needs_cross
@both_modes
def test_pl011_rx_interrupt_reaches_the_cpu(deterministic: bool) -> None:
    g = Guest(
        """
main:
    ldr x1, =0x08000000
    mov w2, #0x12
    str w2, [x1]                    // GICD_CTLR
    mov w2, #(1 << 1)               // SPI 33 = INTID 33: bit 1 of the second word
    str w2, [x1, #0x84]             // GICD_IGROUPR1
    str w2, [x1, #0x104]            // GICD_ISENABLER1
    mov w2, #0x80
    strb w2, [x1, #0x421]           // GICD_IPRIORITYR[33]
    ldr x1, =0x08006000 + 33 * 8
    str xzr, [x1]                   // GICD_IROUTER33: cpu0
    ldr x1, =0x080A0000
    str wzr, [x1, #0x14]
    mov x2, #0xff
    msr S3_0_C4_C6_0, x2
    mov x2, #1
    msr S3_0_C12_C12_7, x2
    ldr x1, =0x09000000
    mov w2, #0x10
    str w2, [x1, #0x38]             // UARTIMSC: RX
    msr daifclr, #2
1:  wfi
    b 1b
""",
        run=False,
        deterministic=deterministic,
    )
    g.m.uart.feed(b"!")
    g.result = g.m.run(timeout=10)
    g.off()
    assert g.x(19) == 0x280
    assert g.x(24) == 33


# -- MMU -----------------------------------------------------------------------------------


REMAP = """
    ldr x1, =0x40601403
    str x1, [x0]
    dsb ishst
    tlbi vaae1is, xzr
    dsb ish
    isb
    ldr x11, [x9, #8]              // after the remap: 0x22
"""


def _mmu_guest(granule: int, remap: str = REMAP) -> str:
    """Identity-map RAM with blocks and the PL011 page, map VA 0 to one page, remap it."""
    if granule == 4096:
        # T0SZ=25 (39-bit VA): L1 table, 1 GB blocks; VA 0 via L2 -> L3 4 KB pages.
        tables = """
    ldr x0, =0x40400000             // L1
    ldr x1, =0x40401003
    str x1, [x0]                    // L1[0] -> L2
    ldr x1, =0x40000401             // L1[1]: 1 GB block at 0x40000000, AF, AttrIndx 0
    str x1, [x0, #8]
    ldr x0, =0x40401000
    ldr x1, =0x40402003
    str x1, [x0]                    // L2[0] -> L3
    ldr x1, =0x09000405             // L2[72]: 2 MB device block at 0x09000000, AttrIndx 1
    str x1, [x0, #72 * 8]
    ldr x0, =0x40402000             // L3[0] -> page
"""
        tcr = "25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23)"
        page_a, page_b = 0x40600000, 0x40601000
    else:
        # 64 KB granule, T0SZ=25: starts at level 2 (512 MB blocks); VA 0 via L3 64 KB pages.
        tables = """
    ldr x0, =0x40400000             // L2
    ldr x1, =0x40410003
    str x1, [x0]                    // L2[0] -> L3
    ldr x1, =0x40000401             // L2[2]: 512 MB block at 0x40000000
    str x1, [x0, #16]
    ldr x0, =0x40410000             // L3[0] -> page
    ldr x1, =0x09000407             // L3[0x900]: the PL011's 64 KB device page
    ldr x2, =0x40410000 + 0x900 * 8
    str x1, [x2]
"""
        tcr = "25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 14) | (1 << 23)"
        page_a, page_b = 0x40600000, 0x40610000
    return f"""
main:
    mov x9, #0
{tables}
    ldr x1, ={page_a | 0x403:#x}
    str x1, [x0]
    ldr x3, ={page_a:#x}
    mov x4, #0x11
    str x4, [x3, #8]
    ldr x3, ={page_b:#x}
    mov x4, #0x22
    str x4, [x3, #8]
    mov x1, #0xff                   // Attr0 Normal write-back, Attr1 Device-nGnRnE
    msr mair_el1, x1
    ldr x1, ={tcr}
    msr tcr_el1, x1
    ldr x1, =0x40400000
    msr ttbr0_el1, x1
    isb
    mrs x1, sctlr_el1
    orr x1, x1, #1
    orr x1, x1, #(1 << 2)
    orr x1, x1, #(1 << 12)
    msr sctlr_el1, x1
    isb
    ldr x10, [x9, #8]              // through the page table: 0x11
{remap.replace("0x40601403", hex(page_b | 0x403))}    mrs x12, sctlr_el1
    ldr x1, =0x09000000
    mov w2, #'m'
    str w2, [x1]                    // device access with the MMU on
    off
"""


@needs_cross
@pytest.mark.parametrize("granule", [4096, 65536])
def test_mmu_on_with_own_page_tables(granule: int) -> None:
    g = Guest(_mmu_guest(granule))
    g.off()
    assert g.x(12) & 1
    assert (g.x(10), g.x(11)) == (0x11, 0x22)
    assert bytes(g.out) == b"m"


@needs_cross
@both_modes
def test_tlbi_broadcast_reaches_other_cpus(deterministic: bool) -> None:
    """cpu1 caches VA 0 -> page A; cpu0 remaps it to page B with TLBI VAAE1IS; cpu1 sees B."""
    g = Guest(_mmu_guest(4096, SMP_TLBI_PRIMARY) + SMP_TLBI_SECONDARY, smp=2, deterministic=deterministic)
    g.off()
    assert (g.x(10, cpu=1), g.x(11, cpu=1)) == (0x11, 0x22)


SMP_TLBI_PRIMARY = """
    mov x26, x0                     // the L3 table
    ldr x5, =step
    mov x7, #1
    adr x8, secondary
    psci 0xC4000003, x7, x8, xzr
1:  ldr x2, [x5]                    // wait for cpu1 to read through the old mapping
    cmp x2, #1
    b.ne 1b
    ldr x1, =0x40601403
    str x1, [x26]
    dsb ishst
    tlbi vaae1is, xzr
    dsb ish
    isb
    mov x2, #2
    str x2, [x5]
1:  ldr x2, [x5]                    // wait for cpu1's second read
    cmp x2, #3
    b.ne 1b
"""

SMP_TLBI_SECONDARY = """
secondary:
    mov x9, #0
    mov x1, #0xff
    msr mair_el1, x1
    ldr x1, =25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23)
    msr tcr_el1, x1
    ldr x1, =0x40400000
    msr ttbr0_el1, x1
    isb
    mrs x1, sctlr_el1
    orr x1, x1, #1
    msr sctlr_el1, x1
    isb
    ldr x5, =step
    ldr x10, [x9, #8]
    mov x2, #1
    str x2, [x5]
1:  ldr x2, [x5]
    cmp x2, #2
    b.ne 1b
    ldr x11, [x9, #8]
    mov x2, #3
    str x2, [x5]
    b .

.balign 8
step: .quad 0
"""


# -- loader --------------------------------------------------------------------------------


def _elf(segments: list[tuple[int, bytes, int]], entry: int, machine: int = 183, cls: int = 2) -> bytes:
    """A minimal ELF64 executable: (paddr, data, memsz) per PT_LOAD segment."""
    phoff = 64
    data_off = phoff + 56 * len(segments)
    hdr = b"\x7fELF" + bytes([cls, 1, 1]) + bytes(9)
    hdr += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, entry, phoff, 0, 0, 64, 56, len(segments), 64, 0, 0)
    phdrs, blobs = b"", b""
    for paddr, blob, memsz in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, data_off + len(blobs), paddr, paddr, len(blob), memsz, 0x1000)
        blobs += blob
    return hdr + phdrs + blobs


def _mem() -> GuestMemory:
    m = GuestMemory()
    m.add_ram(RAM_BASE, 16 << 20)
    return m


def test_loader_elf_segments_and_bss() -> None:
    mem = _mem()
    mem.write_bytes(0x40101000, b"\xff" * 16)
    img = _elf([(0x40100000, b"code", 4), (0x40101000, b"dd", 16)], entry=0x40100000)
    loaded = load_image(mem, img, RAM_BASE)
    assert (loaded.entry, loaded.low, loaded.high, loaded.kind) == (0x40100000, 0x40100000, 0x40101010, "ELF")
    assert mem.read_bytes(0x40100000, 4) == b"code"
    assert mem.read_bytes(0x40101000, 16) == b"dd" + bytes(14)  # BSS zeroed


def test_loader_flat_and_arm64_image() -> None:
    mem = _mem()
    flat = load_image(mem, b"\x1f\x20\x03\xd5" * 4, RAM_BASE)
    assert (flat.entry, flat.kind) == (RAM_BASE + 0x80000, "flat binary")
    image = bytearray(0x100)
    struct.pack_into("<QQ", image, 8, 0x200000, 0x100)  # text_offset, image_size
    image[0x38:0x3C] = b"ARM\x64"
    loaded = load_image(mem, bytes(image), RAM_BASE)
    assert (loaded.entry, loaded.kind) == (RAM_BASE + 0x200000, "arm64 Image")
    struct.pack_into("<QQ", image, 8, 0x200000, 0)  # image_size 0: an old kernel, 0x80000
    assert load_image(mem, bytes(image), RAM_BASE).entry == RAM_BASE + 0x80000


def test_loader_gzip_compressed_image() -> None:
    mem = _mem()
    image = bytearray(0x100)
    struct.pack_into("<QQ", image, 8, 0, 0x100)
    image[0x38:0x3C] = b"ARM\x64"
    image[0x40:0x44] = b"body"
    loaded = load_image(mem, gzip.compress(bytes(image)), RAM_BASE)
    assert loaded.kind == "arm64 Image" and loaded.entry == RAM_BASE
    assert mem.read_bytes(RAM_BASE + 0x40, 4) == b"body"


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"", "empty"),
        (b"\x7fELF" + bytes([1, 1, 1]) + bytes(57), "ELF64"),
        (_elf([(0x40100000, b"x", 1)], 0x40100000, machine=62), "not AArch64"),
        (_elf([(0x1000, b"x", 1)], 0x1000), "outside RAM"),
        (_elf([(0x40100000, b"x", 1)], 0x40100000)[:100], "truncated"),
        (b"\x1f\x8b\x08\x00" + bytes(20), "gzip"),
        (bytes(17 << 20), "does not fit"),
    ],
)
def test_loader_rejects_bad_images(image: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        load_image(_mem(), image, RAM_BASE)


# -- device tree ----------------------------------------------------------------------------


def _fdt(m: VirtMachine) -> object:
    return libfdt.Fdt(m.device_tree((0x48000000, 0x48001000)))


def _prop(fdt: object, path: str, name: str) -> bytes:
    return bytes(fdt.getprop(fdt.path_offset(path), name))  # type: ignore[attr-defined]


def test_fdt_nodes_and_properties() -> None:
    m = VirtMachine(MachineConfig(smp=4, bootargs="console=ttyAMA0"))
    fdt = _fdt(m)
    assert _prop(fdt, "/", "compatible") == b"linux,dummy-virt\0"
    assert struct.unpack(">I", _prop(fdt, "/", "#address-cells"))[0] == 2
    assert b"arm,psci-0.2\0" in _prop(fdt, "/psci", "compatible")
    assert _prop(fdt, "/psci", "method") == b"hvc\0"
    assert struct.unpack(">QQ", _prop(fdt, "/memory@40000000", "reg")) == (RAM_BASE, 512 << 20)
    for i in range(4):
        assert struct.unpack(">I", _prop(fdt, f"/cpus/cpu@{i}", "reg"))[0] == i
        assert _prop(fdt, f"/cpus/cpu@{i}", "enable-method") == b"psci\0"
    assert _prop(fdt, "/intc@8000000", "compatible") == b"arm,gic-v3\0"
    reg = struct.unpack(">4Q", _prop(fdt, "/intc@8000000", "reg"))
    assert reg == (0x08000000, 0x10000, 0x080A0000, 4 * 0x20000)
    assert _prop(fdt, "/intc@8000000/its@8080000", "compatible") == b"arm,gic-v3-its\0"
    assert _prop(fdt, "/intc@8000000/its@8080000", "msi-controller") == b""
    timer = struct.unpack(">12I", _prop(fdt, "/timer", "interrupts"))
    assert timer[3:6] == (1, 14, 4) and timer[6:9] == (1, 11, 4)  # EL1 physical PPI 30, virtual PPI 27
    assert struct.unpack(">3I", _prop(fdt, "/pl011@9000000", "interrupts")) == (0, 1, 4)
    assert _prop(fdt, "/chosen", "stdout-path") == b"/pl011@9000000\0"
    assert _prop(fdt, "/chosen", "bootargs") == b"console=ttyAMA0\0"
    assert struct.unpack(">Q", _prop(fdt, "/chosen", "linux,initrd-start"))[0] == 0x48000000
    assert _prop(fdt, "/virtio_mmio@a000000", "compatible") == b"virtio,mmio\0"


@pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None, reason="qemu-system-aarch64 not installed")
def test_fdt_matches_qemus_for_shared_nodes(tmp_path: Path) -> None:
    """Every node we generate exists in QEMU's own tree with the same key properties."""
    dtb = tmp_path / "virt.dtb"
    subprocess.run(
        ["qemu-system-aarch64", "-M", f"virt,gic-version=3,its=on,dumpdtb={dtb}", "-cpu", "cortex-a57",
         "-m", "512M", "-smp", "2", "-nographic", "-net", "none"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    theirs = libfdt.Fdt(dtb.read_bytes())
    ours = libfdt.Fdt(VirtMachine(MachineConfig(smp=2)).device_tree())
    keys = ("compatible", "reg", "interrupts", "method", "device_type", "#interrupt-cells", "msi-controller")

    def walk(fdt: object, off: int, path: str):  # type: ignore[no-untyped-def]
        yield path, off
        child = fdt.first_subnode(off, [libfdt.FDT_ERR_NOTFOUND])  # type: ignore[attr-defined]
        while child >= 0:
            name = fdt.get_name(child)  # type: ignore[attr-defined]
            yield from walk(fdt, child, f"{path.rstrip('/')}/{name}")
            child = fdt.next_subnode(child, [libfdt.FDT_ERR_NOTFOUND])  # type: ignore[attr-defined]

    for path, off in walk(ours, 0, "/"):
        if path == "/chosen":
            continue
        toff = theirs.path_offset(path, [libfdt.FDT_ERR_NOTFOUND])
        assert toff >= 0, f"QEMU has no {path}"
        for key in keys:
            mine = ours.getprop(off, key, [libfdt.FDT_ERR_NOTFOUND])
            if isinstance(mine, int):
                continue
            other = theirs.getprop(toff, key, [libfdt.FDT_ERR_NOTFOUND])
            assert not isinstance(other, int), f"QEMU's {path} has no {key}"
            if path == "/intc@8000000" and key == "reg":
                mine, other = mine[:24], other[:24]  # QEMU sizes the GICR region for 123 CPUs
            assert bytes(mine) == bytes(other), f"{path} {key}"


# -- vgic run: exit statuses and the report -----------------------------------------------


def _vgic_run(tmp_path: Path, image: bytes | None, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vgic.cli", "run", *args]
    if image is not None:
        (tmp_path / "g.bin").write_bytes(image)
        cmd.append(str(tmp_path / "g.bin"))
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)


@needs_cross
@pytest.mark.parametrize(
    ("body", "args", "status", "report"),
    [
        ("main:\n    ldr x1, =0x09000000\n    mov w2, #'y'\n    str w2, [x1]\n    off\n", (), 0, None),
        ("main:\n    adr x0, bad\n    msr vbar_el1, x0\n    .word 0\n.balign 2048\nbad:\n.fill 512, 4, 0\n", (),
         3, "exception loop"),
        ("main:\n    msr daifset, #0xf\n1:  wfi\n    b 1b\n", (), 4, "nothing can raise"),
        ("main:\n    psci 0x84000002\n", (), 4, "every CPU is off"),
        ("main:\n1:  b 1b\n", ("--timeout", "1"), 5, "timeout after"),
    ],
)  # fmt: skip
def test_vgic_run_exit_status(
    tmp_path: Path, body: str, args: tuple[str, ...], status: int, report: str | None
) -> None:
    p = _vgic_run(tmp_path, assemble(body), *args)
    assert p.returncode == status, p.stderr
    if report is None:
        assert p.stdout == "y" and p.stderr == ""
    else:
        assert report in p.stderr
        assert f"(exit status {status})" in p.stderr
        assert "CPU0" in p.stderr and "PC=0x" in p.stderr


def test_vgic_run_bad_image_is_status_1(tmp_path: Path) -> None:
    p = _vgic_run(tmp_path, b"")
    assert p.returncode == 1 and "vgic: the image is empty" in p.stderr
    p = _vgic_run(tmp_path, None, str(tmp_path / "missing.elf"))
    assert p.returncode == 1 and "cannot read image" in p.stderr
    p = _vgic_run(tmp_path, b"\x7fELF" + bytes(60))
    assert p.returncode == 1 and "ELF64" in p.stderr


@needs_cross
@both_modes
def test_irq_taken_in_a_short_unmask_window(deterministic: bool) -> None:
    """Linux's idle loop: WFI with IRQs masked, unmask for a few instructions, mask again."""
    g = Guest(
        "main:\n"
        + GIC_TIMER_SETUP.replace("=100", "=6250")
        + """
    msr daifset, #2
1:  wfi
    msr daifclr, #2
    nop
    msr daifset, #2
    b 1b
""",
        deterministic=deterministic,
    )
    g.off()
    assert g.x(19) == 0x280 and g.x(24) == 27


@needs_cross
@pytest.mark.parametrize(
    ("descriptor", "access", "fsc"),
    [
        (0, "ldr x2, [x3]", 0x07),  # invalid L3 descriptor: translation fault, level 3
        (0x40600403 | 1 << 7, "str x2, [x3]", 0x0F),  # AP[2]=1 (read-only): permission fault, level 3
        (0x40600003, "ldr x2, [x3]", 0x0B),  # AF=0: access flag fault, level 3
    ],
)
def test_mmu_fault_status_codes(descriptor: int, access: str, fsc: int) -> None:
    """What an OS needs to demand-page, copy on write and age pages: the right DFSC."""
    remap = f"""
    ldr x1, ={descriptor:#x}
    str x1, [x0, #8]                // L3[1]: VA 0x1000
    dsb ishst
    tlbi vmalle1
    dsb ish
    isb
    mov x3, #0x1008
    {access}
"""
    g = Guest(_mmu_guest(4096, remap))
    g.off()
    esr = g.x(20)
    assert _ec(esr) == 0x25 and esr & 0x3F == fsc
    assert bool(esr & 1 << 6) == access.startswith("str")
    assert g.x(23) == 0x1008  # FAR: the byte the access targeted


@needs_cross
def test_external_abort_with_the_mmu_on_marks_far_not_valid() -> None:
    """VA 0x1000 mapped to a physical address with nothing behind it: a synchronous
    external abort. Unicorn reports the physical address only, so FAR is marked not valid
    (ISS.FnV), which the architecture allows for external aborts."""
    remap = """
    ldr x1, =0x0C000403
    str x1, [x0, #8]                // L3[1]: VA 0x1000 -> PA 0x0C000000 (no RAM, no device)
    dsb ishst
    tlbi vmalle1
    dsb ish
    isb
    mov x3, #0x1010
    ldr x2, [x3]
"""
    g = Guest(_mmu_guest(4096, remap))
    g.off()
    esr = g.x(20)
    assert _ec(esr) == 0x25 and esr & 0x3F == 0x10 and esr & 1 << 10  # external abort, FnV
    assert g.x(21) == word_at(g, 0xF9400062)  # ELR: ldr x2, [x3]


@needs_cross
def test_oversized_txsz_is_a_translation_fault() -> None:
    """TCR_EL1.T1SZ = 63 (a 1-bit upper VA range): an access to an upper address is a
    translation fault reported to the guest (any level: the architecture lets an
    out-of-range TxSZ behave as the nearest valid one or fault at level 0), with FAR exact."""
    remap = """
    ldr x1, =25 | (1 << 8) | (1 << 10) | (3 << 12) | (63 << 16)
    msr tcr_el1, x1                 // EPD1 = 0: TTBR1 walks enabled, T1SZ out of range
    ldr x1, =0x40402000             // TTBR1: a table of invalid entries
    msr ttbr1_el1, x1
    isb
    ldr x3, =0xfffffffffffff008
    ldr x2, [x3]
"""
    g = Guest(_mmu_guest(4096, remap))
    g.off()
    esr = g.x(20)
    assert _ec(esr) == 0x25 and esr & 0x3C == 0x04  # data abort, translation fault
    assert g.x(23) == 0xFFFF_FFFF_FFFF_F008


@needs_cross
def test_oversized_t0sz_faults_without_touching_the_host() -> None:
    """TCR_EL1.T0SZ = 63 with the MMU on and the code in the lower range: every fetch is a
    translation fault; with the vectors unreachable too the machine reports an exception
    loop, and nothing raises on the host."""
    g = Guest(
        """
main:
    ldr x1, =63 | (63 << 16)
    msr tcr_el1, x1
    ldr x1, =0x40400000
    msr ttbr0_el1, x1
    isb
    mrs x1, sctlr_el1
    orr x1, x1, #1
    msr sctlr_el1, x1
    isb
    nop
    off
"""
    )
    assert g.result.status is ExitStatus.CRASH and "exception loop" in g.result.reason


SMP_CODE_PATCH = """
main:
    ldr x5, =step
    mov x7, #1
    adr x8, secondary
    psci 0xC4000003, x7, x8, xzr
1:  ldr x2, [x5]                    // wait for cpu1 to have run the old code
    cmp x2, #1
    b.ne 1b
    ldr x1, =patched
    ldr w2, =0xd2800540             // mov x0, #42
    str w2, [x1]
    dc cvau, x1
    dsb ish
    ic ivau, x1                     // broadcast: cpu1 drops its translation of the line
    dsb ish
    isb
    mov x2, #2
    str x2, [x5]
1:  ldr x2, [x5]
    cmp x2, #3
    b.ne 1b
    off

secondary:
    ldr x5, =step
    bl patched
    mov x10, x0                     // the old code: 7
    mov x2, #1
    str x2, [x5]
1:  ldr x2, [x5]
    cmp x2, #2
    b.ne 1b
    isb
    bl patched
    mov x11, x0                     // the new code: 42
    mov x2, #3
    str x2, [x5]
    b .

.balign 64
patched:
    mov x0, #7
    ret

.balign 8
step: .quad 0
"""


@needs_cross
@both_modes
def test_code_patched_by_one_cpu_runs_on_another(deterministic: bool) -> None:
    """Each CPU has its own translated code; IC IVAU (broadcast to the Inner Shareable
    domain) makes the other CPUs drop theirs for the line."""
    g = Guest(SMP_CODE_PATCH, smp=2, deterministic=deterministic)
    g.off()
    assert (g.x(10, cpu=1), g.x(11, cpu=1)) == (7, 42)


@needs_cross
@both_modes
def test_mpidr_and_virtual_counter_are_the_machines(deterministic: bool) -> None:
    """MPIDR_EL1 and CNTVCT_EL0 are answered by Unicorn itself (VMPIDR_EL2, CNTVOFF_EL2)
    with the machine's values: no crossing into Python."""
    g = Guest(
        """
main:
    mov x7, #1
    adr x8, secondary
    psci 0xC4000003, x7, x8, xzr
    ldr x5, =flag
1:  ldr x2, [x5]
    cbz x2, 1b
    mrs x10, mpidr_el1
    isb
    mrs x11, cntvct_el0
    mrs x12, cntpct_el0
    off

secondary:
    mrs x10, mpidr_el1
    ldr x5, =flag
    mov x2, #1
    str x2, [x5]
    b .

.balign 8
flag: .quad 0
""",
        smp=2,
        deterministic=deterministic,
    )
    g.off()
    assert g.x(10) == 0x8000_0000 and g.x(10, cpu=1) == 0x8000_0001
    count = g.m.clock()
    assert 0 < g.x(11) <= count and abs(g.x(12) - g.x(11)) < CNTFRQ  # both counts are the machine's


def test_the_cpu_knows_its_machine_only_through_cpuhost() -> None:
    """machine/cpu.py imports nothing of machine/virt.py (no import cycle): the machine is
    a CpuHost (a Protocol), and VirtMachine satisfies it."""
    import ast

    from vgic.machine import cpu

    tree = ast.parse(Path(cpu.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "vgic.machine.virt" not in imported
    host: cpu.CpuHost = VirtMachine(MachineConfig(memory=16 << 20))  # mypy checks this in virt.py: Cpu(self, ...)
    assert host.halted is False and host.current_cpu is None


@needs_cross
@both_modes
def test_dc_zva_zeroes_its_block_and_drops_translated_code(deterministic: bool) -> None:
    """DC ZVA zeroes the aligned 64-byte block (DCZID_EL0.BS = 4) and nothing else; a
    block of code that ran before is gone afterwards (its translation is dropped), so
    calling it again runs zeros: UNDEFINED. First 1 MB is zeroed with DC ZVA, after which
    the timed mode's helper does DC ZVA itself: the checks then run on that path."""
    g = Guest(
        """
main:
    ldr x1, =0x40400000             // 1 MB of DC ZVA: 16384 blocks
    mov x2, #16384
1:  dc zva, x1
    add x1, x1, #64
    subs x2, x2, #1
    b.ne 1b
    ldr x1, =2000000
1:  subs x1, x1, #1                 // a while, so that a new run starts
    b.ne 1b
    mrs x10, dczid_el0
    ldr x1, =buf
    mov x2, #-1
    mov x3, #0
1:  str x2, [x1, x3]
    add x3, x3, #8
    cmp x3, #192
    b.ne 1b
    add x4, x1, #64 + 8
    dc zva, x4                      // zero buf[64..127]
    ldr x11, [x1, #56]              // untouched
    ldr x12, [x1, #64]              // zeroed
    ldr x13, [x1, #120]             // zeroed
    ldr x14, [x1, #128]             // untouched
    bl code                         // translated and run once: x15 = 5
    ldr x4, =code
    dc zva, x4
    dsb ish
    ic ivau, x4
    dsb ish
    isb
    bl code                         // now zeros: UNDEFINED, taken at `code`
    b .

.balign 64
code:
    mov x15, #5
    ret
.balign 64
buf: .skip 192
""",
        deterministic=deterministic,
        timeout=30,
    )
    g.off()
    if not g.m.deterministic:
        ctl = g.m.cpus[0].ctl
        assert ctl is not None and ctl.ram_count > 0  # the helper's DC ZVA was in use
    assert g.x(10) & 0x1F == 4  # BS: 2^4 words
    assert (g.x(11), g.x(12), g.x(13), g.x(14)) == (2**64 - 1, 0, 0, 2**64 - 1)
    assert g.x(15) == 5
    assert _ec(g.x(20)) == 0 and g.x(21) == word_at(g, 0xD28000AF)  # mov x15, #5 was zeroed


@needs_cross
@needs_native
def test_a_cpu_waiting_in_wfe_lets_the_others_run() -> None:
    """Timed mode: Unicorn treats WFE as a no-op, so a CPU waiting in a WFE loop for
    another would spin out its whole slice while the other, the only one that can end the
    wait, does not run. The run ends after the WFE instead: the waiter executes a few
    blocks per turn, not millions."""
    g = Guest(
        """
main:
    mov x7, #1
    adr x8, secondary
    psci 0xC4000003, x7, x8, xzr
    ldr x1, =20000000
1:  subs x1, x1, #1                 // cpu0 works a while (the waiter keeps yielding to it)
    b.ne 1b
    ldr x5, =flag
    mov x2, #1
    str x2, [x5]
    sev
1:  ldr x2, [x5, #8]                // wait until cpu1 saw the flag
    cbz x2, 1b
    off

secondary:
    ldr x5, =flag
1:  ldr x2, [x5]
    cbnz x2, 2f
    wfe
    b 1b
2:  str x2, [x5, #8]
3:  wfi
    b 3b

.balign 8
flag: .quad 0, 0
""",
        smp=2,
        timeout=30,
    )
    g.off()
    ctl = g.m.cpus[1].ctl
    assert ctl is not None and ctl.blocks < 200_000, ctl.blocks
