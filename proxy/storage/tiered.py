"""L1 + L2 as one storage: read-through with promotion, write-both, and async wrappers.

TieredStorage satisfies the synchronous Storage protocol (for tools and tests)
and adds the coroutine API the engine uses. The async methods run L1
operations inline on the event-loop thread (L1 is in-process and not
thread-safe) and L2 operations on a small thread pool owned by this object, so
the loop never blocks on disk I/O. A dedicated pool, rather than the loop's
default executor, means close() can join the threads, which also closes the
per-thread SQLite connections diskcache opened in them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar

from proxy.entry import CachedResource
from proxy.storage.base import Storage, TierStats

TierName = Literal["l1", "l2"]

_T = TypeVar("_T")
_A = TypeVar("_A")

# Enough to overlap a few SQLite reads and file reads; writers serialise in
# SQLite anyway, so more threads would mostly wait on its lock.
DEFAULT_L2_THREADS = 4


@dataclass(slots=True)
class _Flight:
    """L2 reads in flight for one key, and whether the key was written meanwhile."""

    readers: int = 0
    dirty: bool = False


def _set_or_drop(tier: Storage, resource: CachedResource) -> bool:
    """Set in tier; if refused, drop any older value so it cannot be served instead."""
    if tier.set(resource):
        return True
    tier.delete(resource.key)
    return False


class TieredStorage:
    """An optional L1 in front of an optional L2 (either may be None: tier disabled).

    - get/aget: L1, then L2; an L2 hit is promoted into L1.
    - set/aset: write both; True if any tier accepted. A tier that refuses
      has its old value for the key removed, so the tiers never disagree
      about what is current.
    - delete/adelete: both; True if any tier had the key.
    - keys: the union (a snapshot); clear/close: both.

    stats counts lookups and writes as seen through this object (a hit from
    either tier is one hit); each tier's own stats stay on l1.stats / l2.stats.
    Like L1, the object must be used from one thread (the event loop's).
    """

    def __init__(
        self, l1: Storage | None, l2: Storage | None, *, l2_threads: int = DEFAULT_L2_THREADS
    ) -> None:
        self.name = "tiered"
        self.stats = TierStats()
        self.l1 = l1
        self.l2 = l2
        self._l2_threads = l2_threads
        self._executor: ThreadPoolExecutor | None = None
        # Keys with an L2 read in flight in aget(), and keys with an L2 write
        # or delete in flight in aset()/adelete() (with their count): see aget.
        self._flights: dict[str, _Flight] = {}
        self._l2_writes: dict[str, int] = {}

    # -- synchronous Storage protocol ---------------------------------------------

    def get(self, key: str) -> CachedResource | None:
        """L1 then L2 (promoting an L2 hit into L1); blocks on L2 I/O."""
        resource, _ = self._get_sync(key)
        return resource

    def _get_sync(self, key: str) -> tuple[CachedResource | None, TierName | None]:
        if self.l1 is not None:
            resource = self.l1.get(key)
            if resource is not None:
                self.stats.hits += 1
                return resource, "l1"
        if self.l2 is not None:
            resource = self.l2.get(key)
            if resource is not None:
                self._promote(resource)
                self.stats.hits += 1
                return resource, "l2"
        self.stats.misses += 1
        return None, None

    def l1_get(self, key: str) -> CachedResource | None:
        """L1 only, synchronous: the engine's hit fast path (no coroutine, no thread hop).

        A hit counts in stats; a miss does not, since the caller goes on to
        aget(key, l1_checked=True), which counts the outcome.
        """
        if self.l1 is None:
            return None
        resource = self.l1.get(key)
        if resource is not None:
            self.stats.hits += 1
        return resource

    def set(self, resource: CachedResource) -> bool:
        """Write both tiers; blocks on L2 I/O."""
        self._invalidate(resource.key)
        stored = self._set_l1(resource)
        if self.l2 is not None:
            stored = _set_or_drop(self.l2, resource) or stored
        return self._count_set(stored)

    def delete(self, key: str) -> bool:
        """Remove key from both tiers; True if either had it."""
        self._invalidate(key)
        removed = self.l1 is not None and self.l1.delete(key)
        if self.l2 is not None:
            removed = self.l2.delete(key) or removed
        return removed

    def keys(self) -> Iterator[str]:
        """Union of both tiers' keys, as a snapshot list (L1's first)."""
        out = list(self.l1.keys()) if self.l1 is not None else []
        if self.l2 is not None:
            seen = set(out)
            l2_keys = self.l2.keys()  # a Storage, not a dict: keys() is the API
            out.extend(k for k in l2_keys if k not in seen)
        return iter(out)

    def clear(self) -> None:
        """Empty both tiers."""
        for flight in self._flights.values():
            flight.dirty = True
        if self.l1 is not None:
            self.l1.clear()
        if self.l2 is not None:
            self.l2.clear()

    def close(self) -> None:
        """Join the L2 threads (waits for queued L2 work), then close both tiers.

        Safe to call more than once; the object stays usable (the pool is
        recreated on demand).
        """
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        if self.l1 is not None:
            self.l1.close()
        if self.l2 is not None:
            self.l2.close()

    # -- async API for the engine -----------------------------------------------------

    async def aget(
        self, key: str, *, l1_checked: bool = False
    ) -> tuple[CachedResource | None, TierName | None]:
        """The resource and the tier that answered ("l1", "l2", or None on a miss).

        l1_checked=True skips the L1 lookup, for a caller that already missed
        in l1_get(). L2 is read on the I/O pool and a hit is promoted into L1.
        """
        if self.l1 is not None and not l1_checked:
            resource = self.l1.get(key)
            if resource is not None:
                self.stats.hits += 1
                return resource, "l1"
        l2 = self.l2
        if l2 is not None:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight()
            if key in self._l2_writes:
                # The read may overtake the write on the pool and see the old value.
                flight.dirty = True
            flight.readers += 1
            try:
                resource = await self._in_thread(l2.get, key)
            finally:
                flight.readers -= 1
                if not flight.readers:
                    del self._flights[key]
            if resource is not None:
                # Back on the loop thread, so touching L1 is safe. A write or
                # delete of this key overlapping the L2 read may make the result
                # outdated: return it (the read began first) but do not let it
                # overwrite L1 or resurrect a purged entry there.
                if not flight.dirty:
                    self._promote(resource)
                self.stats.hits += 1
                return resource, "l2"
        self.stats.misses += 1
        return None, None

    async def aset(self, resource: CachedResource) -> bool:
        """Write L1 inline and L2 on the I/O pool; True if any tier accepted."""
        self._invalidate(resource.key)
        stored = self._set_l1(resource)
        l2 = self.l2
        if l2 is not None:
            key = resource.key
            self._l2_writes[key] = self._l2_writes.get(key, 0) + 1
            try:
                stored = await self._in_thread(functools.partial(_set_or_drop, l2), resource) or stored
            finally:
                self._write_done(key)
        return self._count_set(stored)

    async def adelete(self, key: str) -> bool:
        """Remove key from L1 inline and from L2 on the I/O pool."""
        self._invalidate(key)
        removed = self.l1 is not None and self.l1.delete(key)
        l2 = self.l2
        if l2 is not None:
            self._l2_writes[key] = self._l2_writes.get(key, 0) + 1
            try:
                removed = await self._in_thread(l2.delete, key) or removed
            finally:
                self._write_done(key)
        return removed

    # -- helpers ------------------------------------------------------------------------

    def _promote(self, resource: CachedResource) -> None:
        # An L1 that refuses (too big, noeviction and full) simply keeps
        # missing; L2 still has the entry.
        if self.l1 is not None:
            self.l1.set(resource)

    def _set_l1(self, resource: CachedResource) -> bool:
        return self.l1 is not None and _set_or_drop(self.l1, resource)

    def _invalidate(self, key: str) -> None:
        flight = self._flights.get(key)
        if flight is not None:
            flight.dirty = True

    def _write_done(self, key: str) -> None:
        left = self._l2_writes[key] - 1
        if left:
            self._l2_writes[key] = left
        else:
            del self._l2_writes[key]

    def _count_set(self, stored: bool) -> bool:
        if stored:
            self.stats.sets += 1
        else:
            self.stats.rejected += 1
        return stored

    async def _in_thread(self, fn: Callable[[_A], _T], arg: _A) -> _T:
        executor = self._executor
        if executor is None:
            executor = self._executor = ThreadPoolExecutor(
                max_workers=self._l2_threads, thread_name_prefix="storage-l2"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, fn, arg)
