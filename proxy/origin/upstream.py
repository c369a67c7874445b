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
from collections.abc import AsyncIterator
from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config import OriginConfig
from proxy.origin.aiohttp_client import AiohttpOrigin
from proxy.origin.errors import REQUEST_FAILED, failure
from proxy.origin.interim import InterimSink
from proxy.origin.lean import LeanOrigin

log = logging.getLogger("proxy.origin")


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


class Upstream:
    """The clients towards the configured origin (and peer edges), chosen per request."""

    def __init__(self, cfg: OriginConfig) -> None:
        self.cfg = cfg
        self._aiohttp: AiohttpOrigin | None = None
        self._lean: LeanOrigin | None = None

    async def start(self) -> None:
        cfg = self.cfg
        limits = (cfg.max_connections, cfg.connect_timeout, cfg.read_timeout)
        self._aiohttp = AiohttpOrigin(cfg.url, *limits, idle_timeout=cfg.idle_timeout)
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
        lean = self._lean
        try:
            if lean is not None and body is None and (origin is None or origin.startswith("http://")):
                return await lean.send(
                    method, path_qs, headers, timeout=timeout, origin=origin, interim=interim
                )
            assert self._aiohttp is not None, "Upstream.start() was not awaited"
            return await self._aiohttp.send(
                method, path_qs, headers, body, origin=origin, timeout=timeout, interim=interim
            )
        except ValueError as exc:  # a field our own code let through with CR/LF in it: a bug
            log.error("refusing to send %s %s to the origin: %s", method, path_qs, exc)
            raise failure(REQUEST_FAILED) from exc
