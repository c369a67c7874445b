"""Write-behind for the L2 tier: a bounded, keyed queue of writes drained in batches by one asyncio task.

TieredStorage.aset() puts the L2 copy here and returns at once; a drainer task
(started lazily on the running loop) takes the oldest writes, up to `batch` of
them (and `BATCH_BYTES`), and applies them together on the storage's thread
pool: one thread hop and one disk transaction for the batch. The longer the
queue, the bigger the batches, so a burst is written with fewer commits. The
queue holds at most one write per key: a newer value for a key already queued
replaces the queued one in place (same position, no duplicate disk work). It
is bounded in bytes (`capacity`, the values' sizes, the batch being written
included); put() refuses a write that would exceed it, and the caller stores
nothing (it counts the drop): the response never waits for the disk.

Every write to the tier goes through `lock`, and a batch checks under it, for
each of its writes, that it was not cancelled. A caller that must not be
overtaken by a queued write (delete, clear, a synchronous set) first
cancel()s the key and then touches the tier while holding the same lock: a
batch that already started has then finished, and a write that had not
started will not. That is what keeps a purged entry from coming back.

A write the tier failed (an I/O error, a full disk; not a refusal by its
budget) is reported to `on_failed` on the loop, after its batch, with the
cause the tier gave (a FailedWrite).

Everything except the tier write itself runs on the event-loop thread, like
the rest of TieredStorage.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

from proxy.entry import CachedResource

log = logging.getLogger("proxy.storage")

# Bytes of values queued or being written (CachedResource.size()), and writes per batch.
DEFAULT_WRITE_QUEUE = 64 * 1024 * 1024
DEFAULT_WRITE_BATCH = 256
# A batch also stops growing at this many bytes, so that the tier's lock is never held for long.
BATCH_BYTES = 8 * 1024 * 1024


@dataclass(slots=True, eq=False)
class PendingWrite:
    """One queued L2 write; the flags are set at most once each."""

    resource: CachedResource
    size: int
    started: bool = False  # the tier write began (set under the lock)
    cancelled: bool = False  # superseded or purged: must not reach the tier
    # Resolved when the write is over (applied, failed, superseded or withdrawn); made on demand.
    finished: asyncio.Future[None] | None = None

    def finish(self) -> None:
        future = self.finished
        if future is not None and not future.done():
            future.set_result(None)


class FailedWrite(NamedTuple):
    """A write the tier failed, and why (the tier's word for it, e.g. proxy.storage.disk.WriteFailure)."""

    resource: CachedResource
    cause: str


# Writes resources to the tier (in a pool thread, under the lock); returns those that failed.
WriteMany = Callable[[list[CachedResource]], list[FailedWrite]]
# Runs a function with one argument on the I/O pool and awaits it.
ApplyBatch = Callable[[list[PendingWrite]], list[FailedWrite]]
RunInThread = Callable[[ApplyBatch, list[PendingWrite]], Awaitable[list[FailedWrite]]]


class WriteBehind:
    """Bounded queue of writes to one tier; see the module docstring.

    write_many(resources) performs the tier writes of one batch and returns
    the resources it failed to write; run_in_thread runs it off the loop.
    """

    def __init__(
        self,
        write_many: WriteMany,
        run_in_thread: RunInThread,
        capacity: int,
        batch: int = DEFAULT_WRITE_BATCH,
        on_failed: Callable[[list[FailedWrite]], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"write queue capacity must be >= 1 byte, got {capacity}")
        if batch < 1:
            raise ValueError(f"write batch must be >= 1, got {batch}")
        self.capacity = capacity
        self.batch = batch
        self.lock = threading.Lock()
        self._write_many = write_many
        self._run = run_in_thread
        self._on_failed = on_failed
        self._queue: OrderedDict[str, PendingWrite] = OrderedDict()
        # The batch the drainer handed to the pool (still readable by pending()).
        self._inflight: dict[str, PendingWrite] = {}
        self.bytes = 0  # sizes of the queued writes and of the batch in flight
        self.batches = 0  # batches written
        self._task: asyncio.Task[None] | None = None
        # Awaited with a batch's keys before it is written (proxy/purger.py: their catalogue rows first).
        self.before_write: Callable[[list[str]], Awaitable[None]] | None = None

    def __len__(self) -> int:
        """Writes not yet known to be on the tier: the queued ones plus the batch in flight."""
        return len(self._queue) + len(self._inflight)

    # -- called on the loop thread ---------------------------------------------------

    def put(self, resource: CachedResource) -> bool:
        """Queue resource (replacing a queued write of its key); False when the queue is full.

        An empty queue takes a value of any size: the bound is on what waits.
        Needs a running event loop (starts the drainer on it). Never waits.
        """
        key = resource.key
        size = resource.size()
        old = self._queue.get(key)
        if old is None:
            if self.bytes + size > self.capacity and (self._queue or self._inflight):
                return False
        else:
            old.cancelled = True
            old.finish()
            self.bytes -= old.size
        self._queue[key] = PendingWrite(resource, size)  # a queued key keeps its place
        self.bytes += size
        task = self._task
        if task is None or task.done():
            self._ensure_task()
        return True

    def pending(self, key: str) -> CachedResource | None:
        """The newest value queued or being written for key, if any (read-your-writes)."""
        write = self._queue.get(key)
        if write is None:
            write = self._inflight.get(key)
            if write is None or write.cancelled:
                return None
        return write.resource

    def cancel(self, key: str) -> bool:
        """Withdraw the queued and in-flight writes of key; True if there was one.

        A write that already started may still be running: take `lock`
        before touching the tier for this key.
        """
        found = False
        write = self._queue.pop(key, None)
        if write is not None:
            write.cancelled = found = True
            self.bytes -= write.size
            write.finish()
        write = self._inflight.get(key)
        if write is not None and not write.cancelled:
            write.cancelled = found = True
        return found

    def cancel_all(self) -> None:
        """Withdraw every queued and in-flight write (take `lock` before touching the tier)."""
        for write in self._queue.values():
            write.cancelled = True
            self.bytes -= write.size
            write.finish()
        self._queue.clear()
        for write in self._inflight.values():
            write.cancelled = True

    def queued_keys(self) -> list[str]:
        """Keys with a write queued or in flight."""
        out = list(self._queue)
        out += [k for k, w in self._inflight.items() if not w.cancelled and k not in self._queue]
        return out

    async def settled(self, key: str) -> None:
        """Return once no write of key is queued or in flight (whether it was applied or not)."""
        while True:
            write = self._queue.get(key) or self._inflight.get(key)
            if write is None:
                return
            if write.finished is None:
                write.finished = asyncio.get_running_loop().create_future()
            await asyncio.shield(write.finished)

    async def drain(self) -> None:
        """Return once every write queued so far (and any queued meanwhile) is on the tier.

        Cancelling drain() does not stop the drainer.
        """
        while self._queue or self._inflight:
            await asyncio.wait([self._ensure_task()])

    def flush(self) -> None:
        """Apply every pending write in the calling thread, in order, blocking.

        For close() without a loop to drain on. The caller must first join
        the pool threads, so that no write is left half-way in a thread.
        """
        self._requeue_inflight()
        while self._queue:
            batch = self._take_batch()
            try:
                self._apply(batch)
            except Exception:
                log.exception("write-behind: storing %d entries in L2 failed", len(batch))
            for write in batch:
                self.bytes -= write.size
                write.finish()

    # -- internals ---------------------------------------------------------------------

    def _take_batch(self) -> list[PendingWrite]:
        """The oldest queued writes, up to `batch` of them and BATCH_BYTES (at least one)."""
        queue = self._queue
        batch: list[PendingWrite] = []
        size = 0
        while queue and len(batch) < self.batch and (not batch or size < BATCH_BYTES):
            _, write = queue.popitem(last=False)
            batch.append(write)
            size += write.size
        return batch

    def _apply(self, batch: list[PendingWrite]) -> list[FailedWrite]:
        """The tier writes of a batch, except those cancelled or already done (runs in a pool thread)."""
        with self.lock:
            todo = [w for w in batch if not (w.started or w.cancelled)]
            for write in todo:
                write.started = True
            if not todo:
                return []
            return self._write_many([w.resource for w in todo])

    def _ensure_task(self) -> asyncio.Task[None]:
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            self._requeue_inflight()
            task = self._task = loop.create_task(self._drain_queue(), name="storage-l2-write-behind")
        return task

    def _requeue_inflight(self) -> None:
        """Put back the batch of a drainer that was cancelled or lost its loop.

        Except the writes that already started (their thread finishes them) or
        whose key has a newer write queued. If the thread only starts a batch
        later, `started` makes the second attempt of each write a no-op.
        """
        inflight, self._inflight = self._inflight, {}
        back: list[PendingWrite] = []
        for key, write in inflight.items():
            if write.started or write.cancelled or key in self._queue:
                if not write.started:
                    write.cancelled = True
                self.bytes -= write.size
                write.finish()
                continue
            back.append(write)
        for write in reversed(back):
            self._queue[write.resource.key] = write
            self._queue.move_to_end(write.resource.key, last=False)

    async def _drain_queue(self) -> None:
        while self._queue:
            batch = self._take_batch()
            self._inflight = inflight = {w.resource.key: w for w in batch}
            failed: list[FailedWrite] = []
            try:
                if self.before_write is not None:
                    await self.before_write(list(inflight))
                failed = await self._run(self._apply, batch)
            except Exception:  # one bad batch must not stop the others
                log.exception("write-behind: storing %d entries in L2 failed", len(batch))
            # On cancellation (CancelledError is not an Exception) the batch
            # stays in _inflight for _requeue_inflight().
            if self._inflight is inflight:  # else _requeue_inflight() accounted for it
                self._inflight = {}
                for write in batch:
                    self.bytes -= write.size
            for write in batch:
                write.finish()
            self.batches += 1
            if failed and self._on_failed is not None:
                self._on_failed(failed)
