"""Bad input from either side: malformed client requests, a misbehaving or absent origin,
unkeyed (poisoning) request headers and hostile header sets.

The proxy must answer with a short 4xx/5xx, never store a broken response, never leak a
traceback, and keep serving afterwards.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import OriginConfig
from tests.functional.conftest import (
    FakeClock,
    Origin,
    Proxy,
    ProxyFactory,
    cache_status,
    decode_json,
    free_port,
    logged_header,
    make_config,
    raw_exchange,
    raw_status,
)


def _origin_cfg(origin: Origin, **fields: Any) -> OriginConfig:
    """The harness's origin settings (short timeouts) with some fields replaced."""
    return replace(OriginConfig(url=origin.url, connect_timeout=2.0, read_timeout=2.0), **fields)


async def _still_serves(proxy: Proxy, origin: Origin, path: str = "/max-age/60") -> None:
    """A normal GET through the same proxy works and reaches the origin once more."""
    before = await origin.hits(path)
    resp, body = await proxy.get(path, params={"after": "bad-input"})
    assert resp.status == 200, body
    assert body.startswith(b"origin stub " + path.encode())
    assert await origin.hits(path) == before + 1


async def _raw(proxy: Proxy, data: bytes) -> bytes:
    """Raw bytes to the proxy's socket; its answer up to the close."""
    assert proxy.server.port is not None
    return await raw_exchange(proxy.server.host, proxy.server.port, data)


def _assert_plain_error(resp: aiohttp.ClientResponse, body: bytes, status: int, reason: str) -> None:
    assert resp.status == status, body
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert body.decode().strip() == reason
    assert b"Traceback" not in body
    assert len(body) < 200
    ours = cache_status(resp)
    assert ours.startswith("edge-test;"), resp.headers.get("Cache-Status")
    assert "stored" not in ours


# --------------------------------------------------------------------------- malformed requests

BAD_REQUESTS = {
    "request-line": b"GARBAGE\r\n\r\n",
    "header-without-colon": b"GET /max-age/60 HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
    "over-long-header": b"GET /max-age/60 HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
    "content-length-not-a-number": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "content-length-negative": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    "content-length-conflicting": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"
    ),
}


