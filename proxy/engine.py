"""The engine: the only place where the pure policy meets storage, the origin and the clock.

One request is looked up and decided once:

    lookup = engine.lookup(request)       # synchronous: key, L1 / small L2, decide
    if lookup.answer is not None:         # a Deliver: written at once by the front
        ...
    else:
        answer = await engine.complete(lookup)   # everything else, from the same Lookup

`lookup` reads the clock once, computes the key once, looks in L1 and (where
that is cheap) L2 on the loop, selects the variant and calls `policy.decide`.
Whatever it decides to deliver (fresh, stale-while-revalidate, a 304 or a
range) becomes a `Delivery` right there: a background revalidation or a
refresh-ahead is only a task started, never awaited. `complete` goes on from
the same Lookup: it finishes a lookup that needed the I/O pool or pending
purges, then fetches (coalesced: one origin request however many clients
wait), revalidates or passes. Stale-if-error replaces origin failures where
RFC 5861 allows. Answers are values (`Delivery`, `Reply`); writing them is
the front's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, assert_never

from multidict import CIMultiDict

from proxy import compression, policy, slices
from proxy.box import FetchLocks, Outcome
from proxy.cache_status import CacheStatus
from proxy.coalescer import SingleFlight
from proxy.config import Config
from proxy.delivery import covered_range, plan_delivery
from proxy.entry import CachedResource, StoredResponse
from proxy.fetcher import Fetcher, FetchOutcome, FetchRequest
from proxy.headers import EMPTY_DIRECTIVES, Directives, Headers, combined_value, fields_end_to_end
from proxy.keys import (
    UrlKeys,
    accept_encoding_for_range,
    normalise_accept_encoding,
    select_variant,
    variant_matches,
)
from proxy.messages import Answer, ClientRequest, Delivery, RawFields, Reply, error_reply
from proxy.observe import HotKeys
from proxy.origin import CLIENT_BODY_CAUSE, InterimSink, OriginResponse, Upstream, UpstreamError
from proxy.prefetch import Prefetcher, PrefetchStats
from proxy.purger import Purger
from proxy.ranges import ByteRange
from proxy.routing import FetchRouter
from proxy.rules import Match
from proxy.slicer import Slicer
from proxy.slices import SliceSpec
from proxy.storage.tiered import TieredStorage, TierName
from proxy.tee import StoringStream

__all__ = ["Engine", "EngineStats", "Lookup"]

log = logging.getLogger("proxy.engine")

Clock = Callable[[], float]

# At most this many hit-for-pass marks are kept (see Engine._forget_marks).
HIT_FOR_PASS_LIMIT = 100_000
# Pass-through bodies of known length up to this size are read whole before answering.
SMALL_PASS_BODY = 64 * 1024
# The Vary names of a response that varies on Accept-Encoding alone (its encodings, most often).
ACCEPT_ENCODING_ONLY = ("accept-encoding",)
HIT_STATUS_MEMO = 4096  # distinct hit Cache-Status values kept (see Engine._hit_statuses)


@dataclass(slots=True)
class EngineStats:
    """Counters of what the engine did (exposed by the stats endpoint); each request counts once."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    passes: int = 0
    stale_served: int = 0  # stale-while-revalidate, stale-if-error, max-stale
    coalesced: int = 0  # requests answered from another request's fetch
    coalesce_timeouts: int = 0
    purged_flights: int = 0  # waiters that joined a fetch begun before a purge of its key: fetched again
    hit_for_pass: int = 0  # requests forwarded at once because the key was marked
    background_revalidations: int = 0
    background_failures: int = 0
    refresh_ahead: int = 0
    refresh_ahead_skipped: int = 0
    origin_errors: int = 0
    partial_completions: int = 0  # whole objects fetched behind an answer from a stored part
    box_waits: int = 0  # fetches left to another worker of the box, then read from L2
    box_passes: int = 0  # keys another worker found unshareable (hit-for-pass for the box)
    pass_marks: int = 0  # hit-for-pass marks set (this worker's, and those learnt from the box)
    prefetch: PrefetchStats = dataclasses.field(default_factory=PrefetchStats)  # preload targets


@dataclass(slots=True)
class Lookup:
    """One request, keyed, looked up and decided once; `complete` continues from here.

    `decision` is None while the lookup is unfinished (the L2 read needs the
    I/O pool, or purges of other workers must be applied first); `answer` is
    set when the decision was to deliver a stored response.
    """

    request: ClientRequest
    now: float
    # What complete() must do before deciding: "purges" (apply other workers' purges,
    # then look up), "l2" (read L2 on the I/O pool), "screen" (a purge covers a copy).
    pending: str | None = None
    key: str = ""
    resource: CachedResource | None = None
    tier: TierName | None = None
    decision: policy.Decision | None = None
    directives: Directives = EMPTY_DIRECTIVES
    answer: Delivery | None = None
    # The request fields with Accept-Encoding reduced (keys.normalise_accept_encoding),
    # built when something needs more than the fields the front picked out.
    normalised: CIMultiDict[str] | None = None
    # Its conditional and Range fields as the origin would see them (Engine._conditionals).
    conditionals: Headers | None = None
    rules: Match | None = None  # the rules the request matched (proxy/rules.py)


