"""``vgic decode``: ITS command queues as text, and text back to commands.

Input is a file of 32-byte commands, a raw memory dump with an offset, or the command queue
of a snapshot (from GITS_CBASER, showing where GITS_CREADR and GITS_CWRITER point). Each
line gives the queue offset, the command with its fields named as in IHI 0069 6.3, and
the problems a static check can see: reserved opcodes, fields beyond what the ITS
supports, RES0 bits set. :func:`assemble` is the inverse, for tests and hand-written queues.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from vgic.its import commands as C
from vgic.its.registers import ItsTyper

LPI_BASE = 8192


@dataclass(frozen=True)
class Line:
    offset: int
    command: C.Command
    problems: tuple[str, ...]
    marks: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.offset:#07x}  {C.format_command(self.command)}"
        if self.marks:
            text += "  <- " + ", ".join(self.marks)
        if self.problems:
            text += "  !! " + "; ".join(self.problems)
        return text


def check(cmd: C.Command, typer: ItsTyper, num_cpus: int | None = None) -> list[str]:
    """What is wrong with a command on an ITS with this GITS_TYPER, found without tables."""
    p: list[str] = []
    if isinstance(cmd, C.Unknown):
        p.append(f"opcode {cmd.code:#04x} is not a GICv3 physical command")
        return p
    dev = getattr(cmd, "device_id", None)
    if dev is not None and dev >= 1 << typer.devbits:
        p.append(f"DeviceID {dev:#x} needs more than Devbits={typer.devbits}")
    ev = getattr(cmd, "event_id", None)
    if ev is not None and ev >= 1 << typer.idbits:
        p.append(f"EventID {ev} needs more than ID_bits={typer.idbits}")
    icid = getattr(cmd, "icid", None)
    if icid is not None and icid >= typer.collections:
        p.append(f"ICID {icid} is beyond the {typer.collections} collections")
    if isinstance(cmd, C.Mapd) and cmd.valid and cmd.size + 1 > typer.idbits:
        p.append(f"Size={cmd.size} asks for more EventID bits than ID_bits={typer.idbits}")
    if isinstance(cmd, C.Mapti | C.Mapi):
        pintid = cmd.event_id if isinstance(cmd, C.Mapi) else cmd.pintid
        if not LPI_BASE <= pintid < 1 << typer.idbits:
            p.append(f"pINTID {pintid} is not an LPI this ITS supports")
    if not typer.pta and num_cpus is not None:
        for name in ("rdbase", "rdbase1", "rdbase2"):
            rd = getattr(cmd, name, None)
            if rd is not None and rd >= num_cpus and (not isinstance(cmd, C.Mapc) or cmd.valid):
                p.append(f"{name} {rd} is not one of the {num_cpus} processors")
    return p


def _reserved_bits(words: tuple[int, int, int, int], cmd: C.Command) -> list[str]:
    """RES0 bits that are set (the re-encoded command lacks them)."""
    if isinstance(cmd, C.Unknown):
        return []
    clean = cmd.words()
    mask = 0xFFFF_FFFF_FFFF_FFFF
    return [f"DW{i} has RES0 bits {w & ~c & mask:#x} set" for i, (w, c) in enumerate(zip(words, clean, strict=True))
            if w & ~c & mask]  # fmt: skip


def decode_queue(
    data: bytes,
    base_offset: int = 0,
    typer: ItsTyper | None = None,
    num_cpus: int | None = None,
    marks: dict[int, str] | None = None,
) -> Iterator[Line]:
    typer = typer or ItsTyper()
    for off in range(0, len(data) - len(data) % C.COMMAND_SIZE, C.COMMAND_SIZE):
        chunk = data[off : off + C.COMMAND_SIZE]
        words = tuple(int.from_bytes(chunk[i : i + 8], "little") for i in range(0, 32, 8))
        cmd = C.decode(chunk)
        problems = check(cmd, typer, num_cpus) + _reserved_bits(words, cmd)  # type: ignore[arg-type]
        mark = (marks or {}).get(base_offset + off)
        yield Line(base_offset + off, cmd, tuple(problems), (mark,) if mark else ())


def assemble(lines: Iterable[str]) -> bytes:
    """Commands from text, one per line (``#`` starts a comment), as :func:`C.parse_command` reads them."""
    out = bytearray()
    for n, raw in enumerate(lines, 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        # accept decode's own output: an optional leading offset and trailing marks
        parts = text.split("  <- ")[0].split("  !! ")[0].split()
        if parts and parts[0].startswith("0x") and len(parts) > 1 and "=" not in parts[0]:
            parts = parts[1:]
        try:
            out += C.encode(C.parse_command(" ".join(parts)))
        except ValueError as e:
            raise ValueError(f"line {n}: {e}") from None
    return bytes(out)
