"""Caching behaviour end to end: the real proxy in front of the real origin stub.

Each test names the rule it proves and checks the origin's hit counter, so a
response that merely looks right but came from the wrong place fails.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest

from proxy.config import CacheConfig, TierConfig
from tests.functional.conftest import FakeClock, Origin, Proxy, ProxyFactory, StartScripted, cache_status


async def test_rfc9111_s4_second_get_is_a_hit_with_age(
    proxy: Proxy, origin: Origin, clock: FakeClock
) -> None:
    first, body1 = await proxy.get("/max-age/60")
    assert "fwd=uri-miss" in cache_status(first) and "stored" in cache_status(first)
    clock.advance(7)
    second, body2 = await proxy.get("/max-age/60")
    assert body2 == body1
    assert cache_status(second).startswith("edge-test;hit")
    assert "ttl=53" in cache_status(second)
    assert second.headers["Age"] == "7"
    assert await origin.hits("/max-age/60") == 1


@pytest.mark.parametrize(
    "path",
    ["/no-store", "/private", "/set-cookie"],
    ids=["9111-5.2.2.5-no-store", "9111-5.2.2.7-private", "set-cookie-not-shared"],
)
async def test_uncacheable_response_never_served_to_second_client(
    proxy: Proxy, origin: Origin, path: str
) -> None:
    first, body1 = await proxy.get(path)
    second, body2 = await proxy.get(path)
    assert first.status == second.status == 200
    assert body1 != body2  # each body names the origin hit that produced it
    assert await origin.hits(path) == 2
    assert "hit" not in cache_status(second).split(";")
    if path == "/set-cookie":
        assert first.headers["Set-Cookie"] != second.headers["Set-Cookie"]


async def test_rfc9111_s5_2_1_5_request_no_store_is_not_stored(proxy: Proxy, origin: Origin) -> None:
    await proxy.get("/max-age/60", headers={"Cache-Control": "no-store"})
    await proxy.get("/max-age/60")
    assert await origin.hits("/max-age/60") == 2


async def test_rfc9111_s4_1_vary_keeps_variants_apart(proxy: Proxy, origin: Origin) -> None:
    _, en = await proxy.get("/vary/X-Lang", headers={"X-Lang": "en"})
    _, fr = await proxy.get("/vary/X-Lang", headers={"X-Lang": "fr"})
    again, en2 = await proxy.get("/vary/X-Lang", headers={"X-Lang": "en"})
    missing, none = await proxy.get("/vary/X-Lang")
    assert en == en2 == b"X-Lang=en" and fr == b"X-Lang=fr" and none == b"X-Lang=-"
    assert "hit" in cache_status(again)
    assert "fwd=vary-miss" in cache_status(missing)
    assert await origin.hits("/vary/X-Lang") == 3


async def test_rfc9111_s4_1_vary_matching_normalises_whitespace_and_repeats(
    proxy: Proxy, origin: Origin
) -> None:
    await proxy.get("/vary/X-List", headers={"X-List": "a, b"})
    resp, _ = await proxy.get("/vary/X-List", headers=[("X-List", "a"), ("X-List", "b")])
    assert "hit" in cache_status(resp)
    assert await origin.hits("/vary/X-List") == 1


async def test_accept_encoding_spellings_share_one_variant(proxy: Proxy, origin: Origin) -> None:
    r1, b1 = await proxy.get("/gzip", headers={"Accept-Encoding": "gzip, deflate"})
    r2, b2 = await proxy.get("/gzip", headers={"Accept-Encoding": "deflate,gzip;q=0.8"})
    r3, b3 = await proxy.get("/gzip", headers={"Accept-Encoding": "GZIP"})
    assert r1.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(b1) == gzip.decompress(b2) == gzip.decompress(b3)
    assert "hit" in cache_status(r2) and "hit" in cache_status(r3)
    plain, text = await proxy.get("/gzip", headers={"Accept-Encoding": "deflate"})
    assert "Content-Encoding" not in plain.headers  # identity variant, never the gzip body
    assert text.startswith(b"origin stub") and b"gzip demo" in text  # plain text, not gzip bytes
    assert await origin.hits("/gzip") == 2


async def test_rfc9111_s4_3_stale_entry_revalidated_once_and_304_freshens(
    proxy: Proxy, origin: Origin, clock: FakeClock
) -> None:
    _first, body = await proxy.get("/etag?max_age=10")
    clock.advance(30)
    revalidated, body2 = await proxy.get("/etag?max_age=10")
    assert body2 == body
    assert "fwd=stale" in cache_status(revalidated) and "fwd-status=304" in cache_status(revalidated)
    sent = (await origin.requests("/etag"))[-1]
    assert ["If-None-Match", '"v1"'] in sent["headers"]
    clock.advance(5)
    hit, _ = await proxy.get("/etag?max_age=10")
    assert "hit" in cache_status(hit) and hit.headers["Age"] == "5"
    assert await origin.hits("/etag") == 2


async def test_rfc9111_s4_3_1_last_modified_validator_used(
    proxy: Proxy, origin: Origin, clock: FakeClock
) -> None:
    await proxy.get("/last-modified-304?max_age=10")
    clock.advance(20)
    resp, _ = await proxy.get("/last-modified-304?max_age=10")
    assert "fwd-status=304" in cache_status(resp)
    names = [n.lower() for n, _ in (await origin.requests("/last-modified-304"))[-1]["headers"]]
    assert "if-modified-since" in names


async def test_rfc9111_s4_3_2_client_if_none_match_gets_304_from_cache(proxy: Proxy, origin: Origin) -> None:
    first, _ = await proxy.get("/etag?max_age=60")
    etag = first.headers["ETag"]
    resp, body = await proxy.get("/etag?max_age=60", headers={"If-None-Match": f'"other", W/{etag}'})
    assert resp.status == 304 and body == b""
    assert resp.headers["ETag"] == etag and "Age" in resp.headers and "Cache-Control" in resp.headers
    assert "hit" in cache_status(resp)
    assert await origin.hits("/etag") == 1


async def test_rfc9110_s7_6_1_conditionals_named_by_connection_are_not_the_caches_to_answer(
    proxy: Proxy, origin: Origin
) -> None:
    # Fields the Connection field lists are hop-by-hop: the stored response answers as if they were
    # absent (a whole 200), as the origin would have seen the request without them.
    first, full = await proxy.get("/etag?max_age=60")
    etag = first.headers["ETag"]
    resp, body = await proxy.get(
        "/etag?max_age=60", headers={"Connection": "keep-alive, If-None-Match", "If-None-Match": etag}
    )
    assert resp.status == 200 and body == full
    resp, body = await proxy.get("/etag?max_age=60", headers={"Connection": "Range", "Range": "bytes=0-1"})
    assert resp.status == 200 and body == full
    # A precondition the origin would never see is not left to it either (RFC 9110 §13.2.1).
    resp, body = await proxy.get("/etag?max_age=60", headers={"Connection": "If-Match", "If-Match": '"no"'})
    assert resp.status == 200 and body == full
    resp, _ = await proxy.get("/etag?max_age=60", headers={"If-None-Match": etag})
    assert resp.status == 304  # the same field, not listed: answered
    assert await origin.hits("/etag") == 1


async def test_rfc9111_s4_3_2_client_if_modified_since_gets_304_from_cache(
    proxy: Proxy, origin: Origin
) -> None:
    first, _ = await proxy.get("/last-modified-304?max_age=60")
    resp, _ = await proxy.get(
        "/last-modified-304?max_age=60", headers={"If-Modified-Since": first.headers["Last-Modified"]}
    )
    assert resp.status == 304
    assert await origin.hits("/last-modified-304") == 1


async def test_rfc9110_s9_3_2_head_served_from_get_entry(proxy: Proxy, origin: Origin) -> None:
    get, _body = await proxy.get("/bytes/1000")
    async with proxy.request("HEAD", "/bytes/1000") as head:
        assert head.status == 200
        assert head.headers["Content-Length"] == "1000"
        assert head.headers["ETag"] == get.headers["ETag"]
        assert "hit" in cache_status(head)
        assert await head.read() == b""
    assert await origin.hits("/bytes/1000") == 1


async def test_head_miss_does_not_create_an_entry(proxy: Proxy, origin: Origin) -> None:
    async with proxy.request("HEAD", "/max-age/60") as head:
        assert head.status == 200
    resp, _ = await proxy.get("/max-age/60")
    assert "fwd=uri-miss" in cache_status(resp)
    assert await origin.hits("/max-age/60") == 2


async def test_rfc9111_s4_3_2_a_head_miss_forwards_the_clients_condition_and_stores_no_304(
    proxy: Proxy, origin: Origin
) -> None:
    """With nothing stored the cache must not evaluate a client's If-None-Match (§4.3.2): the origin
    does, and its 304 goes, as it came, to that client alone. It is no response to store nor to answer
    a GET with (§4.3.4 updates stored responses only): the GET after it is a miss."""
    async with proxy.request("HEAD", "/etag?max_age=60", headers={"If-None-Match": '"v1"'}) as head:
        assert (head.status, head.headers["ETag"]) == (304, '"v1"')
        assert "fwd=uri-miss;fwd-status=304" in cache_status(head)
    [forwarded] = await origin.requests("/etag")
    assert [v for n, v in forwarded["headers"] if n.lower() == "if-none-match"] == ['"v1"']
    resp, body = await proxy.get("/etag?max_age=60")
    assert resp.status == 200 and body and "fwd=uri-miss" in cache_status(resp)
    async with proxy.request("HEAD", "/etag?max_age=60", headers={"If-None-Match": '"v1"'}) as head:
        assert head.status == 304 and "hit" in cache_status(head)  # now answered from the stored GET
    assert await origin.hits("/etag") == 2


@pytest.mark.parametrize(
    ("range_header", "status", "expected", "content_range"),
    [
        ("bytes=0-9", 206, slice(0, 10), "bytes 0-9/1000"),
        ("bytes=990-", 206, slice(990, 1000), "bytes 990-999/1000"),
        ("bytes=-5", 206, slice(995, 1000), "bytes 995-999/1000"),
        ("bytes=5000-", 416, slice(0, 0), "bytes */1000"),
        ("bytes=0-1,5-6", 200, slice(0, 1000), None),
        ("bytes = 0-9", 200, slice(0, 1000), None),
        ("bytes=0-9, ,", 206, slice(0, 10), "bytes 0-9/1000"),
        ("bytes=" + ",".join(["0-999"] * 500), 200, slice(0, 1000), None),
        ("bytes=0-" + "9" * 5000, 206, slice(0, 1000), "bytes 0-999/1000"),
        ("bytes=" + "9" * 5000 + "-", 416, slice(0, 0), "bytes */1000"),
    ],
    ids=[
        "9110-14-first-ten",
        "open-ended",
        "suffix",
        "9110-15.5.17-unsatisfiable",
        "multi-range-gets-200",
        "9110-14.1.1-whitespace-is-invalid-and-ignored",
        "9110-5.6.1.2-empty-elements-ignored",
        "9110-14.2-many-overlapping-ranges-get-200",
        "9110-14.1.1-last-pos-of-5000-digits",
        "9110-14.1.1-first-pos-of-5000-digits",
    ],
)
async def test_rfc9110_s14_range_from_cached_200(
    proxy: Proxy, origin: Origin, range_header: str, status: int, expected: slice, content_range: str | None
) -> None:
    _, full = await proxy.get("/bytes/1000")
    resp, part = await proxy.get("/bytes/1000", headers={"Range": range_header})
    assert resp.status == status
    assert part == full[expected]
    assert resp.headers.get("Content-Range") == content_range
    assert await origin.hits("/bytes/1000") == 1


async def test_range_miss_asks_for_the_range_and_a_whole_200_answering_it_is_stored(
    proxy: Proxy, origin: Origin
) -> None:
    # The origin stub ignores Range (RFC 9110 §14.2 lets it): its whole 200 is stored and answers.
    resp, part = await proxy.get("/bytes/1000", headers={"Range": "bytes=10-19"})
    assert resp.status == 206 and len(part) == 10
    assert resp.headers["Content-Range"] == "bytes 10-19/1000"
    _, full = await proxy.get("/bytes/1000")
    assert part == full[10:20]
    assert await origin.hits("/bytes/1000") == 1
    sent = (await origin.requests("/bytes/1000"))[0]["headers"]
    # Asked as the whole slice holding it (cache.slice_size, 1MiB by default: proxy/slices.py).
    assert [v for n, v in sent if n.lower() == "range"] == ["bytes=0-1048575"]


@pytest.mark.parametrize(
    ("range_header", "status", "content_range"),
    [
        ("bytes=0-" + "9" * 5000, 206, "bytes 0-999/1000"),
        ("bytes=" + "9" * 5000 + "-", 416, "bytes */1000"),
        ("bytes=-" + "9" * 5000, 206, "bytes 0-999/1000"),
    ],
    ids=["last-pos", "first-pos", "suffix"],
)
async def test_rfc9110_s14_1_1_a_range_miss_with_a_position_of_5000_digits_is_answered(
    proxy: Proxy, range_header: str, status: int, content_range: str
) -> None:
    """A position is a 1*DIGIT of any length: past 4300 digits its int() raised, and the miss (or the
    hit) was a 500 `internal error`. Past any representation's length, it is answered as such."""
    resp, body = await proxy.get("/bytes/1000", headers={"Range": range_header})
    assert (resp.status, resp.headers.get("Content-Range")) == (status, content_range)
    assert len(body) == (1000 if status == 206 else 0)


