"""Origin fetches for the cache: miss, revalidation, pass-through, and invalidation.

One fetch turns an origin answer into a `FetchOutcome`: a stored (or
freshened) snapshot that any coalesced request may be answered from, or an
unread response that only the request which started the fetch may stream.
Storing decisions come from `policy`; this file does the I/O around them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from multidict import CIMultiDict
from yarl import URL

from proxy import compression, policy, ranges, slices
from proxy.cache_status import CacheStatus
from proxy.config import Config
from proxy.entry import CachedResource, StoredResponse
from proxy.headers import Directives, Headers, combined_value, end_to_end
from proxy.keys import (
    UrlKeys,
    normalise_accept_language,
    select_variant,
    variant_matches,
    with_variant,
    with_variants,
)
from proxy.links import same_host_target
from proxy.messages import ClientRequest
from proxy.origin import InterimSink, OriginResponse, Upstream, UpstreamError
from proxy.origin.errors import INVALID, failure
from proxy.origin.rules import NO_BODY_STATUSES
from proxy.origin.upstream import BufferedResponse
from proxy.purger import Purger
from proxy.routing import HOP_HEADER, FetchRouter, Route
from proxy.rules import Match
from proxy.storage.memory import MemoryStorage
from proxy.storage.tiered import TieredStorage
from proxy.tee import StoringStream

log = logging.getLogger("proxy.fetcher")

# Streamed bodies held in memory at once while they are stored: each up to cache.max_object_size.
STORES_AT_ONCE = 2

# Request fields the cache answers itself; never sent on its own fetches.
CLIENT_CONDITIONALS = ("If-None-Match", "If-Modified-Since", "If-Range", "Range")
# The conditions a 304 answers (RFC 9110 §13.1.2, §13.1.3).
VALIDATING_CONDITIONALS = ("If-None-Match", "If-Modified-Since")
# Error pages larger than this are streamed to the leader alone instead of shared.
ERROR_BODY_LIMIT = 64 * 1024
# An owner edge's answer up to this long is read whole before it is taken, within the peer
# timeout: a body that breaks off or trickles is then the owner's failure, and the origin is
# asked instead (a larger one streams, and breaking off is the client's 502, as from the origin).
OWNER_BODY_READ = 256 * 1024
# Keys of short targets are memoised (a client could vary long ones endlessly), this many at most.
KEY_MEMO_TARGET = 512
KEY_MEMO_SIZE = 65536
# The statuses of an unsafe request's answer that may be stored for GETs (Fetcher.write_through).
WRITE_THROUGH_STATUSES = frozenset({200, 203})


@dataclass(slots=True)
class RoutingStats:
    """Owner routing in an edge cluster (all zero on a lone proxy)."""

    forwarded_to_owner: int = 0  # cache fetches answered by the owning peer
    owner_fallbacks: int = 0  # the owner failed; the origin was asked instead
    owner_copies_refused: int = 0  # the owner's copy predated a purge here (the stream was down)
    upstream_copies_refused: int = 0  # a shield's copy predated a purge here: asked with no-cache
    served_for_peers: int = 0  # requests other edges sent here as the owner (hits included)


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """One cache fetch: the client request that caused it, normalised, with what is stored."""

    client: ClientRequest
    headers: CIMultiDict[str]  # normalised client headers (Accept-Encoding reduced)
    key: str
    resource: CachedResource | None
    stale: StoredResponse | None  # the entry being revalidated, if any
    why: str  # Cache-Status fwd reason: uri-miss / vary-miss / stale / request
    directives: Directives
    # Told of each 1xx the origin sends before its final response (RFC 9110 §15.2): the
    # client's connection, for a request answered in the foreground; None in the background.
    interim: InterimSink | None = None
    # Other workers of the box read what this fetch stores from L2 (proxy/box.py).
    box_reads_l2: bool = False
    rules: Match | None = None  # the rules the request matched (proxy/rules.py)

    def overrides(self, status: int, content_type: str | None) -> policy.Overrides:
        """What the rules change in storing a response with this status and Content-Type."""
        rules = self.rules
        return rules.for_response(status, content_type)[0] if rules is not None else policy.NO_OVERRIDES

    def stored_overrides(self, entry: StoredResponse) -> policy.Overrides:
        """overrides() for the stored response `entry` (freshened by a 304 or a HEAD)."""
        rules = self.rules
        return rules.for_stored(entry.status, entry.headers)[0] if rules is not None else policy.NO_OVERRIDES


@dataclass(slots=True)
class FetchOutcome:
    """What one origin fetch produced.

    `shared` is an immutable snapshot every coalesced request may be answered
    from (it was storable). `leader_only` is an unread origin response that
    only the request which started the fetch may stream (not shareable:
    private, Set-Cookie, no-store, too large, or an error page); `prefix` is
    what was already read of it. `stale` is the entry being revalidated, kept
    for stale-if-error when the origin answered 500/502/503/504.
    """

    status: CacheStatus
    shared: StoredResponse | None = None
    error: StoredResponse | None = None  # an origin 5xx any waiter may be given (never stored)
    leader_only: OriginResponse | None = None
    prefix: bytes = b""
    stale: StoredResponse | None = None
    not_shareable: bool = False  # the response itself forbids sharing (for hit-for-pass)
    # Fields of a stored response for the client that fetched it only, never stored nor shared:
    # its Set-Cookie, and the fields private= / no-cache= name (RFC 9111 §5.2.2.4, §5.2.2.7).
    leader_fields: tuple[tuple[str, str], ...] = ()
    # The range of the 206 the origin sent (first, last): what the leader is answered.
    part: tuple[int, int] | None = None
    # The other variants stored from the same response (its encodings, proxy/compression.py):
    # a coalesced request that `shared` does not match may match one of them.
    siblings: tuple[StoredResponse, ...] = ()
    # A large body the leader streams while it is stored; the others wait for `streaming.stored`.
    streaming: StoringStream | None = None

    def discard(self) -> None:
        """Drop an unread leader-only response nobody will stream (a streamed one is still stored)."""
        if self.leader_only is not None:
            self.leader_only.close()
            self.leader_only = None
        if self.streaming is not None and not self.streaming.taken:
            self.streaming.finish()


def _not_modified_unasked(resp: OriginResponse, conditional: Headers) -> None:
    """Raise a 502 for a 304 answering a request that carried no condition (`conditional`: the
    request's fields, or the validators a fetch added).

    RFC 9110 §15.4.5: a 304 answers a conditional request only. A cache fetch never forwards
    the client's own conditionals (origin_request_headers), so without ours (nothing stored,
    or nothing to validate it with) a 304 would tell a client that holds no copy that its copy
    is current, and it could update nothing stored (RFC 9111 §4.3.4).
    """
    if resp.status == 304 and not any(name in conditional for name in VALIDATING_CONDITIONALS):
        resp.close()
        raise failure(INVALID)


class Fetcher:
    """Talks to the origin on the cache's behalf and stores what the policy allows."""

    def __init__(
        self,
        cfg: Config,
        storage: TieredStorage,
        upstream: Upstream,
        clock: Callable[[], float],
        purger: Purger,
        url_keys: UrlKeys,
    ):
        self.cfg = cfg
        self.storage = storage
        self.purger = purger
        self.upstream = upstream
        # Streamed bodies read back from their spool and stored at once (proxy/tee.py).
        self._store_gate = asyncio.Semaphore(STORES_AT_ONCE)
        self.clock = clock
        self.origin_authority = URL(cfg.origin.url).raw_authority
        self._drop_request = (*cfg.origin.unkeyed_request_headers, "Host", HOP_HEADER)
        self.router: FetchRouter | None = None
        self.stats = RoutingStats()
        # How URLs are keyed (the purger names URLs the same way), and its memo per request target.
        self.url_keys = url_keys
        self._keys: dict[tuple[str, str, str, str], str] = {}
        # Per-route rules (None: none configured; those of the keys) and compression (None: off).
        self.rules = url_keys.rules
        self.compression = compression.Compression.of(cfg)
        # The policy as this node applies it: "{name}" in strip_targeted_fields is its own name.
        targeted = cfg.policy.stripped_targeted_fields(cfg.name)
        self.policy_config = replace(cfg.policy, strip_targeted_fields=targeted)
        tags = cfg.policy.tag_fields if cfg.policy.strip_tag_fields else ()
        self._drop_response = (*targeted, *tags)
        # Large objects by slices (proxy/slices.py); None: off. `unsliced`: keys whose origin
        # stopped answering slices (proxy/slicer.py), not sliced again until the clock time given.
        self.slices = slices.SliceSpec.of(cfg.cache)
        self.unsliced: dict[str, float] = {}

    # ------------------------------------------------------------ headers

    def origin_request_headers(
        self, req: ClientRequest, headers: Headers, *, for_cache: bool
    ) -> CIMultiDict[str]:
        """Headers sent to the origin: end-to-end only, no unkeyed inputs, proxy fields set."""
        drop: tuple[str, ...] = self._drop_request
        if for_cache:
            drop += CLIENT_CONDITIONALS
        if for_cache or req.body is None:
            # No body goes with this request (a GET's or HEAD's is read and dropped by the
            # front): its framing goes too, or the origin would wait for the body.
            drop += ("Content-Length",)
        if req.http10:
            # RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue expectation is ignored, not
            # passed on for the origin (and the origin client, which waits for its 100) to act on.
            drop += ("Expect",)
        out = end_to_end(headers, drop, underscores=self.cfg.origin.underscores_in_headers)
        if for_cache and "accept-language" in out:
            # The origin answers the value variants are keyed on (keys.normalise_accept_language),
            # as it does the reduced Accept-Encoding: requests keyed alike are asked alike.
            language = normalise_accept_language(", ".join(out.getall("Accept-Language")))
            if language is not None:
                out["Accept-Language"] = language
        use_client_host = self.cfg.origin.host_header == "client" and req.host
        out["Host"] = req.host if use_client_host else self.origin_authority
        if req.remote:
            prior = out.get("X-Forwarded-For")
            out["X-Forwarded-For"] = f"{prior}, {req.remote}" if prior else req.remote
        out["X-Forwarded-Proto"] = req.scheme
        out.add("Via", f"1.1 {self.cfg.name}")
        return out

    def client_response_headers(self, origin_headers: Headers) -> CIMultiDict[str]:
        """Origin response headers as sent to a client on a pass-through."""
        return end_to_end(origin_headers, self._drop_response)

    def key_host(self, client_host: str) -> str:
        return self.url_keys.host(client_host)

    def key_for(self, req: ClientRequest) -> str:
        """The request's primary key (RFC 9111 §2), memoised: the same URLs are keyed over and over.

        Keyed by `url_keys`, through which the purger names the URLs of purges and invalidations.
        """
        memo_key = (req.scheme, req.host, req.path, req.query)
        key = self._keys.get(memo_key)
        if key is None:
            key = self.url_keys.key(req.scheme, req.host, req.path, req.query)
            if len(req.path) + len(req.query) + len(req.host) <= KEY_MEMO_TARGET:
                if len(self._keys) >= KEY_MEMO_SIZE:
                    self._keys.clear()  # cheaper than LRU bookkeeping on every hit; refills at once
                self._keys[memo_key] = key
        return key

    # ------------------------------------------------------------- fetch

    async def fetch(self, f: FetchRequest) -> FetchOutcome:
        """Fetch for the cache (a miss, or a revalidation when `f.stale` is set).

        Raises UpstreamError when the origin gives no usable answer.
        """
        out_headers = self.origin_request_headers(f.client, f.headers, for_cache=True)
        variants = f.resource.variants if f.resource is not None else ()
        conditional: CIMultiDict[str] = CIMultiDict()
        if f.stale is not None:
            conditional = policy.conditional_headers(*compression.origin_view(f.stale, variants))
            out_headers.extend(conditional)
        ranged = self._range_to_forward(f)
        if ranged is not None:
            out_headers["Range"] = ranged
        request_time = self.clock()
        # A purge logged after this point covers nothing this fetch brings back.
        epoch = self.purger.current_epoch()
        resp = await self._send_to_owner_or_origin(f, out_headers)
        _not_modified_unasked(resp, conditional)
        if resp.status == 304 and f.stale is not None:
            return await self._freshen(f, resp, request_time, epoch, conditional)
        if f.stale is not None and resp.status in policy.ERROR_STATUSES:
            # Each request decides on stale-if-error with its own directives.
            return await self._error(f, resp, request_time, CacheStatus(fwd=f.why, fwd_status=resp.status))
        if (
            ranged is not None
            and resp.status == 206
            and not ranges.states_one_range(resp.headers.get("Content-Range"))
        ):
            # One range was asked (with slicing, the slices covering the client's: other bytes than
            # its own): a 206 that does not say which bytes it holds cannot answer it (RFC 9110
            # §15.3.7), and passed on, its body would be taken for the bytes the client asked.
            resp.close()
            raise failure(INVALID)
        if (ranged is None and resp.status == 206) or (ranged is not None and resp.status not in (200, 206)):
            # The answer to a Range depends on it, and the key does not: a 206 we did not
            # ask for, or a 416 (or any other status) to the range we asked, is not stored.
            status = CacheStatus(fwd=f.why, fwd_status=resp.status, detail="range response")
            if resp.status >= 500:
                return await self._error(f, resp, request_time, status)
            return FetchOutcome(status, leader_only=resp)
        return await self._store(f, resp, request_time, epoch, asked_range=ranged is not None)

    def _plan_store(
        self, f: FetchRequest, resp: OriginResponse, request_time: float, overrides: policy.Overrides
    ) -> policy.StorePlan | policy.DontStore:
        """policy.plan_store for f's GET and the origin's answer, received now."""
        return policy.plan_store(
            "GET",
            f.headers,
            f.directives,
            resp.status,
            resp.reason,
            resp.headers,
            request_time,
            self.clock(),
            self.policy_config,
            overrides,
        )

    def stores_as_get(self, f: FetchRequest, resp: OriginResponse) -> bool:
        """Whether `resp`, the origin's answer to a HEAD, would be stored whole had it answered f's GET.

        Only a stored response gets encodings (proxy/compression.py): what f's GET would be
        answered with, and so what the HEAD must say (RFC 9110 §9.3.2), depends on it. The
        gates are _store's: storable, not a slice of a sliced object, within the object limit.
        """
        overrides = f.overrides(resp.status, resp.headers.get("Content-Type"))
        plan = self._plan_store(f, resp, self.clock(), overrides)
        if isinstance(plan, policy.DontStore):
            return False
        # A HEAD's answer has no body: its length is what its Content-Length says.
        length_field = resp.headers.get("Content-Length", "").strip()
        length = int(length_field) if length_field.isdigit() else None
        if self._slice_revealed(f, resp, length, asked_range=False) is not None:
            return False
        return not self._too_large(plan, length)

    def _slice_revealed(
        self, f: FetchRequest, resp: OriginResponse, length: int | None, *, asked_range: bool
    ) -> tuple[int, int, int] | None:
        """The slice `resp` carries when it reveals a sliced object (slices.slice_in_response), unless
        slicing is off or f's origin stopped answering slices for a while (self.unsliced)."""
        if self.slices is None or self.clock() < self.unsliced.get(f.key, 0.0):
            return None
        headers = resp.headers
        return slices.slice_in_response(
            resp.status,
            headers.get("Content-Range"),
            length,
            headers.get("ETag"),
            headers.get("Accept-Ranges"),
            asked_range,
            self.slices,
        )

    def _too_large(self, plan: policy.StorePlan, length: int | None) -> bool:
        """Above the object limit: streamed through, never stored. A part is stored only if the
        whole representation could be (it may be completed)."""
        limit = self.cfg.cache.max_object_size
        template = plan.template
        if template.parts and template.length > limit:
            return True
        return length is not None and length > limit

    def _range_to_forward(self, f: FetchRequest) -> str | None:
        """The client's Range, asked of the origin when nothing complete is stored for it (RFC 9111 §3.3).

        Only a single byte range of a GET without If-Range (which the cache answers
        from what it stores), and only for a miss or an incomplete stored response:
        a complete one is revalidated whole. Anything else fetches the whole
        representation, which then answers the range. With slicing on, whole
        slices are asked (slices.cover_range): the answer either reveals a sliced
        object or holds all the client asked of a smaller one.
        """
        if f.client.method != "GET" or not f.client.conditional or "if-range" in f.headers:
            return None
        if f.stale is not None and not f.stale.parts:
            return None
        value = combined_value(f.headers, "Range")
        if self.slices is not None:
            cover = slices.cover_range(value, self.slices.size)
            if cover is not None:
                return cover
        return ranges.forwardable_range(value)

    async def head(self, f: FetchRequest) -> FetchOutcome:
        """A HEAD the stored responses cannot answer, asked of the origin as HEAD (RFC 9111 §4.3.5).

        A revalidation (`f.stale` set) carries the stored validators: a 304 freshens as
        for GET (§4.3.4). A 200 updates each stored GET response that could have been
        chosen for the request when it describes the same representation
        (policy.head_may_update), and makes the others stale. The request is answered
        from the updated entry when there is one that may answer it, else with the
        origin's header section. Raises UpstreamError when the origin gives no answer.
        """
        out_headers = self.origin_request_headers(f.client, f.headers, for_cache=True)
        conditional: CIMultiDict[str] = CIMultiDict()
        if f.stale is not None:
            variants = f.resource.variants if f.resource is not None else ()
            conditional = policy.conditional_headers(*compression.origin_view(f.stale, variants))
            out_headers.extend(conditional)
        request_time = self.clock()
        epoch = self.purger.current_epoch()
        resp = await self._send_to_owner_or_origin(f, out_headers, "HEAD")
        resp.release()  # a HEAD response has no body
        _not_modified_unasked(resp, conditional)
        if resp.status == 304 and f.stale is not None:
            return await self._freshen(f, resp, request_time, epoch, conditional)
        if f.stale is not None and resp.status in policy.ERROR_STATUSES:
            return await self._error(f, resp, request_time, CacheStatus(fwd=f.why, fwd_status=resp.status))
        status = CacheStatus(fwd=f.why, fwd_status=resp.status)
        if resp.status != 200 or f.resource is None:
            return FetchOutcome(status, leader_only=resp)
        updated = await self._update_from_head(f, f.resource, resp.headers, request_time, epoch)
        status = status._replace(stored=updated is not None)
        if updated is not None:
            serve = select_variant(updated, f.headers)
            if serve is not None and not serve.parts and policy.remaining_ttl(serve, self.clock()) > 0:
                # A Set-Cookie on the HEAD's answer is for this client (never stored), as on a 304.
                cookies = _leader_fields(resp.headers, (), f.stored_overrides(serve))
                return FetchOutcome(status, shared=serve, leader_fields=cookies)
        return FetchOutcome(status, leader_only=resp)

    async def _update_from_head(
        self,
        f: FetchRequest,
        resource: CachedResource,
        head_headers: Headers,
        request_time: float,
        epoch: int,
    ) -> CachedResource | None:
        """RFC 9111 §4.3.5 on each variant that could have been chosen; the resource written, if any."""
        response_time = self.clock()
        changed = False
        variants: list[StoredResponse] = []
        for variant in resource.variants:
            if not variant_matches(variant, f.headers):
                variants.append(variant)  # could not have been chosen: untouched
                continue
            changed = True
            if not policy.head_may_update(variant, head_headers):
                variants.append(policy.soft_purged(variant, response_time))  # "consider it stale"
                continue
            plan = policy.freshen(
                variant,
                head_headers,
                f.headers,
                request_time,
                response_time,
                self.policy_config,
                f.stored_overrides(variant),
                epoch,
            )
            if isinstance(plan, policy.StorePlan):  # else the origin now forbids storing it
                variants.append(plan.template)
        if not changed:
            return None
        if not variants:
            await self.storage.adelete(f.key)
            return None
        updated = CachedResource(f.key, tuple(variants))
        await self.storage.aset(updated)
        if _tags(updated) != _tags(resource):
            self.purger.record(updated)  # queued; written behind the response
        return updated

    def _send_to_owner_or_origin(
        self, f: FetchRequest, out_headers: CIMultiDict[str], method: str = "GET"
    ) -> Coroutine[Any, Any, OriginResponse]:
        """Ask the peer that owns the key when there is one (edge clusters), else the origin.

        A plain function returning the coroutine to await: without a cluster, a fetch awaits
        the origin's send with no coroutine around it (every miss passes here).
        """
        router = self.router
        if router is not None:
            hop = f.client.hop
            if hop is None or not router.is_peer(hop):  # one hop at most: never forwarded again
                route = router.route(f.key)
                if route is not None:
                    return self._send_to_owner(f, out_headers, method, router, route)
        return self._send_to_origin(f, out_headers, method)

    async def _send_to_owner(
        self, f: FetchRequest, out_headers: CIMultiDict[str], method: str, router: FetchRouter, route: Route
    ) -> OriginResponse:
        """Ask the key's owner edge; the origin when it fails us.

        An owner that fails is reported to the router (which skips it for a
        while) and the origin is asked instead, so a dead owner costs one
        failed attempt, never a failed request.
        """
        peer_headers = out_headers.copy()
        # The owner must compute the same key: keep the client's Host.
        peer_headers["Host"] = f.client.host or self.origin_authority
        peer_headers[HOP_HEADER] = self.cfg.name
        try:
            resp = await self.upstream.send(
                method,
                f.client.path_qs,
                peer_headers,
                origin=route.base_url,
                timeout=route.timeout,
                interim=f.interim,
            )
            taken: OriginResponse | str = await self._owner_answer(resp, route.timeout, method)
        except UpstreamError as exc:
            taken = exc.reason
        if isinstance(taken, str):
            log.warning("owner %s failed (%s); asking the origin", route.peer, taken)
            router.failed(route)
            self.stats.owner_fallbacks += 1
        else:
            router.succeeded(route)
            if not self._older_than_a_purge_here(f.key, taken):
                self.stats.forwarded_to_owner += 1
                return taken
            # A purge here that the owner has not heard of yet (the purge stream is
            # down, issue 12 row 11): its copy left the origin before it, so ask the origin.
            taken.close()
            self.stats.owner_copies_refused += 1
            log.warning(
                "owner %s answered with a copy older than a purge here; asking the origin", route.peer
            )
        return await self._send_to_origin(f, out_headers, method)

    async def _owner_answer(self, resp: OriginResponse, timeout: float, method: str) -> OriginResponse | str:
        """The owner edge's answer to take, or why it failed us (its answer is then closed).

        An error it made itself (no `fwd-status` in its Cache-Status member: its origin failed it,
        or it refused the request) is its failure, not the origin's answer: this edge may well
        reach the origin. A small body is read whole within `timeout` (OWNER_BODY_READ)."""
        if resp.status >= 500:
            member = _upstream_member(resp.headers)
            if ";hit" not in member and _FWD_STATUS.search(member) is None:
                resp.close()
                return f"its own {resp.status}"
        length = resp.content_length
        if method == "HEAD" or resp.status in NO_BODY_STATUSES or length is None or length > OWNER_BODY_READ:
            return resp
        try:
            async with asyncio.timeout(timeout):
                body, complete = await resp.read_up_to(length)
        except (UpstreamError, TimeoutError) as exc:
            resp.close()
            return exc.reason if isinstance(exc, UpstreamError) else f"body not read within {timeout:g} s"
        if not complete:
            resp.close()  # more than its Content-Length: cannot be (the clients frame by it)
            return "body longer than its Content-Length"
        return BufferedResponse(resp.status, resp.reason, resp.headers, body)

    async def _send_to_origin(
        self, f: FetchRequest, out_headers: CIMultiDict[str], method: str = "GET"
    ) -> OriginResponse:
        """Ask the origin (after an owner, if any, could not answer)."""
        resp = await self.upstream.send(method, f.client.path_qs, out_headers, interim=f.interim)
        if not self._older_than_a_purge_here(f.key, resp):
            return resp
        # The origin is a cache of ours too (a shield) and answered from a copy older than a purge
        # here that it has not applied yet (the fan-out reaches it on its own time): have it ask
        # its origin (RFC 9111 §5.2.1.4), or this edge would store the purged copy again.
        resp.close()
        self.stats.upstream_copies_refused += 1
        revalidate = out_headers.copy()
        revalidate["Cache-Control"] = "no-cache"
        return await self.upstream.send(method, f.client.path_qs, revalidate, interim=f.interim)

    def _older_than_a_purge_here(self, key: str, resp: OriginResponse) -> bool:
        """Whether a purge here, hard or soft, is newer than an upstream cache's stored copy (now - its
        Age, rounded down). A soft one too: the upstream's copy, served stale while it revalidates,
        still says it is fresh (a soft purge makes a copy stale without changing its fields)."""
        bans = self.purger.bans
        if not bans or resp.status not in (200, 304):  # a 304 from a stored copy would freshen ours
            return False
        tags = [
            t
            for name in self.cfg.policy.tag_fields
            for line in resp.headers.getall(name, ())
            for t in line.replace(",", " ").split()
        ]
        ban = bans.latest(key, tags)
        if ban is None:
            return False
        # The owner adds its Cache-Status member last. A forward there means the owner asked the
        # origin for this request, which was sent after the purge: the copy is newer than it.
        if not _a_stored_copy(_upstream_member(resp.headers)):
            return False
        # A stored copy: Age counts whole seconds, so it may be up to a second older than it says
        # (a copy stored within a second after the purge is refused too: one more origin fetch).
        return ban.at > self.clock() - policy.age_value(resp.headers) - 1

    async def _error(
        self, f: FetchRequest, resp: OriginResponse, request_time: float, status: CacheStatus
    ) -> FetchOutcome:
        """An origin 5xx: shared with coalesced waiters when it may be, never stored."""
        limit = ERROR_BODY_LIMIT
        if not policy.shareable_error(resp.status, resp.headers, self.cfg.policy) or (
            resp.content_length is not None and resp.content_length > limit
        ):
            return FetchOutcome(status, leader_only=resp, stale=f.stale)
        body, complete = await resp.read_up_to(limit)
        if not complete:
            return FetchOutcome(status, leader_only=resp, prefix=body, stale=f.stale)
        snapshot = policy.transient_snapshot(
            resp.status, resp.reason, resp.headers, body, request_time, self.clock(), self._drop_response
        )
        return FetchOutcome(status, error=snapshot, stale=f.stale)

    async def _store(
        self, f: FetchRequest, resp: OriginResponse, request_time: float, epoch: int, *, asked_range: bool
    ) -> FetchOutcome:
        """RFC 9111 §3: store within the object limit, or hand the response to the leader alone.

        A response that reveals a sliced object stores the slice it starts with instead.
        """
        overrides = f.overrides(resp.status, resp.headers.get("Content-Type"))
        plan = self._plan_store(f, resp, request_time, overrides)
        if isinstance(plan, policy.DontStore):
            if f.stale is not None:
                # The origin's new answer replaces what we held (§4.3.3), and it may not be kept.
                await self.storage.adelete(f.key)
            status = CacheStatus(fwd=f.why, fwd_status=resp.status, detail=plan.reason)
            if resp.status >= 500:
                return await self._error(f, resp, request_time, status)  # transient: no hit-for-pass
            return FetchOutcome(status, leader_only=resp, not_shareable=plan.reason != "request no-store")
        found = self._slice_revealed(f, resp, resp.content_length, asked_range=asked_range)
        if found is not None:
            return await self._store_first_slice(f, resp, plan, found, epoch)
        limit = self.cfg.cache.max_object_size
        template = plan.template
        if self._too_large(plan, resp.content_length):
            status = CacheStatus(fwd=f.why, fwd_status=resp.status, detail="too large")
            return FetchOutcome(status, leader_only=resp, not_shareable=True)
        stream_above = self.cfg.cache.stream_above
        length = resp.content_length
        if stream_above < limit and not template.parts and (length is None or length > stream_above):
            # Large or of unknown length: answered as it arrives, stored at its end (proxy/tee.py).
            body, complete = await resp.read_up_to(stream_above)
            if not complete:
                return self._store_while_streaming(f, resp, plan, body, epoch)
        else:
            body, complete = await resp.read_up_to(limit)
            if not complete:
                status = CacheStatus(fwd=f.why, fwd_status=resp.status, detail="too large")
                return FetchOutcome(status, leader_only=resp, prefix=body, not_shareable=True)
        # A 204 has no body whatever Content-Length says (RFC 9112 §6.3; §8.6 forbids sending one).
        if (
            resp.content_length is not None
            and resp.status not in NO_BODY_STATUSES
            and len(body) != resp.content_length
        ):
            raise UpstreamError(502, "origin response body incomplete")
        part = template.parts[0] if template.parts else None
        if part is not None and len(body) != part[1] - part[0] + 1:
            raise failure(INVALID)  # Content-Range and the body disagree
        entry = plan.build(body, fetch_epoch=epoch)
        base = f.resource
        if part is not None:
            # RFC 9111 §3.4: combined with the stored parts of the same representation, as
            # this worker holds them now: parallel range requests each store a part while
            # the others are in flight, and none should undo another's.
            l1 = self.storage.l1
            latest = l1.peek(f.key) if isinstance(l1, MemoryStorage) else None
            base = latest if latest is not None else base
            entry = ranges.combine(self._same_variant(base, entry), entry)
        made = await self._encodings(f, entry) if part is None else (entry,)
        resource = with_variants(base, f.key, made, self.cfg.policy.max_variants)
        stored = await self.storage.aset(resource) and self.purger.record(resource)
        status = CacheStatus(fwd=f.why, fwd_status=resp.status, stored=stored)
        serve, siblings = made[0], made[1:]
        if siblings:  # encodings: the leader is answered the one its request is keyed with
            serve = next((v for v in made if variant_matches(v, f.headers)), serve)
            siblings = tuple(v for v in made if v is not serve)
        leader = _leader_fields(resp.headers, plan.withheld, overrides)
        return FetchOutcome(status, shared=serve, leader_fields=leader, part=part, siblings=siblings)

    async def _encodings(self, f: FetchRequest, entry: StoredResponse) -> tuple[StoredResponse, ...]:
        """`entry`, or its identity variant and encodings when this cache compresses it (compression.py).

        Compressed once, here, on a worker thread when the body is large.
        """
        settings = self.compression
        if settings is None:
            return (entry,)
        codings = settings.codings_for(entry, f.headers.get("Accept-Encoding", "identity"))
        if not codings:
            return (entry,)
        if len(entry.body) >= settings.off_loop_min:
            encoded = await asyncio.to_thread(settings.encode, entry.body, codings)
        else:
            encoded = settings.encode(entry.body, codings)
        return compression.variants(entry, encoded)

    async def _store_first_slice(
        self,
        f: FetchRequest,
        resp: OriginResponse,
        plan: policy.StorePlan,
        found: tuple[int, int, int],
        epoch: int,
    ) -> FetchOutcome:
        """Store the slices a response starts with (at most two: slices.slices_held); the rest is dropped.

        A whole 200 or a 206 of more slices is read only that far, then closed
        with its connection: the other slices are asked for by Range as they
        are needed (proxy/slicer.py), each its own entry. The outcome shares the
        first slice.
        """
        spec = self.slices
        assert spec is not None
        first, _, length = found
        part = ranges.parse_content_range(resp.headers.get("Content-Range"))
        held = slices.slices_held(first, part[1] if part is not None else length - 1, length, spec.size)
        size = held[-1][1] - first + 1
        data, complete = await resp.read_up_to(size)
        if len(data) < size:
            raise UpstreamError(502, "origin response body incomplete")
        if not complete or len(data) > size:
            resp.close()
        template = plan.build(b"", fetch_epoch=epoch)
        entries = [
            template.evolve(
                status=206,
                reason="Partial Content",
                body=data[a - first : b - first + 1],
                parts=((a, b),),
                complete_length=length,
            )
            for a, b in held
        ]
        stored = False
        for entry in entries:
            key = slices.slice_key(f.key, entry.parts[0][0] // spec.size)
            base = f.resource if key == f.key else None
            l1 = self.storage.l1
            latest = l1.peek(key) if isinstance(l1, MemoryStorage) else None
            resource = with_variant(latest or base, key, entry, self.cfg.policy.max_variants)
            # Catalogued for purges (queued; a full row queue undoes the store: record is False).
            if await self.storage.aset(resource) and self.purger.record(resource):
                stored = True
        status = CacheStatus(fwd=f.why, fwd_status=resp.status, stored=stored)
        overrides = f.overrides(resp.status, resp.headers.get("Content-Type"))
        leader = _leader_fields(resp.headers, plan.withheld, overrides)
        return FetchOutcome(status, shared=entries[0], leader_fields=leader)

    def stop_slicing(self, key: str) -> None:
        """The origin stopped answering slices of `key`: its responses are not sliced for a while."""
        if len(self.unsliced) >= KEY_MEMO_SIZE:
            now = self.clock()
            self.unsliced = {k: until for k, until in self.unsliced.items() if until > now}
            if len(self.unsliced) >= KEY_MEMO_SIZE:
                self.unsliced.clear()
        self.unsliced[key] = self.clock() + self.cfg.fetch.hit_for_pass_ttl

    async def send_for_cache(self, f: FetchRequest, out_headers: CIMultiDict[str]) -> OriginResponse:
        """A GET for the cache (a slice: proxy/slicer.py), to the key's owner edge or the origin."""
        return await self._send_to_owner_or_origin(f, out_headers)

    def _store_while_streaming(
        self, f: FetchRequest, resp: OriginResponse, plan: policy.StorePlan, prefix: bytes, epoch: int
    ) -> FetchOutcome:
        """A body above cache.stream_above: the leader streams it, the cache stores it at its end."""
        length = resp.content_length

        async def store(body: bytes) -> StoredResponse | None:
            if length is not None and len(body) != length:
                return None  # cut short: never stored (the client saw the break)
            entry = plan.build(body, fetch_epoch=epoch)
            # Its encodings beside it when this cache compresses it (a worker thread: it is large).
            made = await self._encodings(f, entry)
            # What is stored under the key now, not when the fetch began: the stream took a while.
            base = self.storage.l1.peek(f.key) if isinstance(self.storage.l1, MemoryStorage) else None
            resource = with_variants(base or f.resource, f.key, made, self.cfg.policy.max_variants)
            if await self.storage.aset(resource):
                self.purger.record(resource)
            return made[0]  # the identity variant: the waiters take its encodings from the store

        cache = self.cfg.cache
        spool_dir = cache.dir if self.storage.l2 is not None else None
        stream = StoringStream(resp, prefix, cache.max_object_size, spool_dir, store, self._store_gate)
        status = CacheStatus(fwd=f.why, fwd_status=resp.status, detail="streamed")
        return FetchOutcome(status, streaming=stream)

    @staticmethod
    def _same_variant(resource: CachedResource | None, entry: StoredResponse) -> StoredResponse | None:
        """The stored variant `entry` would replace (keys.with_variant: the same Vary values)."""
        if resource is None:
            return None
        for variant in resource.variants:
            if variant.vary_names == entry.vary_names and variant.vary_values == entry.vary_values:
                return variant
        return None

    async def _purged_before_sent(self, f: FetchRequest, selected: list[StoredResponse], epoch: int) -> bool:
        """Whether a hard purge logged before this revalidation was sent (at `epoch`) covers a copy it
        validates: the request looked that copy up before the purge, then waited (for another
        request's fetch, the box's lock). Freshened, it would carry `epoch`, which no ban screens: the
        purged body would be served as fresh. (A soft purge asks for just this revalidation.)"""
        for old in selected:
            ban = await self.purger.ban_of(f.key, old)
            if ban is not None and not ban.soft and ban.epoch <= epoch:
                return True
        return False

    async def _refetch_outdated(self, f: FetchRequest) -> FetchOutcome:
        """The representation fetched whole after a 304 that matched none of the stored responses.

        Every stored validator of the URL was asked (policy.conditional_headers), and the validator
        the origin's 304 names is none of them: none of those copies is what it has (RFC 9111
        §4.3.4 forbids freshening them). They go before the full response that replaces them (§4.3.3) is
        asked for: kept when it is not stored (no-store, private, too large, an error), they were
        served stale (stale-while-revalidate, stale-if-error, max-stale) and revalidated so again
        on every request.
        """
        await self.storage.adelete(f.key)
        return await self.fetch(replace(f, stale=None, resource=None))

    async def _freshen(
        self, f: FetchRequest, resp: OriginResponse, request_time: float, epoch: int, sent: Headers
    ) -> FetchOutcome:
        """RFC 9111 §4.3.4: a 304 updates the stored responses it selects (`sent`: the validators asked)."""
        assert f.stale is not None
        resp.release()
        response_time = self.clock()
        variants = f.resource.variants if f.resource is not None else (f.stale,)
        selected = policy.select_for_update(resp.headers, f.stale, variants, sent)
        if not selected:
            if "etag" not in resp.headers and "last-modified" not in resp.headers:
                # No validator, and several entity-tags asked: ambiguous (policy.select_for_update),
                # one of the copies may be current. Fetched whole, the response replaces its own.
                return await self.fetch(replace(f, stale=None))
            return await self._refetch_outdated(f)
        if await self._purged_before_sent(f, selected, epoch):
            # The copies it validates were hard purged before it was sent: nothing to freshen.
            return await self.fetch(replace(f, stale=None))
        updated: dict[int, StoredResponse] = {}
        for old in selected:
            plan = policy.freshen(
                old,
                resp.headers,
                f.headers,
                request_time,
                response_time,
                self.policy_config,
                f.stored_overrides(old),
                epoch,
            )
            if isinstance(plan, policy.StorePlan):
                updated[id(old)] = plan.template
        # The encodings this cache made of a freshened response are as fresh as it is.
        updated = compression.refresh_derived(variants, updated)
        serve = (
            updated.get(id(f.stale))
            or compression.in_coding(tuple(updated.values()), f.headers.get("Accept-Encoding"))
            or next(iter(updated.values()), selected[0])
        )
        stored = False
        if updated:
            new_variants = tuple(updated.get(id(v), v) for v in variants)
            resource = CachedResource(f.key, new_variants)
            # L1 always; L2 when the other workers of the box read it there, or when the freshened
            # copy gives it something (policy.freshened_for_disk; not asked without an L2).
            to_disk = (
                f.box_reads_l2
                or self.storage.l1 is None
                or (
                    self.storage.l2 is not None
                    and any(
                        policy.freshened_for_disk(o, updated[id(o)]) for o in selected if id(o) in updated
                    )
                )
            )
            stored = await (self.storage.aset(resource) if to_disk else self.storage.aset_memory(resource))
            if stored and _tags(resource) != _tags(f.resource):
                # The catalogue already lists this key with these tags (it was stored
                # before); only new tags need a catalogue write.
                stored = self.purger.record(resource)
        else:
            await self.storage.adelete(f.key)
        # A Set-Cookie on the 304 is for the client whose request it answers (never stored).
        cookies = _leader_fields(resp.headers, (), f.stored_overrides(f.stale))
        status = CacheStatus(fwd=f.why, fwd_status=304, stored=stored)
        return FetchOutcome(status, shared=serve, leader_fields=cookies)

    # -------------------------------------------------------------- pass

    async def forward(
        self, req: ClientRequest, headers: Headers, interim: InterimSink | None = None
    ) -> OriginResponse:
        """Forward a request as it is (streamed body), for a pass-through."""
        out_headers = self.origin_request_headers(req, headers, for_cache=False)
        return await self.upstream.send(req.method, req.path_qs, out_headers, req.body, interim=interim)

    async def forward_head(
        self, req: ClientRequest, headers: Headers, interim: InterimSink | None = None
    ) -> OriginResponse:
        """A HEAD that nothing stored answers, forwarded as it is (a HEAD response never creates an entry).

        The client's own If-None-Match / If-Modified-Since go with it: with no stored response the
        cache must not evaluate them (RFC 9111 §4.3.2), the origin does, and its 304 goes to this
        client alone, never stored. A 304 to a HEAD that carried neither is a 502, as on a fetch.
        """
        resp = await self.forward(req, headers, interim)
        _not_modified_unasked(resp, headers)
        return resp

    async def invalidate_after_unsafe(self, req: ClientRequest, resp_headers: Headers) -> None:
        """RFC 9111 §4.4: the target URI, and same-host Location / Content-Location."""
        keys = {self.key_for(req)}
        for name in ("Location", "Content-Location"):
            to = self._same_host_uri(req, resp_headers.get(name))
            if to is not None:
                keys.add(self.url_keys.key(req.scheme, to.raw_authority, to.raw_path, to.raw_query_string))
        await self.purger.invalidate(sorted(keys))

    def _same_host_uri(self, req: ClientRequest, value: str | None) -> URL | None:
        """A Location / Content-Location value resolved against the request's URI; None when
        missing, malformed or of another host (§4.4: one origin must never purge another)."""
        return same_host_target(req.scheme, req.host or self.origin_authority, req.path, value)

    async def write_through(
        self, f: FetchRequest, resp: OriginResponse, request_time: float
    ) -> tuple[bool, bytes, bool]:
        """policy.write_through: an unsafe request's 200 answer stored as the GET response of its URI.

        `f` is the fetch a GET of the same URI with the same fields would have made. Only a 200
        (or 203): what a GET of the resource is answered; a 201 or 202 would answer later GETs
        with "Created" or "Accepted", a 204 with nothing. Stored only
        when Content-Location names that URI itself (RFC 9110 §8.7: the content is then the
        resource's new representation, not a report about the action), when the answer has
        explicit freshness (§9.3.3), and when RFC 9111 §3 lets a GET's answer like it be stored
        within the object limit. Call it after the invalidation (§4.4), so the entry is newer
        than it. Returns (stored, the body bytes read, whether that is the whole body).
        """
        if resp.status not in WRITE_THROUGH_STATUSES:
            return False, b"", False
        locations = resp.headers.getall("Content-Location", ())
        target = self._same_host_uri(f.client, locations[0]) if len(locations) == 1 else None
        if target is None or (target.raw_path, target.raw_query_string) != (f.client.path, f.client.query):
            return False, b"", False  # none, several (a single-value field), or another URI
        plan = self._plan_store(
            f, resp, request_time, f.overrides(resp.status, resp.headers.get("Content-Type"))
        )
        limit = self.cfg.cache.max_object_size
        if (
            not isinstance(plan, policy.StorePlan)
            or not plan.freshness.explicit
            or plan.template.parts
            or (resp.content_length is not None and resp.content_length > limit)
        ):
            return False, b"", False
        epoch = self.purger.current_epoch()  # the invalidation's, or later: not purged by it
        body, complete = await resp.read_up_to(limit)
        if not complete:
            return False, body, False
        if resp.content_length is not None and len(body) != resp.content_length:
            raise UpstreamError(502, "origin response body incomplete")
        made = await self._encodings(f, plan.build(body, fetch_epoch=epoch))
        resource = with_variants(None, f.key, made, self.cfg.policy.max_variants)
        stored = await self.storage.aset(resource) and self.purger.record(resource)
        return stored, body, True


def _leader_fields(
    headers: Headers, withheld: tuple[str, ...], overrides: policy.Overrides
) -> tuple[tuple[str, str], ...]:
    """The fields of a stored response only the client that fetched it gets (FetchOutcome.leader_fields).

    Its Set-Cookie (and Set-Cookie2) unless a rule strips it (then nobody gets it), and the fields private= /
    no-cache= name (StorePlan.withheld), which RFC 9111 keeps out of the cache, not away from
    this client."""
    cookies = tuple(name for name in policy.SET_COOKIE_FIELDS if name not in overrides.strip)
    if not withheld and not any(name in headers for name in cookies):
        return ()
    return tuple(
        (name, value)
        for name, value in headers.items()
        if (lowered := name.lower()) in withheld or lowered in cookies
    )


def _tags(resource: CachedResource | None) -> frozenset[str]:
    return frozenset(t for v in resource.variants for t in v.tags) if resource is not None else frozenset()


_FWD_STATUS = re.compile(r";fwd-status=(\d+)")


def _upstream_member(headers: Headers) -> str:
    """The Cache-Status member (RFC 9211) of the cache that answered us: it adds its own last."""
    return headers.getall("Cache-Status", [""])[-1].rsplit(",", 1)[-1]


def _a_stored_copy(member: str) -> bool:
    """Whether an upstream cache's Cache-Status member (RFC 9211) says it answered from a copy it
    held rather than with what its origin answered this request: a hit, or a stale copy served
    while it revalidates (no fwd-status) or in place of its origin's error (a 5xx fwd-status)."""
    if ";hit" in member:
        return True
    if ";fwd=stale" not in member:
        return False
    status = _FWD_STATUS.search(member)
    return status is None or int(status.group(1)) >= 500
