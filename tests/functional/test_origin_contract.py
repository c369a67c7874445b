"""The origin clients' contract: every case runs against LeanOrigin and AiohttpOrigin.

`proxy.origin.Upstream` sends body-less requests to http origins through the lean
client and the rest (bodies, https) through aiohttp's; a caller must not be able to
tell them apart. The rules they share are in proxy/origin/rules.py and the failure
reasons in proxy/origin/errors.py. Origins here are raw loopback servers writing
exact bytes; accepts are counted to see which requests shared a TCP connection.

Where aiohttp cannot follow a rule, the case is an expected failure naming the
limit (`known_limit`), strict, so that it fails once aiohttp can. Request bodies,
which only aiohttp's client sends, have the one case of their own. Lean-only
internals (pool slots, high-water mark, uvloop) are in test_origin_client.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from origin_stub.behaviours import pattern
from proxy.config import OriginConfig
from proxy.origin import InterimSink, OriginResponse
from proxy.origin.aiohttp_client import AiohttpOrigin
from proxy.origin.errors import (
    CAUSE,
    CLOSED,
    CONNECT_TIMED_OUT,
    DNS,
    FAILED,
    INCOMPLETE,
    INVALID,
    REFUSED,
    RESET,
    TIMED_OUT,
    UpstreamError,
)
from proxy.origin.lean import LeanOrigin
from proxy.origin.rules import IDLE_TIMEOUT, MAX_HEADER_BYTES, MAX_HEADER_FIELDS
from proxy.origin.upstream import Upstream
from tests.functional.conftest import Origin, free_port

# ------------------------------------------------------------------------------ raw origins

Handler = Callable[["RawOrigin", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"  # OK's answer to a HEAD
TIMEOUT = 0.2  # read / connect timeouts where a test waits for one to fire


class RawOrigin:
    """A loopback server running `handler` per connection; counts accepts and open connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepts = 0
        self.open = 0
        self.max_open = 0
        self.closed = 0  # connections whose socket is closed on this side
        self.requests: list[bytes] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.Server | None = None
        self.url = ""
        self._changed = asyncio.Event()

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
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
            self.closed += 1
            self._changed.set()
            self.tasks.discard(task)

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        """The next request head on this connection (b"" when the client closed it)."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""
        self.requests.append(head)
        return head

    async def wait_closed(self, count: int) -> None:
        """Until `count` connections are closed on this side, then until the client has seen it."""
        while self.closed < count:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), 5.0)
        await settle()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def settle() -> None:
    """A few loop iterations: what a loopback peer wrote or closed has reached its reader."""
    for _ in range(5):
        await asyncio.sleep(0)


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


def then_reset(response: bytes, gate: asyncio.Event | None = None) -> Handler:
    """Writes `response` to the first request, then closes with a TCP RST once `gate` is set."""

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        await origin.request(reader)
        w.write(response)
        await w.drain()
        if gate is not None:
            await gate.wait()
        else:  # a reset discards what the peer has not read yet: give it a moment to read
            await asyncio.sleep(0.02)
        reset(w)

    return handler


async def silent(origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int) -> None:
    """Reads the request and never answers."""
    await origin.request(reader)
    await asyncio.sleep(3600)


async def hang_up(origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int) -> None:
    """Reads the request and closes the connection without a byte."""
    await origin.request(reader)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


StartOrigin = Callable[[Handler], Awaitable[RawOrigin]]


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


@pytest.fixture(scope="module")
def unaccepting() -> Iterator[str]:
    """The URL of a listener whose accept queue is full: a connect to it never completes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers: list[socket.socket] = []
    try:
        for _ in range(16):  # fill the queue (its length differs between kernels)
            s = socket.socket()
            s.settimeout(0.2)  # a loopback handshake takes far less, even on a busy machine
            try:
                s.connect(address)
            except TimeoutError:
                s.close()
                break
            fillers.append(s)
        else:
            pytest.fail("the listener's accept queue never filled")
        yield f"http://{address[0]}:{address[1]}"
    finally:
        for s in fillers:
            s.close()
        listener.close()


# ------------------------------------------------------------------------------ the clients


class Client(Protocol):
    """What both clients offer a caller (Upstream passes the body to aiohttp's alone)."""

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        *,
        timeout: float | None = None,
        origin: str | None = None,
        interim: InterimSink | None = None,
    ) -> OriginResponse: ...

    async def close(self) -> None: ...