class Engine:
    """Serves requests from the tiers or the origin according to the policy."""

    def __init__(
        self,
        cfg: Config,
        storage: TieredStorage,
        upstream: Upstream,
        clock: Clock,
        purger: Purger,
        url_keys: UrlKeys,
        router: FetchRouter | None = None,
        box: FetchLocks | None = None,
    ) -> None:
        self.cfg = cfg
        # The worker processes of this box (proxy/box.py): one origin fetch per key per box.
        self.box = box
        self.storage = storage
        self.clock = clock
        self.purger = purger
        self.fetcher = Fetcher(cfg, storage, upstream, clock, purger, url_keys)
        self.fetcher.router = router
        # Large objects by slices (proxy/slicer.py); None: cache.slice_size is 0.
        spec = SliceSpec.of(cfg.cache)
        self.slicer = (
            Slicer(cfg, spec, storage, self.fetcher, purger, clock, box) if spec is not None else None
        )
        self._peer_tags = (
            cfg.policy.tag_fields[0] if cfg.policy.strip_tag_fields and cfg.policy.tag_fields else None
        )
        self._encodings = cfg.policy.accept_encodings
        self.rules = self.fetcher.rules
        # With compression, ranges are answered from the identity variant (proxy/compression.py).
        self._ranges_identity = self.fetcher.compression is not None
        self.flights: SingleFlight[FetchOutcome] = SingleFlight()
        self.stats = EngineStats()
        # Link: rel=preload targets of stored responses, fetched behind them (proxy/prefetch.py).
        fetch = cfg.fetch
        self.prefetcher = (
            Prefetcher(
                self._prefetched, fetch.prefetch_preload, fetch.prefetch_max_concurrent, self.stats.prefetch
            )
            if fetch.prefetch_preload
            else None
        )
        self.hot = HotKeys()  # the most looked-up keys lately (proxy/observe.py)
        # key -> clock time until which the key is forwarded without coalescing.
        self.hit_for_pass: dict[str, float] = {}
        # The marked keys under which nothing was stored when they were marked: their
        # lookups are skipped until the mark expires or this worker stores the key.
        self.pass_unstored: set[str] = set()
        self._refreshing = 0
        self._releases: set[asyncio.Task[None]] = set()
        # Fetches whose body is streaming into the cache, by key: later requests wait for it.
        self.streams: dict[str, StoringStream] = {}
        # The Cache-Status of a hit, by (ttl, tier, rule): few distinct ones, and building the
        # tuple from keywords costs about as much as the rest of the decision.
        self._hit_statuses: dict[tuple[int, TierName | None, str | None], CacheStatus] = {}

    async def close(self) -> None:
        """Stop background fetches (at shutdown)."""
        if self.prefetcher is not None:
            await self.prefetcher.close()
        await self.flights.close()
        if self.slicer is not None:
            await self.slicer.close()

    async def _prefetched(self, req: ClientRequest) -> Answer:
        """A prefetch (proxy/prefetch.py), served as any GET: looked up, then fetched if missing."""
        return await self.complete(self.lookup(req))

    # ----------------------------------------------------------------- lookup

    def lookup(self, req: ClientRequest) -> Lookup:
        """Key, look up and decide, without awaiting anything (RFC 9111 §4)."""
        self.stats.requests += 1
        lk = Lookup(req, self.clock())
        method = req.method
        if method not in policy.CACHEABLE_METHODS:
            lk.decision = policy.Pass("method")
            return lk
        rules = self.rules
        if rules is not None and req.path not in rules.unmatched:  # a path no rule concerns: no call
            matched = lk.rules = rules.match(req)
            if matched is not None and matched.bypass:
                lk.decision = policy.Pass("rule")  # never looked up, never stored
                return lk
        # Judged on the fields as the origin would get them: a precondition named by Connection
        # never reaches it, so it is not the origin's to evaluate.
        if req.conditional and policy.has_precondition_for_origin(self._conditionals(lk)):
            lk.decision = policy.Pass("precondition")  # If-Match / If-Unmodified-Since: the origin's
            return lk
        lk.directives = policy.request_directives_of(req.cache_control, req.pragma, self.cfg.policy)
        key = lk.key = self.fetcher.key_for(req)
        # HotKeys.count, inline (the hit path): a key seen already costs one get and one set.
        hot = self.hot.current
        seen = hot.get(key)
        if seen is None:
            self.hot.count(key)
        else:
            hot[key] = seen + 1
        if req.hop is not None:
            self.fetcher.stats.served_for_peers += 1
        if self.purger.behind():
            lk.pending = "purges"  # another worker purged: drop those objects from L1 before looking
            return lk
        if lk.key in self.pass_unstored and lk.now < self.hit_for_pass.get(lk.key, 0.0):
            # Hit-for-pass with nothing stored: no lookup (Varnish's hit-for-miss).
            self.storage.stats.misses += 1
            self._decide(lk)
            return lk
        answered, resource, tier = self.storage.get_now(lk.key)
        lk.resource, lk.tier = resource, tier
        if not answered:
            lk.pending = "l2"
            return lk
        if resource is not None and self._covered_by_purge(resource):
            lk.pending = "screen"  # a late copy a purge covers: complete() cleans it out
            return lk
        self._decide(lk)
        return lk

    def _covered_by_purge(self, resource: CachedResource) -> bool:
        purger = self.purger
        if not purger.bans:
            return False  # the common case: no purge in the last BAN_SECONDS
        return purger.screen(resource) is not resource

    def normalised(self, lk: Lookup) -> CIMultiDict[str]:
        """The request's fields as the origin will see them: Vary is keyed on these (RFC 9111 §4.1).

        Hop-by-hop fields, those Connection lists, unkeyed inputs (and with them
        underscored names) never reach the origin, so a variant must not be keyed
        on them either; Accept-Encoding is reduced.
        """
        headers = lk.normalised
        if headers is None:
            headers = self._as_origin_sees(lk.request, lk.request.raw_fields)
            headers["Accept-Encoding"] = self._accept_encoding(lk.request)
            lk.normalised = headers
        return headers

    def _as_get_would_be(self, f: FetchRequest, resp: OriginResponse | None, answer: Answer) -> Answer:
        """A HEAD answered with the origin's answer `resp` to it: with the fields this cache's answer
        to the GET would have, which compression changes (RFC 9110 §9.3.2; compression.head_fields)
        when that GET's answer is stored: one passed through (Vary: *, no-store, too large, ...)
        is the origin's as it came, and so is the HEAD's."""
        settings = self.fetcher.compression
        if settings is None or resp is None or not isinstance(answer, Reply):
            return answer
        if not self.fetcher.stores_as_get(f, resp):
            return answer
        fields = settings.head_fields(
            answer.status, list(answer.headers.items()), f.headers["Accept-Encoding"]
        )
        if fields is not None:
            answer.headers = CIMultiDict(fields)
        return answer

    def _conditionals(self, lk: Lookup) -> Headers:
        """The request's conditional and Range fields as normalised() has them, without the rest:
        all that answering from a stored response reads (proxy/delivery.py), and what says
        whether a precondition is the origin's. Built once per lookup."""
        if lk.normalised is not None:
            return lk.normalised
        found = lk.conditionals
        if found is None:
            found = lk.conditionals = self._as_origin_sees(lk.request, lk.request.conditional_raw)
        return found

    def _as_origin_sees(self, req: ClientRequest, raw: RawFields) -> CIMultiDict[str]:
        """Those of req's fields (`raw`) the origin would get: end to end, unkeyed inputs dropped."""
        origin = self.cfg.origin
        return fields_end_to_end(
            raw, req.connection, origin.unkeyed_request_headers, underscores=origin.underscores_in_headers
        )

    def _accept_encoding(self, req: ClientRequest) -> str:
        """The request's Accept-Encoding reduced to one coding: the variant it is keyed with.

        A GET with a range is keyed with identity when this cache compresses and the client
        accepts identity: ranges are answered from the identity variant (RFC 9110 §14.2: Range
        means nothing to a HEAD, which is keyed as the GET without it would be).
        """
        ranged = self._ranges_identity and req.conditional and req.method == "GET"
        if ranged and "range" in req.conditional_headers:
            return accept_encoding_for_range(req.accept_encoding, self._encodings)
        return normalise_accept_encoding(req.accept_encoding, self._encodings)

    def _select(self, lk: Lookup) -> StoredResponse | None:
        resource = lk.resource
        if resource is None or not resource.variants:
            return None
        variants = resource.variants
        first = variants[0]
        if not first.vary_names and len(variants) == 1:
            return first  # no Vary: any request matches
        if first.vary_names == ACCEPT_ENCODING_ONLY:
            # Encodings of one response (or Vary: Accept-Encoding alone): the reduced value picks one,
            # without building the request's multidict.
            wanted = self._accept_encoding(lk.request)
            for variant in variants:
                if variant.vary_names != ACCEPT_ENCODING_ONLY:
                    break  # other Vary names too: the general way
                if variant.vary_values[0] == wanted:
                    return variant
            else:
                return None
        return select_variant(resource, self.normalised(lk))

    def _decide(self, lk: Lookup) -> None:
        """policy.decide on a finished lookup; a Deliver becomes the answer at once."""
        req = lk.request
        entry = self._select(lk)
        covered = True
        if entry is not None and entry.parts:
            # An incomplete stored response answers only a range it holds (RFC 9111 §3.3).
            conditional = self._conditionals(lk) if req.conditional else None
            covered = covered_range(req.method, conditional, entry) is not None
        decision = lk.decision = policy.decide(
            req.method, lk.directives, entry, lk.resource is not None, lk.now, self.cfg.policy, covered
        )
        if not isinstance(decision, policy.Deliver):
            return
        found, age, ttl = decision.entry, decision.age, decision.ttl
        # Cache-Status names the rules that matched the request and the stored response.
        rule = None if lk.rules is None else lk.rules.for_stored(found.status, found.headers)[1]
        if decision.revalidate_in_background:
            # RFC 5861 §3: the stale answer now, one revalidation behind it.
            self.stats.stale_served += 1
            self._revalidate_in_background(self._fetch_request(lk, found, "stale"))
            status = CacheStatus(fwd="stale", ttl=int(ttl), detail="stale-while-revalidate", rule=rule)
        else:
            self.stats.hits += 1
            if decision.stale:
                self.stats.stale_served += 1
            if policy.refresh_ahead_due(found, ttl, self.cfg.fetch.refresh_ahead_fraction):
                self._refresh_ahead(self._fetch_request(lk, found, "stale"))
            # detail says which tier answered (l1 / l2).
            memo_key = (int(ttl), lk.tier, rule)
            hit_status = self._hit_statuses.get(memo_key)
            if hit_status is None:
                if len(self._hit_statuses) >= HIT_STATUS_MEMO:
                    self._hit_statuses.clear()  # ttl values vary: bounded, refilled at once
                hit_status = self._hit_statuses[memo_key] = CacheStatus(
                    hit=True, ttl=memo_key[0], detail=lk.tier, rule=rule
                )
            status = hit_status
        conditional = self._conditionals(lk) if req.conditional else None
        lk.answer = self._deliver(req, conditional, found, age, status)

    def _deliver(
        self,
        req: ClientRequest,
        conditional: Headers | None,
        entry: StoredResponse,
        age: float,
        status: CacheStatus,
        extra: tuple[tuple[str, str], ...] = (),
        part: tuple[int, int] | None = None,
    ) -> Delivery:
        """A stored response for `req`; `conditional` holds its fields when it has conditionals or a Range."""
        if self._peer_tags is not None and entry.tags and req.hop is not None:
            # A peer edge stores this too: it needs the tags that clients never see.
            extra = ((self._peer_tags, " ".join(entry.tags)), *extra)
        return plan_delivery(req.method, conditional, entry, age, status, extra, part)

    def _fetch_request(
        self, lk: Lookup, stale: StoredResponse | None, why: str, interim: InterimSink | None = None
    ) -> FetchRequest:
        return FetchRequest(
            lk.request,
            self.normalised(lk),
            lk.key,
            lk.resource,
            stale,
            why,
            lk.directives,
            interim,
            rules=lk.rules,
        )

    # --------------------------------------------------------------- complete

    def complete(self, lk: Lookup, interim: InterimSink | None = None) -> Coroutine[Any, Any, Answer]:
        """Everything a lookup did not answer at once: finish it, then fetch, revalidate or pass.

        `interim` is told of the 1xx responses the origin sends before the final one to
        this request's own fetch (RFC 9110 §15.2); a request answered from another
        request's fetch (coalesced) gets none. The answer's Cache-Status names the rules
        that matched the request and the response it gets.
        """
        if lk.rules is None:
            return self._complete(lk, interim)
        return self._complete_naming_rules(lk, lk.rules, interim)

    async def _complete_naming_rules(self, lk: Lookup, rules: Match, interim: InterimSink | None) -> Answer:
        answer = await self._complete(lk, interim)
        _name_rules(answer, rules)
        return answer

    async def _complete(self, lk: Lookup, interim: InterimSink | None) -> Answer:
        if lk.answer is not None:
            return lk.answer
        if lk.pending is not None:
            await self._finish_lookup(lk)
            if lk.answer is not None:
                return lk.answer
        req = lk.request
        decision = lk.decision
        assert decision is not None
        if self.slicer is not None and not isinstance(decision, policy.Pass):
            sliced = await self._sliced(lk, decision, interim)
            if sliced is not None:
                return sliced
        match decision:
            case policy.Deliver():
                raise AssertionError("a Deliver is answered by _decide")
            case policy.Revalidate(entry=stale, reason=why):
                self.stats.misses += 1
                f = self._fetch_request(lk, stale, "request" if why == "request" else "stale", interim)
                if req.method == "HEAD":
                    return await self._head(f)
                return await self._fetch(f)
            case policy.Fetch(reason=why):
                self.stats.misses += 1
                if req.method == "HEAD":
                    f = self._fetch_request(lk, None, why, interim)
                    if why == "partial":
                        # The stored parts cannot answer a HEAD; the origin's answer may update them.
                        return await self._head(f)
                    # A HEAD response never creates an entry (RFC 9111 §3): forward it.
                    return await self._pass(req, f.headers, why, invalidate=False, interim=interim, head=f)
                return await self._fetch(self._fetch_request(lk, None, why, interim))
            case policy.Pass(reason=why):
                if why == "rule":
                    # A rule's bypass: forwarded as the client sent it, never looked up nor stored.
                    return await self._pass(req, req.headers, "bypass", invalidate=False, interim=interim)
                if why == "method":
                    return await self._pass(
                        req,
                        req.headers,
                        "bypass",
                        invalidate=policy.invalidates(
                            req.method, req.remote, self.cfg.policy.invalidate_on_unsafe
                        ),
                        interim=interim,
                    )
                return await self._pass(req, self.normalised(lk), "bypass", invalidate=False, interim=interim)
            case policy.GatewayTimeout():
                return error_reply(504, "not in cache (only-if-cached)", CacheStatus(detail="only-if-cached"))
            case _:
                assert_never(decision)

    async def _sliced(
        self, lk: Lookup, decision: policy.Decision, interim: InterimSink | None
    ) -> Answer | None:
        """The answer from a sliced object's slices (proxy/slicer.py), when the request is for one.

        The object's key holds a slice (slice 0) that the lookup could not answer
        from alone; or it holds nothing for the request and the request is for a
        range whose first slice is stored under its own key. None: not sliced.
        """
        slicer = self.slicer
        req = lk.request
        if slicer is None or req.method not in ("GET", "HEAD") or "no-store" in lk.directives:
            return None
        entry = decision.entry if isinstance(decision, policy.Revalidate) else self._select(lk)
        tier = lk.tier
        if entry is not None and slicer.is_slice(entry):
            f = self._fetch_request(lk, None, "partial", interim)
        elif entry is None and req.method == "GET" and req.conditional:
            f = self._fetch_request(lk, None, "partial", interim)
            found = await slicer.find(f)
            if found is None:
                return None
            entry, tier = found
        else:
            return None
        result = await slicer.answer(f, entry, tier)
        if result is None:
            return None
        answer, hit = result
        if hit:
            self.stats.hits += 1
        else:
            self.stats.misses += 1
        return answer

    async def _finish_lookup(self, lk: Lookup) -> None:
        """The part of lookup() that needs awaiting: other workers' purges, the L2 pool, a purge screen."""
        purger = self.purger
        if lk.pending == "purges":
            await purger.sync()
            resource, tier = await self.storage.aget(lk.key)
        elif lk.pending == "l2":
            resource, tier = await self.storage.aget_rest(lk.key)
        else:
            resource, tier = lk.resource, lk.tier  # looked up already; only the screen is left
        lk.pending = None
        if resource is not None and purger.bans:
            resource = await self._screen(resource)
        lk.resource, lk.tier = resource, tier
        self._decide(lk)

    async def _screen(self, resource: CachedResource) -> CachedResource | None:
        """Drop (or soften) a late copy a purge covers; clean it out of the tiers too."""
        screened = self.purger.screen(resource)
        if screened is resource:
            return resource
        if screened is None:
            self.storage.delete_behind(resource.key)  # never make the request wait for the disk
        else:
            await self.storage.aset(screened)
        return screened

    def _deliver_stale_on_error(
        self,
        f: FetchRequest,
        stale: StoredResponse,
        fwd_status: int | None,
        rule: str,
        now: float,
        collapsed: bool = False,
    ) -> Delivery:
        """The stored response instead of an origin failure; `rule` (policy.stale_for_failure): the detail."""
        self.stats.stale_served += 1
        ttl = policy.remaining_ttl(stale, now)
        status = CacheStatus(fwd=f.why, fwd_status=fwd_status, ttl=int(ttl), collapsed=collapsed, detail=rule)
        return self._deliver_fetched(f, stale, policy.current_age(stale, now), status)

    def _deliver_fetched(
        self,
        f: FetchRequest,
        entry: StoredResponse,
        age: float,
        status: CacheStatus,
        extra: tuple[tuple[str, str], ...] = (),
        part: tuple[int, int] | None = None,
    ) -> Delivery:
        conditional = f.headers if f.client.conditional else None
        return self._deliver(f.client, conditional, entry, age, status, extra, part)

    @staticmethod
    def _covers(entry: StoredResponse, f: FetchRequest) -> bool:
        """Whether `entry` may answer f: complete, or holding the range f asks for (RFC 9111 §3.3)."""
        if not entry.parts:
            return True
        return covered_range(f.client.method, f.headers if f.client.conditional else None, entry) is not None

    # ------------------------------------------------------------------ fetch

    def _fetch(self, f: FetchRequest) -> Coroutine[Any, Any, Answer]:
        """A miss or a revalidation, coalesced with any fetch of the same key in flight.

        A plain function returning the coroutine to await: a fetch that may not coalesce
        (hit-for-pass, no-store) runs without one more coroutine around it."""
        if not self._may_coalesce(f):
            return self._fetch_alone(f)
        return self._fetch_coalesced(f)

    async def _fetch_coalesced(self, f: FetchRequest, *, again: bool = False) -> Answer:
        stream = self.streams.get(f.key)
        if stream is not None:
            # The fetch's head has come and gone; its body is still streaming into the cache.
            status = CacheStatus(fwd=f.why, fwd_status=stream.resp.status)
            return await self._answer_when_stored(f, stream, status, self.purger.current_epoch(), again)
        task, leader = self.flights.start(f.key, lambda: self._flight(f))
        joined = 0 if leader else self.purger.current_epoch()
        try:
            if leader:
                outcome = await asyncio.shield(task)
            else:
                outcome = await asyncio.wait_for(asyncio.shield(task), self.cfg.fetch.coalesce_timeout)
        except asyncio.CancelledError:
            if leader:
                # Our client is gone; nobody else may stream a leader-only response.
                task.add_done_callback(_discard_outcome)
            raise
        except TimeoutError:
            self.stats.coalesce_timeouts += 1
            return await self._fetch_alone(f)
        except UpstreamError as exc:
            return self._origin_failed(f, exc, collapsed=not leader)
        if not leader:
            if self._purged_before_joining(f.key, outcome.shared, joined):
                return await self._fetch_again(f, again)
            if outcome.streaming is not None:
                # Its copy is known once its body is stored, and judged then.
                return await self._answer_when_stored(f, outcome.streaming, outcome.status, joined, again)
        return await self._answer(f, outcome, leader)

    def _purged_before_joining(self, key: str, shared: StoredResponse | None, joined: int) -> bool:
        """Whether a purge logged after a fetch began (and before a waiter joined it at epoch
        `joined`) covers the copy it brought (`shared`): that waiter asked after the purge and must
        not get the copy the purge was for. (A purge that also came after the join is taken for one
        before it: bans keep the newest per name; the cost is one more fetch.)"""
        if shared is None or joined <= shared.fetch_epoch:
            return False
        return self.purger.bans.covering(key, shared.fetch_epoch, shared.tags) is not None

    async def _fetch_again(self, f: FetchRequest, again: bool) -> Answer:
        """Fetch for a request that joined a fetch begun before a purge of what it brought.

        Every request that joined after the purge is here at once: one new flight for them
        all (alone, each would ask the origin: a stampede on the key just purged). A second
        purged outcome (another purge meanwhile, or that flight not yet gone) fetches alone.
        """
        self.stats.purged_flights += 1
        if again:
            return await self._fetch_alone(f)
        return await self._fetch_coalesced(f, again=True)

    async def _head(self, f: FetchRequest) -> Answer:
        """A HEAD asked of the origin as HEAD, whose answer updates the stored GET responses (§4.3.5).

        Not coalesced: it is cheap, and a GET waiting on it could not be answered from it.
        """
        try:
            outcome = await self.fetcher.head(f)
        except UpstreamError as exc:
            return self._origin_failed(f, exc)
        resp = outcome.leader_only  # the origin's answer, when no stored response answers
        return self._as_get_would_be(f, resp, await self._answer(f, outcome, leader=True))

    def _may_coalesce(self, f: FetchRequest) -> bool:
        if not self.cfg.fetch.coalesce:
            return False
        # A request that may not share (no-store) or carries credentials fetches alone,
        # so its answer never decides for anyone else.
        if "no-store" in f.directives or "authorization" in f.headers:
            return False
        until = self.hit_for_pass.get(f.key)
        if until is not None:
            if self.clock() < until:
                self.stats.hit_for_pass += 1
                return False
            del self.hit_for_pass[f.key]
            self.pass_unstored.discard(f.key)
        return True

    async def _flight(self, f: FetchRequest) -> FetchOutcome:
        """One fetch of a key; a body that streams into the cache is findable until stored."""
        outcome = await self._flight_in_box(f)
        stream = outcome.streaming
        if stream is not None:
            key = f.key
            self.streams[key] = stream

            def stored(_: object) -> None:
                if self.streams.get(key) is stream:
                    del self.streams[key]

            stream.stored.add_done_callback(stored)
        return outcome

    async def _flight_in_box(self, f: FetchRequest) -> FetchOutcome:
        """This worker's one fetch of a key, coordinated with the other workers of the box.

        With other workers sharing the box, the first to ask leads and the
        rest wait for it (a background fetch too: nobody waits on it), then
        read its copy from the shared L2. A leader that holds a copy of its
        own (stale, or it would not fetch) first looks in L2, where another
        worker may have stored a newer one. Alone in the box, it just fetches.
        """
        box = self.box
        if box is None or not box.shared:
            return await self._fetch_and_mark(f)
        f = dataclasses.replace(f, box_reads_l2=True)  # what it stores is read from L2 by the others
        lock = await box.lock(f.key, wait=True, timeout=self.cfg.fetch.coalesce_timeout)
        if lock.kind == "lead":
            released: Outcome | None = "error"
            try:
                if f.resource is not None:
                    newer = await self._stored_by_the_box(f, fresh=True)
                    if newer is not None:
                        released = "stored"
                        return newer
                outcome = await self._fetch_and_mark(f)
                if outcome.streaming is not None:
                    # Stored only once the body has streamed through: the lock is held till then.
                    released = None
                    self._release_when_stored(f.key, outcome.streaming)
                elif outcome.shared is not None and outcome.status.stored:
                    if await self.storage.settle(f.key):
                        released = "stored"  # the others read it from L2
                elif outcome.not_shareable:
                    released = "unshareable"
                return outcome
            finally:
                if released is not None:
                    box.release(f.key, released, self.cfg.fetch.hit_for_pass_ttl)
        if lock.kind == "pass" or lock.outcome == "unshareable":
            self.stats.box_passes += 1
            self._mark_pass(f)
            return await self.fetcher.fetch(f)
        if lock.outcome == "stored":
            self.stats.box_waits += 1
            found = await self._stored_by_the_box(f, fresh=False)
            if found is not None:
                return found
        # timeout, a leader that died or failed, a variant it did not store: fetch alone.
        return await self.fetcher.fetch(f)

    def _release_when_stored(self, key: str, stream: StoringStream) -> None:
        """Release the box's lock on key once a streamed body is stored (or is not)."""
        box = self.box
        assert box is not None

        async def release() -> None:
            released: Outcome = "error"
            try:
                entry = await asyncio.shield(stream.stored)
                if entry is not None and await self.storage.settle(key):
                    released = "stored"
            finally:
                box.release(key, released, self.cfg.fetch.hit_for_pass_ttl)

        task = asyncio.get_running_loop().create_task(release())
        self._releases.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self._releases.discard)

    async def _stored_by_the_box(self, f: FetchRequest, *, fresh: bool) -> FetchOutcome | None:
        """A copy of f's key in L2 that answers f (RFC 9111 §4.1), stored by another worker.

        It must be newer than the copy f revalidates or refreshes; and, with `fresh`
        (a leader deciding whether to fetch at all), fresh. A waiter takes it fresh or
        not: what the origin just answered the leader is the answer, even when its
        headers make it stale on arrival.
        """
        resource = await self.storage.aget_l2(f.key)
        if resource is None:
            return None
        entry = select_variant(resource, f.headers)
        sliced = entry is not None and self.slicer is not None and self.slicer.is_slice(entry)
        if entry is None or not (sliced or self._covers(entry, f)):
            return None
        # The copy another worker's fetch stored may have been fetched before a purge that came
        # while we waited for it (a request after the purge, waiting on a fetch begun before it):
        # a late copy, not taken, hard or soft (as a waiter in this worker: _purged_before_joining;
        # a soft one's copy may even be marked stale already, so a screen would let it through).
        if await self.purger.ban_of(f.key, entry) is not None:
            return None
        if f.stale is not None and entry.response_time <= f.stale.response_time:
            return None
        if fresh and policy.remaining_ttl(entry, self.clock()) <= 0:
            return None
        self.storage.promote(resource)  # newer than this worker's copy: L1 answers from it now
        return FetchOutcome(CacheStatus(fwd=f.why, collapsed=True, detail="l2"), shared=entry)

    async def _fetch_and_mark(self, f: FetchRequest) -> FetchOutcome:
        outcome = await self.fetcher.fetch(f)
        if outcome.not_shareable:
            self._mark_pass(f)
        return outcome

    def _mark_pass(self, f: FetchRequest) -> None:
        """Hit-for-pass: don't queue later requests behind fetches that can't be shared."""
        self.stats.pass_marks += 1
        if len(self.hit_for_pass) >= HIT_FOR_PASS_LIMIT:
            self._forget_marks()
        self.hit_for_pass[f.key] = self.clock() + self.cfg.fetch.hit_for_pass_ttl
        if f.resource is None:
            self.pass_unstored.add(f.key)

    def _forget_marks(self) -> None:
        """Keep hit-for-pass marks bounded: many distinct uncacheable URLs must not grow memory."""
        now = self.clock()
        marks = {key: until for key, until in self.hit_for_pass.items() if until > now}
        if len(marks) >= HIT_FOR_PASS_LIMIT:
            # All still current: keep the newer half (dicts keep insertion order).
            marks = dict(list(marks.items())[len(marks) // 2 :])
        self.hit_for_pass = marks
        self.pass_unstored.intersection_update(marks)

    async def _fetch_alone(self, f: FetchRequest) -> Answer:
        try:
            outcome = await self.fetcher.fetch(f)
        except UpstreamError as exc:
            return self._origin_failed(f, exc)
        return await self._answer(f, outcome, leader=True)

    async def _answer(self, f: FetchRequest, outcome: FetchOutcome, leader: bool) -> Answer:
        """Answer one request from a fetch outcome (its own, or a coalesced one)."""
        if outcome.status.stored:
            self.pass_unstored.discard(f.key)  # there is something to look up now
        now = self.clock()
        shared = outcome.shared
        if shared is not None and self.slicer is not None and self.slicer.is_slice(shared):
            # The first slice of a large object (Fetcher._store_first_slice): the rest from slices.
            if leader or variant_matches(shared, f.headers):
                status = _as_seen_by(outcome.status, leader)
                result = await self.slicer.answer(f, shared, None, status)
                if result is not None:
                    if not leader:
                        self.stats.coalesced += 1
                    return result[0]
                if leader:
                    return error_reply(502, "origin stopped answering slices", status)
            return await self._fetch_alone(f)
        if shared is not None and not leader and outcome.siblings and not variant_matches(shared, f.headers):
            # The leader's encoding is not this request's; another stored from the same response may be.
            shared = next((v for v in outcome.siblings if variant_matches(v, f.headers)), shared)
        if shared is not None:
            # Another variant, or parts that lack this request's range: it fetches its own.
            # The leader is answered the part the origin sent it, whatever it asked for.
            part = outcome.part if leader else None
            if (leader or variant_matches(shared, f.headers)) and (part or self._covers(shared, f)):
                status = _as_seen_by(outcome.status, leader)
                if not leader:
                    self.stats.coalesced += 1
                cookies = outcome.leader_fields if leader else ()
                age = policy.current_age(shared, now)
                if leader and shared.parts:
                    self._complete_partial(f, shared)
                elif leader and outcome.status.stored and self.prefetcher is not None:
                    self.prefetcher.stored(f.client, shared)
                return self._deliver_fetched(f, shared, age, status, cookies, part)
            return await self._fetch_alone(f)
        stale = outcome.stale
        if stale is not None:
            # An origin 5xx is an answer, not a disconnect: only stale-if-error may hide it (RFC 5861 §4).
            rule = policy.stale_for_failure(stale, f.directives, now, self.cfg.policy, disconnected=False)
            if rule is not None:
                if leader:
                    outcome.discard()
                fwd_status = outcome.status.fwd_status
                return self._deliver_stale_on_error(f, stale, fwd_status, rule, now, collapsed=not leader)
        error = outcome.error
        if error is not None:
            # The origin's error, shared with every coalesced request (never stored).
            status = outcome.status._replace(collapsed=not leader)
            return self._deliver_fetched(f, error, policy.current_age(error, now), status)
        streaming = outcome.streaming
        if streaming is not None:
            if leader and not streaming.taken:
                return self._stream_while_storing(f, streaming, outcome.status)
            return await self._answer_when_stored(f, streaming, outcome.status)
        if leader and outcome.leader_only is not None:
            resp, outcome.leader_only = outcome.leader_only, None
            if f.client.method == "HEAD":
                resp.close()  # fetched with GET; a HEAD client gets the header section only
                return Reply(
                    resp.status,
                    resp.reason,
                    self.fetcher.client_response_headers(resp.headers),
                    b"",
                    outcome.status,
                )
            if resp.status == 206 and self.slicer is not None:
                # The slice-aligned range asked for the client (Fetcher._range_to_forward) holds more than
                # it asked for, and could not be stored: the client gets its own range of it.
                trim = slices.trim(resp.headers.get("Content-Range"), combined_value(f.headers, "Range"))
                if trim is not None:
                    return self._trimmed(resp, outcome.status, outcome.prefix, *trim)
            return await self._stream(resp, outcome.status, outcome.prefix)
        # Not shareable, and this request did not start the fetch: go alone.
        return await self._fetch_alone(f)

    def _stream_while_storing(self, f: FetchRequest, stream: StoringStream, status: CacheStatus) -> Reply:
        """The leader's answer to a large fetch: the origin's body as it arrives (proxy/tee.py)."""
        resp = stream.resp
        out = self.fetcher.client_response_headers(resp.headers)
        # The fields the route's rules strip from what is stored: the leader does not get them either.
        for name in f.overrides(resp.status, resp.headers.get("Content-Type")).strip:
            out.popall(name, None)
        if resp.content_length is not None:
            out["Content-Length"] = str(resp.content_length)
        settings = self.fetcher.compression
        if settings is not None and settings.may_encode(resp.status, resp.headers.items()):
            # Stored, it will vary on Accept-Encoding (its encodings beside it): a cache after this
            # one must key this identity copy the same way (RFC 9110 §12.5.5).
            varies = {v.strip().lower() for line in out.getall("Vary", ()) for v in line.split(",")}
            if "accept-encoding" not in varies and "*" not in varies:
                out.add("Vary", "Accept-Encoding")
        if f.client.method == "HEAD":
            stream.finish()  # fetched with GET: the cache reads the body, the client gets the head
            return Reply(resp.status, resp.reason, out, b"", status)
        return Reply(resp.status, resp.reason, out, stream.body(), status)

    async def _answer_when_stored(
        self,
        f: FetchRequest,
        stream: StoringStream,
        status: CacheStatus,
        joined: int = 0,
        again: bool = False,
    ) -> Answer:
        """A request coalesced on a streamed fetch: answered from what it stores, when it has.

        It waits as long as a coalesced request waits for any fetch; a body that
        was not stored (too large, broken off) or takes longer sends it alone. One
        that joined at epoch `joined` (0: the fetch is its own) after a purge covering
        what the fetch stored fetches again (_purged_before_joining).
        """
        try:
            entry = await asyncio.wait_for(asyncio.shield(stream.stored), self.cfg.fetch.coalesce_timeout)
        except TimeoutError:
            self.stats.coalesce_timeouts += 1
            entry = None
        if self._purged_before_joining(f.key, entry, joined):
            return await self._fetch_again(f, again)
        if entry is not None and not variant_matches(entry, f.headers):
            entry = await self._stored_encoding(f, entry)
        if entry is None or not self._covers(entry, f):
            return await self._fetch_alone(f)
        self.stats.coalesced += 1
        status = status._replace(stored=True, collapsed=True, detail=None)
        return self._deliver_fetched(f, entry, policy.current_age(entry, self.clock()), status)

    async def _stored_encoding(self, f: FetchRequest, identity: StoredResponse) -> StoredResponse | None:
        """The encoding of a streamed body (stored beside it, proxy/compression.py) that f asks for."""
        resource, _ = await self.storage.aget(f.key)
        if resource is None:
            return None
        return next(
            (
                v
                for v in resource.variants
                if compression.is_derived(v, identity) and variant_matches(v, f.headers)
            ),
            None,
        )

    def _origin_failed(self, f: FetchRequest, exc: UpstreamError, collapsed: bool = False) -> Answer:
        """No usable answer from the origin: a stored response where RFC 9111 §4.2.4 or RFC 5861 §4
        allow one (stale on disconnect, stale-if-error), else 502/504."""
        self.stats.origin_errors += 1
        stale = f.stale
        if stale is not None:
            now = self.clock()
            rule = policy.stale_for_failure(stale, f.directives, now, self.cfg.policy, disconnected=True)
            if rule is not None:
                return self._deliver_stale_on_error(f, stale, None, rule, now, collapsed)
        return error_reply(exc.status_hint, exc.reason, CacheStatus(fwd=f.why, detail=exc.reason))

    # ------------------------------------------------------------- background

    def _revalidate_in_background(self, f: FetchRequest) -> None:
        """One background revalidation per key, owned by the engine (outlives the request)."""
        if self.flights.in_flight(f.key):
            return
        self.stats.background_revalidations += 1
        task, _ = self.flights.start(f.key, lambda: self._flight(f))
        task.add_done_callback(self._background_done)

    def _refresh_ahead(self, f: FetchRequest) -> None:
        """Refresh a popular key before it expires, within a bounded number of such fetches."""
        if self.flights.in_flight(f.key):
            return
        if self._refreshing >= self.cfg.fetch.refresh_ahead_max_concurrent:
            self.stats.refresh_ahead_skipped += 1
            return
        self.stats.refresh_ahead += 1
        self._refreshing += 1
        task, _ = self.flights.start(f.key, lambda: self._flight(f))
        task.add_done_callback(self._refresh_done)

    def _complete_partial(self, f: FetchRequest, entry: StoredResponse) -> None:
        """Fetch the whole of an object of which only parts are stored, behind the answer.

        A range miss asks the origin for the range (the client gets its bytes at
        once, RFC 9111 §3.3); when the object is within cache.max_object_size, the
        whole representation is then fetched in the background, as a cache that
        fetched the whole object on a range miss would have, so that later ranges
        and whole GETs are hits. Bounded like refresh-ahead.
        """
        if not self.cfg.fetch.complete_ranges:
            return
        if entry.complete_length > self.cfg.cache.max_object_size or self.flights.in_flight(f.key):
            return
        if self._refreshing >= self.cfg.fetch.refresh_ahead_max_concurrent:
            self.stats.refresh_ahead_skipped += 1
            return
        headers = f.headers.copy()
        headers.popall("Range", None)
        headers.popall("If-Range", None)
        whole = FetchRequest(
            f.client, headers, f.key, f.resource, None, "partial", f.directives, rules=f.rules
        )
        self.stats.partial_completions += 1
        self._refreshing += 1
        task, _ = self.flights.start(f.key, lambda: self._flight(whole))
        task.add_done_callback(self._refresh_done)

    def _refresh_done(self, task: asyncio.Task[FetchOutcome]) -> None:
        self._refreshing -= 1
        self._background_done(task)

    def _background_done(self, task: asyncio.Task[FetchOutcome]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # The stale entry stays in place; the next request tries again.
            self.stats.background_failures += 1
            log.warning("background revalidation failed: %s", exc)
            return
        task.result().discard()

    # ------------------------------------------------------------------- pass

    async def _pass(
        self,
        req: ClientRequest,
        headers: Headers,
        fwd: str,
        *,
        invalidate: bool,
        interim: InterimSink | None = None,
        head: FetchRequest | None = None,
    ) -> Answer:
        """Forward without lookup or storage; an unsafe method's success invalidates (§4.4)
        and, with policy.write_through, may hold the GET response stored next. `head`: a HEAD
        this cache would fetch as `head` for a GET, answered as that GET would be (_as_get_would_be)."""
        self.stats.passes += 1
        request_time = self.clock()
        try:
            if head is None:
                resp = await self.fetcher.forward(req, headers, interim)
            else:
                resp = await self.fetcher.forward_head(req, headers, interim)
        except UpstreamError as exc:
            if exc.cause != CLIENT_BODY_CAUSE:  # a request body that broke off is not the origin's error
                self.stats.origin_errors += 1
            return error_reply(exc.status_hint, exc.reason, CacheStatus(fwd=fwd, detail=exc.reason))
        if invalidate and 200 <= resp.status < 400:
            await self.fetcher.invalidate_after_unsafe(req, resp.headers)
            if 200 <= resp.status < 300 and req.method in self.cfg.policy.write_through:
                return await self._write_through(req, resp, fwd, request_time)
        reply = await self._stream(resp, CacheStatus(fwd=fwd, fwd_status=resp.status))
        return reply if head is None else self._as_get_would_be(head, resp, reply)

    async def _write_through(
        self, req: ClientRequest, resp: OriginResponse, fwd: str, request_time: float
    ) -> Reply:
        """The client's answer to an unsafe request, its content stored for a GET of the same URI
        when it is that resource's new representation (Fetcher.write_through). The client gets
        the origin's answer as on any pass, with `stored` in its Cache-Status when it was kept."""
        get = req.as_get()
        lk = Lookup(get, request_time)  # keyed and matched as the GET would be; never looked up
        if self.rules is not None and get.path not in self.rules.unmatched:
            lk.rules = self.rules.match(get)
            if lk.rules is not None and lk.rules.bypass:  # GETs of it are never stored: nor this
                return await self._stream(resp, CacheStatus(fwd=fwd, fwd_status=resp.status))
        lk.key = self.fetcher.key_for(get)
        lk.directives = policy.request_directives_of(get.cache_control, get.pragma, self.cfg.policy)
        f = self._fetch_request(lk, None, fwd)
        try:
            stored, body, complete = await self.fetcher.write_through(f, resp, request_time)
        except UpstreamError:
            self.stats.origin_errors += 1
            resp.close()
            raise
        status = CacheStatus(fwd=fwd, fwd_status=resp.status, stored=stored)
        if not complete:
            return await self._stream(resp, status, body)
        out = self.fetcher.client_response_headers(resp.headers)
        out["Content-Length"] = str(len(body))
        return Reply(resp.status, resp.reason, out, body, status)

    async def _stream(self, resp: OriginResponse, status: CacheStatus, prefix: bytes = b"") -> Reply:
        """Pass an origin response to the client without storing it; only a small one is buffered.

        A body of known length up to SMALL_PASS_BODY is read whole first: one
        write instead of a stream, and an origin that breaks off gets the
        client a clean 502 rather than a cut connection.
        """
        out = self.fetcher.client_response_headers(resp.headers)
        length = resp.content_length
        if length is not None:
            out["Content-Length"] = str(length)
            if length <= SMALL_PASS_BODY:
                try:
                    data, complete = await resp.read_up_to(length)
                except UpstreamError:
                    self.stats.origin_errors += 1
                    raise
                if complete:
                    return Reply(resp.status, resp.reason, out, prefix + data, status)
                prefix += data

        async def body() -> AsyncIterator[bytes]:
            if prefix:
                yield prefix
            async for chunk in resp.iter_rest():
                yield chunk

        return Reply(resp.status, resp.reason, out, body(), status)

    def _trimmed(
        self, resp: OriginResponse, status: CacheStatus, prefix: bytes, skip: int, wanted: ByteRange
    ) -> Reply:
        """Bytes `wanted` of an origin 206 that starts `skip` bytes before them, as a 206 of their own."""
        out = self.fetcher.client_response_headers(resp.headers)
        out["Content-Range"] = wanted.content_range
        count = wanted.last - wanted.first + 1
        out["Content-Length"] = str(count)

        async def received() -> AsyncIterator[bytes]:
            if prefix:
                yield prefix
            async for chunk in resp.iter_rest():
                yield chunk

        async def body() -> AsyncIterator[bytes]:
            left = count
            try:
                async for chunk in slices.byte_window(received(), skip, count):
                    left -= len(chunk)
                    yield chunk
            finally:
                resp.close()  # whatever follows the client's range is not read
            if left > 0:
                raise UpstreamError(502, "origin response body incomplete")

        return Reply(206, "Partial Content", out, body(), status)


def _name_rules(answer: Answer, rules: Match) -> None:
    """Cache-Status names the rules that matched the request and the response it is answered with."""
    if isinstance(answer, Delivery):
        entry = answer.entry
        _, label = rules.for_stored(entry.status, entry.headers)
    else:
        _, label = rules.for_response(answer.status, answer.headers.get("Content-Type"))
    if label is not None:
        answer.cache_status = answer.cache_status._replace(rule=label)


def _discard_outcome(task: asyncio.Task[FetchOutcome]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().discard()


def _as_seen_by(status: CacheStatus, leader: bool) -> CacheStatus:
    """A fetch's Cache-Status as one of its requests sees it: collapsed unless it led the fetch.

    (NamedTuple._replace is a Python-level call: made only when the value changes.)"""
    if leader or status.collapsed:
        return status
    return status._replace(collapsed=True)