async def test_rfc9110_s13_1_5_if_range_mismatch_gets_whole_200(proxy: Proxy) -> None:
    await proxy.get("/bytes/100")
    resp, body = await proxy.get("/bytes/100", headers={"Range": "bytes=0-9", "If-Range": '"not-it"'})
    assert resp.status == 200 and len(body) == 100


async def test_entry_survives_restart_in_l2(
    start_proxy: ProxyFactory, origin: Origin, aiohttp_server: Any
) -> None:
    # The key includes the Host; the restarted test server gets another port, so pin it.
    host = {"Host": "cdn.example"}
    first = await start_proxy()
    _, body = await first.get("/max-age/600", headers=host)
    await first.server.close()  # runs cleanup: closes L1 and L2
    second = await start_proxy()
    resp, body2 = await second.get("/max-age/600", headers=host)
    assert body2 == body
    assert "hit" in cache_status(resp) and 'detail="l2"' in cache_status(resp)
    promoted, _ = await second.get("/max-age/600", headers=host)
    assert 'detail="l1"' in cache_status(promoted)  # promoted on the L2 hit
    assert await origin.hits("/max-age/600") == 1


@pytest.mark.parametrize("eviction", ["lru", "lfu", "fifo", "random", "noeviction"])
async def test_l1_never_exceeds_its_byte_budget(
    start_proxy: ProxyFactory, origin: Origin, eviction: str
) -> None:
    budget = 32 * 1024
    proxy = await start_proxy(
        cache=CacheConfig(
            l1=TierConfig(budget=budget, eviction=eviction),  # type: ignore[arg-type]
            l2=TierConfig(enabled=False),
        )
    )
    l1 = proxy.server.node.storage.l1
    assert l1 is not None
    for i in range(60):
        resp, body = await proxy.get(f"/bytes/2000?i={i}")
        assert resp.status == 200 and len(body) == 2000
        assert l1.stats.bytes <= budget
    assert 0 < l1.stats.entries < 60
    if eviction == "noeviction":
        assert l1.stats.rejected > 0 and l1.stats.evictions == 0
    else:
        assert l1.stats.evictions > 0