class Clients:
    """Makes clients of one kind (`kind`: "lean" or "aiohttp") and closes them after the test."""

    def __init__(self, kind: str, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.request = request
        self.made: list[Client] = []

    def __call__(
        self,
        url: str,
        max_connections: int = 8,
        connect_timeout: float = 2.0,
        read_timeout: float = 2.0,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> Client:
        cls = LeanOrigin if self.kind == "lean" else AiohttpOrigin
        c: Client = cls(url, max_connections, connect_timeout, read_timeout, idle_timeout=idle_timeout)
        self.made.append(c)
        return c

    def known_limit(self, kind: str, reason: str) -> None:
        """This case is expected to fail for the `kind` client, for `reason` (strict: an XPASS fails)."""
        if self.kind == kind:
            self.request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


@pytest.fixture(params=["lean", "aiohttp"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Clients]:
    clients = Clients(request.param, request)
    yield clients
    for c in clients.made:
        await c.close()


# The limits of aiohttp's client that its wrapper cannot work around (see aiohttp_client.py).
AIOHTTP_LENIENT = (
    "aiohttp's C parser is lenient for responses outside dev mode (llhttp lenient headers, "
    "optional CR before LF, spaces after a chunk size) and keeps no raw head to check afterwards"
)
AIOHTTP_SAME_READ = (
    "aiohttp's C parser fails the whole read when bytes follow the end of a response in it "
    "(README: a response ends at its Content-Length)"
)
AIOHTTP_WRITER = (
    "aiohttp's header writer encodes str values as UTF-8 and drops lone surrogates, "
    "so field bytes that are not UTF-8 cannot be forwarded byte for byte"
)


async def get(c: Client, path: str = "/", method: str = "GET", **kwargs: Any) -> tuple[OriginResponse, bytes]:
    resp = await c.send(method, path, CIMultiDict(), **kwargs)
    body, complete = await resp.read_up_to(1 << 30)
    assert complete
    return resp, body


async def expect_error(awaitable: Awaitable[Any], status: int, reason: str) -> None:
    with pytest.raises(UpstreamError) as info:
        await awaitable
    assert (info.value.status_hint, info.value.reason) == (status, reason)
    assert info.value.cause == CAUSE[reason]  # the short word a metric label and a log line carry


async def drain(resp: OriginResponse, into: bytearray | None = None) -> bytes:
    got = bytearray() if into is None else into
    async for chunk in resp.iter_rest():
        got.extend(chunk)
    return bytes(got)


def fields(head: bytes) -> list[bytes]:
    """The field lines of a request head, without Host (the clients place it differently)."""
    return [f for f in head.split(b"\r\n")[1:] if f and not f.lower().startswith(b"host:")]


def host(head: bytes) -> list[bytes]:
    return [f for f in head.split(b"\r\n")[1:] if f.lower().startswith(b"host:")]


# ------------------------------------------------------------------------------ requests


async def test_request_is_method_target_the_callers_fields_and_host_nothing_else(
    raw_origin: StartOrigin, client: Clients
) -> None:
    origin = await raw_origin(answer(OK, OK_HEAD, OK))
    c = client(origin.url)
    headers: CIMultiDict[str] = CIMultiDict(
        [("Accept-Language", "en"), ("X-Multi", "a"), ("x-multi", "b"), ("X-Utf8", "café")]
    )
    for method in ("GET", "HEAD", "OPTIONS"):
        resp = await c.send(method, "/a/b?x=1&y=%20", headers)
        assert (resp.status, resp.reason) == (200, "OK")
        resp.close()
    port = origin.url.rsplit(":", 1)[1].encode()
    for method, head in zip(("GET", "HEAD", "OPTIONS"), origin.requests, strict=True):
        assert head.startswith(method.encode() + b" /a/b?x=1&y=%20 HTTP/1.1\r\n")
        # No User-Agent, Accept, Accept-Encoding or Content-Length of the client's own; a
        # repeated field keeps each value, in order (its name may take the first spelling).
        lines = fields(head)
        assert [line.lower() for line in lines] == [
            b"accept-language: en",
            b"x-multi: a",
            b"x-multi: b",
            b"x-utf8: caf\xc3\xa9",
        ]
        assert host(head) == [b"Host: 127.0.0.1:" + port]


async def test_callers_host_is_kept(raw_origin: StartOrigin, client: Clients) -> None:
    origin = await raw_origin(answer(OK))
    c = client(origin.url)
    await get_with(c, CIMultiDict([("host", "cdn.example"), ("X-A", "1")]))
    assert host(origin.requests[0]) == [b"host: cdn.example"]


async def test_field_bytes_that_are_not_utf8_go_out_as_they_came(
    raw_origin: StartOrigin, client: Clients
) -> None:
    client.known_limit("aiohttp", AIOHTTP_WRITER)
    origin = await raw_origin(answer(OK))
    c = client(origin.url)
    value = b"caf\xc3\xa9 \xff".decode("utf-8", "surrogateescape")  # as the front decodes fields
    await get_with(c, CIMultiDict([("X-Raw", value)]))
    assert fields(origin.requests[0]) == [b"X-Raw: caf\xc3\xa9 \xff"]


async def get_with(c: Client, headers: CIMultiDict[str]) -> bytes:
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
    raw_origin: StartOrigin, client: Clients, path: str, name: str, value: str
) -> None:
    origin = await raw_origin(answer(OK))
    c = client(origin.url)
    with pytest.raises(ValueError):
        await c.send("GET", path, CIMultiDict([(name, value)]))
    assert origin.accepts == 0


async def test_base_url_path_prefixes_the_target(raw_origin: StartOrigin, client: Clients) -> None:
    origin = await raw_origin(answer(OK))
    c = client(origin.url + "/prefix")
    await get(c, "/x")
    assert origin.requests[0].startswith(b"GET /prefix/x HTTP/1.1\r\n")


# ------------------------------------------------------------------------------ bodies and framing


async def test_content_length_body_and_keep_alive_reuse_one_connection(
    raw_origin: StartOrigin, client: Clients
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"))
    c = client(origin.url)
    for _ in range(3):
        resp, body = await get(c)
        assert (resp.status, body, resp.content_length) == (200, b"hello", 5)
        assert list(resp.headers.items()) == [("Content-Length", "5"), ("X-A", "1")]
    assert origin.accepts == 1


async def test_chunked_body_with_extensions_and_trailers_is_decoded_and_trailers_dropped(
    raw_origin: StartOrigin, client: Clients
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
    raw_origin: StartOrigin, client: Clients
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the end", close=True))
    c = client(origin.url)
    for _ in range(2):
        resp, body = await get(c)
        assert (body, resp.content_length) == (b"until the end", None)
    assert origin.accepts == 2


BODY = bytes(range(256)) * 40  # 10 KiB
FRAMINGS = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY),
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"%x\r\n%s\r\n" % (1024, BODY[i : i + 1024]) for i in range(0, len(BODY), 1024))
    + b"0\r\n\r\n",
    "close-delimited": b"HTTP/1.1 200 OK\r\n\r\n" + BODY,
}


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize(
    ("limit", "complete"),
    [(len(BODY) + 1, True), (len(BODY), True), (len(BODY) - 1, False), (100, False), (0, False)],
    ids=["above", "at", "one-below", "below", "zero"],
)
async def test_read_up_to_below_at_and_above_the_length_then_iter_rest(
    raw_origin: StartOrigin, client: Clients, framing: str, limit: int, complete: bool
) -> None:
    close = framing == "close-delimited"
    origin = await raw_origin(answer(FRAMINGS[framing], OK, close=close))
    c = client(origin.url)
    resp = await c.send("GET", "/", CIMultiDict())
    data, done = await resp.read_up_to(limit)
    # At most about `limit` bytes: past it by one read at worst, and short of it only at the end.
    assert done is complete
    assert BODY.startswith(data)
    assert len(data) > limit if not done else data == BODY
    rest = await drain(resp)
    assert data + rest == BODY
    assert (await get(c))[1] == b"hi"  # read to the end: the connection went back (or was closed)
    assert origin.accepts == (2 if close else 1)


async def test_iter_rest_alone_streams_the_whole_body(raw_origin: StartOrigin, client: Clients) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    origin = await raw_origin(
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), OK)
    )
    c = client(origin.url)
    resp = await c.send("GET", "/", CIMultiDict())
    assert await drain(resp) == body
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 1


@pytest.mark.parametrize(
    ("response", "length"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", 1234),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", None),
        (b"HTTP/1.1 200 OK\r\n\r\n", None),
    ],
    ids=["content-length", "chunked", "no-framing"],
)
async def test_head_response_has_no_body_whatever_its_framing_announces_and_its_connection_goes(
    raw_origin: StartOrigin, client: Clients, response: bytes, length: int | None
) -> None:
    origin = await raw_origin(answer(response, OK))
    c = client(origin.url)
    resp, body = await get(c, method="HEAD")
    assert (resp.status, resp.content_length, body) == (200, length, b"")
    assert (await get(c))[1] == b"hi"
    # Issue 12 row 16: the framing a GET would have had says a body may follow, from an origin that
    # answers HEAD as GET; nothing tells when it stops, so the connection is not reused.
    assert origin.accepts == 2


