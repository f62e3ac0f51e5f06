"""GuestMemory: regions, little-endian access, bounds checks and sparse host backing."""

from __future__ import annotations

import mmap
import subprocess
import sys
import textwrap

import pytest

from vgic.memory import GuestMemory, MemoryFault

PAGE = mmap.PAGESIZE
BASE = 0x4000_0000


@pytest.fixture
def mem() -> GuestMemory:
    m = GuestMemory()
    m.add_ram(BASE, 16 * PAGE)
    return m


# -- regions -------------------------------------------------------------------------


def test_region_layout_and_contains() -> None:
    m = GuestMemory()
    hi = m.add_ram(0x8000_0000, 2 * PAGE)
    lo = m.add_ram(0x1000_0000, PAGE)
    assert [r.base for r in m.regions] == [0x1000_0000, 0x8000_0000]  # kept sorted
    assert lo.end == 0x1000_0000 + PAGE and hi.size == 2 * PAGE
    assert m.contains(0x1000_0000) and m.contains(0x1000_0000, PAGE)
    assert not m.contains(0x1000_0000, PAGE + 1)
    assert not m.contains(0x1000_0000 + PAGE)
    assert m.contains(0x8000_0000 + 2 * PAGE - 8, 8)
    assert not m.contains(0x0FFF_FFFF)
    assert lo.address != 0  # a host address a CPU engine can map


@pytest.mark.parametrize(
    ("base", "size"),
    [(BASE, 16 * PAGE), (BASE - PAGE, 2 * PAGE), (BASE + 15 * PAGE, 2 * PAGE), (BASE + PAGE, PAGE),
     (BASE - 4 * PAGE, 32 * PAGE)],
)  # fmt: skip
def test_overlapping_regions_refused(mem: GuestMemory, base: int, size: int) -> None:
    with pytest.raises(ValueError, match="overlaps"):
        mem.add_ram(base, size)
    assert len(mem.regions) == 1


def test_adjacent_regions_allowed(mem: GuestMemory) -> None:
    mem.add_ram(BASE + 16 * PAGE, PAGE)
    mem.add_ram(BASE - PAGE, PAGE)
    assert len(mem.regions) == 3


@pytest.mark.parametrize(("base", "size"), [(1, PAGE), (0, PAGE + 1), (0, 0), (-PAGE, PAGE), (0, -PAGE)])
def test_bad_region_shapes_refused(base: int, size: int) -> None:
    with pytest.raises(ValueError):
        GuestMemory().add_ram(base, size)


# -- scalar and bulk access --------------------------------------------------------------


def test_little_endian_scalars(mem: GuestMemory) -> None:
    mem.write64(BASE, 0x0807_0605_0403_0201)
    assert mem.read_bytes(BASE, 8) == bytes(range(1, 9))
    assert mem.read8(BASE) == 0x01
    assert mem.read16(BASE) == 0x0201
    assert mem.read16(BASE + 6) == 0x0807
    assert mem.read32(BASE) == 0x0403_0201
    assert mem.read32(BASE + 4) == 0x0807_0605
    assert mem.read64(BASE) == 0x0807_0605_0403_0201
    mem.write16(BASE + 2, 0xBBAA)
    mem.write32(BASE + 4, 0xDDCC_BBAA)
    mem.write8(BASE + 1, 0xEE)
    assert mem.read64(BASE) == 0xDDCC_BBAA_BBAA_EE01


def test_scalar_writes_truncate(mem: GuestMemory) -> None:
    mem.write64(BASE, -1)
    mem.write8(BASE, 0x1FF)
    mem.write16(BASE + 2, 0x12345)
    mem.write32(BASE + 4, 0x1_2345_6789)
    assert mem.read64(BASE) == 0x2345_6789_2345_FFFF
    mem.write64(BASE + 8, 1 << 64 | 5)
    assert mem.read64(BASE + 8) == 5


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_generic_read_write(mem: GuestMemory, size: int) -> None:
    value = 0x1122_3344_5566_7788 & ((1 << (8 * size)) - 1)
    mem.write(BASE + 0x100, size, value | 1 << (8 * size))  # the extra bit is dropped
    assert mem.read(BASE + 0x100, size) == value
    assert mem.read_bytes(BASE + 0x100, size) == value.to_bytes(size, "little")
    assert mem.read8(BASE + 0x100 + size) == 0


def test_bulk_fill_and_bits(mem: GuestMemory) -> None:
    data = bytes(range(256)) * 20
    mem.write_bytes(BASE + 3, data)
    assert mem.read_bytes(BASE + 3, len(data)) == data
    mem.write_bytes(BASE, bytearray(b"\xaa\xbb"))
    mem.write_bytes(BASE + 2, memoryview(b"\xcc"))
    assert mem.read_bytes(BASE, 3) == b"\xaa\xbb\xcc"
    mem.fill(BASE + 0x10, 0x20, 0x15A)
    assert mem.read_bytes(BASE + 0x10, 0x20) == b"\x5a" * 0x20
    assert mem.read8(BASE + 0x30) == data[0x30 - 3]
    mem.fill(BASE + 0x10, 4)
    assert mem.read32(BASE + 0x10) == 0
    mem.write8(BASE + 0x50, 0)
    mem.set_bit(BASE + 0x50, 3, True)
    mem.set_bit(BASE + 0x50, 7, True)
    assert mem.read8(BASE + 0x50) == 0x88
    mem.set_bit(BASE + 0x50, 3, False)
    assert mem.read8(BASE + 0x50) == 0x80