@pytest.mark.parametrize("raw", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_malformed_request_gets_4xx_and_proxy_keeps_serving(
    proxy: Proxy, origin: Origin, raw: bytes
) -> None:
    answer = await _raw(proxy, raw)
    assert 400 <= raw_status(answer) < 500, answer[:300]
    assert b"Traceback" not in answer
    # Nothing of it reached the origin.
    assert await origin.hits() == 0
    await _still_serves(proxy, origin)


UNKNOWN_METHODS = {
    "a-token-llhttp-does-not-know": (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", [501], b"method BREW"),
    "lower-case": (b"get /max-age/60 HTTP/1.1\r\nHost: x\r\n\r\n", [501], b"method get"),  # case-sensitive
    "after-a-known-one": (
        b"GET /max-age/60 HTTP/1.1\r\nHost: x\r\n\r\nBREW /pot HTTP/1.1\r\nHost: x\r\n\r\n",
        [200, 501],
        b"method BREW",
    ),
    "not-http-after-a-request": (
        b"GET /max-age/60 HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03\x01\x02",
        [200, 400],
        b"",
    ),
    "not-http": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", [400], b""),
}


@pytest.mark.parametrize("raw, statuses, reason", UNKNOWN_METHODS.values(), ids=UNKNOWN_METHODS.keys())
async def test_an_unknown_method_is_501_not_implemented(
    proxy: Proxy, origin: Origin, raw: bytes, statuses: list[int], reason: bytes
) -> None:
    """RFC 9110 §9.1: a method the server does not recognise gets a 501 (it was a 400, "malformed
    request", which blamed the request's syntax); bytes that are not HTTP stay a 400."""
    answer = await _raw(proxy, raw)
    found = [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]
    assert found == statuses, answer[:500]
    assert reason in answer and b"Traceback" not in answer
    await _still_serves(proxy, origin)


async def test_rfc9112_s6_1_an_http10_request_with_transfer_encoding_closes_the_connection(
    proxy: Proxy, origin: Origin
) -> None:
    """ "A server ... that receives an HTTP/1.0 message containing a Transfer-Encoding header field
    MUST treat the message as if the framing is faulty ... and close the connection after
    processing the message": a 1.0 peer may not have meant chunked, whatever keep-alive it asked."""
    chunked = (
        b"POST /echo HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    after = b"GET /max-age/60 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
    answer = await _raw(proxy, chunked + b"3\r\nabc\r\n0\r\n\r\n" + after)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"200"], answer[:600]
    assert b"keep-alive" not in answer.split(b"\r\n\r\n", 1)[0].lower()
    await _still_serves(proxy, origin)


async def test_rfc9110_s10_1_1_a_get_whose_body_waits_for_100_continue_closes_after_its_answer(
    proxy: Proxy, origin: Origin
) -> None:
    """A GET's body is dropped unread, so no 100 (Continue) is sent for it; a client waiting for one
    may then skip the body, and its next request's first bytes would be dropped as that body. The
    answer says Connection: close and the connection ends."""
    head = b"GET /max-age/60 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"
    answer = await _raw(proxy, head)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"200"], answer[:600]
    assert b"connection: close" in answer.split(b"\r\n\r\n", 1)[0].lower(), answer[:600]
    await _still_serves(proxy, origin)


# --------------------------------------------------------------------------- origin failures


async def test_origin_reset_is_502_and_not_stored(proxy: Proxy, origin: Origin) -> None:
    per_request = []
    for _ in (1, 2):
        before = await origin.hits("/reset")
        resp, body = await proxy.get("/reset")
        _assert_plain_error(resp, body, 502, "origin closed the connection")
        per_request.append(await origin.hits("/reset") - before)
    # Each client request reaches the origin: nothing was stored. aiohttp's client retries an
    # idempotent request once after a disconnect (RFC 9112 §9.3.1 allows it), hence 1 or 2.
    assert per_request[0] in (1, 2)
    assert per_request[1] == per_request[0]
    await _still_serves(proxy, origin)


@pytest.mark.parametrize("kind", ["status", "header", "length", "garbage"])
async def test_malformed_origin_response_is_502_and_not_stored(
    proxy: Proxy, origin: Origin, kind: str
) -> None:
    per_request = []
    for _ in (1, 2):
        before = await origin.hits("/malformed")
        resp, body = await proxy.get("/malformed", params={"kind": kind})
        assert resp.status == 502, body
        assert b"Traceback" not in body
        assert resp.headers["Content-Type"].startswith("text/plain")
        assert "edge-test;" in cache_status(resp)
        per_request.append(await origin.hits("/malformed") - before)
    assert per_request[0] in (1, 2)  # see test_origin_reset_is_502_and_not_stored
    assert per_request[1] == per_request[0]
    await _still_serves(proxy, origin)


async def test_origin_stall_past_read_timeout_is_504_and_not_stored(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    proxy = await start_proxy(origin=_origin_cfg(origin, read_timeout=0.3))
    for attempt in (1, 2):
        resp, body = await proxy.get("/stall", params={"ms": "3000"})
        _assert_plain_error(resp, body, 504, "origin timed out")
        assert await origin.hits("/stall") == attempt
    # A short stall within the timeout is an ordinary, cacheable answer.
    resp, body = await proxy.get("/stall", params={"ms": "50"})
    assert resp.status == 200, body
    assert await origin.hits("/stall") == 3


async def test_origin_stall_on_pass_through_is_504(start_proxy: ProxyFactory, origin: Origin) -> None:
    proxy = await start_proxy(origin=_origin_cfg(origin, read_timeout=0.3))
    async with proxy.request("POST", "/stall?ms=3000", data=b"x") as resp:
        body = await resp.read()
    _assert_plain_error(resp, body, 504, "origin timed out")
    assert cache_status(resp) == 'edge-test;fwd=bypass;detail="origin timed out"'
    assert await origin.hits("/stall") == 1


async def test_body_dropped_midway_is_502_and_not_stored(proxy: Proxy, origin: Origin) -> None:
    # Small enough to be buffered for storage: the short body is detected before answering.
    for attempt in (1, 2):
        resp, body = await proxy.get("/drop", params={"n": "1000"})
        _assert_plain_error(resp, body, 502, "origin response body incomplete")
        assert await origin.hits("/drop") == attempt
    await _still_serves(proxy, origin)


async def test_small_pass_through_body_dropped_midway_is_a_clean_502(proxy: Proxy, origin: Origin) -> None:
    # Not stored (a request no-store, a POST) but small: read whole before answering, so the
    # client gets an error response instead of a connection cut after a 200 head.
    resp, body = await proxy.get("/drop", params={"n": "1000"}, headers={"Cache-Control": "no-store"})
    _assert_plain_error(resp, body, 502, "origin response body incomplete")
    async with proxy.request("POST", "/drop?n=1000", data=b"x") as resp:
        body = await resp.read()
    _assert_plain_error(resp, body, 502, "origin response body incomplete")
    assert await origin.hits("/drop") == 2
    await _still_serves(proxy, origin)


async def test_large_body_dropped_midway_breaks_the_client_connection(
    start_proxy: ProxyFactory, origin: Origin, tmp_path: Path
) -> None:
    # Larger than max_object_size: streamed through, so the 200 is already on its way when the
    # origin breaks off; the client must see a broken response, not a short complete-looking one.
    proxy = await start_proxy(
        cache=replace(make_config(origin.url, tmp_path / "l2").cache, max_object_size=64 * 1024)
    )
    n = 400_000
    for attempt in (1, 2):
        received = b""
        complete = False
        try:
            async with proxy.request("GET", f"/drop?n={n}") as resp:
                status = resp.status
                received = await resp.read()
                complete = True
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            complete = False
        assert not (complete and status == 200), (status, len(received))
        assert len(received) < n
        assert await origin.hits("/drop") == attempt
    await _still_serves(proxy, origin)


async def test_unreachable_origin_is_502(start_proxy: ProxyFactory, origin: Origin) -> None:
    port = free_port()
    proxy = await start_proxy(origin_url=f"http://127.0.0.1:{port}")
    for method in ("GET", "POST"):
        async with proxy.request(method, "/max-age/60") as resp:
            body = await resp.read()
        _assert_plain_error(resp, body, 502, "origin refused the connection")
    assert await origin.hits() == 0


# --------------------------------------------------------------------------- unkeyed headers

POISON = {
    "X-Forwarded-Host": "evil.example",
    "X-Original-URL": "/evil",
    "X-Rewrite-URL": "/evil",
    "Forwarded": "host=evil.example;proto=https",
    "X-Forwarded-Scheme": "evil",
    # Rack takes the scheme from X-Forwarded-Ssl before X-Forwarded-Proto: a page whose links
    # or redirect it makes https (or not) on a request's say-so, stored for everyone.
    "X-Forwarded-Ssl": "on-evil",
    "X-Url-Scheme": "evil",
    "Front-End-Https": "on-evil",
    "X-Forwarded-Protocol": "evil",
    "X-HTTP-Method-Override": "DELETE",
}


async def test_unkeyed_headers_never_reach_the_origin_nor_poison_the_cache(
    proxy: Proxy, origin: Origin, clock: FakeClock
) -> None:
    r1, b1 = await proxy.get("/echo?max_age=60", headers=POISON)
    assert r1.status == 200, b1
    assert "stored" in cache_status(r1)
    [record] = await origin.requests("/echo")
    for name in POISON:
        assert logged_header(record, name) == [], name
    assert b"evil" not in b1.lower()
    assert decode_json(b1)["method"] == "GET"

    clock.advance(1)
    r2, b2 = await proxy.get("/echo?max_age=60")
    assert cache_status(r2).startswith("edge-test;hit")
    assert b2 == b1
    assert await origin.hits("/echo") == 1


async def test_unkeyed_headers_are_dropped_on_pass_through_too(proxy: Proxy, origin: Origin) -> None:
    async with proxy.request("POST", "/echo", data=b"abc", headers=POISON) as resp:
        body = await resp.read()
    assert resp.status == 200, body
    [record] = await origin.requests("/echo")
    assert record["method"] == "POST"
    for name in POISON:
        assert logged_header(record, name) == [], name
    assert b"evil" not in body.lower()


# --------------------------------------------------------------------------- hostile headers


async def test_too_many_headers_is_4xx_not_500(proxy: Proxy, origin: Origin) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
    raw = b"GET /max-age/60 HTTP/1.1\r\nHost: x\r\n" + lines + b"Connection: close\r\n\r\n"
    answer = await _raw(proxy, raw)
    assert 400 <= raw_status(answer) < 500, answer[:300]
    assert await origin.hits() == 0
    await _still_serves(proxy, origin)


async def test_many_headers_within_limits_get_an_answer_not_500(proxy: Proxy, origin: Origin) -> None:
    # Close to the parser's limit: the proxy adds its own fields on the way to the origin,
    # which may then refuse them; either way the client gets an answer, never a 500.
    for count in (60, 120):
        headers = {f"X-Many-{i}": "v" for i in range(count)}
        async with proxy.request("GET", f"/echo?count={count}", headers=headers) as resp:
            body = await resp.read()
        assert resp.status < 500 and resp.status != 0, (count, resp.status, body[:200])
        assert b"Traceback" not in body
        assert "edge-test;" in cache_status(resp)
    assert await origin.hits("/echo") >= 1
    await _still_serves(proxy, origin)


async def test_non_ascii_header_bytes_get_an_answer_not_500(proxy: Proxy, origin: Origin) -> None:
    raw = (
        b"GET /echo?max_age=60 HTTP/1.1\r\nHost: x\r\nX-Bin: caf\xc3\xa9 \xff\xfe\r\n"
        b"Connection: close\r\n\r\n"
    )
    answer = await _raw(proxy, raw)
    status = raw_status(answer)
    assert status == 200 or 400 <= status < 500, answer[:300]
    assert b"Traceback" not in answer
    await _still_serves(proxy, origin)


LONG_NUMBER = "9" * 5000  # past the 4300 digits int() converts


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"Cache-Control": f"max-age={LONG_NUMBER}"}, "/max-age/60"),
        ({"Cache-Control": f"min-fresh={LONG_NUMBER}"}, "/max-age/60"),
        ({"Host": f"cdn.example:{LONG_NUMBER}"}, "/max-age/60"),
    ],
    ids=["9111-1.2.2-request-max-age", "9111-1.2.2-request-min-fresh", "9110-7.2-host-port"],
)
async def test_a_number_of_5000_digits_in_a_request_gets_an_answer_not_500(
    proxy: Proxy, origin: Origin, fields: dict[str, str], path: str
) -> None:
    """A delta-seconds or a port is 1*DIGIT of any length: its int() raised past 4300 digits and the
    request got a 500 `internal error`. An overflowing delta-seconds is 2^31 (RFC 9111 §1.2.2)."""
    await proxy.get(path)
    resp, body = await proxy.get(path, headers=fields)
    assert resp.status == 200 and body.startswith(b"origin stub"), (resp.status, body[:100])
    await _still_serves(proxy, origin)


