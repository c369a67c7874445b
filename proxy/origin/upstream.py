"""The origin connection: the lean client for plain requests, aiohttp for the rest.

Requests without a body to a plain-http origin (or peer edge), which is every
cache fetch and most pass-throughs, go through `proxy.origin.lean`: pooled
keep-alive connections and httptools parsing, several times cheaper per
request than aiohttp's client. Requests with a body, and https origins, go
through `proxy.origin.aiohttp_client`. Both raise `UpstreamError` with a
reason from `proxy.origin.errors`, both answer with an `OriginResponse`, and
both follow `proxy.origin.rules` (tests/functional/test_origin_contract.py runs
every case against each); a request they refuse to write is a ValueError.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config import OriginConfig
from proxy.observe import Recorder, origin_timer
from proxy.origin.aiohttp_client import AiohttpOrigin
from proxy.origin.errors import CLIENT_BODY_CAUSE, REQUEST_FAILED, UpstreamError, failure
from proxy.origin.interim import InterimSink
from proxy.origin.lean import LeanOrigin

log = logging.getLogger("proxy.origin")

FAILURE_LOG_SECONDS = 10.0


class OriginResponse(Protocol):
    """An origin response whose header section has arrived; the body is read on demand.

    Reading the body to its end gives the connection back to its pool; close()
    drops it when the body is not read to the end.
    """

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    content_length: int | None

    async def read_up_to(self, limit: int) -> tuple[bytes, bool]:
        """About limit bytes at most (one chunk more at worst): (data, complete). Raises UpstreamError."""
        ...

    def iter_rest(self) -> AsyncIterator[bytes]:
        """The remaining body in chunks; raises UpstreamError if it breaks off."""
        ...

    def close(self) -> None: ...

    def release(self) -> None: ...


class BufferedResponse:
    """An origin response whose body was read whole already (an owner edge's small answer)."""

    __slots__ = ("_body", "content_length", "headers", "reason", "status")

    def __init__(self, status: int, reason: str, headers: CIMultiDictProxy[str], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length: int | None = len(body)
        self._body = body

    async def read_up_to(self, limit: int) -> tuple[bytes, bool]:
        data, self._body = self._body[:limit], self._body[limit:]
        return data, not self._body

    async def iter_rest(self) -> AsyncIterator[bytes]:
        data, self._body = self._body, b""
        if data:
            yield data

    def close(self) -> None:
        self._body = b""

    def release(self) -> None:
        self._body = b""


class Upstream:
    """The clients towards the configured origin (and peer edges), chosen per request.

    Every request is timed up to its response head and counted in `recorder`
    (proxy/observe.py) by its outcome: "ok" or the cause of its UpstreamError.
    A failure is logged with its cause, at most once per cause every
    FAILURE_LOG_SECONDS (an outage must not flood the log), with how many
    more there were.
    """

    def __init__(self, cfg: OriginConfig, recorder: Recorder | None = None) -> None:
        self.cfg = cfg
        self.recorder = recorder if recorder is not None else Recorder()
        self._aiohttp: AiohttpOrigin | None = None
        self._lean: LeanOrigin | None = None
        self._logged: dict[str, tuple[float, int]] = {}  # cause -> (when last logged, failures since)

    async def start(self) -> None:
        cfg = self.cfg
        limits = (cfg.max_connections, cfg.connect_timeout, cfg.read_timeout)
        self._aiohttp = AiohttpOrigin(
            cfg.url, *limits, idle_timeout=cfg.idle_timeout, send_timeout=cfg.send_timeout
        )
        if URL(cfg.url).scheme == "http":
            self._lean = LeanOrigin(cfg.url, *limits, idle_timeout=cfg.idle_timeout)

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.close()
            self._lean = None
        if self._aiohttp is not None:
            await self._aiohttp.close()
            self._aiohttp = None

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: AsyncIterator[bytes] | bytes | None = None,
        origin: str | None = None,
        timeout: float | None = None,
        interim: InterimSink | None = None,
    ) -> OriginResponse:
        """Send a request; returns once the response header section has arrived.

        `interim` is told of each 1xx response that arrives before it (RFC 9110 §15.2)."""
        started = time.perf_counter()
        upstream = "origin" if origin is None else "peer"
        lean = self._lean
        resp: OriginResponse
        # One coroutine, not a wrapper around another: every origin request passes here.
        try:
            try:
                if lean is not None and body is None and (origin is None or origin.startswith("http://")):
                    resp = await lean.send(
                        method, path_qs, headers, timeout=timeout, origin=origin, interim=interim
                    )
                else:
                    assert self._aiohttp is not None, "Upstream.start() was not awaited"
                    resp = await self._aiohttp.send(
                        method, path_qs, headers, body, origin=origin, timeout=timeout, interim=interim
                    )
            except ValueError as exc:  # a field our own code let through with CR/LF in it: a bug
                log.error("refusing to send %s %s to the origin: %s", method, path_qs, exc)
                raise failure(REQUEST_FAILED) from exc
        except UpstreamError as exc:
            self._done(upstream, exc.cause, started)
            if exc.cause != CLIENT_BODY_CAUSE:  # the client's doing: the front says so, not the log
                self._log_failure(method, path_qs, origin, exc)
            raise
        self._done(upstream, "ok", started)
        return resp

    def _done(self, upstream: str, result: str, started: float) -> None:
        seconds = time.perf_counter() - started
        self.recorder.origin_request(upstream, result, seconds)
        timer = origin_timer.get()
        if timer is not None:
            timer.seconds += seconds

    def _log_failure(self, method: str, path_qs: str, origin: str | None, exc: UpstreamError) -> None:
        now = time.monotonic()
        last, since = self._logged.get(exc.cause, (-FAILURE_LOG_SECONDS, 0))
        if now - last < FAILURE_LOG_SECONDS:
            self._logged[exc.cause] = (last, since + 1)
            return
        self._logged[exc.cause] = (now, 0)
        more = f" ({since} more {exc.cause} failures since the last line)" if since else ""
        target = origin or self.cfg.url
        log.warning("%s %s%s: %s [%s]%s", method, target, path_qs, exc.reason, exc.cause, more)
