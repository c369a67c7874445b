"""Request framing on both sides of the proxy (request smuggling, desync).

The invariant: the bytes the proxy sends the origin frame exactly the requests the proxy
itself parsed (no request hidden in another's body, no bytes of one request left on a pooled
connection for the origin to read as part of the next one). The origin here is a raw socket
that logs every byte per connection, parses them with llhttp and answers each request as
soon as its head is in, before its body, as many origins do: a request sent with a body
shorter than its framing says then leaves the connection waiting for bytes, and the proxy
pools it for the next request, whichever client's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httptools
import pytest

from tests.functional.conftest import Proxy, ProxyFactory, raw_exchange, raw_status


@dataclass
class Seen:
    """One request as the origin parsed it."""

    method: str
    target: str
    body: bytes = b""


@dataclass
class OriginConnection:
    raw: bytearray = field(default_factory=bytearray)
    requests: list[Seen] = field(default_factory=list)
    error: str | None = None  # what the origin's parser refused, if anything


class FramingOrigin:
    """A raw origin: logs the bytes of each connection, answers each request at its head."""

    def __init__(self) -> None:
        self.connections: list[OriginConnection] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> FramingOrigin:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    @property
    def requests(self) -> list[Seen]:
        return [r for c in self.connections for r in c.requests]

    @property
    def errors(self) -> list[str]:
        return [c.error for c in self.connections if c.error is not None]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = OriginConnection()
        self.connections.append(conn)
        target = bytearray()

        class Callbacks:
            def on_message_begin(self) -> None:
                target.clear()

            def on_url(self, url: bytes) -> None:
                target.extend(url)

            def on_headers_complete(self) -> None:
                seen = Seen(parser.get_method().decode(), target.decode("latin-1"))
                conn.requests.append(seen)
                body = f"{seen.method} {seen.target}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

            def on_body(self, data: bytes) -> None:
                conn.requests[-1].body += data

        parser = httptools.HttpRequestParser(Callbacks())
        try:
            while data := await reader.read(65536):
                conn.raw += data
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    conn.error = f"{type(exc).__name__}: {exc}"
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def framing_origin() -> AsyncIterator[FramingOrigin]:
    origin = await FramingOrigin().start()
    yield origin
    await origin.close()


async def _raw(proxy: Proxy, data: bytes) -> bytes:
    return await raw_exchange(proxy.server.host, proxy.server.port, data, timeout=2.0)


UPGRADE_BODIES = {
    "content-length": b"Content-Length: 5\r\n\r\nhello",
    "chunked": b"Transfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("framing", UPGRADE_BODIES.values(), ids=UPGRADE_BODIES.keys())
async def test_rfc9110_s7_8_an_ignored_upgrade_keeps_the_requests_body_and_frames_nothing_else(
    start_proxy: ProxyFactory, framing_origin: FramingOrigin, framing: bytes
) -> None:
    # curl --http2 and Java's HttpClient send their POST bodies with "Upgrade: h2c". httptools has
    # llhttp skip the body of an upgrade request: the POST went on with its Content-Length and
    # no body (the origin then read the next request's first bytes on that pooled connection
    # as the rest of it), or chunked, with an empty body.
    proxy = await start_proxy(origin_url=framing_origin.url)
    upgrade = (
        b"POST /form HTTP/1.1\r\nHost: cdn.example\r\n"
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"
    )
    answer = await _raw(proxy, upgrade + framing)
    assert raw_status(answer) == 200, answer
    assert answer.endswith(b"POST /form"), answer
    # Another client's request, on the pooled origin connection.
    answer = await _raw(proxy, b"POST /next HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: 3\r\n\r\nabc")
    assert answer.endswith(b"POST /next"), answer
    assert framing_origin.errors == []
    assert framing_origin.requests == [Seen("POST", "/form", b"hello"), Seen("POST", "/next", b"abc")]


async def test_nothing_after_an_ignored_upgrade_requests_body_is_read_as_a_request(
    start_proxy: ProxyFactory, framing_origin: FramingOrigin
) -> None:
    # What follows an upgrade request would be the other protocol: the connection ends after it.
    proxy = await start_proxy(origin_url=framing_origin.url)
    answer = await _raw(
        proxy,
        b"POST /form HTTP/1.1\r\nHost: cdn.example\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 5\r\n\r\nhelloGET /after HTTP/1.1\r\nHost: cdn.example\r\n\r\n",
    )
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert b"Connection: close" in answer
    assert framing_origin.requests == [Seen("POST", "/form", b"hello")]
