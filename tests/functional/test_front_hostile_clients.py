"""Clients that stall, never read, pipeline into a body, or send odd bodies (found by fuzzing the front).

Each case held a connection, and often an origin connection, for good, or blamed the origin for
the client's bytes. nginx's answers are the model: client_body_timeout (408), send_timeout (the
connection is dropped), RFC 9112 §6.1 (501 for a transfer coding it does not know), trailer
fields never merged into the header section (RFC 9110 §6.5.2). Timeouts are real, and short.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from proxy.config import OriginConfig, ServerConfig
from tests.functional.conftest import Origin, Proxy, ProxyFactory

BRIEF = 0.4  # seconds: the timeouts under test
CHUNKED_POST = b"POST /echo HTTP/1.1\r\nHost: cdn.example\r\nTransfer-Encoding: chunked\r\n\r\n"


async def read_to_close(reader: asyncio.StreamReader, limit: float = 5.0) -> bytes:
    out = b""
    while True:
        chunk = await asyncio.wait_for(reader.read(65536), limit)
        if not chunk:
            return out
        out += chunk


async def opened(proxy: Proxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.server.port)


def small_pool(proxy_origin: str, connections: int) -> OriginConfig:
    return OriginConfig(url=proxy_origin, max_connections=connections, connect_timeout=1.0, read_timeout=5.0)


async def test_a_body_that_stops_arriving_gets_a_408_and_lets_the_origin_connection_go(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    # Two origin connections; two clients start bodies and stop. Before: both held for good, and
    # every request with a body then waited for a free origin connection (504).
    proxy = await start_proxy(server=ServerConfig(body_timeout=BRIEF), origin=small_pool(origin.url, 2))
    stalled = [await opened(proxy) for _ in range(2)]
    for _, writer in stalled:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: 1000\r\n\r\nabc")
        await writer.drain()
    answers = [await read_to_close(reader) for reader, _ in stalled]
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        assert b"request body timeout" in answer
    async with proxy.request("POST", "/echo", data=b"x" * 10, headers={"Host": "cdn.example"}) as resp:
        assert resp.status == 200  # the origin connections were let go
    for _, writer in stalled:
        writer.close()


async def test_a_get_body_that_stops_arriving_gets_a_408(start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(server=ServerConfig(body_timeout=BRIEF))
    reader, writer = await opened(proxy)
    writer.write(b"GET /max-age/60 HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: 100\r\n\r\nab")
    answer = await read_to_close(reader)
    writer.close()
    assert b"HTTP/1.1 408 " in answer, answer[:200]


async def test_a_client_that_never_reads_is_dropped_after_the_send_timeout(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    # A 10 MB pass-through response nobody reads held an origin connection for good: with a pool
    # of one, every later miss got a 504.
    proxy = await start_proxy(server=ServerConfig(send_timeout=BRIEF), origin=small_pool(origin.url, 1))
    reader, writer = await opened(proxy)
    writer.write(b"GET /bytes/10000000?max_age=0&chunked=1 HTTP/1.1\r\nHost: cdn.example\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(BRIEF * 4)  # the proxy fills the socket buffers, waits, and gives up
    resp, body = await proxy.get("/max-age/60?other=1", headers={"Host": "cdn.example"})
    assert resp.status == 200, body[:100]
    got = b""
    with contextlib.suppress(ConnectionResetError):
        got = await read_to_close(reader)
    assert len(got) < 10_000_000  # cut, not delivered late
    writer.close()


async def test_pipelined_requests_up_to_a_body_at_the_parse_limit_are_all_answered(
    proxy: Proxy, origin: Origin
) -> None:
    # 33 pipelined GETs then a POST whose body straddles the 16 KiB slice at which parsing
    # stopped (32 queued): the POST's task waited for body bytes nobody fed it.
    pad = b"X-Pad: " + b"p" * 420 + b"\r\n"
    get = b"GET /max-age/600 HTTP/1.1\r\nHost: cdn.example\r\n" + pad + b"\r\n"
    post = b"POST /echo?post=1 HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: 3000\r\n\r\n" + b"b" * 3000
    last = b"GET /echo?last=1 HTTP/1.1\r\nHost: cdn.example\r\nConnection: close\r\n\r\n"
    reader, writer = await opened(proxy)
    writer.write(get * 33 + post + last)
    answer = await read_to_close(reader)
    writer.close()
    assert answer.count(b"HTTP/1.1 200 OK") == 35
    [posted] = [r for r in await origin.requests("/echo") if r["method"] == "POST"]
    assert posted["body_length"] == 3000


async def test_rfc9110_s6_5_2_trailer_fields_are_not_merged_into_the_header_section(
    proxy: Proxy, origin: Origin
) -> None:
    body = b"3\r\nabc\r\n0\r\nX-Injected: from-trailer\r\nAuthorization: Bearer t\r\n\r\n"
    reader, writer = await opened(proxy)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: cdn.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + body
    )
    answer = await read_to_close(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    [posted] = await origin.requests("/echo")
    names = {name.lower() for name, _ in posted["headers"]}
    assert "x-injected" not in names and "authorization" not in names
    assert posted["body_length"] == 3


async def test_a_trailer_section_beyond_the_head_limit_is_a_431(proxy: Proxy) -> None:
    reader, writer = await opened(proxy)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: cdn.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
    )
    line = b"X-T: " + b"t" * 1000 + b"\r\n"
    try:
        for _ in range(100):  # 100 KB of trailer fields, over the 64 KiB head limit
            writer.write(line)
            await writer.drain()
    except ConnectionError:
        pass
    answer = await read_to_close(reader)
    writer.close()
    assert b"HTTP/1.1 431 " in answer, answer[:200]


async def test_a_large_body_on_a_request_the_node_answers_itself_does_not_stall_the_connection(
    proxy: Proxy,
) -> None:
    # POST to the health path with 400 KiB: answered without reading it; the rest is dropped,
    # and the connection closes after the answer instead of waiting forever.
    reader, writer = await opened(proxy)
    size = 400 * 1024
    writer.write(
        b"POST /.well-known/minicdn/health HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: "
        + str(size).encode()
        + b"\r\n\r\n"
    )
    writer.write(b"x" * size)
    writer.write(b"GET /max-age/60 HTTP/1.1\r\nHost: cdn.example\r\n\r\n")
    answer = await read_to_close(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 ") and b"Connection: close" in answer.split(b"\r\n\r\n")[0]


async def test_rfc9112_s6_1_a_transfer_coding_other_than_chunked_is_a_501(
    proxy: Proxy, origin: Origin
) -> None:
    reader, writer = await opened(proxy)
    writer.write(CHUNKED_POST.replace(b"chunked", b"gzip, chunked") + b"3\r\nabc\r\n0\r\n\r\n")
    answer = await read_to_close(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 501 "), answer[:100]
    assert await origin.requests("/echo") == []


async def test_a_malformed_chunked_body_is_the_clients_400_not_the_origins_502(
    proxy: Proxy, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await opened(proxy)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: cdn.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
    )
    answer = await read_to_close(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:120]  # was a 502 "origin connection failed"
    # Nor is it counted or logged as the origin's failure.
    assert proxy.server.node.engine.stats.origin_errors == 0
    assert not [r for r in caplog.records if "origin connection failed" in r.getMessage()]


async def test_an_absolute_form_https_target_on_plain_http_is_not_forwarded_as_https(
    proxy: Proxy, origin: Origin
) -> None:
    # RFC 9112 §3.2.2 takes the authority from an absolute-form target, not a TLS connection:
    # the origin must not be told X-Forwarded-Proto: https for a plain-HTTP request.
    reader, writer = await opened(proxy)
    writer.write(b"GET https://cdn.example/echo?abs=1 HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n")
    answer = await read_to_close(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    [seen] = await origin.requests("/echo")
    fields = {name.lower(): value for name, value in seen["headers"]}
    assert fields["x-forwarded-proto"] == "http"


async def test_rfc9110_s7_6_1_connection_options_are_tokens(proxy: Proxy) -> None:
    # "Connection: closed" is not "close": the connection stays open for the next request.
    reader, writer = await opened(proxy)
    ask = b"GET /max-age/60 HTTP/1.1\r\nHost: cdn.example\r\nConnection: closed\r\n\r\n"
    writer.write(ask + ask.replace(b"closed", b"foo, Close"))
    answer = await read_to_close(reader)
    writer.close()
    assert answer.count(b"HTTP/1.1 200 ") == 2  # both answered; the second's "Close" ended it


async def test_absolute_form_targets_with_an_ipv6_host_or_a_fragment(proxy: Proxy) -> None:
    cases = {
        b"GET http://[::1]:8080/max-age/60 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n": b"200",
        b"GET http://cdn.example/max-age/60#frag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n": b"400",
    }
    for request, status in cases.items():
        reader, writer = await opened(proxy)
        writer.write(request)
        answer = await read_to_close(reader)
        writer.close()
        assert answer.split(b" ", 2)[1] == status, (request, answer[:100])


async def test_a_slow_but_steady_reader_is_not_cut_by_the_send_timeout(start_proxy: ProxyFactory) -> None:
    # send_timeout bounds a time without progress. A socket turns writable again only once a third
    # of its send buffer (up to 4 MB here) is free, so a client reading 32 KiB every 50 ms shows no
    # progress to the transport for about two seconds: it was cut off after the timeout. The kernel's
    # send queue shows it reading.
    proxy = await start_proxy(server=ServerConfig(send_timeout=1.0))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # the client's side holds little
    sock.connect(("127.0.0.1", proxy.server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    size = 5_000_000  # above the test's object limit: streamed through, not stored
    writer.write(b"GET /bytes/%d HTTP/1.1\r\nHost: cdn.example\r\nConnection: close\r\n\r\n" % size)
    got = b""
    while True:
        chunk = await asyncio.wait_for(reader.read(32 * 1024), 5)
        if not chunk:
            break
        got += chunk
        await asyncio.sleep(0.05)
    writer.close()
    assert got.startswith(b"HTTP/1.1 200 ") and len(got) > size, len(got)


async def test_an_answer_the_origin_gives_before_the_body_is_sent_is_not_lost_to_a_reset(
    start_proxy: ProxyFactory,
) -> None:
    # The origin answers 413 at once and reads none of the body (the client sends 8 MB). The answer
    # went out and the connection was closed at once with the client's bytes unread: a reset, which
    # cut the client's upload (EPIPE) and can lose the answer. Now it lingers (nginx:
    # lingering_close): the rest of the body is read and dropped, then our FIN.
    handlers: set[asyncio.Task[None] | None] = set()

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large")
        await writer.drain()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        writer.close()

    origin = await asyncio.start_server(early, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{origin.sockets[0].getsockname()[1]}"
    try:
        proxy = await start_proxy(origin_url=url)
        reader, writer = await opened(proxy)
        size = 8_000_000
        writer.write(b"POST /upload HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 100_000):
            writer.write(b"u" * 100_000)
            await writer.drain()  # ConnectionResetError / BrokenPipeError before
        answer = await read_to_close(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 413 ") and answer.endswith(b"too large"), answer[:80]
        assert b"Connection: close" in answer.split(b"\r\n\r\n")[0]
    finally:
        origin.close()
        for task in handlers:
            if task is not None:
                task.cancel()
