"""Carrying out purges and invalidations across both tiers and every worker of a node.

A purge resolves to keys through the catalogue, is written to the purge log
(which gives it an epoch), deletes (hard) or marks stale (soft) those keys in
L1 and L2, and advances the node's shared epoch counter. Each worker compares
that counter with the epoch it last applied on every request and, when behind,
applies the log to its own L1.

Copies can still exist that the eager pass could not reach: a fetch that was
in flight, a queued L2 write, another worker's L2 read, a catalogue row not
written yet. Every stored response carries the epoch current when it was
fetched, so for a while after a purge (`BAN_SECONDS`) a copy older than a purge
covering it (by key, URL, prefix, tag or everything: proxy.bans) is treated as
purged wherever it turns up ("bans", after Varnish). The log carries what each
purge named, so every worker of the box screens the same way.

Catalogue rows are queued by `record` (never awaited by a request) and written
in batches by a background task (`_write_rows`), one transaction per batch. A
purge consults the rows not written yet; a batch reads, in its transaction,
the purges logged since its worker last looked, and purges through the log
whatever copy a purge covers instead of listing it (proxy.storage.catalog).
A copy's L2 write waits for its row (`rows_written`): a worker killed between
the two leaves a row without a copy, never a copy that no purge can find.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from yarl import URL

from proxy import policy
from proxy.bans import Ban, Bans, matches
from proxy.entry import CachedResource, StoredResponse
from proxy.keys import UrlKeys
from proxy.purge import PurgeRequest
from proxy.storage.catalog import Catalog, CatalogRow, PurgeMatch, PurgeRecord, RowVerdict, split_key
from proxy.storage.disk import failure_of
from proxy.storage.epoch import EpochCounter
from proxy.storage.tiered import TieredStorage
from proxy.warn import RateLimitedWarning

log = logging.getLogger("proxy.purge")

# How long a purge keeps screening late copies (in-flight fetches, queued writes).
BAN_SECONDS = 600.0
# Prune catalogue rows of evicted entries after this many records.
PRUNE_EVERY = 10_000
# Catalogue rows written per transaction, and queued at most (beyond it a store is undone).
ROW_BATCH = 1_000
ROW_QUEUE_LIMIT = 100_000
# While the disk is full (or the catalogue locked), its queued rows are tried again this often (_write_rows).
FULL_RETRY_SECONDS = 5.0


# Told of each purge this node accepted: None once it passed the purge on, else why it has not (yet).
PurgeListener = Callable[[PurgeRequest], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class PurgeResult:
    keys: int  # keys the purge covered
    epoch: int
    # Set when the purge could not be logged (a full disk): it was carried out on this worker only;
    # or when a listener could not pass it on for sure (edge/fanout.py: not published nor kept).
    warning: str | None = None
    # Whether the listeners passed it on (an edge: published to the other edges); None without any.
    propagated: bool | None = None

    def answer(self) -> dict[str, object]:
        """What a purge's answer says of it (the admin API, the PURGE method)."""
        out: dict[str, object] = {"purged": self.keys, "epoch": self.epoch}
        if self.propagated is not None:
            out["propagated"] = self.propagated  # an edge: published to the other edges
        if self.warning is not None:
            out["warning"] = self.warning  # done on this worker only, or not passed on (yet)
        return out


@dataclass(slots=True)
class PurgeStats:
    purges: int = 0
    by_kind: dict[str, int] = field(
        default_factory=dict
    )  # url, prefix, tag, all; invalidation (§4.4), slices
    keys_purged: int = 0
    applied_from_log: int = 0  # other workers' purges applied to this worker's L1
    screened: int = 0  # late copies caught by a ban
    late_copies: int = 0  # keys a batch of catalogue rows found covered by a purge, purged through the log
    bans: int = 0  # bans held now (keys, tags, URLs, prefixes, everything)
    bans_dropped: int = 0  # bans let go early because their kind was at its bound
    catalog_batches: int = 0  # transactions of the catalogue writer
    catalog_rows: int = 0  # rows it wrote
    catalog_pending: int = 0  # rows queued, not written yet
    catalog_failed: int = 0  # rows a failed batch could not write (their entries were removed)
    catalog_full: int = 0  # batches a full disk or a lock refused (their rows wait, their entries stay)
    catalog_dropped: int = 0  # stores undone because the row queue was full