INVALID_HOSTS = [b"ex ample<>", b"a\tb", b"[::1", b"x:notaport", b"evil.example/path?q", b"caf\xc3\xa9"]


@pytest.mark.parametrize("host_header", ["origin", "client"])
@pytest.mark.parametrize("host", INVALID_HOSTS, ids=[h.decode("latin-1") for h in INVALID_HOSTS])
async def test_invalid_host_header_is_400_and_never_forwarded(
    start_proxy: ProxyFactory, origin: Origin, host: bytes, host_header: str
) -> None:
    # RFC 9112 §3.2: a Host field with an invalid value gets a 400; it must neither reach the
    # origin (host_header: client) nor become part of a cache key.
    proxy = await start_proxy(origin=_origin_cfg(origin, host_header=host_header))
    raw = b"GET /max-age/60 HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    answer = await _raw(proxy, raw)
    assert raw_status(answer) == 400, answer[:300]
    assert b"Traceback" not in answer
    assert b"Cache-Status: edge-test;" in answer
    assert await origin.hits() == 0
    await _still_serves(proxy, origin)


@pytest.mark.parametrize("host", ["Example.COM:80", "127.0.0.1:1", "[::1]:8080", "a%41b", "x-y_z~"])
async def test_unusual_but_valid_host_is_served_and_forwarded_as_sent(
    start_proxy: ProxyFactory, origin: Origin, host: str
) -> None:
    proxy = await start_proxy(origin=_origin_cfg(origin, host_header="client"))
    resp, body = await proxy.get("/echo", headers={"Host": host})
    assert resp.status == 200, body
    [record] = await origin.requests("/echo")
    assert logged_header(record, "Host") == [host]


