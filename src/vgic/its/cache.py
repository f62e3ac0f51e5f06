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
    """A cached DTE (from ``address``) and the ITEs of that device used so far (each at
    ``entry.itt_addr + EventID * ITT entry size``)."""

    entry: DeviceEntry
    events: dict[int, InterruptEntry]
    address: int = -1


class TranslationCache(Generic[T]):
    """DTEs by DeviceID (with their ITEs by EventID) and collection targets (``T``: what an
    ICID resolves to, a redistributor) by ICID, each indexed by its guest address."""

    def __init__(self, ite_size: int, limit: int = CACHE_LIMIT) -> None:
        self.ite_size = ite_size
        self.limit = limit
        self.clear()

    def clear(self) -> None:
        self.devices: dict[int, CachedDevice] = {}
        self.collections: dict[int, T] = {}
        self._at: dict[int, Key] = {}  # guest address -> the one entry cached from there
        self._cte_at: dict[int, int] = {}  # ICID -> address of its CTE (memory-held collections)

    def __len__(self) -> int:
        return len(self._at)

    # -- adding (each all or nothing) --------------------------------------------------
    def put_device(self, address: int, device_id: int, entry: DeviceEntry) -> CachedDevice:
        key = DteKey(device_id)
        self._drop(key)  # its ITEs go with it
        dev = CachedDevice(entry, {}, address)
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
            # (the ITE's bytes held the device's own DTE, an alias that dropped it) the key
            # went in at ``address`` and no cached entry says so: take it out by address
            if self._at.get(address) == key:
                del self._at[address]
            return
        dev.events[event_id] = ite

    def put_collection(self, address: int | None, icid: int, target: T) -> None:
        """Cache a collection; ``address`` None: held in the ITS (ICID < HCC), no CTE."""
        key = CteKey(icid)
        self._unindex(key)
        if address is not None:
            self._index(address, key)
            self._cte_at[icid] = address
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
        if isinstance(key, DteKey):
            dev = self.devices.get(key.device_id)
            if dev is not None:
                for ev in dev.events:
                    self._unindex(IteKey(key.device_id, ev))
            self._unindex(key)
            self.devices.pop(key.device_id, None)
            return
        self._unindex(key)
        if isinstance(key, IteKey):
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
        if len(self._at) >= self.limit:
            self.clear()  # bounded host memory; the caller's entry goes in after
            if isinstance(key, IteKey):
                return
        self._at[address] = key

    def _address(self, key: Key) -> int | None:
        """Where a cached entry came from (computed: no second index to keep in step)."""
        if isinstance(key, DteKey):
            dev = self.devices.get(key.device_id)
            return None if dev is None else dev.address
        if isinstance(key, IteKey):
            dev = self.devices.get(key.device_id)
            if dev is None or key.event_id not in dev.events:
                return None
            return dev.entry.itt_addr + key.event_id * self.ite_size
        return self._cte_at.get(key.icid)

    def _unindex(self, key: Key) -> None:
        address = self._address(key)
        if address is not None and self._at.get(address) == key:
            del self._at[address]
        if isinstance(key, CteKey):
            self._cte_at.pop(key.icid, None)

    # -- checks ------------------------------------------------------------------------
    def verify(self) -> list[str]:
        """The cache's own invariants (not the guest's tables): every indexed address names
        a cached entry that came from it, every memory-backed entry is indexed at its
        address, and the bound holds."""
        problems: list[str] = []
        if len(self._at) > self.limit:
            problems.append(f"{len(self._at)} entries indexed, bound {self.limit}")
        for address, key in self._at.items():
            if self._address(key) != address:
                problems.append(f"{key} indexed at {address:#x} but cached from {self._address(key)}")
        for device_id, dev in self.devices.items():
            if self._at.get(dev.address) != DteKey(device_id):
                problems.append(f"DeviceID {device_id:#x} cached without its address")
            for ev in dev.events:
                if self._at.get(dev.entry.itt_addr + ev * self.ite_size) != IteKey(device_id, ev):
                    problems.append(f"DeviceID {device_id:#x} EventID {ev} cached without its address")
        for icid, address in self._cte_at.items():
            if icid not in self.collections or self._at.get(address) != CteKey(icid):
                problems.append(f"ICID {icid} indexed at {address:#x} but not cached from there")
        return problems
