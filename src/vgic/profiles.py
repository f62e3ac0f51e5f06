"""Named profiles: documented sets of the choices the architecture leaves open.

Software that drives an ITS was written for, and tested on, what it meets on KVM and on
QEMU's virt machine. A profile fixes every IMPLEMENTATION DEFINED or UNKNOWN choice vgic
makes to what one such GIC presents, so those guests run unchanged; ``strict`` instead
stalls on every error and turns every diagnostic into an error, for driver developers.

    from vgic.profiles import gic_config
    gic = Gic(mem, gic_config("kvm", num_cpus=4))

docs/choices.md has the table (a column per profile) with the sources of each value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from vgic.gic import GicConfig
from vgic.gicv3.distributor import GICD_IIDR_QEMU, GICD_IIDR_VGIC
from vgic.gicv3.redistributor import GICR_IIDR_QEMU, GICR_IIDR_VGIC, RedistributorConfig
from vgic.its.config import ErrorPolicy, ItsConfig, PintidBound
from vgic.its.registers import GITS_IIDR_QEMU, GITS_IIDR_VGIC, ID_REGISTERS, ItsTyper

DEFAULT_PROFILE = "qemu"

# Linux KVM's vITS (arch/arm64/kvm/vgic/vgic-its.c): ProductID 'K' (0x4B), Arm, and the
# implementation revision 3 of Linux 6.x in the GICD/GICR IIDR.
KVM_ITS_IIDR = 0x4B00_043B
KVM_GIC_IIDR = 0x4B00_343B
KVM_ITS_ID_REGISTERS = (0x40, 0x00, 0x00, 0x00, 0x92, 0xB4, 0x3B, 0x00, 0x0D, 0xF0, 0x05, 0xB1)
# Arm CoreLink GIC-600: Arm, ProductID 2, r1p7 (GICD/GICR/GITS_IIDR).
GIC600_IIDR = 0x0201_743B


@dataclass(frozen=True)
class Profile:
    """What one GIC presents, as the configurations vgic's models take."""

    name: str
    summary: str
    its: ItsConfig
    redistributor: RedistributorConfig = field(default_factory=RedistributorConfig)
    gicd_iidr: int = GICD_IIDR_QEMU
    diagnostics_are_errors: bool = False  # --report counts every diagnostic as an error


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "qemu",
            "QEMU 7.2's virt ITS as a guest observes it: 64 KB Page_Size at reset, command errors "
            "skipped (memory faults stall), Quiescent=1 when idle, 12-byte ITEs, no DirectLPI",
            ItsConfig(),
        ),
        Profile(
            "kvm",
            "Linux KVM's vITS: 8-byte ITEs, CIL=0, 64 KB pages only, every error skipped, "
            "pINTID checked against GICR_PROPBASER.IDbits",
            ItsConfig(
                typer=ItsTyper(itt_entry_size=8, cil=False),
                iidr=KVM_ITS_IIDR,
                id_registers=KVM_ITS_ID_REGISTERS,
                error_policy=ErrorPolicy.CONTINUE,
                memory_fault_policy=ErrorPolicy.CONTINUE,
                baser_page_sizes=(2,),
                pintid_bound=PintidBound.PROPBASER,
            ),
            RedistributorConfig(iidr=KVM_GIC_IIDR, common_lpi_aff=0),
            gicd_iidr=KVM_GIC_IIDR,
        ),
        Profile(
            "gic-600",
            "Arm GIC-600 (one configuration: 16 DeviceID/EventID bits, 16 collections): 4 KB "
            "Page_Size at reset, 4-byte ITEs, 2-byte collection entries, errors stall",
            ItsConfig(
                typer=ItsTyper(itt_entry_size=4, cidbits=4),
                iidr=GIC600_IIDR,
                error_policy=ErrorPolicy.STALL,
                memory_fault_policy=ErrorPolicy.STALL,
                baser_page_size=0,
                collection_entry_size=2,
                indirect_collection_table=False,
            ),
            RedistributorConfig(iidr=GIC600_IIDR, common_lpi_aff=0),
            gicd_iidr=GIC600_IIDR,
        ),
        Profile(
            "strict",
            "architecture only, for driver debugging: stall on every error, Quiescent never claimed "
            "while enabled, every diagnostic an error in --report",
            ItsConfig(
                typer=ItsTyper(itt_entry_size=8),
                iidr=GITS_IIDR_VGIC,
                id_registers=ID_REGISTERS,
                error_policy=ErrorPolicy.STALL,
                memory_fault_policy=ErrorPolicy.STALL,
                quiescent_when_idle=False,
                baser_page_size=0,
            ),
            RedistributorConfig(direct_lpi=True, iidr=GICR_IIDR_VGIC, common_lpi_aff=0),
            gicd_iidr=GICD_IIDR_VGIC,
            diagnostics_are_errors=True,
        ),
    )
}

assert PROFILES[DEFAULT_PROFILE].its == ItsConfig(), "the default ItsConfig is the qemu profile"
assert PROFILES[DEFAULT_PROFILE].redistributor == RedistributorConfig()
assert GITS_IIDR_QEMU == GICR_IIDR_QEMU == GICD_IIDR_QEMU


def profile(name: str) -> Profile:
    """The profile called ``name``; ValueError naming the choices otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"no profile {name!r}: choose one of {', '.join(PROFILES)}") from None


def its_config(name: str = DEFAULT_PROFILE, errors: ErrorPolicy | None = None) -> ItsConfig:
    """The ITS configuration of a profile; ``errors`` overrides both error policies."""
    its = profile(name).its
    if errors is not None:
        its = replace(its, error_policy=errors, memory_fault_policy=errors)
    return its


def gic_config(
    name: str = DEFAULT_PROFILE, num_cpus: int = 1, errors: ErrorPolicy | None = None, **fields: Any
) -> GicConfig:
    """A GicConfig for ``num_cpus`` CPUs with a profile's choices (other GicConfig fields
    by keyword); ``errors`` overrides the ITS error policies (``vgic run --its-errors``)."""
    p = profile(name)
    return GicConfig(num_cpus=num_cpus, its=(its_config(name, errors),), redistributor=p.redistributor,
                     gicd_iidr=p.gicd_iidr, profile=p.name, **fields)  # fmt: skip