async def test_duplicate_host_header_is_400(proxy: Proxy, origin: Origin) -> None:
    raw = b"GET /max-age/60 HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n"
    answer = await _raw(proxy, raw)
    assert raw_status(answer) == 400, answer[:300]
    assert await origin.hits() == 0
    await _still_serves(proxy, origin)


async def test_a_vary_key_is_what_the_origin_saw_not_a_field_connection_removed(
    proxy: Proxy, origin: Origin
) -> None:
    # Issue 12 row 3: "Connection: Accept-Language" makes Accept-Language hop-by-hop, so the origin
    # never sees it and answers its default language. Keyed on "fr", that answer would then be
    # served to every later request for French (RFC 9111 §4.1: the nominated fields of the
    # request the stored response answered).
    resp, body = await proxy.get(
        "/vary/accept-language", headers={"Accept-Language": "fr", "Connection": "Accept-Language"}
    )
    assert resp.status == 200 and body == b"accept-language=-"
    resp, body = await proxy.get("/vary/accept-language", headers={"Accept-Language": "fr"})
    assert body == b"accept-language=fr", cache_status(resp)
    assert await origin.hits("/vary/accept-language") == 2


async def test_fields_with_underscores_never_reach_the_origin(proxy: Proxy, origin: Origin) -> None:
    # Issue 12 row 13 (nginx: underscores_in_headers off): CGI/WSGI origins read X_Forwarded_Host
    # as X-Forwarded-Host, an unkeyed input the drop list names only with dashes.
    headers = {"X_Forwarded_Host": "evil.example", "X_Original_URL": "/admin", "X-Fine": "yes"}
    resp, _ = await proxy.get("/echo?max_age=60", headers=headers)
    assert resp.status == 200
    [record] = await origin.requests("/echo")
    names = {name.lower() for name, _ in record["headers"]}
    assert "x_forwarded_host" not in names and "x_original_url" not in names
    assert "x-fine" in names
