"""The front answering through the whole engine (proxy/front.py + proxy/h1.py).

Misses, passes and revalidations of plain GET/HEAD requests are answered by the
lean front itself, not handed to aiohttp: these tests read the raw bytes it
writes (framing, Date, Connection), pipelining behind an asynchronous answer,
a client that goes away mid-fetch, and shutdown with a request in flight.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from origin_stub.behaviours import pattern
from tests.functional.conftest import Origin, Proxy, ProxyFactory, make_config
from tests.functional.test_front import exchange, get


def head_of(response: bytes) -> bytes:
    """The status line and fields, each line ending in CRLF."""
    return response.partition(b"\r\n\r\n")[0] + b"\r\n"


async def read_until(proxy: Proxy, data: bytes, marker: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(data)
    out = b""
    try:
        while not out.endswith(marker):
            chunk = await asyncio.wait_for(reader.read(65536), 3)
            assert chunk, "connection closed early"
            out += chunk
    finally:
        writer.close()
    return out


def decode_chunked(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert data.startswith(b"\r\n")  # no trailers
            return body
        body += data[:size]
        assert data[size : size + 2] == b"\r\n"
        data = data[size + 2 :]


async def test_a_miss_is_answered_by_the_lean_front_with_the_origin_length(proxy: Proxy) -> None:
    out = await exchange(proxy, get("/bytes/5000"))
    head, body = head_of(out), out.partition(b"\r\n\r\n")[2]
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 5000\r\n" in head
    assert b"fwd=uri-miss" in head and b"stored" in head
    assert b"\r\nVia: 1.1 edge-test" in head
    assert b"transfer-encoding" not in head.lower()
    assert body == pattern(5000)


async def test_a_streamed_body_of_unknown_length_is_chunked_for_http11(
    start_proxy: ProxyFactory, origin: Origin, tmp_path: Path
) -> None:
    # Bigger than max_object_size and sent chunked by the origin: streamed through, never whole.
    cache = replace(make_config(origin.url, tmp_path / "l2").cache, max_object_size=100_000)
    proxy = await start_proxy(cache=cache)
    out = await read_until(proxy, get("/bytes/300000?chunked=1"), b"\r\n0\r\n\r\n")
    head, rest = head_of(out), out.partition(b"\r\n\r\n")[2]
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head
    assert b"content-length" not in head.lower()
    assert decode_chunked(rest) == pattern(300_000)


async def test_a_streamed_body_of_unknown_length_ends_with_the_connection_for_http10(
    start_proxy: ProxyFactory, origin: Origin, tmp_path: Path
) -> None:
    cache = replace(make_config(origin.url, tmp_path / "l2").cache, max_object_size=100_000)
    proxy = await start_proxy(cache=cache)
    out = await exchange(
        proxy, get("/bytes/300000?chunked=1", "Connection: keep-alive", version="1.0"), until_close=True
    )
    head, body = head_of(out), out.partition(b"\r\n\r\n")[2]
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close\r\n" in head  # close-delimited: keep-alive is not possible
    assert b"chunked" not in head.lower() and b"content-length" not in head.lower()
    assert body == pattern(300_000)


async def test_head_miss_has_the_length_and_no_body(proxy: Proxy) -> None:
    request = b"HEAD /bytes/5000 HTTP/1.1\r\nHost: cdn.example\r\n\r\n"
    out = await read_until(proxy, request + get("/bytes/10"), pattern(10))
    first, rest = head_of(out), out.partition(b"\r\n\r\n")[2]
    assert first.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Length: 5000\r\n" in first
    assert rest.startswith(b"HTTP/1.1 200 ")  # the next response follows at once: no body in between


async def test_pipelined_requests_behind_a_miss_are_answered_in_order(proxy: Proxy, origin: Origin) -> None:
    await exchange(proxy, get("/bytes/20"))  # /bytes/20 is now a hit
    out = await exchange(proxy, get("/bytes/30") + get("/bytes/20") + get("/bytes/30"), responses=3)
    responses = out.split(b"HTTP/1.1 ")[1:]
    assert len(responses) == 3
    assert b"fwd=uri-miss" in responses[0] and b"Content-Length: 30" in responses[0]
    assert b";hit;" in responses[1] and b"Content-Length: 20" in responses[1]
    assert b";hit;" in responses[2] and b"Content-Length: 30" in responses[2]
    assert await origin.hits("/bytes/30") == 1


async def test_date_is_added_when_the_origin_sends_none(proxy: Proxy, origin: Origin) -> None:
    async with origin.session.get(origin.url + "/no-store?nodate=1") as direct:
        assert "Date" not in direct.headers  # the origin really sends none
    out = await exchange(proxy, get("/no-store?nodate=1"))
    head = head_of(out)
    assert head.count(b"\r\nDate: ") == 1


async def test_connection_close_is_honoured_after_a_miss(proxy: Proxy) -> None:
    out = await exchange(proxy, get("/bytes/40", "Connection: close") + get("/bytes/40"), until_close=True)
    assert out.count(b"HTTP/1.1 ") == 1  # the second request is never read
    assert b"\r\nConnection: close\r\n" in head_of(out)


async def test_a_client_gone_mid_fetch_leaves_the_proxy_serving(
    proxy: Proxy, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    await origin.fault("/bytes/50", mode="delay", ms=300)
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(get("/bytes/50"))
    await writer.drain()
    await asyncio.sleep(0.05)  # the fetch is under way
    writer.close()
    await origin.clear_faults()
    with caplog.at_level(logging.ERROR):
        out = await exchange(proxy, get("/bytes/51"))
    assert out.startswith(b"HTTP/1.1 200 ")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_shutdown_lets_a_request_in_flight_finish(start_proxy: ProxyFactory, origin: Origin) -> None:
    proxy = await start_proxy()
    await origin.fault("/bytes/60", mode="delay", ms=300)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(get("/bytes/60"))
    await writer.drain()
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(proxy.server.close())
    data = await asyncio.wait_for(reader.read(65536), 5)
    await closing
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 ")
