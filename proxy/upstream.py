"""The origin connection: a lean client for plain requests, aiohttp for the rest; errors translated once.

Requests without a body to a plain-http origin (or peer edge), which is every
cache fetch and most pass-throughs, go through `proxy.origin_client`: pooled
keep-alive connections and httptools parsing, several times cheaper per
request than aiohttp's client. Requests with a body, and https origins, go
through one pooled aiohttp ClientSession. Every failure talking to the origin
(refused, reset, malformed response, truncated body, timeout) becomes one
`UpstreamError` carrying a status hint (502 or 504) and a short reason; only
the app turns it into a response.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config import OriginConfig
from proxy.origin_client import LeanOrigin
from proxy.upstream_error import UpstreamError

__all__ = ["AiohttpResponse", "OriginResponse", "Upstream", "UpstreamError", "translate"]

log = logging.getLogger("proxy.upstream")

READ_CHUNK = 64 * 1024


def translate(exc: BaseException) -> UpstreamError:
    """Map an aiohttp / asyncio client failure onto UpstreamError (the one place this happens)."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamError(504, "origin timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(502, "origin unreachable")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError(502, "origin closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(502, "origin response body incomplete")
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamError(502, "origin sent an invalid response")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamError(502, "origin connection failed")
    # Anything else is a bug of ours or aiohttp's; the client still gets a 502, never a traceback.
    log.error("unexpected error talking to the origin", exc_info=exc)
    return UpstreamError(502, "origin request failed")


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


@dataclass(slots=True)
class AiohttpResponse:
    """OriginResponse over aiohttp's client response (requests with a body, https origins)."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    content_length: int | None
    _raw: aiohttp.ClientResponse

    async def read_up_to(self, limit: int) -> tuple[bytes, bool]:
        """Read at most `limit` bytes; returns (data, complete). Raises UpstreamError on a broken body."""
        buf = bytearray()
        try:
            while len(buf) <= limit:
                chunk = await self._raw.content.read(READ_CHUNK)
                if not chunk:
                    return bytes(buf), True
                buf += chunk
        except Exception as exc:
            self.close()
            raise translate(exc) from exc
        return bytes(buf), False

    async def iter_rest(self) -> AsyncIterator[bytes]:
        """The remaining body in chunks; raises UpstreamError if it breaks off."""
        try:
            while True:
                chunk = await self._raw.content.read(READ_CHUNK)
                if not chunk:
                    break
                yield chunk
        except Exception as exc:
            self.close()
            raise translate(exc) from exc
        finally:
            self._raw.release()

    def close(self) -> None:
        """Drop the connection (used when the body is not read to the end)."""
        self._raw.close()

    def release(self) -> None:
        self._raw.release()


class Upstream:
    """One pooled client session to the configured origin."""

    def __init__(self, cfg: OriginConfig) -> None:
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None
        self._lean: LeanOrigin | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.cfg.max_connections, ttl_dns_cache=60)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.cfg.connect_timeout, sock_read=self.cfg.read_timeout
        )
        self._session = aiohttp.ClientSession(
            base_url=None,
            connector=connector,
            timeout=timeout,
            auto_decompress=False,  # bodies pass through byte for byte
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),  # never keep one user's cookies for another
            raise_for_status=False,
        )
        if URL(self.cfg.url).scheme == "http":
            self._lean = LeanOrigin(
                self.cfg.url, self.cfg.max_connections, self.cfg.connect_timeout, self.cfg.read_timeout
            )

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.close()
            self._lean = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: AsyncIterator[bytes] | bytes | None = None,
        origin: str | None = None,
        timeout: float | None = None,
    ) -> OriginResponse:
        """Send a request; returns once the response header section has arrived."""
        lean = self._lean
        if lean is not None and body is None and (origin is None or origin.startswith("http://")):
            try:
                return await lean.send(method, path_qs, headers, timeout=timeout, origin=origin)
            except ValueError as exc:  # a field our own code let through with CR/LF in it: a bug
                log.error("refusing to send %s %s to the origin: %s", method, path_qs, exc)
                raise UpstreamError(502, "origin request failed") from exc
        assert self._session is not None, "Upstream.start() was not awaited"
        # encoded=True: forward the request-target byte for byte, never re-quoted.
        url = URL((origin or self.cfg.url) + path_qs, encoded=True)
        try:
            client_timeout = self._session.timeout
            if timeout is not None:  # a peer edge: tighter than the origin's timeouts
                client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
            raw = await self._session.request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
                chunked=None,
                timeout=client_timeout,
            )
        except Exception as exc:
            raise translate(exc) from exc
        return AiohttpResponse(
            status=raw.status,
            reason=raw.reason or "",
            headers=raw.headers,
            content_length=raw.content_length,
            _raw=raw,
        )