NO_BODY_HEADS = [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", id="length-0"),
    pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", id="204"),
    pytest.param(b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 10\r\n\r\n', id="304"),
]


@pytest.mark.parametrize("response", NO_BODY_HEADS)
async def test_head_response_after_which_nothing_can_follow_keeps_its_connection(
    raw_origin: StartOrigin, client: Clients, response: bytes
) -> None:
    # Issue 12 row 16: a GET would have had no body either, so a lying origin sends nothing more.
    origin = await raw_origin(answer(response, OK))
    c = client(origin.url)
    assert (await get(c, method="HEAD"))[1] == b""
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 1


# What a lying origin sends after its answer to a HEAD: the body a GET would have had, as the
# response framed it. One reads as a response of its own, which the next request must never get.
FORGED = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfake"
LATE_BODIES = {
    "text": (b"Content-Length: 5\r\n", b"hello"),
    "chunked": (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
    "a-response": (b"Content-Length: %d\r\n" % len(FORGED), FORGED),
}


@pytest.mark.parametrize("late", LATE_BODIES)
async def test_a_body_sent_late_after_a_head_response_never_reaches_the_next_request(
    raw_origin: StartOrigin, client: Clients, late: str
) -> None:
    # Issue 12 row 16: the body comes after the next request was sent (the latest it can come,
    # and the one case where the connection, were it reused, would read it as that one's answer).
    framing, body = LATE_BODIES[late]

    async def lying(origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int) -> None:
        while request := await origin.request(reader):
            if request.startswith(b"HEAD "):
                w.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n")
                await w.drain()
                if not await origin.request(reader):  # closed: the client did not reuse it
                    return
                w.write(body)
            w.write(OK)
            await w.drain()

    origin = await raw_origin(lying)
    c = client(origin.url)
    assert (await get(c, method="HEAD"))[1] == b""
    resp, got = await get(c)  # never a 502, never the late bytes
    assert (resp.status, got) == (200, b"hi")
    assert origin.accepts == 2


async def test_head_response_followed_by_a_body_anyway_stands_and_is_not_reused(
    raw_origin: StartOrigin, client: Clients
) -> None:
    client.known_limit("aiohttp", AIOHTTP_SAME_READ)
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", OK))
    c = client(origin.url)
    resp, body = await get(c, method="HEAD")
    assert (resp.content_length, body) == (5, b"")
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 2


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: "x"\r\n\r\n',
        b'HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nETag: "x"\r\n\r\n',
    ],
)
async def test_204_and_304_have_no_body_even_with_framing_fields(
    raw_origin: StartOrigin, client: Clients, head: bytes
) -> None:
    origin = await raw_origin(answer(head, OK))
    c = client(origin.url)
    resp, body = await get(c)
    assert body == b""
    assert resp.status in (204, 304)
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 1


async def test_missing_reason_phrase_is_empty_and_non_ascii_header_bytes_round_trip(
    raw_origin: StartOrigin, client: Clients
) -> None:
    raw_value = b"caf\xc3\xa9 \xff\xfe"
    origin = await raw_origin(
        answer(b"HTTP/1.1 200\r\nX-Raw: " + raw_value + b"  \r\nContent-Length: 0\r\n\r\n")
    )
    resp, _ = await get(client(origin.url))
    assert resp.reason == ""
    value = resp.headers["x-raw"]
    assert value == "café \udcff\udcfe"  # UTF-8 with surrogateescape, trailing OWS stripped
    assert value.encode("utf-8", "surrogateescape") == raw_value


@pytest.mark.parametrize(
    ("response", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.1 200 OK\r\nConnection: x-other, close\r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi", True),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi", True),
    ],
    ids=["close", "close-in-a-list", "http-1.0", "http-1.0-keep-alive", "http-1.1-keep-alive"],
)
async def test_connection_close_and_http_1_0_decide_reuse(
    raw_origin: StartOrigin, client: Clients, response: bytes, reused: bool
) -> None:
    origin = await raw_origin(answer(response))
    c = client(origin.url)
    assert (await get(c))[1] == b"hi"
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == (1 if reused else 2)


@pytest.mark.parametrize(
    ("response", "body"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"0123456789" + b"x" * 36,
            b"0123456789",
            id="9112-6.3-36-bytes-past-content-length",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiEXTRA", b"hi", id="9112-6.3-garbage"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nEXTRA",
            b"hi",
            id="9112-6.3-after-the-last-chunk",
        ),
    ],
)
async def test_rfc9112_s6_3_message_ends_at_its_framing_and_the_connection_is_never_reused(
    raw_origin: StartOrigin, client: Clients, response: bytes, body: bytes
) -> None:
    client.known_limit("aiohttp", AIOHTTP_SAME_READ)
    origin = await raw_origin(answer(response, OK))
    c = client(origin.url)
    resp = await c.send("GET", "/", CIMultiDict())
    assert await resp.read_up_to(1 << 20) == (body, True)
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 2  # the first connection was not reused


async def test_rfc9112_s6_3_a_second_response_in_the_same_read_is_not_taken_for_the_next(
    raw_origin: StartOrigin, client: Clients
) -> None:
    origin = await raw_origin(answer(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale", OK))
    c = client(origin.url)
    assert (await get(c))[1] == b"hi"
    assert (await get(c))[1] == b"hi"  # never the unasked-for "stale"
    assert origin.accepts == 2


async def test_rfc9112_s6_3_bytes_past_the_length_in_a_later_read_also_stop_reuse(
    raw_origin: StartOrigin, client: Clients
) -> None:
    go = asyncio.Event()

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, index: int
    ) -> None:
        while await origin.request(reader):
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
            await w.drain()
            if index == 0:
                await go.wait()
                w.write(b"x" * 36)
                await w.drain()

    origin = await raw_origin(handler)
    c = client(origin.url)
    resp = await c.send("GET", "/", CIMultiDict())
    go.set()
    await settle()  # the stray bytes arrive before the body is read
    assert await resp.read_up_to(1 << 20) == (b"0123456789", True)
    assert (await get(c))[1] == b"0123456789"
    assert origin.accepts == 2


# ------------------------------------------------------------------------------ interim responses

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
PROCESSING = b"HTTP/1.1 102 Processing\r\nX-Progress: 50\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
FINAL = b"HTTP/1.1 201 Created\r\nX-Final: yes\r\nContent-Length: 2\r\n\r\nok"
Interims = list[tuple[int, str, list[tuple[str, str]]]]
EXPECTED_INTERIMS = [
    (103, "Early Hints", [("Link", "</style.css>; rel=preload")]),
    (102, "Processing", [("X-Progress", "50")]),
    (100, "Continue", []),
]


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "one-read-each"])
async def test_rfc9110_s15_2_interim_responses_are_reported_in_order_and_never_leak_into_the_final(
    raw_origin: StartOrigin, client: Clients, split: bool
) -> None:
    seen: Interims = []
    reported = asyncio.Event()

    def sink(status: int, reason: str, headers: CIMultiDictProxy[str]) -> None:
        seen.append((status, reason, list(headers.items())))
        reported.set()

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        while await origin.request(reader):
            if not split or len(origin.requests) > 1:
                w.write(EARLY_HINTS + PROCESSING + CONTINUE + FINAL)
                await w.drain()
                continue
            for piece in (EARLY_HINTS, PROCESSING, CONTINUE):
                reported.clear()
                w.write(piece)
                await w.drain()
                await asyncio.wait_for(reported.wait(), 5.0)  # each in a read of its own
            w.write(FINAL)
            await w.drain()

    origin = await raw_origin(handler)
    c = client(origin.url)
    resp = await c.send("GET", "/", CIMultiDict(), interim=sink)
    assert seen == EXPECTED_INTERIMS
    assert (resp.status, resp.reason) == (201, "Created")
    assert dict(resp.headers) == {"X-Final": "yes", "Content-Length": "2"}
    assert await resp.read_up_to(100) == (b"ok", True)
    resp, body = await get(c)  # the connection is reused, and nobody else is told of interims
    assert (resp.status, body, len(seen)) == (201, b"ok", 3)
    assert "Link" not in resp.headers
    assert origin.accepts == 1


