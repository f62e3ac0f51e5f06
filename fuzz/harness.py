"""The fuzz target: decode bytes into an operation stream against a whole GIC, check invariants.

:func:`run_one` is what atheris (fuzz/fuzz_gic.py), the pure-Python mutator (fuzz/run.py)
and the regression replays (tests/test_fuzz_regressions.py) all call. The decoding is our
own (:class:`Bytes`), so an input means the same thing with or without atheris.

The first byte picks one of two modes:

* **chaos** (even): 1..8 CPUs, one or two ITSes with random GITS_TYPER choices, optionally a
  valid driver bring-up first; then arbitrary MMIO reads/writes (any offset, any width) to
  GICD/GITS/GICR frames, command queues (structured commands with hostile fields, or raw
  32-byte garbage), arbitrary bytes written anywhere near the tables, MSIs (``Its.translate`` and
  GITS_TRANSLATER), ICC_* reads/writes, property-table writes, EnableLPIs / ITS toggles.
* **reference** (odd): the operations tests/reference_model.py understands (commands with
  valid and invalid fields, MSIs, configuration writes and invalidations, EnableLPIs,
  SETLPIR/CLRLPIR/INVLPIR/INVALLR, PMR, acknowledge, EOI), compared with that oracle
  after every step and drained at the end.

Invariants after every step (a failure raises :class:`Violation`):

* no Python exception escapes a device model;
* bounded work: commands run per access <= command-queue entries, guest-memory accesses per
  access bounded by the queue size and 2^lpi_id_bits (never by a guest-programmed size);
* bounded host state: redistributor heaps <= 2*pending+32, pending/configuration caches
  agree and stay inside the LPI range, ITS caches <= what the tables can hold, event log
  bounded by its capacity;
* caches agree with the tables: every cached DTE/ITE/CTE re-read from guest memory (by the
  independent walker in fuzz/reference.py) gives the cached value, unless the guest itself
  wrote over that entry (then caching it is permitted, IHI 0069 5.2);
* MSIs: whenever the tables are untouched by the guest, an MSI is delivered exactly when the
  walker finds a mapping, to the walker's CPU, and nowhere else;
* acknowledges: an LPI acknowledged by CPU n was pending on CPU n's redistributor, was its
  best enabled LPI, and is pending nowhere afterwards on that CPU;
* reference mode: pending sets, cached configurations, HPPIR1, RPR, IRQ line, command error
  codes and every acknowledge equal the reference model's.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT / "tests", ROOT / "fuzz"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
try:
    import vgic  # noqa: F401 - installed (editable) in the venv, or on PYTHONPATH
except ImportError:
    sys.path.insert(0, str(ROOT / "src"))

from reference import Walker  # noqa: E402
from reference_model import LPI_BASE, SPURIOUS, RefGic  # noqa: E402
from vgic.driver import Allocator, ItsDriver  # noqa: E402
from vgic.events import EventLog, Kind  # noqa: E402
from vgic.gic import VIRT_GICD_BASE, VIRT_GICR_BASE, VIRT_ITS_BASE, Gic, GicConfig  # noqa: E402
from vgic.gicv3.redistributor import CHUNK_SHIFT, RD_FRAME_SIZE, RedistributorConfig  # noqa: E402
from vgic.its import commands as C  # noqa: E402
from vgic.its.config import ErrorPolicy, ItsConfig  # noqa: E402
from vgic.its.registers import ItsTyper  # noqa: E402
from vgic.memory import GuestMemory  # noqa: E402

RAM = 0x4000_0000
RAM_SIZE = 4 << 20
ITS2_BASE = 0x0830_0000
MAX_OPS = 400  # operations decoded from one input


class Violation(AssertionError):
    """An invariant broke (or a model raised)."""


class Bytes:
    """Consume an input: integers, choices; zeros once exhausted."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)

    def u8(self) -> int:
        if self.pos >= len(self.data):
            self.pos += 1
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uint(self, nbytes: int) -> int:
        v = 0
        for i in range(nbytes):
            v |= self.u8() << (8 * i)
        return v

    def pick(self, seq: tuple[int, ...] | list[int]) -> int:
        return seq[self.u8() % len(seq)]

    def bytes(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out + bytes(n - len(out))


class TrackingMemory(GuestMemory):
    """Guest memory that counts accesses (bounded work) and remembers which 8-byte blocks
    were written by someone other than the ITS (guest stores, pending-table write-back)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.dirty: set[int] = set()
        # With two ITSes: blocks written by each. One ITS writing another's tables is a
        # guest error (each ITS owns its tables); for the other ITS it is a foreign write.
        self.actor = -1
        self.by_its: dict[int, set[int]] = {}

    def write64(self, address: int, value: int) -> None:
        if self.actor >= 0:
            self.by_its.setdefault(self.actor, set()).update(range(address >> 3, (address + 7 >> 3) + 1))
        super().write64(address, value)

    def fill(self, address: int, size: int, byte: int = 0) -> None:
        if self.actor >= 0:
            self.by_its.setdefault(self.actor, set()).update(range(address >> 3, (address + size - 1 >> 3) + 1))
        super().fill(address, size, byte)

    def dirty_for(self, its: int, address: int, size: int) -> bool:
        if self.is_dirty(address, size):
            return True
        if not self.by_its:
            return False
        blocks = range(address >> 3, (address + max(size, 1) - 1 >> 3) + 1)
        return any(any(b in written for b in blocks) for n, written in self.by_its.items() if n != its)

    def _locate(self, address: int, size: int, write: bool):  # type: ignore[no-untyped-def]
        self.ops += 1
        return super()._locate(address, size, write)

    def mark(self, address: int, size: int) -> None:
        for block in range(address >> 3, (address + max(size, 1) - 1 >> 3) + 1):
            self.dirty.add(block)

    def is_dirty(self, address: int, size: int) -> bool:
        dirty = self.dirty
        if not dirty:
            return False
        return any(b in dirty for b in range(address >> 3, (address + max(size, 1) - 1 >> 3) + 1))

    def set_bit(self, address: int, bit: int, value: bool) -> None:
        self.mark(address, 1)
        super().set_bit(address, bit, value)


# -- pools of interesting values ------------------------------------------------------
GITS_OFFSETS = (0x0, 0x4, 0x8, 0xC, 0x10, 0x40, 0x48, 0x80, 0x84, 0x88, 0x8C, 0x90, 0x94,
                *range(0x100, 0x140, 4), 0xFFE8, 0xFFD0, 0x10040, 0x10044, 0x1003E, 0x20020)  # fmt: skip
GICR_OFFSETS = (0x0, 0x4, 0x8, 0xC, 0x14, 0x40, 0x44, 0x48, 0x70, 0x74, 0x78, 0x7C, 0xA0, 0xB0, 0xC0, 0xFFE8,
                0x10080, 0x10100, 0x10180, 0x10200, 0x10280, 0x10300, 0x10400, 0x10C00, 0x10C04)  # fmt: skip
GICD_OFFSETS = (0x0, 0x4, 0x8, 0x80, 0x84, 0x100, 0x104, 0x180, 0x200, 0x204, 0x280, 0x300, 0x400, 0x420,
                0xC00, 0xC08, 0x6100, 0x6108, 0x6000, 0x7FD8, 0xFFE8)  # fmt: skip
VALUES = (0, 1, 2, 3, 0x80, 0xFF, 0x100, 0xFFFF, 0x1_0000, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF,
          1 << 62, 1 << 63, 0xC000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF, 8192, 8193, 8200, 65535, 65536)  # fmt: skip
ICC_REGS = ("ICC_PMR_EL1", "ICC_IAR0_EL1", "ICC_EOIR0_EL1", "ICC_HPPIR0_EL1", "ICC_BPR0_EL1", "ICC_AP0R0_EL1",
            "ICC_AP1R0_EL1", "ICC_AP1R1_EL1", "ICC_AP1R3_EL1", "ICC_DIR_EL1", "ICC_RPR_EL1", "ICC_SGI1R_EL1",
            "ICC_ASGI1R_EL1", "ICC_SGI0R_EL1", "ICC_IAR1_EL1", "ICC_EOIR1_EL1", "ICC_HPPIR1_EL1", "ICC_BPR1_EL1",
            "ICC_CTLR_EL1", "ICC_SRE_EL1", "ICC_IGRPEN0_EL1", "ICC_IGRPEN1_EL1")  # fmt: skip
DEVICES = (0, 0, 1, 1, 2, 3, 31, 32, 255, 256, 511, 512, 4095, 65535, 65536, 0xFFFF_FFFF)
EVENTS = (0, 0, 1, 2, 3, 7, 8, 15, 16, 255, 256, 65535, 65536, 0xFFFF_FFFF)
ICIDS = (0, 0, 1, 2, 3, 4, 7, 8, 255, 511, 512, 0xFFFF)
LPIS = (8192, 8193, 8194, 8195, 8200, 8191, 1023, 16383, 16384, 32767, 65535, 65536, 0xFFFF_FFFF)
CONFIGS = (0xA3, 0xA2, 0x03, 0x43, 0xF3, 0x00, 0xFF, 0x47, 0xE9, 0xA1)


@dataclass
class Stats:
    ops: int = 0
    commands: int = 0
    msis: int = 0
    delivered: int = 0
    acks: int = 0
    features: set[tuple[object, ...]] = field(default_factory=set)


class Harness:
    """One GIC, driven by one input."""

    def __init__(self, data: bytes, stats: Stats) -> None:
        self.b = Bytes(data)
        self.stats = stats
        self.mem = TrackingMemory()
        self.mem.add_ram(RAM, RAM_SIZE)
        self.ref: RefGic | None = None

    # == setup ==========================================================================
    def setup(self) -> None:
        b = self.b
        mode = b.u8()
        self.ncpus = 1 + b.u8() % 8
        self.reference = bool(mode & 1)
        if self.reference:
            self._setup_reference(mode)
            return
        flags, sizes = b.u8(), b.u8()
        self.lpi_id_bits = 14 + sizes % 3
        cidbits = (16, 4)[sizes >> 5 & 1]
        # entry sizes: 8 or 12-byte ITEs, or GIC-600's compact 4-byte ITEs and 2-byte CTEs
        compact = bool(sizes >> 7 & 1) and cidbits == 4 and not flags & 1
        typer = ItsTyper(
            devbits=(4, 8, 9, 12, 16, 20, 32, 9)[sizes >> 2 & 7],
            pta=bool(flags & 1),
            hcc=(0, 0, 2, 8)[flags >> 2 & 3],
            itt_entry_size=4 if compact else (8, 12)[flags >> 4 & 1],
            cidbits=cidbits,
        )
        policy = ErrorPolicy.CONTINUE if flags & 2 else ErrorPolicy.STALL
        cfg = ItsConfig(
            typer=typer,
            error_policy=policy,
            memory_fault_policy=policy,
            indirect_collection_table=bool(sizes >> 6 & 1),
            collection_entry_size=2 if compact else 8,
        )
        two = bool(flags >> 5 & 1)
        self.two_its = two
        self.mem.actor = -1
        its = (cfg, ItsConfig(typer=ItsTyper(pta=not typer.pta))) if two else (cfg,)
        self.log = EventLog(capacity=256, keep=frozenset({Kind.COMMAND_ERROR}))
        rd_config = RedistributorConfig(lpi_id_bits=self.lpi_id_bits, lpis_disableable=not flags >> 7 & 1,
                                        direct_lpi=True)  # fmt: skip
        bases = (VIRT_ITS_BASE, ITS2_BASE)[: len(its)]
        config = GicConfig(num_cpus=self.ncpus, its=its, its_bases=bases, redistributor=rd_config)
        self.gic = Gic(self.mem, config, log=self.log)
        self.heap = Allocator(RAM, RAM_SIZE)
        self.drivers = [ItsDriver(self.gic, self.heap, its=n) for n in range(len(its))]
        self.walkers = [Walker(self.mem, i.read) for i in self.gic.its]
        self.addresses: list[int] = [RAM, RAM + RAM_SIZE - 4096, RAM + RAM_SIZE - 8, RAM + RAM_SIZE, 0, 0x1000]
        if flags >> 6 & 1:  # a valid bring-up first, so the fuzzer starts deep
            d = self.drivers[0]
            d.setup_lpis(id_bits=self.lpi_id_bits)
            for n, drv in enumerate(self.drivers):
                drv.setup_its(two_level=bool(sizes >> 7 & 1) and n == 0)
                if hasattr(drv, "device_l1"):
                    drv.add_l2_page(0)
                pta = self.gic.its[n].typer.pta
                drv.send(*(C.Mapc(c, self.rdbase(n, c, pta), True) for c in range(self.ncpus)))
                for dev in range(2):
                    drv.map_device(dev, 3)
                    drv.send(*(C.Mapti(dev, e, LPI_BASE + 8 * dev + e, e % self.ncpus) for e in range(4)))
                self.addresses += [drv.queue_base, *drv.itts.values()]
            self.addresses += [d.prop_table, d.pending_table(0)]
            for n in range(len(its)):
                for k in range(8):
                    v = self.gic.its[n].read(0x100 + 8 * k, 8)
                    if v >> 63:
                        self.addresses.append(v & 0x0000_FFFF_FFFF_F000)
        for _ in range(4):  # spare guest memory the fuzzer can point registers at
            self.addresses.append(self.heap.alloc(65536, 65536))
        self.prop_hint = self.addresses[-1]

    def rdbase(self, its: int, cpu: int, pta: bool) -> int:
        return (VIRT_GICR_BASE + cpu * RD_FRAME_SIZE) >> 16 if pta else cpu

    # == chaos mode =====================================================================
    def chaos_step(self) -> None:
        b = self.b

        op = b.u8() % 20
        self.stats.features.add(("op", op))
        if op in (0, 1):
            self.mmio(write=True)
        elif op == 2:
            self.mmio(write=False)
        elif op in (3, 4, 5):
            self.commands()
        elif op == 6:
            self.scribble()
        elif op in (7, 8, 9):
            self.msi()
        elif op == 10:
            cpu = self.gic.cpus[b.u8() % self.ncpus]
            cpu.write_sysreg(b.pick(ICC_REGS), self.value())
        elif op == 11:
            c = b.u8() % self.ncpus
            name = b.pick(ICC_REGS)
            if name == "ICC_IAR1_EL1":
                self.ack(c, eoi=False)
            else:
                self.gic.cpus[c].read_sysreg(name)
        elif op in (12, 13, 14):
            self.ack(b.u8() % self.ncpus, eoi=True)
        elif op == 15:
            prop = self.drivers[0].prop_table or self.prop_hint
            intid = b.pick(LPIS) if b.u8() & 1 else LPI_BASE + b.u8()
            addr = prop + intid - LPI_BASE
            if self.mem.contains(addr, 1):
                self.guest_write(addr, bytes([b.pick(CONFIGS)]))
            if b.u8() & 1:
                self.gic.write(VIRT_GICR_BASE + (b.u8() % self.ncpus) * RD_FRAME_SIZE + 0xA0, 8, intid)
        elif op == 16:
            c = b.u8() % self.ncpus
            self.gic.write(VIRT_GICR_BASE + c * RD_FRAME_SIZE, 4, b.u8() & 1)
        elif op == 17:
            n = b.u8() % len(self.gic.its)
            self.mem.actor = n if self.two_its else -1
            self.gic.its[n].write(0x0, 4, b.u8() & 1)
        elif op == 18:
            c = b.u8() % self.ncpus
            reg = b.pick((0x40, 0x48, 0xA0, 0xB0))
            self.gic.write(VIRT_GICR_BASE + c * RD_FRAME_SIZE + reg, 8, b.pick(LPIS))
        else:
            self.gic.set_spi(32 + b.u8() % 256, bool(b.u8() & 1))

    def value(self) -> int:
        b = self.b
        how = b.u8() % 4
        if how == 0:
            return b.pick(VALUES)
        if how == 1:
            return b.uint(8)
        if how == 2:  # an address-like value with low attribute bits
            return (b.pick(self.addresses) + (b.u8() << 12)) | b.uint(2) & 0xFFF | (b.u8() & 0xC0) << 56
        return b.uint(4)

    def mmio(self, write: bool) -> None:
        b = self.b
        frame = b.u8() % 3
        if frame == 0:
            n = b.u8() % len(self.gic.its)
            self.mem.actor = n if self.two_its else -1
            base = self.gic.config.its_bases[n]
            offset = b.pick(GITS_OFFSETS) if b.u8() & 3 else b.uint(3) % 0x20000
        elif frame == 1:
            base = VIRT_GICR_BASE + (b.u8() % self.ncpus) * RD_FRAME_SIZE
            offset = b.pick(GICR_OFFSETS) if b.u8() & 3 else b.uint(3) % 0x20000
        else:
            base = VIRT_GICD_BASE
            offset = b.pick(GICD_OFFSETS) if b.u8() & 3 else b.uint(2)
        size = (4, 4, 8, 8, 1, 2, 3, 16)[b.u8() % 8]
        self.stats.features.add(("mmio", frame, offset, size, write))
        if write:
            self.gic.write(base + offset, size, self.value())
        else:
            self.gic.read(base + offset, size)

    def command(self) -> bytes:
        b = self.b
        kind = b.u8() % 16
        dev, ev, icid = b.pick(DEVICES), b.pick(EVENTS), b.pick(ICIDS)
        pta = self.gic.its[0].typer.pta
        rd = self.rdbase(0, b.u8() % (self.ncpus + 1), pta) if b.u8() & 7 else b.uint(5)
        if kind == 0:
            cmd: C.Command = C.Mapd(
                dev, b.pick((0, 1, 2, 3, 7, 15, 16, 31)), b.pick(self.addresses) & ~0xFF, bool(b.u8() & 3)
            )
        elif kind == 1:
            cmd = C.Mapc(icid, rd, bool(b.u8() & 3))
        elif kind == 2:
            cmd = C.Mapti(dev, ev, b.pick(LPIS), icid)
        elif kind == 3:
            cmd = C.Mapi(dev, ev, icid)
        elif kind == 4:
            cmd = C.Movi(dev, ev, icid)
        elif kind == 5:
            cmd = C.Movall(rd, self.rdbase(0, b.u8() % (self.ncpus + 1), pta))
        elif kind == 6:
            cmd = C.Discard(dev, ev)
        elif kind == 7:
            cmd = C.Int(dev, ev)
        elif kind == 8:
            cmd = C.Clear(dev, ev)
        elif kind == 9:
            cmd = C.Inv(dev, ev)
        elif kind == 10:
            cmd = C.Invall(icid)
        elif kind == 11:
            cmd = C.Sync(rd)
        else:  # raw: any opcode, any fields
            raw = bytearray(b.bytes(32))
            if kind == 12:
                raw[0] = b.pick((0x01, 0x03, 0x04, 0x05, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x21, 0x29))
            return bytes(raw)
        self.stats.features.add(("cmd", kind))
        return C.encode(cmd)

    def commands(self) -> None:
        b = self.b
        n = b.u8() % len(self.gic.its)
        self.mem.actor = n if self.two_its else -1
        its = self.gic.its[n]
        count = 1 + b.u8() % 4
        cbaser = its.read(0x80, 8)
        base = cbaser & 0x000F_FFFF_FFFF_F000
        qbytes = ((cbaser & 0xFF) + 1) * 4096
        offset = its.read(0x88, 8) & 0xFFFE0
        for _ in range(count):
            data = self.command()
            if self.mem.contains(base + offset, 32):
                self.guest_write(base + offset, data)
            offset = (offset + 32) % qbytes
        before = self.log.counts[Kind.COMMAND] + self.log.counts[Kind.COMMAND_ERROR]
        its.write(0x88, 8, offset | (b.u8() & 1))
        ran = self.log.counts[Kind.COMMAND] + self.log.counts[Kind.COMMAND_ERROR] - before
        self.stats.commands += ran
        if ran > qbytes // 32:
            raise Violation(f"one CWRITER write ran {ran} commands; the queue holds {qbytes // 32}")

    def guest_write(self, address: int, data: bytes) -> None:
        self.mem.mark(address, len(data))
        self.mem.write_bytes(address, data)

    def scribble(self) -> None:
        b = self.b
        addr = b.pick(self.addresses) + (b.uint(2) if b.u8() & 1 else b.u8() * 8)
        n = 1 + b.u8() % 16
        if b.u8() & 1:  # something that looks like a valid entry
            data = ((1 << 63) | b.uint(7)).to_bytes(8, "little")
        else:
            data = b.bytes(n)
        if self.mem.contains(addr, len(data)):
            self.guest_write(addr, data)

    # == MSIs and acknowledges ============================================================
    def msi(self) -> None:
        b = self.b
        n = b.u8() % len(self.gic.its)
        its = self.gic.its[n]
        dev, ev = b.pick(DEVICES), b.pick(EVENTS)
        walk = self.walkers[n].translate(dev, ev)
        before = [rd.pending_lpis for rd in self.gic.redistributors]
        if b.u8() & 1:
            got = its.translate(dev, ev)
        else:
            its.write(0x10040, 4, ev, requester_id=dev)
            got = None
        self.stats.msis += 1
        after = [rd.pending_lpis for rd in self.gic.redistributors]
        new = [a - p for a, p in zip(after, before, strict=True)]
        lost = [p - a for a, p in zip(after, before, strict=True)]
        if any(lost):
            raise Violation(f"MSI {dev:#x}/{ev} made LPIs stop being pending: {lost}")
        if sum(len(x) for x in new) > 1:
            raise Violation(f"MSI {dev:#x}/{ev} made several LPIs pending: {new}")
        clean = not any(self.mem.dirty_for(n, a, s) for a, s in walk.touched)
        if not clean or not its.enabled or walk.why in ("HCC collection",):
            self.stats.features.add(("msi-unchecked", walk.why, its.enabled))
            return
        target = None
        if walk.rdbase is not None and walk.ite is not None:
            target = its._redistributor(walk.rdbase)  # the RDbase -> redistributor rule (PTA)
        self.stats.features.add(("msi", walk.why, target is not None))
        if target is None:
            if got or any(new):
                raise Violation(f"MSI {dev:#x}/{ev} delivered {new} but the tables map nothing ({walk.why})")
            return
        assert walk.ite is not None
        pintid = walk.ite[0]
        accepted = target.accepts(pintid)
        if got is not None and got != accepted:
            raise Violation(f"MSI {dev:#x}/{ev} -> LPI {pintid} on CPU {target.index}: msi() said {got}")
        if accepted:
            if pintid not in after[target.index]:
                raise Violation(f"MSI {dev:#x}/{ev} -> LPI {pintid}: not pending on CPU {target.index}")
            wrong = [c for c, x in enumerate(new) if x and c != target.index]
            if wrong:
                raise Violation(f"MSI {dev:#x}/{ev} -> LPI {pintid} on CPU {target.index} also hit CPUs {wrong}")
            self.stats.delivered += 1
        elif any(new):
            raise Violation(f"MSI {dev:#x}/{ev}: CPU {target.index} does not accept LPI {pintid}, yet {new}")

    def ack(self, c: int, eoi: bool) -> int:
        rd = self.gic.redistributors[c]
        before = [r.pending_lpis for r in self.gic.redistributors]
        cands = [(rd.lpi_config(i) or 0, i) for i in before[c]]
        best = min(((cfg & 0xFC, i) for cfg, i in cands if cfg & 1), default=None)
        intid = self.gic.cpus[c].read_sysreg("ICC_IAR1_EL1")
        after = [r.pending_lpis for r in self.gic.redistributors]
        self.stats.acks += 1
        if intid >= LPI_BASE:
            self.stats.features.add(("ack-lpi",))
            if intid not in before[c]:
                raise Violation(f"CPU {c} acknowledged LPI {intid}, which was not pending on its redistributor")
            if intid in after[c]:
                raise Violation(f"CPU {c} acknowledged LPI {intid}, which is still pending (delivered twice)")
            if best is not None and best[1] != intid:
                raise Violation(f"CPU {c} acknowledged LPI {intid}; its best pending LPI was {best[1]}")
            if before[c] - after[c] != {intid}:
                raise Violation(f"acknowledging {intid} on CPU {c} removed {before[c] - after[c]}")
        elif before[c] - after[c]:
            raise Violation(f"CPU {c} acknowledged {intid} but lost LPIs {before[c] - after[c]}")
        for o in range(self.ncpus):
            if o != c and before[o] != after[o]:
                raise Violation(f"an acknowledge on CPU {c} changed CPU {o}'s pending LPIs")
        if eoi and intid != SPURIOUS:
            self.gic.cpus[c].write_sysreg("ICC_EOIR1_EL1", intid)
        return intid

    # == invariants =====================================================================
    def check_structure(self) -> None:
        for rd in self.gic.redistributors:
            state = rd.save_state()
            pending, config = state.pending, state.config
            if any(len(c) > 1 << CHUNK_SHIFT for c in rd._lpis.values()):
                raise Violation(f"{rd.source}: a chunk of pending LPIs holds more than {1 << CHUNK_SHIFT}")
            if any(i >> CHUNK_SHIFT != k for k, c in rd._lpis.items() for i in c):
                raise Violation(f"{rd.source}: an LPI is kept in another INTID's chunk")
            ranked = [i for level in rd._levels.values() for i in level]
            if sorted(ranked) != sorted(i for i in pending if config[i] & 1) or len(ranked) != len(set(ranked)):
                raise Violation(f"{rd.source}: priority levels {sorted(ranked)} != pending enabled LPIs")
            if any(list(level) != sorted(level) for level in rd._levels.values()):
                raise Violation(f"{rd.source}: a priority level is out of order")
            if rd._priorities != sorted(p for p, level in rd._levels.items() if level):
                raise Violation(f"{rd.source}: priorities {rd._priorities} are not those of the non-empty levels")
            if not rd.enable_lpis and pending:
                raise Violation(f"{rd.source}: LPIs pending with EnableLPIs=0")
            if any(not LPI_BASE <= i < rd._lpi_limit for i in pending):
                raise Violation(f"{rd.source}: pending LPI outside [8192, {rd._lpi_limit})")
            if len(state.table_bits) > 1 << rd.config.lpi_id_bits:
                raise Violation(f"{rd.source}: pending-table shadow larger than the LPI space")
        if len(self.log.events) > self.log.capacity:
            raise Violation("event log grew beyond its capacity")

    def check_caches(self) -> None:
        for n, its in enumerate(self.gic.its):
            self.check_its_caches(n, its)

    def check_its_caches(self, n: int, its) -> None:  # type: ignore[no-untyped-def]
        """Every cached entry equals what the tables hold, unless the guest wrote over it."""
        problems = its.cache.verify()
        if problems:
            raise Violation(f"its{n}: translation cache: {problems[0]}")
        if not its.cache.devices and not its.cache.collections:
            return
        if not its.enabled:
            raise Violation(f"its{n}: caches kept while disabled")
        walker = self.walkers[n]
        from reference import Walk

        typer, dt, ct = walker.tables()
        if len(its.cache.devices) > (dt.capacity if dt else 0):
            raise Violation(f"its{n}: {len(its.cache.devices)} cached devices, table holds {dt.capacity if dt else 0}")
        for dev_id, dev in its.cache.devices.items():
            w = Walk()
            try:
                dte = walker.dte(w, typer, dt, dev_id)
            except Exception:
                dte = None
            if any(self.mem.dirty_for(n, a, s) for a, s in w.touched):
                continue
            if dte != (dev.entry.itt_addr, dev.entry.size):
                raise Violation(f"its{n}: cached DTE {dev_id:#x} = {dev.entry}, tables say {dte} ({w.why})")
            if len(dev.events) > dev.entry.events:
                raise Violation(f"its{n}: {len(dev.events)} cached ITEs for a {dev.entry.events}-event device")
            for ev, ite in dev.events.items():
                w = Walk()
                try:
                    got = walker.ite(w, typer, dte, ev)
                except Exception:
                    got = None
                if any(self.mem.dirty_for(n, a, s) for a, s in w.touched):
                    continue
                if got != (ite.pintid, ite.icid):
                    raise Violation(f"its{n}: cached ITE {dev_id:#x}/{ev} = {ite}, tables say {got} ({w.why})")
        for icid, rd in its.cache.collections.items():
            if icid < typer.hcc:
                rdbase = its._hcc_collections.get(icid)
            else:
                w = Walk()
                try:
                    rdbase = walker.cte(w, typer, ct, icid)
                except Exception:
                    rdbase = None
                if any(self.mem.dirty_for(n, a, s) for a, s in w.touched):
                    continue
            if rdbase is None or its._redistributor(rdbase) is not rd:
                raise Violation(f"its{n}: cached collection {icid} -> {rd.source}, tables say RDbase {rdbase}")

    # == reference mode =================================================================
    def _setup_reference(self, mode: int) -> None:
        b = self.b
        self.stall = bool(mode & 2)
        self.mem = TrackingMemory()
        self.mem.add_ram(RAM, 64 << 20)
        policy = ErrorPolicy.STALL if self.stall else ErrorPolicy.CONTINUE
        self.log = EventLog(capacity=256, keep=frozenset({Kind.COMMAND_ERROR}))
        its = ItsConfig(error_policy=policy, memory_fault_policy=policy)
        gic = GicConfig(num_cpus=self.ncpus, its=(its,), redistributor=RedistributorConfig(direct_lpi=True))
        self.gic = Gic(self.mem, gic, log=self.log)
        self.drv = ItsDriver(self.gic, Allocator(RAM, 64 << 20))
        self.drv.setup_lpis(id_bits=16, priority=0xA0, enable=True)
        self.drv.setup_its(queue_pages=1, table_pages=1)
        self.walkers = [Walker(self.mem, i.read) for i in self.gic.its]
        self.itt = {(d, s): self.drv.heap.alloc(128 << 10, 256) for d in range(4) for s in range(2)}
        self.itt[(600, 0)] = self.itt[(600, 1)] = self.drv.heap.alloc(256, 256)
        self.ref = RefGic(self.ncpus)
        for c in range(self.ncpus):
            self.ref.set_enable(c, True)
        for c in range(self.ncpus):
            self.ref_command(C.Mapc(c, c, True), self.ref.apply_mapc(c, c, True))
        for d in range(3):
            self.ref_command(C.Mapd(d, 3, self.itt[(d, 0)], True), self.ref.apply_mapd(d, 3, self.itt[(d, 0)], True))
            for e in range(4):
                p, icid = LPI_BASE + (4 * d + e) % 9, (d + e) % self.ncpus
                self.ref_command(C.Mapti(d, e, p, icid), self.ref.apply_mapti(d, e, p, icid))
        _ = b

    def ref_command(self, cmd: C.Command, expected: set[int]) -> None:
        log = self.log
        before = log.counts[Kind.COMMAND_ERROR]
        self.drv.send(cmd)
        self.stats.commands += 1
        errors = log.counts[Kind.COMMAND_ERROR] - before
        self.stats.features.add(("ref-cmd", cmd.name, bool(expected)))
        if not expected:
            if errors:
                raise Violation(f"{C.format_command(cmd)}: unexpected {log.errors[-1]}")
            return
        if errors != 1:
            raise Violation(f"{C.format_command(cmd)}: expected one of {sorted(map(hex, expected))}, got {errors}")
        code = log.errors[-1].code
        if code not in expected:
            raise Violation(f"{C.format_command(cmd)}: {code:#08x} not in {sorted(map(hex, expected))}")
        if self.stall:
            creadr = self.drv.creadr
            if not creadr & 1:
                raise Violation("the queue should have stalled")
            self.mem.write_bytes(self.drv.queue_base + (creadr & 0xFFFE0), C.encode(C.Sync(0)))
            self.drv.its_write64(0x88, self.drv.cwriter | 1)
        if self.drv.creadr != self.drv.cwriter:
            raise Violation("CREADR != CWRITER after a command")

    def ref_step(self) -> None:
        b, ref = self.b, self.ref
        assert ref is not None
        op = b.u8() % 22
        self.stats.features.add(("ref-op", op))
        dev = b.pick((0, 0, 1, 1, 2, 2, 3, 600))
        ev = b.pick((0, 1, 2, 3, 0, 1, 2, 3, 5, 7, 40, 8192, 8193, 8200))
        icid = b.pick((0, 1, 2, 3, 4, 5, 6, 7, 700))
        rd1, rd2 = b.u8() % (self.ncpus + 1), b.u8() % (self.ncpus + 1)
        c = b.u8() % self.ncpus
        lpi = b.pick((*range(LPI_BASE, LPI_BASE + 8), 8200, 100, 70000))
        if op == 0:
            size, slot, valid = b.pick((3, 3, 3, 0, 1, 13, 13, 16)), b.u8() & 1, bool(b.u8() & 3)
            itt = self.itt[(dev, slot)]
            self.ref_command(C.Mapd(dev, size, itt, valid), ref.apply_mapd(dev, size, itt, valid))
        elif op == 1:
            valid = bool(b.u8() & 3)
            self.ref_command(C.Mapc(icid, rd1, valid), ref.apply_mapc(icid, rd1, valid))
        elif op == 2:
            self.ref_command(C.Mapti(dev, ev, lpi, icid), ref.apply_mapti(dev, ev, lpi, icid))
        elif op == 3:
            self.ref_command(C.Mapi(dev, ev, icid), ref.apply_mapti(dev, ev, ev, icid, mapi=True))
        elif op == 4:
            self.ref_command(C.Movi(dev, ev, icid), ref.apply_movi(dev, ev, icid))
        elif op == 5:
            self.ref_command(C.Movall(rd1, rd2), ref.apply_movall(rd1, rd2))
        elif op == 6:
            self.ref_command(C.Discard(dev, ev), ref.apply_discard(dev, ev))
        elif op == 7:
            self.ref_command(C.Int(dev, ev), ref.apply_int(dev, ev))
        elif op == 8:
            self.ref_command(C.Clear(dev, ev), ref.apply_clear(dev, ev))
        elif op == 9:
            self.ref_command(C.Inv(dev, ev), ref.apply_inv(dev, ev))
        elif op == 10:
            self.ref_command(C.Invall(icid), ref.apply_invall(icid))
        elif op == 11:
            self.ref_command(C.Sync(rd1), ref.apply_sync(rd1))
        elif op in (12, 13):
            expected = ref.msi(dev, ev)
            self.stats.msis += 1
            if self.gic.its[0].translate(dev, ev) != expected:
                raise Violation(f"MSI {dev}/{ev}: model and reference disagree (reference {expected})")
        elif op == 14:
            byte = b.pick((0x00, 0x20, 0x40, 0x44, 0x80, 0xA0, 0xA4, 0xE8, 0xF0, 0xF8)) | 2 | (b.u8() & 1)
            self.mem.write8(self.drv.prop_table + lpi - LPI_BASE, byte) if LPI_BASE <= lpi < 65536 else None
            if LPI_BASE <= lpi < 65536:
                ref.prop[lpi] = byte
            how = b.u8() % 3
            if how == 1:
                self.drv.gicr_write(c, 0xA0, lpi, 8)
                ref.reload(c, lpi)
            elif how == 2:
                self.drv.gicr_write(c, 0xB0, 0, 8)
                ref.reload_all(c)
        elif op == 15:
            enable = bool(b.u8() & 1)
            self.drv.gicr_write(c, 0x0, int(enable))
            ref.set_enable(c, enable)
        elif op == 16:
            self.drv.gicr_write(c, 0x40, lpi, 8)
            ref.set_pending(c, lpi)
        elif op == 17:
            self.drv.gicr_write(c, 0x48, lpi, 8)
            ref.clear_pending(c, lpi)
        elif op == 18:
            pmr = b.pick((0x00, 0x40, 0x44, 0x80, 0xA0, 0xA8, 0xF0, 0xF8, 0xFF))
            self.gic.cpus[c].write_sysreg("ICC_PMR_EL1", pmr)
            ref.cpus[c].pmr = pmr & 0xF8
        elif op == 19:
            self.gic.cpus[c].write_sysreg("ICC_EOIR1_EL1", 8192)
            ref.eoi(c)
        else:
            if self.ref_ack(c) != SPURIOUS and op == 21:
                self.gic.cpus[c].write_sysreg("ICC_EOIR1_EL1", 8192)
                ref.eoi(c)

    def ref_ack(self, c: int) -> int:
        ref = self.ref
        assert ref is not None
        expected = ref.expected_ack(c)
        got = self.gic.cpus[c].read_sysreg("ICC_IAR1_EL1")
        self.stats.acks += 1
        if got != expected:
            raise Violation(f"CPU {c} acknowledged {got}, reference says {expected}")
        if got != SPURIOUS:
            ref.acknowledge(c, got)
        return got

    def ref_check(self) -> None:
        ref = self.ref
        assert ref is not None
        for c in range(self.ncpus):
            rd, cpu, rc = self.gic.redistributors[c], self.gic.cpus[c], ref.cpus[c]
            if rd.enable_lpis != rc.enabled:
                raise Violation(f"CPU {c} EnableLPIs")
            if rd.pending_lpis != set(rc.pending):
                raise Violation(f"CPU {c} pending {sorted(rd.pending_lpis)}, reference {sorted(rc.pending)}")
            for intid, cfg in rc.pending.items():
                if rd.lpi_config(intid) != cfg:
                    raise Violation(f"CPU {c} LPI {intid} cached configuration")
            if cpu.read_sysreg("ICC_HPPIR1_EL1") != ref.highest_pending(c):
                raise Violation(f"CPU {c} HPPIR1")
            if cpu.read_sysreg("ICC_RPR_EL1") != ref.running_priority(c):
                raise Violation(f"CPU {c} RPR")
            if cpu.irq_level != bool(ref.deliverable(c)):
                raise Violation(f"CPU {c} IRQ line")
        self.check_structure()

    def ref_drain(self) -> None:
        ref = self.ref
        assert ref is not None
        for c in range(self.ncpus):
            while ref.cpus[c].active:
                self.gic.cpus[c].write_sysreg("ICC_EOIR1_EL1", 8192)
                ref.eoi(c)
            self.drv.gicr_write(c, 0x0, 1)
            ref.set_enable(c, True)
            self.gic.cpus[c].write_sysreg("ICC_PMR_EL1", 0xF0)
            ref.cpus[c].pmr = 0xF0
        for intid in (*range(LPI_BASE, LPI_BASE + 8), 8200):
            self.mem.write8(self.drv.prop_table + intid - LPI_BASE, 0xA3)
            ref.prop[intid] = 0xA3
        for c in range(self.ncpus):
            self.drv.gicr_write(c, 0xB0, 0, 8)
            ref.reload_all(c)
        for c in range(self.ncpus):
            expected = sorted(ref.cpus[c].pending)
            got = self.drv.drain(c, limit=1000)
            if got != expected:
                raise Violation(f"CPU {c} drained {got}, reference has {expected} (lost or duplicated LPIs)")

    # == the loop =======================================================================
    def run(self) -> None:
        self.setup()
        step = self.ref_step if self.reference else self.chaos_step
        check = self.ref_check if self.reference else self.check_structure
        ops_limit = self._ops_limit()
        for i in range(MAX_OPS):
            if self.b.done:
                break
            ops0 = self.mem.ops
            queue0 = self._queue_entries()
            ran0 = self.log.counts[Kind.COMMAND] + self.log.counts[Kind.COMMAND_ERROR]
            step()
            self.stats.ops += 1
            used = self.mem.ops - ops0
            if used > ops_limit:
                raise Violation(f"one operation made {used} guest-memory accesses (limit {ops_limit})")
            ran = self.log.counts[Kind.COMMAND] + self.log.counts[Kind.COMMAND_ERROR] - ran0
            if ran > max(queue0, self._queue_entries()):
                raise Violation(f"one operation ran {ran} commands; no queue holds more than {queue0}")
            check()
            if i % 8 == 7:  # the cache walk is the costly check: every few steps, and at the end
                self.check_caches()
        self.check_caches()
        if self.reference:
            self.ref_drain()

    def _queue_entries(self) -> int:
        """The most commands one access may run: one pass over the largest queue (6.2)."""
        return max(((its.regs.get("CBASER") & 0xFF) + 1) * 128 for its in self.gic.its)

    def _ops_limit(self) -> int:
        """Guest-memory accesses one operation may make: a full command queue (at most 256
        pages of 128 commands, a handful of accesses each) plus a pending-table scan or
        write-back per CPU, both bounded by host settings, never by guest values."""
        lpi_bits = self.gic.config.redistributor.lpi_id_bits
        return 256 * 128 * 12 + 3 * (1 << lpi_bits) + 4096


def run_one(data: bytes, stats: Stats | None = None) -> Stats:
    """Run one input; raise :class:`Violation` on any broken invariant or escaped exception."""
    stats = stats or Stats()
    h = Harness(data, stats)
    try:
        h.run()
    except Violation:
        raise
    except Exception as e:
        raise Violation(f"{type(e).__name__} escaped the model: {e}\n{traceback.format_exc()}") from e
    return stats


def describe(data: bytes) -> str:
    """One line about an input, for reports."""
    mode = data[0] if data else 0
    return f"{len(data)} bytes, {'reference' if mode & 1 else 'chaos'} mode, {1 + (data[1] if len(data) > 1 else 0) % 8} CPUs"


Runner = Callable[[bytes], Stats]
