"""1xx interim responses from the origin (RFC 9110 §15.2), through the real proxy, on raw sockets.

A raw origin sends an interim response and then waits; the test reads that interim response
from the proxy before it lets the origin send the final one, so it proves the interim response
is forwarded as it arrives. HTTP/1.0 clients never get one (RFC 9110 §15.2), nothing of it is
stored, and its fields never join the final response's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.functional.conftest import (
    FakeClock,
    Proxy,
    ProxyFactory,
    StartScripted,
)

FINAL = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nfinal"

INTERIMS = [
    pytest.param(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\nVia: 1.1 edge-test\r\n\r\n",
        id="9110-15.2.4-103-early-hints",
    ),
    pytest.param(
        b"HTTP/1.1 102 Processing\r\nConnection: X-Hop\r\nX-Hop: 1\r\nX-Step: 2\r\n\r\n",
        b"HTTP/1.1 102 Processing\r\nX-Step: 2\r\nVia: 1.1 edge-test\r\n\r\n",
        id="9110-15.2-102-hop-by-hop-fields-dropped",
    ),
    pytest.param(
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\nVia: 1.1 edge-test\r\n\r\n",
        id="9110-15.2.1-100-not-asked-for",
    ),
]


class RawClient:
    """One client connection to the proxy, read head by head."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(self) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)

    async def body(self, head: bytes) -> bytes:
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                return await asyncio.wait_for(self.reader.readexactly(int(line.split(b":")[1])), 5)
        return b""