class Purger:
    """Purge, invalidate and catalogue entries for one worker."""

    def __init__(
        self,
        storage: TieredStorage,
        catalog: Catalog,
        epoch: EpochCounter,
        url_keys: UrlKeys,
        clock: Callable[[], float],
    ) -> None:
        self.storage = storage
        self.catalog = catalog
        self.epoch = epoch
        # How requests are keyed (Fetcher.key_for): the URLs a purge names are keyed the same way.
        self.url_keys = url_keys
        self.clock = clock
        self.stats = PurgeStats()
        self.bans = Bans()
        self.applied = catalog.last_epoch()
        epoch.advance_to(self.applied)
        self._records = 0
        self._sync_lock = asyncio.Lock()
        self._full_retry: asyncio.TimerHandle | None = None  # set while the disk is full
        # Catalogue rows not written yet (None: forget the key), oldest first, and the batch in flight.
        self._rows: dict[str, CatalogRow | None] = {}
        self._batch: asyncio.Future[None] | None = None
        self._batch_keys: set[str] = set()
        self._batch_over: asyncio.Future[None] | None = None  # the end of the next batch, when awaited
        self._writer: asyncio.Task[None] | None = None
        self._warn = RateLimitedWarning(log)
        self._ban_timer: asyncio.TimerHandle | None = None
        storage.write_failed_listeners.append(self.forget)
        storage.write_queue.before_write = self.rows_written
        # Called with each purge this node accepted (not with purges received from peers); each
        # returns None once it passed the purge on, else why it has not (yet): the purge's answer.
        self.listeners: list[PurgeListener] = []
        # Told of each purge this worker carried out without the log (a full disk), for the box's
        # other workers (proxy/worker.py passes it on through the supervisor); None: no box.
        self.on_unlogged: Callable[[PurgeRequest], None] | None = None
        self._load_recent_bans()

    # ------------------------------------------------------------ hit path

    def current_epoch(self) -> int:
        return self.epoch.read()

    def behind(self) -> bool:
        """Has another worker purged since this one last looked? (one memory read)"""
        return self.epoch.read() != self.applied

    def screen(self, resource: CachedResource) -> CachedResource | None:
        """The resource without variants a purge made invalid (soft: made stale)."""
        screened = self.bans.screen(resource)
        if screened is not resource:
            self.stats.screened += 1
        return screened

    async def ban_of(self, key: str, copy: StoredResponse) -> Ban | None:
        """The purge that decides `copy` of `key` (None: no purge covers it), every worker's
        purges applied first: for a copy found after a wait, which may have begun before a purge."""
        if self.behind():
            await self.sync()
        return self.bans.covering(key, copy.fetch_epoch, copy.tags) if self.bans else None

    async def sync(self) -> None:
        """Apply purges other workers logged since this worker last looked, to its L1."""
        async with self._sync_lock:
            if not self.behind():
                return
            records = await asyncio.to_thread(self.catalog.purges_since, self.applied)
            l1 = self.storage.l1
            if records is None:
                # Too far behind for the log: forget everything this worker holds in memory.
                if l1 is not None:
                    l1.clear()
                self.applied = await asyncio.to_thread(self.catalog.last_epoch)
                return
            for record in records:
                self._ban(record)
                if l1 is not None:
                    _apply_to_memory(l1, record)
                self.applied = max(self.applied, record.epoch)
                self.stats.applied_from_log += 1

    # --------------------------------------------------------------- purge

    async def purge(
        self, request: PurgeRequest, *, propagate: bool = True, by: str = "?", from_box: bool = False
    ) -> PurgeResult:
        """Carry out a purge; returns how many keys it covered on this node.

        With `propagate`, the listeners hear of it afterwards (an edge cluster
        fans it out to the other edges); a purge received from the cluster is
        applied with propagate=False. A listener's failure never fails the
        local purge: the result says it (`propagated` false, and why in
        `warning`), so the purge's answer does not claim a fan-out that did not
        happen. `by` says who asked, for the log line.
        A purge the log refuses is passed to the box's other workers
        (`on_unlogged`), unless it came from one of them (`from_box`).
        """
        await self.sync()
        match = self._match(request)
        try:
            result = await self._purge_keys(None if match is None else [], request.soft, match)
        except (sqlite3.Error, OSError) as exc:  # the log could not be written (a full disk): purge here
            result = await self._purge_unlogged(request.soft, match, exc)
            if self.on_unlogged is not None and not from_box:
                self.on_unlogged(request)
                warning = f"{result.warning}; the other workers of this node were told (in memory only)"
                result = replace(result, warning=warning)
        self._count(request.kind)
        log.info(
            "purge %s %s by %s: %s keys (epoch %d)",
            "soft" if request.soft else "hard",
            describe(request),
            by,
            "all" if result.keys < 0 else result.keys,
            result.epoch,
        )
        if propagate and self.listeners:
            unsent = [why for listener in self.listeners if (why := await _pass_on(listener, request))]
            warnings = [w for w in (result.warning, *unsent) if w]
            result = replace(result, warning="; ".join(warnings) or None, propagated=not unsent)
        return result

    async def invalidate(
        self, keys: list[str], kind: str = "invalidation", why: str = "by an unsafe request (RFC 9111 4.4)"
    ) -> None:
        """A hard purge of those keys on the request path: RFC 9111 §4.4 invalidation after an unsafe
        method, or (kind "slices") the slices of a large object whose origin changed it or stopped
        slicing it (proxy/slicer.py). `kind` is what /metrics counts it as, `why` what the log says.

        It runs on a client's request: if the purge cannot be logged (a full
        disk), it is carried out as a purge of those keys' URLs that was not
        logged (_purge_unlogged: a ban for what L2 could not delete), the box's
        other workers are told (`on_unlogged`), and the client still gets the
        origin's answer.
        """
        self._count(kind)
        try:
            result = await self._purge_keys(keys, soft=False)
        except Exception as exc:
            self._warn(
                "invalidating %d keys could not be logged (%r); purged without the log", len(keys), exc
            )
            urls = tuple(dict.fromkeys(split_key(k)[0] for k in keys))
            await self._purge_unlogged(False, PurgeMatch(urls=urls), exc, report=False)
            await self.storage.adelete_many(keys)  # and the keys themselves, whatever URL they spell
            if self.on_unlogged is not None and urls:
                self.on_unlogged(PurgeRequest("url", urls))
            return
        log.info(
            "purge hard keys %s %s: %d keys (epoch %d)",
            _listed([split_key(k)[0] for k in keys]),
            why,
            result.keys,
            result.epoch,
        )

    def _count(self, kind: str) -> None:
        self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1

    async def _purge_keys(
        self, keys: list[str] | None, soft: bool, match: PurgeMatch | None = None, ban_epoch: int = 0
    ) -> PurgeResult:
        """Log a purge of keys (None: everything) and what `match` finds, then apply it here."""
        if keys is not None and match is not None:
            # The rows of the batch being written are in the catalogue once it is over;
            # the rows still queued are looked at here.
            await self._batch_written()
            keys = keys + [k for k, row in self._rows.items() if row is not None and _row_matches(row, match)]
        now = self.clock()
        epoch, found = await asyncio.to_thread(self.catalog.log_purge, keys, match, soft, now, ban_epoch)
        everything = keys is None
        record = PurgeRecord(epoch, now, soft, everything, tuple(found), *_match_fields(match), ban_epoch)
        self._ban(record)
        if everything:
            await self._purge_everything(soft, now)
        elif ban_epoch:
            await self._drop_older_copies(found, record)
        elif soft:
            await self._soften(found, now)
        else:
            for key in found:
                self._rows.pop(key, None)
            await self.storage.adelete_many(found)
            await asyncio.to_thread(self.catalog.forget, found)
        self.epoch.advance_to(epoch)
        # `applied` means every purge up to it is applied here. Another worker's purge logged since
        # this one last looked (between its sync and this log, or with no sync at all: an invalidation,
        # late copies) sits below `epoch` and is not applied yet: moved past it, no sync would ever
        # bring it, and this worker's L1 would serve what it purged. Then the next request syncs it
        # (and this purge once more: applying a purge twice purges nothing that should stay).
        if self.applied == epoch - 1:
            self.applied = epoch
        self.stats.purges += 1
        count = len(found) if not everything else -1
        self.stats.keys_purged += max(count, 0)
        return PurgeResult(count, epoch)

    async def _purge_unlogged(
        self, soft: bool, match: PurgeMatch | None, exc: Exception, *, report: bool = True
    ) -> PurgeResult:
        """A purge the log refused (a full disk): this worker's copies go (L1, and L2 where it can).

        The keys come from the catalogue's reads and the rows not written yet.
        A ban screens what is left here (an L2 delete fails on a full disk too)
        for BAN_SECONDS; with no epoch of its own it covers copies fetched
        before it and, until the next purge that is logged, also the ones
        fetched since: what it names is not cached here meanwhile (for
        everything: this worker caches nothing). The other workers do not hear of it.
        """
        now = self.clock()
        warning = f"the purge log could not be written ({exc!r}): purged on this worker only"
        if report:  # (an invalidation, on a client's request, says so rate-limited instead)
            log.error("purge: %s", warning)
        keys: list[str] | None = None
        if match is not None:
            found: dict[str, None] = {}
            try:
                found.update(dict.fromkeys(await asyncio.to_thread(self._keys_for, match)))
            except Exception as read_exc:
                warning += f"; the catalogue could not be read either ({read_exc!r})"
            found.update(
                (k, None) for k, row in self._rows.items() if row is not None and _row_matches(row, match)
            )
            keys = list(found)
        epoch = self.epoch.read() + 1
        self._ban(PurgeRecord(epoch, now, soft, keys is None, tuple(keys or ()), *_match_fields(match)))
        if keys is None:
            await self._purge_everything(soft, now, forget=False)
        elif soft:
            await self._soften(keys, now)
        else:
            await self.storage.adelete_many(keys)
        self.stats.purges += 1
        self.stats.keys_purged += len(keys or ())
        return PurgeResult(-1 if keys is None else len(keys), self.applied, warning)

    def _keys_for(self, match: PurgeMatch) -> list[str]:
        """What log_purge would find for match, read without a transaction (any thread)."""
        keys = self.catalog.keys_for_tags(match.tags) if match.tags else []
        for url in match.urls:
            keys += self.catalog.keys_for_url(url)
        for prefix in match.prefixes:
            keys += self.catalog.keys_for_prefix(prefix)
        return keys

    async def _purge_everything(self, soft: bool, now: float, *, forget: bool = True) -> None:
        if soft:
            keys = await asyncio.to_thread(self.catalog.all_keys)
            listed = set(keys)  # and the rows not written yet
            keys += [k for k, row in self._rows.items() if row is not None and k not in listed]
            await self._soften(keys, now)
            return
        self._rows.clear()
        await self.storage.aclear()
        if forget:
            await asyncio.to_thread(self.catalog.forget_all)

    async def _soften(self, keys: list[str], now: float) -> None:
        """Mark each stored copy stale as of now, in both tiers.

        On disk before the purge is acknowledged: the worker may be killed right after, and the
        L2 writes it queued go with it; L2 would keep the copy as it was, screened only for as long
        as the purge's ban is held.
        """
        for key in keys:
            resource, _ = await self.storage.aget(key)
            if resource is None:
                continue
            softened = tuple(policy.soft_purged(v, now) for v in resource.variants)
            if not await self.storage.aset(replace(resource, variants=softened)):
                # Not stored (the L2 write queue is full): both tiers keep the copy as it was,
                # fresh once the ban is let go. Removed instead, which a soft purge allows too.
                await self.storage.adelete(key)
        await self.storage.written(keys)

    def _match(self, request: PurgeRequest) -> PurgeMatch | None:
        """What the purge names, spelled as the catalogue's columns (None: everything)."""
        if request.kind == "all":
            return None
        if request.kind == "tag":
            return PurgeMatch(tags=tuple(dict.fromkeys(request.values)))
        if request.kind == "url":
            urls = (url for value in request.values for url in self._normalise(value))
            return PurgeMatch(urls=tuple(dict.fromkeys(urls)))
        return PurgeMatch(prefixes=tuple(dict.fromkeys(self._normalise_prefix(v) for v in request.values)))

    def _normalise(self, value: str) -> tuple[str, ...]:
        """A URL as the catalogue spells it: the key a request for it gets (UrlKeys), without its namespace.

        An absolute URL: one URL (host lower-cased, default port dropped, the query as keys.* and
        the rules that match the URL make it). A path ("/a?b=1", every host): the path and query
        as each key config a host can give that path spells them.
        """
        if value.startswith("/"):
            return self.url_keys.targets(value)
        url = URL(value, encoded=True)
        key = self.url_keys.key(url.scheme, url.raw_authority, url.raw_path, url.raw_query_string)
        return (split_key(key)[0],)

    def _normalise_prefix(self, value: str) -> str:
        """A prefix as the catalogue spells it: an absolute one's scheme and host as keys spell them
        (the rest, which may stop anywhere, as given); a path prefix as given."""
        if value.startswith("/"):
            return value
        url = URL(value, encoded=True)
        key = self.url_keys.key(url.scheme, url.raw_authority, "/", "")
        base = split_key(key)[0].rstrip("/")
        rest = value.split("://", 1)[1]
        slash = rest.find("/")
        return base + (rest[slash:] if slash >= 0 else "")

    # -------------------------------------------------------------- catalogue

    def record(self, resource: CachedResource) -> bool:
        """Queue the catalogue row of a stored resource (its URL and tags); never waits.

        The row is written by the background writer, in a batch. When the queue
        is full (the catalogue's disk is stalled) the store is undone instead:
        an entry no purge could find must not be served. False then.
        """
        key = resource.key
        if len(self._rows) >= ROW_QUEUE_LIMIT and key not in self._rows:
            self.stats.catalog_dropped += 1
            self._warn("catalogue: %d rows waiting to be written; not storing %r", len(self._rows), key)
            self.storage.unstore(key)
            return False
        variants = resource.variants
        if len(variants) == 1:  # the common case, without the generic loops
            v = variants[0]
            tags = tuple(sorted(set(v.tags))) if v.tags else ()
            epochs: tuple[tuple[int, tuple[str, ...]], ...] = ((v.fetch_epoch, v.tags),)
        else:
            tags = tuple(sorted({t for v in variants for t in v.tags}))
            epochs = tuple((v.fetch_epoch, v.tags) for v in variants)
        self._rows.pop(key, None)  # the newest row of a key is the youngest entry
        self._rows[key] = CatalogRow(key, tags, resource.size(), self.clock(), epochs)
        self._records += 1
        if self._writer is None or self._writer.done():
            self._wake_writer()
        return True

    def forget(self, keys: list[str]) -> None:
        """Queue the removal of keys' rows (their entries are gone, e.g. an L2 write failed)."""
        for key in keys:
            self._rows.pop(key, None)
            self._rows[key] = None
        if keys:
            self._wake_writer()

    async def flush_rows(self) -> None:
        """Return once every row queued so far (and meanwhile) is written (or failed), or the disk is
        full (then they wait: see _write_rows)."""
        while (self._rows or self._batch is not None) and self._full_retry is None:
            self._wake_writer()
            assert self._writer is not None
            await asyncio.wait([self._writer])

    async def rows_written(self, keys: list[str]) -> None:
        """Return once the catalogue rows queued for keys are written (or failed), or the disk is full.

        L2 writes wait for it (WriteBehind.before_write): a worker killed between a copy's two
        writes then leaves a row without a copy (pruned), never a copy on disk that no purge by
        URL, prefix or tag can find.
        """
        while self._full_retry is None and any(k in self._rows or k in self._batch_keys for k in keys):
            if self._batch_over is None:
                self._batch_over = asyncio.get_running_loop().create_future()
            over = self._batch_over
            self._wake_writer()
            await asyncio.shield(over)

    async def _batch_written(self) -> None:
        """Return once the batch being written, if any, is over."""
        if self._batch is not None:
            await asyncio.shield(self._batch)

    async def close(self) -> None:
        """Write the rows still queued, then stop the writer (at shutdown, before the catalogue closes)."""
        if self._ban_timer is not None:
            self._ban_timer.cancel()
            self._ban_timer = None
        try:
            await self.flush_rows()
        finally:
            if self._writer is not None and not self._writer.done():
                self._writer.cancel()
            if self._full_retry is not None:
                self._full_retry.cancel()
                self._full_retry = None
        if self._rows:
            # The disk stayed full: no row means no purge finds these entries after a restart, so
            # they go (L1 goes with the process; an L2 copy, if one was written, must not stay).
            keys = [k for k, row in self._rows.items() if row is not None]
            log.warning(
                "catalogue: %d rows not written at shutdown (the disk is full): dropping their entries",
                len(keys),
            )
            self._rows.clear()
            await self.storage.adelete_many(keys)

    def _wake_writer(self) -> None:
        if self._full_retry is not None:
            return  # waiting for room on the disk
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_rows(), name="catalogue-writer")

    async def _write_rows(self) -> None:
        """Write queued rows in batches, each screened against the purges it may have missed."""
        while self._rows:
            keys = list(itertools.islice(self._rows, ROW_BATCH))
            batch = {k: self._rows.pop(k) for k in keys}
            done = self._batch = asyncio.get_running_loop().create_future()
            self._batch_keys = set(keys)
            self.stats.catalog_pending = len(self._rows)
            rows = [row for row in batch.values() if row is not None]
            forget = [k for k, row in batch.items() if row is None]
            covered: dict[str, RowVerdict] = {}
            if self.bans:  # purges this worker already knows of
                for row in rows:
                    ban = self.bans.covers_row(row.key, row.variants)
                    if ban is not None:
                        covered[row.key] = ban
            writing = [row for row in rows if row.key not in covered or covered[row.key].soft]
            try:
                records, more = await asyncio.to_thread(
                    self.catalog.write_rows, writing, forget, self.applied, _screen_row
                )
            except Exception as exc:
                failure = failure_of(exc)
                if failure in ("no_space", "timeout"):
                    # A full disk fails every batch until room is made, a lock held by another
                    # process until it is let go: the rows wait (a purge finds them among the
                    # queued rows) and their entries stay, or the cache would pass every request
                    # to the origin meanwhile. Tried again later; ROW_QUEUE_LIMIT bounds what
                    # waits (record() refuses more).
                    self._rows_wait(
                        batch, exc, "the disk is full" if failure == "no_space" else "it is locked"
                    )
                    break
                await self._rows_failed(rows, exc)  # an I/O error: those entries cannot be stored
                continue
            finally:
                self._batch = None
                self._batch_keys = set()
                done.set_result(None)
                over, self._batch_over = self._batch_over, None
                if over is not None:
                    over.set_result(None)
            self.stats.catalog_batches += 1
            self.stats.catalog_rows += len(writing) - sum(not v.soft for v in more.values())
            for record in records:
                self._ban(record)  # sync() applies them to L1 as well
            covered.update(more)
            await self._purge_late_copies(covered)
            if self._records >= PRUNE_EVERY:
                self._records = 0
                try:
                    await asyncio.to_thread(self.catalog.prune, self._exists)
                except Exception as exc:  # rows of evicted entries stay a while longer: harmless
                    self._warn("catalogue: pruning failed (%r)", exc)
        self.stats.catalog_pending = 0

    async def _purge_late_copies(self, covered: dict[str, RowVerdict]) -> None:
        """Copies a purge covers that it could not find: purged through the log, for every worker.

        Each such purge covers what the purge that caught it covered (copies
        fetched before that purge), not the copies fetched since, which are
        current: a hot key is not purged over and over.
        """
        groups: dict[tuple[bool, int], list[str]] = {}
        for key, ban in covered.items():
            groups.setdefault((ban.soft, ban.epoch), []).append(key)
        for (soft, ban_epoch), keys in groups.items():
            self.stats.late_copies += len(keys)
            try:
                result = await self._purge_keys(keys, soft, ban_epoch=ban_epoch)
            except Exception as exc:
                log.error("purging %d late copies failed: %r", len(keys), exc)
                continue
            log.info(
                "purge %s keys %s: late copies of what the purge of epoch %d covered: %d keys (epoch %d)",
                "soft" if soft else "hard",
                _listed([split_key(k)[0] for k in keys]),
                ban_epoch,
                result.keys,
                result.epoch,
            )

    async def _drop_older_copies(self, keys: list[str], record: PurgeRecord) -> None:
        """A purge of late copies: only what it covers goes (or, soft, is marked stale), in both tiers."""
        bans = Bans()
        bans.add(record)
        gone = []
        for key in keys:
            resource, _ = await self.storage.aget(key)
            if resource is None:
                continue
            screened = bans.screen(resource)
            if screened is None:
                gone.append(key)
            elif screened is not resource:
                await self.storage.aset(screened)
        for key in gone:
            self._rows.pop(key, None)
        await self.storage.adelete_many(gone)
        await asyncio.to_thread(self.catalog.forget, gone)

    def _rows_wait(self, batch: dict[str, CatalogRow | None], exc: Exception, why: str) -> None:
        """Put a batch the full disk (or a lock) refused back in the queue (behind newer rows of its keys)."""
        self.stats.catalog_full += 1
        for key, row in batch.items():
            self._rows.setdefault(key, row)
        self.stats.catalog_pending = len(self._rows)
        self._warn(
            "catalogue: %s (%r); %d rows wait to be written, their entries stay in memory",
            why,
            exc,
            len(self._rows),
        )

        def retry() -> None:
            self._full_retry = None
            self._wake_writer()

        self._full_retry = asyncio.get_running_loop().call_later(FULL_RETRY_SECONDS, retry)

    async def _rows_failed(self, rows: list[CatalogRow], exc: Exception) -> None:
        self.stats.catalog_failed += len(rows)
        self._warn("catalogue: writing %d rows failed (%r); their entries are not kept", len(rows), exc)
        if rows:
            await self.storage.adelete_many([row.key for row in rows])

    def _exists(self, key: str) -> bool:
        # Any tier, the write-behind queue included: an entry whose L2 copy is still
        # queued must keep its row, or a purge by tag would miss it. (Called from a
        # worker thread; membership reads of L1's dict and the queue are safe there.)
        return key in self.storage or key in self._rows

    async def inspect(self, *, prefix: str | None, tag: str | None, limit: int) -> list[dict[str, Any]]:
        """Stored entries by URL/path prefix or tag, with per-variant size, age, ttl and tier."""
        await self._batch_written()
        if tag is not None:
            match: PurgeMatch | None = PurgeMatch(tags=(tag,))
            keys = await asyncio.to_thread(self.catalog.keys_for_tags, [tag])
        elif prefix is not None:
            match = PurgeMatch(prefixes=(self._normalise_prefix(prefix),))
            keys = await asyncio.to_thread(self.catalog.keys_for_prefix, self._normalise_prefix(prefix))
        else:
            match = None
            keys = await asyncio.to_thread(self.catalog.all_keys)
        listed = set(keys)  # and the rows not written yet
        keys += [
            k
            for k, row in self._rows.items()
            if row is not None and k not in listed and (match is None or _row_matches(row, match))
        ]
        now = self.clock()
        out: list[dict[str, Any]] = []
        for key in keys:
            if len(out) >= limit:
                break
            resource, tier = await self.storage.aget(key)
            if resource is not None:
                resource = self.screen(resource)
            if resource is None:
                continue
            out.append(
                {
                    "key": key,
                    "url": split_key(key)[0],
                    "tier": tier,
                    "size": resource.size(),
                    "variants": [
                        {
                            "status": v.status,
                            "vary": dict(zip(v.vary_names, v.vary_values, strict=True)),
                            "size": v.size(),
                            "age": int(policy.current_age(v, now)),
                            "ttl": int(policy.remaining_ttl(v, now)),
                            "tags": list(v.tags),
                            "etag": v.etag,
                        }
                        for v in resource.variants
                    ],
                }
            )
        return out

    # ------------------------------------------------------------------ bans

    def _ban(self, record: PurgeRecord) -> None:
        self.bans.add(record)
        self._expire_bans(record.at)

    def _expire_bans(self, now: float) -> None:
        """Let go of bans older than BAN_SECONDS; while some are held, look again after that long."""
        self.bans.expire(now - BAN_SECONDS)
        self.stats.bans = len(self.bans)
        self.stats.bans_dropped = self.bans.dropped
        if self.bans and self._ban_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # at construction: the first purge on the loop schedules it
            # Hits on copies older than a ban are screened while it is held: do not hold it for ever.
            self._ban_timer = loop.call_later(BAN_SECONDS, self._ban_timer_fired)

    def _ban_timer_fired(self) -> None:
        self._ban_timer = None
        self._expire_bans(self.clock())

    def _load_recent_bans(self) -> None:
        for record in self.catalog.recent_purges(self.clock() - BAN_SECONDS):
            self._ban(record)