async def test_corrupted_l2_file_is_a_miss(start_proxy: ProxyFactory, origin: Origin, tmp_path: Path) -> None:
    host = {"Host": "cdn.example"}
    first = await start_proxy()
    _, body = await first.get("/bytes/100000", headers=host)  # large: diskcache keeps it in its own file
    await first.server.close()
    files = [p for p in (tmp_path / "l2").rglob("*.val")]
    assert files, "expected diskcache to store the body in a file"
    for f in files:
        f.write_bytes(b"\x00garbage" * 10)
    second = await start_proxy()
    resp, body2 = await second.get("/bytes/100000", headers=host)
    assert resp.status == 200 and body2 == body
    assert "fwd=uri-miss" in cache_status(resp)
    assert await origin.hits("/bytes/100000") == 2


async def test_rfc9213_cdn_cache_control_overrides_cache_control(
    proxy: Proxy, origin: Origin, clock: FakeClock
) -> None:
    path = "/respond?h=Cache-Control:no-store&h=CDN-Cache-Control:max-age=60&body=x"
    first, _ = await proxy.get(path)
    assert "stored" in cache_status(first)
    assert first.headers["CDN-Cache-Control"] == "max-age=60"  # targets every CDN downstream too
    assert first.headers["Cache-Control"] == "no-store"  # passed through unchanged
    clock.advance(30)
    second, _ = await proxy.get(path)
    assert "hit" in cache_status(second)
    assert await origin.hits("/respond") == 1


