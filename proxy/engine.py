"""The engine: the only place where the pure policy meets storage, the origin and the clock.

One request goes: normalise → key → lookup (L1, then L2 off the loop) →
`policy.decide` → deliver / revalidate / fetch / pass. The clock is read once
per request for the decision, and once more when the origin's answer arrives
(RFC 9111 §4.2.3 needs request_time and response_time). The engine returns a
`Reply` value; turning it into bytes on a socket is the app's job.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import assert_never

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy import policy
from proxy.cache_status import CacheStatus
from proxy.config import Config
from proxy.entry import CachedResource, StoredResponse
from proxy.headers import Directives, Headers, end_to_end
from proxy.keys import normalise_accept_encoding, primary_key, select_variant, with_variant
from proxy.ranges import ByteRange, Unsatisfiable, if_range_allows, parse_range
from proxy.storage.tiered import TieredStorage
from proxy.upstream import OriginResponse, Upstream, UpstreamError

log = logging.getLogger("proxy.engine")

Clock = Callable[[], float]

# Request fields the cache answers itself on a lookup; never sent on its own fetches.
_CLIENT_CONDITIONALS = ("If-None-Match", "If-Modified-Since", "If-Range", "Range")
_TAG_FIELDS = ("Surrogate-Key", "Cache-Tag")


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """What the engine needs of a client request (built by the app from aiohttp's request)."""

    method: str
    scheme: str
    host: str
    path: str  # raw, percent-encoded
    query: str  # raw, without "?"
    headers: CIMultiDictProxy[str] | CIMultiDict[str]
    remote: str | None = None
    body: AsyncIterator[bytes] | None = None

    @property
    def path_qs(self) -> str:
        return self.path + ("?" + self.query if self.query else "")


@dataclass(slots=True)
class Reply:
    """A response for the app to write: a complete body, or a stream."""

    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes | AsyncIterator[bytes] = b""
    cache_status: CacheStatus = field(default_factory=CacheStatus)
    # A stream that breaks off must reset the client connection, never end cleanly.
    streamed: bool = False


def error_reply(status: int, reason: str, cache_status: CacheStatus | None = None) -> Reply:
    """A short plain-text error; never a traceback."""
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Content-Type"] = "text/plain; charset=utf-8"
    headers["Cache-Control"] = "no-store"
    return Reply(status, "", headers, (reason + "\n").encode(), cache_status or CacheStatus(detail=reason))


class Engine:
    """Serves requests from the tiers or the origin according to the policy."""

    def __init__(self, cfg: Config, storage: TieredStorage, upstream: Upstream, clock: Clock) -> None:
        self.cfg = cfg
        self.storage = storage
        self.upstream = upstream
        self.clock = clock
        self.origin_host = URL(cfg.origin.url).host or ""
        self.origin_authority = URL(cfg.origin.url).raw_authority
        self._drop_request = (*cfg.origin.unkeyed_request_headers, "Host")
        self._drop_response = tuple(cfg.policy.targeted_fields) if cfg.policy.strip_targeted_fields else ()
        self._drop_response += _TAG_FIELDS

    # ------------------------------------------------------------------ entry

    async def handle(self, req: ClientRequest) -> Reply:
        """Answer one client request."""
        now = self.clock()
        opts = self.cfg.policy
        method = req.method
        if method not in policy.CACHEABLE_METHODS:
            return await self._pass(req, "method", invalidate=method not in policy.SAFE_METHODS)

        # Accept-Encoding is reduced before keying, and the origin sees the
        # reduced value too, so a stored variant always matches what it holds.
        headers = CIMultiDict(req.headers)
        headers["Accept-Encoding"] = normalise_accept_encoding(
            headers.get("Accept-Encoding"), opts.accept_encodings
        )
        key = self.key_for(req)
        req_directives = policy.request_directives(headers, opts)
        if policy.has_precondition_for_origin(headers):
            return await self._pass(req, "request", invalidate=False, headers=headers)

        resource, tier = await self.storage.aget(key)
        entry = select_variant(resource, headers) if resource is not None else None
        decision = policy.decide(method, req_directives, entry, resource is not None, now, opts)
        match decision:
            case policy.Deliver(entry=found, age=age, ttl=ttl):
                # detail says which tier answered (l1 / l2).
                hit = CacheStatus(hit=True, ttl=int(ttl), detail=tier)
                return self._deliver(req, headers, found, age, hit)
            case policy.Revalidate(entry=stale, reason=why):
                return await self._revalidate(req, headers, key, resource, stale, why, req_directives)
            case policy.Fetch(reason=why):
                return await self._fetch(req, headers, key, resource, why, req_directives)
            case policy.Pass(reason=why):
                return await self._pass(req, why, invalidate=False, headers=headers)
            case policy.GatewayTimeout():
                return error_reply(504, "not in cache (only-if-cached)", CacheStatus(detail="only-if-cached"))
            case _:
                assert_never(decision)

    def key_for(self, req: ClientRequest) -> str:
        return primary_key(req.scheme, req.host or self.origin_authority, req.path, req.query, self.cfg.keys)

    # ---------------------------------------------------------------- deliver

    def _deliver(
        self,
        req: ClientRequest,
        headers: Headers,
        entry: StoredResponse,
        age: float,
        status: CacheStatus,
    ) -> Reply:
        """Serve a stored response: 304 to a matching conditional, 206/416 to a Range, else whole."""
        out: CIMultiDict[str] = CIMultiDict()
        if policy.client_not_modified(headers, entry):
            out.extend(policy.not_modified_header_list(entry))
            out["Age"] = str(int(age))
            return Reply(304, "Not Modified", out, b"", status)
        out.extend(entry.headers)
        out["Age"] = str(int(age))
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

    # ------------------------------------------------------------------ fetch

    def origin_request_headers(
        self, req: ClientRequest, headers: Headers, *, for_cache: bool
    ) -> CIMultiDict[str]:
        """Headers sent to the origin: end-to-end only, no unkeyed inputs, proxy fields set."""
        drop: tuple[str, ...] = self._drop_request
        if for_cache:
            drop += _CLIENT_CONDITIONALS
        out = end_to_end(headers, drop)
        out["Host"] = (
            req.host if (self.cfg.origin.host_header == "client" and req.host) else self.origin_authority
        )
        if req.remote:
            prior = out.get("X-Forwarded-For")
            out["X-Forwarded-For"] = f"{prior}, {req.remote}" if prior else req.remote
        out["X-Forwarded-Proto"] = req.scheme
        out.add("Via", f"1.1 {self.cfg.name}")
        return out

    def client_response_headers(self, origin_headers: Headers) -> CIMultiDict[str]:
        """Origin response headers as sent to a client on a pass-through."""
        return end_to_end(origin_headers, self._drop_response)

    async def _fetch(
        self,
        req: ClientRequest,
        headers: CIMultiDict[str],
        key: str,
        resource: CachedResource | None,
        why: str,
        req_directives: Directives,
    ) -> Reply:
        """A miss: fetch the whole representation, store it if allowed, answer from it."""
        if req.method == "HEAD":
            # A HEAD response never creates an entry (RFC 9111 §3); just forward it.
            return await self._pass(req, why, invalidate=False, headers=headers)
        out_headers = self.origin_request_headers(req, headers, for_cache=True)
        request_time = self.clock()
        try:
            resp = await self.upstream.send("GET", req.path_qs, out_headers, None)
        except UpstreamError as exc:
            return error_reply(exc.status_hint, exc.reason, CacheStatus(fwd=why, detail=exc.reason))
        return await self._store_and_answer(
            req, headers, key, resource, resp, request_time, why, req_directives
        )

    async def _store_and_answer(
        self,
        req: ClientRequest,
        headers: CIMultiDict[str],
        key: str,
        resource: CachedResource | None,
        resp: OriginResponse,
        request_time: float,
        why: str,
        req_directives: Directives,
    ) -> Reply:
        """Decide storability (§3), read the body within the object limit, store, answer."""
        response_time = self.clock()
        opts = self.cfg.policy
        plan = policy.plan_store(
            "GET",
            headers,
            req_directives,
            resp.status,
            resp.reason,
            resp.headers,
            request_time,
            response_time,
            opts,
        )
        status = CacheStatus(fwd=why, fwd_status=resp.status)
        limit = self.cfg.cache.max_object_size
        if isinstance(plan, policy.DontStore):
            status = CacheStatus(fwd=why, fwd_status=resp.status, detail=plan.reason)
            return self._stream_through(resp, status)
        if resp.content_length is not None and resp.content_length > limit:
            return self._stream_through(
                resp, CacheStatus(fwd=why, fwd_status=resp.status, detail="too large")
            )
        try:
            body, complete = await resp.read_up_to(limit)
        except UpstreamError as exc:
            return error_reply(exc.status_hint, exc.reason, CacheStatus(fwd=why, detail=exc.reason))
        if not complete:
            status = CacheStatus(fwd=why, fwd_status=resp.status, detail="too large")
            return self._stream_through(resp, status, prefix=body)
        if resp.content_length is not None and len(body) != resp.content_length:
            # An incomplete (or over-long) body is never stored nor passed on as whole.
            return error_reply(
                502, "origin response body incomplete", CacheStatus(fwd=why, detail="incomplete")
            )
        entry = plan.build(body)
        stored = await self.storage.aset(with_variant(resource, key, entry, opts.max_variants))
        status = CacheStatus(fwd=why, fwd_status=resp.status, stored=stored)
        return self._deliver(req, headers, entry, policy.current_age(entry, response_time), status)

    def _stream_through(self, resp: OriginResponse, status: CacheStatus, prefix: bytes = b"") -> Reply:
        """Pass an origin response to the client without storing or buffering it whole."""
        out = self.client_response_headers(resp.headers)
        if resp.content_length is not None:
            out["Content-Length"] = str(resp.content_length)

        async def body() -> AsyncIterator[bytes]:
            if prefix:
                yield prefix
            async for chunk in resp.iter_rest():
                yield chunk

        return Reply(resp.status, resp.reason, out, body(), status, streamed=True)

    # ------------------------------------------------------------- revalidate

    async def _revalidate(
        self,
        req: ClientRequest,
        headers: CIMultiDict[str],
        key: str,
        resource: CachedResource | None,
        entry: StoredResponse,
        why: str,
        req_directives: Directives,
    ) -> Reply:
        """RFC 9111 §4.3: a conditional request; a 304 freshens, anything else replaces."""
        variants = resource.variants if resource is not None else (entry,)
        out_headers = self.origin_request_headers(req, headers, for_cache=True)
        out_headers.extend(policy.conditional_headers(entry, variants))
        fwd = "request" if why == "request" else "stale"
        request_time = self.clock()
        try:
            resp = await self.upstream.send(
                req.method if req.method == "HEAD" else "GET", req.path_qs, out_headers
            )
        except UpstreamError as exc:
            return error_reply(exc.status_hint, exc.reason, CacheStatus(fwd=fwd, detail=exc.reason))
        if resp.status != 304:
            if req.method == "HEAD":
                return self._stream_through(resp, CacheStatus(fwd=fwd, fwd_status=resp.status))
            return await self._store_and_answer(
                req, headers, key, resource, resp, request_time, fwd, req_directives
            )
        resp.release()
        response_time = self.clock()
        selected = policy.select_for_update(resp.headers, entry, variants)
        if not selected:
            # The 304 matches nothing we hold (§4.3.4): fetch the representation whole.
            return await self._fetch(req, headers, key, resource, fwd, req_directives)
        updated: dict[int, StoredResponse] = {}
        for old in selected:
            plan = policy.freshen(old, resp.headers, headers, request_time, response_time, self.cfg.policy)
            if isinstance(plan, policy.StorePlan):
                updated[id(old)] = plan.template
        serve = updated.get(id(entry)) or (next(iter(updated.values())) if updated else selected[0])
        new_variants = tuple(updated.get(id(v), v) for v in variants)
        stored = False
        if updated:
            stored = await self.storage.aset(CachedResource(key, new_variants))
        else:
            await self.storage.adelete(key)
        status = CacheStatus(fwd=fwd, fwd_status=304, stored=stored)
        return self._deliver(req, headers, serve, policy.current_age(serve, response_time), status)

    # ------------------------------------------------------------------- pass

    async def _pass(
        self,
        req: ClientRequest,
        why: str,
        *,
        invalidate: bool,
        headers: CIMultiDict[str] | CIMultiDictProxy[str] | None = None,
    ) -> Reply:
        """Forward without lookup or storage; an unsafe method's success invalidates (§4.4)."""
        out_headers = self.origin_request_headers(
            req, headers if headers is not None else req.headers, for_cache=False
        )
        fwd = "bypass" if why in ("method", "request") else why
        try:
            resp = await self.upstream.send(req.method, req.path_qs, out_headers, req.body)
        except UpstreamError as exc:
            return error_reply(exc.status_hint, exc.reason, CacheStatus(fwd=fwd, detail=exc.reason))
        if invalidate and 200 <= resp.status < 400:
            await self._invalidate_after_unsafe(req, resp.headers)
        return self._stream_through(resp, CacheStatus(fwd=fwd, fwd_status=resp.status))

    async def _invalidate_after_unsafe(self, req: ClientRequest, resp_headers: Headers) -> None:
        """RFC 9111 §4.4: the target URI, and same-host Location / Content-Location."""
        keys = {self.key_for(req)}
        base = URL.build(scheme=req.scheme, authority=req.host or self.origin_authority, encoded=True)
        for name in ("Location", "Content-Location"):
            value = resp_headers.get(name)
            if not value:
                continue
            try:
                target = base.join(URL(value, encoded=True))
            except ValueError:
                continue
            if target.raw_authority.lower() != base.raw_authority.lower():
                continue  # §4.4: never for another host (that would let one origin purge another)
            keys.add(
                primary_key(
                    req.scheme, target.raw_authority, target.raw_path, target.raw_query_string, self.cfg.keys
                )
            )
        for key in keys:
            await self.storage.adelete(key)