def _match_fields(match: PurgeMatch | None) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    return ((), (), ()) if match is None else (match.tags, match.urls, match.prefixes)


def _row_matches(row: CatalogRow, match: PurgeMatch) -> bool:
    return matches(row.key, row.tags, want_tags=match.tags, urls=match.urls, prefixes=match.prefixes)


def _screen_row(records: list[PurgeRecord]) -> Callable[[CatalogRow], RowVerdict | None]:
    """Catalog.write_rows' screen: is a row covered by one of the purges it missed? (any thread)"""
    bans = Bans()
    for record in records:
        bans.add(record)
    return lambda row: bans.covers_row(row.key, row.variants)


def describe(request: PurgeRequest) -> str:
    """What a purge names, for a log line: `url /a,/b`, `tag x`, `all` (a long list shortened)."""
    if request.kind == "all":
        return "all"
    return f"{request.kind} {_listed(request.values)}"


def _listed(values: list[str] | tuple[str, ...], most: int = 5, longest: int = 200) -> str:
    """The first `most` values, each cut at `longest` characters: a purge body of 1 MiB (one URL
    of a million characters) was written whole into the log line, on each of the box's workers."""
    shown = ",".join(
        v if len(v) <= longest else f"{v[:longest]}...(+{len(v) - longest})" for v in values[:most]
    )
    return f"{shown} (+{len(values) - most} more)" if len(values) > most else shown


def _apply_to_memory(l1: Any, record: PurgeRecord) -> None:
    """Apply another worker's purge to this worker's L1 (L2 was handled by the purger)."""
    if record.everything and not record.soft:
        l1.clear()
        return
    if record.ban_epoch:
        # Late copies: only those fetched before the purge that caught them go.
        bans = Bans()
        bans.add(record)
        for key in record.keys:
            resource = l1.peek(key)
            if resource is not None:
                screened = bans.screen(resource)
                if screened is None:
                    l1.delete(key)
                elif screened is not resource:
                    l1.set(screened)
        return
    keys = list(l1.keys()) if record.everything else record.keys
    for key in keys:
        if not record.soft:
            l1.delete(key)
            continue
        resource = l1.peek(key)
        if resource is not None:
            softened = tuple(policy.soft_purged(v, record.at) for v in resource.variants)
            l1.set(replace(resource, variants=softened))


async def _pass_on(listener: PurgeListener, request: PurgeRequest) -> str | None:
    """Tell a listener of a purge: None when it passed the purge on, else why it has not."""
    try:
        return await listener(request)
    except Exception as exc:
        log.exception("purge listener failed; the local purge stands")
        return f"passing the purge on failed ({exc!r})"
