"""Carrying out purges and invalidations across both tiers and every worker of a node.

A purge resolves to keys through the catalogue, is written to the purge log
(which gives it an epoch), deletes (hard) or marks stale (soft) those keys in
L1 and L2, and advances the node's shared epoch counter. Each worker compares
that counter with the epoch it last applied on every request and, when behind,
applies the log to its own L1.

Copies can still exist that the eager pass could not reach: a fetch that was
in flight, a queued L2 write, another worker's L2 read. Every stored response
carries the epoch current when it was fetched, so for a while after a purge
(`BAN_SECONDS`) a copy older than the purge covering its key is treated as
purged wherever it turns up ("bans", after Varnish).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from yarl import URL

from proxy import policy
from proxy.config import KeyConfig
from proxy.entry import CachedResource
from proxy.keys import primary_key
from proxy.purge import PurgeRequest
from proxy.storage.catalog import Catalog, PurgeRecord, split_key
from proxy.storage.epoch import EpochCounter
from proxy.storage.tiered import TieredStorage

log = logging.getLogger("proxy.purge")

# How long a purge keeps screening late copies (in-flight fetches, queued writes).
BAN_SECONDS = 600.0
# Prune catalogue rows of evicted entries after this many records.
PRUNE_EVERY = 10_000


@dataclass(frozen=True, slots=True)
class Ban:
    epoch: int
    at: float
    soft: bool


@dataclass(frozen=True, slots=True)
class PurgeResult:
    keys: int  # keys the purge covered
    epoch: int


@dataclass(slots=True)
class PurgeStats:
    purges: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)  # url, prefix, tag, all; invalidation (§4.4)
    keys_purged: int = 0
    applied_from_log: int = 0  # other workers' purges applied to this worker's L1
    screened: int = 0  # late copies caught by a ban


class Purger:
    """Purge, invalidate and catalogue entries for one worker."""

    def __init__(
        self,
        storage: TieredStorage,
        catalog: Catalog,
        epoch: EpochCounter,
        keys_cfg: KeyConfig,
        clock: Callable[[], float],
        key_host: Callable[[str], str] = lambda host: host,
    ) -> None:
        self.storage = storage
        self.catalog = catalog
        self.epoch = epoch
        self.keys_cfg = keys_cfg
        # The host cache keys use for a URL's host (see Fetcher.key_host).
        self.key_host = key_host
        self.clock = clock
        self.stats = PurgeStats()
        self.bans: dict[str, Ban] = {}
        self.ban_all: Ban | None = None
        self.applied = catalog.last_epoch()
        epoch.advance_to(self.applied)
        self._records = 0
        self._sync_lock = asyncio.Lock()
        # Called with each purge this node accepted (not with purges received from peers).
        self.listeners: list[Callable[[PurgeRequest], Awaitable[None]]] = []
        self._load_recent_bans()

    # ------------------------------------------------------------ hit path

    def current_epoch(self) -> int:
        return self.epoch.read()

    def behind(self) -> bool:
        """Has another worker purged since this one last looked? (one memory read)"""
        return self.epoch.read() != self.applied

    def screen(self, resource: CachedResource) -> CachedResource | None:
        """The resource without variants a purge made invalid (soft: made stale)."""
        ban = self.bans.get(resource.key)
        if self.ban_all is not None and (ban is None or self.ban_all.epoch > ban.epoch):
            ban = self.ban_all
        if ban is None:
            return resource
        kept = []
        changed = False
        for v in resource.variants:
            if v.fetch_epoch >= ban.epoch:
                kept.append(v)
            elif ban.soft:
                soft = policy.soft_purged(v, ban.at)
                changed |= soft is not v
                kept.append(soft)
            else:
                changed = True
        if not changed:
            return resource
        self.stats.screened += 1
        return replace(resource, variants=tuple(kept)) if kept else None

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

    async def purge(self, request: PurgeRequest, *, propagate: bool = True, by: str = "?") -> PurgeResult:
        """Carry out a purge; returns how many keys it covered on this node.

        With `propagate`, the listeners hear of it afterwards (an edge cluster
        fans it out to the other edges); a purge received from the cluster is
        applied with propagate=False. A listener's failure never fails the
        local purge. `by` says who asked, for the log line.
        """
        await self.sync()
        keys = await asyncio.to_thread(self._resolve, request)
        result = await self._purge_keys(keys, request.soft)
        self._count(request.kind)
        log.info(
            "purge %s %s by %s: %s keys (epoch %d)",
            "soft" if request.soft else "hard",
            describe(request),
            by,
            "all" if result.keys < 0 else result.keys,
            result.epoch,
        )
        if propagate:
            for listener in self.listeners:
                try:
                    await listener(request)
                except Exception:
                    log.exception("purge listener failed; the local purge stands")
        return result

    async def invalidate(self, keys: list[str]) -> None:
        """RFC 9111 §4.4 invalidation after an unsafe method: a hard purge of those keys."""
        result = await self._purge_keys(keys, soft=False)
        self._count("invalidation")
        log.info(
            "purge hard keys %s by an unsafe request (RFC 9111 4.4): %d keys (epoch %d)",
            _listed([split_key(k)[0] for k in keys]),
            result.keys,
            result.epoch,
        )

    def _count(self, kind: str) -> None:
        self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + 1

    async def _purge_keys(self, keys: list[str] | None, soft: bool) -> PurgeResult:
        now = self.clock()
        epoch = await asyncio.to_thread(self.catalog.append_purge, keys, soft, now)
        record = PurgeRecord(epoch, now, soft, keys is None, tuple(keys or ()))
        self._ban(record)
        if keys is None:
            await self._purge_everything(soft, now)
        elif soft:
            await self._soften(keys, now)
        else:
            await self.storage.adelete_many(keys)
            await asyncio.to_thread(self.catalog.forget, keys)
        self.epoch.advance_to(epoch)
        self.applied = max(self.applied, epoch)
        self.stats.purges += 1
        count = len(keys) if keys is not None else -1
        self.stats.keys_purged += max(count, 0)
        return PurgeResult(count, epoch)

    async def _purge_everything(self, soft: bool, now: float) -> None:
        if soft:
            keys = await asyncio.to_thread(self.catalog.all_keys)
            await self._soften(keys, now)
            return
        await self.storage.aclear()
        await asyncio.to_thread(self.catalog.forget_all)

    async def _soften(self, keys: list[str], now: float) -> None:
        """Mark each stored copy stale as of now, in both tiers."""
        for key in keys:
            resource, _ = await self.storage.aget(key)
            if resource is None:
                continue
            softened = tuple(policy.soft_purged(v, now) for v in resource.variants)
            await self.storage.aset(replace(resource, variants=softened))

    def _resolve(self, request: PurgeRequest) -> list[str] | None:
        if request.kind == "all":
            return None
        keys: dict[str, None] = {}
        for value in request.values:
            if request.kind == "tag":
                found = self.catalog.keys_for_tags([value])
            elif request.kind == "url":
                found = self.catalog.keys_for_url(self._normalise(value))
            else:
                found = self.catalog.keys_for_prefix(self._normalise_prefix(value))
            keys.update(dict.fromkeys(found))
        return list(keys)

    def _normalise(self, value: str) -> str:
        """An absolute URL as the catalogue spells it (host lower-cased, default port dropped)."""
        if value.startswith("/"):
            return value
        url = URL(value, encoded=True)
        host = self.key_host(url.raw_authority)
        key = primary_key(url.scheme, host, url.raw_path, url.raw_query_string, self.keys_cfg)
        return split_key(key)[0]

    def _normalise_prefix(self, value: str) -> str:
        if value.startswith("/"):
            return value
        url = URL(value, encoded=True)
        key = primary_key(url.scheme, self.key_host(url.raw_authority), "/", "", self.keys_cfg)
        base = split_key(key)[0].rstrip("/")
        rest = value.split("://", 1)[1]
        slash = rest.find("/")
        return base + (rest[slash:] if slash >= 0 else "")

    # -------------------------------------------------------------- catalogue

    async def record(self, resource: CachedResource) -> None:
        """Catalogue a stored resource (its URL and tags) for later purges."""
        tags = sorted({t for v in resource.variants for t in v.tags})
        await asyncio.to_thread(self.catalog.record, resource.key, tags, resource.size(), self.clock())
        self._records += 1
        if self._records % PRUNE_EVERY == 0:
            await asyncio.to_thread(self.catalog.prune, self._exists)

    def _exists(self, key: str) -> bool:
        # Any tier, the write-behind queue included: an entry whose L2 copy is still
        # queued must keep its row, or a purge by tag would miss it. (Called from a
        # worker thread; membership reads of L1's dict and the queue are safe there.)
        return key in self.storage

    async def inspect(self, *, prefix: str | None, tag: str | None, limit: int) -> list[dict[str, Any]]:
        """Stored entries by URL/path prefix or tag, with per-variant size, age, ttl and tier."""
        if tag is not None:
            keys = await asyncio.to_thread(self.catalog.keys_for_tags, [tag])
        elif prefix is not None:
            keys = await asyncio.to_thread(self.catalog.keys_for_prefix, self._normalise_prefix(prefix))
        else:
            keys = await asyncio.to_thread(self.catalog.all_keys)
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
        ban = Ban(record.epoch, record.at, record.soft)
        if record.everything:
            self.ban_all = ban
        else:
            for key in record.keys:
                self.bans[key] = ban
        self._expire_bans(record.at)

    def _expire_bans(self, now: float) -> None:
        horizon = now - BAN_SECONDS
        if self.ban_all is not None and self.ban_all.at < horizon:
            self.ban_all = None
        if self.bans and len(self.bans) % 1024 == 0:
            self.bans = {k: b for k, b in self.bans.items() if b.at >= horizon}

    def _load_recent_bans(self) -> None:
        for record in self.catalog.recent_purges(self.clock() - BAN_SECONDS):
            self._ban(record)


def describe(request: PurgeRequest) -> str:
    """What a purge names, for a log line: `url /a,/b`, `tag x`, `all` (a long list shortened)."""
    if request.kind == "all":
        return "all"
    return f"{request.kind} {_listed(request.values)}"


def _listed(values: list[str] | tuple[str, ...], most: int = 5) -> str:
    shown = ",".join(values[:most])
    return f"{shown} (+{len(values) - most} more)" if len(values) > most else shown


def _apply_to_memory(l1: Any, record: PurgeRecord) -> None:
    """Apply another worker's purge to this worker's L1 (L2 was handled by the purger)."""
    if record.everything and not record.soft:
        l1.clear()
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
