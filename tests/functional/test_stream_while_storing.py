"""Large bodies stream to the client while they are stored (issue 12 row 6).

A body above cache.stream_above (or of unknown length that grows past it) is passed to the client
as it arrives and spooled to disk, then stored: the client's first bytes do not wait for the last
ones, memory per fetch stays near stream_above, the requests coalesced on the fetch are answered
from the stored copy, and the cache keeps the body even when the client that fetched it goes away.
The real proxy, real sockets; a test origin where the row needs an origin that pauses mid-body.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from origin_stub.behaviours import pattern
from proxy.config import CacheConfig, TierConfig, config_from_mapping
from proxy.purge import PurgeRequest
from tests.functional.conftest import FakeClock, Origin, ProxyFactory, cache_status
from tests.functional.test_compression import TEXT, decoded, fetch, respond_path
from tests.functional.test_write_path import HOST, key, storage_of, tiny_disk  # noqa: F401

KIB = 1024
MIB = 1024 * KIB


def streaming_cache(directory: Path, **changes: Any) -> CacheConfig:
    cache = CacheConfig(
        dir=str(directory),
        max_object_size=8 * MIB,
        stream_above=256 * KIB,
        l1=TierConfig(budget=32 * MIB),
        l2=TierConfig(budget=64 * MIB),
    )
    return replace(cache, **changes)


class PausingOrigin:
    """An origin whose chunked body stops after `first` bytes until `go` is set (or breaks off);
    its head waits for `head` (set from the start)."""

    def __init__(self, first: int, rest: int, clock: FakeClock) -> None:
        self.first, self.rest = first, rest
        self.clock = clock
        self.go = asyncio.Event()
        self.head = asyncio.Event()
        self.head.set()
        self.break_off = False
        self.requests = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await self.head.wait()
        # Date from the proxy's fake clock, or the response would look years old on arrival.
        date = formatdate(self.clock(), usegmt=True)
        resp = web.StreamResponse(headers={"Cache-Control": "max-age=600", "ETag": '"big"', "Date": date})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        body = pattern(self.first + self.rest)
        for i in range(0, self.first, 64 * KIB):
            await resp.write(body[i : min(i + 64 * KIB, self.first)])
        await self.go.wait()
        if self.break_off:
            assert request.transport is not None
            request.transport.close()  # the body breaks off: no last chunk
            return resp
        for i in range(self.first, len(body), 64 * KIB):
            await resp.write(body[i : i + 64 * KIB])
        await resp.write_eof()
        return resp


@pytest.fixture
async def pausing(aiohttp_server: Any, clock: FakeClock) -> tuple[PausingOrigin, str]:
    origin = PausingOrigin(first=2 * MIB, rest=1 * MIB, clock=clock)
    app = web.Application()
    app.router.add_get("/big", origin.handle)
    server = await aiohttp_server(app)
    return origin, f"http://127.0.0.1:{server.port}"


async def test_the_client_gets_the_first_bytes_before_the_origin_sends_the_last(
    start_proxy: ProxyFactory, pausing: tuple[PausingOrigin, str], tmp_path: Path
) -> None:
    # Row 6: before, a body of unknown length was read (up to max_object_size) before the
    # client got a byte; now the 2 MiB the origin has sent reach the client while it pauses.
    origin, url = pausing
    proxy = await start_proxy(origin_url=url, cache=streaming_cache(tmp_path / "l2"))
    async with proxy.session.get(proxy.url + "/big", headers=HOST) as resp:
        assert resp.status == 200
        assert 'detail="streamed"' in cache_status(resp)
        received = b""
        while len(received) < 2 * MIB:
            received += await asyncio.wait_for(resp.content.read(64 * KIB), 5)
        assert not origin.go.is_set()  # all of it while the origin still holds the rest back
        origin.go.set()
        received += await resp.read()
    assert received == pattern(3 * MIB)
    # Stored once complete: the next request is a hit with the same bytes.
    await storage_of(proxy).drain()
    resp2, body = await proxy.get("/big", headers=HOST)
    assert cache_status(resp2).startswith("edge-test;hit"), cache_status(resp2)
    assert body == received and origin.requests == 1


async def test_coalesced_requests_are_answered_from_the_stored_copy(
    start_proxy: ProxyFactory, pausing: tuple[PausingOrigin, str], tmp_path: Path
) -> None:
    origin, url = pausing
    proxy = await start_proxy(origin_url=url, cache=streaming_cache(tmp_path / "l2"))
    leader = asyncio.create_task(proxy.get("/big", headers=HOST))
    while origin.requests == 0:
        await asyncio.sleep(0.01)
    others = [asyncio.create_task(proxy.get("/big", headers=HOST)) for _ in range(5)]
    await asyncio.sleep(0.2)
    origin.go.set()
    answers = await asyncio.gather(leader, *others)
    assert origin.requests == 1, [cache_status(r) for r, _ in answers]  # one fetch for all six
    for resp, body in answers:
        assert resp.status == 200 and body == pattern(3 * MIB)
    for resp, _ in answers[1:]:
        status = cache_status(resp)
        assert "collapsed" in status and "stored" in status, status


@pytest.mark.parametrize("joined", ["while its body streams", "before its head"])
async def test_a_request_after_a_purge_does_not_take_the_body_a_fetch_begun_before_it_streams_in(
    start_proxy: ProxyFactory, pausing: tuple[PausingOrigin, str], tmp_path: Path, joined: str
) -> None:
    """Requirements §6 and §9 (RFC 9111 §4.4): a request that came after a purge must not be answered
    with the copy a fetch begun before it brings. A request coalesced on a fetch whose body streamed
    into the cache (joining it while the body streamed, or while its head was awaited) was answered
    from what it stored: the copy the purge was for."""
    origin, url = pausing
    proxy = await start_proxy(origin_url=url, cache=streaming_cache(tmp_path / "l2"))
    engine = proxy.server.node.engine
    if joined == "before its head":
        origin.head.clear()
    leader = asyncio.create_task(proxy.get("/big", headers=HOST))
    if joined == "before its head":
        while origin.requests == 0:
            await asyncio.sleep(0.01)
    else:
        while key("/big") not in engine.streams:  # its head has come; the origin holds the rest back
            await asyncio.sleep(0.01)
    await proxy.server.node.purger.purge(PurgeRequest("url", ("/big",)))
    after = asyncio.create_task(proxy.get("/big", headers=HOST))
    await asyncio.sleep(0.2)  # it has joined the fetch
    origin.head.set()
    origin.go.set()
    (_, first), (resp, body) = await asyncio.gather(leader, after)
    assert first == body == pattern(3 * MIB)
    assert origin.requests == 2, cache_status(resp)  # fetched again, not the purged copy
    assert "collapsed" not in cache_status(resp), cache_status(resp)
    assert engine.stats.purged_flights == 1


async def test_the_cache_keeps_the_body_when_the_client_goes_away(
    start_proxy: ProxyFactory, pausing: tuple[PausingOrigin, str], tmp_path: Path
) -> None:
    # Like nginx's proxy_cache: what the origin sends is read to its end for the cache.
    origin, url = pausing
    proxy = await start_proxy(origin_url=url, cache=streaming_cache(tmp_path / "l2"))
    async with aiohttp.ClientSession() as own, own.get(proxy.url + "/big", headers=HOST) as resp:
        await resp.content.read(64 * KIB)
        resp.close()  # gone mid-body
    origin.go.set()
    storage = storage_of(proxy)
    for _ in range(200):
        if key("/big") in storage:
            break
        await asyncio.sleep(0.02)
    resp2, body = await proxy.get("/big", headers=HOST)
    assert cache_status(resp2).startswith("edge-test;hit"), cache_status(resp2)
    assert len(body) == 3 * MIB, (len(body), origin.requests)
    assert body == pattern(3 * MIB) and origin.requests == 1


async def test_a_body_that_breaks_off_is_cut_for_the_client_and_never_stored(
    start_proxy: ProxyFactory, pausing: tuple[PausingOrigin, str], tmp_path: Path
) -> None:
    origin, url = pausing
    origin.break_off = True
    proxy = await start_proxy(origin_url=url, cache=streaming_cache(tmp_path / "l2"))
    async with proxy.session.get(proxy.url + "/big", headers=HOST) as resp:
        await resp.content.read(64 * KIB)
        origin.go.set()
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # a broken response, not a short one that looks complete
    await storage_of(proxy).drain()
    assert key("/big") not in storage_of(proxy)
    origin.go.clear()
    origin.break_off = False
    fetch = asyncio.create_task(proxy.get("/big", headers=HOST))
    await asyncio.sleep(0.1)
    origin.go.set()
    resp2, body = await fetch
    assert "hit" not in cache_status(resp2).split(";") and body == pattern(3 * MIB)
    assert origin.requests == 2


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_bodies_above_max_object_size_stream_through_unstored(
    start_proxy: ProxyFactory, origin: Origin, tmp_path: Path, chunked: bool
) -> None:
    cache = streaming_cache(tmp_path / "l2", max_object_size=1 * MIB)
    proxy = await start_proxy(cache=cache)
    n = 3 * MIB
    path = f"/bytes/{n}" + ("?chunked=1" if chunked else "")
    for attempt in (1, 2):
        resp, body = await proxy.get(path, headers=HOST)
        assert resp.status == 200 and body == pattern(n)
        assert "hit" not in cache_status(resp).split(";")
        assert await origin.hits(f"/bytes/{n}") == attempt


async def test_a_spool_that_cannot_be_written_only_stops_the_storing(
    start_proxy: ProxyFactory,
    origin: Origin,
    tiny_disk: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The spool lives in the cache dir: on a full disk the client still gets every byte.
    (tiny_disk / "ballast").write_bytes(bytes(2 * MIB + 512 * KIB))
    proxy = await start_proxy(cache=streaming_cache(tiny_disk / "cache"))
    caplog.set_level(logging.WARNING)
    n = 2 * MIB
    resp, body = await proxy.get(f"/bytes/{n}?chunked=1", headers=HOST)
    assert resp.status == 200 and body == pattern(n)
    assert any("cannot spool" in r.getMessage() for r in caplog.records)
    assert key(f"/bytes/{n}?chunked=1") not in storage_of(proxy)


# -- with the branches merged beside it: compression and per-route rules ----------------------------


async def test_a_streamed_compressible_body_is_stored_with_its_encodings(
    start_proxy: ProxyFactory, origin: Origin, tmp_path: Path
) -> None:
    """The store at the end of the stream makes the encodings (proxy/compression.py) as any store
    does, and the requests coalesced on the fetch get theirs from what it stored: one origin fetch."""
    proxy = await start_proxy(cache=streaming_cache(tmp_path / "l2"))
    path = respond_path(TEXT, repeat=100)  # text/html, over stream_above
    await origin.fault("/respond", mode="delay", ms=300)
    answers = await asyncio.gather(*(fetch(proxy, path, accept) for accept in ("gzip", "br", None, "gzip")))
    await origin.clear_faults()
    assert 'detail="streamed"' in cache_status(answers[0][0])  # the leader: the origin's bytes
    # ... which are the identity copy of a response that varies on Accept-Encoding once stored:
    # a cache after this one must key it so (RFC 9110 §12.5.5), like every later answer says.
    assert all("Accept-Encoding" in resp.headers.get("Vary", "") for resp, _ in answers)
    assert [resp.headers.get("Content-Encoding") for resp, _ in answers[1:]] == ["br", None, "gzip"]
    assert all(decoded(resp, body) == (TEXT * 100).encode() for resp, body in answers)
    assert await origin.hits("/respond") == 1
    await storage_of(proxy).drain()
    for accept in ("br", "gzip", "identity"):
        resp, body = await fetch(proxy, path, accept)
        assert cache_status(resp).startswith("edge-test;hit"), cache_status(resp)
        assert resp.headers.get("Content-Encoding") == (None if accept == "identity" else accept)
        assert decoded(resp, body) == (TEXT * 100).encode()
    assert await origin.hits("/respond") == 1


async def test_a_streamed_body_loses_the_fields_a_rule_strips_for_the_leader_too(
    start_proxy: ProxyFactory, origin: Origin, tmp_path: Path
) -> None:
    strip = config_from_mapping(
        {"rules": [{"name": "strip", "match": {"path": "/respond"}, "strip_headers": ["X-Internal"]}]},
        "test",
        environ={},
    ).rules
    proxy = await start_proxy(cache=streaming_cache(tmp_path / "l2"), rules=strip)
    path = respond_path(TEXT, "X-Internal:secret", repeat=100)
    resp, body = await fetch(proxy, path, None)
    assert 'detail="streamed"' in cache_status(resp) and 'rule="strip"' in cache_status(resp)
    assert "X-Internal" not in resp.headers and body == (TEXT * 100).encode()
    # Then from what it stored: a hit, or (while the end of the stream is being stored) collapsed on it.
    resp, body = await fetch(proxy, path, None)
    member = cache_status(resp).split(";")
    assert "hit" in member or "collapsed" in member, member
    assert "X-Internal" not in resp.headers and body == (TEXT * 100).encode()
    assert await origin.hits("/respond") == 1
