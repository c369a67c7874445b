"""The lean origin client (proxy/origin/lean.py) over real loopback sockets.

Most origins here are small raw servers that write exact bytes, so each test can
produce the framing, the malformation or the timing it is about; one test runs
against the origin stub app. Accepts are counted to see which requests shared a
TCP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
import uvloop
from multidict import CIMultiDict, CIMultiDictProxy

from origin_stub.behaviours import pattern
from proxy.origin.aiohttp_client import AiohttpOrigin
from proxy.origin.errors import UpstreamError
from proxy.origin.lean import HIGH_WATER, LeanOrigin, LeanResponse
from tests.functional.conftest import Origin, free_port

Handler = Callable[["RawOrigin", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
TIMEOUT = 0.2  # read / connect timeouts where a test waits for one to fire


class RawOrigin:
    """A loopback server running `handler` per connection; counts accepts and open connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepts = 0
        self.open = 0
        self.max_open = 0
        self.requests: list[bytes] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> RawOrigin:
        self.server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        index = self.accepts
        self.accepts += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(self, reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()
            self.tasks.discard(task)

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        """The next request head on this connection (b"" when the client closed it)."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""
        self.requests.append(head)
        return head

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


def answer(*responses: bytes, close: bool = False) -> Handler:
    """Every request gets the next of `responses` (the last one repeats); `close`: then hang up."""

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        while await origin.request(reader):
            index = min(len(origin.requests), len(responses)) - 1
            w.write(responses[index])
            await w.drain()
            if close:
                return

    return handler


async def silent(origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int) -> None:
    """Reads the request and never answers."""
    await origin.request(reader)
    await asyncio.sleep(10)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


StartOrigin = Callable[[Handler], Awaitable[RawOrigin]]
MakeClient = Callable[..., LeanOrigin]


@pytest.fixture
async def raw_origin() -> AsyncIterator[StartOrigin]:
    started: list[RawOrigin] = []

    async def start(handler: Handler) -> RawOrigin:
        origin = await RawOrigin(handler).start()
        started.append(origin)
        return origin

    yield start
    for origin in started:
        await origin.close()


@pytest.fixture
async def client() -> AsyncIterator[MakeClient]:
    clients: list[LeanOrigin] = []

    def make(
        url: str, max_connections: int = 8, connect_timeout: float = 2.0, read_timeout: float = 2.0
    ) -> LeanOrigin:
        c = LeanOrigin(url, max_connections, connect_timeout, read_timeout)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()


async def get(
    c: LeanOrigin, path: str = "/", method: str = "GET", **kwargs: Any
) -> tuple[LeanResponse, bytes]:
    resp = await c.send(method, path, CIMultiDict(), **kwargs)
    body, complete = await resp.read_up_to(1 << 30)
    assert complete
    return resp, body


async def expect_error(awaitable: Awaitable[Any], status: int, reason: str) -> None:
    with pytest.raises(UpstreamError) as info:
        await awaitable
    assert (info.value.status_hint, info.value.reason) == (status, reason)


# ------------------------------------------------------------------------------ requests


async def test_request_is_method_target_headers_and_host_nothing_else(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(answer(OK))
    c = client(origin.url)
    headers: CIMultiDict[str] = CIMultiDict([("Accept", "*/*"), ("X-Multi", "a"), ("x-multi", "b")])
    resp = await c.send("GET", "/a/b?x=1&y=%20", headers)
    assert (resp.status, resp.reason) == (200, "OK")
    port = origin.url.rsplit(":", 1)[1]
    assert origin.requests[0] == (
        b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nAccept: */*\r\nX-Multi: a\r\nx-multi: b\r\n"
        b"Host: 127.0.0.1:" + port.encode() + b"\r\n\r\n"
    )


async def test_callers_host_is_kept_and_surrogate_escaped_values_go_out_as_the_original_bytes(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(answer(OK))
    c = client(origin.url)
    value = b"caf\xc3\xa9 \xff".decode("utf-8", "surrogateescape")
    await get_with(c, CIMultiDict([("host", "cdn.example"), ("X-Raw", value)]))
    assert origin.requests[0] == b"GET / HTTP/1.1\r\nhost: cdn.example\r\nX-Raw: caf\xc3\xa9 \xff\r\n\r\n"
    # A plain mapping is searched for Host case-insensitively too.
    await get_with(c, {"HOST": "other.example"})
    assert origin.requests[1] == b"GET / HTTP/1.1\r\nHOST: other.example\r\n\r\n"


async def get_with(c: LeanOrigin, headers: Mapping[str, str]) -> bytes:
    resp = await c.send("GET", "/", headers)
    body, _ = await resp.read_up_to(1 << 20)
    return body


@pytest.mark.parametrize(
    ("path", "name", "value"),
    [
        ("/", "X-A", "a\r\nX-Injected: 1"),
        ("/", "X-A", "a\nb"),
        ("/", "X-A", "a\rb"),
        ("/", "X-A", "a\0b"),
        ("/", "X-A\r\nX-B", "1"),
        ("/a\r\nX-Injected: 1", "X-A", "1"),
        ("/a b", "X-A", "1"),
    ],
)
async def test_cr_lf_nul_or_space_in_the_request_is_a_value_error_and_nothing_is_sent(
    raw_origin: StartOrigin, client: MakeClient, path: str, name: str, value: str
) -> None:
    origin = await raw_origin(answer(OK))
    c = client(origin.url)
    with pytest.raises(ValueError):
        await c.send("GET", path, CIMultiDict([(name, value)]))
    assert origin.accepts == 0


@pytest.mark.parametrize("url", ["https://127.0.0.1:1", "ftp://h", "http://user:pw@h:1", "http://", "h:80"])
def test_anything_but_a_plain_http_base_url_is_a_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        LeanOrigin(url, 4, 1.0, 1.0)


async def test_base_url_path_prefixes_the_target_and_default_port_is_left_out_of_host(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(answer(OK))
    c = client(origin.url + "/prefix")
    await get(c, "/x")
    assert origin.requests[0].startswith(b"GET /prefix/x HTTP/1.1\r\n")
    # Port 80 is the default: Host carries the bare host, as aiohttp sends it.
    c80 = LeanOrigin("http://example.invalid:80", 1, 1.0, 1.0)
    assert c80._default.host_line == "Host: example.invalid\r\n"


# ------------------------------------------------------------------------------ framing


async def test_content_length_body_and_keep_alive_reuse_one_connection(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"))
    c = client(origin.url)
    for _ in range(3):
        resp, body = await get(c)
        assert (resp.status, body, resp.content_length) == (200, b"hello", 5)
        assert list(resp.headers.items()) == [("Content-Length", "5"), ("X-A", "1")]
    assert origin.accepts == 1


async def test_chunked_body_with_extensions_and_trailers_is_decoded_and_trailers_dropped(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n6;x\r\n world\r\n0\r\nX-Trailer: t\r\nX-Other: o\r\n\r\n"
    )
    origin = await raw_origin(answer(chunked))
    c = client(origin.url)
    for _ in range(2):
        resp, body = await get(c)
        assert body == b"hello world"
        assert resp.content_length is None
        assert "X-Trailer" not in resp.headers
    assert origin.accepts == 1


async def test_close_delimited_body_is_read_to_eof_and_the_connection_not_reused(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the end", close=True))
    c = client(origin.url)
    for _ in range(2):
        resp, body = await get(c)
        assert (body, resp.content_length) == (b"until the end", None)
    assert origin.accepts == 2


async def test_head_response_with_content_length_has_no_body_and_the_connection_is_reused(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", OK))
    c = client(origin.url)
    resp, body = await get(c, method="HEAD")
    assert (resp.status, resp.content_length, body) == (200, 1234, b"")
    # The parser that expected 1234 body bytes must not eat the next response.
    resp, body = await get(c)
    assert body == b"hi"
    assert origin.accepts == 1


async def test_head_response_with_chunked_framing_and_no_length_is_reused(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", OK))
    c = client(origin.url)
    resp, body = await get(c, method="HEAD")
    assert (resp.content_length, body) == (None, b"")
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 1


async def test_head_response_followed_by_a_body_anyway_is_not_reused(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", OK))
    c = client(origin.url)
    resp, body = await get(c, method="HEAD")
    assert (resp.content_length, body) == (5, b"")
    await asyncio.sleep(0.05)  # the stray body reaches the idle connection
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 2


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: "x"\r\n\r\n',
    ],
)
async def test_204_and_304_have_no_body_even_with_content_length(
    raw_origin: StartOrigin, client: MakeClient, head: bytes
) -> None:
    origin = await raw_origin(answer(head, OK))
    c = client(origin.url)
    _, body = await get(c)
    assert body == b""
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 1


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    ],
)
async def test_interim_responses_are_skipped_for_the_real_one(
    raw_origin: StartOrigin, client: MakeClient, interim: bytes
) -> None:
    origin = await raw_origin(answer(interim + b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"))
    c = client(origin.url)
    resp, body = await get(c)
    assert (resp.status, resp.reason, body) == (201, "Created", b"ok")
    assert "Link" not in resp.headers


async def test_interim_response_in_its_own_packet_is_skipped(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        await origin.request(reader)
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.02)
        w.write(OK)
        await w.drain()
        await origin.request(reader)

    origin = await raw_origin(handler)
    resp, body = await get(client(origin.url))
    assert (resp.status, body) == (200, b"hi")


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
PROCESSING = b"HTTP/1.1 102 Processing\r\nX-Progress: 50\r\n\r\n"
FINAL = b"HTTP/1.1 201 Created\r\nX-Final: yes\r\nContent-Length: 2\r\n\r\nok"
Interims = list[tuple[int, str, list[tuple[str, str]]]]


def recorder() -> tuple[Interims, Callable[[int, str, CIMultiDictProxy[str]], None]]:
    seen: Interims = []

    def sink(status: int, reason: str, headers: CIMultiDictProxy[str]) -> None:
        seen.append((status, reason, list(headers.items())))

    return seen, sink


EXPECTED_INTERIMS = [
    (103, "Early Hints", [("Link", "</style.css>; rel=preload")]),
    (102, "Processing", [("X-Progress", "50")]),
    (100, "Continue", []),
]


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "one-read-each"])
async def test_rfc9110_s15_2_interim_responses_are_reported_in_order_and_never_leak_into_the_final(
    raw_origin: StartOrigin, client: MakeClient, split: bool
) -> None:
    pieces = [EARLY_HINTS, PROCESSING, b"HTTP/1.1 100 Continue\r\n\r\n", FINAL]

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        while await origin.request(reader):
            for piece in pieces if split else [b"".join(pieces)]:
                w.write(piece)
                await w.drain()
                await asyncio.sleep(0.01)

    origin = await raw_origin(handler)
    seen, sink = recorder()
    c = client(origin.url)
    resp = await c.send("GET", "/", CIMultiDict(), interim=sink)
    assert seen == EXPECTED_INTERIMS
    assert (resp.status, dict(resp.headers)) == (201, {"X-Final": "yes", "Content-Length": "2"})
    assert await resp.read_up_to(100) == (b"ok", True)
    resp, body = await get(c)  # the connection is reused, and nobody else is told of interims
    assert body == b"ok" and len(seen) == 3
    assert origin.accepts == 1


async def test_rfc9110_s15_2_the_aiohttp_client_reports_interim_responses_too(
    raw_origin: StartOrigin,
) -> None:
    origin = await raw_origin(answer(EARLY_HINTS + PROCESSING + FINAL))
    c = AiohttpOrigin(origin.url, 4, 2.0, 2.0)
    try:
        seen, sink = recorder()
        resp = await c.send("POST", "/", CIMultiDict(), b"body", interim=sink)
        assert seen == EXPECTED_INTERIMS[:2]
        assert resp.status == 201 and "Link" not in resp.headers and "X-Progress" not in resp.headers
        assert await resp.read_up_to(100) == (b"ok", True)
        # Without a sink (and on the reused connection), interims are skipped as before.
        resp = await c.send("POST", "/", CIMultiDict(), b"body")
        assert resp.status == 201 and await resp.read_up_to(100) == (b"ok", True)
        assert len(seen) == 2 and origin.accepts == 1
    finally:
        await c.close()


async def test_missing_reason_phrase_is_empty_and_non_ascii_header_bytes_round_trip(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    raw_value = b"caf\xc3\xa9 \xff\xfe"
    origin = await raw_origin(
        answer(b"HTTP/1.1 200\r\nX-Raw: " + raw_value + b"  \r\nContent-Length: 0\r\n\r\n")
    )
    resp, _ = await get(client(origin.url))
    assert resp.reason == ""
    value = resp.headers["x-raw"]
    assert value == "café \udcff\udcfe"  # as aiohttp decodes: UTF-8, surrogateescape, OWS stripped
    assert value.encode("utf-8", "surrogateescape") == raw_value


async def test_http_1_0_response_without_keep_alive_is_not_reused(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi"))
    c = client(origin.url)
    await get(c)
    await get(c)
    assert origin.accepts == 2


async def test_connection_close_response_is_not_reused(raw_origin: StartOrigin, client: MakeClient) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"))
    c = client(origin.url)
    assert (await get(c))[1] == b"hi"
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 2


# ------------------------------------------------------------------------------ invalid responses


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nhi", id="malformed-status"),
        pytest.param(b"garbage\r\n\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 099 Odd\r\n\r\n", id="status-below-100"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\nX-B: b\r\nContent-Length: 2\r\n\r\nhi", id="bare-lf"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nhi", id="nul"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nhi", id="obs-fold"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi", id="two-lengths"
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nhi", id="length-list"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            id="length-and-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", id="101"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(201))
            + b"Content-Length: 0\r\n\r\n",
            id="too-many-fields",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n", id="huge-head"
        ),
    ],
)
async def test_invalid_response_is_502_and_the_connection_is_never_reused(
    raw_origin: StartOrigin, client: MakeClient, response: bytes
) -> None:
    origin = await raw_origin(answer(response, OK))
    c = client(origin.url)
    await expect_error(get(c), 502, "origin sent an invalid response")
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 2


@pytest.mark.parametrize(
    ("response", "body"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"0123456789" + b"x" * 36,
            b"0123456789",
            id="9112-6.3-36-bytes-past-content-length",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiEXTRA", b"hi", id="9112-6.3-garbage"),
        pytest.param(OK + OK, b"hi", id="9112-6.3-a-second-response-in-the-same-read"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nEXTRA",
            b"hi",
            id="9112-6.3-after-the-last-chunk",
        ),
    ],
)
async def test_rfc9112_s6_3_message_ends_at_its_framing_and_the_connection_is_never_reused(
    raw_origin: StartOrigin, client: MakeClient, response: bytes, body: bytes
) -> None:
    origin = await raw_origin(answer(response, OK))
    c = client(origin.url)
    resp = await c.send("GET", "/", CIMultiDict())
    assert await resp.read_up_to(1 << 20) == (body, True)
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 2  # the first connection was not reused


async def test_rfc9112_s6_3_bytes_past_the_length_in_a_later_read_also_stop_reuse(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, index: int
    ) -> None:
        while await origin.request(reader):
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
            await w.drain()
            if index == 0:
                await asyncio.sleep(0.02)
                w.write(b"x" * 36)
                await w.drain()

    origin = await raw_origin(handler)
    c = client(origin.url)
    resp = await c.send("GET", "/", CIMultiDict())
    await asyncio.sleep(0.05)  # the stray bytes arrive before the body is read
    assert await resp.read_up_to(1 << 20) == (b"0123456789", True)
    assert (await get(c))[1] == b"0123456789"
    assert origin.accepts == 2


async def test_header_section_that_never_ends_is_invalid_once_over_64_kib(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        await origin.request(reader)
        w.write(b"HTTP/1.1 200 OK\r\n")
        with contextlib.suppress(ConnectionError):
            for i in range(10_000):
                w.write(b"X-%d: %s\r\n" % (i, b"v" * 100))
                await w.drain()

    origin = await raw_origin(handler)
    await expect_error(get(client(origin.url)), 502, "origin sent an invalid response")


async def test_body_shorter_than_content_length_then_eof_is_incomplete(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", close=True))
    c = client(origin.url)
    resp = await c.send("GET", "/", CIMultiDict())
    assert resp.content_length == 10
    await expect_error(resp.read_up_to(100), 502, "origin response body incomplete")

    resp = await c.send("GET", "/", CIMultiDict())
    chunks: list[bytes] = []

    async def drain() -> None:
        async for chunk in resp.iter_rest():
            chunks.append(chunk)

    await expect_error(drain(), 502, "origin response body incomplete")


async def test_truncated_chunked_body_is_incomplete(raw_origin: StartOrigin, client: MakeClient) -> None:
    truncated = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nwo"
    origin = await raw_origin(answer(truncated, close=True))
    resp = await client(origin.url).send("GET", "/", CIMultiDict())
    await expect_error(resp.read_up_to(100), 502, "origin response body incomplete")


# ------------------------------------------------------------------------------ failures and timeouts


async def test_origin_that_accepts_and_never_answers_times_out_with_504(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(silent)
    c = client(origin.url, read_timeout=TIMEOUT)
    started = time.monotonic()
    await expect_error(c.send("GET", "/", CIMultiDict()), 504, "origin timed out")
    assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + 1.0


async def test_timeout_argument_replaces_the_read_timeout(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(silent)
    c = client(origin.url, read_timeout=30.0)
    started = time.monotonic()
    await expect_error(c.send("GET", "/", CIMultiDict(), timeout=TIMEOUT), 504, "origin timed out")
    assert time.monotonic() - started < TIMEOUT + 1.0


async def test_body_that_stalls_between_chunks_times_out_and_data_arriving_in_time_does_not(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    async def dribble(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        await origin.request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(6):  # each gap is below the timeout, the total well above it
            await asyncio.sleep(TIMEOUT / 2)
            w.write(b"x")
            await w.drain()
        await asyncio.sleep(10)

    origin = await raw_origin(dribble)
    resp = await client(origin.url, read_timeout=TIMEOUT).send("GET", "/", CIMultiDict())
    got = bytearray()

    async def drain() -> None:
        async for chunk in resp.iter_rest():
            got.extend(chunk)

    await expect_error(drain(), 504, "origin timed out")
    assert got == b"x" * 6


async def test_connection_refused_is_502_unreachable(client: MakeClient) -> None:
    c = client(f"http://127.0.0.1:{free_port()}")
    await expect_error(c.send("GET", "/", CIMultiDict()), 502, "origin unreachable")
    # The failed connect gave its slot back.
    await expect_error(c.send("GET", "/", CIMultiDict()), 502, "origin unreachable")


async def test_reset_in_the_middle_of_the_header_section_is_502_closed(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    async def cut(origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int) -> None:
        await origin.request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        await w.drain()
        await asyncio.sleep(0.02)
        reset(w)

    origin = await raw_origin(cut)
    await expect_error(get(client(origin.url)), 502, "origin closed the connection")


async def test_fresh_connection_closed_before_any_byte_is_502_without_retry(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    async def hang_up(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        await origin.request(reader)

    origin = await raw_origin(hang_up)
    await expect_error(get(client(origin.url)), 502, "origin closed the connection")
    assert origin.accepts == 1


# ------------------------------------------------------------------------------ keep-alive and retries


async def test_idle_connection_closed_by_the_origin_is_dropped_not_handed_out(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(answer(OK, close=True))  # keep-alive framing, then a FIN
    c = client(origin.url)
    assert (await get(c))[1] == b"hi"
    await asyncio.sleep(0.05)
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 2


def closes_second_request_on_first_connection(*, rst: bool) -> Handler:
    """The keep-alive race: the origin drops a reused connection just as a request arrives."""

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, index: int
    ) -> None:
        while await origin.request(reader):
            if index == 0 and len(origin.requests) == 2:
                if rst:
                    reset(w)
                return
            w.write(OK)
            await w.drain()

    return handler


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
async def test_reused_connection_lost_before_any_response_byte_is_retried_once_for_idempotent_methods(
    raw_origin: StartOrigin, client: MakeClient, rst: bool, method: str
) -> None:
    origin = await raw_origin(closes_second_request_on_first_connection(rst=rst))
    c = client(origin.url)
    assert (await get(c))[1] == b"hi"
    resp, _ = await get(c, method=method)
    assert resp.status == 200
    assert origin.accepts == 2
    assert len(origin.requests) == 3


async def test_non_idempotent_request_is_not_retried(raw_origin: StartOrigin, client: MakeClient) -> None:
    origin = await raw_origin(closes_second_request_on_first_connection(rst=False))
    c = client(origin.url)
    await get(c)
    await expect_error(get(c, method="POST"), 502, "origin closed the connection")
    assert len(origin.requests) == 2


async def test_no_retry_once_response_bytes_arrived(raw_origin: StartOrigin, client: MakeClient) -> None:
    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        while await origin.request(reader):
            if len(origin.requests) == 2:
                w.write(b"HTTP/1.1 200 OK\r\n")
                await w.drain()
                return
            w.write(OK)
            await w.drain()

    origin = await raw_origin(handler)
    c = client(origin.url)
    await get(c)
    await expect_error(get(c), 502, "origin closed the connection")
    assert len(origin.requests) == 2


# ------------------------------------------------------------------------------ pool


async def test_pool_limit_caps_open_connections_and_queued_requests_all_succeed(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    async def slow(origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int) -> None:
        while await origin.request(reader):
            await asyncio.sleep(0.03)
            w.write(OK)
            await w.drain()

    origin = await raw_origin(slow)
    c = client(origin.url, max_connections=2)
    results = await asyncio.gather(*(get(c) for _ in range(5)))
    assert [body for _, body in results] == [b"hi"] * 5
    assert origin.max_open <= 2
    assert origin.accepts == 2


async def test_waiting_for_a_free_connection_is_bounded_by_the_connect_timeout(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(silent)
    c = client(origin.url, max_connections=1, connect_timeout=TIMEOUT, read_timeout=10.0)
    holder = asyncio.create_task(c.send("GET", "/", CIMultiDict()))
    await asyncio.sleep(0.05)
    await expect_error(c.send("GET", "/", CIMultiDict()), 504, "origin timed out")
    holder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await holder


async def test_peer_origin_gets_its_own_pool(raw_origin: StartOrigin, client: MakeClient) -> None:
    main = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmain"))
    peer = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npeer"))
    c = client(main.url, max_connections=1)
    for _ in range(2):
        assert (await get(c))[1] == b"main"
        assert (await get(c, origin=peer.url))[1] == b"peer"
    assert (main.accepts, peer.accepts) == (1, 1)
    assert peer.requests[0].endswith(b"Host: " + peer.url[len("http://") :].encode() + b"\r\n\r\n")


async def test_cancelled_requests_and_reads_never_leak_pool_slots(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        while head := await origin.request(reader):
            if head.startswith(b"GET /stall "):
                await asyncio.sleep(10)
            elif head.startswith(b"GET /partial "):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc")
                await w.drain()
                await asyncio.sleep(10)
            else:
                w.write(OK)
                await w.drain()

    origin = await raw_origin(handler)
    c = client(origin.url, max_connections=2, connect_timeout=1.0, read_timeout=5.0)

    async def read_partial() -> None:
        resp = await c.send("GET", "/partial", CIMultiDict())
        await resp.read_up_to(1 << 20)

    for round_ in range(3):
        # Cancelled while waiting for headers, for body bytes, and for a free slot.
        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(c.send("GET", "/stall", CIMultiDict())) for _ in range(4)
        ]
        tasks += [asyncio.create_task(read_partial()) for _ in range(4)]
        await asyncio.sleep(0.05 if round_ else 0.0)  # round 0: cancelled before even connecting
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert all(task.cancelled() for task in tasks)
    # A leaked slot would leave fewer than two: these would queue and time out.
    results = await asyncio.gather(get(c, "/ok"), get(c, "/ok"))
    assert [body for _, body in results] == [b"hi", b"hi"]


@pytest.mark.parametrize("handover", ["connection", "slot"])
async def test_request_cancelled_as_a_connection_or_slot_is_handed_to_it_passes_it_on(
    raw_origin: StartOrigin, client: MakeClient, handover: str
) -> None:
    origin = await raw_origin(answer(OK))
    c = client(origin.url, max_connections=1, connect_timeout=0.5)
    holder = await c.send("GET", "/", CIMultiDict())
    waiting = asyncio.create_task(c.send("GET", "/", CIMultiDict()))
    await asyncio.sleep(0.01)  # queued for the only slot
    if handover == "connection":
        assert await holder.read_up_to(100) == (b"hi", True)  # the connection goes to the waiter...
    else:
        holder.close()  # ...or its slot does
    waiting.cancel()  # ...which is cancelled before it could run
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert (await get(c))[1] == b"hi"


async def test_response_dropped_unread_gives_its_slot_back(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"))
    c = client(origin.url, max_connections=1, connect_timeout=1.0)
    resp = await c.send("GET", "/", CIMultiDict())
    del resp  # neither read, closed nor released (an exception path in the caller)
    resp = await c.send("GET", "/", CIMultiDict())
    resp.close()
    assert origin.accepts == 2


async def test_closing_a_half_read_response_drops_its_connection(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000
    origin = await raw_origin(answer(big))
    c = client(origin.url)
    resp = await c.send("GET", "/", CIMultiDict())
    data, complete = await resp.read_up_to(10)
    assert not complete
    assert len(data) >= 10
    resp.close()
    resp, body = await get(c)
    assert len(body) == 100_000
    assert origin.accepts == 2


async def test_read_up_to_returns_a_prefix_and_iter_rest_the_remainder(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    origin = await raw_origin(
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), OK)
    )
    c = client(origin.url)
    resp = await c.send("GET", "/", CIMultiDict())
    prefix, complete = await resp.read_up_to(1000)
    assert not complete
    rest = b"".join([chunk async for chunk in resp.iter_rest()])
    assert prefix + rest == body
    assert (await get(c))[1] == b"hi"  # read to the end: the connection went back to the pool
    assert origin.accepts == 1


async def test_twenty_mib_body_streams_with_bounded_buffering(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    size = 20 * 1024 * 1024
    block = bytes(range(256)) * 256  # 64 KiB

    async def firehose(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        await origin.request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(block)):
            w.write(block)
            await w.drain()
        await origin.request(reader)

    origin = await raw_origin(firehose)
    resp = await client(origin.url).send("GET", "/", CIMultiDict())
    digest = hashlib.sha256()
    total = largest = 0
    async for chunk in resp.iter_rest():
        digest.update(chunk)
        total += len(chunk)
        largest = max(largest, len(chunk))
        await asyncio.sleep(0.002)  # a slow consumer: unpaused, the buffer would grow to the whole body
    assert total == size
    assert digest.hexdigest() == hashlib.sha256(block * (size // len(block))).hexdigest()
    # Each chunk is everything buffered at that moment: reading stops past HIGH_WATER (+ one read).
    assert largest <= HIGH_WATER + 256 * 1024


async def test_close_closes_idle_connections(raw_origin: StartOrigin) -> None:
    closed = asyncio.Event()

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        await origin.request(reader)
        w.write(OK)
        await w.drain()
        if not await origin.request(reader):
            closed.set()

    origin = await raw_origin(handler)
    c = LeanOrigin(origin.url, 4, 1.0, 1.0)
    await get(c)
    await c.close()
    await asyncio.wait_for(closed.wait(), 1.0)
    await expect_error(get(c), 502, "origin connection failed")


# ------------------------------------------------------------------------------ the origin stub, uvloop


async def test_against_the_origin_stub_app(origin: Origin, client: MakeClient) -> None:
    c = client(origin.url, max_connections=2)
    resp, body = await get(c, "/bytes/100000")
    assert (resp.status, resp.content_length, body) == (200, 100_000, pattern(100_000))
    assert resp.headers["Content-Type"] == "application/octet-stream"

    resp, body = await get(c, "/bytes/300000?chunked=1")
    assert (resp.content_length, body) == (None, pattern(300_000))

    resp, body = await get(c, "/bytes/5000", method="HEAD")
    assert (resp.status, resp.content_length, body) == (200, 5000, b"")

    resp = await c.send("GET", "/echo?q=1", CIMultiDict([("Accept", "*/*"), ("X-Test", "1")]))
    data = json.loads((await resp.read_up_to(1 << 20))[0])
    host = origin.url[len("http://") :]
    # Only the caller's fields and Host: no User-Agent, Accept-Encoding or anything else.
    assert data["headers"] == [["Accept", "*/*"], ["X-Test", "1"], ["Host", host]]
    assert (data["method"], data["path"], data["query"]) == ("GET", "/echo", "q=1")

    await origin.fault("/broken", mode="reset")
    await expect_error(get(c, "/broken"), 502, "origin closed the connection")


def test_works_on_uvloop() -> None:
    async def scenario() -> None:
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        hello = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        origin = await RawOrigin(answer(OK, chunked, head, hello)).start()
        stalled = await RawOrigin(silent).start()
        c = LeanOrigin(origin.url, 2, 1.0, 1.0)
        try:
            assert (await get(c))[1] == b"hi"
            assert (await get(c))[1] == b"hi"
            resp, body = await get(c, method="HEAD")
            assert (resp.content_length, body) == (5, b"")
            assert (await get(c))[1] == b"hello"
            assert origin.accepts == 1
            timed_out = c.send("GET", "/", CIMultiDict(), origin=stalled.url, timeout=TIMEOUT)
            await expect_error(timed_out, 504, "origin timed out")
        finally:
            await c.close()
            await origin.close()
            await stalled.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