async def test_interim_sink_that_raises_does_not_break_the_exchange(
    raw_origin: StartOrigin, client: Clients
) -> None:
    def sink(status: int, reason: str, headers: CIMultiDictProxy[str]) -> None:
        raise RuntimeError("the client went away")

    origin = await raw_origin(answer(EARLY_HINTS + FINAL))
    resp = await client(origin.url).send("GET", "/", CIMultiDict(), interim=sink)
    assert (resp.status, await resp.read_up_to(100)) == (201, (b"ok", True))


# ------------------------------------------------------------------------------ the failure table


async def test_connection_refused_is_502_refused(client: Clients) -> None:
    c = client(f"http://127.0.0.1:{free_port()}", max_connections=1)
    await expect_error(c.send("GET", "/", CIMultiDict()), 502, REFUSED)
    # The failed connect gave its slot back.
    await expect_error(c.send("GET", "/", CIMultiDict()), 502, REFUSED)


async def test_a_name_that_does_not_resolve_is_502_dns(client: Clients) -> None:
    # RFC 6761 §6.4: names under .invalid never resolve, and resolvers answer so at once.
    c = client("http://origin.invalid:8080", connect_timeout=30.0)
    await expect_error(c.send("GET", "/", CIMultiDict()), 502, DNS)


async def test_connect_timeout_is_504_timed_out_connecting(unaccepting: str, client: Clients) -> None:
    c = client(unaccepting, connect_timeout=TIMEOUT, read_timeout=30.0)
    started = time.monotonic()
    await expect_error(c.send("GET", "/", CIMultiDict()), 504, CONNECT_TIMED_OUT)
    assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + 1.0


async def test_read_timeout_on_an_origin_that_accepts_and_never_answers_is_504_timed_out(
    raw_origin: StartOrigin, client: Clients
) -> None:
    origin = await raw_origin(silent)
    c = client(origin.url, connect_timeout=30.0, read_timeout=TIMEOUT)
    started = time.monotonic()
    await expect_error(c.send("GET", "/", CIMultiDict()), 504, TIMED_OUT)
    assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + 1.0
    assert len(origin.requests) == 1  # a timeout is never retried


