"""The GITS_* register file (IHI 0069 12.19) as data, plus field helpers.

Offsets are from ITS_base; the second 64 KB frame holds GITS_TRANSLATER. Registers
without a row here are reserved or IMPLEMENTATION DEFINED space and are RAZ/WI. The
behaviour of CTLR, TYPER, CBASER, CWRITER, CREADR, BASER<n> and TRANSLATER lives in
``read_<name>`` / ``write_<name>`` methods of :class:`vgic.its.its.Its`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vgic.regs import Access, Register, id_registers

ITS_FRAME_SIZE = 0x20000  # GICv3: control frame + translation frame

# GITS_BASER<n>.Type (12.19.1)
BASER_TYPE_NONE = 0
BASER_TYPE_DEVICE = 1
BASER_TYPE_VPE = 2
BASER_TYPE_COLLECTION = 4


# GITS_PIDR4..7, PIDR0..3, CIDR0..3 at 0xFFD0..0xFFFC. PIDR2[7:4] = ArchRev 3 (GICv3).
# These are QEMU's (and Arm's GIC-600's): part number 0x494, JEP106 Arm (0x43B).
ID_REGISTERS = (0x44, 0x00, 0x00, 0x00, 0x94, 0xB4, 0x3B, 0x00, 0x0D, 0xF0, 0x05, 0xB1)

# GITS_IIDR (12.19.7), IMPLEMENTATION DEFINED: Implementer [11:0] 0x43B is Arm (JEP106).
GITS_IIDR_QEMU = 0x0000043B  # QEMU 7.2's virt ITS: Arm r0p0, ProductID 0
GITS_IIDR_VGIC = 0x5600043B  # vgic's own: ProductID 'V' (0x56)


def gits_registers(iidr: int = GITS_IIDR_QEMU, ids: tuple[int, ...] = ID_REGISTERS) -> tuple[Register, ...]:
    """The GITS_* rows of an ITS identifying itself with ``iidr`` and ``ids`` (PIDR/CIDR)."""
    return (
        Register("CTLR", 0x0000, 4, reset=1 << 31),
        Register("IIDR", 0x0004, 4, reset=iidr, access=Access.RO),
        Register("TYPER", 0x0008, 8, access=Access.RO),
        # GICv4.1 and UMSI registers: not implemented (TYPER.UMSI=0), so RES0 (RAZ/WI).
        Register("MPIDR", 0x0010, 4, access=Access.RAZ_WI),
        Register("STATUSR", 0x0040, 4, access=Access.RAZ_WI),
        Register("UMSIR", 0x0048, 8, access=Access.RAZ_WI),
        Register("CBASER", 0x0080, 8),
        Register("CWRITER", 0x0088, 8),
        Register("CREADR", 0x0090, 8, access=Access.RO),
        Register("BASER", 0x0100, 8, count=8),
        *id_registers(ids),
        Register("TRANSLATER", 0x10040, 4, access=Access.WO, byte_access=True),
    )


GITS_REGISTERS: list[Register] = list(gits_registers())


@dataclass(frozen=True, slots=True)
class ItsTyper:
    """GITS_TYPER fields this ITS implements (12.19.22); :meth:`value` is the register."""

    devbits: int = 16  # DeviceID bits
    idbits: int = 16  # EventID bits; also the LPI INTID bits MAPTI accepts
    cidbits: int = 16  # collection ID bits (reported when cil)
    cil: bool = True
    pta: bool = False  # RDbase is a physical address (True) or a processor number
    itt_entry_size: int = 12  # bytes per ITE; QEMU's virt ITS reports 12
    hcc: int = 0  # collections held in the ITS, needing no collection table
    seis: bool = False

    def value(self) -> int:
        v = 1  # Physical
        v |= (self.itt_entry_size - 1) << 4
        v |= (self.idbits - 1) << 8
        v |= (self.devbits - 1) << 13
        v |= int(self.seis) << 18
        v |= int(self.pta) << 19
        v |= (self.hcc & 0xFF) << 24
        if self.cil:
            v |= (self.cidbits - 1) << 32 | 1 << 36
        return v

    @property
    def collections(self) -> int:
        """Number of ICIDs: 2^CIDbits with CIL=1, else 2^16 (12.19.22)."""
        return 1 << (self.cidbits if self.cil else 16)
