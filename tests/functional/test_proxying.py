"""What a reverse proxy must do to messages on their way through, cached or not.

Hop-by-hop fields, Via / X-Forwarded-*, the Host sent to the origin, every method with its
body streamed, RFC 9111 §4.4 invalidation, objects above the size limit, client
conditionals, Set-Cookie and Authorization (§3.5), and plain-text errors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from origin_stub.behaviours import pattern
from proxy.config import OriginConfig, PolicyConfig
from tests.functional.conftest import (
    FakeClock,
    Origin,
    Proxy,
    ProxyFactory,
    StartScripted,
    cache_status,
    decode_json,
    free_port,
    logged_header,
    make_config,
    raw_exchange,
    raw_status,
)

HOP_BY_HOP_REQUEST = {
    "Connection": "X-Secret, X-Other",
    "X-Secret": "1",
    "X-Other": "2",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Proxy-Authorization": "Basic c2VjcmV0OnNlY3JldA==",
    "Proxy-Connection": "keep-alive",
}

RESPONSE_HOP = ["Connection:X-Hop", "X-Hop:1", "Keep-Alive:timeout=7", "Proxy-Authenticate:Basic"]


def _origin_cfg(origin: Origin, **fields: Any) -> OriginConfig:
    return replace(OriginConfig(url=origin.url, connect_timeout=2.0, read_timeout=2.0), **fields)


async def _direct(
    origin: Origin, method: str, path: str, **kwargs: Any
) -> tuple[aiohttp.ClientResponse, bytes]:
    """A request straight to the origin (bypassing the proxy)."""
    async with origin.session.request(method, origin.url + path, **kwargs) as resp:
        return resp, await resp.read()


async def _raw(proxy: Proxy, data: bytes) -> bytes:
    """Raw bytes to the proxy's socket; its answer up to the close."""
    assert proxy.server.port is not None
    return await raw_exchange(proxy.server.host, proxy.server.port, data)


def _assert_no_hop_fields(record: dict[str, Any]) -> None:
    for name in ("X-Secret", "X-Other", "Keep-Alive", "TE", "Proxy-Authorization", "Proxy-Connection"):
        assert logged_header(record, name) == [], name
    for value in logged_header(record, "Connection"):
        assert "secret" not in value.lower() and "other" not in value.lower(), value


# --------------------------------------------------------------------------- hop-by-hop