def test_unwritten_memory_reads_zero(mem: GuestMemory) -> None:
    assert mem.read64(BASE + 15 * PAGE) == 0
    assert mem.read_bytes(BASE + PAGE, PAGE) == bytes(PAGE)


def test_two_regions_are_independent() -> None:
    m = GuestMemory()
    m.add_ram(0, PAGE)
    m.add_ram(0x10_0000, PAGE)
    m.write32(0, 0x1111)
    m.write32(0x10_0000, 0x2222)
    # alternate between them (the last-region fast path must not leak across regions)
    for _ in range(3):
        assert m.read32(0) == 0x1111
        assert m.read32(0x10_0000) == 0x2222
    with pytest.raises(MemoryFault):
        m.read32(PAGE)  # the hole between them


# -- faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "address", "size", "write"),
    [
        ("read8", BASE - 1, 1, False),
        ("read16", BASE + 16 * PAGE - 1, 2, False),
        ("read32", BASE + 16 * PAGE - 2, 4, False),
        ("read64", BASE + 16 * PAGE - 4, 8, False),
        ("read64", 0, 8, False),
        ("write8", BASE + 16 * PAGE, 1, True),
        ("write16", BASE - 1, 2, True),
        ("write32", BASE + 16 * PAGE - 3, 4, True),
        ("write64", BASE + 16 * PAGE - 7, 8, True),
    ],
)
def test_out_of_ram_and_straddling_fault(mem: GuestMemory, op: str, address: int, size: int, write: bool) -> None:
    fn = getattr(mem, op)
    with pytest.raises(MemoryFault) as info:
        fn(address, 0x55) if write else fn(address)
    fault = info.value
    assert (fault.address, fault.size, fault.write) == (address, size, write)
    assert f"{address:#x}" in str(fault)
    # the in-RAM part of a straddling write is untouched
    assert mem.read8(BASE + 16 * PAGE - 1) == 0 and mem.read8(BASE) == 0


def test_bulk_faults(mem: GuestMemory) -> None:
    with pytest.raises(MemoryFault) as info:
        mem.read_bytes(BASE + 16 * PAGE - 10, 11)
    assert info.value.size == 11 and not info.value.write
    with pytest.raises(MemoryFault) as info:
        mem.write_bytes(BASE - 2, b"abcd")
    assert info.value.address == BASE - 2 and info.value.size == 4 and info.value.write
    with pytest.raises(MemoryFault):
        mem.fill(BASE + PAGE, 16 * PAGE)
    with pytest.raises(MemoryFault):
        mem.set_bit(BASE + 16 * PAGE, 0, True)
    with pytest.raises(MemoryFault):
        mem.read(BASE + 16 * PAGE - 2, 4)
    with pytest.raises(MemoryFault):
        mem.write(BASE + 16 * PAGE - 2, 4, 0)


def test_access_straddling_two_adjacent_regions_faults() -> None:
    """Both sides are RAM, but an access must lie wholly inside one region."""
    m = GuestMemory()
    m.add_ram(0, PAGE)
    m.add_ram(PAGE, PAGE)
    m.write32(PAGE - 4, 1)
    m.write32(PAGE, 2)
    for address, size in ((PAGE - 4, 8), (PAGE - 1, 2)):
        with pytest.raises(MemoryFault):
            m.read(address, size)
    with pytest.raises(MemoryFault):
        m.read_bytes(PAGE - 4, 8)
    assert m.read32(PAGE - 4) == 1 and m.read32(PAGE) == 2


def test_memory_fault_is_an_exception_with_fields() -> None:
    f = MemoryFault(0x1234, 8, True)
    assert isinstance(f, Exception)
    assert (f.address, f.size, f.write) == (0x1234, 8, True)
    assert "write" in str(f) and "0x1234" in str(f)


# -- host memory grows with what is written ------------------------------------------

_RSS_SCRIPT = textwrap.dedent(
    """
    import sys
    from vgic.memory import GuestMemory

    def rss_kib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise SystemExit("no VmRSS")

    before = rss_kib()
    mem = GuestMemory()
    mem.add_ram(0x4000_0000, 1 << 30)            # 1 GiB region
    mem.add_ram(0x1_0000_0000, 1 << 30)          # and another
    for i in range(64):                          # a few writes spread over both
        mem.write64(0x4000_0000 + i * (1 << 24), i)
        mem.write64(0x1_0000_0000 + i * (1 << 24) + 8, i)
    mem.fill(0x4000_0000 + (1 << 29) + (1 << 23), 1 << 20, 0xFF)  # 1 MiB filled
    for i in range(64):
        assert mem.read64(0x4000_0000 + i * (1 << 24)) == i
    print(rss_kib() - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_host_memory_grows_with_writes_not_region_size() -> None:
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True, check=True, timeout=60)
    grown_kib = int(out.stdout.strip())
    # 2 GiB of RAM, 128 pages touched + 1 MiB filled: far below 32 MiB
    assert grown_kib < 32 * 1024, f"RSS grew by {grown_kib} KiB"
