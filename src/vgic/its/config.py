"""What an ITS implementation chooses where the architecture leaves it open (IHI 0069).

:class:`ItsConfig` holds every such choice of one ITS (docs/choices.md has the table,
one column per profile of :mod:`vgic.profiles`); its defaults are what a guest of QEMU
7.2's virt machine observes. A configuration is data: it can be checked, saved in a
snapshot and read back with every field checked.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from vgic.checks import boolean, items, mapping, uint
from vgic.its.registers import (
    BASER_TYPE_COLLECTION,
    BASER_TYPE_DEVICE,
    BASER_TYPE_NONE,
    GITS_IIDR_QEMU,
    ID_REGISTERS,
    ItsTyper,
)
from vgic.its.tables import EntryLayout

TABLE_ENTRY_SIZE = 8  # device table entries (GITS_BASER<n>.Entry_Size + 1)
PAGE_SIZE_64K = 2  # GITS_BASER<n>.Page_Size encoding


class ErrorPolicy(enum.Enum):
    """What the ITS does after a command error (IHI 0069 6.3, "Command errors")."""

    STALL = "stall"  # set GITS_CREADR.Stalled, stop until the guest retries or resets
    CONTINUE = "continue"  # ignore the command and go on with the next one


class PintidBound(enum.Enum):
    """What MAPTI/MAPI check a pINTID against (6.3.9, 6.3.10: "out of range")."""

    ITS = "its"  # GITS_TYPER.ID_bits (QEMU)
    PROPBASER = "propbaser"  # the target redistributor's GICR_PROPBASER.IDbits too (KVM)


@dataclass(frozen=True)
class ItsConfig:
    """The choices an implementation makes (docs/choices.md, one column per profile).

    The defaults are what a guest of QEMU 7.2's virt machine observes (the ``qemu``
    profile, :mod:`vgic.profiles`), except where QEMU departs from the architecture.
    """

    typer: ItsTyper = field(default_factory=ItsTyper)
    iidr: int = GITS_IIDR_QEMU
    id_registers: tuple[int, ...] = ID_REGISTERS  # GITS_PIDR4..7, PIDR0..3, CIDR0..3
    # After an error with an architected code (6.3): stall or ignore the command and go on.
    error_policy: ErrorPolicy = ErrorPolicy.CONTINUE
    # After a queue or table access outside guest RAM (IMPLEMENTATION DEFINED): QEMU stalls.
    memory_fault_policy: ErrorPolicy = ErrorPolicy.STALL
    # GITS_CTLR.Quiescent while Enabled=1 is UNKNOWN (12.19.6): report 1 when the queue is
    # empty and not stalled (QEMU, KVM, Xen), or never claim it (0).
    quiescent_when_idle: bool = True
    baser_page_size: int = PAGE_SIZE_64K  # GITS_BASER<n>.Page_Size at reset (0 4K, 1 16K, 2 64K)
    baser_page_sizes: tuple[int, ...] = (0, 1, 2)  # encodings a write may select; others read as the reset one
    indirect_device_table: bool = True  # GITS_BASER.Indirect supported (two-level tables)
    indirect_collection_table: bool = True
    default_device_id: int = 0  # DeviceID of a GITS_TRANSLATER write with no requester
    baser_types: tuple[int, ...] = (BASER_TYPE_DEVICE, BASER_TYPE_COLLECTION) + (BASER_TYPE_NONE,) * 6
    collection_entry_size: int = 8  # GITS_BASER<n>.Entry_Size + 1 of the collection table
    pintid_bound: PintidBound = PintidBound.ITS

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (snapshots)."""
        return {
            "typer": dataclasses.asdict(self.typer),
            "iidr": self.iidr,
            "id_registers": list(self.id_registers),
            "error_policy": self.error_policy.value,
            "memory_fault_policy": self.memory_fault_policy.value,
            "quiescent_when_idle": self.quiescent_when_idle,
            "baser_page_size": self.baser_page_size,
            "baser_page_sizes": list(self.baser_page_sizes),
            "indirect_device_table": self.indirect_device_table,
            "indirect_collection_table": self.indirect_collection_table,
            "default_device_id": self.default_device_id,
            "baser_types": list(self.baser_types),
            "collection_entry_size": self.collection_entry_size,
            "pintid_bound": self.pintid_bound.value,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ItsConfig:
        """The inverse of :meth:`to_dict`; ValueError/TypeError/KeyError on a bad dict."""
        typer: dict[str, Any] = {f.name: _typed(mapping(d["typer"])[f.name], f.type, f"typer.{f.name}")
                                 for f in dataclasses.fields(ItsTyper)}  # fmt: skip
        config = cls(
            typer=ItsTyper(**typer),
            iidr=uint(d["iidr"], 32, "iidr"),
            id_registers=tuple(uint(v, 8, "id_registers") for v in items(d["id_registers"], 12)),
            error_policy=ErrorPolicy(d["error_policy"]),
            memory_fault_policy=ErrorPolicy(d["memory_fault_policy"]),
            quiescent_when_idle=boolean(d["quiescent_when_idle"], "quiescent_when_idle"),
            baser_page_size=uint(d["baser_page_size"], 2, "baser_page_size"),
            baser_page_sizes=tuple(uint(v, 2, "baser_page_sizes") for v in items(d["baser_page_sizes"], 3)),
            indirect_device_table=boolean(d["indirect_device_table"], "indirect_device_table"),
            indirect_collection_table=boolean(d["indirect_collection_table"], "indirect_collection_table"),
            default_device_id=uint(d["default_device_id"], 32, "default_device_id"),
            baser_types=tuple(uint(t, 3, "baser_types") for t in items(d["baser_types"], 8)),
            collection_entry_size=uint(d["collection_entry_size"], 6, "collection_entry_size"),
            pintid_bound=PintidBound(d["pintid_bound"]),
        )
        if len(config.id_registers) != 12:
            raise ValueError("id_registers holds the twelve PIDR/CIDR bytes")
        config.check()
        return config

    def layout(self) -> EntryLayout:
        t = self.typer
        return EntryLayout(t.itt_entry_size, self.collection_entry_size, TABLE_ENTRY_SIZE, t.idbits,
                           t.cidbits if t.cil else 16)  # fmt: skip

    def check(self) -> None:
        """Raise ValueError for a configuration no ITS could have."""
        t = self.typer
        if not 1 <= t.itt_entry_size <= 16 or not 1 <= self.collection_entry_size <= 32:
            raise ValueError("ITT entry size must be 1 to 16 bytes and a collection entry 1 to 32")
        if not (1 <= t.idbits <= 32 and 1 <= t.devbits <= 32 and 1 <= t.cidbits <= 16):
            raise ValueError("GITS_TYPER: ID_bits 1..32, Devbits 1..32, CIDbits 1..16")
        if not 0 <= t.hcc <= 255 or len(self.baser_types) != 8:
            raise ValueError("HCC is 0..255 and there are eight GITS_BASER<n>")
        if self.baser_page_size not in self.baser_page_sizes or not set(self.baser_page_sizes) <= {0, 1, 2}:
            raise ValueError("the reset Page_Size must be one of the accepted encodings 0, 1, 2")
        self.check_layout(1)

    def check_layout(self, num_redistributors: int) -> None:
        """Raise ValueError if the table entries cannot hold the IDs (RDbase: a processor
        number below ``num_redistributors``, or PA[51:16] with PTA=1)."""
        bits = 36 if self.typer.pta else max(1, (num_redistributors - 1).bit_length())
        why = self.layout().check(bits)
        if why is not None:
            raise ValueError(f"vgic cannot pack its table entries: {why}")


def _typed(v: object, annotation: object, name: str) -> int | bool:
    return boolean(v, name) if annotation in (bool, "bool") else uint(v, 8, name)
