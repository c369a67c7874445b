"""The engine: the only place where the pure policy meets storage, the origin and the clock.

One request goes: normalise → key → lookup (L1, then L2 off the loop) →
`policy.decide` → deliver / revalidate / fetch / pass. Fetches for one key
are coalesced (one origin request however many clients wait), background
revalidations (stale-while-revalidate, refresh-ahead) run in tasks owned by
the engine rather than by the request, and stale-if-error replaces origin
failures where RFC 5861 allows. The engine returns a `Reply` value; writing
it to a socket is the app's job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import assert_never

from multidict import CIMultiDict

from proxy import policy
from proxy.cache_status import CacheStatus
from proxy.coalescer import SingleFlight
from proxy.config import Config
from proxy.entry import CachedResource, StoredResponse
from proxy.fetcher import ClientRequest, Fetcher, FetchOutcome, FetchRequest
from proxy.headers import Headers
from proxy.keys import normalise_accept_encoding, select_variant, variant_matches
from proxy.purger import Purger
from proxy.ranges import ByteRange, Unsatisfiable, if_range_allows, parse_range
from proxy.routing import HOP_HEADER, FetchRouter
from proxy.storage.tiered import TieredStorage
from proxy.upstream import OriginResponse, Upstream, UpstreamError

__all__ = ["ClientRequest", "Engine", "EngineStats", "Reply", "error_reply"]

log = logging.getLogger("proxy.engine")

# Request fields that need more than a stored response's bytes (see Engine.fast_hit).
_NOT_FAST = (
    "If-None-Match",
    "If-Modified-Since",
    "If-Match",
    "If-Unmodified-Since",
    "If-Range",
    "Range",
    HOP_HEADER,
)

Clock = Callable[[], float]

# At most this many hit-for-pass marks are kept (see Engine._forget_marks).
HIT_FOR_PASS_LIMIT = 100_000
# Pass-through bodies of known length up to this size are read whole before answering.
SMALL_PASS_BODY = 64 * 1024


@dataclass(slots=True)
class Reply:
    """A response for the app to write: a complete body, or a stream."""

    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes | AsyncIterator[bytes] = b""
    cache_status: CacheStatus = field(default_factory=CacheStatus)


@dataclass(slots=True)
class EngineStats:
    """Counters of what the engine did (exposed by the stats endpoint)."""

    requests: int = 0
    hits: int = 0
    fast_hits: int = 0  # hits answered by the lean front (proxy/fastpath.py)
    misses: int = 0
    passes: int = 0
    stale_served: int = 0  # stale-while-revalidate, stale-if-error, max-stale
    coalesced: int = 0  # requests answered from another request's fetch
    coalesce_timeouts: int = 0
    hit_for_pass: int = 0  # requests forwarded at once because the key was marked
    background_revalidations: int = 0
    background_failures: int = 0
    refresh_ahead: int = 0
    refresh_ahead_skipped: int = 0
    origin_errors: int = 0


def error_reply(status: int, reason: str, cache_status: CacheStatus | None = None) -> Reply:
    """A short plain-text error; never a traceback."""
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Content-Type"] = "text/plain; charset=utf-8"
    headers["Cache-Control"] = "no-store"
    return Reply(status, "", headers, (reason + "\n").encode(), cache_status or CacheStatus(detail=reason))


class Engine:
    """Serves requests from the tiers or the origin according to the policy."""

    def __init__(
        self,
        cfg: Config,
        storage: TieredStorage,
        upstream: Upstream,
        clock: Clock,
        purger: Purger,
        router: FetchRouter | None = None,
    ) -> None:
        self.cfg = cfg
        self.storage = storage
        self.clock = clock
        self.purger = purger
        self.fetcher = Fetcher(cfg, storage, upstream, clock, purger)
        self.fetcher.router = router
        self._tags_stripped = cfg.policy.strip_tag_fields and bool(cfg.policy.tag_fields)
        self.flights: SingleFlight[FetchOutcome] = SingleFlight()
        self.stats = EngineStats()
        # key -> clock time until which the key is forwarded without coalescing.
        self.hit_for_pass: dict[str, float] = {}
        # The marked keys under which nothing was stored when they were marked: their
        # lookups are skipped until the mark expires or this worker stores the key.
        self.pass_unstored: set[str] = set()
        self._refreshing = 0

    async def close(self) -> None:
        """Stop background fetches (at shutdown)."""
        await self.flights.close()

    # ------------------------------------------------------------------ entry

    def fast_hit(self, req: ClientRequest) -> tuple[StoredResponse, float, float, str] | bool:
        """(entry, age, ttl, tier) when the request is a plain fresh hit; else whether it is a known miss.

        True means nothing is stored under the request's key (handle() may
        skip the lookup: see its known_miss); False means handle() must look.

        The hit path of the lean front end (proxy/fastpath.py): no await, the
        same policy calls as handle(). L1, or L2 where a value can be read on
        the loop (TieredStorage.get_now). Anything that needs more than
        the stored bytes (conditionals, ranges, stale serving, revalidation,
        refresh-ahead, pending purges, a peer asking) returns None and goes
        through handle(), so every RFC rule still applies.
        """
        purger = self.purger
        if purger.behind():
            return False
        headers = req.headers
        for name in _NOT_FAST:
            if name in headers:
                return False
        if req.method not in policy.CACHEABLE_METHODS:
            return False
        key = self.fetcher.key_for(req)
        if key in self.pass_unstored and self.clock() < self.hit_for_pass.get(key, 0.0):
            return True  # hit-for-pass with nothing stored: no lookup (like Varnish's hit-for-miss)
        answered, resource, tier = self.storage.get_now(key)
        if resource is None or tier is None:
            return answered  # answered with nothing: a miss in every tier
        if (purger.bans or purger.ban_all is not None) and purger.screen(resource) is not resource:
            return False  # a late copy a purge covers: handle() cleans it out
        opts = self.cfg.policy
        variants = resource.variants
        if len(variants) == 1 and not variants[0].vary_names:
            entry: StoredResponse | None = variants[0]  # no Vary: any request matches
        else:
            normalised = CIMultiDict(headers)
            normalised["Accept-Encoding"] = normalise_accept_encoding(
                headers.get("Accept-Encoding"), opts.accept_encodings
            )
            entry = select_variant(resource, normalised)
        if entry is None:
            return False
        now = self.clock()
        # Accept-Encoding (the only field normalised above) holds no cache directive.
        decision = policy.decide(req.method, policy.request_directives(headers, opts), entry, True, now, opts)
        if not isinstance(decision, policy.Deliver) or decision.stale:
            return False
        if policy.refresh_ahead_due(entry, decision.ttl, self.cfg.fetch.refresh_ahead_fraction):
            return False
        self.stats.requests += 1
        self.stats.hits += 1
        self.stats.fast_hits += 1
        return entry, decision.age, decision.ttl, tier

    async def handle(self, req: ClientRequest, *, known_miss: bool = False) -> Reply:
        """Answer one client request.

        known_miss: fast_hit() just found nothing under this request's key, so
        the lookup is not repeated (a copy stored in between is found by the
        next request; coalescing still joins a fetch in flight).
        """
        self.stats.requests += 1
        purger = self.purger
        if purger.behind():
            await purger.sync()  # another worker purged: drop those objects from our L1 first
        now = self.clock()
        opts = self.cfg.policy
        method = req.method
        if method not in policy.CACHEABLE_METHODS:
            return await self._pass(req, req.headers, "bypass", invalidate=method not in policy.SAFE_METHODS)

        # Accept-Encoding is reduced before keying, and the origin sees the
        # reduced value too, so a stored variant always matches what it holds.
        headers = CIMultiDict(req.headers)
        headers["Accept-Encoding"] = normalise_accept_encoding(
            headers.get("Accept-Encoding"), opts.accept_encodings
        )
        if policy.has_precondition_for_origin(headers):
            return await self._pass(req, headers, "bypass", invalidate=False)
        key = self.fetcher.key_for(req)
        directives = policy.request_directives(headers, opts)
        if HOP_HEADER in headers:
            self.fetcher.stats.served_for_peers += 1

        if known_miss:
            self.storage.stats.misses += 1
            resource, tier = None, None
        else:
            resource, tier = await self.storage.aget(key)
        if resource is not None and (purger.bans or purger.ban_all is not None):
            resource = await self._screen(resource)
        entry = select_variant(resource, headers) if resource is not None else None
        decision = policy.decide(method, directives, entry, resource is not None, now, opts)
        match decision:
            case policy.Deliver(entry=found, age=age, ttl=ttl, revalidate_in_background=behind):
                fetch = FetchRequest(req, headers, key, resource, found, "stale", directives)
                if behind:
                    # RFC 5861 §3: the stale answer now, one revalidation behind it.
                    self.stats.stale_served += 1
                    self._revalidate_in_background(fetch)
                    status = CacheStatus(fwd="stale", ttl=int(ttl), detail="stale-while-revalidate")
                    return self._deliver(req, headers, found, age, status)
                self.stats.hits += 1
                if policy.refresh_ahead_due(found, ttl, self.cfg.fetch.refresh_ahead_fraction):
                    self._refresh_ahead(fetch)
                if decision.stale:
                    self.stats.stale_served += 1
                # detail says which tier answered (l1 / l2).
                return self._deliver(
                    req, headers, found, age, CacheStatus(hit=True, ttl=int(ttl), detail=tier)
                )
            case policy.Revalidate(entry=stale, reason=why):
                fwd = "request" if why == "request" else "stale"
                self.stats.misses += 1
                return await self._fetch(FetchRequest(req, headers, key, resource, stale, fwd, directives))
            case policy.Fetch(reason=why):
                self.stats.misses += 1
                if method == "HEAD":
                    # A HEAD response never creates an entry (RFC 9111 §3): forward it.
                    return await self._pass(req, headers, why, invalidate=False)
                return await self._fetch(FetchRequest(req, headers, key, resource, None, why, directives))
            case policy.Pass(reason=why):
                return await self._pass(req, headers, "bypass", invalidate=False)
            case policy.GatewayTimeout():
                return error_reply(504, "not in cache (only-if-cached)", CacheStatus(detail="only-if-cached"))
            case _:
                assert_never(decision)

    async def _screen(self, resource: CachedResource) -> CachedResource | None:
        """Drop (or soften) a late copy a purge covers; clean it out of the tiers too."""
        screened = self.purger.screen(resource)
        if screened is resource:
            return resource
        if screened is None:
            await self.storage.adelete(resource.key)
        else:
            await self.storage.aset(screened)
        return screened

    # ---------------------------------------------------------------- deliver

    def _deliver(
        self, req: ClientRequest, headers: Headers, entry: StoredResponse, age: float, status: CacheStatus
    ) -> Reply:
        """Serve a stored response: 304 to a matching conditional, 206/416 to a Range, else whole."""
        out: CIMultiDict[str] = CIMultiDict()
        if policy.client_not_modified(headers, entry):
            out.extend(policy.not_modified_header_list(entry))
            out["Age"] = str(int(age))
            return Reply(304, "Not Modified", out, b"", status)
        out.extend(entry.headers)
        out["Age"] = str(int(age))
        if entry.tags and self._tags_stripped and HOP_HEADER in headers:
            # A peer edge stores this too: it needs the tags that clients never see.
            out[self.cfg.policy.tag_fields[0]] = " ".join(entry.tags)
        body = entry.body
        if (
            req.method == "GET"
            and entry.status == 200
            and "range" in headers
            and if_range_allows(headers.get("If-Range"), entry)
        ):
            wanted = parse_range(headers.get("Range"), len(body))
            if isinstance(wanted, ByteRange):
                out["Content-Range"] = wanted.content_range
                return Reply(206, "Partial Content", out, body[wanted.first : wanted.last + 1], status)
            if isinstance(wanted, Unsatisfiable):
                out["Content-Range"] = wanted.content_range
                for name in ("Content-Type", "Content-Encoding"):
                    out.popall(name, None)
                return Reply(416, "Range Not Satisfiable", out, b"", status)
        if entry.status == 200 and "accept-ranges" not in out:
            out["Accept-Ranges"] = "bytes"
        return Reply(entry.status, entry.reason, out, body, status)

    def _deliver_stale_on_error(
        self, f: FetchRequest, stale: StoredResponse, fwd_status: int | None, collapsed: bool = False
    ) -> Reply:
        self.stats.stale_served += 1
        now = self.clock()
        ttl = policy.remaining_ttl(stale, now)
        status = CacheStatus(
            fwd=f.why, fwd_status=fwd_status, ttl=int(ttl), collapsed=collapsed, detail="stale-if-error"
        )
        return self._deliver(f.client, f.headers, stale, policy.current_age(stale, now), status)

    # ------------------------------------------------------------------ fetch

    async def _fetch(self, f: FetchRequest) -> Reply:
        """A miss or a revalidation, coalesced with any fetch of the same key in flight."""
        if not self._may_coalesce(f):
            return await self._fetch_alone(f)
        task, leader = self.flights.start(f.key, lambda: self._flight(f))
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
        return await self._answer(f, outcome, leader)

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
        outcome = await self.fetcher.fetch(f)
        if outcome.not_shareable:
            # Hit-for-pass: don't queue later requests behind fetches that can't be shared.
            if len(self.hit_for_pass) >= HIT_FOR_PASS_LIMIT:
                self._forget_marks()
            self.hit_for_pass[f.key] = self.clock() + self.cfg.fetch.hit_for_pass_ttl
            if f.resource is None:
                self.pass_unstored.add(f.key)
        return outcome

    def _forget_marks(self) -> None:
        """Keep hit-for-pass marks bounded: many distinct uncacheable URLs must not grow memory."""
        now = self.clock()
        marks = {key: until for key, until in self.hit_for_pass.items() if until > now}
        if len(marks) >= HIT_FOR_PASS_LIMIT:
            # All still current: keep the newer half (dicts keep insertion order).
            marks = dict(list(marks.items())[len(marks) // 2 :])
        self.hit_for_pass = marks
        self.pass_unstored.intersection_update(marks)

    async def _fetch_alone(self, f: FetchRequest) -> Reply:
        try:
            outcome = await self.fetcher.fetch(f)
        except UpstreamError as exc:
            return self._origin_failed(f, exc)
        return await self._answer(f, outcome, leader=True)

    async def _answer(self, f: FetchRequest, outcome: FetchOutcome, leader: bool) -> Reply:
        """Answer one request from a fetch outcome (its own, or a coalesced one)."""
        if outcome.status.stored:
            self.pass_unstored.discard(f.key)  # there is something to look up now
        now = self.clock()
        shared = outcome.shared
        if shared is not None:
            if leader or variant_matches(shared, f.headers):
                status = replace(outcome.status, collapsed=not leader)
                if not leader:
                    self.stats.coalesced += 1
                reply = self._deliver(f.client, f.headers, shared, policy.current_age(shared, now), status)
                if leader:
                    for cookie in outcome.leader_cookies:
                        reply.headers.add("Set-Cookie", cookie)
                return reply
            return await self._fetch_alone(f)  # another variant: this request fetches its own
        stale = outcome.stale
        if stale is not None and policy.within_stale_if_error(stale, f.directives, now, self.cfg.policy):
            if leader:
                outcome.discard()
            return self._deliver_stale_on_error(f, stale, outcome.status.fwd_status, collapsed=not leader)
        error = outcome.error
        if error is not None:
            # The origin's error, shared with every coalesced request (never stored).
            status = replace(outcome.status, collapsed=not leader)
            return self._deliver(f.client, f.headers, error, policy.current_age(error, now), status)
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
            return await self._stream(resp, outcome.status, outcome.prefix)
        # Not shareable, and this request did not start the fetch: go alone.
        return await self._fetch_alone(f)

    def _origin_failed(self, f: FetchRequest, exc: UpstreamError, collapsed: bool = False) -> Reply:
        """RFC 5861 §4: stale-if-error for an unreachable or timed-out origin, else 502/504."""
        self.stats.origin_errors += 1
        stale = f.stale
        if stale is not None and policy.within_stale_if_error(
            stale, f.directives, self.clock(), self.cfg.policy
        ):
            return self._deliver_stale_on_error(f, stale, None, collapsed)
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

    async def _pass(self, req: ClientRequest, headers: Headers, fwd: str, *, invalidate: bool) -> Reply:
        """Forward without lookup or storage; an unsafe method's success invalidates (§4.4)."""
        self.stats.passes += 1
        try:
            resp = await self.fetcher.forward(req, headers)
        except UpstreamError as exc:
            self.stats.origin_errors += 1
            return error_reply(exc.status_hint, exc.reason, CacheStatus(fwd=fwd, detail=exc.reason))
        if invalidate and 200 <= resp.status < 400:
            await self.fetcher.invalidate_after_unsafe(req, resp.headers)
        return await self._stream(resp, CacheStatus(fwd=fwd, fwd_status=resp.status))

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


def _discard_outcome(task: asyncio.Task[FetchOutcome]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().discard()
