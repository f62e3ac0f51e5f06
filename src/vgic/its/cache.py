"""The ITS's host copies of table entries (IHI 0069 5.2: an ITS may cache them).

:class:`TranslationCache` holds the DTEs, ITEs and CTEs an ITS has read or written, so a
translation is three dictionary lookups. Every cached entry is indexed by the guest
address it came from, at most one entry per address, so that a table write by the ITS
drops any *other* cached entry it overlaps: guest tables may overlap each other (two
devices sharing an ITT, an ITT over the device table), which is UNPREDICTABLE (5.2), but
the ITS must then answer from memory, never from a stale host copy.

Updates are all or nothing: an entry and its address are added or dropped together, and
when the bound on entries is reached the whole cache is dropped before the new entry goes
in. :meth:`TranslationCache.verify` checks these invariants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from vgic.its.tables import DeviceEntry, InterruptEntry

# Host bound on cached entries (DTEs + ITEs + CTEs) per ITS: past it the cache is dropped
# and refilled from guest memory, so host memory never grows with guest tables.
CACHE_LIMIT = 1 << 16

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DteKey:
    device_id: int


@dataclass(frozen=True, slots=True)
class IteKey:
    device_id: int
    event_id: int


@dataclass(frozen=True, slots=True)
class CteKey:
    icid: int


Key = DteKey | IteKey | CteKey


@dataclass(slots=True)
class CachedDevice:
    """A cached DTE and the ITEs of that device used so far."""

    entry: DeviceEntry
    events: dict[int, InterruptEntry]


class TranslationCache(Generic[T]):
    """DTEs by DeviceID (with their ITEs by EventID) and collection targets (``T``: what an
    ICID resolves to, a redistributor) by ICID, each indexed by its guest address."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self.clear()

    def clear(self) -> None:
        self.devices: dict[int, CachedDevice] = {}
        self.collections: dict[int, T] = {}
        self._at: dict[int, Key] = {}  # guest address -> the one entry cached from there
        self._where: dict[Key, int] = {}  # and back

    def __len__(self) -> int:
        return len(self._at)

    # -- adding (each all or nothing) --------------------------------------------------
    def put_device(self, address: int, device_id: int, entry: DeviceEntry) -> CachedDevice:
        dev = CachedDevice(entry, {})
        key = DteKey(device_id)
        self._drop(key)  # its ITEs go with it
        self._index(address, key)
        self.devices[device_id] = dev
        return dev

    def put_event(self, address: int, device_id: int, event_id: int, ite: InterruptEntry) -> None:
        """Cache an ITE, if its device is (still) cached."""
        key = IteKey(device_id, event_id)
        if device_id not in self.devices:
            return
        self._index(address, key)
        dev = self.devices.get(device_id)  # indexing may have dropped everything
        if dev is None:
            self._unindex(key)
            return
        dev.events[event_id] = ite

    def put_collection(self, address: int | None, icid: int, target: T) -> None:
        """Cache a collection; ``address`` None: held in the ITS (ICID < HCC), no CTE."""
        key = CteKey(icid)
        if address is not None:
            self._index(address, key)
        else:
            self._unindex(key)
        self.collections[icid] = target

    # -- dropping ----------------------------------------------------------------------
    def drop_device(self, device_id: int) -> None:
        self._drop(DteKey(device_id))

    def drop_event(self, device_id: int, event_id: int) -> None:
        self._drop(IteKey(device_id, event_id))

    def drop_collection(self, icid: int) -> None:
        self._drop(CteKey(icid))

    def forget(self, address: int, size: int, span: int) -> None:
        """Drop every entry cached from guest bytes overlapping [address, address + size);
        ``span`` is the largest entry size, so an entry starting before ``address`` is seen."""
        at = self._at
        for start in range(address - span + 1, address + size):
            key = at.get(start)
            if key is not None:
                self._drop(key)

    def _drop(self, key: Key) -> None:
        self._unindex(key)
        if isinstance(key, DteKey):
            dev = self.devices.pop(key.device_id, None)
            if dev is not None:
                for ev in dev.events:
                    self._unindex(IteKey(key.device_id, ev))
        elif isinstance(key, IteKey):
            dev = self.devices.get(key.device_id)
            if dev is not None:
                dev.events.pop(key.event_id, None)
        else:
            self.collections.pop(key.icid, None)

    # -- the address index ---------------------------------------------------------------
    def _index(self, address: int, key: Key) -> None:
        old = self._at.get(address)
        if old == key:
            return
        if old is not None:
            self._drop(old)  # an alias: one entry per address
        self._unindex(key)  # the same entry cached from another address before
        if len(self._at) >= self.limit:
            self.clear()  # bounded host memory; the caller's entry goes in after
            if isinstance(key, IteKey):
                return
        self._at[address] = key
        self._where[key] = address

    def _unindex(self, key: Key) -> None:
        address = self._where.pop(key, None)
        if address is not None:
            self._at.pop(address, None)

    # -- checks ------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """The cache's own invariants (not the guest's tables): every indexed key names a
        cached entry and every memory-backed entry is indexed, once; the bound holds."""
        problems: list[str] = []
        if len(self._at) > self.limit:
            problems.append(f"{len(self._at)} entries indexed, bound {self.limit}")
        if len(self._at) != len(self._where):
            problems.append("the address index and its inverse differ in size")
        for address, key in self._at.items():
            if self._where.get(key) != address:
                problems.append(f"{key} at {address:#x} is not indexed back")
            if (
                (isinstance(key, DteKey) and key.device_id not in self.devices)
                or (isinstance(key, IteKey) and key.event_id not in self.devices.get(key.device_id, _EMPTY).events)
                or (isinstance(key, CteKey) and key.icid not in self.collections)
            ):
                problems.append(f"{key} indexed but not cached")
        for device_id, dev in self.devices.items():
            if DteKey(device_id) not in self._where:
                problems.append(f"DeviceID {device_id:#x} cached without its address")
            for ev in dev.events:
                if IteKey(device_id, ev) not in self._where:
                    problems.append(f"DeviceID {device_id:#x} EventID {ev} cached without its address")
        return problems


_EMPTY = CachedDevice(DeviceEntry(0, 0), {})