async def test_rfc9111_s4_2_2_heuristic_freshness_from_last_modified(
    proxy: Proxy, origin: Origin, clock: FakeClock
) -> None:
    # Last-Modified 1000 s ago: 10% gives 100 s of heuristic freshness.
    await proxy.get("/last-modified/1000")
    clock.advance(90)
    hit, _ = await proxy.get("/last-modified/1000")
    assert "hit" in cache_status(hit)
    clock.advance(20)
    stale, _ = await proxy.get("/last-modified/1000")
    assert "fwd=stale" in cache_status(stale)


async def test_rfc9111_s5_3_invalid_expires_is_already_stale(proxy: Proxy, origin: Origin) -> None:
    await proxy.get("/expires/60?raw=0")
    resp, _ = await proxy.get("/expires/60?raw=0")
    assert "hit" not in cache_status(resp).split(";")
    assert await origin.hits("/expires/60") == 2


async def test_rfc9111_s5_2_1_request_no_cache_revalidates(proxy: Proxy, origin: Origin) -> None:
    await proxy.get("/etag?max_age=60")
    resp, _ = await proxy.get("/etag?max_age=60", headers={"Cache-Control": "no-cache"})
    assert "fwd=request" in cache_status(resp) and "fwd-status=304" in cache_status(resp)
    assert await origin.hits("/etag") == 2


