"""The origin stub: every behaviour route, the test-support endpoints and the CLI."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from origin_stub.app import create_app
from origin_stub.behaviours import accepts_gzip, pattern
from origin_stub.cli import listen_from_config, parse_listen
from origin_stub.common import http_date, parse_http_date
from origin_stub.conditional import none_match

T0 = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
REPO = Path(__file__).resolve().parents[2]

from tests.functional.conftest import FakeClock, free_port  # noqa: E402

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def client(aiohttp_client: MakeClient, clock: FakeClock) -> Client:
    return await aiohttp_client(create_app(clock=clock))


async def get_json(client: Client, path: str) -> Any:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    return await resp.json()


# --- counters, request log, reset --------------------------------------------------------------


async def test_hits_are_counted_per_path_and_reported(client: Client) -> None:
    for expected in (1, 2):
        resp = await client.get("/max-age/60", params={"x": str(expected)})
        assert resp.headers["X-Origin-Hits"] == str(expected)
        assert f"hit={expected}" in await resp.text()
    await client.head("/etag")

    assert await get_json(client, "/__hits") == {"total": 3, "paths": {"/max-age/60": 2, "/etag": 1}}
    assert await get_json(client, "/__hits?path=/max-age/60") == {"path": "/max-age/60", "count": 2}
    assert await get_json(client, "/__hits?path=/never") == {"path": "/never", "count": 0}


async def test_admin_routes_are_not_counted_and_never_cacheable(client: Client) -> None:
    await client.get("/__hits")
    await client.get("/__requests")
    resp = await client.get("/__nope")
    assert resp.status == 404
    assert resp.headers["Cache-Control"] == "no-store"
    assert "X-Origin-Hits" not in resp.headers
    assert (await get_json(client, "/__hits"))["total"] == 0


@pytest.mark.parametrize(("method", "path"), [("POST", "/__reset"), ("DELETE", "/__hits")])
async def test_reset_clears_counters_log_and_items(client: Client, method: str, path: str) -> None:
    await client.get("/no-store")
    await client.put("/api/items/1", json={"value": "changed"})
    resp = await client.request(method, path)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert await get_json(client, "/__hits") == {"total": 0, "paths": {}}
    assert await get_json(client, "/__requests") == []
    item = await (await client.get("/api/items/1")).json()
    assert item == {"id": "1", "value": "one", "version": 1}


async def test_request_log_records_method_query_headers_and_body(client: Client) -> None:
    await client.get("/etag?tag=a", headers={"If-None-Match": '"a"', "X-Test": "1"})
    await client.post("/echo", data=b"12345")
    await client.get("/etag")

    log = await get_json(client, "/__requests?path=/etag")
    assert [entry["query"] for entry in log] == ["tag=a", ""]  # newest last
    first = log[0]
    assert first["method"] == "GET"
    assert first["path"] == "/etag"
    assert ["If-None-Match", '"a"'] in first["headers"]
    assert ["X-Test", "1"] in first["headers"]
    assert first["time"] == T0

    everything = await get_json(client, "/__requests")
    assert [(e["method"], e["path"], e["body_length"]) for e in everything] == [
        ("GET", "/etag", 0),
        ("POST", "/echo", 5),
        ("GET", "/etag", 0),
    ]


async def test_request_log_keeps_the_last_200(client: Client) -> None:
    for i in range(205):
        await client.get(f"/max-age/1?i={i}")
    log = await get_json(client, "/__requests")
    assert len(log) == 200
    assert log[0]["query"] == "i=5"
    assert log[-1]["query"] == "i=204"


# --- Date and the clock ------------------------------------------------------------------------


async def test_date_comes_from_the_app_clock(client: Client, clock: FakeClock) -> None:
    resp = await client.get("/max-age/60")
    assert resp.headers["Date"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    clock.advance(100)
    resp = await client.get("/__hits")
    assert resp.headers["Date"] == http_date(T0 + 100)


async def test_nodate_query_and_send_date_option_suppress_date(
    client: Client, aiohttp_client: MakeClient, clock: FakeClock
) -> None:
    resp = await client.get("/max-age/60?nodate=1")
    assert "Date" not in resp.headers
    resp = await client.get("/etag?nodate=1", headers={"If-None-Match": '"v1"'})
    assert resp.status == 304
    assert "Date" not in resp.headers

    quiet = await aiohttp_client(create_app(clock=clock, send_date=False))
    assert "Date" not in (await quiet.get("/max-age/60")).headers


async def test_expires_is_computed_from_the_clock(client: Client, clock: FakeClock) -> None:
    resp = await client.get("/expires/30")
    assert resp.headers["Expires"] == http_date(T0 + 30)
    assert "Cache-Control" not in resp.headers
    clock.advance(10)
    assert (await client.get("/expires/-5")).headers["Expires"] == http_date(T0 + 5)
    assert (await client.get("/expires/30?raw=0")).headers["Expires"] == "0"


async def test_last_modified_heuristic_route_and_ims(client: Client) -> None:
    resp = await client.get("/last-modified/3600")
    assert resp.headers["Last-Modified"] == http_date(T0 - 3600)
    assert "Cache-Control" not in resp.headers
    assert "Expires" not in resp.headers

    same = await client.get("/last-modified/3600", headers={"If-Modified-Since": http_date(T0 - 3600)})
    assert same.status == 304
    assert await same.read() == b""
    older = await client.get("/last-modified/3600", headers={"If-Modified-Since": http_date(T0 - 7200)})
    assert older.status == 200
    bogus = await client.get("/last-modified/3600", headers={"If-Modified-Since": "yesterday"})
    assert bogus.status == 200


async def test_last_modified_304_is_stable(client: Client, clock: FakeClock) -> None:
    first = await client.get("/last-modified-304?max_age=5")
    assert first.headers["Cache-Control"] == "max-age=5"
    lm = first.headers["Last-Modified"]
    assert lm == http_date(T0 - 86400)
    clock.advance(1000)
    again = await client.get("/last-modified-304")
    assert again.headers["Last-Modified"] == lm
    assert again.headers["Cache-Control"] == "max-age=0"

    resp = await client.get("/last-modified-304", headers={"If-Modified-Since": lm})
    assert resp.status == 304
    assert resp.headers["Last-Modified"] == lm
    assert resp.headers["Date"] == http_date(T0 + 1000)
    assert (await client.get("/last-modified-304", headers={"If-Modified-Since": "x"})).status == 200


# --- Cache-Control routes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/max-age/60", "max-age=60"),
        (
            "/max-age/10?swr=30&sie=300&immutable=1&public=1",
            "public, max-age=10, stale-while-revalidate=30, stale-if-error=300, immutable",
        ),
        ("/s-maxage/120", "s-maxage=120, max-age=0"),
        ("/s-maxage/120?max_age=5", "s-maxage=120, max-age=5"),
        ("/no-store", "no-store"),
        ("/no-cache", "no-cache"),
        ("/private", "private, max-age=60"),
        ("/must-revalidate/30", "max-age=30, must-revalidate"),
        ("/slow?ms=1", "max-age=60"),
        ("/slow?ms=1&max_age=7", "max-age=7"),
        ("/fail", "no-store"),
        ("/fail?max_age=9", "max-age=9"),
        ("/tags", "max-age=60"),
        ("/nonexistent/path", "max-age=60"),
    ],
)
async def test_cache_control(client: Client, path: str, expected: str) -> None:
    resp = await client.get(path)
    assert resp.headers.getall("Cache-Control") == [expected]
    assert resp.headers["Date"] == http_date(T0)


async def test_unknown_path_is_a_cacheable_404_but_wrong_method_is_405(client: Client) -> None:
    resp = await client.get("/does/not/exist")
    assert resp.status == 404
    assert resp.headers["X-Origin-Hits"] == "1"
    assert (await client.get("/max-age/abc")).status == 404
    assert (await client.patch("/api/items/1")).status == 405


@pytest.mark.parametrize("path", ["/no-cache", "/must-revalidate/0"])
async def test_revalidation_routes_answer_304(client: Client, path: str) -> None:
    resp = await client.get(path)
    etag = resp.headers["ETag"]
    assert etag == '"v1"'
    again = await client.get(path, headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
    assert again.headers["X-Origin-Hits"] == "2"


# --- ETag --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "if_none_match", "status"),
    [
        ("", '"v1"', 304),
        ("", 'W/"v1"', 304),  # weak comparison
        ("weak=1", '"v1"', 304),
        ("weak=1", 'W/"v1"', 304),
        ("", '"v0", "v1"', 304),
        ("", '"a,b", W/"v1"', 304),
        ("", "*", 304),
        ("", '"v2"', 200),
        ("", "v1", 200),  # unquoted: not an entity-tag
        ("tag=v2", '"v1"', 200),
        ("tag=v2", '"v2"', 304),
    ],
)
async def test_etag_if_none_match(client: Client, query: str, if_none_match: str, status: int) -> None:
    resp = await client.get(f"/etag?{query}", headers={"If-None-Match": if_none_match})
    assert resp.status == status
    assert resp.headers["Cache-Control"] == "max-age=0"
    assert resp.headers["Date"] == http_date(T0)
    assert resp.headers["ETag"].endswith('"' + (query.split("=")[1] if "tag=" in query else "v1") + '"')
    body = await resp.read()
    if status == 304:
        assert body == b""
        assert "Content-Length" not in resp.headers or resp.headers["Content-Length"] == "0"
    else:
        assert b"/etag" in body


async def test_etag_headers_and_head(client: Client) -> None:
    resp = await client.get("/etag?weak=1&max_age=30")
    assert resp.headers["ETag"] == 'W/"v1"'
    assert resp.headers["Cache-Control"] == "max-age=30"
    head = await client.head("/etag")
    assert head.status == 200
    assert head.headers["ETag"] == '"v1"'
    assert int(head.headers["Content-Length"]) > 0
    assert await head.read() == b""
    head_304 = await client.head("/etag", headers={"If-None-Match": '"v1"'})
    assert head_304.status == 304


def test_none_match_parsing() -> None:
    assert none_match('W/"x"', '"x"')
    assert none_match(' "y" ,W/"x" ', 'W/"x"')
    assert not none_match('"x', '"x"')
    assert not none_match("", '"x"')
    assert not none_match('"xy"', '"x"')


# --- representation variants -------------------------------------------------------------------


async def test_vary_echoes_the_named_header(client: Client) -> None:
    resp = await client.get("/vary/Accept-Language", headers={"Accept-Language": "fr"})
    assert resp.headers["Vary"] == "Accept-Language"
    assert resp.headers["Cache-Control"] == "max-age=60"
    assert await resp.text() == "Accept-Language=fr"
    assert await (await client.get("/vary/Accept-Language")).text() == "Accept-Language=-"


async def test_gzip_is_compressed_only_when_accepted(aiohttp_client: MakeClient, clock: FakeClock) -> None:
    client = await aiohttp_client(create_app(clock=clock), auto_decompress=False)
    zipped = await client.get("/gzip", headers={"Accept-Encoding": "br, gzip;q=0.5"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.headers["Vary"] == "Accept-Encoding"
    assert zipped.headers["Cache-Control"] == "max-age=60"
    raw = await zipped.read()
    assert int(zipped.headers["Content-Length"]) == len(raw)
    assert b"/gzip" in gzip.decompress(raw)

    for accept in ("identity", "gzip;q=0", "br"):
        plain = await client.get("/gzip", headers={"Accept-Encoding": accept})
        assert "Content-Encoding" not in plain.headers
        assert b"/gzip" in await plain.read()


def test_accepts_gzip() -> None:
    assert accepts_gzip("gzip, deflate")
    assert accepts_gzip("*")
    assert accepts_gzip("x-gzip;q=0.1")
    assert not accepts_gzip("*;q=0")
    assert not accepts_gzip("gzip;q=0, *")
    assert not accepts_gzip("")


async def test_set_cookie_carries_the_hit_count(client: Client) -> None:
    await client.get("/set-cookie")
    resp = await client.get("/set-cookie")
    assert resp.headers["Set-Cookie"] == "session=2; Path=/"
    assert resp.headers["Cache-Control"] == "max-age=60"
    assert "hit=2" in await resp.text()


@pytest.mark.parametrize("n", [0, 1, 1000, 70_000, 200_003])
async def test_bytes_exact_length(client: Client, n: int) -> None:
    resp = await client.get(f"/bytes/{n}")
    body = await resp.read()
    assert body == pattern(n)
    assert resp.headers["Content-Length"] == str(n)
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.headers["Cache-Control"] == "max-age=60"
    assert resp.headers["ETag"] == f'"bytes-{n}"'


async def test_bytes_chunked_and_conditional(client: Client) -> None:
    resp = await client.get("/bytes/5000?chunked=1&max_age=5")
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in resp.headers
    assert resp.headers["Cache-Control"] == "max-age=5"
    assert await resp.read() == pattern(5000)

    for n, query in ((5000, "?chunked=1"), (100, ""), (100_000, "")):
        conditional = await client.get(f"/bytes/{n}{query}", headers={"If-None-Match": f'"bytes-{n}"'})
        assert conditional.status == 304
        assert conditional.headers["ETag"] == f'"bytes-{n}"'
        assert await conditional.read() == b""
    head = await client.head("/bytes/100000")
    assert head.headers["Content-Length"] == "100000"
    assert await head.read() == b""


@pytest.mark.parametrize(
    ("n", "value", "first", "last"),
    [
        (100_000, "bytes=0-99", 0, 99),
        (100_000, "bytes=65530-65545", 65530, 65545),  # across the stub's 64 KiB pieces
        (100_000, "bytes=99990-", 99990, 99_999),
        (100_000, "bytes=99990-200000", 99990, 99_999),  # clipped to the representation (§14.1.2)
        (100_000, "bytes=-10", 99990, 99_999),
        (100_000, "bytes=-200000", 0, 99_999),  # a suffix longer than the whole: all of it
        (100, "bytes=10-19", 10, 19),  # a small object answers ranges too
        (3 << 20, "bytes=1048576-2097151", 1 << 20, (2 << 20) - 1),  # a slice, as the cache asks
    ],
)
async def test_bytes_single_range_is_a_206(client: Client, n: int, value: str, first: int, last: int) -> None:
    """RFC 9110 §14.2 / §15.3.7: one satisfiable range gets a 206 with exactly those bytes."""
    resp = await client.get(f"/bytes/{n}", headers={"Range": value})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{n}"
    assert resp.headers["Content-Length"] == str(last - first + 1)
    assert resp.headers["ETag"] == f'"bytes-{n}"'
    assert resp.headers["Cache-Control"] == "max-age=60"
    assert await resp.read() == pattern(n)[first : last + 1]


async def test_bytes_full_answers_advertise_ranges(client: Client) -> None:
    for path in ("/bytes/100", "/bytes/100000", "/bytes/5000?chunked=1"):
        resp = await client.get(path)
        assert resp.status == 200
        assert resp.headers["Accept-Ranges"] == "bytes"


@pytest.mark.parametrize("value", ["bytes=100000-", "bytes=200000-300000", "bytes=-0"])
async def test_bytes_unsatisfiable_range_is_a_416(client: Client, value: str) -> None:
    """RFC 9110 §15.5.17: no byte selected; Content-Range gives the length; nothing to store."""
    resp = await client.get("/bytes/100000", headers={"Range": value})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */100000"
    assert "Cache-Control" not in resp.headers


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=0-9, 20-29"},  # several ranges: the stub sends the whole (§14.2 allows it)
        {"Range": "items=0-9"},  # another unit
        {"Range": "bytes=9-0"},  # malformed
        {"Range": "bytes=0-9", "If-Range": '"another"'},  # the client's copy is outdated (§13.1.5)
        {"Range": "bytes=0-9", "If-Range": 'W/"bytes-100000"'},  # a weak tag never matches If-Range
        {"Range": "bytes=0-9", "If-Range": "Tue, 14 Nov 2023 22:13:20 GMT"},  # no Last-Modified to match
    ],
)
async def test_bytes_range_ignored_gives_the_whole(client: Client, headers: dict[str, str]) -> None:
    resp = await client.get("/bytes/100000", headers=headers)
    assert resp.status == 200
    assert "Content-Range" not in resp.headers
    assert await resp.read() == pattern(100_000)


async def test_bytes_range_with_if_range_match_and_preconditions(client: Client) -> None:
    matching = await client.get("/bytes/100000", headers={"Range": "bytes=5-9", "If-Range": '"bytes-100000"'})
    assert matching.status == 206
    assert await matching.read() == pattern(100_000)[5:10]
    # If-None-Match is evaluated before Range (RFC 9110 §13.2.2): a 304, not a 206.
    both = await client.get(
        "/bytes/100000", headers={"Range": "bytes=5-9", "If-None-Match": '"bytes-100000"'}
    )
    assert both.status == 304
    # Range applies to GET only: a HEAD gets the whole representation's head.
    head = await client.head("/bytes/100000", headers={"Range": "bytes=5-9"})
    assert head.status == 200
    assert head.headers["Content-Length"] == "100000"
    # A range of a chunked route is still one 206 of known length.
    chunked = await client.get("/bytes/5000?chunked=1", headers={"Range": "bytes=4990-"})
    assert chunked.status == 206
    assert chunked.headers["Content-Length"] == "10"
    assert await chunked.read() == pattern(5000)[4990:]


# --- delays and failures -----------------------------------------------------------------------


async def test_ms_delays_any_route(client: Client) -> None:
    start = time.monotonic()
    resp = await client.get("/max-age/60?ms=120")
    assert resp.status == 200
    assert time.monotonic() - start >= 0.1
    start = time.monotonic()
    await client.get("/slow?ms=60")
    assert time.monotonic() - start >= 0.05


async def test_stall_answers_after_ms(client: Client) -> None:
    start = time.monotonic()
    resp = await client.get("/stall?ms=80")
    assert resp.status == 200
    assert time.monotonic() - start >= 0.07


async def test_stall_triggers_a_client_read_timeout(client: Client) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await client.get("/stall", timeout=aiohttp.ClientTimeout(sock_read=0.1))
    assert await get_json(client, "/__hits?path=/stall") == {"path": "/stall", "count": 1}


@pytest.mark.parametrize(("query", "status"), [("", 503), ("?status=500", 500), ("?status=404", 404)])
async def test_fail(client: Client, query: str, status: int) -> None:
    resp = await client.get(f"/fail{query}")
    assert resp.status == status
    assert f"status={status}" in await resp.text()


async def test_drop_truncates_the_body(client: Client) -> None:
    resp = await client.get("/drop")
    assert resp.headers["Content-Length"] == "1000"
    assert resp.headers["Cache-Control"] == "max-age=60"
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    resp = await client.get("/drop?n=100000")
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


async def test_malformed_is_a_client_error(client: Client) -> None:
    for kind in ("status", "header", "length", "garbage"):
        with pytest.raises(aiohttp.ClientResponseError):
            await client.get(f"/malformed?kind={kind}")


async def test_reset_disconnects_without_a_response(client: Client) -> None:
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.get("/reset")
    # the server is unharmed
    assert (await client.get("/max-age/1")).status == 200


# --- configurable routes -----------------------------------------------------------------------


async def test_respond_sets_headers_verbatim(client: Client) -> None:
    resp = await client.get(
        "/respond",
        params=[
            ("status", "203"),
            ("h", "Cache-Control: max-age=10"),
            ("h", "Cache-Control: max-age=20"),
            ("h", "CDN-Cache-Control:max-age=300"),
            ("body", "hello"),
        ],
    )
    assert resp.status == 203
    assert resp.headers.getall("Cache-Control") == ["max-age=10", "max-age=20"]
    assert resp.headers["CDN-Cache-Control"] == "max-age=300"
    assert await resp.text() == "hello"
    assert resp.headers["Date"] == http_date(T0)

    own_date = await client.get("/respond", params={"h": "Date: Mon, 01 Jan 2001 00:00:00 GMT"})
    assert own_date.headers.getall("Date") == ["Mon, 01 Jan 2001 00:00:00 GMT"]


async def test_echo(client: Client) -> None:
    resp = await client.put("/echo?a=1&b=2", data=b"abc", headers={"X-Forwarded-Host": "evil"})
    assert resp.headers["Cache-Control"] == "no-store"
    data = await resp.json()
    assert data["method"] == "PUT"
    assert data["path"] == "/echo"
    assert data["query"] == "a=1&b=2"
    assert data["body_length"] == 3
    assert ["X-Forwarded-Host", "evil"] in data["headers"]
    assert (await client.get("/echo?max_age=30")).headers["Cache-Control"] == "max-age=30"


async def test_tags(client: Client) -> None:
    resp = await client.get("/tags?keys=a,b")
    assert resp.headers["Surrogate-Key"] == "a b"
    assert resp.headers["Cache-Tag"] == "a,b"


# --- JSON API ----------------------------------------------------------------------------------


async def test_api_get_and_conditional(client: Client) -> None:
    resp = await client.get("/api/items/1")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "max-age=60"
    assert resp.headers["ETag"] == '"1-v1"'
    assert await resp.json() == {"id": "1", "value": "one", "version": 1}
    assert (await client.get("/api/items/1", headers={"If-None-Match": '"1-v1"'})).status == 304
    missing = await client.get("/api/items/nope")
    assert missing.status == 404
    assert missing.headers["Cache-Control"] == "max-age=60"
    listing = await client.get("/api/items")
    assert [item["id"] for item in await listing.json()] == ["1", "2"]


async def test_api_put_changes_the_etag(client: Client) -> None:
    resp = await client.put("/api/items/1", json={"value": "uno"})
    assert resp.status == 200
    assert resp.headers["ETag"] == '"1-v2"'
    assert resp.headers["Content-Location"] == "/api/items/1"  # the content is the new representation
    assert await resp.json() == {"id": "1", "value": "uno", "version": 2}
    get = await client.get("/api/items/1", headers={"If-None-Match": '"1-v1"'})
    assert get.status == 200
    assert get.headers["ETag"] == '"1-v2"'

    created = await client.put("/api/items/new", json={"value": 5})
    assert created.status == 201
    assert created.headers["Location"] == "/api/items/new"
    assert created.headers["ETag"] == '"new-v1"'

    bad = await client.put("/api/items/1", data=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status == 400
    assert (await (await client.get("/api/items/1")).json())["value"] == "uno"


async def test_api_delete_and_post(client: Client) -> None:
    assert (await client.delete("/api/items/2")).status == 204
    assert (await client.delete("/api/items/2")).status == 404
    assert (await client.get("/api/items/2")).status == 404
    recreated = await client.put("/api/items/2", json={"value": "again"})
    assert recreated.status == 201
    assert recreated.headers["ETag"] == '"2-v2"'  # versions never repeat for an id

    posted = await client.post("/api/items", json={"value": "x"})
    assert posted.status == 201
    item = await posted.json()
    assert posted.headers["Location"] == f"/api/items/{item['id']}"
    assert posted.headers["Content-Location"] == posted.headers["Location"]
    assert (await (await client.get(posted.headers["Location"])).json())["value"] == "x"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("PUT", "/api/items/1", 500), ("DELETE", "/api/items/1", 503), ("POST", "/api/items", 409)],
)
async def test_api_forced_status_changes_nothing(client: Client, method: str, path: str, status: int) -> None:
    resp = await client.request(method, f"{path}?status={status}", json={"value": "ignored"})
    assert resp.status == status
    after = await client.get("/api/items/1")
    assert after.headers["ETag"] == '"1-v1"'
    assert len(await (await client.get("/api/items")).json()) == 2


# --- CLI ---------------------------------------------------------------------------------------


def test_parse_listen_and_config(tmp_path: Path) -> None:
    assert parse_listen("127.0.0.1:8081") == ("127.0.0.1", 8081)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError):
        parse_listen("localhost")
    config = tmp_path / "minicdn.yaml"
    config.write_text("origin:\n  url: http://x\norigin_stub:\n  listen: 127.0.0.1:9999\n")
    assert listen_from_config(str(config)) == "127.0.0.1:9999"
    config.write_text("origin:\n  url: http://x\n")
    assert listen_from_config(str(config)) is None


def test_http_date_round_trip() -> None:
    assert parse_http_date(http_date(T0)) == T0
    assert parse_http_date("not a date") is None


async def test_cli_subprocess_serves_and_exits_cleanly() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "origin_stub",
        "--listen",
        f"127.0.0.1:{port}",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=15)
        assert line.decode().strip() == f"origin stub listening on http://127.0.0.1:{port}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/max-age/60") as resp,
        ):
            assert resp.status == 200
            assert resp.headers["Cache-Control"] == "max-age=60"
            assert resp.headers["X-Origin-Hits"] == "1"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_json_hits_body_shape(client: Client) -> None:
    await client.get("/max-age/60")
    raw = await (await client.get("/__hits")).text()
    assert json.loads(raw) == {"total": 1, "paths": {"/max-age/60": 1}}
