"""Large objects by slices (proxy/slices.py, proxy/slicer.py), against an origin that honours ranges.

A 64 MiB object in 1 MiB slices (the defaults: slice_size 1MiB, slice_threshold 10MiB):
a range request fetches the slices that cover it and nothing else, and is a hit
afterwards; a whole GET streams the slices in order, fetching the missing ones;
a changed ETag drops every slice; an origin without ranges or a strong ETag is
passed through as before. The origin's bytes are random per version, so a byte
from the wrong offset or version never compares equal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from origin_stub.behaviours import pattern
from proxy.admin import create_admin_app
from proxy.config import CacheConfig, Rule, TierConfig, config_from_mapping
from proxy.purge import PurgeRequest
from proxy.slices import slice_key
from tests.functional.conftest import Origin, Proxy, ProxyFactory, cache_status
from tests.functional.slice_origin import SliceOrigin

MiB = 1024 * 1024
BIG = 64 * MiB
KEY = "|http://cdn.example/video.mp4"
HOST = {"Host": "cdn.example"}

StartSliced = Callable[..., Awaitable[tuple[Proxy, SliceOrigin]]]


@pytest.fixture
async def sliced(start_proxy: ProxyFactory, tmp_path: Path) -> AsyncIterator[StartSliced]:
    origins: list[SliceOrigin] = []

    async def start(
        length: int = BIG, cache: dict[str, Any] | None = None, rules: tuple[Rule, ...] = (), **options: Any
    ) -> tuple[Proxy, SliceOrigin]:
        origin = await SliceOrigin(length, **options).start()
        origins.append(origin)
        settings: dict[str, Any] = {
            "dir": str(tmp_path / "l2"),
            "max_object_size": MiB,
            "l1": TierConfig(budget=8 * MiB),
            "l2": TierConfig(budget=512 * MiB),
        }
        settings.update(cache or {})
        proxy = await start_proxy(origin_url=origin.url, cache=CacheConfig(**settings), rules=rules)
        return proxy, origin

    yield start
    for origin in origins:
        await origin.close()


async def get(
    proxy: Proxy, value: str | None = None, **headers: str
) -> tuple[int, aiohttp.ClientResponse, bytes]:
    fields = {**HOST, **headers}
    if value is not None:
        fields["Range"] = value
    resp, body = await proxy.get("/video.mp4", headers=fields)
    return resp.status, resp, body


def stored_slices(proxy: Proxy, length: int = BIG, size: int = MiB) -> list[int]:
    storage = proxy.server.node.storage
    return [i for i in range(-(-length // size)) if slice_key(KEY, i) in storage]


def is_hit(resp: aiohttp.ClientResponse) -> bool:
    return "hit" in cache_status(resp).split(";")


def slice_range(first: int, last: int) -> str:
    return f"bytes={first}-{last}"


async def test_ranges_at_the_start_middle_and_end_fetch_only_their_slices_then_hit(
    sliced: StartSliced,
) -> None:
    proxy, origin = await sliced()
    cases = [
        ("bytes=0-99", 0, 99, [slice_range(0, MiB - 1)]),
        # Across the boundary of slices 31 and 32: each asked as a slice.
        (
            "bytes=33554400-33554500",
            33554400,
            33554500,
            [slice_range(31 * MiB, 32 * MiB - 1), slice_range(32 * MiB, 33 * MiB - 1)],
        ),
        ("bytes=67108764-67108863", BIG - 100, BIG - 1, [slice_range(63 * MiB, BIG - 1)]),
    ]
    for value, first, last, asked in cases:
        before = len(origin.seen)
        status, resp, body = await get(proxy, value)
        assert (status, resp.headers["Content-Range"]) == (206, f"bytes {first}-{last}/{BIG}")
        assert body == origin.body[first : last + 1]
        assert origin.ranges_seen()[before:] == asked
    assert stored_slices(proxy) == [0, 31, 32, 63]
    asked_so_far = len(origin.seen)
    for value, first, last, _ in cases:
        status, resp, body = await get(proxy, value)
        assert status == 206 and body == origin.body[first : last + 1]
        assert is_hit(resp), cache_status(resp)
    assert len(origin.seen) == asked_so_far  # answered from the slices


async def test_a_first_range_across_a_slice_boundary_costs_one_request_for_both_slices(
    sliced: StartSliced,
) -> None:
    # Nothing is known of the object yet: the range is asked as whole slices; the 206 reveals a
    # sliced object and gives both slices.
    proxy, origin = await sliced()
    status, resp, body = await get(proxy, "bytes=33554400-33554500")
    assert status == 206 and body == origin.body[33554400:33554501]
    assert origin.ranges_seen() == [slice_range(31 * MiB, 33 * MiB - 1)]
    assert stored_slices(proxy) == [31, 32]
    status, resp, body = await get(proxy, "bytes=33554400-33554500")
    assert status == 206 and body == origin.body[33554400:33554501] and is_hit(resp)
    assert len(origin.seen) == 1


async def test_a_whole_get_streams_the_slices_in_order_fetching_the_missing_ones(sliced: StartSliced) -> None:
    proxy, origin = await sliced()
    await get(proxy, "bytes=40000000-40000009")  # slice 38 stored first
    origin.seen.clear()
    status, resp, body = await get(proxy)
    assert status == 200 and resp.headers["Content-Length"] == str(BIG)
    assert body == origin.body
    # The first response (a 200: the object was not known to be large) gives slices 0 and 1, then is
    # dropped; each other missing slice is asked once, in order; slice 38 is not asked again.
    expected = [None] + [slice_range(i * MiB, (i + 1) * MiB - 1) for i in range(2, 64) if i != 38]
    assert origin.ranges_seen() == expected
    assert stored_slices(proxy) == list(range(64))
    origin.seen.clear()
    status, resp, body = await get(proxy)
    assert status == 200 and body == origin.body and is_hit(resp)
    assert origin.seen == []


async def test_a_changed_etag_invalidates_every_slice_and_the_object_is_sliced_again(
    sliced: StartSliced, clock: Any
) -> None:
    proxy, origin = await sliced()
    _, _, old = await get(proxy)
    assert stored_slices(proxy) == list(range(64))
    origin.set_version(2)
    clock.advance(61)  # every slice stale
    origin.seen.clear()
    first = 40 * MiB + 5
    status, resp, body = await get(proxy, f"bytes={first}-{first + 9}")
    assert status == 206 and body == origin.body[first : first + 10] != old[first : first + 10]
    assert resp.headers["ETag"] == '"v2"'
    # Revalidated with the old ETag; the origin's answer had the new one: every other slice is gone.
    assert [(s.range, s.if_none_match) for s in origin.seen] == [
        (slice_range(40 * MiB, 41 * MiB - 1), '"v1"')
    ]
    assert stored_slices(proxy) == [40]
    origin.seen.clear()
    status, resp, body = await get(proxy)
    assert status == 200 and body == origin.body
    expected = [None] + [slice_range(i * MiB, (i + 1) * MiB - 1) for i in range(2, 64) if i != 40]
    assert origin.ranges_seen() == expected
    assert stored_slices(proxy) == list(range(64))


async def test_a_slice_of_another_etag_is_never_joined_to_a_stream(sliced: StartSliced) -> None:
    proxy, origin = await sliced()
    await get(proxy)
    # Slice 10 is lost (evicted); the origin's representation changes while the others are fresh.
    await proxy.server.node.storage.adelete(slice_key(KEY, 10))
    origin.set_version(2)
    origin.seen.clear()
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with proxy.session.get(proxy.url + "/video.mp4", headers=HOST) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(MiB):
                received += chunk
    # Slices 0..9 of v1 went out; slice 10 came back as v2: the stream was cut there, never mixed.
    assert len(received) <= 10 * MiB
    assert origin.ranges_seen() == [slice_range(10 * MiB, 11 * MiB - 1)]
    assert stored_slices(proxy) == [10]  # every v1 slice dropped; the v2 one kept
    status, resp, body = await get(proxy)
    assert status == 200 and body == origin.body


async def test_purge_by_url_prefix_or_tag_removes_every_slice(sliced: StartSliced) -> None:
    proxy, origin = await sliced(extra_headers="Surrogate-Key: video-1\r\n")
    purger = proxy.server.node.purger
    for request in (
        PurgeRequest(kind="url", values=("/video.mp4",)),
        PurgeRequest(kind="prefix", values=("http://cdn.example/vid",)),
        PurgeRequest(kind="tag", values=("video-1",)),
    ):
        await get(proxy, "bytes=0-9")
        await get(proxy, "bytes=40000000-40000009")
        await get(proxy, f"bytes={BIG - 10}-")
        assert stored_slices(proxy) == [0, 38, 63]
        result = await purger.purge(request)
        assert result.keys == 3, request
        assert stored_slices(proxy) == []
        origin.seen.clear()
        status, _, body = await get(proxy, "bytes=40000000-40000009")
        assert status == 206 and body == origin.body[40000000:40000010]
        assert origin.ranges_seen() == [slice_range(38 * MiB, 39 * MiB - 1)]
        await purger.purge(PurgeRequest(kind="all", values=()))


# Smaller objects for the rest: 4 MiB in 256 KiB slices, sliced above 1 MiB (max_object_size).
SMALL = 4 * MiB
PIECE = 256 * 1024
SMALL_SLICES = {"slice_size": PIECE, "slice_threshold": MiB}


def piece_range(index: int) -> str:
    return slice_range(index * PIECE, (index + 1) * PIECE - 1)


async def test_an_origin_without_ranges_is_passed_through_as_before(sliced: StartSliced) -> None:
    proxy, origin = await sliced(SMALL, SMALL_SLICES, ranges=False, accept_ranges=False)
    for _ in range(2):
        status, _, body = await get(proxy)
        assert status == 200 and body == origin.body
        status, _, body = await get(proxy, "bytes=1000-1999")
        assert status == 200 and body == origin.body  # its 200 (RFC 9110 §14.2), as before slices
    assert origin.ranges_seen() == [None, piece_range(0)] * 2
    assert stored_slices(proxy, SMALL, PIECE) == []


@pytest.mark.parametrize("etag", ["weak", None])
async def test_an_origin_without_a_strong_etag_is_passed_through_as_before(
    sliced: StartSliced, etag: str | None
) -> None:
    proxy, origin = await sliced(SMALL, SMALL_SLICES, etag=etag)
    for _ in range(2):
        # The whole slice is asked; the 206 is no slice (no strong validator): the client gets its range.
        status, resp, body = await get(proxy, "bytes=1000-1999")
        assert (status, resp.headers["Content-Range"]) == (206, f"bytes 1000-1999/{SMALL}")
        assert body == origin.body[1000:2000]
        status, resp, body = await get(proxy)
        assert status == 200 and body == origin.body
    assert origin.ranges_seen() == [piece_range(0), None] * 2
    assert stored_slices(proxy, SMALL, PIECE) == []


async def test_an_origin_that_stops_answering_ranges_ends_slicing_of_that_object(sliced: StartSliced) -> None:
    # It says Accept-Ranges: bytes, but answers every Range with its whole 200.
    proxy, origin = await sliced(SMALL, SMALL_SLICES, ranges=False)
    status, _, body = await get(proxy)
    assert status == 200 and body == origin.body  # complete: the rest came from a plain GET
    # The first 200 gave slices 0 and 1; slice 2's Range got a 200; the rest from one more GET.
    assert origin.ranges_seen() == [None, piece_range(2), None]
    assert stored_slices(proxy, SMALL, PIECE) == []  # dropped: the object is not sliced
    assert proxy.server.node.engine.slicer is not None
    assert proxy.server.node.engine.slicer.stats.unsliced == 1
    origin.seen.clear()
    status, _, body = await get(proxy)
    assert status == 200 and body == origin.body
    assert origin.ranges_seen() == [None]  # passed through, not sliced again for a while
    assert stored_slices(proxy, SMALL, PIECE) == []


async def test_head_conditionals_416_and_only_if_cached_are_answered_from_the_slices(
    sliced: StartSliced,
) -> None:
    proxy, origin = await sliced(SMALL, SMALL_SLICES)
    await get(proxy, "bytes=0-9")
    origin.seen.clear()
    async with proxy.request("HEAD", "/video.mp4", headers=HOST) as head:
        assert head.status == 200 and head.headers["Content-Length"] == str(SMALL)
        assert head.headers["ETag"] == '"v1"' and is_hit(head)
    status, resp, _ = await get(proxy, "bytes=0-9", **{"If-None-Match": '"v1"'})
    assert status == 304 and is_hit(resp)
    status, resp, _ = await get(proxy, f"bytes={SMALL}-")
    assert (status, resp.headers["Content-Range"]) == (416, f"bytes */{SMALL}")
    status, resp, _ = await get(proxy, "bytes=2000000-2000009", **{"Cache-Control": "only-if-cached"})
    assert status == 504
    assert origin.seen == []
    # If-Range of another representation: the whole 200, streamed from the slices.
    status, resp, body = await get(proxy, "bytes=0-9", **{"If-Range": '"v0"'})
    assert status == 200 and body == origin.body
    assert origin.ranges_seen() == [piece_range(i) for i in range(1, 16)]


async def test_stale_slices_are_revalidated_each_with_its_range(sliced: StartSliced, clock: Any) -> None:
    proxy, origin = await sliced(SMALL, SMALL_SLICES)
    await get(proxy, "bytes=0-9")
    await get(proxy, "bytes=2000000-2000009")  # slice 7
    clock.advance(61)
    origin.seen.clear()
    status, resp, body = await get(proxy, "bytes=2000000-2000009")
    assert status == 206 and body == origin.body[2000000:2000010]
    assert "fwd=stale" in cache_status(resp) and "fwd-status=304" in cache_status(resp)
    assert [(s.range, s.if_none_match) for s in origin.seen] == [(piece_range(7), '"v1"')]
    status, resp, _ = await get(proxy, "bytes=2000000-2000009")
    assert is_hit(resp) and len(origin.seen) == 1  # freshened by the 304
    assert stored_slices(proxy, SMALL, PIECE) == [0, 7]


async def test_rfc9111_s4_3_4_a_304_naming_another_etag_does_not_freshen_a_slice(
    sliced: StartSliced, clock: Any
) -> None:
    """A 304 for a stale slice that names another ETag than the slice's (a broken origin whose
    representation changed) selects nothing to freshen (§4.3.4). It freshened the slice anyway: its
    bytes of the old representation went out, and were stored, under the new ETag, to be combined
    with slices of the new one. Now the slice is fetched again, without a condition."""
    proxy, origin = await sliced(SMALL, SMALL_SLICES)
    await get(proxy, "bytes=2000000-2000009")  # slice 7
    clock.advance(61)
    origin.set_version(2)
    origin.not_modified_to_any = True
    origin.seen.clear()
    status, resp, body = await get(proxy, "bytes=2000000-2000009")
    assert (status, resp.headers["ETag"]) == (206, '"v2"')
    assert body == origin.body[2000000:2000010]
    assert (origin.seen[0].range, origin.seen[0].if_none_match) == (piece_range(7), '"v1"')
    assert (origin.seen[1].range, origin.seen[1].if_none_match) == (piece_range(7), None)
    status, resp, body = await get(proxy, "bytes=2000000-2000009")
    assert is_hit(resp) and body == origin.body[2000000:2000010]


async def test_a_304_for_a_slice_stale_at_once_freshens_l1_and_leaves_l2_alone(
    sliced: StartSliced, clock: Any
) -> None:
    """As for any 304 (tests/functional/test_write_path.py): L2 is rewritten only when it gains something."""
    proxy, origin = await sliced(SMALL, SMALL_SLICES, cache_control="max-age=0")
    storage = proxy.server.node.storage
    assert storage.l1 is not None and storage.l2 is not None
    await get(proxy, "bytes=2000000-2000009")  # slice 7
    await storage.drain()
    on_disk = storage.l2.get(slice_key(KEY, 7))
    assert on_disk is not None
    sets = storage.l2.stats.sets
    for _ in range(2):
        clock.advance(5)
        origin.seen.clear()
        status, resp, body = await get(proxy, "bytes=2000000-2000009")
        assert status == 206 and body == origin.body[2000000:2000010]
        assert "fwd=stale" in cache_status(resp) and "fwd-status=304" in cache_status(resp)
        assert [(s.range, s.if_none_match) for s in origin.seen] == [(piece_range(7), '"v1"')]
    await storage.drain()
    assert storage.l2.stats.sets == sets  # not one L2 write for the 304s
    assert storage.l2.get(slice_key(KEY, 7)) == on_disk
    in_memory = storage.l1.peek(slice_key(KEY, 7))
    assert in_memory is not None and in_memory.variants[0].response_time == clock.now  # L1 was freshened


async def test_concurrent_whole_gets_fetch_each_slice_once(sliced: StartSliced) -> None:
    proxy, origin = await sliced(SMALL, SMALL_SLICES)
    results = await asyncio.gather(*(get(proxy) for _ in range(3)))
    for status, _, body in results:
        assert status == 200 and body == origin.body
    assert sorted(origin.ranges_seen(), key=str) == sorted(
        [None] + [piece_range(i) for i in range(2, 16)], key=str
    )


async def test_a_rule_applies_to_every_slice_not_only_the_first(sliced: StartSliced, clock: Any) -> None:
    """A route's rule (proxy/rules.py) stores each slice as it stores the first: its ttl, its tags, the
    Set-Cookie it strips (without which the origin's response could not be stored at all)."""
    rule = {
        "name": "video",
        "match": {"path": "/video.mp4"},
        "ttl": 3600,
        "tags": ["videos"],
        "strip_headers": ["Set-Cookie"],
    }
    rules = config_from_mapping({"rules": [rule]}, "test", environ={}).rules
    proxy, origin = await sliced(
        SMALL, SMALL_SLICES, rules=rules, cache_control="max-age=60", extra_headers="Set-Cookie: s=1\r\n"
    )
    for value, first in (("bytes=0-9", 0), ("bytes=2000000-2000009", 2000000)):  # slices 0 and 7
        status, resp, body = await get(proxy, value)
        assert status == 206 and body == origin.body[first : first + 10]
        assert "stored" in cache_status(resp) and 'rule="video"' in cache_status(resp), cache_status(resp)
        assert "Set-Cookie" not in resp.headers
    assert stored_slices(proxy, SMALL, PIECE) == [0, 7]
    clock.advance(120)  # past the origin's max-age, within the rule's ttl
    origin.seen.clear()
    for value, first in (("bytes=0-9", 0), ("bytes=2000000-2000009", 2000000)):
        status, resp, body = await get(proxy, value)
        assert status == 206 and body == origin.body[first : first + 10]
        assert is_hit(resp), cache_status(resp)
    assert origin.seen == []
    result = await proxy.server.node.purger.purge(PurgeRequest(kind="tag", values=("videos",)))
    assert result.keys == 2
    assert stored_slices(proxy, SMALL, PIECE) == []


async def test_a_stream_of_slices_fetched_as_it_goes_is_counted_a_miss(sliced: StartSliced) -> None:
    """Its head goes out before the missing slices are fetched, so its Cache-Status has no fwd-status:
    /metrics counts it a miss from the origin (proxy/observe.py), not an error."""
    proxy, origin = await sliced(SMALL, SMALL_SLICES)
    await get(proxy, "bytes=0-9")  # slice 0 stored
    recorder = proxy.server.node.recorder
    before = recorder.snapshot()["requests"]
    status, resp, body = await get(proxy)
    assert status == 200 and body == origin.body
    assert cache_status(resp) == 'edge-test;fwd=partial;detail="slices"'
    for _ in range(100):  # the front counts the answer once its last byte is written
        after = recorder.snapshot()["requests"]
        if after != before:
            break
        await asyncio.sleep(0.01)
    assert after["miss"]["origin"] == before["miss"]["origin"] + 1
    assert after["error"] == before["error"]


async def test_the_slicers_counters_are_in_stats_and_metrics(
    sliced: StartSliced, clock: Any, aiohttp_server: Any
) -> None:
    """What the slicer did (proxy/slicer.py SliceStats) is in the admin API's /stats (section `slices`,
    summed like the other counters) and in /metrics (minicdn_slice_*)."""
    proxy, origin = await sliced(SMALL, SMALL_SLICES)
    admin = await aiohttp_server(create_admin_app(proxy.server.node))  # no token: loopback only
    admin_url = str(admin.make_url("")).rstrip("/")
    slice_7 = "bytes=2000000-2000009"
    await get(proxy, "bytes=0-9")  # slice 0 fetched for this request, then answered from it
    await get(proxy, slice_7)  # slice 7 fetched by the slicer
    _, resp, _ = await get(proxy, slice_7)
    assert is_hit(resp)  # slice 7 from the cache
    clock.advance(61)
    _, resp, _ = await get(proxy, slice_7)
    assert "fwd-status=304" in cache_status(resp)  # slice 7 revalidated
    origin.set_version(2)
    clock.advance(61)
    status, resp, body = await get(proxy, slice_7)  # slice 7 of v2: every v1 slice dropped
    assert status == 206 and body == origin.body[2000000:2000010] and resp.headers["ETag"] == '"v2"'
    expected = {
        "answers": 5,
        "hits": 1,
        "fetched": 2,
        "revalidated": 1,
        "invalidations": 1,
        "unsliced": 0,
        "aborted": 0,
    }
    async with proxy.session.get(admin_url + "/stats") as r:
        assert r.status == 200
        data = await r.json()
    assert data["slices"] == expected
    async with proxy.session.get(admin_url + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("minicdn_slice_answers_total", ())] == 5
    for result, count in (("hit", 1), ("fetched", 2), ("revalidated", 1)):
        assert samples[("minicdn_slices_total", (("result", result),))] == count
    assert samples[("minicdn_slice_invalidations_total", ())] == 1
    assert samples[("minicdn_slice_unsliced_total", ())] == 0
    assert samples[("minicdn_slice_streams_aborted_total", ())] == 0
    # The dropped slices are a purge of kind "slices", not an unsafe request's invalidation.
    assert samples[("minicdn_purges_total", (("kind", "slices"),))] == 1
    assert samples[("minicdn_purges_total", (("kind", "invalidation"),))] == 0


async def test_the_stub_origins_large_objects_are_sliced(
    start_proxy: ProxyFactory, origin: Origin, tmp_path: Path
) -> None:
    """The stub origin (`python -m origin_stub`, the README's default origin) answers single ranges on
    /bytes/{n}, so a large object through the demo is stored in slices as one from nginx or S3 is:
    the first GET's 200 gives the first two slices (Fetcher._store_first_slice), the others are
    asked by Range, and then whole GETs and ranges are answered from the slices."""
    size = 64 * 1024
    n = 5 * size + 7  # six slices, the last one short
    cache = CacheConfig(
        dir=str(tmp_path / "l2"),
        max_object_size=size,
        slice_size=size,
        slice_threshold=2 * size,
        l1=TierConfig(budget=8 * MiB),
        l2=TierConfig(budget=64 * MiB),
    )
    proxy = await start_proxy(cache=cache)
    resp, body = await proxy.get(f"/bytes/{n}")
    assert resp.status == 200 and body == pattern(n)
    assert resp.headers["Content-Length"] == str(n)
    asked = [dict(r["headers"]).get("Range") for r in await origin.requests(f"/bytes/{n}")]
    assert asked == [None, *(slice_range(i * size, min((i + 1) * size, n) - 1) for i in range(2, 6))]
    stats = proxy.server.node.engine.slicer.stats
    assert (stats.fetched, stats.unsliced, stats.aborted) == (4, 0, 0)
    resp, body = await proxy.get(f"/bytes/{n}")
    assert body == pattern(n) and is_hit(resp), cache_status(resp)
    resp, body = await proxy.get(f"/bytes/{n}", headers={"Range": f"bytes={n - 10}-"})
    assert resp.status == 206 and body == pattern(n)[-10:] and is_hit(resp)
    assert await origin.hits(f"/bytes/{n}") == 5  # nothing more asked of the origin