async def test_read_timeout_bounds_each_wait_for_body_bytes_not_the_whole_body(
    raw_origin: StartOrigin, client: Clients
) -> None:
    async def dribble(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        await origin.request(reader)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(6):  # each gap is well below the timeout, the total above it
            await asyncio.sleep(TIMEOUT / 4)
            w.write(b"x")
            await w.drain()
        await asyncio.sleep(3600)

    origin = await raw_origin(dribble)
    resp = await client(origin.url, read_timeout=TIMEOUT).send("GET", "/", CIMultiDict())
    got = bytearray()
    await expect_error(drain(resp, got), 504, TIMED_OUT)
    assert got == b"x" * 6


@pytest.mark.parametrize("progress", [b"HTTP/1.1 102 Processing\r\n\r\n", b"X"], ids=["102s", "head-bytes"])
async def test_read_timeout_bounds_each_wait_before_the_head_not_the_whole_head(
    raw_origin: StartOrigin, client: Clients, progress: bytes
) -> None:
    # An origin that keeps a slow request alive with 102 Processing (or sends its head slowly):
    # each gap is below the timeout, the total above it. nginx's proxy_read_timeout is the same.
    async def slow(origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int) -> None:
        await origin.request(reader)
        if progress == b"X":
            w.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(6):
            await asyncio.sleep(TIMEOUT / 4)
            w.write(progress)
            await w.drain()
        w.write((b"\r\n" if progress == b"X" else b"HTTP/1.1 200 OK\r\n") + b"Content-Length: 2\r\n\r\nok")
        await w.drain()
        await asyncio.sleep(3600)

    origin = await raw_origin(slow)
    resp = await client(origin.url, read_timeout=TIMEOUT).send("GET", "/", CIMultiDict())
    assert resp.status == 200 and await resp.read_up_to(100) == (b"ok", True)


async def test_read_timeout_bounds_the_wait_after_an_interim_response(
    raw_origin: StartOrigin, client: Clients
) -> None:
    # aiohttp drops its read timer as a 1xx is parsed (the 1xx has no body to wait for); an origin
    # that sent `102 Processing` and then nothing held the request for good.
    async def then_silent(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        await origin.request(reader)
        w.write(b"HTTP/1.1 102 Processing\r\n\r\n")
        await w.drain()
        await asyncio.sleep(3600)

    origin = await raw_origin(then_silent)
    started = time.monotonic()
    await expect_error(asyncio.wait_for(get(client(origin.url, read_timeout=TIMEOUT)), 10), 504, TIMED_OUT)
    assert time.monotonic() - started < TIMEOUT + 1.0


async def test_connection_closed_before_the_head_is_502_closed_and_not_retried(
    raw_origin: StartOrigin, client: Clients
) -> None:
    origin = await raw_origin(hang_up)
    await expect_error(get(client(origin.url)), 502, CLOSED)
    assert (origin.accepts, len(origin.requests)) == (1, 1)  # a fresh connection: never retried


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
async def test_connection_closed_in_the_middle_of_the_head_is_502_closed_or_reset(
    raw_origin: StartOrigin, client: Clients, rst: bool
) -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Le"
    origin = await raw_origin(then_reset(cut) if rst else answer(cut, close=True))
    await expect_error(get(client(origin.url)), 502, RESET if rst else CLOSED)
    assert len(origin.requests) == 1


CUT_BODIES = {
    "content-length-fin": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", "fin"),
    "content-length-rst": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", "rst"),
    "chunked-fin": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nwo", "fin"),
    "chunked-rst": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "rst"),
    # RFC 9112 §8: a close-delimited body ended by a connection error is incomplete too.
    "close-delimited-rst": (b"HTTP/1.1 200 OK\r\n\r\nhalf", "rst"),
}


@pytest.mark.parametrize("cut", CUT_BODIES)
@pytest.mark.parametrize("reader", ["read_up_to", "iter_rest"])
async def test_body_cut_short_is_502_incomplete(
    raw_origin: StartOrigin, client: Clients, cut: str, reader: str
) -> None:
    response, how = CUT_BODIES[cut]
    head_read = asyncio.Event()
    origin = await raw_origin(
        answer(response, close=True) if how == "fin" else then_reset(response, head_read)
    )
    c = client(origin.url)
    resp = await c.send("GET", "/", CIMultiDict())
    head_read.set()
    assert resp.status == 200
    if reader == "read_up_to":
        await expect_error(resp.read_up_to(100), 502, INCOMPLETE)
    else:
        await expect_error(drain(resp), 502, INCOMPLETE)


INVALID_HEADS = [
    pytest.param(b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nhi", id="malformed-status"),
    pytest.param(b"garbage\r\n\r\n", id="not-http"),
    pytest.param(b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nhi", id="http-1.2"),
    pytest.param(b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nhi", id="status-below-100"),
    pytest.param(b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nhi", id="status-above-599"),
    pytest.param(b"HTTP/1.1 1000 Odd\r\nContent-Length: 2\r\n\r\nhi", id="four-digit-status"),
    pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", id="101"),
    # RFC 9112 §2.3: an HTTP/1.1 connection carries HTTP/1.x messages only.
    pytest.param(b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", id="http-2.0"),
    pytest.param(b"HTTP/0.9 200 OK\r\nContent-Length: 2\r\n\r\nhi", id="http-0.9"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nhi", id="nul"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nhi", id="bare-cr"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nhi", id="ctl-in-value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\x7f\r\nContent-Length: 2\r\n\r\nhi", id="del-in-value"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX A: a\r\nContent-Length: 2\r\n\r\nhi", id="space-in-name"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 2\r\n\r\nhi", id="space-before-colon"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi", id="two-lengths"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nhi", id="length-list"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi", id="signed-length"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        id="length-and-chunked",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: gzip\r\n\r\nhi", id="length-and-coding"
    ),
]
# Accepted by aiohttp's lenient parser: RFC 9112 lets a recipient take these (§2.2 bare LF,
# §5.2 obs-fold replaced by SP), but a cache rejects them: a response that two parsers may
# read differently is not one to store and serve again.
LENIENT_HEADS = [
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\nX-B: b\r\nContent-Length: 2\r\n\r\nhi", id="bare-lf"),
    pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi", id="bare-lf-only"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nhi", id="obs-fold"),
    pytest.param(b"HTTP/1.1 200 OK\r\n X-A: a\r\nContent-Length: 2\r\n\r\nhi", id="space-before-first-field"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nhi\r\n0\r\n\r\n",
        id="space-after-chunk-size",
    ),
]


async def check_invalid(origin: RawOrigin, c: Client) -> None:
    """The first response is 502 INVALID, whether in the head or the body; the next one is fine."""
    with pytest.raises(UpstreamError) as info:
        resp = await c.send("GET", "/", CIMultiDict())
        await resp.read_up_to(1 << 20)
    assert (info.value.status_hint, info.value.reason) == (502, INVALID)
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 2  # the connection is never reused


@pytest.mark.parametrize("response", INVALID_HEADS)
async def test_invalid_response_is_502_invalid_and_the_connection_is_never_reused(
    raw_origin: StartOrigin, client: Clients, response: bytes
) -> None:
    origin = await raw_origin(answer(response, OK))
    await check_invalid(origin, client(origin.url))


@pytest.mark.parametrize("response", LENIENT_HEADS)
async def test_response_a_lenient_parser_would_take_is_502_invalid(
    raw_origin: StartOrigin, client: Clients, response: bytes
) -> None:
    client.known_limit("aiohttp", AIOHTTP_LENIENT)
    origin = await raw_origin(answer(response, OK))
    await check_invalid(origin, client(origin.url))


@pytest.mark.parametrize(
    "bad",
    [b"zz\r\nxx\r\n0\r\n\r\n", b"2\r\nhiXX0\r\n\r\n", b"0\r\nbad trailer\r\n\r\n"],
    ids=["chunk-size", "chunk-end", "trailer"],
)
@pytest.mark.parametrize("later", [False, True], ids=["with-the-head", "in-a-later-read"])
async def test_malformed_chunked_body_is_502_invalid(
    raw_origin: StartOrigin, client: Clients, bad: bytes, later: bool
) -> None:
    gate = asyncio.Event()

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, index: int
    ) -> None:
        while await origin.request(reader):
            if index > 0:
                w.write(OK)
                await w.drain()
                continue
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
            await w.drain()
            if later:
                await gate.wait()
            w.write(bad)
            await w.drain()

    origin = await raw_origin(handler)
    c = client(origin.url)
    if later:
        resp = await c.send("GET", "/", CIMultiDict())
        assert await resp.read_up_to(1) == (b"hi", False)
        gate.set()
        await expect_error(resp.read_up_to(100), 502, INVALID)
        assert (await get(c))[1] == b"hi"
        assert origin.accepts == 2
    else:
        await check_invalid(origin, c)


# Issue 12 row 15. RFC 9112 §6.1: chunked is the final transfer coding and is applied once, and
# neither client decodes any other: a body left in one can be neither forwarded nor stored with
# the coding silently stripped. The parsers frame some of these as chunked and the rest as read
# until the close; either way the response is refused at its head, and its connection dropped.
CHUNKED_HI = b"\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
OTHER_CODINGS = [
    pytest.param(b"Transfer-Encoding: gzip, chunked" + CHUNKED_HI, id="gzip-then-chunked"),
    pytest.param(b"Transfer-Encoding: chunked, gzip" + CHUNKED_HI, id="chunked-then-gzip"),
    pytest.param(b"Transfer-Encoding: gzip\r\n\r\nhi", id="gzip"),
    pytest.param(b"Transfer-Encoding: identity\r\n\r\nhi", id="identity"),
    pytest.param(b"Transfer-Encoding: chunked, chunked" + CHUNKED_HI, id="chunked-twice"),
    pytest.param(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked" + CHUNKED_HI, id="two-lines"),
    pytest.param(
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked" + CHUNKED_HI, id="chunked-in-two-lines"
    ),
    pytest.param(b"Transfer-Encoding: chunked;x=1" + CHUNKED_HI, id="chunked-with-a-parameter"),
    pytest.param(b"Transfer-Encoding: chunked," + CHUNKED_HI, id="chunked-then-an-empty-element"),
    # Both parsers take a tab after "chunked" for another coding; a stripped value looks like chunked.
    pytest.param(b"Transfer-Encoding: chunked\t" + CHUNKED_HI, id="chunked-then-a-tab"),
    pytest.param(b"Transfer-Encoding: \r\nContent-Length: 2\r\n\r\nhi", id="none-beside-a-length"),
]


@pytest.mark.parametrize("rest", OTHER_CODINGS)
async def test_rfc9112_s6_1_a_transfer_coding_other_than_chunked_alone_is_502_invalid_and_not_reused(
    raw_origin: StartOrigin, client: Clients, rest: bytes
) -> None:
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK\r\n" + rest, OK))
    await check_invalid(origin, client(origin.url))


@pytest.mark.parametrize(
    "rest",
    [
        pytest.param(b"Transfer-Encoding: chunked" + CHUNKED_HI, id="chunked"),
        pytest.param(
            b"Transfer-Encoding: chunked\r\nContent-Length: 2" + CHUNKED_HI, id="chunked-and-length"
        ),
    ],
)
async def test_rfc9112_s6_1_transfer_encoding_in_an_http_1_0_response_is_502_invalid(
    raw_origin: StartOrigin, client: Clients, rest: bytes
) -> None:
    # RFC 9112 §6.1: a recipient of an HTTP/1.0 message with Transfer-Encoding treats its
    # framing as faulty, even beside a Content-Length (both clients took it as chunked before).
    origin = await raw_origin(answer(b"HTTP/1.0 200 OK\r\n" + rest, OK))
    await check_invalid(origin, client(origin.url))


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED", b"chunked  "])
async def test_rfc9112_s6_1_chunked_alone_in_any_case_is_taken(
    raw_origin: StartOrigin, client: Clients, value: bytes
) -> None:
    # Issue 12 row 15: the one transfer coding taken (case-insensitive, RFC 9112 §7).
    origin = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + value + CHUNKED_HI))
    c = client(origin.url)
    for _ in range(2):
        assert (await get(c))[1] == b"hi"
    assert origin.accepts == 1


@pytest.mark.parametrize(
    ("method", "response"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
    ],
    ids=["head", "304"],
)
async def test_rfc9112_s6_1_a_coding_named_on_a_response_without_a_body_is_taken(
    raw_origin: StartOrigin, client: Clients, method: str, response: bytes
) -> None:
    # Issue 12 row 15: the field only says what a GET would have got; there is nothing to decode.
    origin = await raw_origin(answer(response))
    resp, body = await get(client(origin.url), method=method)
    assert body == b""
    assert resp.headers["Transfer-Encoding"] == "gzip, chunked"


def head_with(*field_lines: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + b"".join(field_lines) + b"Content-Length: 2\r\n\r\nhi"


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            head_with(*(b"X-%d: 1\r\n" % i for i in range(MAX_HEADER_FIELDS))), id="too-many-fields"
        ),
        pytest.param(head_with(b"X-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n"), id="one-field-too-large"),
        pytest.param(
            head_with(*(b"X-%d: %s\r\n" % (i, b"a" * 7000) for i in range(10))), id="many-fields-too-large"
        ),
    ],
)
async def test_response_head_over_the_limits_is_502_invalid(
    raw_origin: StartOrigin, client: Clients, response: bytes
) -> None:
    origin = await raw_origin(answer(response, OK))
    await check_invalid(origin, client(origin.url))


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            head_with(*(b"X-%d: 1\r\n" % i for i in range(MAX_HEADER_FIELDS - 1))), id="most-fields"
        ),
        pytest.param(head_with(b"X-Big: " + b"a" * 60_000 + b"\r\n"), id="one-60-KiB-field"),
        pytest.param(
            head_with(*(b"X-%d: %s\r\n" % (i, b"a" * 7500) for i in range(8))), id="60-KiB-in-8-fields"
        ),
    ],
)
async def test_response_head_within_the_limits_is_taken(
    raw_origin: StartOrigin, client: Clients, response: bytes
) -> None:
    origin = await raw_origin(answer(response))
    resp, body = await get(client(origin.url))
    assert (resp.status, body) == (200, b"hi")