async def test_request_directives_ignored_when_configured(start_proxy: ProxyFactory, origin: Origin) -> None:
    from proxy.config import PolicyConfig

    proxy = await start_proxy(policy=PolicyConfig(honour_request_directives=False))
    await proxy.get("/max-age/60")
    resp, _ = await proxy.get("/max-age/60", headers={"Cache-Control": "no-cache", "Pragma": "no-cache"})
    assert "hit" in cache_status(resp)
    assert await origin.hits("/max-age/60") == 1


async def test_rfc9111_s5_2_1_7_only_if_cached_miss_is_504(proxy: Proxy, origin: Origin) -> None:
    resp, _ = await proxy.get("/max-age/60", headers={"Cache-Control": "only-if-cached"})
    assert resp.status == 504
    assert await origin.hits() == 0


async def test_rfc8246_immutable_not_revalidated_on_reload(proxy: Proxy, origin: Origin) -> None:
    await proxy.get("/max-age/600?immutable=1")
    resp, _ = await proxy.get("/max-age/600?immutable=1", headers={"Cache-Control": "no-cache"})
    assert "hit" in cache_status(resp)
    assert await origin.hits("/max-age/600") == 1


async def test_rfc9111_s5_2_2_4_no_cache_response_always_revalidated(proxy: Proxy, origin: Origin) -> None:
    await proxy.get("/no-cache")
    resp, _ = await proxy.get("/no-cache")
    assert "fwd-status=304" in cache_status(resp)
    assert await origin.hits("/no-cache") == 2


@pytest.mark.parametrize(
    "directive",
    ['private="X-User"', "private=X-User", 'no-cache="X-User, X-Other"'],
    ids=["private", "token", "no-cache"],
)
async def test_rfc9111_s5_2_2_7_a_named_field_goes_to_the_client_that_fetched_it_and_is_not_stored(
    proxy: Proxy, origin: Origin, directive: str
) -> None:
    """private="F" / no-cache="F" keep F out of the cache (§5.2.2.7, §5.2.2.4), not away from the
    client the origin answered: it gets F, a later client's hit does not."""
    from urllib.parse import urlencode

    fields = [("h", f"Cache-Control:max-age=60, {directive}"), ("h", "X-User:alice"), ("h", "X-Other:o")]
    path = "/respond?" + urlencode([*fields, ("body", "page")])
    first, _ = await proxy.get(path)
    assert "stored" in cache_status(first)
    assert first.headers["X-User"] == "alice"
    hit, body = await proxy.get(path)
    assert "hit" in cache_status(hit) and body == b"page"
    assert "X-User" not in hit.headers
    assert ("X-Other" in hit.headers) == directive.startswith("private")  # only the named ones go
    assert await origin.hits("/respond") == 1


