"""``vgic inspect``: the ITS tables, collections and LPI state as the ITS sees them.

Reads the tables from guest memory through each ITS's GITS_BASER<n> (flat or two-level),
the ITTs of the mapped devices, the collections, and each redistributor's LPI
configuration and pending state, and prints them as readable tables. Works on a live
:class:`~vgic.gic.Gic` and on one restored from a snapshot. Every scan draws on one
budget of ``limit`` table entries for the whole report (level-1 entries, DTEs, ITEs, CTEs
looked at), so however large the tables a guest programmed, the tool's work is bounded,
and the report says where it stopped.
"""

from __future__ import annotations

from vgic.gic import Gic
from vgic.gicv3.redistributor import LPI_BASE
from vgic.its.its import Its
from vgic.its.registers import BASER_TYPE_COLLECTION, BASER_TYPE_DEVICE
from vgic.its.tables import DeviceEntry, iter_entries
from vgic.memory import MemoryFault

BASER_TYPES = {0: "none", 1: "Device", 2: "vPE", 4: "Collection"}


def _lpi(gic: Gic, cpu: int | None, intid: int) -> str:
    if cpu is None:
        return "-"
    rd = gic.redistributors[cpu]
    pend = "pending" if intid in rd.pending_lpis else ""
    prop = rd.regs.get("PROPBASER") & 0x000F_FFFF_FFFF_F000
    try:
        cfg = gic.memory.read8(prop + intid - LPI_BASE) if intid >= LPI_BASE else 0
    except MemoryFault:
        return f"config unreadable {pend}".strip()
    state = "enabled" if cfg & 1 else "disabled"
    return f"prio {cfg & 0xFC:#04x} {state} {pend}".rstrip()


DEFAULT_LIMIT = 1 << 16  # table entries one report may look at


