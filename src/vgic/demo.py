"""The built-in demo: a driver's bring-up and MSI flow against the model, narrated.

Plays what an OS ITS driver does on a 4-CPU GIC: LPI tables, ITS tables, one collection
per CPU, two devices, MSIs through GITS_TRANSLATER and the INT command, an LPI disabled
and re-enabled through the configuration table, MOVI and MOVALL, and a driver mistake
that stalls the queue, with the diagnostic the ITS gives for it.
"""

from __future__ import annotations

from vgic.driver import Allocator, ItsDriver
from vgic.events import Kind
from vgic.gic import Gic, GicConfig
from vgic.its import commands as C
from vgic.memory import GuestMemory

RAM_BASE = 0x4000_0000
RAM_SIZE = 64 << 20


def _deliver(d: ItsDriver, ncpus: int) -> str:
    got = {cpu: d.drain(cpu) for cpu in range(ncpus)}
    return ", ".join(f"CPU{cpu}: {v}" for cpu, v in got.items() if v) or "nothing"


def run(out: list[str] | None = None) -> list[str]:
    lines: list[str] = [] if out is None else out

    def say(text: str) -> None:
        lines.append(text)
        print(text)

    mem = GuestMemory()
    mem.add_ram(RAM_BASE, RAM_SIZE)
    gic = Gic(mem, GicConfig(num_cpus=4))
    d = ItsDriver(gic, Allocator(RAM_BASE, RAM_SIZE))

    say("== bring-up")
    d.setup_lpis(id_bits=16)
    d.setup_its(queue_pages=1, table_pages=2, two_level=True)
    say(f"GITS_TYPER={d.typer:#x} GITS_CTLR={d.its_read(0):#x} (Enabled)")
    for cpu in range(4):
        d.send(C.Mapc(cpu, cpu, True))
    for dev in (0x10, 0x20):
        d.add_l2_page(dev)
        d.map_device(dev, 4)
    for ev in range(8):
        d.send(C.Mapti(0x10, ev, 8192 + ev, ev % 4))
        d.send(C.Mapti(0x20, ev, 8300 + ev, 0))
    d.send(C.Sync(0))
    say(f"16 events mapped on 4 collections; CREADR={d.creadr:#x} CWRITER={d.cwriter:#x}")

    say("== MSIs")
    for ev in range(8):
        d.msi(0x10, ev)
    say(f"device 0x10 events 0-7 -> {_deliver(d, 4)}")
    d.send(C.Int(0x20, 5))
    say(f"INT device 0x20 event 5 -> {_deliver(d, 4)}")

    say("== configuration table + INV")
    d.configure_lpi(8300, enabled=False)
    d.send(C.Inv(0x20, 0))
    d.msi(0x20, 0)
    say(f"LPI 8300 disabled, MSI -> {_deliver(d, 4)} (held pending)")
    d.configure_lpi(8300, enabled=True)
    d.send(C.Invall(0))
    say(f"re-enabled + INVALL -> {_deliver(d, 4)}")

    say("== MOVI and MOVALL")
    d.msi(0x10, 1)
    d.send(C.Movi(0x10, 1, 2))
    say(f"LPI 8193 pending on CPU1, MOVI to collection 2 -> {_deliver(d, 4)}")
    d.msi(0x10, 3)
    d.msi(0x10, 7)
    d.send(C.Movall(3, 0))
    say(f"LPIs 8195, 8199 pending on CPU3, MOVALL 3->0 -> {_deliver(d, 4)}")

    say("== a driver mistake")
    d.send(C.Mapti(0x30, 0, 9000, 0))
    err = gic.log.errors[-1]
    say(f"MAPTI on unmapped device 0x30: CREADR={d.creadr:#x} (Stalled={d.creadr & 1})")
    say(f"  error {err.code:#08x} at queue offset {err.offset:#x}: {err.message}")
    say(f"  command: {err.command}")
    d.mem.write_bytes(d.queue_base + (d.creadr & ~1), C.encode(C.Sync(0)))
    d.send(retry=True)
    say(f"fixed in place (SYNC) and retried: CREADR={d.creadr:#x} CWRITER={d.cwriter:#x}")

    counts = gic.log.counts
    say("== summary")
    say(f"commands={counts[Kind.COMMAND]} errors={counts[Kind.COMMAND_ERROR]} "
        f"LPIs pending={counts[Kind.LPI_PENDING]} acknowledged={counts[Kind.ACKNOWLEDGE]} EOIs={counts[Kind.EOI]}")  # fmt: skip
    return lines