async def test_header_section_that_never_ends_is_invalid(raw_origin: StartOrigin, client: Clients) -> None:
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
    await expect_error(get(client(origin.url)), 502, INVALID)


# ------------------------------------------------------------------------------ keep-alive and retries


async def test_idle_connection_closed_by_the_origin_is_replaced(
    raw_origin: StartOrigin, client: Clients
) -> None:
    origin = await raw_origin(answer(OK, close=True))  # keep-alive framing, then a FIN
    c = client(origin.url)
    assert (await get(c))[1] == b"hi"
    await origin.wait_closed(1)
    assert (await get(c))[1] == b"hi"
    assert (origin.accepts, len(origin.requests)) == (2, 2)  # dropped, not tried and retried


# Issue 12 row 17: idle connections used to stay open past their idle time until the next request
# found them too old. Real time, kept short: what is measured is when sockets close.
IDLE = 0.5
LATE = 0.25  # how much later than IDLE a connection may close (a busy machine's timers run late)


async def wait_all_closed(origin: RawOrigin, within: float) -> None:
    """Until no connection is open on the origin's side; fails after `within` seconds."""
    async with asyncio.timeout(within):
        while origin.open:
            origin._changed.clear()
            await origin._changed.wait()


async def test_idle_connections_close_when_their_idle_time_runs_out_not_at_the_next_request(
    raw_origin: StartOrigin, client: Clients
) -> None:
    loop = asyncio.get_running_loop()
    answered: dict[int, float] = {}  # connection -> when its last response was written
    idle_for: dict[int, float] = {}  # connection -> how long after that the client closed it

    async def slow(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, index: int
    ) -> None:
        while await origin.request(reader):
            await asyncio.sleep(0.005)  # a slow miss: the 100 requests need several connections
            w.write(OK)
            await w.drain()
            answered[index] = loop.time()
        idle_for[index] = loop.time() - answered[index]

    origin = await raw_origin(slow)
    c = client(origin.url, idle_timeout=IDLE)
    results = await asyncio.gather(*(get(c) for _ in range(100)))
    assert [body for _, body in results] == [b"hi"] * 100
    assert origin.open > 1
    await wait_all_closed(origin, IDLE + LATE + 0.1)  # then idle: nobody asks again
    assert len(idle_for) == origin.accepts
    # Each closed once its own idle time ran out: not before, and not much later.
    assert all(IDLE - 0.01 <= seconds <= IDLE + LATE for seconds in idle_for.values()), idle_for


async def test_upstream_gives_both_clients_the_configured_idle_timeout(raw_origin: StartOrigin) -> None:
    assert OriginConfig().idle_timeout == IDLE_TIMEOUT  # the clients' own default is the config's
    origin = await raw_origin(answer(OK))
    upstream = Upstream(OriginConfig(url=origin.url, idle_timeout=IDLE))
    await upstream.start()
    try:
        for body in (None, b"x"):  # the lean client, then aiohttp's (it alone sends bodies)
            resp = await upstream.send("POST" if body else "GET", "/", CIMultiDict(), body)
            assert await resp.read_up_to(100) == (b"hi", True)
        assert origin.accepts == 2
        await wait_all_closed(origin, IDLE + LATE + 0.1)
    finally:
        await upstream.close()


def closes_second_request_on_first_connection(how: str) -> Handler:
    """The keep-alive race: the origin drops a reused connection just as a request arrives
    (`how`: "fin", "rst", or "partial": a FIN after the first bytes of a response)."""

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, index: int
    ) -> None:
        while head := await origin.request(reader):
            if index == 0 and len(origin.requests) == 2:
                if how == "rst":
                    reset(w)
                elif how == "partial":
                    w.write(b"HTTP/1.1 200 OK\r\n")
                    await w.drain()
                return
            w.write(OK_HEAD if head.startswith(b"HEAD ") else OK)
            await w.drain()

    return handler


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "OPTIONS"])
async def test_reused_connection_lost_before_any_response_byte_is_retried_once_for_idempotent_methods(
    raw_origin: StartOrigin, client: Clients, how: str, method: str
) -> None:
    origin = await raw_origin(closes_second_request_on_first_connection(how))
    c = client(origin.url)
    assert (await get(c))[1] == b"hi"
    resp, _ = await get(c, method=method)
    assert resp.status == 200
    assert (origin.accepts, len(origin.requests)) == (2, 3)


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_non_idempotent_request_is_never_retried(
    raw_origin: StartOrigin, client: Clients, how: str, method: str
) -> None:
    origin = await raw_origin(closes_second_request_on_first_connection(how))
    c = client(origin.url)
    await get(c)
    await expect_error(get(c, method=method), 502, RESET if how == "rst" else CLOSED)
    assert len(origin.requests) == 2


async def test_no_retry_once_response_bytes_arrived(raw_origin: StartOrigin, client: Clients) -> None:
    origin = await raw_origin(closes_second_request_on_first_connection("partial"))
    c = client(origin.url)
    await get(c)
    await expect_error(get(c), 502, CLOSED)
    assert len(origin.requests) == 2