class Budget:
    """Table entries a report may still look at."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
        self.stopped = False

    def spend(self, n: int) -> None:
        self.left = max(0, self.left - n)


def its_report(gic: Gic, its: Its, budget: Budget | int = DEFAULT_LIMIT) -> list[str]:
    if isinstance(budget, int):
        budget = Budget(budget)
    mem = gic.memory
    lines = [f"== ITS {its.index}"]
    creadr = its.creadr  # not a register read: that would run queued commands
    lines.append(
        f"GITS_CTLR={its.read_CTLR(0):#x} ({'enabled' if its.enabled else 'disabled'})  "
        f"CBASER={its.regs.get('CBASER'):#x}  CREADR={creadr & ~1:#x}{' STALLED' if creadr & 1 else ''}  "
        f"CWRITER={its.cwriter:#x}"
    )
    for n in range(8):
        v = its.regs.get("BASER", n)
        kind = v >> 56 & 7
        if kind:
            lines.append(
                f"GITS_BASER{n}={v:#018x} type={BASER_TYPES.get(kind, kind)} valid={v >> 63} "
                f"indirect={v >> 62 & 1} page={(4, 16, 64, 64)[v >> 8 & 3]}K pages={(v & 0xFF) + 1}"
            )
    collections: dict[int, int] = {}
    ct = its.table(BASER_TYPE_COLLECTION)
    for icid, rdbase in sorted(its.hcc_collections.items()):
        collections[icid] = rdbase
    if ct is not None:
        entries, scanned, capped = iter_entries(mem, ct, budget.left)
        budget.spend(scanned)
        if capped:
            budget.stopped = True
            lines.append(f"(collection table scan stopped: the report's cap of {budget.limit} entries)")
        for i, raw in entries:
            found = its.layout.decode_cte(raw)
            if found is not None:
                collections[i + its.typer.hcc] = found
    lines.append("-- collections")
    lines.append(f"{'ICID':>6}  {'RDbase':>10}  CPU")
    cpu_of: dict[int, int | None] = {}
    for icid, rdbase in sorted(collections.items()):
        rd = its.resolve_rdbase(rdbase)
        cpu_of[icid] = rd.index if rd is not None else None
        lines.append(f"{icid:>6}  {rdbase:>#10x}  {rd.index if rd is not None else '(none)'}")
    dt = its.table(BASER_TYPE_DEVICE)
    lines.append("-- devices")
    if dt is None:
        lines.append("(no valid device table)")
        return lines
    devices, scanned, capped = iter_entries(mem, dt, budget.left)
    budget.spend(scanned)
    if capped:
        budget.stopped = True
        lines.append(f"(device table scan stopped: the report's cap of {budget.limit} entries)")
    for dev_id, raw in devices:
        dte = DeviceEntry.decode(raw)
        if dte is None:
            continue
        cached = its.cached_device(dev_id)
        stale = "" if cached is None or cached == dte else "  !! host cache differs from memory"
        lines.append(f"DeviceID {dev_id:#x}: ITT {dte.itt_addr:#x}, {dte.events} events{stale}")
        ite_size = its.layout.ite_size
        n = min(dte.events, budget.left)
        budget.spend(n)
        if n < dte.events:
            budget.stopped = True
            lines.append(f"   (ITT scan stopped after {n} of {dte.events} events: the report's cap of "
                         f"{budget.limit} entries)")  # fmt: skip
        try:
            data = mem.read_bytes(dte.itt_addr, n * ite_size)
        except MemoryFault:
            lines.append("   (ITT outside RAM)")
            continue
        for ev in range(n):
            ite = its.layout.decode_ite(
                int.from_bytes(data[ev * ite_size : ev * ite_size + min(ite_size, 8)], "little")
            )
            if ite is None:
                continue
            cpu = cpu_of.get(ite.icid)
            where = f"CPU {cpu}" if cpu is not None else "unmapped collection"
            lines.append(f"   EventID {ev:>5} -> LPI {ite.pintid:>6}  ICID {ite.icid:>4} ({where})  "
                         f"{_lpi(gic, cpu, ite.pintid)}")  # fmt: skip
    return lines


def report(gic: Gic, limit: int = DEFAULT_LIMIT) -> str:
    """Everything: every ITS, then every redistributor's LPI state."""
    its_cfg = gic.config.its[0] if gic.config.its else None
    policies = (
        f" (command errors: {its_cfg.error_policy.value}, memory faults: {its_cfg.memory_fault_policy.value})"
        if its_cfg is not None
        else ""
    )
    lines: list[str] = [f"profile: {gic.config.profile}{policies}"]
    budget = Budget(limit)
    for its in gic.its:
        lines += its_report(gic, its, budget)
    lines.append("== redistributors")
    for rd in gic.redistributors:
        prop = rd.regs.get("PROPBASER")
        pend = rd.regs.get("PENDBASER")
        pending = sorted(rd.pending_lpis)
        shown = ", ".join(f"{i}({(rd.lpi_config(i) or 0) & 0xFC:#x}{'' if (rd.lpi_config(i) or 0) & 1 else ' off'})"
                          for i in pending[:32])  # fmt: skip
        more = f" ... (+{len(pending) - 32})" if len(pending) > 32 else ""
        lines.append(f"CPU {rd.index}: EnableLPIs={int(rd.enable_lpis)} PROPBASER={prop:#x} (IDbits {(prop & 0x1F) + 1}) "
                     f"PENDBASER={pend:#x}")  # fmt: skip
        lines.append(f"   pending LPIs: {shown or 'none'}{more}")
        cpu = gic.cpus[rd.index]
        lines.append(f"   ICC: PMR={cpu.pmr:#x} RPR={cpu.running_priority():#x} IGRPEN1={int(cpu.igrpen1)} "
                     f"AP1R0={cpu.ap[1] & 0xFFFFFFFF:#x} IRQ={'high' if cpu.irq_level else 'low'}")  # fmt: skip
    return "\n".join(lines)
