"""A small, independent reference model of a GICv3 ITS + redistributors + CPU interfaces.

Written from the architecture (IHI 0069, docs/spec-notes.md), with plain dicts and sets and
no code shared with ``vgic``: it is the oracle :mod:`tests.test_model_check` compares the
real model against. It models what software can observe:

* the ITS tables as memory: DTE per DeviceID, ITEs per ITT address (so remapping a device
  to an ITT that still holds entries brings them back, as real hardware would);
* collections (ICID -> processor number, GITS_TYPER.PTA=0);
* per CPU: GICR_CTLR.EnableLPIs, the pending LPIs with the configuration byte cached when
  each became pending (reloaded only by INV/INVALL/INVLPIR/INVALLR, or when an LPI moves to
  another redistributor, which reads the table afresh), the pending table's content while
  LPIs are disabled, and the CPU interface's active priorities (5 priority bits, BPR1=3).

Choices the architecture leaves open follow vgic's documented ones: a command error has no
effect; MAPTI on a mapped event replaces the mapping; an LPI that the target redistributor
would ignore (EnableLPIs=0) is not moved by MOVI/MOVALL; LPIs have no active state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LPI_BASE = 8192
SPURIOUS = 1023


def err(opcode_byte: int, reason: int) -> int:
    return 0x01_00_00 | opcode_byte << 8 | reason


# reasons
DEVICE_OOR, PROC_OOR, COLLECTION_OOR, UNMAPPED_DEVICE, ID_OOR, PHYSICALID_OOR = 1, 2, 3, 4, 5, 6
UNMAPPED_INTERRUPT, UNMAPPED_COLLECTION = 7, 9
# the command byte of each error code (CLEAR reports 0x05, MAPI its own 0x0B)
CODE_BYTE = {"MOVI": 0x01, "INT": 0x03, "CLEAR": 0x05, "MAPD": 0x08, "MAPC": 0x09, "MAPTI": 0x0A, "MAPI": 0x0B,
             "INV": 0x0C, "INVALL": 0x0D, "MOVALL": 0x0E, "DISCARD": 0x0F}  # fmt: skip


@dataclass
class RefCpu:
    enabled: bool = False  # GICR_CTLR.EnableLPIs
    pending: dict[int, int] = field(default_factory=dict)  # INTID -> cached config byte
    table: set[int] = field(default_factory=set)  # pending table content (meaningful while disabled)
    active: list[int] = field(default_factory=list)  # group priorities of acknowledged LPIs, in order
    pmr: int = 0xF0


@dataclass
class RefGic:
    """The oracle. ``apply_<command>`` returns the set of error codes the command may report
    (empty: it must succeed); when the set is not empty the command has no effect."""

    ncpus: int
    lpi_limit: int = 1 << 16  # GICR_PROPBASER.IDbits (and GICD_TYPER.IDbits)
    its_idbits: int = 16  # GITS_TYPER.ID_bits: MAPD Size limit and pINTID range
    devices_cap: int = 512  # device table entries
    collections_cap: int = 512  # collection table entries
    prop: dict[int, int] = field(default_factory=dict)  # LPI configuration table
    default_config: int = 0xA3
    cpus: list[RefCpu] = field(init=False)
    devices: dict[int, tuple[int, int]] = field(default_factory=dict)  # DeviceID -> (ITT address, Size)
    itts: dict[int, dict[int, tuple[int, int]]] = field(default_factory=dict)  # ITT -> EventID -> (pINTID, ICID)
    collections: dict[int, int] = field(default_factory=dict)  # ICID -> processor number

    def __post_init__(self) -> None:
        self.cpus = [RefCpu() for _ in range(self.ncpus)]

    # -- redistributor side ---------------------------------------------------------
    def config(self, intid: int) -> int:
        return self.prop.get(intid, self.default_config)

    def accepts(self, cpu: int, intid: int) -> bool:
        return self.cpus[cpu].enabled and LPI_BASE <= intid < self.lpi_limit

    def set_pending(self, cpu: int, intid: int) -> None:
        c = self.cpus[cpu]
        if self.accepts(cpu, intid) and intid not in c.pending:
            c.pending[intid] = self.config(intid)

    def clear_pending(self, cpu: int, intid: int) -> None:
        self.cpus[cpu].pending.pop(intid, None)

    def reload(self, cpu: int, intid: int) -> None:
        c = self.cpus[cpu]
        if intid in c.pending:
            c.pending[intid] = self.config(intid)

    def reload_all(self, cpu: int) -> None:
        c = self.cpus[cpu]
        for intid in c.pending:
            c.pending[intid] = self.config(intid)

    def set_enable(self, cpu: int, enable: bool) -> None:
        c = self.cpus[cpu]
        if enable == c.enabled:
            return
        if enable:
            c.enabled = True
            c.pending = {i: self.config(i) for i in c.table if LPI_BASE <= i < self.lpi_limit}
        else:
            c.table = set(c.pending)
            c.pending = {}
            c.enabled = False

    def move(self, src: int, dst: int, intids: list[int]) -> None:
        if src == dst:
            return
        for intid in intids:
            if intid in self.cpus[src].pending and self.accepts(dst, intid):
                del self.cpus[src].pending[intid]
                self.set_pending(dst, intid)

    # -- CPU interface side ----------------------------------------------------------
    @staticmethod
    def priority(cfg: int) -> int:
        return cfg & 0xFC

    def running_priority(self, cpu: int) -> int:
        return min(self.cpus[cpu].active, default=0xFF)

    def highest_pending(self, cpu: int) -> int:
        """ICC_HPPIR1_EL1: best enabled pending LPI, no PMR or preemption check."""
        cands = [(self.priority(cfg), i) for i, cfg in self.cpus[cpu].pending.items() if cfg & 1]
        return min(cands)[1] if cands else SPURIOUS

    def deliverable(self, cpu: int) -> set[int]:
        """The LPIs the CPU may take now: enabled, above PMR, preempting the running priority."""
        c = self.cpus[cpu]
        rpr = self.running_priority(cpu)
        return {i for i, cfg in c.pending.items() if cfg & 1 and cfg & 0xF8 < c.pmr and cfg & 0xF8 < rpr}

    def expected_ack(self, cpu: int) -> int:
        best = self.highest_pending(cpu)
        return best if best in self.deliverable(cpu) else SPURIOUS

    def acknowledge(self, cpu: int, intid: int) -> None:
        c = self.cpus[cpu]
        c.active.append(c.pending.pop(intid) & 0xF8)

    def eoi(self, cpu: int) -> None:
        c = self.cpus[cpu]
        if c.active:
            c.active.remove(min(c.active))  # priority drop of the highest active priority

    # -- ITS commands --------------------------------------------------------------------
    def _translate(self, name: str, device: int, event: int) -> tuple[set[int], tuple[int, int] | None]:
        """DeviceID -> DTE -> ITE; the error codes that apply (cascading), and the ITE."""
        b = CODE_BYTE[name]
        if device >= self.devices_cap:
            return {err(b, DEVICE_OOR)}, None
        if device not in self.devices:
            return {err(b, UNMAPPED_DEVICE)}, None
        itt, size = self.devices[device]
        if event >= 1 << (size + 1):
            return {err(b, ID_OOR)}, None
        ite = self.itts.get(itt, {}).get(event)
        if ite is None:
            return {err(b, UNMAPPED_INTERRUPT)}, None
        return set(), ite

    def _event_target(self, name: str, device: int, event: int) -> tuple[set[int], tuple[int, int, int] | None]:
        errors, ite = self._translate(name, device, event)
        if ite is None:
            return errors, None
        pintid, icid = ite
        if icid not in self.collections:
            return {err(CODE_BYTE[name], UNMAPPED_COLLECTION)}, None
        return set(), (pintid, icid, self.collections[icid])

    def msi(self, device: int, event: int) -> bool:
        """An MSI: True if an LPI became (or already was) pending."""
        _, target = self._event_target("INT", device, event)
        if target is None:
            return False
        pintid, _, cpu = target
        self.set_pending(cpu, pintid)
        return self.accepts(cpu, pintid)

    def apply_mapd(self, device: int, size: int, itt: int, valid: bool) -> set[int]:
        errors = set()
        if device >= self.devices_cap:
            errors.add(err(0x08, DEVICE_OOR))
        if valid and size + 1 > self.its_idbits:
            errors.add(err(0x08, 2))
        if errors:
            return errors
        if valid:
            self.devices[device] = (itt, size)
        else:
            self.devices.pop(device, None)
        return set()

    def apply_mapc(self, icid: int, rdbase: int, valid: bool) -> set[int]:
        errors = set()
        if valid and rdbase >= self.ncpus:
            errors.add(err(0x09, PROC_OOR))
        if icid >= self.collections_cap:
            errors.add(err(0x09, COLLECTION_OOR))
        if errors:
            return errors
        if valid:
            self.collections[icid] = rdbase
        else:
            self.collections.pop(icid, None)
        return set()

    def apply_mapti(self, device: int, event: int, pintid: int, icid: int, mapi: bool = False) -> set[int]:
        b = CODE_BYTE["MAPI" if mapi else "MAPTI"]
        errors = set()
        if device >= self.devices_cap:
            errors.add(err(b, DEVICE_OOR))
        if icid >= self.collections_cap:
            errors.add(err(b, COLLECTION_OOR))
        if device < self.devices_cap and device not in self.devices:
            errors.add(err(b, UNMAPPED_DEVICE))
        if device in self.devices and event >= 1 << (self.devices[device][1] + 1):
            errors.add(err(b, ID_OOR))
        if not LPI_BASE <= pintid < 1 << self.its_idbits:
            errors.add(err(b, PHYSICALID_OOR))
        if errors:
            return errors
        itt = self.devices[device][0]
        self.itts.setdefault(itt, {})[event] = (pintid, icid)
        return set()

    def apply_movi(self, device: int, event: int, icid: int) -> set[int]:
        errors, ite = self._translate("MOVI", device, event)
        if icid >= self.collections_cap:
            errors.add(err(0x01, COLLECTION_OOR))
        if ite is not None:
            if ite[1] not in self.collections:
                errors.add(err(0x01, UNMAPPED_COLLECTION))
            if icid < self.collections_cap and icid not in self.collections:
                errors.add(err(0x01, UNMAPPED_COLLECTION))
        if errors:
            return errors
        assert ite is not None
        pintid, old_icid = ite
        self.move(self.collections[old_icid], self.collections[icid], [pintid])
        itt = self.devices[device][0]
        self.itts[itt][event] = (pintid, icid)
        return set()

    def apply_movall(self, rd1: int, rd2: int) -> set[int]:
        if rd1 >= self.ncpus or rd2 >= self.ncpus:
            return {err(0x0E, 1)}
        self.move(rd1, rd2, sorted(self.cpus[rd1].pending))
        return set()

    def apply_discard(self, device: int, event: int) -> set[int]:
        errors, target = self._event_target("DISCARD", device, event)
        if target is None:
            return errors
        pintid, _, cpu = target
        self.clear_pending(cpu, pintid)
        del self.itts[self.devices[device][0]][event]
        return set()

    def apply_int(self, device: int, event: int) -> set[int]:
        errors, target = self._event_target("INT", device, event)
        if target is None:
            return errors
        self.set_pending(target[2], target[0])
        return set()

    def apply_clear(self, device: int, event: int) -> set[int]:
        errors, target = self._event_target("CLEAR", device, event)
        if target is None:
            return errors
        self.clear_pending(target[2], target[0])
        return set()

    def apply_inv(self, device: int, event: int) -> set[int]:
        errors, target = self._event_target("INV", device, event)
        if target is None:
            return errors
        self.reload(target[2], target[0])
        return set()

    def apply_invall(self, icid: int) -> set[int]:
        if icid >= self.collections_cap:
            return {err(0x0D, COLLECTION_OOR)}
        if icid not in self.collections:
            return {err(0x0D, UNMAPPED_COLLECTION)}
        self.reload_all(self.collections[icid])
        return set()

    def apply_sync(self, rdbase: int) -> set[int]:
        return set()
