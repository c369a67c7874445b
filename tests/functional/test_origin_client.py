"""The lean origin client's own internals (proxy/origin/lean.py) over real loopback sockets.

What a caller sees of it, it shares with aiohttp's client, and that contract is tested
against both in test_origin_contract.py (whose raw-socket origins these tests use too).
Here: the exact request bytes, base URLs, pool slots and their hand-over, the idle sweeper's
timer, the buffering high-water mark and uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
import uvloop
from multidict import CIMultiDict

from proxy.origin.lean import HIGH_WATER, LeanOrigin
from tests.functional.test_origin_contract import (
    OK,
    TIMEOUT,
    RawOrigin,
    StartOrigin,
    answer,
    expect_error,
    get,
    raw_origin,
    silent,
)

__all__ = ["raw_origin"]  # the fixture, for these tests

MakeClient = Callable[..., LeanOrigin]


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


# ------------------------------------------------------------------------------ requests


async def test_request_bytes_are_the_callers_fields_in_order_then_host(
    raw_origin: StartOrigin, client: MakeClient
) -> None:
    origin = await raw_origin(answer(OK))
    c = client(origin.url)
    headers: Mapping[str, str] = CIMultiDict([("Accept", "*/*"), ("X-Multi", "a"), ("x-multi", "b")])
    await get_with(c, headers)
    port = origin.url.rsplit(":", 1)[1].encode()
    assert origin.requests[0] == (
        b"GET / HTTP/1.1\r\nAccept: */*\r\nX-Multi: a\r\nx-multi: b\r\nHost: 127.0.0.1:" + port + b"\r\n\r\n"
    )
    # A plain mapping is searched for Host case-insensitively too.
    await get_with(c, {"HOST": "other.example"})
    assert origin.requests[1] == b"GET / HTTP/1.1\r\nHOST: other.example\r\n\r\n"


async def get_with(c: LeanOrigin, headers: Mapping[str, str]) -> bytes:
    resp = await c.send("GET", "/", headers)
    body, _ = await resp.read_up_to(1 << 20)
    return body


@pytest.mark.parametrize("url", ["https://127.0.0.1:1", "ftp://h", "http://user:pw@h:1", "http://", "h:80"])
def test_anything_but_a_plain_http_base_url_is_a_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        LeanOrigin(url, 4, 1.0, 1.0)


def test_default_port_is_left_out_of_host() -> None:
    # Port 80 is the default: Host carries the bare host, as aiohttp sends it.
    c80 = LeanOrigin("http://example.invalid:80", 1, 1.0, 1.0)
    assert c80._default.host_line == "Host: example.invalid\r\n"


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


async def test_idle_connections_are_swept_by_one_timer_per_pool_not_one_per_request(
    raw_origin: StartOrigin, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 12 row 17: the sweeper costs the hot path one attribute test per release.
    loop = asyncio.get_running_loop()
    sweeps: list[asyncio.TimerHandle] = []
    call_at = loop.call_at

    def counting(
        when: float, callback: Callable[..., object], *args: Any, **kwargs: Any
    ) -> asyncio.TimerHandle:
        handle = call_at(when, callback, *args, **kwargs)
        if getattr(callback, "__name__", "") == "_sweep":
            sweeps.append(handle)
        return handle

    monkeypatch.setattr(loop, "call_at", counting)
    origin = await raw_origin(answer(OK))
    c = LeanOrigin(origin.url, 4, 1.0, 1.0, idle_timeout=60.0)
    try:
        for _ in range(50):
            await get(c)
        await asyncio.gather(*(get(c) for _ in range(50)))
        assert origin.accepts == 4
        assert len(sweeps) == 1  # set when the first connection went idle, for all of them
        pool = next(iter(c._pools.values()))
        assert pool.sweeper is sweeps[0] and not sweeps[0].cancelled()
    finally:
        await c.close()
    assert sweeps[0].cancelled()  # closing the client leaves no timer behind
    assert pool.sweeper is None


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


# ------------------------------------------------------------------------------ uvloop


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
            assert origin.accepts == 2  # not after a HEAD whose framing says a body may follow
            timed_out = c.send("GET", "/", CIMultiDict(), origin=stalled.url, timeout=TIMEOUT)
            await expect_error(timed_out, 504, "origin timed out")
        finally:
            await c.close()
            await origin.close()
            await stalled.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