async def test_no_second_retry(raw_origin: StartOrigin, client: Clients) -> None:
    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, index: int
    ) -> None:
        if await origin.request(reader) and index == 0:
            w.write(OK)
            await w.drain()
            await origin.request(reader)  # then: every request is dropped

    origin = await raw_origin(handler)
    c = client(origin.url)
    await get(c)
    await expect_error(get(c), 502, CLOSED)
    assert len(origin.requests) == 3  # the request, and one retry on a new connection


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed-body", "bytes-body"])
async def test_request_body_is_retried_only_when_it_can_be_sent_again(
    raw_origin: StartOrigin, streamed: bool
) -> None:
    # Only aiohttp's client sends bodies (Upstream): a PUT is idempotent, but a body streamed
    # from the client's connection cannot be sent a second time; bytes can.
    async def stream() -> AsyncIterator[bytes]:
        yield b"payload"

    origin = await raw_origin(closes_second_request_on_first_connection("fin"))
    c = AiohttpOrigin(origin.url, 4, 2.0, 2.0)
    try:
        await get(c)
        if streamed:
            await expect_error(c.send("PUT", "/", CIMultiDict(), stream()), 502, CLOSED)
            assert len(origin.requests) == 2
        else:
            resp = await c.send("PUT", "/", CIMultiDict(), b"payload")
            assert (resp.status, await resp.read_up_to(10)) == (200, (b"hi", True))
            assert (origin.accepts, len(origin.requests)) == (2, 3)
    finally:
        await c.close()


# ------------------------------------------------------------------------------ a request body's way out
# Only aiohttp's client sends bodies. A body is sent once the origin has taken it, not once it sits in
# the socket's buffers: origin.send_timeout bounds a time in which the origin takes none of it, and
# origin.read_timeout starts once it has taken the last byte (nginx: proxy_send_timeout).


# What the origin does with a body: given its socket and the body's length, returns what it read.
Reads = Callable[[socket.socket, int], Awaitable[int]]


class Uploads:
    """Origins that read request bodies as told, and Upstreams towards them; all closed after the test.

    The origin reads straight from its socket, whose receive buffer is small: what it has not read
    stays in the sender's queue, where the client sees it (what an origin buffers itself is out of
    any client's sight, as it is of nginx's)."""

    def __init__(self) -> None:
        self.listeners: list[socket.socket] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.upstreams: list[Upstream] = []

    async def origin(self, reads: Reads, interim: bytes = b"") -> tuple[str, list[int]]:
        """Reads a request's head, writes `interim`, reads the body of its Content-Length with
        `reads`, then answers OK. Returns its URL and, once read, the body's size."""
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by what it accepts
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        self.listeners.append(listener)
        got: list[int] = []

        async def serve() -> None:
            conn, _ = await loop.sock_accept(listener)
            with conn, contextlib.suppress(ConnectionError):
                head = b""
                while b"\r\n\r\n" not in head:
                    head += await loop.sock_recv(conn, 1)  # the head alone, not a byte of the body
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await loop.sock_sendall(conn, interim)
                got.append(await reads(conn, length))
                await loop.sock_sendall(conn, OK)

        self.tasks.add(asyncio.create_task(serve()))
        return f"http://127.0.0.1:{listener.getsockname()[1]}", got

    def upstream(self, url: str, **timeouts: float) -> Upstream:
        upstream = Upstream(OriginConfig(url=url, **timeouts))
        self.upstreams.append(upstream)
        return upstream

    async def close(self) -> None:
        for upstream in self.upstreams:
            await upstream.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for listener in self.listeners:
            listener.close()


@pytest.fixture
async def uploads() -> AsyncIterator[Uploads]:
    made = Uploads()
    yield made
    await made.close()


