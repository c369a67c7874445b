"""Large objects by slices: answering from the slices, fetching the missing ones (the I/O of proxy/slices.py).

An object longer than cache.slice_threshold is stored as slices, each an
ordinary stored 206 under its own key (slices.slice_key). The engine hands a
request here when the object's key holds a slice (or, for a range request, the
key of the slice holding the range's first byte does), and when its own fetch
has just stored the first slice of an object it did not know was large
(Fetcher._store_first_slice). Then:

- the first slice the answer needs is made usable under the normal rules
  (policy.decide with the request's directives: fresh, revalidated with
  If-None-Match and a Range, or fetched with a Range), and decides the
  representation: its strong ETag and complete length;
- a range within that slice is a Delivery (the hit writer); a 304 and a 416 too;
- anything longer is a Reply whose body streams the slices in order, the next
  one fetched (or read) while the current one is written, so a stream holds at
  most two slices; the front writes it with flow control;
- every slice that joins a response must be of the first one's representation.
  When the origin answers a slice with another ETag or length, the object
  changed: every slice of it is invalidated (a purge of their keys, so every
  worker drops them) and the new slice kept. Before the head is sent the
  answer starts over from the new representation; after, the client's
  connection is aborted (a short response must never look complete);
- an origin that answers a slice's Range with a 200, or with something that
  is no slice any more (no strong ETag, a length under the threshold, not
  storable), ends the slicing of that object: its slices are invalidated and,
  before the head is sent, the engine handles the request as it would without
  slices (passed through).

Slices are fetched once per key at a time in this process (SingleFlight), and
each stored slice is catalogued like any entry, so a purge by URL, prefix or
tag finds them all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import NoReturn

from multidict import CIMultiDict

from proxy import policy, slices
from proxy.box import FetchLocks
from proxy.cache_status import CacheStatus
from proxy.coalescer import SingleFlight
from proxy.config import Config
from proxy.entry import CachedResource, StoredResponse
from proxy.fetcher import Fetcher, FetchRequest
from proxy.headers import EMPTY_DIRECTIVES, combined_value, strong_match
from proxy.keys import select_variant, variant_matches, with_variant
from proxy.messages import Answer, Delivery, Reply, error_reply
from proxy.origin import UpstreamError
from proxy.purger import Purger
from proxy.ranges import ByteRange, Unsatisfiable, parse_content_range
from proxy.storage.memory import MemoryStorage
from proxy.storage.tiered import TieredStorage, TierName

__all__ = ["SliceStats", "Slicer"]

log = logging.getLogger("proxy.slicer")

# A slice is written to the client in pieces of this size, so the transport's buffer holds
# one piece beyond its high-water mark, not a whole slice.
WRITE_PIECE = 256 * 1024
# Times an answer starts over because the first slice showed another representation.
MAX_RESTARTS = 3


@dataclass(slots=True)
class SliceStats:
    """What the slicer did (each counted once)."""

    answers: int = 0  # requests answered from slices
    hits: int = 0  # slices served from the cache
    fetched: int = 0  # slices fetched from the origin (206)
    revalidated: int = 0  # stale slices the origin confirmed (304)
    invalidations: int = 0  # objects whose slices were all dropped: the origin's representation changed
    unsliced: int = 0  # objects whose origin stopped answering slices (handled without slices)
    aborted: int = 0  # streams cut after their head: a slice could not be had, or did not match


class _Changed(Exception):
    """A slice the origin sent is of another representation (after the head: the stream is cut)."""


class _Unsliced(Exception):
    """The origin no longer answers this object in slices (a 200, or no slice): handled without."""


class _NotCached(Exception):
    """only-if-cached, and a slice is not stored (RFC 9111 §5.2.1.7)."""


@dataclass(slots=True)
class _Got:
    """A usable slice: from the cache (`tier`), or from the origin just now (`status`)."""

    entry: StoredResponse
    tier: TierName | None
    status: CacheStatus | None  # the fetch's Cache-Status; None: from the cache, not yet decided

    @property
    def hit(self) -> bool:
        return self.status is None or self.status.hit


class Slicer:
    """Answers requests for sliced objects from their slices; fetches the missing ones."""

    def __init__(
        self,
        cfg: Config,
        spec: slices.SliceSpec,
        storage: TieredStorage,
        fetcher: Fetcher,
        purger: Purger,
        clock: Callable[[], float],
        box: FetchLocks | None = None,
    ) -> None:
        self.cfg = cfg
        self.spec = spec
        self.storage = storage
        self.fetcher = fetcher
        self.purger = purger
        self.clock = clock
        self.box = box  # the supervisor's link when this worker is one of several (proxy/box.py)
        self.flights: SingleFlight[_Got] = SingleFlight()
        self.stats = SliceStats()
        self._peer_tags = (
            cfg.policy.tag_fields[0] if cfg.policy.strip_tag_fields and cfg.policy.tag_fields else None
        )
        self._background: set[asyncio.Task[_Got]] = set()

    async def close(self) -> None:
        """Stop slice fetches (at shutdown)."""
        for task in list(self._background):
            task.cancel()
        await self.flights.close()

    def is_slice(self, entry: StoredResponse) -> bool:
        return slices.index_of(entry, self.spec) is not None

    async def find(self, f: FetchRequest) -> tuple[StoredResponse, TierName | None] | None:
        """For a range request whose object key holds no slice: the stored slice holding its first byte."""
        start = slices.range_start(combined_value(f.headers, "Range"))
        if start is None or start < self.spec.size:
            return None  # slice 0 is the object's own key, looked up already
        index = start // self.spec.size
        entry, tier, _ = await self._read(f, slices.slice_key(f.key, index))
        if entry is None or slices.index_of(entry, self.spec) != index:
            return None
        return entry, tier

    # ------------------------------------------------------------------ answers

    async def answer(
        self,
        f: FetchRequest,
        found: StoredResponse,
        tier: TierName | None,
        fetched: CacheStatus | None = None,
    ) -> tuple[Answer, bool] | None:
        """Answer `f` from the slices of the object `found` is a slice of: (answer, all from the cache).

        `fetched` is the Cache-Status of the fetch that has just stored `found` for
        this request (None: `found` was in the cache). None: the object is not to be
        sliced after all (the engine answers as it would without slices).
        """
        ref = found
        known: _Got | None = _Got(found, tier, fetched)
        first_got: _Got | None = None
        for _ in range(MAX_RESTARTS):
            wanted = self._wanted(f, ref)
            index = self._first_index(wanted, ref)
            reuse = known if known is not None and slices.index_of(known.entry, self.spec) == index else None
            try:
                got = await self._get(f, index, ref, first=True, known=reuse)
            except _NotCached:
                status = CacheStatus(detail="only-if-cached")
                return error_reply(504, "not in cache (only-if-cached)", status), False
            except _Unsliced:
                return None
            if slices.same_representation(got.entry, ref):
                first_got = got
                break
            # The first slice is of another representation than `ref`: plan again from it.
            ref, known = got.entry, got
        if first_got is None:
            raise UpstreamError(502, "the origin's representation keeps changing")
        self.stats.answers += 1
        return self._respond(f, wanted, first_got)

    def _wanted(self, f: FetchRequest, ref: StoredResponse) -> slices.Wanted:
        if f.client.method == "HEAD" or not f.client.conditional:
            return slices.Whole()
        return slices.wanted(combined_value(f.headers, "Range"), combined_value(f.headers, "If-Range"), ref)

    def _first_index(self, wanted: slices.Wanted, ref: StoredResponse) -> int:
        if isinstance(wanted, ByteRange):
            return wanted.first // self.spec.size
        if isinstance(wanted, Unsatisfiable):
            index = slices.index_of(ref, self.spec)
            return 0 if index is None else index
        return 0

    def _respond(self, f: FetchRequest, wanted: slices.Wanted, got: _Got) -> tuple[Answer, bool]:
        """The answer once the first slice is usable: a Delivery of it, or a stream of the slices."""
        s0 = got.entry
        now = self.clock()
        age = policy.current_age(s0, now)
        extra = self._extra(f, s0)
        length = s0.complete_length
        if f.client.conditional and policy.client_not_modified(f.headers, s0):
            return Delivery(s0, age, self._status(got, now), "not-modified", extra=extra), got.hit
        headers: CIMultiDict[str] = CIMultiDict(s0.headers)
        headers.extend(extra)
        headers["Age"] = str(int(age))
        if "accept-ranges" not in headers:
            headers["Accept-Ranges"] = "bytes"
        if f.client.method == "HEAD":
            headers["Content-Length"] = str(length)
            return Reply(200, "OK", headers, b"", self._status(got, now)), got.hit
        if isinstance(wanted, Unsatisfiable):
            return Delivery(s0, age, self._status(got, now), "unsatisfiable", extra=extra), got.hit
        if isinstance(wanted, ByteRange):
            first, last = wanted.first, wanted.last
            if s0.holds(first, last):
                # Within one slice: the hit writer sends it, as it sends any stored part.
                return Delivery(s0, age, self._status(got, now), "partial", first, last, extra), got.hit
        else:
            first, last = 0, length - 1
        rest = slices.covering(first, last, self.spec.size)[1:]
        # The head goes out before the other slices are read: it says hit only when they are stored.
        stored = all(slices.slice_key(f.key, i) in self.storage for i in rest)
        if got.status is None and not stored:
            status = CacheStatus(fwd="partial", detail="slices")
        else:
            status = self._status(got, now)
        headers["Content-Length"] = str(last - first + 1)
        whole = isinstance(wanted, slices.Whole)
        if not whole:
            headers["Content-Range"] = f"bytes {first}-{last}/{length}"
        body = self._stream(f, s0, first, last)
        hit = got.hit and stored
        return Reply(200 if whole else 206, "OK" if whole else "Partial Content", headers, body, status), hit

    def _status(self, got: _Got, now: float) -> CacheStatus:
        if got.status is not None:
            return got.status
        return CacheStatus(hit=True, ttl=int(policy.remaining_ttl(got.entry, now)), detail=got.tier)

    def _extra(self, f: FetchRequest, entry: StoredResponse) -> tuple[tuple[str, str], ...]:
        if self._peer_tags is not None and entry.tags and f.client.hop is not None:
            return ((self._peer_tags, " ".join(entry.tags)),)  # a peer edge stores it too (Engine._deliver)
        return ()

    async def _stream(
        self, f: FetchRequest, s0: StoredResponse, first: int, last: int
    ) -> AsyncIterator[bytes]:
        """Bytes first..last of s0's representation, slice by slice; the next is had while one is written."""
        size = self.spec.size
        indices = slices.covering(first, last, size)
        entry = s0
        pending: asyncio.Task[_Got] | None = None
        try:
            for index in indices:
                if pending is not None:
                    got, pending = pending, None
                    entry = (await got).entry
                if index + 1 < indices.stop:
                    pending = asyncio.ensure_future(self._get(f, index + 1, s0, first=False))
                base = index * size
                start, stop = max(first, base) - base, min(last, base + size - 1) - base + 1
                body = entry.body
                for at in range(start, stop, WRITE_PIECE):
                    yield body[at : min(at + WRITE_PIECE, stop)]
        except _Unsliced as exc:
            # The rest of the representation from one plain GET, when it is still s0's.
            offset = max(first, index * size)
            async for piece in self._rest_from_origin(f, s0, offset, last, str(exc)):
                yield piece
        except (_Changed, _NotCached) as exc:
            self.stats.aborted += 1
            raise UpstreamError(502, f"slice of {f.client.path_qs}: {exc}") from exc
        except UpstreamError:
            self.stats.aborted += 1
            raise
        finally:
            if pending is not None:
                if pending.done():
                    if not pending.cancelled():
                        pending.exception()  # retrieved: nobody will read it now
                else:
                    pending.cancel()

    async def _rest_from_origin(
        self, f: FetchRequest, s0: StoredResponse, offset: int, last: int, why: str
    ) -> AsyncIterator[bytes]:
        """Bytes offset..last of s0's representation from a GET without Range (not stored).

        For a stream whose origin stopped answering slices after its head went
        out: its 200 must be s0's representation (the same strong ETag and
        length), or the stream is cut.
        """
        headers = self.fetcher.origin_request_headers(f.client, f.headers, for_cache=True)
        resp = await self.fetcher.send_for_cache(f, headers)
        try:
            etag = slices.strong_etag(resp.headers.get("ETag"))
            tag = slices.strong_etag(s0.etag)
            if (
                resp.status != 200
                or etag is None
                or tag is None
                or not strong_match(etag, tag)
                or resp.content_length != s0.complete_length
            ):
                self.stats.aborted += 1
                raise UpstreamError(502, f"slice of {f.client.path_qs}: {why}; the origin's 200 differs")
            left = last - offset + 1
            async for chunk in slices.byte_window(resp.iter_rest(), offset, left):
                left -= len(chunk)
                yield chunk
            if left > 0:
                raise UpstreamError(502, "origin response body incomplete")
        finally:
            resp.close()

    # ------------------------------------------------------------------- slices

    async def _get(
        self, f: FetchRequest, index: int, ref: StoredResponse, *, first: bool, known: _Got | None = None
    ) -> _Got:
        """Slice `index` usable under the caching rules: from the cache, revalidated, or fetched.

        The first slice of an answer may be of any representation (it decides
        the answer's); a later one must be of `ref`'s, or the object changed.
        """
        key = slices.slice_key(f.key, index)
        if known is not None and known.status is not None:
            return known  # fetched for this request just now
        resource: CachedResource | None = None
        if known is not None:
            entry: StoredResponse | None = known.entry
            tier = known.tier
        else:
            entry, tier, resource = await self._read(f, key)
        if entry is not None and (
            slices.index_of(entry, self.spec) != index
            or (not first and not slices.same_representation(entry, ref))
        ):
            entry = None  # not this slice of this representation: fetch it
        # The request's directives decide about the first slice; a later slice of the same
        # representation (the same strong ETag: the same bytes) follows the response's own rules.
        directives = f.directives if first else EMPTY_DIRECTIVES
        stale = None
        if entry is not None:
            decision = policy.decide("GET", directives, entry, True, self.clock(), self.cfg.policy)
            if isinstance(decision, policy.Deliver):
                if decision.revalidate_in_background:
                    self._revalidate_in_background(f, key, index, entry, resource)
                self.stats.hits += 1
                return _Got(entry, tier, None)
            if isinstance(decision, policy.GatewayTimeout):
                raise _NotCached(f"slice {index} is stale")
            stale = entry
        elif "only-if-cached" in f.directives:
            raise _NotCached(f"slice {index} is not stored")
        length = (stale or ref).complete_length
        try:
            got = await self._fetch(f, key, index, length, stale, resource)
        except UpstreamError as exc:
            if stale is not None:
                now = self.clock()
                rule = policy.stale_for_failure(stale, directives, now, self.cfg.policy, disconnected=True)
                if rule is not None:
                    ttl = int(policy.remaining_ttl(stale, now))
                    status = CacheStatus(fwd="stale", ttl=ttl, detail=rule)
                    return _Got(stale, tier, status)
            log.warning("slice %d of %s: %s", index, f.client.path_qs, exc.reason)
            raise
        fetched = got.entry
        old = stale if stale is not None else ref
        if not slices.same_representation(fetched, old):
            # The origin's representation changed: no slice of the old one may be combined with it.
            kept = await self._invalidate(f, old, fetched, index)
            got = _Got(kept, None, got.status)
            if not first:
                raise _Changed(f"ETag {old.etag} became {fetched.etag}")
        return got

    async def _read(
        self, f: FetchRequest, key: str
    ) -> tuple[StoredResponse | None, TierName | None, CachedResource | None]:
        """The stored variant of `key` for f (other workers' purges applied first), its tier and resource."""
        purger = self.purger
        if purger.behind():
            await purger.sync()
        resource, tier = await self.storage.aget(key)
        if resource is not None and purger.bans:
            screened = purger.screen(resource)
            if screened is None:
                await self.storage.adelete(key)
            resource = screened
        if resource is None:
            return None, None, None
        return select_variant(resource, f.headers), tier, resource

    def _revalidate_in_background(
        self, f: FetchRequest, key: str, index: int, entry: StoredResponse, resource: CachedResource | None
    ) -> None:
        """RFC 5861 §3 for a slice: served stale now, revalidated behind (once per key)."""
        if self.flights.in_flight(key):
            return
        task = asyncio.ensure_future(self._fetch(f, key, index, entry.complete_length, entry, resource))
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[_Got]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background revalidation of a slice failed: %s", task.exception())

    async def _fetch(
        self,
        f: FetchRequest,
        key: str,
        index: int,
        length: int,
        stale: StoredResponse | None,
        resource: CachedResource | None,
    ) -> _Got:
        """Slice `index` from the origin, one fetch per key at a time (coalesced), stored."""
        if not self.cfg.fetch.coalesce:
            return await self._fetch_slice(f, key, index, length, stale, resource)
        task, leader = self.flights.start(
            key, lambda: self._fetch_slice(f, key, index, length, stale, resource)
        )
        got = await asyncio.shield(task)
        if leader:
            return got
        if variant_matches(got.entry, f.headers):
            return replace(got, status=got.status._replace(collapsed=True)) if got.status else got
        return await self._fetch_slice(f, key, index, length, stale, resource)  # another variant

    async def _fetch_slice(
        self,
        f: FetchRequest,
        key: str,
        index: int,
        length: int,
        stale: StoredResponse | None,
        resource: CachedResource | None,
    ) -> _Got:
        """Ask the origin for slice `index` with a Range (and If-None-Match when revalidating); store it."""
        fetcher = self.fetcher
        first, last = slices.slice_bounds(index, self.spec.size, length)
        headers = fetcher.origin_request_headers(f.client, f.headers, for_cache=True)
        headers["Range"] = f"bytes={first}-{last}"
        if stale is not None and stale.etag:
            headers["If-None-Match"] = stale.etag
        why = "stale" if stale is not None else "partial"
        request_time = self.clock()
        epoch = self.purger.current_epoch()
        resp = await fetcher.send_for_cache(f, headers)
        status = resp.status
        if status == 304 and stale is not None:
            resp.release()
            if not policy.select_for_update(resp.headers, stale, (stale,), headers):
                # The 304 names another ETag than the slice's: it freshens nothing (RFC 9111 §4.3.4),
                # or the old bytes would go out, and be stored, under the new ETag. Fetched again
                # without a condition, a slice of a changed representation is found as any is.
                return await self._fetch_slice(f, key, index, length, None, resource)
            plan = policy.freshen(
                stale,
                resp.headers,
                f.headers,
                request_time,
                self.clock(),
                fetcher.policy_config,
                f.stored_overrides(stale),  # the route's rules, as for any 304 (Fetcher)
                epoch,
            )
            if isinstance(plan, policy.DontStore):
                await self._unslice(f, stale, f"the origin no longer lets it be stored ({plan.reason})")
            entry = plan.template
            # L1 always; L2 when the box's other workers read slices there, or when the freshened
            # slice gives it something (policy.freshened_for_disk), as for any 304 (Fetcher).
            box = self.box
            to_disk = (
                self.storage.l1 is None
                or (box is not None and box.shared)
                or policy.freshened_for_disk(stale, entry)
            )
            stored = await self._store(key, entry, resource, to_disk=to_disk)
            self.stats.revalidated += 1
            return _Got(entry, None, CacheStatus(fwd=why, fwd_status=304, stored=stored))
        if status == 200:
            resp.close()
            await self._unslice(f, stale or _Length(length), "the origin answered a Range with 200")
        if status != 206:
            resp.close()
            if status == 416:  # shorter than the slice's start now
                await self._unslice(f, stale or _Length(length), "the origin answered 416")
            raise UpstreamError(502, f"origin answered {status} to a slice")
        found = slices.slice_in_response(
            206,
            resp.headers.get("Content-Range"),
            resp.content_length,
            resp.headers.get("ETag"),
            None,
            True,
            self.spec,
        )
        if found is None or found[0] != first:
            part = parse_content_range(resp.headers.get("Content-Range"))
            resp.close()
            if part is not None and part[0] == first:
                # A 206 of the range asked, but no slice: no strong ETag, or now under the threshold.
                await self._unslice(f, stale or _Length(length), "the origin's answer is no slice")
            raise UpstreamError(502, "origin answered another range than the slice asked")
        plan = policy.plan_store(
            "GET",
            f.headers,
            EMPTY_DIRECTIVES,
            206,
            resp.reason,
            resp.headers,
            request_time,
            self.clock(),
            fetcher.policy_config,
            # The route's rules store every slice as they store the first (Fetcher._store).
            f.overrides(206, resp.headers.get("Content-Type")),
        )
        if isinstance(plan, policy.DontStore):
            resp.close()
            await self._unslice(f, stale or _Length(length), f"not storable ({plan.reason})")
        first, last, complete_length = found
        size = last - first + 1
        data, complete = await resp.read_up_to(size)
        if len(data) < size:
            raise UpstreamError(502, "origin response body incomplete")
        if not complete or len(data) > size:
            resp.close()
        built = plan.build(data[:size], fetch_epoch=epoch)
        entry = replace(built, parts=((first, last),), complete_length=complete_length)
        stored = await self._store(key, entry, resource)
        self.stats.fetched += 1
        return _Got(entry, None, CacheStatus(fwd=why, fwd_status=206, stored=stored))

    async def _store(
        self, key: str, entry: StoredResponse, resource: CachedResource | None, *, to_disk: bool = True
    ) -> bool:
        """Store a slice under its key (beside the other variants of that key), catalogued for purges.

        Without `to_disk` only L1 is written (L2 keeps what it holds for the key).
        """
        storage = self.storage
        l1 = storage.l1
        latest = l1.peek(key) if isinstance(l1, MemoryStorage) else None
        base = latest if latest is not None else resource
        updated = with_variant(base, key, entry, self.cfg.policy.max_variants)
        stored = await (storage.aset(updated) if to_disk else storage.aset_memory(updated))
        # The catalogue row is queued, written behind the response; a full row queue undoes the store.
        return stored and self.purger.record(updated)

    async def _invalidate(
        self, f: FetchRequest, old: StoredResponse, new: StoredResponse, index: int
    ) -> StoredResponse:
        """Every slice of the object dropped (in every tier and worker); `new` (slice `index`) kept."""
        size = self.spec.size
        count = max(
            slices.slice_count(old.complete_length, size), slices.slice_count(new.complete_length, size)
        )
        self.stats.invalidations += 1
        log.info(
            "%s changed (ETag %s, %d bytes -> ETag %s, %d bytes): its slices are dropped",
            f.client.path_qs,
            old.etag,
            old.complete_length,
            new.etag,
            new.complete_length,
        )
        keys = [slices.slice_key(f.key, i) for i in range(count)]
        await self.purger.invalidate(keys, "slices", "of a sliced object the origin changed")
        # Fetched before that purge, it would be screened as a copy it covers: it is newer.
        kept = replace(new, fetch_epoch=self.purger.current_epoch())
        await self._store(slices.slice_key(f.key, index), kept, None)
        return kept

    async def _unslice(self, f: FetchRequest, old: StoredResponse | _Length, why: str) -> NoReturn:
        """The origin no longer answers this object in slices: drop them all; raises _Unsliced."""
        self.stats.unsliced += 1
        count = slices.slice_count(old.complete_length, self.spec.size)
        log.info("%s is no longer sliced: %s", f.client.path_qs, why)
        self.fetcher.stop_slicing(f.key)
        keys = [slices.slice_key(f.key, i) for i in range(count)]
        await self.purger.invalidate(keys, "slices", "of an object no longer sliced")
        raise _Unsliced(why)


@dataclass(frozen=True, slots=True)
class _Length:
    """A representation known only by its length (to count its slices)."""

    complete_length: int
