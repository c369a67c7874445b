"""Purge fan-out over a Redis Stream: a purge accepted by any edge reaches every edge.

The accepting edge applies the purge itself, then appends it (what was asked:
kind, values, soft; each edge resolves it against its own catalogue) to the
stream. Every edge reads the stream from its own last-seen id, persisted with
its L2, so an edge that was down applies what it missed before it serves
again. When Redis is unreachable, local purges still work, the failures are
counted and logged, unpublished purges wait in an outbox (kept on disk with the
stream position, so a restart does not lose them), and fan-out resumes when
Redis returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_exceptions

from edge import tasks
from edge.config import ClusterConfig
from proxy.purge import PurgeRequest, parse_purge_request
from proxy.purger import Purger

log = logging.getLogger("edge.fanout")

LAST_ID_META = "purge_stream_last_id"
# Beside the position: the stream's count of entries added up to it and the stream's incarnation,
# as JSON [count, incarnation], so a trim that ended exactly at the position is no gap.
MARK_META = "purge_stream_mark"
# Suffix of the key holding the stream's incarnation: a token set by the XADD that makes the stream
# (in one MULTI), so a stream made anew (Redis restarted empty, the stream deleted) has another one.
INCARNATION_SUFFIX = ":incarnation"
OUTBOX_META = "purge_outbox"
# Entries read from the stream at once.
BATCH = 500
# How often the consumer looks for the saved outboxes of worker slots the box no longer has.
ADOPT_SECONDS = 30.0


@dataclass(slots=True)
class FanoutStats:
    published: int = 0
    applied_from_stream: int = 0
    redis_errors: int = 0
    apply_errors: int = 0  # purges from the stream that failed here (retried: the position waits)
    outbox: int = 0  # purges accepted here and not yet published
    outbox_overflows: int = 0  # times the outbox was full and became one purge of everything
    stream_lag_ms: float = 0.0  # publish-to-apply delay of the last purge applied from the stream
    caught_up: bool = False
    gaps: int = 0  # times entries after this edge's position were gone: it invalidated everything
    last_id: str = ""


class ApplyError(Exception):
    """A purge read from the stream could not be applied here (the catalogue's disk, say)."""

    def __init__(self, entry_id: str, cause: Exception) -> None:
        super().__init__(f"entry {entry_id}: {cause!r}")
        self.entry_id = entry_id
        self.cause = cause


class PurgeFanout:
    """Publishes this edge's purges and applies everyone else's."""

    def __init__(
        self,
        cfg: ClusterConfig,
        name: str,
        redis: Any,
        purger: Purger,
        slot: int = 0,
        durable: bool = True,
        workers: int = 1,
    ) -> None:
        self.cfg = cfg
        self.name = name
        self.redis = redis
        self.purger = purger
        self.stats = FanoutStats()
        # Purges accepted here and not published yet, oldest first; bounded by cfg.outbox_limit.
        self.outbox: deque[PurgeRequest] = deque()
        # Where the outbox is kept while it holds purges: one row per worker of the box (slot),
        # in the catalogue beside the stream position; durable: that catalogue is on disk.
        self._outbox_meta = OUTBOX_META if slot == 0 else f"{OUTBOX_META}.{slot}"
        self._durable = durable
        self.workers = workers  # worker slots in the box: the consumer adopts the outboxes of others
        self._adopted_at = 0.0  # when the consumer last looked for orphaned outboxes (monotonic)
        self._outbox_saved: list[dict[str, Any]] = []  # what the row holds now
        self._outbox_error: str | None = None  # why the last change of the outbox was not kept on disk
        self._task: asyncio.Task[None] | None = None
        self._last_id = ""
        # (entries added up to _last_id, the stream's incarnation) when known: see _gap.
        self._mark: tuple[int, str] | None = None
        self._resumed = False  # the position to read from is known (_resume)
        # One publisher at a time: publish() and the consume loop both flush the outbox, and two
        # flushes awaiting the same XADD would publish the head twice (then pop an empty deque).
        self._flushing = asyncio.Lock()
        self._publish_error = ""  # why the last XADD failed (said in a purge's answer)
        # ... and whether it timed out: Redis may have taken the purge (it takes it again later).
        self._publish_timed_out = False

    # -------------------------------------------------------------- publish

    async def publish(self, request: PurgeRequest) -> str | None:
        """The purger's listener: queue the purge and try to publish right away.

        When it cannot be published, it is kept (on disk, with the stream position) before this
        returns, so the purge's answer comes after it is safe from a restart of this edge; and
        the answer says so (what this returns): the other edges have not applied it yet, and,
        when it could not be kept on disk either, only this edge's memory holds it.
        """
        async with self._flushing:
            self._enqueue(request)
            await self._flush_outbox_locked()
            if not self.outbox:
                return None
            if self._publish_timed_out:
                why = (
                    f"Redis did not answer in time ({self._publish_error}): it may have taken it, or not, "
                    f"so it waits here with {len(self.outbox) - 1} other purges and is published again "
                    "(applied twice at worst)"
                )
            else:
                why = (
                    f"not published to the other edges yet (Redis: {self._publish_error}); it waits here "
                    f"with {len(self.outbox) - 1} other purges and is published when Redis takes it"
                )
            if self._outbox_error is not None:
                why += (
                    f"; it could not be kept on disk ({self._outbox_error}): a restart of this edge"
                    " before Redis answers loses it"
                )
            return why

    async def lagging(self) -> str | None:
        """A readiness check (proxy/readiness.py): None while this worker's purges reach the stream
        and (the consumer) it follows the stream; else what is wrong. Redis can answer a PING and
        still refuse every XADD (maxmemory with noeviction) or fail every read."""
        if self.outbox:
            return f"{len(self.outbox)} purges accepted here are not published (Redis: {self._publish_error})"
        if not self.stats.caught_up:
            return f"the purge stream is not followed (at {self._last_id or 'its start'}): see the log"
        return None

    def _enqueue(self, request: PurgeRequest) -> None:
        if len(self.outbox) < self.cfg.outbox_limit:
            self.outbox.append(request)
            return
        # Dropping purges would let other edges serve what they covered: publish one purge of
        # everything instead (soft only if every one was soft), which covers them all.
        soft = request.soft and all(r.soft for r in self.outbox)
        self.stats.outbox_overflows += 1
        log.warning(
            "purge outbox overflow: %d purges wait for Redis (cluster.outbox_limit); they become one "
            "%s purge of everything, published when Redis is back",
            len(self.outbox) + 1,
            "soft" if soft else "hard",
        )
        self.outbox.clear()
        self.outbox.append(PurgeRequest("all", (), soft))

    async def flush(self) -> None:
        """Publish what waits in the outbox, if Redis takes it."""
        async with self._flushing:
            await self._flush_outbox_locked()

    async def _flush_outbox_locked(self) -> None:
        while self.outbox:
            request = self.outbox[0]
            fields = {
                "from": self.name,
                "kind": request.kind,
                "values": json.dumps(list(request.values)),
                "soft": "1" if request.soft else "0",
            }
            try:
                await self._append(fields)
            except Exception as exc:
                self.stats.redis_errors += 1
                self._publish_error = f"{type(exc).__name__}: {exc}"
                self._publish_timed_out = isinstance(exc, redis_exceptions.TimeoutError | TimeoutError)
                log.warning("publishing a purge to Redis failed (%s); %d waiting", exc, len(self.outbox))
                break
            self.outbox.popleft()
            self.stats.published += 1
        self.stats.outbox = len(self.outbox)
        await self._save_outbox()

    async def _append(self, fields: dict[str, str]) -> None:
        """XADD to the purge stream; the XADD that makes the stream gives it a new incarnation (and
        a stream made before incarnations gets one: until then every edge's mark was unknown)."""
        stream, limit = self.cfg.purge_stream, self.cfg.stream_maxlen
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(stream + INCARNATION_SUFFIX, uuid.uuid4().hex, nx=True)
            pipe.xadd(stream, fields, maxlen=limit, approximate=True, nomkstream=True)
            _, added = await pipe.execute()
        if added is None:  # no stream
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(stream + INCARNATION_SUFFIX, uuid.uuid4().hex)
                pipe.xadd(stream, fields, maxlen=limit, approximate=True)
                await pipe.execute()

    async def _save_outbox(self) -> None:
        """Keep the outbox beside the stream position (nothing is written while it stays empty)."""
        rows = [{"kind": r.kind, "values": list(r.values), "soft": r.soft} for r in self.outbox]
        if rows == self._outbox_saved:
            self._outbox_error = None  # the row holds them already
            return
        try:
            await asyncio.to_thread(self.purger.catalog.set_meta, self._outbox_meta, json.dumps(rows))
        except Exception as exc:
            self._outbox_error = repr(exc)
            log.error(
                "could not keep %d unpublished purges on disk (%r): a restart loses them", len(rows), exc
            )
            return
        self._outbox_saved = rows
        self._outbox_error = None

    async def load_outbox(self) -> None:
        """Take back the purges this edge (this worker) accepted and had not published when it stopped."""
        saved = await asyncio.to_thread(self.purger.catalog.get_meta, self._outbox_meta)
        rows, loaded = _saved_outbox(saved)
        self._outbox_saved = rows
        if loaded:
            log.info("%d purges accepted before the last stop wait to be published", len(loaded))
            self.outbox.extendleft(reversed(loaded))
            self.stats.outbox = len(self.outbox)

    async def adopt_orphans(self, workers: int) -> int:
        """Take over the saved outboxes of worker slots the box no longer has (slot >= workers).

        A box restarted or reloaded with fewer workers never starts those slots again, so their
        purges would wait for good while the other edges serve what they covered. The consumer
        (slot 0) calls this at the start and now and then (a reload's old workers save their
        outbox as they exit). A slot that comes back later and still holds some of them publishes
        them again: a purge applied twice purges nothing that should stay.
        """
        self._adopted_at = time.monotonic()
        catalog = self.purger.catalog
        try:
            found = await asyncio.to_thread(catalog.meta_named, OUTBOX_META + ".")
        except Exception as exc:  # the catalogue's disk: try again at the next round
            log.warning("could not look for the outboxes of former worker slots (%r)", exc)
            return 0
        adopted = 0
        async with self._flushing:
            for name, saved in sorted(found.items()):
                slot = name[len(OUTBOX_META) + 1 :]
                if not slot.isdigit() or int(slot) < workers:
                    continue
                _, requests = _saved_outbox(saved)
                if not requests:
                    continue
                for request in requests:
                    self._enqueue(request)
                adopted += len(requests)
                # Ours first (with them in it), then theirs emptied: a crash between the two
                # leaves them in both, published twice, never in neither.
                await self._save_outbox()
                try:
                    await asyncio.to_thread(catalog.set_meta, name, "[]")
                except Exception as exc:  # left in place: taken over (and published) again later
                    log.warning("could not empty the outbox of worker slot %s (%r)", slot, exc)
                log.warning(
                    "%d unpublished purges of worker slot %s (no longer in the box) taken over",
                    len(requests),
                    slot,
                )
            if adopted:
                self.stats.outbox = len(self.outbox)
                await self._flush_outbox_locked()
        return adopted

    # ---------------------------------------------------------------- consume

    async def catch_up(self) -> None:
        """Apply every purge published since this edge last looked (call before serving)."""
        try:
            await self._resume()
            while await self._read_batch(block_ms=None):
                pass
            self.stats.caught_up = True
        except Exception as exc:
            if not isinstance(exc, ApplyError):
                self.stats.redis_errors += 1
            log.error("could not read the purge stream before serving (%s); serving, will retry", exc)

    async def _resume(self) -> None:
        """Where this process reads from: the saved position, unless purges after it may be lost.

        A new edge's position is the stream's end (an empty cache) or its start (a cache that
        already holds entries replays the whole stream). When the stream no longer holds every
        entry after the saved position (trimmed by stream_maxlen or XTRIM, XDEL, or Redis restarted
        empty while this edge was down), the purges among them cannot be applied: this edge
        invalidates everything it holds, as the purger does when its own log is too far behind,
        and follows the stream from its end. Done once per process, before the first read.
        """
        if self._resumed:
            return
        stored = await asyncio.to_thread(self.purger.catalog.get_meta, LAST_ID_META)
        position = stored
        mark = None
        if position is None:
            count = await asyncio.to_thread(self.purger.catalog.count)
            position = "0" if count else await self._stream_end()
        else:
            mark = _saved_mark(await asyncio.to_thread(self.purger.catalog.get_meta, MARK_META))
        if stored is not None or position == "0":
            info = await self._stream_info()
            incarnation = await self.redis.get(self.cfg.purge_stream + INCARNATION_SUFFIX)
            gap = _gap(info, position, self.cfg.purge_stream, mark, incarnation)
            if gap is not None:
                position, mark = await self._invalidate_for_gap(gap), None
        self._last_id = self.stats.last_id = position
        self._mark = mark
        if position != stored:
            await self._save_position()
        self._resumed = True

    async def _stream_info(self) -> dict[str, Any] | None:
        """XINFO STREAM of the purge stream, or None when there is no such stream."""
        try:
            info: dict[str, Any] = await self.redis.xinfo_stream(self.cfg.purge_stream)
        except redis_exceptions.ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            return None
        return info

    async def _invalidate_for_gap(self, gap: str) -> str:
        """Purges after this edge's position may be lost (`gap` says why): invalidate everything
        held here, and return the position to follow the stream from (its end)."""
        end = await self._stream_end()  # before the purge: what is published after it is read
        log.warning(
            "purge stream gap: %s; purges this edge missed may be lost, so it invalidates "
            "everything it holds and follows the stream from %s",
            gap,
            end,
        )
        await self.purger.purge(PurgeRequest("all"), propagate=False, by="purge stream gap")
        self.stats.gaps += 1
        return end

    async def _stream_end(self) -> str:
        """The position after everything published so far: the newest id Redis made for the stream
        (its last entry's, or one trimmed or deleted since: "0" would replay a stream that lost
        entries, a gap at every read), "0" when there is no stream."""
        info = await self._stream_info()
        return "0" if info is None else str(info.get("last-generated-id") or "0")

    def start(self, consume: bool = True) -> None:
        """Follow the stream (consume: one worker per box), or only retry this worker's outbox."""
        loop = self._consume_loop() if consume else self._outbox_loop()
        self._task = asyncio.create_task(loop, name="edge purge stream" if consume else "edge purge outbox")

    async def stop(self) -> None:
        if self._task is not None:
            await tasks.stop(self._task)
            self._task = None
        if self.outbox:
            with contextlib.suppress(Exception):  # a last try, bounded
                await asyncio.wait_for(self.flush(), timeout=2.0)
        if self.outbox:
            log.warning(
                "stopping with %d purges accepted here not published to the purge stream (Redis "
                "unreachable): the other edges have not applied them; %s",
                len(self.outbox),
                "they are kept with the cache and published when this edge starts again"
                if self._durable
                else "they are lost (the catalogue is in memory: no cache directory)",
            )

    async def _outbox_loop(self) -> None:
        backoff = 0.2
        while not tasks.stop_requested():
            if self.outbox:
                await self.flush()
            if self.outbox:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.2
                await asyncio.sleep(1.0)

    async def _consume_loop(self) -> None:
        backoff = 0.2
        while not tasks.stop_requested():
            try:
                if time.monotonic() - self._adopted_at >= ADOPT_SECONDS:
                    self._adopted_at = time.monotonic()
                    await self.adopt_orphans(self.workers)
                if self.outbox:
                    await self.flush()
                if not self._resumed:
                    await self._resume()
                await self._read_batch(block_ms=1000)
                self.stats.caught_up = True
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except ApplyError as exc:
                self.stats.caught_up = False
                log.error(
                    "applying purge stream entry %s failed (%r); the stream waits, retrying in %.1fs",
                    exc.entry_id,
                    exc.cause,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:
                self.stats.redis_errors += 1
                self.stats.caught_up = False  # /stats and /metrics show the stall
                log.warning("purge stream read failed (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _read_batch(self, block_ms: int | None) -> int:
        """Read and apply one batch after the last id; returns how many entries were read (or 1
        after a gap, when the read starts again from the stream's end).

        The batch is read together with the stream's state (one MULTI), and the read is checked
        for a gap like the position at start (_resume): entries after the position can be lost
        while this edge runs too (Redis restarted empty while a purge waited to be applied here,
        or the stream trimmed past a position that lagged), and a plain XREAD from the position
        would skip them without a word. Without entries to read, it waits up to block_ms for one.

        The position moves past an entry only once it was applied (or found malformed): a purge
        that fails (the catalogue's disk) raises, and the next read starts at that entry again.
        """
        stream = self.cfg.purge_stream
        position = self._last_id or "0"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(stream + INCARNATION_SUFFIX)
            pipe.xinfo_stream(stream)
            pipe.xread({stream: position}, count=BATCH)
            incarnation, info, result = await pipe.execute(raise_on_error=False)
        for reply in (incarnation, result):
            if isinstance(reply, Exception):
                raise reply
        if isinstance(info, redis_exceptions.ResponseError) and "no such key" in str(info).lower():
            info = None
        elif isinstance(info, Exception):
            raise info
        gap = _gap(info, position, stream, self._mark, incarnation)
        if gap is not None:
            self._last_id = self.stats.last_id = await self._invalidate_for_gap(gap)
            self._mark = None  # known again after the next read that reaches the stream's end
            await self._save_position()
            return 1
        mark, self._mark = self._mark, None  # unknown while the position moves
        entries = result[0][1] if result else []
        start = self._last_id
        try:
            for raw_id, fields in entries:
                entry_id = _text(raw_id) or ""  # ids are ASCII, made by Redis
                try:
                    await self._apply(entry_id, fields)
                except Exception as exc:
                    self.stats.apply_errors += 1
                    raise ApplyError(entry_id, exc) from exc
                self._last_id = self.stats.last_id = entry_id
            self._mark = _mark_after(info, incarnation, len(entries), mark)
        finally:
            if self._last_id != start or self._mark != mark:
                await self._save_position()
        if not entries and block_ms is not None:
            # Wait for the next entry; it is read (and checked) next round.
            await self.redis.xread({stream: position}, count=1, block=block_ms)
        return len(entries)

    async def _save_position(self) -> None:
        """Persist the last id applied. If that fails, this process still knows it; a restart
        before the next save replays some entries, which purges nothing that should stay."""
        try:
            await asyncio.to_thread(self.purger.catalog.set_meta, LAST_ID_META, self._last_id)
            # After the position: a mark older than its position only makes a gap more likely.
            mark = json.dumps(list(self._mark) if self._mark is not None else None)
            await asyncio.to_thread(self.purger.catalog.set_meta, MARK_META, mark)
        except Exception as exc:
            log.warning("could not save the purge stream position %s (%r)", self._last_id, exc)

    async def _apply(self, entry_id: str, raw: dict[Any, Any]) -> None:
        fields = _decoded(raw)
        if fields is None:
            log.warning("ignoring purge stream entry %s: its fields are not UTF-8 text", entry_id)
            return
        if fields.get("from") == self.name:
            return  # applied locally when it was accepted
        try:
            # The same validation as a purge sent to the admin API (PurgeRequestError is a ValueError).
            kind = fields["kind"]
            values = True if kind == "all" else json.loads(fields.get("values", "[]"))
            request = parse_purge_request({kind: values, "soft": fields.get("soft") == "1"})
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("ignoring malformed purge stream entry %s: %s", entry_id, exc)
            return
        await self.purger.purge(request, propagate=False, by=f"purge stream from {fields.get('from', '?')}")
        self.stats.applied_from_stream += 1
        published_ms = int(entry_id.split("-", 1)[0])
        self.stats.stream_lag_ms = max(0.0, time.time() * 1000 - published_ms)


def _gap(
    info: dict[str, Any] | None,
    last_id: str,
    stream: str,
    mark: tuple[int, str] | None = None,
    incarnation: str | None = None,
) -> str | None:
    """Why entries after last_id may be missing from the stream (XINFO STREAM's `info`, None when
    there is no such stream), or None when none can be. `mark`: how many entries the stream had
    had added up to last_id, and its incarnation then; `incarnation`: the stream's now."""
    last = _stream_id(last_id)
    if info is None:
        if last > (0, 0):
            return f"the stream {stream} is gone (Redis restarted empty, or it was deleted)"
        return None
    first = info.get("first-entry")
    length = int(info.get("length", 0))
    # Redis >= 7.0: the newest id XDEL removed (XTRIM does not count) and how many were ever added.
    deleted = _stream_id(str(info.get("max-deleted-entry-id") or "0"))
    added = int(info.get("entries-added") or length)
    if last == (0, 0):  # replaying the whole stream: is it whole?
        return None if added <= length else f"{added - length} of its entries were trimmed or deleted"
    if deleted > last:
        return f"entries after {last_id} were deleted (the newest: {info['max-deleted-entry-id']})"
    newest = _stream_id(str(info.get("last-generated-id") or "0"))
    if newest < last:
        # Not the stream this edge read: one made anew by a Redis whose clock is behind (another
        # host after a failover). Reading after last_id would skip every purge it holds.
        return f"its newest id {info.get('last-generated-id')} is before {last_id} (a new stream)"
    if first is None:
        return f"it is empty, and entries after {last_id} were added" if newest > last else None
    if _stream_id(str(first[0])) > last:
        # Trimmed past last_id, or a stream made anew: every entry up to last_id is gone. When as
        # many entries are gone as were added up to it (none deleted after it, above), the trim
        # ended exactly there and lost nothing, if this is the same stream (its incarnation).
        removed = added - length
        if (
            mark is not None
            and incarnation is not None
            and mark[1] == incarnation
            and "entries-added" in info
            and removed == mark[0]
        ):
            return None
        return f"it starts at {first[0]}, after {last_id} (trimmed, or a new stream)"
    return None


def _mark_after(
    info: dict[str, Any] | None, incarnation: str | None, read: int, before: tuple[int, str] | None
) -> tuple[int, str] | None:
    """The mark (entries added up to the position, incarnation) after reading `read` entries with
    no gap, from the state read with them: a read that reached the stream's end is at the count
    of entries added (none after the position was deleted: that is a gap); a full batch moved the
    position by `read` entries (consecutive: no gap). None when it cannot be known."""
    if info is None or incarnation is None or "entries-added" not in info:
        return None
    if read < BATCH:
        return int(info["entries-added"]), incarnation
    if before is not None and before[1] == incarnation:
        return before[0] + read, incarnation
    return None


def _saved_mark(saved: str | None) -> tuple[int, str] | None:
    try:
        value = json.loads(saved) if saved else None
        if value is None:
            return None
        count, incarnation = value
        if isinstance(count, int) and isinstance(incarnation, str):
            return count, incarnation
    except (ValueError, TypeError):
        pass
    log.warning("ignoring the saved purge stream mark %r", saved)
    return None


def _stream_id(value: str) -> tuple[int, int]:
    """A stream entry id ("1700000000000-3", or "0") as a pair that compares in stream order."""
    ms, _, seq = value.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


def _text(value: object) -> str | None:
    """A field as text, or None when it is not UTF-8: bytes (a client that does not decode) or a
    str with lone surrogates (one that decodes with errors="surrogateescape", edge/node.py)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return value
    return None


def _decoded(fields: dict[Any, Any]) -> dict[str, str] | None:
    """A stream entry's fields as text, or None when any name or value is not UTF-8."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        text_name, text_value = _text(name), _text(value)
        if text_name is None or text_value is None:
            return None
        out[text_name] = text_value
    return out


def _saved_outbox(saved: str | None) -> tuple[list[Any], list[PurgeRequest]]:
    """A saved outbox row: the rows as stored, and the purges among them that parse."""
    try:
        rows = json.loads(saved) if saved else []
        if not isinstance(rows, list):
            raise ValueError("not a list")
    except ValueError as exc:
        log.warning("ignoring the saved purge outbox (%s)", exc)
        return [], []
    loaded = []
    for row in rows:
        try:
            kind = row["kind"]
            loaded.append(
                parse_purge_request({kind: True if kind == "all" else row["values"], "soft": row["soft"]})
            )
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring a purge in the saved outbox: %r (%s)", row, exc)
    return rows, loaded
