"""The NVMe controller driven from Python as a guest driver would: registers through the
host's 64-bit window, queues and data buffers in guest memory, MSI-X messages recorded
(or delivered through the ITS), the image file checked afterwards.

Status codes are NVMe 1.4's (section 4.6.1.2): SCT 0 generic, SCT 1 command specific.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from vgic.driver import Allocator, ItsDriver
from vgic.events import EventLog, Kind
from vgic.gic import Gic, GicConfig
from vgic.its import commands as C
from vgic.machine.pci import Fabric
from vgic.memory import GuestMemory
from vgic.pci import nvme as N
from vgic.pci.host import MMIO64_BASE, PcieHost

RAM = 0x4000_0000
RAM_SIZE = 32 << 20
BAR = MMIO64_BASE
SLOT = 1
LBA = 512
BLOCKS = 2048  # a 1 MiB image
PAGE = 4096

# status (SCT, SC)
OK = (0, 0x00)
INVALID_OPCODE, INVALID_FIELD, DATA_TRANSFER_ERROR = (0, 0x01), (0, 0x02), (0, 0x04)
INVALID_NAMESPACE, COMMAND_SEQUENCE_ERROR, PRP_OFFSET_INVALID, LBA_OUT_OF_RANGE = (
    (0, 0x0B),
    (0, 0x0C),
    (0, 0x13),
    (0, 0x80),
)
CQ_INVALID, INVALID_QID, INVALID_QSIZE, AER_LIMIT, INVALID_VECTOR = (1, 0), (1, 1), (1, 2), (1, 5), (1, 8)
INVALID_LOG_PAGE, INVALID_QUEUE_DELETION, NOT_SAVEABLE = (1, 9), (1, 0xC), (1, 0xD)


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[int, int, int]] = []

    def msi_write(self, address: int, data: int, requester_id: int) -> None:
        self.messages.append((address, data, requester_id))


class Driver:
    """A guest-side NVMe driver over the host's windows and guest memory."""

    def __init__(self, mem: GuestMemory, host: PcieHost, nvme: N.Nvme, msix: bool = True) -> None:
        self.mem, self.host, self.nvme = mem, host, nvme
        self.heap = Allocator(RAM, RAM_SIZE // 2)
        self.data = Allocator(RAM + RAM_SIZE // 2, RAM_SIZE // 2)
        self.queues: dict[int, dict[str, int]] = {}
        self.cid = 0
        ecam = SLOT << 15
        host.ecam_write(ecam | 0x10, 4, BAR & 0xFFFF_FFFF)
        host.ecam_write(ecam | 0x14, 4, BAR >> 32)
        host.ecam_write(ecam | 0x04, 2, 0x6)  # Memory Space + Bus Master
        if msix:
            for v in range(N.VECTORS):
                self.w32(N.MSIX_TABLE + 16 * v, RAM + 0x100 + 4 * v)
                self.w32(N.MSIX_TABLE + 16 * v + 8, v)
                self.w32(N.MSIX_TABLE + 16 * v + 12, 0)
            assert nvme.msix_offset is not None
            host.ecam_write(ecam | nvme.msix_offset + 2, 2, 1 << 15)

    # registers
    def r32(self, off: int) -> int:
        return self.host.mem_read(BAR + off, 4)

    def w32(self, off: int, value: int) -> None:
        self.host.mem_write(BAR + off, 4, value)

    def w64(self, off: int, value: int) -> None:
        self.w32(off, value & 0xFFFF_FFFF)
        self.w32(off + 4, value >> 32)

    def enable(self, entries: int = 32) -> None:
        self.w32(N.CC, 0)
        asq, acq = self.heap.alloc(entries * 64), self.heap.alloc(entries * 16)
        self.w32(N.AQA, (entries - 1) << 16 | (entries - 1))
        self.w64(N.ASQ, asq)
        self.w64(N.ACQ, acq)
        self.queues[0] = {"sq": asq, "cq": acq, "size": entries, "cqsize": entries, "tail": 0, "head": 0, "phase": 1}
        self.w32(N.CC, 4 << 20 | 6 << 16 | 1)
        assert self.r32(N.CSTS) & 1

    # commands
    def command(self, opcode: int, nsid: int = 0, prp1: int = 0, prp2: int = 0, cdw: tuple[int, ...] = (),
                flags: int = 0) -> bytes:  # fmt: skip
        self.cid = (self.cid + 1) & 0xFFFF
        words = [opcode | flags << 8 | self.cid << 16, nsid, 0, 0, 0, 0, prp1 & 0xFFFF_FFFF, prp1 >> 32,
                 prp2 & 0xFFFF_FFFF, prp2 >> 32, *cdw, *([0] * (6 - len(cdw)))]  # fmt: skip
        return struct.pack("<16I", *words)

    def put(self, qid: int, raw: bytes, ring: bool = True) -> None:
        q = self.queues[qid]
        self.mem.write_bytes(q["sq"] + q["tail"] * 64, raw)
        q["tail"] = (q["tail"] + 1) % q["size"]
        if ring:
            self.ring(qid)

    def ring(self, qid: int) -> None:
        self.w32(0x1000 + 8 * qid, self.queues[qid]["tail"])

    def reap(self, qid: int, max_entries: int = 1 << 16) -> list[tuple[int, int, tuple[int, int], int]]:
        """(DW0, CID, (SCT, SC), SQHD) of every new completion; rings the CQ head doorbell."""
        q = self.queues[qid]
        out = []
        while len(out) < max_entries:
            dw0, _, sqhd, _, dw3 = struct.unpack("<IIHHI", self.mem.read_bytes(q["cq"] + q["head"] * 16, 16))
            if dw3 >> 16 & 1 != q["phase"]:
                break
            out.append((dw0, dw3 & 0xFFFF, (dw3 >> 25 & 7, dw3 >> 17 & 0xFF), sqhd))
            q["head"] += 1
            if q["head"] == q["cqsize"]:
                q["head"], q["phase"] = 0, q["phase"] ^ 1
        if out:
            self.w32(0x1000 + 8 * qid + 4, q["head"])
        return out

    def admin(self, opcode: int, **kw: object) -> tuple[int, tuple[int, int]]:
        self.put(0, self.command(opcode, **kw))  # type: ignore[arg-type]
        done = self.reap(0)
        assert len(done) == 1, done
        return done[0][0], done[0][2]

    def create_io(self, qid: int, entries: int = 64, vector: int | None = None) -> None:
        cq, sq = self.heap.alloc(entries * 16), self.heap.alloc(entries * 64)
        v = qid if vector is None else vector
        assert self.admin(N.ADMIN_CREATE_CQ, prp1=cq, cdw=((entries - 1) << 16 | qid, v << 16 | 3))[1] == OK
        assert self.admin(N.ADMIN_CREATE_SQ, prp1=sq, cdw=((entries - 1) << 16 | qid, qid << 16 | 1))[1] == OK
        self.queues[qid] = {"sq": sq, "cq": cq, "size": entries, "cqsize": entries, "tail": 0, "head": 0, "phase": 1}

    def rw(self, qid: int, opcode: int, lba: int, blocks: int, prp1: int, prp2: int = 0) -> tuple[int, int]:
        self.put(qid, self.command(opcode, nsid=1, prp1=prp1, prp2=prp2, cdw=(lba, 0, blocks - 1)))
        done = self.reap(qid)
        assert len(done) == 1
        return done[0][2]

    def prps(self, buffer: int, length: int) -> tuple[int, int]:
        """PRP1/PRP2 for a buffer (a PRP list when it spans more than two pages)."""
        first = PAGE - buffer % PAGE
        if length <= first:
            return buffer, 0
        if length <= first + PAGE:
            return buffer, buffer + first
        pages = [buffer + first + PAGE * i for i in range((length - first + PAGE - 1) // PAGE)]
        lst = self.heap.alloc(8 * len(pages))
        self.mem.write_bytes(lst, struct.pack(f"<{len(pages)}Q", *pages))
        return buffer, lst


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(random.Random(11).randbytes(BLOCKS * LBA))
    return path


def make(image: Path, msix: bool = True) -> tuple[Driver, Sink]:
    mem = GuestMemory()
    mem.add_ram(RAM, RAM_SIZE)
    sink = Sink()
    host = PcieHost(mem, EventLog(), sink)
    nvme = N.Nvme(N.Disk(str(image)), serial="test-serial")
    host.plug(nvme, slot=SLOT)
    return Driver(mem, host, nvme, msix), sink


@pytest.fixture
def drv(image: Path) -> Driver:
    d, _ = make(image)
    d.enable()
    return d


def diags(d: Driver) -> list[str]:
    return [e.message for e in d.host.log.of(Kind.DIAGNOSTIC)]


# -- registers ----------------------------------------------------------------------------------


def test_capabilities_version_and_enable(image: Path) -> None:
    d, _ = make(image)
    cap = d.r32(N.CAP) | d.r32(N.CAP + 4) << 32
    assert cap & 0xFFFF == 0x7FF  # MQES: 2048 entries
    assert cap >> 16 & 1 == 1  # CQR
    assert cap >> 24 & 0xFF == 0xF  # TO
    assert cap >> 32 & 0xF == 0  # DSTRD
    assert cap >> 37 & 0xFF == 1  # CSS: NVM command set
    assert cap >> 48 & 0xF == 0 and cap >> 52 & 0xF == 4  # MPSMIN 4 KiB, MPSMAX 64 KiB
    assert d.r32(N.VS) == 0x0001_0400
    assert d.r32(N.CSTS) & 1 == 0
    d.enable()
    assert d.r32(N.CSTS) == 1


def test_bad_enable_sets_cfs(image: Path) -> None:
    d, _ = make(image)
    d.w32(N.AQA, 0)  # one-entry admin queues
    d.w64(N.ASQ, RAM)
    d.w64(N.ACQ, RAM + PAGE)
    d.w32(N.CC, 1)
    assert d.r32(N.CSTS) & 0b11 == 0b10  # CFS, not RDY
    assert any("CC.EN = 1 refused" in m for m in diags(d))
    d.w32(N.CC, 0)
    assert d.r32(N.CSTS) & 0b11 == 0


# -- admin commands -----------------------------------------------------------------------------


def test_identify_controller_namespace_and_lists(drv: Driver) -> None:
    buf = drv.data.alloc(PAGE)
    assert drv.admin(N.ADMIN_IDENTIFY, prp1=buf, cdw=(1,))[1] == OK
    ident = drv.mem.read_bytes(buf, PAGE)
    assert struct.unpack_from("<H", ident, 0)[0] == 0x1B36
    assert ident[4:24].rstrip() == b"test-serial"
    assert ident[77] == N.MDTS and ident[512] == 0x66 and ident[513] == 0x44
    assert struct.unpack_from("<I", ident, 516)[0] == 1  # NN
    assert struct.unpack_from("<I", ident, 80)[0] == 0x0001_0400  # VER
    assert drv.admin(N.ADMIN_IDENTIFY, nsid=1, prp1=buf, cdw=(0,))[1] == OK
    ns = drv.mem.read_bytes(buf, PAGE)
    assert struct.unpack_from("<Q", ns, 0)[0] == BLOCKS
    assert ns[128 + 2] == 9  # LBADS: 512-byte blocks
    assert drv.admin(N.ADMIN_IDENTIFY, prp1=buf, cdw=(2,))[1] == OK
    assert struct.unpack_from("<II", drv.mem.read_bytes(buf, 8)) == (1, 0)
    assert drv.admin(N.ADMIN_IDENTIFY, nsid=1, prp1=buf, cdw=(2,))[1] == OK
    assert struct.unpack_from("<I", drv.mem.read_bytes(buf, 4))[0] == 0  # none above NSID 1
    assert drv.admin(N.ADMIN_IDENTIFY, nsid=1, prp1=buf, cdw=(3,))[1] == OK
    desc = drv.mem.read_bytes(buf, 20)
    assert desc[0] == 2 and desc[1] == 16 and desc[4:20] == ns[104:120]  # NGUID, as in Identify NS
    assert drv.admin(N.ADMIN_IDENTIFY, nsid=2, prp1=buf, cdw=(0,))[1] == INVALID_NAMESPACE
    assert drv.admin(N.ADMIN_IDENTIFY, prp1=buf, cdw=(6,))[1] == INVALID_FIELD  # unknown CNS


def test_features_queues_and_io_queue_management(drv: Driver) -> None:
    dw0, st = drv.admin(N.ADMIN_SET_FEATURES, cdw=(0x07, 3 << 16 | 3))
    assert st == OK and dw0 == 3 << 16 | 3  # 4 SQs and 4 CQs allocated
    assert drv.admin(N.ADMIN_GET_FEATURES, cdw=(0x07,)) == (3 << 16 | 3, OK)
    assert drv.admin(N.ADMIN_SET_FEATURES, cdw=(0x0B, 0x100)) == (0, OK)  # async event config
    assert drv.admin(N.ADMIN_GET_FEATURES, cdw=(0x0B,)) == (0x100, OK)
    assert drv.admin(N.ADMIN_GET_FEATURES, cdw=(0x06,)) == (1, OK)  # volatile write cache on
    assert drv.admin(N.ADMIN_SET_FEATURES, cdw=(0x06 | 1 << 31, 0))[1] == NOT_SAVEABLE
    assert drv.admin(N.ADMIN_SET_FEATURES, cdw=(0x0E, 0))[1] == INVALID_FIELD  # timestamp: not supported
    drv.create_io(1)
    assert drv.admin(N.ADMIN_SET_FEATURES, cdw=(0x07, 0))[1] == COMMAND_SEQUENCE_ERROR
    # a fifth queue is beyond what was allocated; a queue ID already in use
    assert drv.admin(N.ADMIN_CREATE_CQ, prp1=drv.heap.alloc(PAGE), cdw=(63 << 16 | 5, 3))[1] == INVALID_QID
    assert drv.admin(N.ADMIN_CREATE_CQ, prp1=drv.heap.alloc(PAGE), cdw=(63 << 16 | 1, 3))[1] == INVALID_QID
    assert drv.admin(N.ADMIN_CREATE_SQ, prp1=drv.heap.alloc(PAGE), cdw=(63 << 16 | 2, 3 << 16 | 1))[1] == CQ_INVALID
    assert drv.admin(N.ADMIN_DELETE_CQ, cdw=(1,))[1] == INVALID_QUEUE_DELETION
    assert drv.admin(N.ADMIN_DELETE_SQ, cdw=(1,))[1] == OK
    assert drv.admin(N.ADMIN_DELETE_SQ, cdw=(1,))[1] == INVALID_QID
    assert drv.admin(N.ADMIN_DELETE_CQ, cdw=(1,))[1] == OK
    assert drv.admin(N.ADMIN_DELETE_CQ, cdw=(0,))[1] == INVALID_QID


def test_queue_sizes_vectors_and_contiguity_are_checked(drv: Driver) -> None:
    base = drv.heap.alloc(64 * 4096)
    assert drv.admin(N.ADMIN_CREATE_CQ, prp1=base, cdw=(2048 << 16 | 1, 3))[1] == INVALID_QSIZE  # > MQES + 1
    assert drv.admin(N.ADMIN_CREATE_CQ, prp1=base, cdw=(0 << 16 | 1, 3))[1] == INVALID_QSIZE  # 1 entry
    assert drv.admin(N.ADMIN_CREATE_CQ, prp1=base, cdw=(15 << 16 | 1, 2))[1] == INVALID_FIELD  # PC = 0
    assert drv.admin(N.ADMIN_CREATE_CQ, prp1=base, cdw=(15 << 16 | 1, 65 << 16 | 3))[1] == INVALID_VECTOR
    assert drv.admin(N.ADMIN_CREATE_CQ, prp1=base + 8, cdw=(15 << 16 | 1, 3))[1] == PRP_OFFSET_INVALID
    assert drv.admin(N.ADMIN_CREATE_CQ, prp1=0x1000, cdw=(15 << 16 | 1, 3))[1] == INVALID_FIELD  # not in RAM
    assert drv.admin(N.ADMIN_CREATE_CQ, prp1=base, cdw=(2047 << 16 | 1, 3))[1] == OK  # MQES + 1 entries


def test_unknown_opcodes_log_pages_abort_and_aer_limit(drv: Driver) -> None:
    assert drv.admin(0x7C)[1] == INVALID_OPCODE  # doorbell buffer config: not offered
    assert drv.admin(0xFF)[1] == INVALID_OPCODE
    buf = drv.data.alloc(PAGE)
    assert drv.admin(N.ADMIN_GET_LOG_PAGE, prp1=buf, cdw=(0x02 | 127 << 16,))[1] == OK  # SMART, 512 bytes
    assert drv.admin(N.ADMIN_GET_LOG_PAGE, prp1=buf, cdw=(0x05 | 1023 << 16,))[1] == INVALID_LOG_PAGE
    assert drv.admin(N.ADMIN_ABORT, cdw=(1 << 16,)) == (1, OK)  # not aborted
    for _ in range(4):  # AERL + 1 requests are held
        drv.put(0, drv.command(N.ADMIN_AER))
    assert drv.reap(0) == []
    drv.put(0, drv.command(N.ADMIN_AER))
    assert [c[2] for c in drv.reap(0)] == [AER_LIMIT]


def test_sgl_and_fused_commands_are_invalid_fields(drv: Driver) -> None:
    assert drv.admin(N.ADMIN_IDENTIFY, prp1=drv.data.alloc(PAGE), cdw=(1,), flags=1 << 6)[1] == INVALID_FIELD
    assert drv.admin(N.ADMIN_IDENTIFY, prp1=drv.data.alloc(PAGE), cdw=(1,), flags=1)[1] == INVALID_FIELD


# -- I/O --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset,length", [(0, 512), (0, PAGE), (0x200, PAGE), (0, 2 * PAGE), (0x800, 64 << 10),
                                           (0, 128 << 10), (0x10, 3 * PAGE)])  # fmt: skip
def test_read_and_write_with_prp1_prp2_and_lists(drv: Driver, image: Path, offset: int, length: int) -> None:
    drv.create_io(1)
    disk = image.read_bytes()
    buf = drv.data.alloc(length + 2 * PAGE) + offset
    prp1, prp2 = drv.prps(buf, length)
    assert drv.rw(1, N.NVM_READ, 5, length // LBA, prp1, prp2) == OK
    assert drv.mem.read_bytes(buf, length) == disk[5 * LBA : 5 * LBA + length]
    data = random.Random(length).randbytes(length)
    drv.mem.write_bytes(buf, data)
    assert drv.rw(1, N.NVM_WRITE, 100, length // LBA, prp1, prp2) == OK
    assert image.read_bytes()[100 * LBA : 100 * LBA + length] == data  # the write reached the file
    drv.put(1, drv.command(N.NVM_FLUSH, nsid=1))
    assert [c[2] for c in drv.reap(1)] == [OK]


def test_io_errors(drv: Driver) -> None:
    drv.create_io(1)
    buf = drv.data.alloc(PAGE)
    assert drv.rw(1, N.NVM_READ, BLOCKS - 1, 2, buf) == LBA_OUT_OF_RANGE
    assert drv.rw(1, N.NVM_READ, 0, 257, buf) == INVALID_FIELD  # 128.5 KiB > MDTS
    assert drv.rw(1, N.NVM_READ, 0, 1, 0x1000) == DATA_TRANSFER_ERROR  # PRP outside RAM
    assert drv.rw(1, N.NVM_WRITE, 0, 1, 0x8000_0000) == DATA_TRANSFER_ERROR
    assert drv.rw(1, N.NVM_READ, 0, 1, buf + 2) == PRP_OFFSET_INVALID  # not DWORD aligned
    assert drv.rw(1, N.NVM_READ, 0, 8, buf + 0x800, buf + 0x10) == PRP_OFFSET_INVALID  # PRP2 with offset
    lst = drv.heap.alloc(PAGE)
    drv.mem.write_bytes(lst, struct.pack("<2Q", buf + PAGE, 0x7000_0000))  # list entry outside RAM
    assert drv.rw(1, N.NVM_READ, 0, 24, buf, lst) == DATA_TRANSFER_ERROR
    drv.mem.write_bytes(lst, struct.pack("<2Q", buf + PAGE, buf + 0x10))  # list entry with an offset
    assert drv.rw(1, N.NVM_READ, 0, 24, buf, lst) == PRP_OFFSET_INVALID
    drv.put(1, drv.command(N.NVM_READ, nsid=2, prp1=buf, cdw=(0, 0, 0)))
    assert [c[2] for c in drv.reap(1)] == [INVALID_NAMESPACE]
    drv.put(1, drv.command(0x08, nsid=1, prp1=buf))  # Write Zeroes: not supported
    assert [c[2] for c in drv.reap(1)] == [INVALID_OPCODE]
    assert all(isinstance(m, str) for m in diags(drv)) and len(diags(drv)) >= 9


# -- doorbells and asynchronous events --------------------------------------------------------------


def test_bad_doorbells_complete_an_async_event_request(drv: Driver) -> None:
    drv.create_io(1, entries=16)
    drv.put(0, drv.command(N.ADMIN_AER))
    drv.put(0, drv.command(N.ADMIN_AER))
    assert drv.reap(0) == []
    drv.w32(0x1000 + 8 * 1, 16)  # SQ 1 tail = queue size: beyond the queue
    events = drv.reap(0)
    assert len(events) == 1 and events[0][2] == OK
    assert events[0][0] == 0x01 << 16 | 0x01 << 8 | 0  # log page 01h, invalid doorbell write value, error
    drv.w32(0x1000 + 8 * 9, 1)  # SQ 9: no such queue -- masked until the error log is read
    assert drv.reap(0) == []
    buf = drv.data.alloc(PAGE)
    drv.put(0, drv.command(N.ADMIN_GET_LOG_PAGE, prp1=buf, cdw=(0x01 | 15 << 16,)))  # RAE = 0: unmask
    done = drv.reap(0)
    assert [c[2] for c in done] == [OK, OK]
    assert 0x01 << 16 | 0x00 << 8 in [c[0] for c in done]  # the held event: invalid doorbell register
    drv.w32(0x1000 + 8 * 1 + 4, 3)  # CQ 1 head past the entries posted (none)
    assert any("past the" in m for m in diags(drv))
    assert drv.nvme.sqs[1].tail == 0  # the bad writes changed nothing


def test_completion_queue_full_stalls_fetching_until_the_head_moves(drv: Driver) -> None:
    cq, sq = drv.heap.alloc(PAGE), drv.heap.alloc(PAGE)
    assert drv.admin(N.ADMIN_CREATE_CQ, prp1=cq, cdw=(3 << 16 | 1, 1 << 16 | 3))[1] == OK  # 4 entries
    assert drv.admin(N.ADMIN_CREATE_SQ, prp1=sq, cdw=(15 << 16 | 1, 1 << 16 | 1))[1] == OK
    drv.queues[1] = {"sq": sq, "cq": cq, "size": 16, "cqsize": 4, "tail": 0, "head": 0, "phase": 1}
    buf = drv.data.alloc(PAGE)
    for _ in range(10):
        drv.put(1, drv.command(N.NVM_READ, nsid=1, prp1=buf, cdw=(0, 0, 0)), ring=False)
    drv.ring(1)
    assert len(drv.reap(1, max_entries=8)) == 3  # a 4-entry CQ holds 3; the head doorbell frees them
    got = 3
    for _ in range(10):
        got += len(drv.reap(1))
    assert got == 10


def test_bounded_work_per_doorbell_and_per_poll(drv: Driver, image: Path) -> None:
    drv.create_io(1, entries=256)
    buf = drv.data.alloc(128 << 10)
    prp1, prp2 = drv.prps(buf, 128 << 10)
    for _ in range(200):
        drv.put(1, drv.command(N.NVM_READ, nsid=1, prp1=prp1, prp2=prp2, cdw=(0, 0, 255)), ring=False)
    before = drv.nvme.commands_done
    drv.ring(1)
    inline = drv.nvme.commands_done - before
    assert 1 <= inline <= N.INLINE_BUDGET
    polls = 0
    while drv.nvme.poll():
        polls += 1
        drv.reap(1)
        assert polls < 1000
    drv.reap(1)
    assert drv.nvme.commands_done - before == 200
    assert polls >= 200 // N.POLL_BUDGET  # each poll did a bounded share


def test_one_msix_message_per_batch_on_the_queues_vector(image: Path) -> None:
    d, sink = make(image)
    d.enable()
    d.create_io(1, vector=3)
    sink.messages.clear()
    buf = d.data.alloc(PAGE)
    for _ in range(4):
        d.put(1, d.command(N.NVM_READ, nsid=1, prp1=buf, cdw=(0, 0, 0)), ring=False)
    d.ring(1)
    assert sink.messages == [(RAM + 0x100 + 4 * 3, 3, SLOT << 3)]
    d.reap(1)


# -- reset and shutdown -----------------------------------------------------------------------------


def test_reset_deletes_queues_and_shutdown_reports_complete(drv: Driver) -> None:
    drv.create_io(1)
    drv.w32(N.CC, 4 << 20 | 6 << 16 | 1 | 1 << 14)  # SHN = normal shutdown
    assert drv.r32(N.CSTS) >> 2 & 3 == 0b10
    drv.w32(N.CC, 4 << 20 | 6 << 16)  # EN = 0: controller reset
    assert drv.r32(N.CSTS) & 1 == 0 and drv.r32(N.CSTS) >> 2 & 3 == 0
    assert drv.nvme.sqs == {} and drv.nvme.cqs == {}
    drv.w32(0x1000, 1)  # a doorbell while not ready: ignored with a diagnostic
    assert any("not ready" in m for m in diags(drv))
    drv.enable()
    buf = drv.data.alloc(PAGE)
    assert drv.admin(N.ADMIN_IDENTIFY, prp1=buf, cdw=(1,))[1] == OK
    drv.w32(0x1000 + 8, 1)  # SQ 1 is gone after the reset


def test_bus_master_off_makes_the_fetch_fail_fatally(drv: Driver) -> None:
    drv.host.ecam_write(SLOT << 15 | 0x04, 2, 0x2)  # Memory Space only
    drv.put(0, drv.command(N.ADMIN_IDENTIFY, prp1=drv.data.alloc(PAGE), cdw=(1,)))
    assert drv.r32(N.CSTS) & 0b10  # CFS
    assert any("Bus Master Enable is 0" in m for m in diags(drv))


def test_intx_when_msix_is_off(image: Path) -> None:
    mem = GuestMemory()
    mem.add_ram(RAM, RAM_SIZE)
    spis: list[tuple[int, bool]] = []
    host = PcieHost(mem, EventLog(), Sink(), lambda intid, level: spis.append((intid, level)))
    nvme = N.Nvme(N.Disk(str(image)))
    host.plug(nvme, slot=SLOT)
    d = Driver(mem, host, nvme, msix=False)
    d.enable()
    d.put(0, d.command(N.ADMIN_IDENTIFY, prp1=d.data.alloc(PAGE), cdw=(1,)))
    intid = 32 + 3 + (SLOT + 1 - 1) % 4
    assert spis == [(intid, True)]
    d.w32(N.INTMS, 1)
    assert spis[-1] == (intid, False)
    d.w32(N.INTMC, 1)
    assert spis[-1] == (intid, True)
    d.reap(0)
    assert spis[-1] == (intid, False)


# -- the whole path: NVMe completion -> MSI-X -> GITS_TRANSLATER -> LPI on the queue's CPU -----------


def test_completions_reach_the_cpu_of_their_queue_through_the_its(image: Path) -> None:
    mem = GuestMemory()
    mem.add_ram(RAM, RAM_SIZE * 2)
    gic = Gic(mem, GicConfig(num_cpus=2), EventLog())
    its = ItsDriver(gic, Allocator(RAM + RAM_SIZE, 16 << 20))
    its.setup_lpis()
    its.setup_its()
    host = PcieHost(mem, gic.log, Fabric(mem, gic.log, gic))
    nvme = N.Nvme(N.Disk(str(image)))
    host.plug(nvme, slot=SLOT)
    d = Driver(mem, host, nvme)
    rid = SLOT << 3
    its.map_device(rid, 2)
    its.send(C.Mapc(0, 0, True), C.Mapc(1, 1, True), C.Mapti(rid, 0, 8192, 0), C.Mapti(rid, 1, 8193, 1),
             C.Sync(0), C.Sync(1))  # fmt: skip
    for intid in (8192, 8193):
        its.configure_lpi(intid)
    its.send(C.Inv(rid, 0), C.Inv(rid, 1), C.Sync(0), C.Sync(1))
    for v in (0, 1):  # vector v -> GITS_TRANSLATER, EventID v
        d.w32(N.MSIX_TABLE + 16 * v, 0x0808_0000 + 0x1_0040)
    d.enable()
    d.create_io(1, vector=1)
    assert its.drain(0) == [8192]  # the two admin completions: one LPI, pending twice
    d.rw(1, N.NVM_READ, 0, 8, d.data.alloc(PAGE))
    assert its.drain(1) == [8193] and its.drain(0) == []


# -- hostility: random register writes and commands never raise --------------------------------------


def test_random_guest_input_never_raises(image: Path) -> None:
    rng = random.Random(5)
    d, _ = make(image)
    d.enable()
    d.create_io(1)
    for _ in range(3000):
        kind = rng.randrange(4)
        if kind == 0:
            d.w32(rng.choice([N.CC, N.AQA, N.ASQ, N.ACQ, N.INTMS, N.INTMC, 0x1000 + 4 * rng.randrange(300),
                              rng.randrange(0x4000) & ~3]), rng.getrandbits(32))  # fmt: skip
        elif kind == 1:
            d.host.mem_write(BAR + rng.randrange(0x4000), rng.choice([1, 2, 4, 8]), rng.getrandbits(64))
        else:
            q = 0 if kind == 2 else 1
            if q in d.queues and d.nvme.ready and q in d.nvme.sqs:
                raw = bytes(rng.getrandbits(8) for _ in range(64))
                d.put(q, raw[:1] + raw[1:])
                d.reap(q)
        d.nvme.poll()
        if not d.nvme.ready and rng.random() < 0.05:
            d.queues.clear()
            d.enable()
            d.create_io(1)
