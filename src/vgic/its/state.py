"""The saved state of one ITS, typed and checked (snapshots, docs/snapshot.md).

:class:`ItsState` is what :meth:`vgic.its.its.Its.save_state` returns and
:meth:`~vgic.its.its.Its.load_state` takes. :meth:`ItsState.from_dict` reads the JSON
form back and checks every field against the architecture and the configuration it is
loaded into, so a corrupt or hostile snapshot is refused (a :class:`FieldError` naming
the field) before any model is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

from vgic.checks import FieldError, at, boolean, distinct, exactly, items, mapping, only, req, text, uint
from vgic.gicv3.redistributor import LPI_BASE
from vgic.its.cache import CACHE_LIMIT
from vgic.its.config import TABLE_ENTRY_SIZE, ItsConfig
from vgic.its.registers import BASER_TYPE_DEVICE, BASER_TYPE_NONE, gits_registers
from vgic.regs import RegisterBankState

ERROR_HISTORY = 64  # command errors each ITS remembers (saved here, marked by decode)
CBASER_MASK = 0xB8EF_FFFF_FFFF_FCFF  # Valid, InnerCache, OuterCache, PA[51:12], Shareability, Size (12.19.3)

Event = tuple[int, int, int]  # (EventID, pINTID, ICID)
CachedDeviceState = tuple[int, int, int, tuple[Event, ...]]  # (DeviceID, ITT address, Size, events)
ErrorRecord = tuple[int, int, str, str]  # (queue offset, code, message, command text)

_FIELDS = ("regs", "enabled", "stalled", "queue_invalid", "creadr", "cwriter", "waiting", "hcc_collections",
           "devices", "collections", "unsynced", "errors", "command_counts")  # fmt: skip


@dataclass(frozen=True)
class ItsState:
    """Registers, queue position and stall, the job the queue waits for (a redistributor
    index and job ident), the collections held in the ITS, the host caches (DTEs with their
    ITEs, collection targets by redistributor index), the MSI-without-SYNC tracking, the
    recent command errors and the executed-command counts."""

    regs: RegisterBankState
    enabled: bool
    stalled: bool
    queue_invalid: bool
    creadr: int
    cwriter: int
    waiting: tuple[int, int] | None
    hcc_collections: tuple[tuple[int, int], ...]
    devices: tuple[CachedDeviceState, ...]
    collections: tuple[tuple[int, int], ...]
    unsynced: frozenset[int]
    errors: tuple[ErrorRecord, ...]
    command_counts: tuple[tuple[str, int], ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "regs": self.regs.to_dict(),
            "enabled": self.enabled,
            "stalled": self.stalled,
            "queue_invalid": self.queue_invalid,
            "creadr": self.creadr,
            "cwriter": self.cwriter,
            "waiting": None if self.waiting is None else list(self.waiting),
            "hcc_collections": [list(p) for p in self.hcc_collections],
            "devices": [[d, itt, size, [list(e) for e in events]] for d, itt, size, events in self.devices],
            "collections": [list(p) for p in self.collections],
            "unsynced": sorted(self.unsynced),
            "errors": [list(e) for e in self.errors],
            "command_counts": [list(c) for c in self.command_counts],
        }

    @classmethod
    def from_dict(cls, d: object, config: ItsConfig, num_redistributors: int) -> ItsState:
        """Every field's JSON type and range. GITS_CREADR/GITS_CWRITER offsets are 32-byte
        aligned (Offset[19:5], 12.19.4-5) and inside the queue GITS_CBASER.Size gives,
        CWRITER beyond it exactly when the queue is marked invalid; Enabled=1 needs a Valid
        GITS_CBASER and device table (12.19.6); GITS_BASER<n> Type and Entry_Size are the
        configured ones and Page_Size an accepted encoding (never the reserved 0b11,
        12.19.1); collections, HCC collections, unsynced CPUs and the awaited job name
        redistributors that exist; cached DTEs and ITEs fit GITS_TYPER's DeviceID, EventID
        and collection ID widths and hold LPI INTIDs (5.1), at most the cache's bound."""
        m = mapping(d)
        only(m, _FIELDS)
        typer = config.typer
        with at("regs"):
            regs = RegisterBankState.from_dict(req(m, "regs"), gits_registers(config.iidr, config.id_registers))
            cbaser = regs.values["CBASER"][0]
            if cbaser & ~CBASER_MASK:
                raise FieldError("CBASER", f"{cbaser:#x} sets bits GITS_CBASER does not keep")
            basers = regs.values["BASER"]
            for n, kind in enumerate(config.baser_types):
                v = basers[n]
                if kind == BASER_TYPE_NONE:
                    if v:
                        raise FieldError(f"BASER[{n}]", f"{v:#x}: GITS_BASER{n} is not implemented (RES0)")
                    continue
                entry_size = TABLE_ENTRY_SIZE if kind == BASER_TYPE_DEVICE else config.collection_entry_size
                if v >> 56 & 7 != kind or (v >> 48 & 0x1F) + 1 != entry_size:
                    raise FieldError(f"BASER[{n}]", f"{v:#x} has another Type or Entry_Size than this ITS's")
                if v >> 8 & 3 not in config.baser_page_sizes:
                    raise FieldError(f"BASER[{n}]", f"Page_Size {v >> 8 & 3} is not an encoding this ITS accepts")
        enabled = boolean(req(m, "enabled"), "enabled")
        stalled = boolean(req(m, "stalled"), "stalled")
        queue_invalid = boolean(req(m, "queue_invalid"), "queue_invalid")
        queue = ((cbaser & 0xFF) + 1) * 4096
        creadr = uint(req(m, "creadr"), 20, "creadr")
        cwriter = uint(req(m, "cwriter"), 20, "cwriter")
        for name, v in (("creadr", creadr), ("cwriter", cwriter)):
            if v % 32:
                raise FieldError(name, f"{v:#x} is not a multiple of 32 (a command's offset)")
        if creadr >= queue:
            raise FieldError("creadr", f"{creadr:#x} is beyond the {queue:#x}-byte command queue")
        if queue_invalid != (cwriter >= queue):
            raise FieldError("cwriter", f"{cwriter:#x} with a {queue:#x}-byte queue: beyond it exactly when "
                             "queue_invalid is set")  # fmt: skip
        if enabled:
            if not cbaser >> 63:
                raise FieldError("enabled", "the ITS is enabled but GITS_CBASER is not Valid")
            device = [basers[n] for n, k in enumerate(config.baser_types) if k == BASER_TYPE_DEVICE]
            if not device or not device[0] >> 63:
                raise FieldError("enabled", "the ITS is enabled but its device table (GITS_BASER) is not Valid")
        waiting: tuple[int, int] | None = None
        raw_waiting = m.get("waiting")
        if raw_waiting is not None:
            with at("waiting"):
                rd, job = exactly(raw_waiting, 2)
                waiting = (uint(rd, 16, "[0]"), uint(job, 32, "[1]"))
                if waiting[0] >= num_redistributors:
                    raise FieldError("[0]", f"redistributor {waiting[0]} does not exist")
        rdbase_bits = 36 if typer.pta else 16
        hcc: dict[int, int] = {}
        with at("hcc_collections"):
            for n, pair in enumerate(items(req(m, "hcc_collections"), typer.hcc)):
                with at(n):
                    icid, rdbase = exactly(pair, 2)
                    key = uint(icid, 8, "[0]")
                    if key >= typer.hcc or key in hcc:
                        raise FieldError("[0]", f"ICID {key} is not a collection held in the ITS, or is there twice")
                    hcc[key] = uint(rdbase, rdbase_bits, "[1]")
                    if not typer.pta and hcc[key] >= num_redistributors:
                        raise FieldError("[1]", f"redistributor {hcc[key]} does not exist")
        devices: list[CachedDeviceState] = []
        seen: set[int] = set()
        cached = 0
        with at("devices"):
            for n, dev in enumerate(items(req(m, "devices"), CACHE_LIMIT)):
                with at(n):
                    dev_id, itt, size, events = exactly(dev, 4)
                    ident = uint(dev_id, typer.devbits, "[0]")
                    if ident in seen:
                        raise FieldError("[0]", f"DeviceID {ident:#x} is cached twice")
                    seen.add(ident)
                    addr = uint(itt, 52, "[1]")
                    if addr % 256:
                        raise FieldError("[1]", f"ITT address {addr:#x} is not 256-byte aligned")
                    bits = uint(size, 5, "[2]")
                    if bits >= typer.idbits:
                        raise FieldError("[2]", f"Size {bits} gives more EventID bits than GITS_TYPER.ID_bits")
                    evs: list[Event] = []
                    with at(3):
                        for k, ev in enumerate(items(events, CACHE_LIMIT)):
                            with at(k):
                                event, pintid, icid = exactly(ev, 3)
                                evs.append((uint(event, bits + 1, "[0]"), uint(pintid, typer.idbits, "[1]"),
                                            uint(icid, 16, "[2]")))  # fmt: skip
                                if evs[-1][1] < LPI_BASE:
                                    raise FieldError("[1]", f"{evs[-1][1]} is not an LPI INTID")
                                if evs[-1][2] >= typer.collections:
                                    raise FieldError("[2]", f"ICID {evs[-1][2]} is beyond GITS_TYPER's collections")
                        if len({e[0] for e in evs}) != len(evs):
                            raise FieldError("", "caches an EventID twice")
                    cached += 1 + len(evs)
                    devices.append((ident, addr, bits, tuple(sorted(evs))))
            if cached > CACHE_LIMIT:
                raise FieldError("", f"caches {cached} entries, more than the ITS's {CACHE_LIMIT}")
        collections: dict[int, int] = {}
        with at("collections"):
            for n, pair in enumerate(items(req(m, "collections"), CACHE_LIMIT)):
                with at(n):
                    icid, rd = exactly(pair, 2)
                    key = uint(icid, 16, "[0]")
                    if key >= typer.collections or key in collections:
                        raise FieldError("[0]", f"ICID {key} is beyond GITS_TYPER's collections, or is there twice")
                    collections[key] = uint(rd, 16, "[1]")
                    if collections[key] >= num_redistributors:
                        raise FieldError("[1]", f"redistributor {collections[key]} does not exist")
        unsynced = distinct(m.get("unsynced", []), 0, num_redistributors, num_redistributors, "unsynced")
        errors: list[ErrorRecord] = []
        with at("errors"):
            for n, e in enumerate(items(m.get("errors", []), ERROR_HISTORY)):
                with at(n):
                    offset, code, message, command = exactly(e, 4)
                    errors.append((uint(offset, 20, "[0]"), uint(code, 32, "[1]"), text(message, 4096, "[2]"),
                                   text(command, 4096, "[3]")))  # fmt: skip
        counts: list[tuple[str, int]] = []
        with at("command_counts"):
            for n, c in enumerate(items(m.get("command_counts", []), 64)):
                with at(n):
                    raw_name, count = exactly(c, 2)
                    counts.append((text(raw_name, 32, "[0]"), uint(count, 64, "[1]")))
        return cls(regs, enabled, stalled, queue_invalid, creadr, cwriter, waiting, tuple(sorted(hcc.items())),
                   tuple(devices), tuple(sorted(collections.items())), unsynced, tuple(errors), tuple(counts))  # fmt: skip
