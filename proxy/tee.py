"""A large origin body streamed to the client while it is stored (issue 12 row 6).

Reading a whole body before answering holds it in memory once per fetch, up
to cache.max_object_size, for as long as the slowest part of the exchange
takes; for bodies of unknown length that is the limit itself, per request. A
body above cache.stream_above is instead passed to the client that started
the fetch chunk by chunk, at the pace the client reads (the front's flow
control pauses the origin connection), and copied into a spool file on disk.
When the origin has sent it all, and it fitted within max_object_size, the
spool is read back and stored (`store`); the requests coalesced on the fetch
wait for that (`stored`) and are answered from it, as from any stored fetch.

The copy for the cache does not depend on the client: a client that goes away
mid-body, or a HEAD client or background revalidation that never reads it,
leaves the rest to be read for the cache alone (`finish`), as nginx's
proxy_cache does. A spool that cannot be written (a full disk) only stops the
storing; the client still gets every byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO

from proxy.entry import StoredResponse
from proxy.origin import OriginResponse, UpstreamError

log = logging.getLogger("proxy.tee")

# Chunks are gathered up to this size before one write to the spool.
SPOOL_WRITE = 256 * 1024

Store = Callable[[bytes], Awaitable[StoredResponse | None]]

# Chunks waiting for the client: the most one stream holds beyond its spool buffer.
QUEUED_CHUNKS = 4

# The pumps running: held until done (the loop keeps only weak references to tasks).
_PUMPS: set[asyncio.Task[None]] = set()


class StoringStream:
    """One origin body: streamed to the leader, spooled, stored at its end.

    One task (the pump) reads the origin and hands each chunk to the client
    through a short queue, so a slow client slows the origin connection (the
    queue fills, the pump waits, the origin client stops reading), and a client
    that goes away, or whose request task is cancelled, leaves the pump and its
    origin connection untouched: it reads on for the cache alone.
    """

    def __init__(
        self,
        resp: OriginResponse,
        prefix: bytes,
        limit: int,
        spool_dir: str | None,
        store: Store,
        gate: asyncio.Semaphore,
    ) -> None:
        self.resp = resp
        self.gate = gate  # how many bodies are read back into memory at once, node-wide
        self.limit = limit
        self.store = store
        self.size = 0
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.spool: IO[bytes] | None = None
        self._spool_dir = spool_dir
        # What the coalesced requests wait for: the stored response, or None (not stored).
        self.stored: asyncio.Future[StoredResponse | None] = asyncio.get_running_loop().create_future()
        # Chunks for the client; None ends the body, an exception breaks it off.
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(QUEUED_CHUNKS)
        self._detached = False  # no client reads (any more): the pump feeds the cache alone
        self._taken = False
        self._pump: asyncio.Task[None] | None = None
        self._prefix = prefix  # already read: the client's first chunk
        self._keep(prefix)

    # ------------------------------------------------------------ the client

    @property
    def taken(self) -> bool:
        """Whether a client streams the body (else `finish` reads it for the cache)."""
        return self._taken

    def body(self) -> AsyncIterator[bytes]:
        """The body for the client that started the fetch (once); the cache's copy is taken as it goes."""
        assert not self._taken, "the body of a fetch is streamed once"
        self._taken = True
        self._start()
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        ended = False
        try:
            if self._prefix:
                prefix, self._prefix = self._prefix, b""
                yield prefix
            while True:
                item = await self._queue.get()
                if item is None:
                    ended = True
                    return
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                yield item
        finally:
            if not ended:
                self._detach()  # the client went away, or its task was cancelled

    def finish(self) -> None:
        """Read the body for the cache alone: nobody streams it (a HEAD, a background fetch)."""
        self._detach()
        self._start()

    def _detach(self) -> None:
        self._detached = True
        queue = self._queue
        while not queue.empty():  # unblock a pump waiting for room
            queue.get_nowait()

    def _start(self) -> None:
        if self._pump is None:
            task = asyncio.get_running_loop().create_task(self._read())
            self._pump = task
            _PUMPS.add(task)
            task.add_done_callback(_PUMPS.discard)

    # -------------------------------------------------------------- the pump

    async def _read(self) -> None:
        ending: UpstreamError | None = None
        complete = False
        try:
            async for chunk in self.resp.iter_rest():
                self._keep(chunk)
                if not self._detached:
                    await self._queue.put(chunk)
                elif self.stored.done():
                    break  # nobody reads, and there is nothing to store (too large, spool failed)
            else:
                complete = True
        except UpstreamError as exc:
            ending = exc
            log.info("origin body broke off while streamed and stored: %s", exc.reason)
        except asyncio.CancelledError:  # shutdown
            self._give_up()
            if not self._detached:
                # The client must see a broken body, not wait for one: make room for the error.
                while self._queue.full():
                    self._queue.get_nowait()
                self._queue.put_nowait(UpstreamError(502, "shutting down"))
            raise
        except Exception:
            log.exception("reading an origin body to stream and store failed")
            ending = UpstreamError(502, "origin response body failed")
        if not self._detached:
            # The end of the body, or its break: once the client has room for it.
            await self._queue.put(ending)
        if complete:
            await self._complete()
        else:
            self._give_up()

    # ------------------------------------------------------------- the spool

    def _keep(self, chunk: bytes) -> None:
        """Count a chunk and, while the body may still be stored, add it to the copy."""
        self.size += len(chunk)
        if self.stored.done():
            return
        if self.size > self.limit:
            self._drop_copy()  # larger than max_object_size: streamed, not stored
            return
        self.pending.append(chunk)
        self.pending_size += len(chunk)
        if self.pending_size >= SPOOL_WRITE:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        try:
            if self.spool is None:
                # Closed by _close_spool, whichever way the stream ends; deleted on close.
                self.spool = tempfile.TemporaryFile(prefix="minicdn-spool-", dir=self._spool_dir)  # noqa: SIM115
            self.spool.write(b"".join(self.pending))
        except OSError as exc:
            # A full or read-only spool directory only stops the storing.
            log.warning("cannot spool a response body for the cache (%s): streamed, not stored", exc)
            self._drop_copy()
            return
        self.pending.clear()
        self.pending_size = 0

    def _drop_copy(self) -> None:
        self.pending.clear()
        self.pending_size = 0
        self._close_spool()
        if not self.stored.done():
            self.stored.set_result(None)

    def _close_spool(self) -> None:
        spool, self.spool = self.spool, None
        if spool is not None:
            with contextlib.suppress(OSError):
                spool.close()

    async def _complete(self) -> None:
        """The whole body arrived: store it (read back from the spool) and tell the waiters."""
        if self.stored.done():
            return
        # Many streams may end together: reading them all back at once would hold them all in
        # memory at once. What is stored is then bounded by the L1 budget and the L2 write queue.
        async with self.gate:
            try:
                body = self._read_back()
            except OSError as exc:
                log.warning("cannot read a spooled response body back (%s): not stored", exc)
                self._drop_copy()
                return
            self._close_spool()
            try:
                entry = await self.store(body)
            except BaseException:
                if not self.stored.done():
                    self.stored.set_result(None)
                raise
        if not self.stored.done():
            self.stored.set_result(entry)

    def _read_back(self) -> bytes:
        spool = self.spool
        if spool is None:
            return b"".join(self.pending)
        self._flush()
        if self.spool is None:  # the flush failed
            raise OSError("spool lost")
        spool.seek(0)
        return spool.read()

    def _give_up(self) -> None:
        self._drop_copy()
        with contextlib.suppress(Exception):
            self.resp.close()