Connect = Callable[[Proxy], Awaitable[RawClient]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    opened: list[RawClient] = []

    async def open_client(proxy: Proxy) -> RawClient:
        client = RawClient(*await asyncio.open_connection(proxy.server.host, proxy.server.port))
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.writer.close()
        with contextlib.suppress(ConnectionError):
            await client.writer.wait_closed()


def get(path: str, version: str = "1.1", extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: cdn.example\r\n".encode() + extra + b"\r\n"


def field(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@pytest.mark.parametrize(("interim", "forwarded"), INTERIMS)
async def test_rfc9110_s15_2_interim_response_is_forwarded_before_the_final_one_and_never_stored(
    start_proxy: ProxyFactory,
    scripted_origin: StartScripted,
    connect: Connect,
    interim: bytes,
    forwarded: bytes,
) -> None:
    go = asyncio.Event()
    origin = await scripted_origin([[interim, go, FINAL]])
    proxy = await start_proxy(origin_url=origin.url)
    client = await connect(proxy)
    await client.send(get("/page"))
    assert await client.head() == forwarded  # while the origin still holds its final response
    go.set()
    final = await client.head()
    assert final.startswith(b"HTTP/1.1 200 OK\r\n")
    assert await client.body(final) == b"final"
    assert field(final, b"Link") is None and field(final, b"X-Step") is None
    assert b"stored" in (field(final, b"Cache-Status") or b"")
    # The stored response: the final one alone, and no interim response on a hit.
    await client.send(get("/page"))
    hit = await client.head()
    assert hit.startswith(b"HTTP/1.1 200 OK\r\n") and b"hit" in (field(hit, b"Cache-Status") or b"")
    assert field(hit, b"Link") is None and field(hit, b"X-Step") is None
    assert await client.body(hit) == b"final"
    assert len(origin.requests) == 1


async def test_rfc9110_s15_2_never_to_an_http_1_0_client(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, connect: Connect
) -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    origin = await scripted_origin([[hints, FINAL]])
    proxy = await start_proxy(origin_url=origin.url)
    client = await connect(proxy)
    await client.send(get("/page", "1.0"))
    head = await client.head()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and field(head, b"Link") is None
    assert await client.body(head) == b"final"


async def test_rfc9110_s10_1_1_an_http_1_0_clients_expect_100_continue_is_ignored(
    start_proxy: ProxyFactory, connect: Connect
) -> None:
    """A server MUST ignore a 100-continue expectation in an HTTP/1.0 request, and MUST NOT send
    an HTTP/1.0 client a 1xx (§15.2). Before: the front answered the expectation as for HTTP/1.1,
    "HTTP/1.1 100 Continue" ahead of the final response, once the body was forwarded; and Expect
    was passed on to the origin."""

    heads: list[bytes] = []

    async def continues(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await reader.readexactly(4)  # the body, sent on once the 100 has come
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(continues, "127.0.0.1", 0)
    try:
        proxy = await start_proxy(origin_url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        client = await connect(proxy)
        await client.send(
            b"POST /items HTTP/1.0\r\nHost: cdn.example\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\n\r\nbody"
        )
        head = await client.head()
        assert head.startswith(b"HTTP/1.1 201 Created\r\n"), head
        assert await client.body(head) == b"ok"
        # Nor is it passed on, for the origin client to wait CONTINUE_WAIT for a 100 to send the body.
        [forwarded] = heads
        assert b"\r\nexpect:" not in forwarded.lower(), forwarded
    finally:
        server.close()


async def test_rfc9110_s15_2_on_a_pass_through_and_an_expect_100_continue_is_answered_once(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, connect: Connect
) -> None:
    # A POST goes through the aiohttp origin client (it has a body).
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    created = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    go = asyncio.Event()
    origin = await scripted_origin([[b"HTTP/1.1 100 Continue\r\n\r\n", go, hints, created]])
    proxy = await start_proxy(origin_url=origin.url)
    client = await connect(proxy)
    await client.send(
        b"POST /items HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    # The front answers the expectation itself once the body is wanted; the origin's 100,
    # an answer to the same expectation, is not repeated.
    assert await client.head() == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send(b"body")
    go.set()
    assert (await client.head()).startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n")
    final = await client.head()
    assert final.startswith(b"HTTP/1.1 201 Created\r\n")
    assert await client.body(final) == b"ok"


async def test_rfc9110_s15_2_a_coalesced_request_gets_the_final_response_only(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, connect: Connect, clock: FakeClock
) -> None:
    go = asyncio.Event()
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    origin = await scripted_origin([[hints, go, FINAL]])
    proxy = await start_proxy(origin_url=origin.url)
    leader = await connect(proxy)
    waiter = await connect(proxy)
    await leader.send(get("/page"))
    assert (await leader.head()).startswith(b"HTTP/1.1 103 ")
    await waiter.send(get("/page"))  # joins the leader's fetch
    await asyncio.sleep(0.1)
    go.set()
    for client in (leader, waiter):
        head = await client.head()
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        assert await client.body(head) == b"final"
        if client is waiter:
            assert b"collapsed" in (field(head, b"Cache-Status") or b"")
    assert len(origin.requests) == 1


async def test_interims_of_a_background_revalidation_go_nowhere(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, connect: Connect, clock: FakeClock
) -> None:
    swr = (
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=10, stale-while-revalidate=60\r\n"
        b"Content-Length: 2\r\n\r\nv1"
    )
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    go = asyncio.Event()
    origin = await scripted_origin([swr, [hints, go, swr]])
    proxy = await start_proxy(origin_url=origin.url)
    client = await connect(proxy)
    await client.send(get("/page"))
    await client.body(await client.head())
    clock.advance(20)
    await client.send(get("/page"))  # stale: answered at once, revalidated behind
    head = await client.head()
    assert b"stale-while-revalidate" in (field(head, b"Cache-Status") or b"")
    await client.body(head)
    await asyncio.sleep(0.1)  # the origin has sent its 103 to the background fetch by now
    await client.send(get("/page"))
    head = await client.head()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head  # no stray 103 on this connection
    await client.body(head)
    go.set()


async def test_rfc9110_s10_1_1_an_origin_that_ignores_expect_100_continue_gets_the_body_anyway(
    start_proxy: ProxyFactory, connect: Connect
) -> None:
    """The origin sends no 100 (Continue) and waits for the body, as one that ignores the
    expectation does (an HTTP/1.0 server must). Before: the origin client waited for the origin's
    100 to send the body, the origin for the body, and the front sends its 100 only once the body
    is wanted: the request hung (no timeout ran while the body was "on its way"). Now the body
    goes after CONTINUE_WAIT without the origin's 100, which a client may do (§10.1.1)."""
    bodies: list[bytes] = []

    async def ignores_expect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        bodies.append(await reader.readexactly(4))
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(ignores_expect, "127.0.0.1", 0)
    try:
        proxy = await start_proxy(origin_url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        client = await connect(proxy)
        await client.send(
            b"POST /items HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        assert await client.head() == b"HTTP/1.1 100 Continue\r\n\r\n"  # within 5 s
        await client.send(b"body")
        final = await client.head()
        assert final.startswith(b"HTTP/1.1 201 Created\r\n")
        assert await client.body(final) == b"ok"
        assert bodies == [b"body"]
    finally:
        server.close()


async def test_rfc9110_s10_1_1_an_origins_417_to_expect_100_continue_is_relayed_without_a_100(
    start_proxy: ProxyFactory, connect: Connect
) -> None:
    """The origin refuses the expectation at once: the client gets its 417 (and no 100 before it,
    so it sends no body), the origin no body, and the connection closes after the answer."""
    received: list[bytes] = []

    async def refuses(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 4\r\n\r\nnope")
        await writer.drain()
        received.append(await reader.read(65536))  # b"": the proxy closed without a body byte
        writer.close()

    server = await asyncio.start_server(refuses, "127.0.0.1", 0)
    try:
        proxy = await start_proxy(origin_url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        client = await connect(proxy)
        await client.send(
            b"POST /items HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        head = await client.head()
        assert head.startswith(b"HTTP/1.1 417 Expectation Failed\r\n"), head
        assert b"\r\nConnection: close\r\n" in head
        assert await client.body(head) == b"nope"
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.02)
        assert received == [b""]
    finally:
        server.close()