async def test_hop_by_hop_request_fields_never_reach_the_origin_on_a_cacheable_get(
    proxy: Proxy, origin: Origin
) -> None:
    resp, body = await proxy.get("/echo?max_age=60", headers=HOP_BY_HOP_REQUEST)
    assert resp.status == 200, body
    [record] = await origin.requests("/echo")
    _assert_no_hop_fields(record)
    # The end-to-end fields of the same request did arrive.
    resp, body = await proxy.get("/echo?max_age=60&e2e=1", headers={**HOP_BY_HOP_REQUEST, "X-E2E": "yes"})
    assert logged_header((await origin.requests("/echo"))[-1], "X-E2E") == ["yes"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_hop_by_hop_request_fields_never_reach_the_origin_on_a_pass_through(
    proxy: Proxy, origin: Origin, method: str
) -> None:
    async with proxy.request(method, "/echo", headers=HOP_BY_HOP_REQUEST, data=b"payload") as resp:
        body = await resp.read()
    assert resp.status == 200, body
    [record] = await origin.requests("/echo")
    assert record["method"] == method
    _assert_no_hop_fields(record)


async def test_hop_by_hop_response_fields_never_reach_the_client(
    proxy: Proxy, origin: Origin, clock: FakeClock
) -> None:
    cacheable = [*RESPONSE_HOP, "Cache-Control:max-age=60", "X-Kept:yes"]
    # Sanity: the origin really sends them.
    direct, _ = await _direct(origin, "GET", "/respond", params=[("h", h) for h in cacheable])
    assert direct.headers["X-Hop"] == "1"
    assert direct.headers["Keep-Alive"] == "timeout=7"

    def check(resp: aiohttp.ClientResponse) -> None:
        assert resp.status == 200
        assert resp.headers.get("X-Kept") == "yes"
        for name in ("X-Hop", "Keep-Alive", "Proxy-Authenticate"):
            assert name not in resp.headers, name
        assert "x-hop" not in resp.headers.get("Connection", "").lower()

    params = [("h", h) for h in cacheable] + [("body", "cached")]
    r1, _ = await proxy.get("/respond", params=params)
    check(r1)
    assert "stored" in cache_status(r1)
    clock.advance(1)
    r2, b2 = await proxy.get("/respond", params=params)
    check(r2)
    assert cache_status(r2).startswith("edge-test;hit")
    assert b2 == b"cached"

    # Not storable (no freshness information): streamed through.
    params = [("h", h) for h in [*RESPONSE_HOP, "X-Kept:yes"]] + [("body", "passed")]
    r3, b3 = await proxy.get("/respond", params=params)
    check(r3)
    assert "stored" not in cache_status(r3)
    assert b3 == b"passed"
    # A pass-through method.
    async with proxy.request("POST", "/respond", params=params) as r4:
        await r4.read()
    check(r4)
    assert "fwd=bypass" in cache_status(r4)
    assert await origin.hits("/respond") == 4  # 1 direct + miss + no-store + POST


# --------------------------------------------------------------------------- Via, X-Forwarded-*


async def test_via_and_forwarded_fields(proxy: Proxy, origin: Origin) -> None:
    resp, body = await proxy.get("/echo", headers={"Via": "1.0 client-side-proxy"})
    assert resp.status == 200, body
    assert resp.headers.getall("Via")[-1] == "1.1 edge-test"
    [record] = await origin.requests("/echo")
    via = ", ".join(logged_header(record, "Via"))
    assert "1.0 client-side-proxy" in via
    assert via.rstrip().endswith("1.1 edge-test")
    assert logged_header(record, "X-Forwarded-For") == ["127.0.0.1"]
    assert logged_header(record, "X-Forwarded-Proto") == ["http"]

    # An existing X-Forwarded-For is appended to, not replaced.
    async with proxy.request("POST", "/echo", headers={"X-Forwarded-For": "203.0.113.9"}, data=b"x") as r:
        await r.read()
    assert r.headers.getall("Via")[-1] == "1.1 edge-test"
    record = (await origin.requests("/echo"))[-1]
    assert logged_header(record, "X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]


async def test_via_on_a_cache_hit(proxy: Proxy, origin: Origin, clock: FakeClock) -> None:
    await proxy.get("/max-age/60")
    clock.advance(1)
    resp, _ = await proxy.get("/max-age/60")
    assert cache_status(resp).startswith("edge-test;hit")
    assert resp.headers.getall("Via") == ["1.1 edge-test"]  # once, not once per delivery
    assert await origin.hits("/max-age/60") == 1


# --------------------------------------------------------------------------- Host


async def test_host_sent_to_the_origin_is_the_origins_by_default(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    proxy = await start_proxy(origin=_origin_cfg(origin))  # the shipped default: host_header "origin"
    await proxy.get("/echo", headers={"Host": "cdn.example"})
    async with proxy.request("PUT", "/echo", headers={"Host": "cdn.example"}, data=b"x") as r:
        await r.read()
    records = await origin.requests("/echo")
    assert len(records) == 2
    authority = f"{origin.server.host}:{origin.server.port}"
    for record in records:
        assert logged_header(record, "Host") == [authority]


async def test_host_sent_to_the_origin_is_the_clients_when_configured(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    proxy = await start_proxy(origin=_origin_cfg(origin, host_header="client"))
    await proxy.get("/echo", headers={"Host": "cdn.example"})
    async with proxy.request("PUT", "/echo", headers={"Host": "cdn.example:8443"}, data=b"x") as r:
        await r.read()
    records = await origin.requests("/echo")
    assert [logged_header(r, "Host") for r in records] == [["cdn.example"], ["cdn.example:8443"]]


async def test_different_hosts_are_different_cache_entries(
    start_proxy: ProxyFactory, origin: Origin, clock: FakeClock
) -> None:
    proxy = await start_proxy(origin=_origin_cfg(origin, host_header="client"))
    _, a1 = await proxy.get("/echo?max_age=60", headers={"Host": "a.example"})
    _, b1 = await proxy.get("/echo?max_age=60", headers={"Host": "b.example"})
    clock.advance(1)
    _, a2 = await proxy.get("/echo?max_age=60", headers={"Host": "a.example"})
    assert a2 == a1 != b1
    assert await origin.hits("/echo") == 2


# --------------------------------------------------------------------------- methods and bodies


async def test_api_methods_reach_the_origin_with_their_bodies(proxy: Proxy, origin: Origin) -> None:
    put_body = json.dumps({"value": "five"}).encode()
    async with proxy.request("PUT", "/api/items/5", data=put_body) as r:
        assert r.status == 201, await r.read()
        assert decode_json(await r.read()) == {"id": "5", "value": "five", "version": 1}
    post_body = json.dumps({"value": "posted"}).encode()
    async with proxy.request("POST", "/api/items", data=post_body) as r:
        assert r.status == 201
        created = decode_json(await r.read())
    assert created["value"] == "posted"
    async with proxy.request("DELETE", "/api/items/2") as r:
        assert r.status == 204
        assert await r.read() == b""

    puts = await origin.requests("/api/items/5")
    assert [(p["method"], p["body_length"]) for p in puts] == [("PUT", len(put_body))]
    posts = await origin.requests("/api/items")
    assert [(p["method"], p["body_length"]) for p in posts] == [("POST", len(post_body))]
    deletes = await origin.requests("/api/items/2")
    assert [(p["method"], p["body_length"]) for p in deletes] == [("DELETE", 0)]

    # The origin really changed: item 5 exists, item 2 is gone.
    _, body = await _direct(origin, "GET", "/api/items")
    assert [item["id"] for item in json.loads(body)] == ["1", "3", "5"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_is_forwarded_with_its_body(proxy: Proxy, origin: Origin, method: str) -> None:
    payload = b"0123456789" * 100
    async with proxy.request(method, "/echo?x=1", data=payload) as resp:
        body = await resp.read()
    assert resp.status == 200, body
    echoed = decode_json(body)
    assert (echoed["method"], echoed["query"], echoed["body_length"]) == (method, "x=1", len(payload))
    assert "fwd=bypass" in cache_status(resp)
    [record] = await origin.requests("/echo")
    assert (record["method"], record["body_length"]) == (method, len(payload))


async def _chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _sink_app() -> web.Application:
    """An origin that reads any request body as a stream and answers its length and digest.

    (The origin stub reads bodies whole, within aiohttp's 1 MiB default request limit.)
    """

    async def sink(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        length = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
        return web.json_response(
            {"method": request.method, "length": length, "sha256": digest.hexdigest()},
            headers={"Cache-Control": "no-store"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", sink)
    return app


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_large_request_body_arrives_intact(
    start_proxy: ProxyFactory, aiohttp_server: Any, method: str, framing: str
) -> None:
    sink = await aiohttp_server(_sink_app())
    proxy = await start_proxy(origin_url=str(sink.make_url("")).rstrip("/"))
    payload = pattern(3 * 1024 * 1024 + 7)
    data: Any = payload if framing == "content-length" else _chunks(payload)
    async with proxy.request(method, "/upload", data=data) as resp:
        body = await resp.read()
    assert resp.status == 200, body
    assert decode_json(body) == {
        "method": method,
        "length": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }


# --------------------------------------------------------------------------- §4.4 invalidation


async def test_successful_put_invalidates_the_cached_get(
    proxy: Proxy, origin: Origin, clock: FakeClock
) -> None:
    _, first = await proxy.get("/api/items/1")
    clock.advance(1)
    r, again = await proxy.get("/api/items/1")
    assert cache_status(r).startswith("edge-test;hit")
    assert again == first
    assert await origin.hits("/api/items/1") == 1

    async with proxy.request("PUT", "/api/items/1", json={"value": "uno"}) as resp:
        assert resp.status == 200, await resp.read()
    assert await origin.hits("/api/items/1") == 2

    r, body = await proxy.get("/api/items/1")
    assert "hit" not in cache_status(r).split(";")
    assert decode_json(body)["value"] == "uno"
    assert await origin.hits("/api/items/1") == 3


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_failed_unsafe_request_invalidates_nothing(
    proxy: Proxy, origin: Origin, clock: FakeClock, method: str
) -> None:
    _, first = await proxy.get("/api/items/1")
    async with proxy.request(method, "/api/items/1?status=500", json={"value": "x"}) as resp:
        assert resp.status == 500
        await resp.read()
    clock.advance(1)
    r, body = await proxy.get("/api/items/1")
    assert cache_status(r).startswith("edge-test;hit")
    assert body == first
    assert [x["method"] for x in await origin.requests("/api/items/1")] == ["GET", method]


async def test_post_invalidates_the_target_and_the_location(
    proxy: Proxy, origin: Origin, clock: FakeClock
) -> None:
    # The list, and a cached 404 for the id the POST will create (the API's 404 has max-age=60).
    _, listing = await proxy.get("/api/items")
    r404, _ = await proxy.get("/api/items/3")
    assert r404.status == 404 and "stored" in cache_status(r404)
    clock.advance(1)
    assert cache_status((await proxy.get("/api/items/3"))[0]).startswith("edge-test;hit")

    async with proxy.request("POST", "/api/items", json={"value": "three"}) as resp:
        assert resp.status == 201
        assert resp.headers["Location"] == "/api/items/3"
        await resp.read()

    r, body = await proxy.get("/api/items")
    assert "hit" not in cache_status(r).split(";")
    assert b"three" in body and body != listing
    r, body = await proxy.get("/api/items/3")
    assert r.status == 200, body
    assert decode_json(body)["value"] == "three"
    assert [x["method"] for x in await origin.requests("/api/items/3")] == ["GET", "GET"]


async def test_rfc9111_s4_4_a_relative_location_is_resolved_against_the_target_uri(
    start_proxy: ProxyFactory, scripted_origin: StartScripted
) -> None:
    # RFC 3986 §5.2: "Content-Location: b" on an answer for /dir/a names /dir/b, not /b.
    def answer(fields: str, body: bytes) -> bytes:
        return f"HTTP/1.1 200 OK\r\n{fields}Content-Length: {len(body)}\r\n\r\n".encode() + body

    upstream = await scripted_origin(
        [
            answer("Cache-Control: max-age=60\r\n", b"b, first"),
            answer("Content-Location: b\r\n", b"done"),
            answer("Cache-Control: max-age=60\r\n", b"b, second"),
        ]
    )
    proxy = await start_proxy(origin_url=upstream.url)
    assert (await proxy.get("/dir/b"))[1] == b"b, first"
    async with proxy.request("POST", "/dir/a", data=b"x") as resp:
        assert resp.status == 200 and await resp.read() == b"done"
    r, body = await proxy.get("/dir/b")
    assert body == b"b, second" and "hit" not in cache_status(r).split(";")


# --------------------------------------------------------------------------- size limit


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_response_above_max_object_size_streams_through_and_is_not_stored(
    start_proxy: ProxyFactory, origin: Origin, tmp_path: Path, clock: FakeClock, chunked: bool
) -> None:
    cache = replace(make_config(origin.url, tmp_path / "l2").cache, max_object_size=64 * 1024)
    proxy = await start_proxy(cache=cache)
    n = 200_000
    path = f"/bytes/{n}" + ("?chunked=1" if chunked else "")
    for attempt in (1, 2):
        resp, body = await proxy.get(path)
        assert resp.status == 200
        assert len(body) == n
        assert body == pattern(n)
        ours = cache_status(resp)
        assert 'detail="too large"' in ours, ours
        assert "stored" not in ours and "hit" not in ours.split(";")
        assert await origin.hits(f"/bytes/{n}") == attempt
        clock.advance(1)

    # Just under the limit is stored as usual.
    small = 60 * 1024
    small_path = f"/bytes/{small}" + ("?chunked=1" if chunked else "")
    await proxy.get(small_path)
    resp, body = await proxy.get(small_path)
    assert cache_status(resp).startswith("edge-test;hit")
    assert body == pattern(small)
    assert await origin.hits(f"/bytes/{small}") == 1


# --------------------------------------------------------------------------- conditionals


async def test_client_conditional_without_a_fresh_entry(proxy: Proxy, origin: Origin) -> None:
    # /etag?max_age=0: nothing fresh to answer from; the client's validator decides 304/200.
    r, body = await proxy.get("/etag?max_age=0", headers={"If-None-Match": '"v1"'})
    assert r.status == 304, body
    assert body == b""
    assert r.headers["ETag"] == '"v1"'
    assert await origin.hits("/etag") == 1
    # The proxy's own fetch was unconditional (it needs the body for other clients).
    [record] = await origin.requests("/etag")
    assert logged_header(record, "If-None-Match") == []

    r, body = await proxy.get("/etag?max_age=0", headers={"If-None-Match": '"other"'})
    assert r.status == 200
    assert body == b"origin stub /etag hit=1\n"
    assert r.headers["ETag"] == '"v1"'

    r, body = await proxy.get("/etag?max_age=0&tag=v2", headers={"If-None-Match": '"v1"'})
    assert r.status == 200
    assert r.headers["ETag"] == '"v2"'
    assert body.startswith(b"origin stub /etag hit=")


async def test_max_age_0_is_revalidated_before_every_use(proxy: Proxy, origin: Origin) -> None:
    r1, b1 = await proxy.get("/etag?max_age=0")
    assert "stored" in cache_status(r1)
    r2, b2 = await proxy.get("/etag?max_age=0", headers={"If-None-Match": '"other"'})
    ours = cache_status(r2)
    assert "fwd=stale" in ours and "fwd-status=304" in ours, ours
    assert b2 == b1
    assert [logged_header(x, "If-None-Match") for x in await origin.requests("/etag")] == [[], ['"v1"']]


async def test_client_conditional_on_a_pass_through(proxy: Proxy, origin: Origin) -> None:
    # /no-store has no validator: a conditional gets the full response, every time from the origin.
    for attempt in (1, 2):
        r, body = await proxy.get("/no-store", headers={"If-None-Match": '"v1"'})
        assert r.status == 200
        assert body == f"origin stub /no-store hit={attempt}\n".encode()
    # If-Match is left to the origin (RFC 9110 §13.2.1): the origin sees it and answers.
    r, _ = await proxy.get("/etag?max_age=60", headers={"If-Match": '"v1"'})
    assert r.status == 200
    [record] = await origin.requests("/etag")
    assert logged_header(record, "If-Match") == ['"v1"']
    assert await origin.hits("/no-store") == 2


# --------------------------------------------------------------------------- Set-Cookie


async def test_set_cookie_responses_are_not_stored_by_default(proxy: Proxy, origin: Origin) -> None:
    r1, _ = await proxy.get("/set-cookie")
    r2, _ = await proxy.get("/set-cookie")
    assert r1.headers.getall("Set-Cookie") == ["session=1; Path=/"]
    assert r2.headers.getall("Set-Cookie") == ["session=2; Path=/"]
    assert 'detail="set-cookie"' in cache_status(r1)
    assert await origin.hits("/set-cookie") == 2


async def test_set_cookie_stored_without_the_cookie_when_configured(
    start_proxy: ProxyFactory, origin: Origin, clock: FakeClock
) -> None:
    proxy = await start_proxy(policy=replace(PolicyConfig(), store_set_cookie=True))
    r1, b1 = await proxy.get("/set-cookie")
    assert "stored" in cache_status(r1)
    # The client whose request fetched it still gets its own cookie.
    assert r1.headers.getall("Set-Cookie", []) == ["session=1; Path=/"]
    clock.advance(1)
    r2, b2 = await proxy.get("/set-cookie")
    assert cache_status(r2).startswith("edge-test;hit")
    assert b2 == b1
    assert "Set-Cookie" not in r2.headers
    assert await origin.hits("/set-cookie") == 1


SET_COOKIE2 = "/respond?h=Cache-Control:max-age=60&h=Set-Cookie2:sid=alice;Version=1&body=alices"


async def test_a_set_cookie2_response_is_not_stored_nor_served_to_another_client(
    proxy: Proxy, origin: Origin
) -> None:
    """Set-Cookie2 (RFC 2965, obsolete but still sent) sets a cookie for one client as Set-Cookie
    does: it was stored and its cookie handed to every later client (requirements §1)."""
    r1, _ = await proxy.get(SET_COOKIE2)
    r2, _ = await proxy.get(SET_COOKIE2)
    assert r1.headers.getall("Set-Cookie2") == ["sid=alice;Version=1"]
    assert 'detail="set-cookie"' in cache_status(r1)
    assert "hit" not in cache_status(r2).split(";")
    assert await origin.hits("/respond") == 2


async def test_a_set_cookie2_response_is_stored_without_the_cookie_when_configured(
    start_proxy: ProxyFactory, origin: Origin, clock: FakeClock
) -> None:
    """With policy.store_set_cookie, Set-Cookie2 stays with the client whose request fetched it, as
    Set-Cookie does: it was stored with the response and served from the cache to everyone."""
    proxy = await start_proxy(policy=replace(PolicyConfig(), store_set_cookie=True))
    r1, _ = await proxy.get(SET_COOKIE2)
    assert "stored" in cache_status(r1)
    assert r1.headers.getall("Set-Cookie2") == ["sid=alice;Version=1"]
    clock.advance(1)
    r2, b2 = await proxy.get(SET_COOKIE2)
    assert cache_status(r2).startswith("edge-test;hit") and b2 == b"alices"
    assert "Set-Cookie2" not in r2.headers
    assert await origin.hits("/respond") == 1


# --------------------------------------------------------------------------- Authorization


async def test_authorization_request_not_stored_without_explicit_permission(
    proxy: Proxy, origin: Origin
) -> None:
    auth = {"Authorization": "Bearer x"}
    r1, _ = await proxy.get("/max-age/60", headers=auth)
    r2, _ = await proxy.get("/max-age/60", headers=auth)
    assert 'detail="authorization"' in cache_status(r1)
    assert "hit" not in cache_status(r2).split(";")
    # Nor served to an anonymous client afterwards.
    r3, _ = await proxy.get("/max-age/60")
    assert "hit" not in cache_status(r3).split(";")
    assert await origin.hits("/max-age/60") == 3
    assert [logged_header(r, "Authorization") for r in await origin.requests("/max-age/60")] == [
        ["Bearer x"],
        ["Bearer x"],
        [],
    ]


async def test_authorization_request_stored_when_public(
    proxy: Proxy, origin: Origin, clock: FakeClock
) -> None:
    path = "/respond?h=Cache-Control:public,max-age=60&body=shared"
    r1, _ = await proxy.get(path, headers={"Authorization": "Bearer x"})
    assert "stored" in cache_status(r1)
    clock.advance(1)
    r2, b2 = await proxy.get(path, headers={"Authorization": "Bearer x"})
    assert cache_status(r2).startswith("edge-test;hit")
    assert b2 == b"shared"
    assert await origin.hits("/respond") == 1


# --------------------------------------------------------------------------- error bodies


async def test_error_responses_are_short_plain_text(start_proxy: ProxyFactory, origin: Origin) -> None:
    dead = await start_proxy(origin_url=f"http://127.0.0.1:{free_port()}")
    live = await start_proxy()
    cases = [
        (dead, "GET", "/max-age/60", {}, 502),
        (dead, "PUT", "/api/items/1", {}, 502),
        (live, "GET", "/max-age/60", {"Cache-Control": "only-if-cached"}, 504),
        (live, "GET", "/reset", {}, 502),
    ]
    for p, method, path, headers, status in cases:
        async with p.request(method, path, headers=headers) as resp:
            body = await resp.read()
        assert resp.status == status, (method, path, body)
        assert resp.headers["Content-Type"].startswith("text/plain"), path
        assert resp.headers["Cache-Control"] == "no-store"
        assert b"Traceback" not in body and b'File "' not in body
        assert body.endswith(b"\n") and body.count(b"\n") == 1 and len(body) < 100
        assert cache_status(resp).startswith("edge-test;")

    answer = await _raw(live, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert raw_status(answer) == 400
    assert b"Traceback" not in answer
    assert b"invalid Host header\n" in answer
    assert await origin.hits("/max-age/60") == 0
