"""The origin client for what the lean client does not do: requests with a body, and https origins.

One pooled aiohttp ClientSession; every aiohttp or asyncio failure is
translated once, here, into an `UpstreamError` from `proxy.origin.errors`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.origin.errors import (
    CLOSED,
    FAILED,
    INCOMPLETE,
    INVALID,
    REQUEST_FAILED,
    TIMED_OUT,
    UNREACHABLE,
    UpstreamError,
    failure,
)
from proxy.origin.interim import InterimSink, report

log = logging.getLogger("proxy.origin")

READ_CHUNK = 64 * 1024


def translate(exc: BaseException) -> UpstreamError:
    """Map an aiohttp / asyncio client failure onto UpstreamError (the one place this happens)."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return failure(TIMED_OUT)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return failure(UNREACHABLE)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return failure(CLOSED)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return failure(INCOMPLETE)
    if isinstance(exc, aiohttp.ClientResponseError):
        return failure(INVALID)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return failure(FAILED)
    # Anything else is a bug of ours or aiohttp's; the client still gets a 502, never a traceback.
    log.error("unexpected error talking to the origin", exc_info=exc)
    return failure(REQUEST_FAILED)


# The sink of the request being sent in this task (aiohttp has no per-request hook for 1xx).
_interim_sink: ContextVar[InterimSink | None] = ContextVar("interim_sink", default=None)


class _ReportingResponse(aiohttp.ClientResponse):
    """aiohttp's response, telling the request's InterimSink of each 1xx it skips (RFC 9110 §15.2).

    ClientResponse.start reads messages off the connection's protocol until a final
    one; while it runs, the protocol's read is wrapped to report the interim ones.
    """

    async def start(self, connection: Any) -> aiohttp.ClientResponse:
        sink = _interim_sink.get()
        protocol = connection.protocol
        if sink is None or protocol is None:
            return await super().start(connection)
        read = protocol.read

        async def read_reporting() -> Any:
            message, payload = await read()
            if 100 <= message.code < 200 and message.code != 101:
                report(sink, message.code, message.reason or "", message.headers)
            return message, payload

        protocol.read = read_reporting
        try:
            return await super().start(connection)
        finally:
            del protocol.read  # the class's own again, for the connection's next request


@dataclass(slots=True)
class AiohttpResponse:
    """OriginResponse over aiohttp's client response."""

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


class AiohttpOrigin:
    """One pooled aiohttp session towards the origin (or a peer edge)."""

    def __init__(
        self, base_url: str, max_connections: int, connect_timeout: float, read_timeout: float
    ) -> None:
        self.base_url = base_url
        connector = aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=60)
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,  # bodies pass through byte for byte
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),  # never keep one user's cookies for another
            raise_for_status=False,
            response_class=_ReportingResponse,
        )

    async def close(self) -> None:
        await self._session.close()

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: AsyncIterator[bytes] | bytes | None = None,
        *,
        origin: str | None = None,
        timeout: float | None = None,
        interim: InterimSink | None = None,
    ) -> AiohttpResponse:
        """Send a request; returns once the response header section has arrived.

        `interim` is told of each 1xx response that arrives before it (RFC 9110 §15.2)."""
        # encoded=True: forward the request-target byte for byte, never re-quoted.
        url = URL((origin or self.base_url) + path_qs, encoded=True)
        client_timeout = self._timeout
        if timeout is not None:  # a peer edge: tighter than the origin's timeouts
            client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        token = _interim_sink.set(interim)
        try:
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
        finally:
            _interim_sink.reset(token)
        return AiohttpResponse(
            status=raw.status,
            reason=raw.reason or "",
            headers=raw.headers,
            content_length=raw.content_length,
            _raw=raw,
        )
