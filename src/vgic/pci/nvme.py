"""An NVMe 1.4 controller over PCI Express, backed by a raw image file.

The subset Linux's ``nvme`` driver uses (docs/pci.md lists it with every status code):

* **Registers** (NVMe 1.4, 3.1) in BAR0 (64-bit, 16 KiB): CAP, VS, INTMS/INTMC, CC,
  CSTS, AQA, ASQ, ACQ, then the doorbells at 0x1000 (CAP.DSTRD = 0). The MSI-X table
  (65 vectors: admin + 64 I/O queues) is at 0x2000 and its PBA at 0x3000 of the same BAR.
* **Admin commands** (5): Delete/Create I/O SQ and CQ, Get Log Page (error information,
  SMART / health, firmware slot), Identify (CNS 00h namespace, 01h controller, 02h active
  namespace list, 03h namespace identification descriptors), Abort, Set/Get Features
  (arbitration, power management, temperature threshold, error recovery, volatile write
  cache, number of queues, interrupt coalescing, interrupt vector configuration, write
  atomicity, asynchronous event configuration), Asynchronous Event Request (held until an
  event: invalid doorbell register or value).
* **NVM commands** (6): Flush, Write, Read on namespace 1 with PRP1/PRP2 and PRP lists
  (4.3), at most MDTS (128 KiB) per command.
* **Interrupts**: a completion queue's vector (CQ IV) by MSI-X, else MSI, else INTx
  (asserted while an interrupt-enabled completion queue holds entries, INTMS bit 0
  masking it); one message per batch of completions posted to a queue.
* **Reset and shutdown** (7.6): CC.EN 1 -> 0 deletes every I/O queue and clears
  CSTS.RDY; CC.SHN flushes the image and reports CSTS.SHST = 10b (complete).

**Bounded work.** Commands run synchronously, but never unboundedly inside one guest
access: a submission queue tail doorbell (or a completion queue head doorbell that frees
room) runs at most :data:`INLINE_BUDGET` units of work, a unit being one command plus one
per 64 KiB it moves; what is left stays in the submission queues and :meth:`Nvme.poll`,
which the machine calls between scheduling slices, runs up to :data:`POLL_BUDGET` units
per call. A command that cannot post its completion (its completion queue is full) is not
fetched until the host frees an entry. Host memory is bounded by MDTS, never by a
queue size or a PRP list the guest chose: queues are read in place in guest memory.

**The guest is hostile**: a bad field gets the status code NVMe 1.4 names for it and a
``Kind.DIAGNOSTIC`` event; memory the controller cannot reach while fetching a command or
posting a completion is a fatal controller status (CSTS.CFS = 1), the guest's recovery
being a reset; nothing raises out of the model.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from vgic.pci.function import Bar, BarKind, ExpressType, PciFunction

# -- identity -------------------------------------------------------------------------------
NVME_VENDOR, NVME_DEVICE = 0x1B36, 0x0010  # QEMU's NVMe IDs (Red Hat), as on QEMU's virt
CLASS_NVME = 0x010802  # mass storage, non-volatile memory, NVM Express I/O controller

# -- geometry ------------------------------------------------------------------------------
BAR_SIZE = 0x4000
DOORBELL_BASE = 0x1000
MSIX_TABLE, MSIX_PBA = 0x2000, 0x3000
MAX_IO_QUEUES = 64
VECTORS = MAX_IO_QUEUES + 1
MQES = 0x7FF  # CAP.MQES: 2048 entries per I/O queue (0's based)
MDTS = 5  # 2^5 minimum pages (4 KiB) = 128 KiB per command
PAGE_MIN = 4096
MAX_TRANSFER = PAGE_MIN << MDTS
LBA_SIZE = 512
AERL = 3  # 4 outstanding Asynchronous Event Requests (0's based)
ACL = 3
SQES, CQES = 64, 16

INLINE_BUDGET = 8  # work units a doorbell write may do itself (module docstring)
POLL_BUDGET = 64  # work units per poll() call
UNIT_BYTES = 64 << 10

# -- registers (3.1) -----------------------------------------------------------------------
CAP, VS, INTMS, INTMC, CC, CSTS, NSSR, AQA, ASQ, ACQ = 0x00, 0x08, 0x0C, 0x10, 0x14, 0x1C, 0x20, 0x24, 0x28, 0x30
VERSION = 0x0001_0400  # 1.4.0
CC_EN, CSTS_RDY, CSTS_CFS = 1, 1, 1 << 1
SHST_NORMAL, SHST_COMPLETE = 0b00, 0b10

# -- status codes (4.6.1.2): (Status Code Type, Status Code) ---------------------------------
SUCCESS = (0, 0x00)
INVALID_OPCODE = (0, 0x01)
INVALID_FIELD = (0, 0x02)
DATA_TRANSFER_ERROR = (0, 0x04)
INTERNAL_ERROR = (0, 0x06)
ABORTED_SQ_DELETION = (0, 0x08)
INVALID_NAMESPACE = (0, 0x0B)
COMMAND_SEQUENCE_ERROR = (0, 0x0C)
PRP_OFFSET_INVALID = (0, 0x13)
LBA_OUT_OF_RANGE = (0, 0x80)
NAMESPACE_WRITE_PROTECTED = (0, 0x20)
CQ_INVALID = (1, 0x00)
INVALID_QUEUE_ID = (1, 0x01)
INVALID_QUEUE_SIZE = (1, 0x02)
AER_LIMIT_EXCEEDED = (1, 0x05)
INVALID_VECTOR = (1, 0x08)
INVALID_LOG_PAGE = (1, 0x09)
INVALID_QUEUE_DELETION = (1, 0x0C)
FEATURE_NOT_SAVEABLE = (1, 0x0D)

Status = tuple[int, int]

# -- opcodes -------------------------------------------------------------------------------
ADMIN_DELETE_SQ, ADMIN_CREATE_SQ, ADMIN_GET_LOG_PAGE = 0x00, 0x01, 0x02
ADMIN_DELETE_CQ, ADMIN_CREATE_CQ, ADMIN_IDENTIFY = 0x04, 0x05, 0x06
ADMIN_ABORT, ADMIN_SET_FEATURES, ADMIN_GET_FEATURES, ADMIN_AER = 0x08, 0x09, 0x0A, 0x0C
NVM_FLUSH, NVM_WRITE, NVM_READ = 0x00, 0x01, 0x02

# Feature identifiers (5.21.1) this controller keeps, with their defaults
FEATURES = {
    0x01: 0,  # Arbitration
    0x02: 0,  # Power Management (PS0)
    0x04: 0x0157,  # Temperature Threshold (343 K, composite, over)
    0x05: 0,  # Error Recovery
    0x06: 1,  # Volatile Write Cache: WCE
    0x08: 0,  # Interrupt Coalescing (accepted, not applied)
    0x0A: 0,  # Write Atomicity Normal
    0x0B: 0,  # Asynchronous Event Configuration
}
FID_VWC, FID_NUM_QUEUES, FID_IV_CONFIG = 0x06, 0x07, 0x09

# Asynchronous events (5.2): type Error status, information, log page Error Information
AE_INVALID_DOORBELL_REGISTER, AE_INVALID_DOORBELL_VALUE = 0x00, 0x01

_U32 = struct.Struct("<I")


@dataclass
class _Queue:
    qid: int
    base: int
    size: int  # entries
    head: int = 0
    tail: int = 0


@dataclass
class _Sq(_Queue):
    cqid: int = 0


@dataclass
class _Cq(_Queue):
    vector: int = 0
    ien: bool = True
    phase: int = 1

    @property
    def full(self) -> bool:
        return (self.tail + 1) % self.size == self.head


@dataclass
class _Command:
    opcode: int
    cid: int
    nsid: int
    prp1: int
    prp2: int
    cdw: tuple[int, ...]  # CDW10..CDW15
    fuse: int
    psdt: int

    @classmethod
    def decode(cls, raw: bytes) -> _Command:
        dw = struct.unpack("<16I", raw)
        return cls(dw[0] & 0xFF, dw[0] >> 16, dw[1], dw[6] | dw[7] << 32, dw[8] | dw[9] << 32, dw[10:16],
                   dw[0] >> 8 & 3, dw[0] >> 14 & 3)  # fmt: skip


class _Done(Exception):
    """Ends a command early with a status (the command handlers' error path)."""

    def __init__(self, status: Status, why: str = "") -> None:
        super().__init__(why)
        self.status = status
        self.why = why


class Disk:
    """A raw image file as namespace 1: 512-byte LBAs, positioned reads and writes."""

    def __init__(self, path: str, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        flags = os.O_RDONLY if read_only else os.O_RDWR
        self.fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
        self.size = os.fstat(self.fd).st_size
        self.blocks = self.size // LBA_SIZE

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self.fd, size, offset)
        return data + bytes(size - len(data))

    def write(self, offset: int, data: bytes) -> None:
        os.pwrite(self.fd, data, offset)

    def flush(self) -> None:
        if not self.read_only:
            os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Nvme(PciFunction):
    """An NVMe controller with one namespace (NSID 1) on ``disk``."""

    def __init__(self, disk: Disk, serial: str = "vgic-nvme0", model: str = "vgic NVMe Ctrl") -> None:
        super().__init__(NVME_VENDOR, NVME_DEVICE, CLASS_NVME, revision=2, subsystem_vendor_id=0x1AF4,
                         subsystem_id=0x1100, name="nvme")  # fmt: skip
        self.disk = disk
        self.serial = serial[:20]
        self.model = model[:40]
        self.add_bar(Bar(0, BAR_SIZE, BarKind.MEM64))
        self.add_express(ExpressType.RC_INTEGRATED_ENDPOINT)  # on the root bus, as QEMU's
        self.add_msix(VECTORS, bar=0, table=MSIX_TABLE, pba=MSIX_PBA)
        self.cap = MQES | 1 << 16 | 0xF << 24 | 1 << 37 | 0 << 48 | 4 << 52  # CQR, TO 7.5 s, CSS NVM, MPS 4K..64K
        self.commands_done = 0
        self.reset()

    # == reset =============================================================================
    def reset(self) -> None:
        """Conventional reset of the function: PCI state and the controller registers."""
        super().reset()
        self.cc = 0
        self.csts = 0
        self.aqa = 0
        self.asq = 0
        self.acq = 0
        self.intms = 0
        self._controller_reset()

    def _controller_reset(self) -> None:
        """Controller Level Reset (7.3.2): queues gone, features back to defaults."""
        self.sqs: dict[int, _Sq] = {}
        self.cqs: dict[int, _Cq] = {}
        self.features = dict(FEATURES)
        self.iv_config: dict[int, int] = {}
        self.queues_allocated: int | None = None
        self.aers: list[int] = []  # CIDs of outstanding Asynchronous Event Requests
        self.events: list[int] = []  # asynchronous event information waiting for a request
        self.event_masked = False  # an Error status event was reported; the log not yet read
        self.csts &= ~(CSTS_RDY | CSTS_CFS)
        self._work = False
        self._update_intx()

    # == registers =========================================================================
    def bar_read(self, index: int, offset: int, size: int) -> int:
        if size == 8 and offset % 8 == 0:
            return self.bar_read(index, offset, 4) | self.bar_read(index, offset + 4, 4) << 32
        word = offset & ~3
        value = self._reg_read(word)
        shift = (offset - word) * 8
        if size not in (1, 2, 4) or shift + size * 8 > 32:
            self.diag(f"{size}-byte read at BAR0 offset {offset:#x}: registers are DWORDs", "NVMe 1.4 3.1")
            return 0
        return value >> shift & ((1 << (8 * size)) - 1)

    def _reg_read(self, offset: int) -> int:
        if offset == CAP:
            return self.cap & 0xFFFF_FFFF
        if offset == CAP + 4:
            return self.cap >> 32
        if offset == VS:
            return VERSION
        if offset in (INTMS, INTMC):
            return self.intms
        if offset == CC:
            return self.cc
        if offset == CSTS:
            return self.csts
        if offset == AQA:
            return self.aqa
        if offset in (ASQ, ASQ + 4):
            return self.asq >> (8 * (offset - ASQ)) & 0xFFFF_FFFF
        if offset in (ACQ, ACQ + 4):
            return self.acq >> (8 * (offset - ACQ)) & 0xFFFF_FFFF
        if offset >= DOORBELL_BASE:
            self.diag(f"read of doorbell at {offset:#x}: doorbells are write-only (reads 0)", "NVMe 1.4 3.1.24")
        return 0

    def bar_write(self, index: int, offset: int, size: int, value: int) -> None:
        if size == 8 and offset % 8 == 0:
            self.bar_write(index, offset, 4, value & 0xFFFF_FFFF)
            self.bar_write(index, offset + 4, 4, value >> 32)
            return
        if size != 4 or offset % 4:
            self.diag(f"{size}-byte write of {value:#x} at BAR0 offset {offset:#x} ignored: registers are "
                      f"written as DWORDs", "NVMe 1.4 3.1")  # fmt: skip
            return
        if offset >= DOORBELL_BASE:
            self._doorbell(offset, value)
        elif offset == INTMS:
            self.intms |= value
            self._update_intx()
        elif offset == INTMC:
            self.intms &= ~value
            self._update_intx()
            self._resignal()
        elif offset == CC:
            self._write_cc(value)
        elif offset == AQA:
            self._while_disabled("AQA")
            self.aqa = value & 0x0FFF_0FFF
        elif offset in (ASQ, ASQ + 4, ACQ, ACQ + 4):
            name = "ASQ" if offset < ACQ else "ACQ"
            self._while_disabled(name)
            base = ASQ if name == "ASQ" else ACQ
            old = self.asq if name == "ASQ" else self.acq
            shift = 8 * (offset - base)
            new = (old & ~(0xFFFF_FFFF << shift) | value << shift) & 0xFFFF_FFFF_FFFF_F000
            if name == "ASQ":
                self.asq = new
            else:
                self.acq = new
        elif offset == NSSR:
            self.diag("write to NSSR: NVM Subsystem Reset is not supported (CAP.NSSRS = 0), ignored")
        elif offset not in (VS, CAP, CAP + 4, CSTS):
            self.diag(f"write of {value:#x} to reserved BAR0 offset {offset:#x} ignored")

    def _while_disabled(self, name: str) -> None:
        if self.cc & CC_EN:
            self.diag(f"{name} written while CC.EN = 1: used only at the next enable", "NVMe 1.4 3.1.8")

    def _write_cc(self, value: int) -> None:
        old, self.cc = self.cc, value & 0x00FF_FFF1
        if old & CC_EN and value & CC_EN and (old ^ value) & 0x00FF_3FF0:
            self.diag(f"CC fields other than SHN changed while enabled ({old:#x} -> {value:#x})", "NVMe 1.4 3.1.5")
        if not old & CC_EN and value & CC_EN:
            self._enable()
        elif old & CC_EN and not value & CC_EN:
            self._controller_reset()
        shn, old_shn = value >> 14 & 3, old >> 14 & 3
        if shn and not old_shn:
            self._shutdown()
        elif not shn and old_shn:
            self.csts = self.csts & ~(3 << 2) | SHST_NORMAL << 2

    def _enable(self) -> None:
        """CC.EN 0 -> 1 (7.6.1): check the admin queue and configuration, then ready."""
        mps = self.cc >> 7 & 0xF
        asqs, acqs = (self.aqa & 0xFFF) + 1, (self.aqa >> 16 & 0xFFF) + 1
        problem = None
        if self.cc >> 4 & 7 != 0:
            problem = f"CC.CSS = {self.cc >> 4 & 7}: only the NVM command set (0) is supported"
        elif not self.cap >> 48 & 0xF <= mps <= self.cap >> 52 & 0xF:
            problem = f"CC.MPS = {mps} is outside CAP.MPSMIN..MPSMAX"
        elif self.cc >> 11 & 7 != 0:
            problem = f"CC.AMS = {self.cc >> 11 & 7}: only round robin (0) is supported"
        elif asqs < 2 or acqs < 2:
            problem = f"admin queues of {asqs} and {acqs} entries: at least 2 each"
        elif self.asq % self.page or self.acq % self.page:
            problem = "ASQ or ACQ is not aligned to the memory page size"
        elif not self.bus or not (self.bus.memory.contains(self.asq, asqs * SQES)
                                  and self.bus.memory.contains(self.acq, acqs * CQES)):  # fmt: skip
            problem = "the admin queues are not in guest RAM"
        if problem is not None:
            self.diag(f"CC.EN = 1 refused: {problem}; CSTS.CFS = 1", "NVMe 1.4 3.1.5, 7.6.1")
            self.csts |= CSTS_CFS
            return
        self.cqs[0] = _Cq(0, self.acq, acqs, vector=0, ien=True)
        self.sqs[0] = _Sq(0, self.asq, asqs, cqid=0)
        self.csts = self.csts & ~CSTS_CFS | CSTS_RDY

    def _shutdown(self) -> None:
        """CC.SHN (7.6.2): the image is flushed; shutdown processing is complete at once."""
        try:
            self.disk.flush()
        except OSError as e:
            self.diag(f"flushing the image at shutdown failed: {e.strerror}")
        self.csts = self.csts & ~(3 << 2) | SHST_COMPLETE << 2

    @property
    def page(self) -> int:
        return PAGE_MIN << (self.cc >> 7 & 0xF)

    @property
    def ready(self) -> bool:
        return bool(self.csts & CSTS_RDY) and not self.csts & CSTS_CFS

    def _fatal(self, why: str) -> None:
        self.diag(f"controller fatal status (CSTS.CFS = 1): {why}", "NVMe 1.4 3.1.6, 9.5")
        self.csts |= CSTS_CFS

    # == doorbells (3.1.24, 3.1.25) =========================================================
    def _doorbell(self, offset: int, value: int) -> None:
        index = (offset - DOORBELL_BASE) // 4
        qid, is_cq = index >> 1, bool(index & 1)
        value &= 0xFFFF
        if not self.ready:
            self.diag(f"doorbell write at {offset:#x} while the controller is not ready: ignored")
            return
        queue: _Queue | None = self.cqs.get(qid) if is_cq else self.sqs.get(qid)
        kind = "CQ head" if is_cq else "SQ tail"
        if queue is None:
            self.diag(f"{kind} doorbell of queue {qid}, which does not exist", "NVMe 1.4 5.2.1")
            self._async_event(AE_INVALID_DOORBELL_REGISTER)
            return
        if value >= queue.size:
            self.diag(f"{kind} doorbell of queue {qid} written {value}, beyond its {queue.size} entries",
                      "NVMe 1.4 5.2.1")  # fmt: skip
            self._async_event(AE_INVALID_DOORBELL_VALUE)
            return
        if is_cq:
            cq = self.cqs[qid]
            if (value - cq.head) % cq.size > (cq.tail - cq.head) % cq.size:
                self.diag(f"CQ head doorbell of queue {qid} written {value}: past the {cq.tail} entries posted",
                          "NVMe 1.4 5.2.1")  # fmt: skip
                self._async_event(AE_INVALID_DOORBELL_VALUE)
                return
            cq.head = value
            self._update_intx()
        else:
            queue.tail = value
        self._process(INLINE_BUDGET)

    # == command processing ===================================================================
    def poll(self) -> bool:
        """Deferred work, called between scheduling slices: at most POLL_BUDGET units."""
        if not self._work:
            return False
        self._process(POLL_BUDGET)
        return True

    def _process(self, budget: int) -> None:
        """Run commands round robin over the submission queues, at most ``budget`` units."""
        posted: set[int] = set()
        self._work = False
        while budget > 0 and self.ready:
            progress = False
            for sq in list(self.sqs.values()):
                if sq.head == sq.tail:
                    continue
                cq = self.cqs.get(sq.cqid)
                if cq is None or cq.full:
                    continue  # waits for the host to free a completion queue entry
                raw = self.dma_read(sq.base + sq.head * SQES, SQES)
                if raw is None:
                    self._fatal(f"cannot fetch the command at SQ {sq.qid} entry {sq.head}")
                    break
                sq.head = (sq.head + 1) % sq.size
                cmd = _Command.decode(raw)
                budget -= 1
                dw0, status, cost = self._execute(sq.qid, cmd)
                budget -= cost
                self.commands_done += 1
                if status is not None:
                    self._post(cq, dw0, sq, cmd.cid, status)
                    posted.add(cq.qid)
                progress = True
                if budget <= 0 or not self.ready:
                    break
            if not progress:
                break
        for qid in posted:
            self._interrupt(qid)
        if self.ready and any(sq.head != sq.tail for sq in self.sqs.values()):
            self._work = True

    def _post(self, cq: _Cq, dw0: int, sq: _Sq, cid: int, status: Status) -> None:
        """A completion queue entry (4.6): DW0, SQ head and ID, CID, phase, status."""
        sct, sc = status
        dnr = 1 if status != SUCCESS else 0
        entry = struct.pack("<IIHHI", dw0 & 0xFFFF_FFFF, 0, sq.head, sq.qid,
                            cid | cq.phase << 16 | sc << 17 | sct << 25 | dnr << 31)  # fmt: skip
        if not self.dma_write(cq.base + cq.tail * CQES, entry):
            self._fatal(f"cannot post a completion to CQ {cq.qid} entry {cq.tail}")
            return
        cq.tail += 1
        if cq.tail == cq.size:
            cq.tail = 0
            cq.phase ^= 1

    def _interrupt(self, cqid: int) -> None:
        cq = self.cqs.get(cqid)
        if cq is None or not cq.ien:
            return
        if self.msix_enabled:
            self.signal(cq.vector)
        elif self.msi_enabled:  # (no MSI capability here; kept for subclasses adding one)
            if not self.intms >> cq.vector & 1:
                self.signal(cq.vector)
        else:
            self._update_intx()

    def _resignal(self) -> None:
        """After INTMC: vectors unmasked with completions waiting."""
        if self.msix_enabled:
            return
        for cq in self.cqs.values():
            if cq.head != cq.tail:
                self._interrupt(cq.qid)

    def _update_intx(self) -> None:
        """Pin-based interrupts (7.5.1): asserted while an enabled CQ holds entries."""
        if self.msix_enabled or self.msi_enabled:
            level = False
        else:
            level = not self.intms & 1 and any(
                cq.ien and cq.head != cq.tail for cq in getattr(self, "cqs", {}).values()
            )
        if level != self._intx:
            self.set_intx(level)

    def _execute(self, sqid: int, cmd: _Command) -> tuple[int, Status | None, int]:
        """Run one command: (DW0, status or None for a held AER, extra work units)."""
        if cmd.fuse or cmd.psdt:
            what = "fused operation" if cmd.fuse else "SGL data pointer (PSDT)"
            self.diag(f"{'admin' if sqid == 0 else 'I/O'} command {cmd.opcode:#04x} CID {cmd.cid}: {what} not "
                      f"supported: Invalid Field in Command", "NVMe 1.4 4.2")  # fmt: skip
            return 0, INVALID_FIELD, 0
        try:
            if sqid == 0:
                return self._admin(cmd)
            return self._io(cmd)
        except _Done as done:
            if done.why:
                self.diag(f"{'admin' if sqid == 0 else 'I/O'} command {cmd.opcode:#04x} CID {cmd.cid} on SQ "
                          f"{sqid}: {done.why}", "NVMe 1.4")  # fmt: skip
            return 0, done.status, 0

    # == data transfer (PRPs, 4.3) ===========================================================
    def _prp_segments(self, cmd: _Command, length: int) -> list[tuple[int, int]]:
        """The (address, length) pieces of a PRP1/PRP2 transfer of ``length`` bytes."""
        page = self.page
        if cmd.prp1 & 3:
            raise _Done(PRP_OFFSET_INVALID, f"PRP1 {cmd.prp1:#x} is not DWORD aligned")
        first = min(length, page - cmd.prp1 % page)
        segments = [(cmd.prp1, first)]
        left = length - first
        if left == 0:
            return segments
        if left <= page:
            if cmd.prp2 % page:
                raise _Done(PRP_OFFSET_INVALID, f"PRP2 {cmd.prp2:#x} has an offset in a two-page transfer")
            segments.append((cmd.prp2, left))
            return segments
        entry = cmd.prp2
        if entry & 7:
            raise _Done(PRP_OFFSET_INVALID, f"PRP list pointer {entry:#x} is not QWORD aligned")
        while left > 0:  # at most MDTS / page + 1 entries: bounded by MDTS
            slots = (page - entry % page) // 8
            need = (left + page - 1) // page
            take = need if need <= slots else slots - 1
            raw = self.dma_read(entry, take * 8 + (8 if need > slots else 0))
            if raw is None:
                raise _Done(DATA_TRANSFER_ERROR, f"PRP list at {entry:#x} is not readable")
            pointers = struct.unpack(f"<{len(raw) // 8}Q", raw)
            for p in pointers[:take]:
                if p % page:
                    raise _Done(PRP_OFFSET_INVALID, f"PRP list entry {p:#x} has a non-zero offset")
                n = min(left, page)
                segments.append((p, n))
                left -= n
            if left > 0:
                entry = pointers[-1]
                if entry & 7:
                    raise _Done(PRP_OFFSET_INVALID, f"chained PRP list pointer {entry:#x} is not QWORD aligned")
        return segments

    def _to_host(self, cmd: _Command, length: int) -> bytes:
        """Read the guest's data buffer (a write command, Set Features data)."""
        out = bytearray()
        for addr, n in self._prp_segments(cmd, length):
            piece = self.dma_read(addr, n)
            if piece is None:
                raise _Done(DATA_TRANSFER_ERROR, f"data buffer at {addr:#x} ({n} bytes) is not readable")
            out += piece
        return bytes(out)

    def _to_guest(self, cmd: _Command, data: bytes) -> None:
        pos = 0
        for addr, n in self._prp_segments(cmd, len(data)):
            if not self.dma_write(addr, data[pos : pos + n]):
                raise _Done(DATA_TRANSFER_ERROR, f"data buffer at {addr:#x} ({n} bytes) is not writable")
            pos += n

    # == admin commands (5) ====================================================================
    def _admin(self, cmd: _Command) -> tuple[int, Status | None, int]:
        op = cmd.opcode
        if op == ADMIN_IDENTIFY:
            self._to_guest(cmd, self._identify(cmd))
            return 0, SUCCESS, 0
        if op == ADMIN_CREATE_CQ:
            self._create_cq(cmd)
        elif op == ADMIN_CREATE_SQ:
            self._create_sq(cmd)
        elif op == ADMIN_DELETE_SQ:
            self._delete_sq(cmd)
        elif op == ADMIN_DELETE_CQ:
            self._delete_cq(cmd)
        elif op == ADMIN_SET_FEATURES:
            return self._set_features(cmd), SUCCESS, 0
        elif op == ADMIN_GET_FEATURES:
            return self._get_features(cmd), SUCCESS, 0
        elif op == ADMIN_GET_LOG_PAGE:
            self._get_log_page(cmd)
        elif op == ADMIN_ABORT:
            return 1, SUCCESS, 0  # DW0 bit 0: not aborted (commands run to completion at once)
        elif op == ADMIN_AER:
            if len(self.aers) > AERL:
                raise _Done(AER_LIMIT_EXCEEDED, f"more than AERL + 1 = {AERL + 1} outstanding event requests")
            self.aers.append(cmd.cid)
            self._deliver_events()
            return 0, None, 0
        else:
            raise _Done(INVALID_OPCODE, f"admin opcode {op:#04x} is not supported: Invalid Command Opcode")
        return 0, SUCCESS, 0

    def _queue_fields(self, cmd: _Command, kind: str) -> tuple[int, int]:
        qid, size = cmd.cdw[0] & 0xFFFF, (cmd.cdw[0] >> 16) + 1
        limit = MAX_IO_QUEUES if self.queues_allocated is None else self.queues_allocated
        if not 1 <= qid <= limit:
            raise _Done(INVALID_QUEUE_ID, f"{kind} ID {qid} is not 1..{limit}")
        if not 2 <= size <= MQES + 1:
            raise _Done(INVALID_QUEUE_SIZE, f"{kind} size {size} is not 2..CAP.MQES + 1 = {MQES + 1}")
        if not cmd.cdw[1] & 1:
            raise _Done(INVALID_FIELD, f"{kind} not physically contiguous (PC = 0) but CAP.CQR = 1")
        if cmd.prp1 % self.page:
            raise _Done(PRP_OFFSET_INVALID, f"{kind} base {cmd.prp1:#x} is not page aligned")
        return qid, size

    def _create_cq(self, cmd: _Command) -> None:
        qid, size = self._queue_fields(cmd, "CQ")
        if qid in self.cqs:
            raise _Done(INVALID_QUEUE_ID, f"CQ {qid} already exists")
        vector, ien = cmd.cdw[1] >> 16, bool(cmd.cdw[1] & 2)
        if self.cc >> 20 & 0xF != 4:
            raise _Done(INVALID_FIELD, f"CC.IOCQES = {self.cc >> 20 & 0xF}: completion entries are 16 bytes (4)")
        if vector >= VECTORS or (not self.msix_enabled and vector > 0 and ien):
            raise _Done(INVALID_VECTOR, f"interrupt vector {vector} does not exist")
        if self.bus is None or not self.bus.memory.contains(cmd.prp1, size * CQES):
            raise _Done(INVALID_FIELD, f"CQ {qid} at {cmd.prp1:#x} ({size} entries) is not in guest RAM")
        self.cqs[qid] = _Cq(qid, cmd.prp1, size, vector=vector, ien=ien)

    def _create_sq(self, cmd: _Command) -> None:
        qid, size = self._queue_fields(cmd, "SQ")
        if qid in self.sqs:
            raise _Done(INVALID_QUEUE_ID, f"SQ {qid} already exists")
        cqid = cmd.cdw[1] >> 16
        if cqid == 0 or cqid not in self.cqs:
            raise _Done(CQ_INVALID, f"SQ {qid} names completion queue {cqid}, which does not exist")
        if self.cc >> 16 & 0xF != 6:
            raise _Done(INVALID_FIELD, f"CC.IOSQES = {self.cc >> 16 & 0xF}: submission entries are 64 bytes (6)")
        if self.bus is None or not self.bus.memory.contains(cmd.prp1, size * SQES):
            raise _Done(INVALID_FIELD, f"SQ {qid} at {cmd.prp1:#x} ({size} entries) is not in guest RAM")
        self.sqs[qid] = _Sq(qid, cmd.prp1, size, cqid=cqid)

    def _delete_sq(self, cmd: _Command) -> None:
        qid = cmd.cdw[0] & 0xFFFF
        sq = self.sqs.get(qid)
        if qid == 0 or sq is None:
            raise _Done(INVALID_QUEUE_ID, f"delete of SQ {qid}, which is not an I/O submission queue")
        if sq.head != sq.tail:
            self.diag(f"SQ {qid} deleted with {(sq.tail - sq.head) % sq.size} commands not fetched: dropped",
                      "NVMe 1.4 5.6")  # fmt: skip
        del self.sqs[qid]

    def _delete_cq(self, cmd: _Command) -> None:
        qid = cmd.cdw[0] & 0xFFFF
        if qid == 0 or qid not in self.cqs:
            raise _Done(INVALID_QUEUE_ID, f"delete of CQ {qid}, which is not an I/O completion queue")
        if any(sq.cqid == qid for sq in self.sqs.values()):
            raise _Done(INVALID_QUEUE_DELETION, f"CQ {qid} still has submission queues")
        del self.cqs[qid]
        self._update_intx()

    def _identify(self, cmd: _Command) -> bytes:
        cns = cmd.cdw[0] & 0xFF
        if cns == 0x01:
            return self._identify_controller()
        if cns == 0x00:
            if cmd.nsid != 1:
                raise _Done(INVALID_NAMESPACE, f"Identify Namespace of NSID {cmd.nsid:#x}: only NSID 1 exists")
            return self._identify_namespace()
        if cns == 0x02:
            if cmd.nsid >= 0xFFFF_FFFE:
                raise _Done(INVALID_NAMESPACE, f"active namespace list above NSID {cmd.nsid:#x}")
            return (_U32.pack(1) if cmd.nsid < 1 else b"").ljust(4096, b"\0")
        if cns == 0x03:
            if cmd.nsid != 1:
                raise _Done(INVALID_NAMESPACE, f"namespace identification descriptors of NSID {cmd.nsid:#x}")
            return (bytes([0x02, 16, 0, 0]) + self._nguid()).ljust(4096, b"\0")  # NIDT 2: NGUID
        raise _Done(INVALID_FIELD, f"Identify CNS {cns:#04x} is not supported: Invalid Field in Command")

    def _nguid(self) -> bytes:
        return b"vgic" + self.serial.encode()[:12].ljust(12, b"\0")

    def _identify_controller(self) -> bytes:
        """Identify Controller data structure (5.15.2.2, Figure 247)."""
        d = bytearray(4096)
        struct.pack_into("<HH", d, 0, NVME_VENDOR, self.config.get(0x2C, 2))  # VID, SSVID
        d[4:24] = self.serial.encode().ljust(20)[:20]  # SN
        d[24:64] = self.model.encode().ljust(40)[:40]  # MN
        d[64:72] = b"1.0".ljust(8)  # FR
        d[72] = 6  # RAB
        d[73:76] = bytes([0x00, 0x54, 0x52])  # IEEE OUI (QEMU's, little endian)
        d[77] = MDTS
        struct.pack_into("<HI", d, 78, 0, VERSION)  # CNTLID, VER
        d[111] = 1  # CNTRLTYPE: I/O controller
        d[258], d[259] = ACL, AERL
        d[260] = 1 << 1  # FRMW: one firmware slot
        d[263] = 0  # NPSS: one power state
        struct.pack_into("<HH", d, 266, 0x0157, 0x0175)  # WCTEMP, CCTEMP
        d[512], d[513] = 0x66, 0x44  # SQES, CQES: 64 and 16 bytes
        struct.pack_into("<I", d, 516, 1)  # NN
        d[525] = 1  # VWC present
        subnqn = f"nqn.2014-08.org.nvmexpress:{NVME_VENDOR:04x}{NVME_VENDOR:04x}{self.serial}"
        d[768 : 768 + len(subnqn)] = subnqn.encode()[:256]
        struct.pack_into("<HBBII", d, 2048, 2500, 0, 0, 16, 16)  # PSD0: MP 25 W, ENLAT/EXLAT 16 us
        return bytes(d)

    def _identify_namespace(self) -> bytes:
        """Identify Namespace data structure (5.15.2.1, Figure 245): one 512-byte format."""
        d = bytearray(4096)
        blocks = self.disk.blocks
        struct.pack_into("<QQQ", d, 0, blocks, blocks, blocks)  # NSZE, NCAP, NUSE
        d[25] = 0  # NLBAF: one format
        d[26] = 0  # FLBAS: format 0
        d[104:120] = self._nguid()  # NGUID
        struct.pack_into("<HBB", d, 128, 0, 9, 0)  # LBAF0: MS 0, LBADS 9 (512 bytes), RP 0
        return bytes(d)

    def _set_features(self, cmd: _Command) -> int:
        fid, save = cmd.cdw[0] & 0xFF, cmd.cdw[0] >> 31
        if save:
            raise _Done(FEATURE_NOT_SAVEABLE, f"Set Features {fid:#04x} with SV = 1: nothing is saveable")
        value = cmd.cdw[1]
        if fid == FID_NUM_QUEUES:
            nsqr, ncqr = value & 0xFFFF, value >> 16
            if nsqr == 0xFFFF or ncqr == 0xFFFF:
                raise _Done(INVALID_FIELD, "Number of Queues of 65536 requested")
            if len(self.sqs) > 1 or len(self.cqs) > 1:
                raise _Done(COMMAND_SEQUENCE_ERROR, "Number of Queues set after I/O queues were created")
            n = min(max(nsqr, ncqr) + 1, MAX_IO_QUEUES)
            self.queues_allocated = n
            return (n - 1) | (n - 1) << 16
        if fid == FID_IV_CONFIG:
            vector = value & 0xFFFF
            if vector >= VECTORS:
                raise _Done(INVALID_FIELD, f"Interrupt Vector Configuration of vector {vector}")
            self.iv_config[vector] = value & 0x1_FFFF
            return 0
        if fid not in self.features:
            raise _Done(INVALID_FIELD, f"feature {fid:#04x} is not supported")
        if fid == 0x02 and value & 0x1F:
            raise _Done(INVALID_FIELD, f"power state {value & 0x1F}: only PS0 exists (NPSS = 0)")
        self.features[fid] = value
        return 0

    def _get_features(self, cmd: _Command) -> int:
        fid, sel = cmd.cdw[0] & 0xFF, cmd.cdw[0] >> 8 & 7
        if sel == 3:  # supported capabilities: changeable, not saveable, not namespace specific
            if fid in self.features or fid in (FID_NUM_QUEUES, FID_IV_CONFIG):
                return 1 << 2
            raise _Done(INVALID_FIELD, f"feature {fid:#04x} is not supported")
        if sel > 3:
            raise _Done(INVALID_FIELD, f"Get Features select {sel} is reserved")
        if fid == FID_NUM_QUEUES:
            n = self.queues_allocated or MAX_IO_QUEUES
            return (n - 1) | (n - 1) << 16
        if fid == FID_IV_CONFIG:
            vector = cmd.cdw[1] & 0xFFFF
            if vector >= VECTORS:
                raise _Done(INVALID_FIELD, f"Interrupt Vector Configuration of vector {vector}")
            return self.iv_config.get(vector, vector) if sel == 0 else vector
        if fid not in self.features:
            raise _Done(INVALID_FIELD, f"feature {fid:#04x} is not supported")
        return self.features[fid] if sel == 0 else FEATURES[fid]

    def _get_log_page(self, cmd: _Command) -> None:
        lid, rae = cmd.cdw[0] & 0xFF, cmd.cdw[0] >> 15 & 1
        length = ((cmd.cdw[0] >> 16 | (cmd.cdw[1] & 0xFFFF) << 16) + 1) * 4
        offset = cmd.cdw[2] | cmd.cdw[3] << 32
        if length > MAX_TRANSFER:
            raise _Done(INVALID_FIELD, f"log page transfer of {length} bytes is larger than MDTS")
        if lid == 0x01:  # Error Information: one all-zero entry (ELPE = 0)
            page = bytes(64)
            if not rae:
                self.event_masked = False
                self._deliver_events()
        elif lid == 0x02:  # SMART / Health Information
            p = bytearray(512)
            struct.pack_into("<H", p, 1, 0x0127)  # composite temperature 295 K
            p[3], p[4] = 100, 10  # available spare, threshold
            page = bytes(p)
        elif lid == 0x03:  # Firmware Slot Information
            p = bytearray(512)
            p[0] = 1
            p[8:16] = b"1.0".ljust(8)
            page = bytes(p)
        else:
            raise _Done(INVALID_LOG_PAGE, f"log page {lid:#04x} is not supported")
        if offset % 4 or offset > len(page):
            raise _Done(INVALID_FIELD, f"log page offset {offset} is beyond the {len(page)}-byte page")
        self._to_guest(cmd, page[offset : offset + length].ljust(length, b"\0"))

    # == asynchronous events (5.2) ==============================================================
    def _async_event(self, info: int) -> None:
        if info in self.events:  # at most one of each kind waits (bounded)
            return
        self.events.append(info)
        self._deliver_events()

    def _deliver_events(self) -> None:
        cq, sq = self.cqs.get(0), self.sqs.get(0)
        if cq is None or sq is None:
            return
        while self.aers and self.events and not self.event_masked and not cq.full:
            info = self.events.pop(0)
            cid = self.aers.pop(0)
            self.event_masked = True  # until the Error Information log is read (RAE = 0)
            self._post(cq, 0 | info << 8 | 0x01 << 16, sq, cid, SUCCESS)  # type 0 (error), log page 01h
            self._interrupt(0)

    # == NVM commands (6) =======================================================================
    def _io(self, cmd: _Command) -> tuple[int, Status | None, int]:
        op = cmd.opcode
        if op not in (NVM_FLUSH, NVM_WRITE, NVM_READ):
            raise _Done(INVALID_OPCODE, f"I/O opcode {op:#04x} is not supported: Invalid Command Opcode")
        if op == NVM_FLUSH:
            if cmd.nsid not in (1, 0xFFFF_FFFF):
                raise _Done(INVALID_NAMESPACE, f"Flush of NSID {cmd.nsid:#x}")
            try:
                self.disk.flush()
            except OSError as e:
                raise _Done(INTERNAL_ERROR, f"flushing the image failed: {e.strerror}") from None
            return 0, SUCCESS, 0
        if cmd.nsid != 1:
            raise _Done(INVALID_NAMESPACE, f"I/O to NSID {cmd.nsid:#x}: only NSID 1 exists")
        slba, nlb = cmd.cdw[0] | cmd.cdw[1] << 32, (cmd.cdw[2] & 0xFFFF) + 1
        length = nlb * LBA_SIZE
        if length > MAX_TRANSFER:
            raise _Done(INVALID_FIELD, f"{nlb} blocks ({length} bytes) exceed MDTS ({MAX_TRANSFER} bytes)")
        if slba + nlb > self.disk.blocks:
            raise _Done(LBA_OUT_OF_RANGE, f"LBAs {slba}..{slba + nlb - 1} beyond the {self.disk.blocks} blocks")
        try:
            if op == NVM_READ:
                self._to_guest(cmd, self.disk.read(slba * LBA_SIZE, length))
            else:
                if self.disk.read_only:
                    raise _Done(NAMESPACE_WRITE_PROTECTED, "write to a read-only image")
                self.disk.write(slba * LBA_SIZE, self._to_host(cmd, length))
        except OSError as e:
            raise _Done(INTERNAL_ERROR, f"image I/O failed: {e.strerror}") from None
        return 0, SUCCESS, length // UNIT_BYTES