async def test_a_set_cookie_on_a_304_goes_to_the_client_whose_request_it_answers(
    start_proxy: ProxyFactory, scripted_origin: StartScripted
) -> None:
    stale = b'HTTP/1.1 200 OK\r\nCache-Control: max-age=0\r\nETag: "v1"\r\nContent-Length: 4\r\n\r\npage'
    not_modified = b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nSet-Cookie: seen=1\r\n\r\n'
    upstream = await scripted_origin(
        [stale, not_modified, b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n']
    )
    proxy = await start_proxy(origin_url=upstream.url)
    await proxy.get("/page")
    revalidated, body = await proxy.get("/page")
    assert "fwd-status=304" in cache_status(revalidated) and body == b"page"
    assert revalidated.headers["Set-Cookie"] == "seen=1"
    again, _ = await proxy.get("/page")
    assert "fwd-status=304" in cache_status(again) and "Set-Cookie" not in again.headers  # never stored


OUTDATED = (
    b'HTTP/1.1 200 OK\r\nCache-Control: max-age=10, stale-if-error=600\r\nETag: "v1"\r\n'
    b"Content-Length: 3\r\n\r\nold"
)
# A 304 naming another representation than the one asked about, then its 200, which may not be stored.
NAMES_ANOTHER = b'HTTP/1.1 304 Not Modified\r\nETag: "v2"\r\nCache-Control: max-age=10\r\n\r\n'
NOT_KEPT = b'HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nETag: "v2"\r\nContent-Length: 3\r\n\r\nnew'
DOWN = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\ndown\n"


async def test_rfc9111_s4_3_4_copies_a_304_does_not_select_are_not_served_after_the_refetch_is_not_stored(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, clock: FakeClock
) -> None:
    """A 304 that matches no stored response (§4.3.4) says the copies asked about are not what the origin
    has; the full response fetched next replaces them (§4.3.3). When it could not be stored, the old copy
    stayed: the next request revalidated it again, and with the origin failing it was served
    (stale-if-error) although the origin had just said it was outdated."""
    upstream = await scripted_origin([OUTDATED, NAMES_ANOTHER, NOT_KEPT, DOWN])
    proxy = await start_proxy(origin_url=upstream.url)
    await proxy.get("/page")
    clock.advance(20)
    refetched, body = await proxy.get("/page")
    assert (refetched.status, body) == (200, b"new") and 'detail="no-store"' in cache_status(refetched)
    assert upstream.sent(1, "If-None-Match") == ['"v1"'] and upstream.sent(2, "If-None-Match") == []
    resp, body = await proxy.get("/page")
    assert (resp.status, body) == (503, b"down\n")  # a miss now: nothing outdated to fall back on
    assert upstream.sent(3, "If-None-Match") == [] and len(upstream.requests) == 4


def _language(tag: bytes, max_age: int = 10) -> bytes:
    return (
        b'HTTP/1.1 200 OK\r\nVary: Accept-Language\r\nCache-Control: max-age=%d\r\nETag: "%s"\r\n'
        b"Content-Length: %d\r\n\r\n%s" % (max_age, tag, len(tag), tag)
    )


async def test_rfc9111_s4_3_4_an_ambiguous_304_keeps_the_other_variants(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, clock: FakeClock
) -> None:
    """A 304 without a validator to a request that carried several entity-tags selects nothing (it
    says one of them matched, not which): unlike a 304 naming another validator, it does not disown the
    stored variants, and the whole response fetched next replaces only its own."""
    bare_304 = b"HTTP/1.1 304 Not Modified\r\n\r\n"
    named_304 = b'HTTP/1.1 304 Not Modified\r\nETag: "fr"\r\n\r\n'
    upstream = await scripted_origin(
        [_language(b"en"), _language(b"fr"), bare_304, _language(b"en2"), named_304]
    )
    proxy = await start_proxy(origin_url=upstream.url)
    for language in ("en", "fr"):
        await proxy.get("/page", headers={"Accept-Language": language})
    clock.advance(20)
    resp, body = await proxy.get("/page", headers={"Accept-Language": "en"})
    assert body == b"en2" and upstream.sent(2, "If-None-Match") == ['"en", "fr"']
    resp, body = await proxy.get("/page", headers={"Accept-Language": "fr"})
    assert body == b"fr" and "fwd-status=304" in cache_status(resp)
    assert upstream.sent(4, "If-None-Match") == ['"fr", "en2"']


async def test_rfc9111_s4_3_5_a_set_cookie_on_a_head_answer_that_updates_goes_to_its_client_only(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, clock: FakeClock
) -> None:
    """A stale HEAD is asked of the origin as a HEAD; its 200 updates the stored GET response, which then
    answers the HEAD. The cookie the origin set in that answer was dropped: the client never got it."""
    stored = b'HTTP/1.1 200 OK\r\nCache-Control: max-age=10\r\nETag: "v1"\r\nContent-Length: 4\r\n\r\npage'
    head = stored.removesuffix(b"page").replace(
        b"\r\nContent-Length", b"\r\nSet-Cookie: seen=1\r\nContent-Length"
    )
    upstream = await scripted_origin([stored, head])
    proxy = await start_proxy(origin_url=upstream.url)
    await proxy.get("/page")
    clock.advance(20)
    async with proxy.request("HEAD", "/page") as answered:
        assert answered.status == 200 and "fwd-status=200;stored" in cache_status(answered)
        assert answered.headers.getall("Set-Cookie", []) == ["seen=1"]
    assert upstream.method(1) == "HEAD"
    hit, body = await proxy.get("/page")
    assert "hit" in cache_status(hit).split(";") and body == b"page" and "Set-Cookie" not in hit.headers


async def test_rfc9112_s6_3_a_204_with_a_content_length_is_stored_without_a_body(
    start_proxy: ProxyFactory, scripted_origin: StartScripted
) -> None:
    # RFC 9110 §8.6: a server must not send Content-Length in a 204; one that does still sent no body.
    no_content = b"HTTP/1.1 204 No Content\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\n"
    upstream = await scripted_origin([no_content])
    proxy = await start_proxy(origin_url=upstream.url)
    first, body = await proxy.get("/empty")
    assert first.status == 204 and body == b"" and "stored" in cache_status(first)
    hit, body = await proxy.get("/empty")
    assert hit.status == 204 and body == b"" and "hit" in cache_status(hit)


async def test_rfc9211_cache_status_appends_to_origin_member(proxy: Proxy) -> None:
    resp, _ = await proxy.get("/respond?h=Cache-Status:origin-cache;hit&h=Cache-Control:max-age=60")
    assert resp.headers["Cache-Status"].startswith("origin-cache;hit, edge-test;")


async def test_date_added_when_origin_sends_none(proxy: Proxy, clock: FakeClock) -> None:
    resp, _ = await proxy.get("/max-age/60?nodate=1")
    assert resp.headers["Date"]
    clock.advance(3)
    hit, _ = await proxy.get("/max-age/60?nodate=1")
    assert hit.headers["Date"] == resp.headers["Date"] and hit.headers["Age"] == "3"


async def test_rfc9111_s2_key_host_is_what_the_origin_sees(start_proxy: ProxyFactory, origin: Origin) -> None:
    """With origin.host_header "origin" (the default) the origin never sees the client's Host, so
    every spelling of it (localhost:8080, 127.0.0.1:8080, an edge's own port) shares one entry."""
    from proxy.config import OriginConfig

    proxy = await start_proxy(origin=OriginConfig(url=origin.url))
    await proxy.get("/max-age/60", headers={"Host": "localhost:8080"})
    resp, _ = await proxy.get("/max-age/60", headers={"Host": "127.0.0.1:8082"})
    assert "hit" in cache_status(resp)
    assert await origin.hits("/max-age/60") == 1


async def test_key_host_is_the_clients_when_the_origin_sees_it(proxy: Proxy, origin: Origin) -> None:
    """With host_header "client" the Host reaches the origin, which may answer per host: separate entries."""
    await proxy.get("/max-age/60", headers={"Host": "a.example"})
    resp, _ = await proxy.get("/max-age/60", headers={"Host": "b.example"})
    assert "fwd=uri-miss" in cache_status(resp)
    assert await origin.hits("/max-age/60") == 2