def body_stream(size: int, chunk: int = 16 * 1024) -> AsyncIterator[bytes]:
    async def stream() -> AsyncIterator[bytes]:
        for _ in range(size // chunk):
            yield b"u" * chunk

    return stream()


async def post(upstream: Upstream, size: int) -> OriginResponse:
    await upstream.start()
    return await upstream.send("POST", "/", CIMultiDict({"Content-Length": str(size)}), body_stream(size))


def reading(pause: float, every: float, piece: int) -> Reads:
    """An origin that waits `pause`, then reads `piece` bytes of the body every `every` seconds."""

    async def reads(conn: socket.socket, length: int) -> int:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(pause)
        got = 0
        while got < length:
            data = await loop.sock_recv(conn, min(piece, length - got))
            if not data:
                break
            got += len(data)
            await asyncio.sleep(every)
        return got

    return reads


async def test_an_origin_that_takes_none_of_a_request_body_times_out_after_send_timeout(
    uploads: Uploads,
) -> None:
    url, _ = await uploads.origin(reading(3600, 0, 0))
    upstream = uploads.upstream(url, send_timeout=TIMEOUT, read_timeout=30.0)
    started = time.monotonic()
    # Held for good before: aiohttp has no timeout while it writes a body (its read timeout
    # starts once the last byte is written), and 16 MiB never fit in the sockets' buffers.
    await expect_error(asyncio.wait_for(post(upstream, 16 << 20), 10), 504, TIMED_OUT)
    assert time.monotonic() - started < TIMEOUT * 1.25 + 1.0


@pytest.mark.parametrize("interim", [b"", b"HTTP/1.1 102 Processing\r\n\r\n"], ids=["", "after-a-102"])
@pytest.mark.parametrize(
    "pause, every", [(0.5, 0.0), (0.0, 0.05)], ids=["late-then-at-once", "4-KiB-every-50-ms"]
)
async def test_an_origin_that_takes_a_request_body_late_or_slowly_gets_all_of_it(
    uploads: Uploads, interim: bytes, pause: float, every: float
) -> None:
    # 48 KiB that aiohttp hands to the socket at once, taken after 0.5 s, or over 0.6 s: both longer
    # than the read timeout, within the send timeout. Before: 504 once the read timeout had passed
    # after the last byte was handed over (an interim response also started it).
    url, got = await uploads.origin(reading(pause, every, 4096), interim)
    upstream = uploads.upstream(url, send_timeout=1.0, read_timeout=0.3)
    resp = await post(upstream, 48 * 1024)
    assert (resp.status, await resp.read_up_to(10), got) == (200, (b"hi", True), [48 * 1024])


async def test_the_read_timeout_starts_once_the_origin_has_taken_the_whole_body(uploads: Uploads) -> None:
    taken: list[float] = []

    async def then_silent(conn: socket.socket, length: int) -> int:
        got = await reading(0.0, 0.05, 4096)(conn, length)
        taken.append(time.monotonic())
        await asyncio.sleep(3600)
        return got

    url, _ = await uploads.origin(then_silent)
    upstream = uploads.upstream(url, send_timeout=1.0, read_timeout=0.3)
    await expect_error(asyncio.wait_for(post(upstream, 48 * 1024), 10), 504, TIMED_OUT)
    assert len(taken) == 1  # the origin read the whole body, then the read timeout ran out
    assert time.monotonic() - taken[0] < 0.3 * 1.25 + 1.0


# ------------------------------------------------------------------------------ timeouts and pools


async def test_connect_timeout_does_not_bound_a_slow_answer(raw_origin: StartOrigin, client: Clients) -> None:
    async def slow(origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int) -> None:
        await origin.request(reader)
        await asyncio.sleep(TIMEOUT * 1.5)
        w.write(OK)
        await w.drain()
        await origin.request(reader)

    origin = await raw_origin(slow)
    c = client(origin.url, connect_timeout=TIMEOUT, read_timeout=2.0)
    assert (await get(c))[1] == b"hi"


@pytest.mark.parametrize("stage", ["connect", "read"])
async def test_timeout_argument_replaces_the_connect_and_read_timeouts(
    raw_origin: StartOrigin, unaccepting: str, client: Clients, stage: str
) -> None:
    # The per-request timeout a peer edge gets (proxy/fetcher.py: route.timeout).
    url = unaccepting if stage == "connect" else (await raw_origin(silent)).url
    c = client(url, connect_timeout=30.0, read_timeout=30.0)
    started = time.monotonic()
    expected = CONNECT_TIMED_OUT if stage == "connect" else TIMED_OUT
    await expect_error(c.send("GET", "/", CIMultiDict(), timeout=TIMEOUT), 504, expected)
    assert time.monotonic() - started < TIMEOUT + 1.0


async def test_timeout_argument_also_bounds_the_body(raw_origin: StartOrigin, client: Clients) -> None:
    origin = await raw_origin(then_stall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
    c = client(origin.url, connect_timeout=30.0, read_timeout=30.0)
    resp = await c.send("GET", "/", CIMultiDict(), timeout=TIMEOUT)
    started = time.monotonic()
    await expect_error(resp.read_up_to(100), 504, TIMED_OUT)
    assert time.monotonic() - started < TIMEOUT + 1.0


def then_stall(response: bytes) -> Handler:
    """Writes `response` to each request and then nothing more."""

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        await origin.request(reader)
        w.write(response)
        await w.drain()
        await asyncio.sleep(3600)

    return handler


async def test_waiting_for_a_free_connection_is_bounded_by_the_connect_timeout(
    raw_origin: StartOrigin, client: Clients
) -> None:
    origin = await raw_origin(then_stall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
    c = client(origin.url, max_connections=1, connect_timeout=TIMEOUT, read_timeout=30.0)
    holder = await c.send("GET", "/", CIMultiDict())  # holds the only connection
    started = time.monotonic()
    await expect_error(c.send("GET", "/", CIMultiDict()), 504, CONNECT_TIMED_OUT)
    assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + 1.0
    holder.close()


async def test_each_origin_has_its_own_connection_limit(raw_origin: StartOrigin, client: Clients) -> None:
    main = await raw_origin(then_stall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nmain"))
    peer = await raw_origin(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npeer"))
    c = client(main.url, max_connections=1, connect_timeout=TIMEOUT)
    holder = await c.send("GET", "/", CIMultiDict())  # the origin's only connection is busy...
    for _ in range(2):  # ...and a peer edge is still asked, over one kept-alive connection
        assert (await get(c, origin=peer.url))[1] == b"peer"
    assert (main.accepts, peer.accepts) == (1, 1)
    assert host(peer.requests[0]) == [b"Host: " + peer.url[len("http://") :].encode()]
    holder.close()


# ------------------------------------------------------------------------------ cancellation and release


def slow_body_then_ok(gate: asyncio.Event) -> Handler:
    """GET /slow: 3 of 10 body bytes, the rest once `gate` is set; anything else: OK."""

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        while head := await origin.request(reader):
            if head.startswith(b"GET /slow "):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                await w.drain()
                await gate.wait()
                w.write(b"defghijklm")  # the rest, and the start of no response
                await w.drain()
            else:
                w.write(OK)
                await w.drain()

    return handler


@pytest.mark.parametrize("reader", ["read_up_to", "iter_rest"])
async def test_request_cancelled_mid_body_leaves_no_broken_connection_in_the_pool(
    raw_origin: StartOrigin, client: Clients, reader: str
) -> None:
    gate = asyncio.Event()
    origin = await raw_origin(slow_body_then_ok(gate))
    c = client(origin.url, max_connections=1, connect_timeout=1.0)
    resp = await c.send("GET", "/slow", CIMultiDict())
    task = asyncio.create_task(resp.read_up_to(100) if reader == "read_up_to" else drain(resp))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()  # the rest of that body would now arrive on its connection
    # Neither closed nor released by the caller: the cancelled read gave the slot back, and the
    # connection with the half-read body is not handed out again.
    for _ in range(2):
        assert (await get(c))[1] == b"hi"
    assert origin.accepts == 2


async def test_request_cancelled_while_waiting_for_the_head_leaves_no_broken_connection(
    raw_origin: StartOrigin, client: Clients
) -> None:
    gate = asyncio.Event()

    async def handler(
        origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int
    ) -> None:
        while head := await origin.request(reader):
            if head.startswith(b"GET /late "):
                await gate.wait()
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
            else:
                w.write(OK)
            await w.drain()

    origin = await raw_origin(handler)
    c = client(origin.url, max_connections=1, connect_timeout=1.0)
    assert (await get(c))[1] == b"hi"
    task = asyncio.create_task(c.send("GET", "/late", CIMultiDict()))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()  # the late answer must not be taken for the next request's
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 2


@pytest.mark.parametrize("how", ["close", "release"])
async def test_half_read_response_closed_or_released_drops_its_connection(
    raw_origin: StartOrigin, client: Clients, how: str
) -> None:
    gate = asyncio.Event()
    origin = await raw_origin(slow_body_then_ok(gate))
    c = client(origin.url, max_connections=1, connect_timeout=1.0)
    resp = await c.send("GET", "/slow", CIMultiDict())
    data, complete = await resp.read_up_to(2)
    assert (data, complete) == (b"abc", False)
    if how == "close":
        resp.close()
    else:
        resp.release()
    gate.set()
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 2


async def test_release_after_a_head_or_304_keeps_the_connection(
    raw_origin: StartOrigin, client: Clients
) -> None:
    origin = await raw_origin(
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\n\r\n", OK)
    )
    c = client(origin.url)
    (await c.send("HEAD", "/", CIMultiDict())).release()
    (await c.send("GET", "/", CIMultiDict())).release()
    assert (await get(c))[1] == b"hi"
    assert origin.accepts == 1


async def test_closed_client_fails_requests_and_closes_idle_connections(
    raw_origin: StartOrigin, client: Clients
) -> None:
    origin = await raw_origin(answer(OK))
    c = client(origin.url)
    await get(c)
    await c.close()
    await origin.wait_closed(1)
    await expect_error(get(c), 502, FAILED)
    assert origin.accepts == 1


# ------------------------------------------------------------------------------ the origin stub


async def test_against_the_origin_stub_app(origin: Origin, client: Clients) -> None:
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
    authority = origin.url[len("http://") :]
    # Only the caller's fields and Host: no User-Agent, Accept-Encoding or anything else.
    sent = data["headers"]
    assert [f for f in sent if f[0] != "Host"] == [["Accept", "*/*"], ["X-Test", "1"]]
    assert [f for f in sent if f[0] == "Host"] == [["Host", authority]]
    assert (data["method"], data["path"], data["query"]) == ("GET", "/echo", "q=1")

    await origin.fault("/broken", mode="reset")
    await expect_error(get(c, "/broken"), 502, CLOSED)


@pytest.mark.parametrize(
    ("max_connections", "idle_timeout"),
    [(0, IDLE_TIMEOUT), (8, 0.0), (8, -1.0)],
    ids=["no-connections", "idle-0", "idle-negative"],
)
async def test_unusable_pool_settings_are_refused_alike(
    client: Clients, max_connections: int, idle_timeout: float
) -> None:
    # rules.check_pool: aiohttp alone would read max_connections 0 as "no limit".
    with pytest.raises(ValueError):
        client("http://127.0.0.1:9", max_connections=max_connections, idle_timeout=idle_timeout)
