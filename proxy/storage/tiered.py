"""L1 + L2 as one storage: read-through with promotion, write-both, and async wrappers.

TieredStorage satisfies the synchronous Storage protocol (for tools and tests)
and adds the coroutine API the engine uses. The async methods run L1
operations inline on the event-loop thread (L1 is in-process and not
thread-safe) and L2 writes and deletes on a small thread pool owned by this
object. L2 reads of values up to `loop_read_max` bytes run on the loop itself
(DiskStorage.read_now: a read-only SELECT of a page-cached row, a few
microseconds, where the hop to a thread and back costs about 100); larger
values, and any read that would wait for a lock, go to the pool, so a slow
disk never stalls the loop for long. A dedicated pool, rather than the loop's
default executor, means close() can join the threads, which also closes the
per-thread SQLite connections diskcache opened in them.

aset() writes L2 behind the request (proxy.storage.write_behind): the L2 copy
is queued and written, in batches, by a background task. When the queue is
full, nothing is stored (counted in stats.write_dropped): the tiers and the
catalogue keep agreeing. A queued write the disk then fails is undone in L1
too, and the `write_failed_listeners` hear of its key (the catalogue forgets
it), except when the disk failed for lack of space or because its database is
corrupt: then the L1 copy stays (see _write_failed for why that is safe), so a
full or broken disk only stops L2 from storing. A disk tier found corrupt is
not written to any more (DiskStorage.failure). Reads answer from the queue first, so a queued write is
never hidden by an older L2 value; deletes and clear withdraw queued writes
before touching L2. At shutdown, await drain() before close().
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from proxy.entry import CachedResource
from proxy.storage.base import Storage, TierStats
from proxy.storage.disk import DiskStorage, WriteFailure
from proxy.storage.write_behind import DEFAULT_WRITE_BATCH, DEFAULT_WRITE_QUEUE, FailedWrite, WriteBehind
from proxy.warn import RateLimitedWarning

TierName = Literal["l1", "l2"]

_T = TypeVar("_T")
_A = TypeVar("_A")

log = logging.getLogger("proxy.storage")

# Enough to overlap a few SQLite reads and file reads; writers serialise in
# SQLite anyway, so more threads would mostly wait on its lock.
DEFAULT_L2_THREADS = 4
# L2 values up to this size are read on the event loop (see the module docstring):
# a page-cached read of 256 KiB takes tens of microseconds.
DEFAULT_LOOP_READ_MAX = 256 * 1024
# How often batched L2 accesses (lru/lfu recency of on-loop hits) are written.
ACCESS_FLUSH_INTERVAL = 1.0
# Failed L2 writes whose L1 copy is kept (see TieredStorage._write_failed).
_KEEP_L1_ON: frozenset[str] = frozenset(("no_space", "corrupt"))


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

    - get/aget: L1, then a queued L2 write of the key, then L2; an L2 hit
      is promoted into L1 (a value answered from the queue is not).
    - set: write both; True if any tier accepted. A tier that refuses has
      its old value for the key removed, so the tiers never disagree about
      what is current.
    - aset: write L1 inline and queue the L2 write (write-behind, at most
      write_queue bytes queued, written write_batch at a time); True if L1
      accepted or the write was queued. A full queue stores nothing
      (stats.write_dropped): both tiers keep whatever they had for the key;
      the caller never waits. drain() waits for the queue.
    - aset_memory: L1 only (a revalidation that gives L2 nothing new).
    - delete/adelete: withdraw any queued write, then remove from both
      (adelete awaits L2); True if any tier, or the queue, had the key.
    - keys: the union (a snapshot, queued keys included); clear: both, and
      the queue; close: both, writing any still-queued L2 writes first.

    stats counts lookups and writes as seen through this object (a hit from
    either tier is one hit); each tier's own stats stay on l1.stats / l2.stats.
    Like L1, the object must be used from one thread (the event loop's).
    """

    def __init__(
        self,
        l1: Storage | None,
        l2: Storage | None,
        *,
        l2_threads: int = DEFAULT_L2_THREADS,
        write_queue: int = DEFAULT_WRITE_QUEUE,
        write_batch: int = DEFAULT_WRITE_BATCH,
        loop_read_max: int = DEFAULT_LOOP_READ_MAX,
    ) -> None:
        self.name = "tiered"
        self.stats = TierStats()
        self.l1 = l1
        self.l2 = l2
        self._l2_threads = l2_threads
        self._executor: ThreadPoolExecutor | None = None
        # Keys with an L2 read in flight in aget(), and keys with an L2
        # delete in flight in adelete() (with their count): see aget.
        self._flights: dict[str, _Flight] = {}
        self._l2_deletes: dict[str, int] = {}
        # L2 writes of aset(); every L2 mutation holds self._writes.lock.
        self._writes = WriteBehind(
            self._write_l2_many, self._in_thread, write_queue, write_batch, self._write_failed
        )
        # Told the keys whose queued L2 write failed (their stores undone), on the loop.
        self.write_failed_listeners: list[Callable[[list[str]], None]] = []
        self._warn = RateLimitedWarning(log)
        # The disk tier read on the loop (None: every L2 read goes to the pool).
        self._loop_reader = l2 if isinstance(l2, DiskStorage) and loop_read_max > 0 else None
        self._loop_read_max = loop_read_max
        self._access_flush: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Future[Any]] = set()

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
            resource = self._writes.pending(key)
            if resource is not None:
                self.stats.hits += 1
                return resource, "l2"
            resource = self.l2.get(key)
            if resource is not None:
                self._promote(resource)
                self.stats.hits += 1
                return resource, "l2"
        self.stats.misses += 1
        return None, None

    def set(self, resource: CachedResource) -> bool:
        """Write both tiers (write-through: replaces any queued L2 write); blocks on L2 I/O."""
        key = resource.key
        self._invalidate(key)
        stored = self._set_l1(resource)
        if self.l2 is not None:
            self._writes.cancel(key)
            with self._writes.lock:
                stored = _set_or_drop(self.l2, resource) or stored
        return self._count_set(stored)

    def delete(self, key: str) -> bool:
        """Remove key from both tiers and the write queue; True if any had it."""
        self._invalidate(key)
        removed = self.l1 is not None and self.l1.delete(key)
        if self.l2 is not None:
            queued = self._writes.cancel(key)
            removed = self._delete_l2(key) or queued or removed
        return removed

    def __contains__(self, key: object) -> bool:
        """Held by either tier (or queued for L2)."""
        if not isinstance(key, str):
            return False
        if self.l1 is not None and key in self.l1:
            return True
        return self.l2 is not None and (self._writes.pending(key) is not None or key in self.l2)

    def keys(self) -> Iterator[str]:
        """Union of both tiers' keys and the queued writes', as a snapshot list (L1's first)."""
        out = list(self.l1.keys()) if self.l1 is not None else []
        if self.l2 is not None:
            seen = set(out)
            for k in self._writes.queued_keys():
                if k not in seen:
                    seen.add(k)
                    out.append(k)
            l2_keys = self.l2.keys()  # a Storage, not a dict: keys() is the API
            out.extend(k for k in l2_keys if k not in seen)
        return iter(out)

    def clear(self) -> None:
        """Empty both tiers and the write queue."""
        for flight in self._flights.values():
            flight.dirty = True
        if self.l1 is not None:
            self.l1.clear()
        if self.l2 is not None:
            self._writes.cancel_all()
            with self._writes.lock:
                self.l2.clear()

    def close(self) -> None:
        """Join the L2 threads, write any still-queued L2 writes, then close both tiers.

        Writes left in the queue (no drain() before, or no loop running any
        more) are written synchronously in the calling thread: close()
        never loses them, but blocks on that disk I/O, so from a coroutine
        await drain() first. Safe to call more than once; the object stays
        usable (the pool is recreated on demand).
        """
        if self._access_flush is not None:
            self._access_flush.cancel()  # l2.close() below writes what is batched
            self._access_flush = None
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        if self._writes:
            log.info("writing %d queued L2 writes synchronously on close", len(self._writes))
        self._writes.flush()
        if self.l1 is not None:
            self.l1.close()
        if self.l2 is not None:
            self.l2.close()

    # -- async API for the engine -----------------------------------------------------

    def get_now(self, key: str) -> tuple[bool, CachedResource | None, TierName | None]:
        """L1, then L2 on the loop where that is cheap: (answered, resource, tier).

        The engine's synchronous lookup. answered=False means only the I/O
        pool can tell (a big value, a lock, a delete in flight): continue
        with aget_rest(). An answered lookup is counted (hit or miss) here.
        """
        answered, resource, tier = self._lookup_now(key, count_miss=True)
        if answered and resource is None:
            self.stats.misses += 1
        return answered, resource, tier

    def _lookup_now(
        self, key: str, *, count_miss: bool
    ) -> tuple[bool, CachedResource | None, TierName | None]:
        """get_now(), and the first step of aget(); count_miss: an L2 miss counts in L2's stats."""
        if self.l1 is not None:
            resource = self.l1.get(key)
            if resource is not None:
                self.stats.hits += 1
                return True, resource, "l1"
        if self.l2 is None:
            return True, None, None
        queued = self._writes.pending(key)
        if queued is not None:
            # Newer than anything in L2. Not promoted: L1 either has it
            # already, refused it, or evicted it since the write.
            self.stats.hits += 1
            return True, queued, "l2"
        reader = self._loop_reader
        if reader is None or key in self._l2_deletes:
            # A delete on the pool may not have committed yet: aget() knows how to wait for it.
            return False, None, None
        answered, resource = reader.read_now(key, self._loop_read_max, count_miss=count_miss)
        if not answered:
            return False, None, None
        if resource is None:
            return True, None, None
        self._promote(resource)
        self.stats.hits += 1
        self._schedule_access_flush(reader)
        return True, resource, "l2"

    def _schedule_access_flush(self, reader: DiskStorage) -> None:
        if self._access_flush is None and reader.access_pending():
            self._access_flush = asyncio.get_running_loop().call_later(
                ACCESS_FLUSH_INTERVAL, self._flush_access
            )

    def _flush_access(self) -> None:
        self._access_flush = None
        reader = self._loop_reader
        if reader is not None and reader.access_pending():
            flush = asyncio.ensure_future(self._in_thread(lambda _: reader.flush_access(), None))
            self._background.add(flush)
            flush.add_done_callback(self._background.discard)

    async def aget(self, key: str) -> tuple[CachedResource | None, TierName | None]:
        """The resource and the tier that answered ("l1", "l2", or None on a miss).

        What get_now() can answer on the loop it answers; the rest of L2 is
        read on the I/O pool (aget_rest). An L2 hit is promoted into L1.
        """
        answered, resource, tier = self.get_now(key)
        if answered:
            return resource, tier
        return await self.aget_rest(key)

    async def aget_l2(self, key: str) -> CachedResource | None:
        """The L2 copy of key (a queued write of this process first), not promoted into L1.

        For when L1 may hold an older copy than L2: another worker of the box
        has just stored the key (proxy/box.py). The caller decides whether the
        copy is newer than L1's and then `promote`s it.
        """
        if self.l2 is None:
            return None
        queued = self._writes.pending(key)
        if queued is not None:
            return queued
        reader = self._loop_reader
        if reader is not None and key not in self._l2_deletes:
            answered, resource = reader.read_now(key, self._loop_read_max, count_miss=False)
            if answered:
                return resource
        resource, _ = await self.aget_rest(key, promote=False)
        return resource

    def promote(self, resource: CachedResource) -> None:
        """Put an L2 copy into L1 (an L1 that refuses it keeps missing)."""
        self._promote(resource)

    async def aget_rest(
        self, key: str, *, promote: bool = True
    ) -> tuple[CachedResource | None, TierName | None]:
        """The L2 read that get_now() could not answer, on the I/O pool; counted here."""
        l2 = self.l2
        if l2 is not None:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = _Flight()
            if key in self._l2_deletes:
                # The read may overtake the delete on the pool and see the old value.
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
                if promote and not flight.dirty:
                    self._promote(resource)
                self.stats.hits += 1
                return resource, "l2"
        self.stats.misses += 1
        return None, None

    async def aset(self, resource: CachedResource) -> bool:
        """Write L1 inline and queue the L2 write; never waits for L2.

        True if L1 accepted or the L2 write was queued. When the queue is full
        nothing is stored (stats.write_dropped), and this does not raise.
        """
        if self._flights:
            self._invalidate(resource.key)
        if self.l2_failed:
            return self._count_set(self._set_l1(resource))  # a corrupt disk tier is not written to
        if self.l2 is not None and not self._writes.put(resource):  # first: a drop stores nothing
            self.stats.write_dropped += 1
            self._warn(
                "L2 write queue full (%d writes, %d bytes): %r not stored",
                len(self._writes),
                self._writes.bytes,
                resource.key,
            )
            return self._count_set(False)
        stored = self._set_l1(resource) or self.l2 is not None
        return self._count_set(stored)

    async def aset_memory(self, resource: CachedResource) -> bool:
        """Write L1 only; L2 keeps what it holds for the key (True if L1 took it)."""
        self._invalidate(resource.key)
        return self._count_set(self._set_l1(resource))

    def unstore(self, key: str) -> None:
        """Undo an aset() of this loop iteration: drop key from L1 and withdraw its queued L2 write."""
        self._invalidate(key)
        if self.l1 is not None:
            self.l1.delete(key)
        self._writes.cancel(key)

    async def adelete(self, key: str) -> bool:
        """Remove key from L1 inline, withdraw its queued L2 write and await the L2 delete.

        A write already in progress finishes before the delete runs, so
        nothing written before the call survives it (purge correctness).
        """
        removed = self._withdraw(key)
        if self.l2 is not None:
            try:
                removed = await self._in_thread(self._delete_l2, key) or removed
            finally:
                self._delete_done(key)
        return removed

    def _withdraw(self, key: str) -> bool:
        """A delete's part on the loop thread, before its L2 delete is submitted: L1's copy and the
        queued L2 write go, and the L2 delete counts as under way (reads of the key wait for it;
        the caller calls _delete_done). Whether a copy or a queued write was there."""
        self._invalidate(key)
        removed = self.l1 is not None and self.l1.delete(key)
        if self.l2 is not None:
            removed = self._writes.cancel(key) or removed
            self._l2_deletes[key] = self._l2_deletes.get(key, 0) + 1
        return removed

    def delete_behind(self, key: str) -> None:
        """adelete() without waiting for L2: L1 and the queued write go now, the L2 delete runs on
        the pool (reads of the key wait for it as for adelete()'s).

        For a copy a purge's ban keeps from being served (engine._screen): the request that found
        it goes on to the origin at once. Awaiting the delete made it wait for the disk, and when
        the purge's own delete had failed (another process holding cache.db's lock, a full disk)
        every request for the key until the ban expired waited the disk's lock timeout (5 s).
        """
        self._withdraw(key)
        if self.l2 is None:
            return
        deleting = asyncio.ensure_future(self._in_thread(self._delete_l2, key))
        self._background.add(deleting)

        def done(future: asyncio.Future[bool]) -> None:
            self._background.discard(future)
            self._delete_done(key)
            if not future.cancelled() and future.exception() is not None:  # the pool shut down
                log.warning("deleting %r from L2 failed: %r", key, future.exception())

        deleting.add_done_callback(done)

    async def aclear(self) -> None:
        """clear() without blocking the loop on the L2 (purge of everything)."""
        for flight in self._flights.values():
            flight.dirty = True
        if self.l1 is not None:
            self.l1.clear()
        l2 = self.l2
        if l2 is not None:
            self._writes.cancel_all()

            def clear_l2(_: None) -> None:
                with self._writes.lock:
                    l2.clear()

            await self._in_thread(clear_l2, None)

    async def adelete_many(self, keys: list[str]) -> int:
        """adelete for many keys with one trip to the L2 thread (purge by tag or prefix).

        Returns how many keys either tier held.
        """
        removed: set[str] = set()
        for key in keys:
            self._invalidate(key)
            if self.l1 is not None and self.l1.delete(key):
                removed.add(key)
        l2 = self.l2
        if l2 is not None and keys:
            for key in keys:
                if self._writes.cancel(key):
                    removed.add(key)
                self._l2_deletes[key] = self._l2_deletes.get(key, 0) + 1

            def delete_all(batch: list[str]) -> list[str]:
                with self._writes.lock:
                    many = getattr(l2, "delete_many", None)
                    if many is not None:
                        return list(many(batch))
                    return [k for k in batch if l2.delete(k)]

            try:
                removed.update(await self._in_thread(delete_all, keys))
            finally:
                for key in keys:
                    self._delete_done(key)
        return len(removed)

    async def written(self, keys: list[str]) -> None:
        """Return once the L2 writes queued for keys are over (applied or not): for a change that must
        be on disk before it is acknowledged, as one a worker queued is lost if it is killed."""
        for key in keys:
            await self._writes.settled(key)

    async def settle(self, key: str) -> bool:
        """Wait until the L2 write queued for key is over; whether L2 now holds key.

        For a worker that fetched on behalf of the others in its box: they
        read what it stored from L2, so it tells them only once L2 has it
        (a write dropped by a full queue, or refused by the tier, is False).
        """
        l2 = self.l2
        if l2 is None:
            return False
        await self._writes.settled(key)
        if self.l2_failed:
            return False
        try:
            return await self._in_thread(l2.__contains__, key)
        except Exception as exc:  # the others fetch it themselves
            self._warn("L2: looking %r up failed: %r", key, exc)
            return False

    @property
    def l2_failed(self) -> bool:
        """Is the disk tier marked failed at run time (a corrupt database: DiskStorage.failure)?"""
        l2 = self.l2
        return isinstance(l2, DiskStorage) and l2.failure is not None

    async def drain(self) -> None:
        """Wait until every queued L2 write (including any queued meanwhile) is in L2, and every
        L2 delete under way is done.

        Call at shutdown, after the server stopped taking requests and
        before close().
        """
        if self._writes:
            log.info("draining %d queued L2 writes", len(self._writes))
        await self._writes.drain()
        # And the L2 deletes run behind requests (delete_behind): one cut off by close() would
        # leave on disk a copy a purge was for.
        if self._background:
            await asyncio.wait(list(self._background))

    # -- helpers ------------------------------------------------------------------------

    def _promote(self, resource: CachedResource) -> None:
        # An L1 that refuses (too big, noeviction and full) simply keeps
        # missing; L2 still has the entry.
        if self.l1 is not None:
            self.l1.set(resource)

    def _set_l1(self, resource: CachedResource) -> bool:
        return self.l1 is not None and _set_or_drop(self.l1, resource)

    def _write_l2_many(self, resources: list[CachedResource]) -> list[FailedWrite]:
        """The write-behind queue's tier writes (in a pool thread, under its lock); the failed ones.

        A refusal (over the budget) drops the key's older value, as in set();
        only I/O failures are returned, with their cause.
        """
        l2 = self.l2
        if l2 is None:
            return []
        if isinstance(l2, DiskStorage):
            results = l2.set_many(resources)
            causes: list[WriteFailure | None] = l2.last_failures  # set by that call: under the queue's lock
            if len(causes) != len(results):
                causes = [None] * len(results)
            return [
                FailedWrite(r, cause or "error")
                for r, ok, cause in zip(resources, results, causes, strict=True)
                if ok is None
            ]
        failed = []
        for resource in resources:
            try:
                _set_or_drop(l2, resource)
            except Exception as exc:
                log.warning("storing %r in %s failed: %r", resource.key, l2.name, exc)
                failed.append(FailedWrite(resource, "error"))
        return failed

    def _write_failed(self, failed: list[FailedWrite]) -> None:
        """Queued L2 writes the disk failed (on the loop): most stores are undone in L1 too.

        The undo keeps every copy this worker serves one that the box shares:
        the catalogue forgets the key (a purge needs no row for a copy that is
        nowhere), the other workers find in L2 what this one would serve, and
        the next request stores the key again in both tiers once the disk
        answers (a lock held a while by another process, an I/O error).

        A disk that is full, or whose database is corrupt, will fail every
        write for a long while: undoing would make the cache a pass-through
        (every request to the origin). Those L1 copies stay, and so do their
        catalogue rows (no listener hears of them), which is what makes keeping
        them safe: a purge by any worker finds the key in the catalogue and
        reaches this L1 through the purge log, as for any other L1 copy. (If the
        catalogue cannot write the row either, Purger._rows_failed still drops
        the copy from both tiers.) The older L2 value of the key, if the best
        effort to drop it failed too, is a copy every other worker of the box
        would serve anyway; a purge covering it removes it from L2 as ever.
        """
        self.stats.write_failed += len(failed)
        l1 = self.l1
        keys = []
        for resource, cause in failed:
            key = resource.key
            if self._writes.pending(key) is not None:
                continue  # a newer value is queued: its own write decides
            if cause in _KEEP_L1_ON:
                continue
            keys.append(key)
            if l1 is not None and getattr(l1, "peek", l1.get)(key) is resource:
                self._invalidate(key)
                l1.delete(key)
        if not keys:
            return
        for listener in self.write_failed_listeners:
            listener(keys)

    def _delete_l2(self, key: str) -> bool:
        # Any thread. The caller has withdrawn the key's queued write; the
        # lock waits out one that was already being applied.
        assert self.l2 is not None
        with self._writes.lock:
            return self.l2.delete(key)

    def _invalidate(self, key: str) -> None:
        flight = self._flights.get(key)
        if flight is not None:
            flight.dirty = True

    def _delete_done(self, key: str) -> None:
        left = self._l2_deletes[key] - 1
        if left:
            self._l2_deletes[key] = left
        else:
            del self._l2_deletes[key]

    def _count_set(self, stored: bool) -> bool:
        if stored:
            self.stats.sets += 1
        else:
            self.stats.rejected += 1
        return stored

    @property
    def write_queue(self) -> WriteBehind:
        """The L2 write-behind queue (for its counters)."""
        return self._writes

    async def _in_thread(self, fn: Callable[[_A], _T], arg: _A) -> _T:
        executor = self._executor
        if executor is None:
            executor = self._executor = ThreadPoolExecutor(
                max_workers=self._l2_threads, thread_name_prefix="storage-l2"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, fn, arg)
