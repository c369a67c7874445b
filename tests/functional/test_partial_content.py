"""Partial content (RFC 9111 §3.3, §3.4): stored 206 responses, answered ranges, combined parts.

A raw origin serves one 36-byte representation and honours single byte ranges exactly
(RFC 9110 §14): each test chooses its validator and freshness, and can change the
representation between requests. The proxy forwards a client's single byte range when
nothing complete is stored, stores the 206 with its range, answers later ranges the
stored parts hold, and combines parts with the same strong validator until the
representation is complete, after which it serves whole 200s.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from proxy.config import CacheConfig, FetchConfig, TierConfig
from tests.functional.conftest import FakeClock, Proxy, ProxyFactory, cache_status, make_config

BODY = b"0123456789abcdefghijklmnopqrstuvwxyz"  # 36 bytes


class RangeOrigin:
    """An origin for one representation that answers single byte ranges with 206 (or 416)."""

    def __init__(self, etag: str | None = '"v1"', cache_control: str = "max-age=60") -> None:
        self.etag = etag
        self.cache_control = cache_control
        self.body = BODY
        self.ranges: list[str | None] = []  # the Range of each request (None: none)
        self.methods: list[str] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> RangeOrigin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                writer.write(self._answer(head))
                await writer.drain()
        finally:
            writer.close()

    def _answer(self, head: str) -> bytes:
        method = head.split(" ", 1)[0]
        fields = {
            line.split(":", 1)[0].strip().lower(): line.split(":", 1)[1].strip()
            for line in head.split("\r\n")[1:]
            if ":" in line
        }
        wanted = fields.get("range")
        self.methods.append(method)
        self.ranges.append(wanted)
        common = f"Cache-Control: {self.cache_control}\r\n"
        if self.etag is not None:
            common += f"ETag: {self.etag}\r\n"
        length = len(self.body)
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted or "")
        if m is None:
            status, extra, body = "200 OK", "", self.body
        else:
            first_text, last_text = m.groups()
            if not first_text:
                first, last = max(0, length - int(last_text)), length - 1
            else:
                first = int(first_text)
                last = min(int(last_text), length - 1) if last_text else length - 1
            if first >= length:
                status, extra, body = "416 Range Not Satisfiable", f"Content-Range: bytes */{length}\r\n", b""
            else:
                status, body = "206 Partial Content", self.body[first : last + 1]
                extra = f"Content-Range: bytes {first}-{last}/{length}\r\n"
        head_out = f"HTTP/1.1 {status}\r\n{common}{extra}Content-Length: {len(body)}\r\n\r\n".encode()
        return head_out + (body if method != "HEAD" else b"")


StartRange = Callable[..., Awaitable[tuple[Proxy, RangeOrigin]]]


@pytest.fixture
async def range_proxy(start_proxy: ProxyFactory, tmp_path: Path) -> AsyncIterator[StartRange]:
    origins: list[RangeOrigin] = []

    async def start(**origin_options: object) -> tuple[Proxy, RangeOrigin]:
        cache_overrides = origin_options.pop("cache", None)
        complete_ranges = bool(origin_options.pop("complete_ranges", False))
        origin = await RangeOrigin(**origin_options).start()  # type: ignore[arg-type]
        origins.append(origin)
        # These tests follow the stored parts as clients' ranges make them: the whole object is
        # not fetched behind a range (fetch.complete_ranges; its own test is below), and ranges are
        # asked as the client asked them, not as whole slices (cache.slice_size 0; slices have
        # their own tests in test_slices.py).
        fetch = FetchConfig(complete_ranges=complete_ranges)
        cache = (
            cache_overrides if cache_overrides is not None else make_config(origin.url, tmp_path / "l2").cache
        )
        assert isinstance(cache, CacheConfig)
        proxy = await start_proxy(origin_url=origin.url, cache=replace(cache, slice_size=0), fetch=fetch)
        return proxy, origin

    yield start
    for origin in origins:
        await origin.close()


async def ranged(proxy: Proxy, value: str, **headers: str) -> tuple[int, str | None, bytes, str]:
    resp, body = await proxy.get("/video", headers={"Range": value, **headers})
    return resp.status, resp.headers.get("Content-Range"), body, cache_status(resp)


def is_hit(member: str) -> bool:
    return "hit" in member.split(";")


async def test_rfc9111_s3_3_a_206_is_stored_and_answers_the_ranges_it_holds(range_proxy: StartRange) -> None:
    proxy, origin = await range_proxy()
    status, content_range, body, member = await ranged(proxy, "bytes=0-9")
    assert (status, content_range, body) == (206, "bytes 0-9/36", BODY[:10])
    assert "fwd=uri-miss" in member and "fwd-status=206" in member and "stored" in member
    assert origin.ranges == ["bytes=0-9"]  # the client's range was asked, not the whole object
    for value, first, last in [("bytes=2-5", 2, 5), ("bytes=0-9", 0, 9), ("bytes=9-9", 9, 9)]:
        status, content_range, body, member = await ranged(proxy, value)
        assert (status, content_range, body) == (206, f"bytes {first}-{last}/36", BODY[first : last + 1])
        assert is_hit(member), member
    assert len(origin.ranges) == 1


@pytest.mark.parametrize(
    ("value", "forwarded"),
    [
        pytest.param("bytes=5-12", "bytes=5-12", id="9111-3.3-reaches-past-the-part"),
        pytest.param("bytes=20-", "bytes=20-", id="9111-3.3-another-part"),
        pytest.param("bytes=-3", "bytes=-3", id="9111-3.3-suffix"),
        pytest.param("bytes=0-1,4-5", None, id="9110-14.2-several-ranges-fetch-the-whole"),
    ],
)
async def test_rfc9111_s3_3_a_range_the_parts_lack_is_fetched(
    range_proxy: StartRange, value: str, forwarded: str | None
) -> None:
    proxy, origin = await range_proxy()
    await ranged(proxy, "bytes=0-9")
    resp, body = await proxy.get("/video", headers={"Range": value})
    assert "fwd=partial" in cache_status(resp)
    assert origin.ranges == ["bytes=0-9", forwarded]
    if forwarded is None:
        assert (resp.status, body) == (200, BODY)  # the whole representation answers it


async def test_rfc9111_s3_3_an_incomplete_response_never_answers_a_whole_get_or_head(
    range_proxy: StartRange,
) -> None:
    proxy, origin = await range_proxy()
    await ranged(proxy, "bytes=0-9")
    async with proxy.request("HEAD", "/video") as head:
        assert head.status == 200 and head.headers["Content-Length"] == "36"
        assert "fwd=partial" in cache_status(head)
    resp, body = await proxy.get("/video")
    assert (resp.status, body) == (200, BODY)
    assert "fwd=partial" in cache_status(resp) and "stored" in cache_status(resp)
    assert origin.ranges == ["bytes=0-9", None, None]
    assert origin.methods == ["GET", "HEAD", "GET"]
    hit, body = await proxy.get("/video")  # the whole 200 replaced the part
    assert body == BODY and is_hit(cache_status(hit))


@pytest.mark.parametrize("tiers", ["l1-and-l2", "l2-only"])
async def test_rfc9111_s3_4_the_rest_completes_the_object_which_then_serves_whole_200s(
    range_proxy: StartRange, tmp_path: Path, tiers: str
) -> None:
    # l2-only: every part goes through the on-disk codec and back.
    l1 = TierConfig(enabled=tiers != "l2-only")
    proxy, origin = await range_proxy(cache=CacheConfig(dir=str(tmp_path / "l2"), l1=l1))
    await ranged(proxy, "bytes=0-4")
    status, content_range, body, member = await ranged(proxy, "bytes=5-")
    assert (status, content_range, body) == (206, "bytes 5-35/36", BODY[5:])
    assert "fwd=partial" in member and "stored" in member
    assert origin.ranges == ["bytes=0-4", "bytes=5-"]
    resp, body = await proxy.get("/video")
    assert (resp.status, body) == (200, BODY)
    assert is_hit(cache_status(resp)) and "Content-Range" not in resp.headers
    assert resp.headers["Content-Length"] == "36"
    status, content_range, body, member = await ranged(proxy, "bytes=3-7")  # across the old seam
    assert (status, content_range, body) == (206, "bytes 3-7/36", BODY[3:8]) and is_hit(member)
    assert len(origin.ranges) == 2


async def test_rfc9111_s3_4_parts_combine_across_gaps_and_overlaps(range_proxy: StartRange) -> None:
    proxy, origin = await range_proxy()
    await ranged(proxy, "bytes=0-4")
    await ranged(proxy, "bytes=10-14")
    status, _, _, member = await ranged(proxy, "bytes=0-14")  # the gap 5-9: not held
    assert status == 206 and "fwd=partial" in member
    for value, first, last in [("bytes=0-14", 0, 14), ("bytes=4-11", 4, 11), ("bytes=12-14", 12, 14)]:
        status, content_range, body, member = await ranged(proxy, value)
        assert (status, content_range, body) == (206, f"bytes {first}-{last}/36", BODY[first : last + 1])
        assert is_hit(member), (value, member)
    await ranged(proxy, "bytes=12-35")  # overlapping the end of the stored part, to the end
    resp, body = await proxy.get("/video")
    assert body == BODY and is_hit(cache_status(resp))
    assert origin.ranges == ["bytes=0-4", "bytes=10-14", "bytes=0-14", "bytes=12-35"]


@pytest.mark.parametrize(
    ("etag", "next_etag", "last_two_combine"),
    [
        pytest.param('W/"v1"', 'W/"v1"', False, id="9111-3.4-weak-validator"),
        pytest.param('"v1"', '"v2"', True, id="9111-3.4-changed-validator"),
        pytest.param(None, None, False, id="9111-3.4-no-validator"),
    ],
)
async def test_rfc9111_s3_4_only_the_same_strong_validator_combines(
    range_proxy: StartRange, etag: str | None, next_etag: str | None, last_two_combine: bool
) -> None:
    proxy, origin = await range_proxy(etag=etag)
    await ranged(proxy, "bytes=0-4")
    origin.etag = next_etag
    status, _, body, _ = await ranged(proxy, "bytes=5-")
    assert (status, body) == (206, BODY[5:])
    # Not combined: the newer part replaced the older one, so bytes 0-4 are asked again ...
    status, _, body, member = await ranged(proxy, "bytes=0-4")
    assert (status, body) == (206, BODY[:5]) and "fwd=partial" in member
    # ... and only two parts with the same strong validator (both "v2") make the whole.
    resp, body = await proxy.get("/video")
    assert body == BODY
    assert is_hit(cache_status(resp)) is last_two_combine
    assert len(origin.ranges) == (3 if last_two_combine else 4)


async def test_rfc9110_s13_1_5_if_range_on_a_part(range_proxy: StartRange) -> None:
    proxy, origin = await range_proxy()
    await ranged(proxy, "bytes=0-9")
    status, _, body, member = await ranged(proxy, "bytes=0-3", **{"If-Range": '"v1"'})
    assert (status, body) == (206, BODY[:4]) and is_hit(member)
    # If-Range that does not match: the client wants the whole representation.
    resp, body = await proxy.get("/video", headers={"Range": "bytes=0-3", "If-Range": '"v0"'})
    assert (resp.status, body) == (200, BODY)
    assert origin.ranges == ["bytes=0-9", None]


async def test_rfc9111_s3_3_a_stale_part_is_revalidated_with_its_range(
    range_proxy: StartRange, clock: FakeClock
) -> None:
    proxy, origin = await range_proxy(cache_control="max-age=10")
    await ranged(proxy, "bytes=0-9")
    clock.advance(30)
    status, content_range, body, member = await ranged(proxy, "bytes=2-3")
    assert (status, content_range, body) == (206, "bytes 2-3/36", BODY[2:4])
    assert "fwd=stale" in member
    assert origin.ranges == ["bytes=0-9", "bytes=2-3"]


async def test_requirements_s12_parts_of_objects_above_the_size_limit_are_not_stored(
    range_proxy: StartRange, tmp_path: Path
) -> None:
    # 32 bytes per object: a part of a 36-byte representation could never be completed.
    proxy, origin = await range_proxy(cache=CacheConfig(dir=str(tmp_path / "l2"), max_object_size=32))
    status, content_range, body, member = await ranged(proxy, "bytes=0-9")
    assert (status, content_range, body) == (206, "bytes 0-9/36", BODY[:10])  # passed through
    assert "stored" not in member
    status, _, _, member = await ranged(proxy, "bytes=0-9")
    assert not is_hit(member)
    assert len(origin.ranges) == 2


async def test_rfc9110_s15_5_17_a_416_to_a_forwarded_range_is_not_stored(range_proxy: StartRange) -> None:
    proxy, origin = await range_proxy()
    resp, _ = await proxy.get("/video", headers={"Range": "bytes=100-"})
    assert resp.status == 416 and resp.headers["Content-Range"] == "bytes */36"
    resp, body = await proxy.get("/video")
    assert (resp.status, body) == (200, BODY) and "fwd=uri-miss" in cache_status(resp)
    assert origin.ranges == ["bytes=100-", None]


async def test_rfc9111_s3_4_parallel_ranges_all_end_up_combined(range_proxy: StartRange) -> None:
    # A download manager asks for four ranges at once; none may undo another's part.
    proxy, origin = await range_proxy()
    ranges = [(0, 8), (9, 17), (18, 26), (27, 35)]
    results = await asyncio.gather(*(ranged(proxy, f"bytes={a}-{b}") for a, b in ranges))
    for (first, last), (status, content_range, body, _) in zip(ranges, results, strict=True):
        assert (status, content_range, body) == (206, f"bytes {first}-{last}/36", BODY[first : last + 1])
    resp, body = await proxy.get("/video")
    assert (resp.status, body) == (200, BODY) and is_hit(cache_status(resp))
    assert sorted(r for r in origin.ranges if r) == sorted(f"bytes={a}-{b}" for a, b in ranges)


async def test_rfc9110_s13_2_2_if_none_match_comes_before_the_range(range_proxy: StartRange) -> None:
    proxy, origin = await range_proxy()
    await ranged(proxy, "bytes=0-9")
    status, _, body, member = await ranged(proxy, "bytes=0-3", **{"If-None-Match": '"v1"'})
    assert (status, body) == (304, b"") and is_hit(member)
    status, _, body, member = await ranged(proxy, "bytes=0-3", **{"If-None-Match": '"v0"'})
    assert (status, body) == (206, BODY[:4]) and is_hit(member)
    assert len(origin.ranges) == 1


async def test_rfc9111_s4_3_5_a_head_response_updates_stored_parts(
    range_proxy: StartRange, clock: FakeClock
) -> None:
    proxy, origin = await range_proxy(cache_control="max-age=10")
    await ranged(proxy, "bytes=0-9")
    origin.cache_control = "max-age=100"
    async with proxy.request("HEAD", "/video") as head:  # the parts cannot answer it; the origin's answer
        assert head.status == 200 and head.headers["Content-Length"] == "36"
        assert "fwd=partial" in cache_status(head) and "stored" in cache_status(head)
    clock.advance(50)  # stale by the part's own max-age=10, fresh by the HEAD's max-age=100
    status, _, body, member = await ranged(proxy, "bytes=0-4")
    assert (status, body) == (206, BODY[:5]) and is_hit(member), member
    assert origin.methods == ["GET", "HEAD"]


async def test_requirements_s11_a_range_miss_gets_its_range_then_the_whole_object_is_fetched_behind_it(
    range_proxy: StartRange,
) -> None:
    proxy, origin = await range_proxy(complete_ranges=True)
    status, content_range, body, member = await ranged(proxy, "bytes=4-9")
    assert (status, content_range, body) == (206, "bytes 4-9/36", BODY[4:10])
    assert "fwd=uri-miss" in member
    await proxy.server.node.engine.flights.settle()  # the whole object, fetched in the background
    assert origin.ranges == ["bytes=4-9", None]
    resp, whole = await proxy.get("/video")
    assert resp.status == 200 and whole == BODY and ";hit;" in cache_status(resp)
    status, content_range, body, member = await ranged(proxy, "bytes=30-")
    assert (status, content_range, body) == (206, "bytes 30-35/36", BODY[30:])
    assert ";hit;" in member
    assert len(origin.ranges) == 2
    assert proxy.server.node.engine.stats.partial_completions == 1
