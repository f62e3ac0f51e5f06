"""Command errors (IHI 0069 6.3, "Command errors"): every code a command can raise.

Each error is provoked once under each error policy:

* ErrorPolicy.STALL: GITS_CREADR.Stalled=1 and CREADR.Offset points at the failing
  command; commands after it do not run until CWRITER is written with Retry=1.
* ErrorPolicy.CONTINUE: the command is skipped and CREADR moves on.

Either way the error is recorded with its architected code (0x01_CC_RR, docs/spec-notes.md
section 1), the queue offset, the decoded command and an explanation.

The machine: 4 CPUs, ICID n -> CPU n for n < 4, one-page (512-entry) device and collection
tables, Devbits = ID_bits = 16, device 1 with Size=3 (16 events): event 0 -> LPI 8192 on
ICID 0, event 2 -> LPI 8194 on the unmapped ICID 7.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from conftest import GITS_BASER, GITS_CBASER, GITS_CTLR, GITS_CWRITER, LPI, RAM_BASE, RAM_SIZE, Env, build, its_config
from vgic.events import Kind
from vgic.its import commands as C
from vgic.its.config import ErrorPolicy
from vgic.its.errors import ItsError

NOT_RAM = 0x1000_0000  # below RAM_BASE: no memory there


@pytest.fixture
def base(pta: bool, policy: ErrorPolicy) -> Env:
    e = build(its_config(pta=pta, policy=policy))
    e.bring_up()
    e.map_events(1, 4, {0: (LPI, 0), 2: (LPI + 2, 7)})
    assert not e.errors()
    return e


@dataclass(frozen=True)
class Case:
    id: str
    cmd: Callable[[Env], C.Command]
    code: ItsError


E = ItsError
CASES = [
    # MOVI
    Case("movi-device-oor", lambda e: C.Movi(1 << 16, 0, 0), E.MOVI_DEVICE_OOR),
    Case("movi-collection-oor", lambda e: C.Movi(1, 0, 512), E.MOVI_COLLECTION_OOR),
    Case("movi-unmapped-device", lambda e: C.Movi(2, 0, 1), E.MOVI_UNMAPPED_DEVICE),
    Case("movi-id-oor", lambda e: C.Movi(1, 16, 1), E.MOVI_ID_OOR),
    Case("movi-unmapped-interrupt", lambda e: C.Movi(1, 1, 1), E.MOVI_UNMAPPED_INTERRUPT),
    Case("movi-unmapped-new-collection", lambda e: C.Movi(1, 0, 9), E.MOVI_UNMAPPED_COLLECTION),
    Case("movi-unmapped-old-collection", lambda e: C.Movi(1, 2, 1), E.MOVI_UNMAPPED_COLLECTION),
    # INT
    Case("int-device-oor", lambda e: C.Int(1 << 16, 0), E.INT_DEVICE_OOR),
    Case("int-unmapped-device", lambda e: C.Int(2, 0), E.INT_UNMAPPED_DEVICE),
    Case("int-id-oor", lambda e: C.Int(1, 16), E.INT_ID_OOR),
    Case("int-unmapped-interrupt", lambda e: C.Int(1, 1), E.INT_UNMAPPED_INTERRUPT),
    Case("int-unmapped-collection", lambda e: C.Int(1, 2), E.INT_UNMAPPED_COLLECTION),
    # CLEAR (command byte 0x05)
    Case("clear-device-oor", lambda e: C.Clear(1 << 16, 0), E.CLEAR_DEVICE_OOR),
    Case("clear-unmapped-device", lambda e: C.Clear(2, 0), E.CLEAR_UNMAPPED_DEVICE),
    Case("clear-id-oor", lambda e: C.Clear(1, 16), E.CLEAR_ID_OOR),
    Case("clear-unmapped-interrupt", lambda e: C.Clear(1, 1), E.CLEAR_UNMAPPED_INTERRUPT),
    Case("clear-unmapped-collection", lambda e: C.Clear(1, 2), E.CLEAR_UNMAPPED_COLLECTION),
    # MAPD
    Case("mapd-device-oor-devbits", lambda e: C.Mapd(1 << 16, 1, e.d.itts[1], True), E.MAPD_DEVICE_OOR),
    Case("mapd-device-oor-table", lambda e: C.Mapd(512, 1, e.d.itts[1], True), E.MAPD_DEVICE_OOR),
    Case("mapd-device-oor-table-top", lambda e: C.Mapd(0xFFFF, 1, e.d.itts[1], True), E.MAPD_DEVICE_OOR),
    Case("mapd-ittsize-oor", lambda e: C.Mapd(3, 16, e.d.itts[1], True), E.MAPD_ITTSIZE_OOR),
    Case("mapd-ittsize-oor-max", lambda e: C.Mapd(3, 31, e.d.itts[1], True), E.MAPD_ITTSIZE_OOR),
    # MAPC
    Case("mapc-procnum-oor", lambda e: C.Mapc(5, bad_rdbase(e), True), E.MAPC_PROCNUM_OOR),
    Case("mapc-collection-oor", lambda e: C.Mapc(512, e.rdbase(0), True), E.MAPC_COLLECTION_OOR),
    # MAPTI
    Case("mapti-device-oor", lambda e: C.Mapti(1 << 16, 0, LPI, 0), E.MAPTI_DEVICE_OOR),
    Case("mapti-collection-oor", lambda e: C.Mapti(1, 3, LPI, 512), E.MAPTI_COLLECTION_OOR),
    Case("mapti-unmapped-device", lambda e: C.Mapti(2, 0, LPI, 0), E.MAPTI_UNMAPPED_DEVICE),
    Case("mapti-id-oor", lambda e: C.Mapti(1, 16, LPI, 0), E.MAPTI_ID_OOR),
    Case("mapti-physicalid-8191", lambda e: C.Mapti(1, 3, LPI - 1, 0), E.MAPTI_PHYSICALID_OOR),
    Case("mapti-physicalid-sgi", lambda e: C.Mapti(1, 3, 5, 0), E.MAPTI_PHYSICALID_OOR),
    Case("mapti-physicalid-2^idbits", lambda e: C.Mapti(1, 3, 1 << 16, 0), E.MAPTI_PHYSICALID_OOR),
    # MAPI
    Case("mapi-device-oor", lambda e: C.Mapi(1 << 16, 0, 0), E.MAPI_DEVICE_OOR),
    Case("mapi-collection-oor", lambda e: C.Mapi(1, 3, 512), E.MAPI_COLLECTION_OOR),
    Case("mapi-unmapped-device", lambda e: C.Mapi(2, 0, 0), E.MAPI_UNMAPPED_DEVICE),
    Case("mapi-id-oor", lambda e: C.Mapi(1, 16, 0), E.MAPI_ID_OOR),
    Case("mapi-physicalid-oor", lambda e: C.Mapi(1, 3, 0), E.MAPI_PHYSICALID_OOR),  # pINTID = EventID = 3
    # INV
    Case("inv-device-oor", lambda e: C.Inv(1 << 16, 0), E.INV_DEVICE_OOR),
    Case("inv-unmapped-device", lambda e: C.Inv(2, 0), E.INV_UNMAPPED_DEVICE),
    Case("inv-id-oor", lambda e: C.Inv(1, 16), E.INV_ID_OOR),
    Case("inv-unmapped-interrupt", lambda e: C.Inv(1, 1), E.INV_UNMAPPED_INTERRUPT),
    Case("inv-unmapped-collection", lambda e: C.Inv(1, 2), E.INV_UNMAPPED_COLLECTION),
    # INVALL
    Case("invall-collection-oor", lambda e: C.Invall(512), E.INVALL_COLLECTION_OOR),
    Case("invall-unmapped-collection", lambda e: C.Invall(7), E.INVALL_UNMAPPED_COLLECTION),
    # MOVALL
    Case("movall-procnum-oor-1", lambda e: C.Movall(bad_rdbase(e), e.rdbase(0)), E.MOVALL_PROCNUM_OOR),
    Case("movall-procnum-oor-2", lambda e: C.Movall(e.rdbase(0), bad_rdbase(e)), E.MOVALL_PROCNUM_OOR),
    # DISCARD
    Case("discard-device-oor", lambda e: C.Discard(1 << 16, 0), E.DISCARD_DEVICE_OOR),
    Case("discard-unmapped-device", lambda e: C.Discard(2, 0), E.DISCARD_UNMAPPED_DEVICE),
    Case("discard-id-oor", lambda e: C.Discard(1, 16), E.DISCARD_ID_OOR),
    Case("discard-unmapped-interrupt", lambda e: C.Discard(1, 1), E.DISCARD_UNMAPPED_INTERRUPT),
    Case("discard-unmapped-collection", lambda e: C.Discard(1, 2), E.DISCARD_UNMAPPED_COLLECTION),
    # opcodes this ITS does not implement: 0x00, reserved ones, GICv4 ones
    *(
        Case(f"unknown-{op:#04x}", lambda e, op=op: C.Unknown((op | 1 << 32, 1, 2, 3)), E.UNKNOWN_COMMAND)  # type: ignore[misc]
        for op in (0x00, 0x02, 0x06, 0x07, 0x10, 0x20, 0x21, 0x22, 0x25, 0x29, 0x2A, 0x2D, 0xFF)
    ),
    # tables outside guest RAM
    Case("mapti-itt-outside-ram", lambda e: C.Mapti(6, 0, LPI, 0), E.MEMORY_FAULT),
    Case("int-itt-outside-ram", lambda e: C.Int(6, 0), E.MEMORY_FAULT),
]


def bad_rdbase(e: Env) -> int:
    """An RDbase naming no redistributor: the CPU count (PTA=0), or the frame after the last
    RD (PTA=1)."""
    return e.ncpus if not e.its.typer.pta else e.rdbase(e.ncpus - 1) + 2


def test_every_architected_code_is_covered() -> None:
    assert {c.code for c in CASES} == set(ItsError)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_command_error(base: Env, policy: ErrorPolicy, case: Case) -> None:
    e = base
    e.send(C.Mapd(6, 1, NOT_RAM, True))  # an ITT outside RAM, for the MEMORY_FAULT cases
    assert not e.errors()
    start = e.creadr
    cmd = case.cmd(e)
    e.send(cmd, C.Int(1, 0))  # the INT after the failing command makes LPI 8192 pending on CPU 0
    end = e.cwriter

    assert len(e.errors()) == 1
    err = e.errors()[0]
    assert err.code == case.code, f"{err.code:#x} != {case.code:#x}: {err.message}"
    assert err.code >> 16 == 0x01  # a command error
    assert err.offset == start
    assert err.command == C.format_command(C.decode(C.encode(cmd)))
    assert err.message.startswith(case.code.name)
    assert len(err.message) > len(case.code.name) + 20, "an explanation follows the name"
    assert err.source == "its0"

    if policy is ErrorPolicy.STALL:
        assert e.creadr == start | 1  # Stalled, Offset at the failing command
        assert e.pending(0) == frozenset(), "commands after a stall must not run"
        e.send()  # CWRITER rewritten, no Retry: still stalled
        assert e.creadr == start | 1
        assert len(e.errors()) == 1
        e.mem.write_bytes(e.d.queue_base + start, C.encode(C.Sync(0)))
        e.send(retry=True)
        assert e.creadr == end
    else:
        assert e.creadr == end  # skipped; not stalled
        assert "skipped" in err.message
    assert e.drain_all() == {0: [LPI]}
    assert len(e.errors()) == 1


# == boundaries: the last valid value passes, the first invalid one fails =====================


@pytest.mark.parametrize(
    ("cmd", "code"),
    [
        (lambda e: C.Mapti(1, 15, LPI + 15, 0), None),  # EventID 2^(Size+1)-1
        (lambda e: C.Mapti(1, 16, LPI + 16, 0), E.MAPTI_ID_OOR),  # EventID 2^(Size+1)
        (lambda e: C.Int(1, 15), E.INT_UNMAPPED_INTERRUPT),  # in range, just not mapped
        (lambda e: C.Int(1, 16), E.INT_ID_OOR),
        (lambda e: C.Mapc(9, e.rdbase(e.ncpus - 1), True), None),  # the last CPU
        (lambda e: C.Mapc(9, bad_rdbase(e), True), E.MAPC_PROCNUM_OOR),
        (lambda e: C.Mapti(1, 3, LPI - 1, 0), E.MAPTI_PHYSICALID_OOR),  # 8191
        (lambda e: C.Mapti(1, 3, LPI, 0), None),  # 8192: the first LPI
        (lambda e: C.Mapti(1, 3, (1 << 16) - 1, 0), None),  # the last LPI of 16 ID bits
        (lambda e: C.Mapti(1, 3, 1 << 16, 0), E.MAPTI_PHYSICALID_OOR),  # 2^idbits
        (lambda e: C.Mapd(511, 15, e.d.itts[1], True), None),  # last entry of the device table
        (lambda e: C.Mapd(512, 15, e.d.itts[1], True), E.MAPD_DEVICE_OOR),
        (lambda e: C.Mapd(3, 15, e.d.itts[1], True), None),  # Size = ID_bits - 1
        (lambda e: C.Mapd(3, 16, e.d.itts[1], True), E.MAPD_ITTSIZE_OOR),
        (lambda e: C.Mapc(511, e.rdbase(0), True), None),  # last entry of the collection table
        (lambda e: C.Mapc(512, e.rdbase(0), True), E.MAPC_COLLECTION_OOR),
    ],
    ids=["ev-max", "ev-over", "int-ev-max", "int-ev-over", "rd-last", "rd-count", "pintid-8191",
         "pintid-8192", "pintid-max", "pintid-2^idbits", "dev-last", "dev-table-end", "size-max",
         "size-over", "icid-last", "icid-table-end"],
)  # fmt: skip
@pytest.mark.parametrize("policy", [ErrorPolicy.STALL], ids=["stall"])
def test_boundaries(base: Env, cmd: Callable[[Env], C.Command], code: ItsError | None) -> None:
    base.send(cmd(base))
    assert base.codes() == ([] if code is None else [code])


@pytest.mark.parametrize("policy", [ErrorPolicy.STALL], ids=["stall"])
def test_device_oor_explains_devbits_or_table(base: Env) -> None:
    e = base
    e.send(C.Mapd(1 << 16, 0, 0, True))
    assert "Devbits" in e.errors()[-1].message
    e.send(retry=True)
    e.mem.write_bytes(e.d.queue_base + (e.creadr & ~1), C.encode(C.Mapd(0x8000, 0, 0, True)))
    e.send(retry=True)
    assert e.errors()[-1].code == E.MAPD_DEVICE_OOR
    assert "device table" in e.errors()[-1].message


@pytest.mark.parametrize("policy", [ErrorPolicy.STALL], ids=["stall"])
@pytest.mark.parametrize("pta", [False], ids=["PTA0"])
def test_icid_beyond_cidbits(pta: bool, policy: ErrorPolicy) -> None:
    """GITS_TYPER.CIL=1, CIDbits=4: 16 collections, although the table holds 512."""
    e = build(its_config(cidbits=4))
    e.bring_up()
    e.send(C.Mapc(15, 0, True))
    assert not e.errors()
    e.send(C.Mapc(16, 0, True))
    assert e.codes() == [E.MAPC_COLLECTION_OOR]


@pytest.mark.parametrize("pta", [False], ids=["PTA0"])
def test_failed_mapd_writes_nothing(base: Env) -> None:
    e = base
    e.send(C.Mapd(3, 16, 0x4000_0000, True))  # ITTSIZE_OOR
    dt = e.read64(GITS_BASER) & 0x0000_FFFF_FFFF_F000
    assert e.mem.read64(dt + 3 * 8) == 0
    assert not e.its.translate(3, 0)


# == check order (docs/spec-notes.md section 1: 01, 03, 04, 05, 06, 07, 09) ======================


@pytest.mark.parametrize(
    ("cmd", "code"),
    [
        (C.Mapti(1 << 16, 99, 5, 512), E.MAPTI_DEVICE_OOR),
        (C.Mapti(2, 99, 5, 512), E.MAPTI_COLLECTION_OOR),
        (C.Mapti(2, 99, 5, 0), E.MAPTI_UNMAPPED_DEVICE),
        (C.Mapti(1, 99, 5, 0), E.MAPTI_ID_OOR),
        (C.Movi(1 << 16, 99, 512), E.MOVI_DEVICE_OOR),
        (C.Movi(2, 99, 512), E.MOVI_COLLECTION_OOR),
        (C.Movi(2, 99, 9), E.MOVI_UNMAPPED_DEVICE),
        (C.Movi(1, 99, 9), E.MOVI_ID_OOR),
        (C.Movi(1, 1, 9), E.MOVI_UNMAPPED_INTERRUPT),
        (C.Mapi(2, 3, 512), E.MAPI_COLLECTION_OOR),
    ],
)
@pytest.mark.parametrize("policy", [ErrorPolicy.CONTINUE], ids=["continue"])
def test_check_order(base: Env, cmd: C.Command, code: ItsError) -> None:
    base.send(cmd)
    assert base.codes() == [code]


# == queue and tables outside guest RAM: MEMORY_FAULT, never a Python exception ==================


def test_command_queue_outside_ram(pta: bool, policy: ErrorPolicy) -> None:
    e = build(its_config(pta=pta, policy=policy))
    e.bring_up()
    e.write(GITS_CTLR, 0)
    e.write64(GITS_CBASER, 1 << 63 | NOT_RAM | 1 << 10)
    e.write64(GITS_CWRITER, 0)  # CBASER resets CREADR only (ARM-REG gits_creadr)
    e.write(GITS_CTLR, 1)
    assert not e.errors()
    e.write64(GITS_CWRITER, 0x40)
    assert e.codes()[0] == E.MEMORY_FAULT
    assert e.errors()[0].offset == 0
    if policy is ErrorPolicy.STALL:
        assert e.creadr == 1
        assert len(e.errors()) == 1
    else:
        assert e.creadr == 0x40
        assert e.codes() == [E.MEMORY_FAULT, E.MEMORY_FAULT]


def test_command_queue_running_off_the_end_of_ram(policy: ErrorPolicy) -> None:
    e = build(its_config(policy=policy))
    e.bring_up()
    e.write(GITS_CTLR, 0)
    last_page = RAM_BASE + RAM_SIZE - 4096
    e.write64(GITS_CBASER, 1 << 63 | last_page | 1)  # two pages: the second is beyond RAM
    e.write64(GITS_CWRITER, 0)
    e.write(GITS_CTLR, 1)
    e.mem.write_bytes(last_page, C.encode(C.Sync(0)) * 128)  # the page in RAM: all SYNCs
    e.write64(GITS_CWRITER, 4096 - 32)
    e.d.wait()  # 127 commands: a driver polls CREADR while the ITS works through them
    assert e.creadr == 4096 - 32 and not e.errors()
    e.write64(GITS_CWRITER, 4096 + 32)
    e.d.wait()
    assert e.codes() == [E.MEMORY_FAULT]
    assert e.errors()[0].offset == 4096
    assert e.creadr == (4096 | 1 if policy is ErrorPolicy.STALL else 4096 + 32)


@pytest.mark.parametrize("kind", [1, 4], ids=["device-table", "collection-table"])
def test_table_outside_ram(policy: ErrorPolicy, kind: int) -> None:
    e = build(its_config(policy=policy))
    e.bring_up(collections=False)
    e.write(GITS_CTLR, 0)
    for n in range(8):
        v = e.read64(GITS_BASER + 8 * n)
        if v >> 56 & 7 == kind:
            e.write64(GITS_BASER + 8 * n, v & ~0x0000_FFFF_FFFF_F000 | NOT_RAM)
    e.write(GITS_CTLR, 1)
    assert e.its.enabled
    e.send(C.Mapc(0, 0, True), C.Mapd(1, 1, RAM_BASE, True))
    # kind 1: the MAPD's DTE write faults; kind 4: the MAPC's CTE write faults
    assert e.codes()[0] == E.MEMORY_FAULT
    assert e.errors()[0].offset == (0x20 if kind == 1 else 0)
    assert not e.its.translate(1, 0)  # no exception; a translation fault
    assert e.log.of(Kind.TRANSLATION_FAULT)
