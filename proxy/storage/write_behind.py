"""Write-behind for the L2 tier: a bounded, keyed queue of writes drained by one asyncio task.

TieredStorage.aset() puts the L2 copy here and returns at once; a drainer task
(started lazily on the running loop) takes the writes oldest first and applies
them one at a time on the storage's thread pool. The queue holds at most one
write per key: a newer value for a key already queued replaces the queued one
in place (same position, no duplicate disk work). When `capacity` keys are
queued, put() refuses and the caller counts the drop: the response never
waits for the disk.

Every write to the tier goes through `lock`, and a write checks under it that
it was not cancelled. A caller that must not be overtaken by a queued write
(delete, clear, a synchronous set) first cancel()s the key and then touches
the tier while holding the same lock: a write that already started has then
finished, and one that had not will not start. That is what keeps a purged
entry from coming back.

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

from proxy.entry import CachedResource

log = logging.getLogger("proxy.storage")

DEFAULT_WRITE_QUEUE = 1024


@dataclass(slots=True, eq=False)
class PendingWrite:
    """One queued L2 write; the flags are set at most once each."""

    resource: CachedResource
    started: bool = False  # the tier write began (set under the lock)
    cancelled: bool = False  # superseded or purged: must not reach the tier
    # Resolved when the write is over (applied, failed, superseded or withdrawn); made on demand.
    finished: asyncio.Future[None] | None = None

    def finish(self) -> None:
        future = self.finished
        if future is not None and not future.done():
            future.set_result(None)


# Runs a function with one argument on the I/O pool and awaits it.
RunInThread = Callable[[Callable[[PendingWrite], None], PendingWrite], Awaitable[None]]


class WriteBehind:
    """Bounded queue of writes to one tier; see the module docstring.

    write(resource) performs the tier write (it may return anything; its
    result is ignored); run_in_thread runs the blocking part off the loop.
    """

    def __init__(
        self, write: Callable[[CachedResource], object], run_in_thread: RunInThread, capacity: int
    ) -> None:
        if capacity < 1:
            raise ValueError(f"write queue capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.lock = threading.Lock()
        self._write = write
        self._run = run_in_thread
        self._queue: OrderedDict[str, PendingWrite] = OrderedDict()
        # The write the drainer handed to the pool (still readable by pending()).
        self._inflight: PendingWrite | None = None
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Writes not yet known to be on the tier: the queued ones plus the one in flight."""
        return len(self._queue) + (self._inflight is not None)

    # -- called on the loop thread ---------------------------------------------------

    def put(self, resource: CachedResource) -> bool:
        """Queue resource (replacing a queued write of its key); False when the queue is full.

        Needs a running event loop (starts the drainer on it). Never waits.
        """
        key = resource.key
        queue = self._queue
        old = queue.get(key)
        if old is not None:
            old.cancelled = True
            old.finish()
        elif len(queue) >= self.capacity:
            return False
        queue[key] = PendingWrite(resource)  # an existing key keeps its position
        self._ensure_task()
        return True

    def pending(self, key: str) -> CachedResource | None:
        """The newest value queued or being written for key, if any (read-your-writes)."""
        write = self._queue.get(key)
        if write is None:
            write = self._inflight
            if write is None or write.cancelled or write.resource.key != key:
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
            write.finish()
        write = self._inflight
        if write is not None and not write.cancelled and write.resource.key == key:
            write.cancelled = found = True
        return found

    def cancel_all(self) -> None:
        """Withdraw every queued and in-flight write (take `lock` before touching the tier)."""
        for write in self._queue.values():
            write.cancelled = True
            write.finish()
        self._queue.clear()
        if self._inflight is not None:
            self._inflight.cancelled = True

    def queued_keys(self) -> list[str]:
        """Keys with a write queued or in flight."""
        out = list(self._queue)
        write = self._inflight
        if write is not None and not write.cancelled and write.resource.key not in self._queue:
            out.append(write.resource.key)
        return out

    async def settled(self, key: str) -> None:
        """Return once no write of key is queued or in flight (whether it was applied or not)."""
        while True:
            write = self._queue.get(key)
            if write is None:
                inflight = self._inflight
                if inflight is None or inflight.resource.key != key:
                    return
                write = inflight
            if write.finished is None:
                write.finished = asyncio.get_running_loop().create_future()
            await asyncio.shield(write.finished)

    async def drain(self) -> None:
        """Return once every write queued so far (and any queued meanwhile) is on the tier.

        Cancelling drain() does not stop the drainer.
        """
        while self._queue or self._inflight is not None:
            await asyncio.wait([self._ensure_task()])

    def flush(self) -> None:
        """Apply every pending write in the calling thread, in order, blocking.

        For close() without a loop to drain on. The caller must first join
        the pool threads, so that no write is left half-way in a thread.
        """
        self._requeue_inflight()
        queue = self._queue
        while queue:
            _, write = queue.popitem(last=False)
            self._apply_logged(write)
            write.finish()

    # -- internals ---------------------------------------------------------------------

    def _apply(self, write: PendingWrite) -> None:
        """The tier write, unless cancelled or already done (runs in a pool thread)."""
        with self.lock:
            if write.started or write.cancelled:
                return
            write.started = True
            self._write(write.resource)

    def _apply_logged(self, write: PendingWrite) -> None:
        try:
            self._apply(write)
        except Exception:  # one bad write must not stop the others
            log.exception("write-behind: storing %r in L2 failed", write.resource.key)

    def _ensure_task(self) -> asyncio.Task[None]:
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            self._requeue_inflight()
            task = self._task = loop.create_task(self._drain_queue(), name="storage-l2-write-behind")
        return task

    def _requeue_inflight(self) -> None:
        """Put back the write of a drainer that was cancelled or lost its loop.

        Unless it already started (its thread finishes it) or a newer write of
        its key is queued. If its thread only starts later, `started` makes
        the second attempt a no-op.
        """
        write, self._inflight = self._inflight, None
        if write is None or write.started or write.cancelled:
            return
        key = write.resource.key
        if key in self._queue:
            write.cancelled = True
            return
        self._queue[key] = write
        self._queue.move_to_end(key, last=False)

    async def _drain_queue(self) -> None:
        queue = self._queue
        while queue:
            _, write = queue.popitem(last=False)
            self._inflight = write
            try:
                await self._run(self._apply, write)
            except Exception:  # one bad write must not stop the others
                log.exception("write-behind: storing %r in L2 failed", write.resource.key)
            # On cancellation (CancelledError is not an Exception) the write
            # stays in _inflight for _requeue_inflight().
            if self._inflight is write:
                self._inflight = None
            write.finish()
