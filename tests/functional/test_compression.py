"""Compression at the edge through a real origin: what the proxy sends decompresses to the origin's bytes.

gzip, br and identity, chosen by Accept-Encoding with q-values; Vary and the ETag of each encoding;
ranges from the identity variant; an origin that compresses (or forbids transforms) left alone;
a 304 freshening every encoding; large bodies compressed off the event loop; coalesced requests
with different encodings answered from one origin fetch.
"""

from __future__ import annotations

import asyncio
import gzip
from typing import Any
from urllib.parse import urlencode

import aiohttp
import brotli
import pytest

from proxy import fetcher as fetcher_module
from proxy.compression import Compression
from tests.functional.conftest import (
    FakeClock,
    Origin,
    Proxy,
    ProxyFactory,
    StartScripted,
    cache_status,
)

TEXT = "".join(f"<li>item {i}: the quick brown fox jumps over the lazy dog</li>\n" for i in range(60))


def respond_path(
    body: str = TEXT, *fields: str, content_type: str = "text/html; charset=utf-8", repeat: int = 1
) -> str:
    """The stub origin's /respond with these fields and `body` (`repeat` times)."""
    query = [("h", f"Content-Type:{content_type}"), ("h", "Cache-Control:max-age=60"), ("h", 'ETag:"v1"')]
    query += [("h", f) for f in fields]
    return "/respond?" + urlencode([*query, ("body", body), ("repeat", str(repeat))])


async def fetch(
    proxy: Proxy, path: str, accept: str | None, **headers: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    extra = {"Accept-Encoding": accept} if accept is not None else {}
    return await proxy.get(path, headers={**extra, **headers})


def decoded(resp: aiohttp.ClientResponse, body: bytes) -> bytes:
    coding = resp.headers.get("Content-Encoding")
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "br":
        return bytes(brotli.decompress(body))
    assert coding is None, coding
    return body


def vary(resp: aiohttp.ClientResponse) -> set[str]:
    return {v.strip().lower() for line in resp.headers.getall("Vary", []) for v in line.split(",")}


@pytest.mark.parametrize(
    ("accept", "coding", "etag"),
    [
        ("gzip, deflate, br", "br", '"v1-br"'),
        ("gzip", "gzip", '"v1-gzip"'),
        ("br;q=0.5, gzip;q=1", "gzip", '"v1-gzip"'),  # q-values honoured
        ("deflate", None, '"v1"'),
        (None, None, '"v1"'),
        ("gzip;q=0.5, identity", None, '"v1"'),  # identity named, and preferred
        ("br;q=0.1, identity;q=0", "br", '"v1-br"'),  # identity;q=0 respected
        ("identity;q=0", None, '"v1"'),  # nothing acceptable: RFC 9110 §12.5.3, no coding
    ],
)
async def test_each_client_gets_its_encoding_of_the_origins_bytes(
    proxy: Proxy, origin: Origin, accept: str | None, coding: str | None, etag: str
) -> None:
    path = respond_path()
    async with proxy.session.get(origin.url + path) as direct:
        original = await direct.read()
    assert original == TEXT.encode()
    # The first request (br) stores every encoding; the others are hits.
    await fetch(proxy, path, "br")
    resp, body = await fetch(proxy, path, accept)
    assert resp.status == 200
    assert resp.headers.get("Content-Encoding") == coding
    assert decoded(resp, body) == original
    assert int(resp.headers["Content-Length"]) == len(body)
    if coding is not None:
        assert len(body) < len(original)
    assert "accept-encoding" in vary(resp)
    assert resp.headers["ETag"] == etag
    assert "hit" in cache_status(resp).split(";")
    assert await origin.hits("/respond") == 2  # the direct request and one fetch


async def test_the_first_client_gets_its_own_encoding(proxy: Proxy, origin: Origin) -> None:
    resp, body = await fetch(proxy, respond_path(), "gzip")
    assert resp.headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == TEXT.encode()
    assert "stored" in cache_status(resp)


async def test_a_head_says_what_the_get_would(proxy: Proxy) -> None:
    path = respond_path()
    get, body = await fetch(proxy, path, "br")
    async with proxy.session.head(proxy.url + path, headers={"Accept-Encoding": "br"}) as head:
        assert await head.read() == b""
    assert head.headers["Content-Encoding"] == "br"
    assert head.headers["Content-Length"] == str(len(body))
    assert head.headers["ETag"] == get.headers["ETag"]


@pytest.mark.parametrize(
    ("accept", "coding", "etag"),
    [("br", "br", '"v1-br"'), ("gzip", "gzip", '"v1-gzip"'), (None, None, '"v1"')],
)
async def test_rfc9110_s9_3_2_a_head_the_origin_answers_says_what_the_get_would(
    proxy: Proxy, origin: Origin, accept: str | None, coding: str | None, etag: str
) -> None:
    # A HEAD with nothing stored is forwarded (a HEAD creates no entry): the origin's identity
    # fields came back without Vary, though the GET is answered in the client's coding with
    # another entity-tag (found by a differential fuzz pass).
    path = respond_path()
    headers = {"Accept-Encoding": accept} if accept is not None else {}
    async with proxy.session.head(proxy.url + path, headers=headers) as head:
        assert await head.read() == b""
    assert "fwd-status=200" in cache_status(head) and await origin.hits("/respond") == 1
    get, body = await fetch(proxy, path, accept)
    assert head.headers.get("Content-Encoding") == get.headers.get("Content-Encoding") == coding
    assert head.headers["ETag"] == get.headers["ETag"] == etag
    assert "accept-encoding" in vary(head) and "accept-encoding" in vary(get)
    # A length the encoding alone determines is left out (§9.3.2); identity's is the origin's.
    assert head.headers.get("Content-Length") == (str(len(body)) if coding is None else None)


@pytest.mark.parametrize("field", ["Vary:*", "Cache-Control:no-store", "Set-Cookie:a=1"])
async def test_rfc9110_s9_3_2_a_head_for_what_the_get_would_not_store_is_the_origins(
    proxy: Proxy, field: str
) -> None:
    # Only stored responses are compressed: the GET of a response that is passed through gets the
    # origin's identity bytes and tag, and so must the HEAD (it was told "Content-Encoding: br"
    # and an entity-tag "v1-br" no GET ever carries; found by a differential fuzz pass).
    path = respond_path(TEXT, field)
    async with proxy.session.head(proxy.url + path, headers={"Accept-Encoding": "br"}) as head:
        assert await head.read() == b""
    get, body = await fetch(proxy, path, "br")
    assert "stored" not in cache_status(get) and body == TEXT.encode()
    assert head.headers.get("Content-Encoding") is get.headers.get("Content-Encoding") is None
    assert head.headers["ETag"] == get.headers["ETag"] == '"v1"'
    assert "accept-encoding" not in vary(head) and "accept-encoding" not in vary(get)
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == str(len(body))


async def test_a_head_for_what_is_never_compressed_is_the_origins(proxy: Proxy) -> None:
    path = respond_path("x" * 2000, content_type="image/png")
    async with proxy.session.head(proxy.url + path, headers={"Accept-Encoding": "gzip"}) as head:
        assert head.headers["ETag"] == '"v1"' and "Content-Encoding" not in head.headers
        assert "accept-encoding" not in vary(head) and head.headers["Content-Length"] == "2000"


async def test_ranges_are_answered_from_the_identity_variant(proxy: Proxy) -> None:
    path = respond_path()
    await fetch(proxy, path, "gzip, br")
    resp, body = await fetch(proxy, path, "gzip, br", Range="bytes=10-59")
    assert resp.status == 206
    assert "Content-Encoding" not in resp.headers
    assert body == TEXT.encode()[10:60]
    assert resp.headers["Content-Range"] == f"bytes 10-59/{len(TEXT)}"
    assert resp.headers["ETag"] == '"v1"'


@pytest.mark.parametrize(
    ("accept", "coding"),
    [("br, identity;q=0", "br"), ("*;q=0, gzip", "gzip"), ("GZIP, Identity ; Q=0.0", "gzip")],
)
async def test_rfc9110_s12_5_3_a_range_for_a_client_refusing_identity_is_of_its_coding(
    proxy: Proxy, accept: str, coding: str
) -> None:
    # The range was answered from the identity variant, whatever the client said of identity: a
    # client refusing it got identity bytes (found by a differential fuzz pass).
    path = respond_path()
    whole, encoded = await fetch(proxy, path, coding)
    resp, body = await fetch(proxy, path, accept, Range="bytes=10-59")
    assert resp.status == 206 and resp.headers["Content-Encoding"] == coding
    assert body == encoded[10:60] and resp.headers["Content-Range"] == f"bytes 10-59/{len(encoded)}"
    assert resp.headers["ETag"] == whole.headers["ETag"] == f'"v1-{coding}"'
    assert "accept-encoding" in vary(resp)
    # If-Range with the coding's (strong) tag: the range; with identity's: the whole, in the coding.
    resp, body = await fetch(proxy, path, accept, Range="bytes=10-59", **{"If-Range": f'"v1-{coding}"'})
    assert resp.status == 206 and body == encoded[10:60]
    resp, body = await fetch(proxy, path, accept, Range="bytes=10-59", **{"If-Range": '"v1"'})
    assert resp.status == 200 and body == encoded and resp.headers["Content-Encoding"] == coding


async def test_rfc9110_s14_2_a_head_with_a_range_says_what_the_get_without_it_would(proxy: Proxy) -> None:
    # Range means nothing to a HEAD (§14.2): it was keyed as a range (identity) and said
    # "no coding" and identity's tag while the GET is answered in br.
    path = respond_path()
    get, _ = await fetch(proxy, path, "br")
    async with proxy.session.head(
        proxy.url + path, headers={"Accept-Encoding": "br", "Range": "bytes=0-9"}
    ) as head:
        assert head.status == 200 and await head.read() == b""
    assert head.headers["Content-Encoding"] == get.headers["Content-Encoding"] == "br"
    assert head.headers["ETag"] == get.headers["ETag"] == '"v1-br"'


async def test_a_conditional_request_compares_with_its_encodings_tag(proxy: Proxy) -> None:
    path = respond_path()
    await fetch(proxy, path, "gzip")
    resp, body = await fetch(proxy, path, "gzip", **{"If-None-Match": '"v1-gzip"'})
    assert resp.status == 304 and body == b"" and resp.headers["ETag"] == '"v1-gzip"'
    resp, body = await fetch(proxy, path, "gzip", **{"If-None-Match": '"v1"'})  # the identity's tag
    assert resp.status == 200 and gzip.decompress(body) == TEXT.encode()
    resp, _ = await fetch(proxy, path, None, **{"If-None-Match": '"v1"'})
    assert resp.status == 304


async def test_an_origin_that_compresses_is_left_alone(proxy: Proxy, origin: Origin) -> None:
    path = respond_path(TEXT, "Content-Encoding:gzip", repeat=2)
    async with proxy.session.get(origin.url + path) as direct:
        original = await direct.read()
    resp, body = await fetch(proxy, path, "gzip")
    assert body == original and resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["ETag"] == '"v1"' and "accept-encoding" not in vary(resp)


async def test_an_origin_that_negotiates_codings_itself_is_left_alone(proxy: Proxy, origin: Origin) -> None:
    """An origin whose answer varies on Accept-Encoding chooses codings (and names them) itself:
    Apache's mod_deflate tags its gzip answer "v1-gzip", the very tag this cache derives for its
    own gzip bytes, so one strong ETag named two byte sequences and an If-Range across them spliced
    them (RFC 9110 §8.8.3). Its identity answer is stored and served as it came."""
    path = respond_path(TEXT, "Vary:Accept-Encoding")
    for accept in ("br", "gzip", None):
        resp, got = await fetch(proxy, path, accept)
        assert "Content-Encoding" not in resp.headers and got == TEXT.encode(), accept
        assert resp.headers["ETag"] == '"v1"' and "accept-encoding" in vary(resp)


@pytest.mark.parametrize(
    ("fields", "content_type", "body"),
    [
        (("Cache-Control:max-age=60, no-transform",), "text/html", TEXT),  # RFC 9110 §7.7
        ((), "image/png", TEXT),  # not a compressible type
        ((), "text/html", TEXT[:500]),  # below compression.min_size
    ],
)
async def test_responses_stored_as_they_came(
    proxy: Proxy, fields: tuple[str, ...], content_type: str, body: str
) -> None:
    path = respond_path(body, *fields, content_type=content_type)
    for accept in ("br", "gzip", None):
        resp, got = await fetch(proxy, path, accept)
        assert "Content-Encoding" not in resp.headers and got == body.encode()
        assert "accept-encoding" not in vary(resp) and resp.headers["ETag"] == '"v1"'


async def test_compression_can_be_turned_off(start_proxy: ProxyFactory) -> None:
    from proxy.config import CompressionConfig

    proxy = await start_proxy(compression=CompressionConfig(enabled=False))
    resp, body = await fetch(proxy, respond_path(), "br")
    assert "Content-Encoding" not in resp.headers and body == TEXT.encode()


async def test_large_bodies_are_compressed_off_the_event_loop(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    to_thread = asyncio.to_thread

    async def counting(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        if getattr(func, "__func__", None) is Compression.encode:
            calls.append(len(args[0]))
        return await to_thread(func, *args, **kwargs)

    monkeypatch.setattr(fetcher_module.asyncio, "to_thread", counting)
    small = TEXT[:2000]
    assert proxy.cfg.compression.min_size <= len(small) < proxy.cfg.compression.off_loop_min
    resp, _ = await fetch(proxy, respond_path(small), "br")
    assert resp.headers["Content-Encoding"] == "br" and calls == []
    resp, body = await fetch(proxy, respond_path(TEXT, repeat=3), "br")
    assert resp.headers["Content-Encoding"] == "br" and brotli.decompress(body) == (TEXT * 3).encode()
    assert calls == [len(TEXT) * 3]


async def test_coalesced_requests_for_other_encodings_share_one_fetch(proxy: Proxy, origin: Origin) -> None:
    path = respond_path()
    await origin.fault("/respond", mode="delay", ms=300)
    answers = await asyncio.gather(*(fetch(proxy, path, accept) for accept in ("br", "gzip", None, "gzip")))
    await origin.clear_faults()
    assert [resp.headers.get("Content-Encoding") for resp, _ in answers] == ["br", "gzip", None, "gzip"]
    assert all(decoded(resp, body) == TEXT.encode() for resp, body in answers)
    assert await origin.hits("/respond") == 1


# --------------------------------------------------------------- revalidation (a scripted origin)


def response(status: str, *fields: str, body: bytes = b"") -> bytes:
    head = [f"HTTP/1.1 {status}", *fields, f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize("validators", [('ETag: "v1"',), ()], ids=["304-with-etag", "304-without-validators"])
async def test_a_304_freshens_every_encoding(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, clock: FakeClock, validators: tuple[str, ...]
) -> None:
    body = TEXT.encode()
    scripted = await scripted_origin(
        [
            response(
                "200 OK", "Content-Type: text/html", "Cache-Control: max-age=10", 'ETag: "v1"', body=body
            ),
            response("304 Not Modified", "Cache-Control: max-age=100", *validators),
        ]
    )
    proxy = await start_proxy(origin_url=scripted.url)
    await fetch(proxy, "/page", "gzip")
    clock.advance(20)
    resp, got = await fetch(proxy, "/page", "gzip")
    assert "fwd=stale" in cache_status(resp) and "fwd-status=304" in cache_status(resp)
    assert gzip.decompress(got) == body and resp.headers["ETag"] == '"v1-gzip"'
    # The origin is asked about the representation it made, not about the edge's encodings.
    assert scripted.sent(1, "If-None-Match") == ['"v1"']
    for accept in ("br", None, "gzip"):
        resp, got = await fetch(proxy, "/page", accept)
        assert "hit" in cache_status(resp).split(";"), accept
        assert decoded(resp, got) == body
    assert len(scripted.requests) == 2


async def test_rfc9111_s4_3_4_a_304_naming_another_variant_is_served_in_the_clients_coding(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, clock: FakeClock
) -> None:
    # Two languages stored, each with its encodings. Revalidating the French gzip variant, the
    # origin's 304 names the English representation ("v1": French falls back to it). The answer
    # was the English identity variant, to a client refusing identity, though its gzip encoding
    # (derived from "v1", freshened with it) was stored (found by a differential fuzz pass).
    english, french = TEXT.encode(), TEXT.upper().encode()
    fields = ("Content-Type: text/html", "Cache-Control: max-age=10", "Vary: Accept-Language")
    scripted = await scripted_origin(
        [
            response("200 OK", *fields, 'ETag: "v1"', body=english),
            response("200 OK", *fields, 'ETag: "v2"', body=french),
            response("304 Not Modified", "Cache-Control: max-age=100", 'ETag: "v1"', "Vary: Accept-Language"),
        ]
    )
    proxy = await start_proxy(origin_url=scripted.url)
    await fetch(proxy, "/page", "gzip", **{"Accept-Language": "en"})
    await fetch(proxy, "/page", "gzip", **{"Accept-Language": "fr"})
    clock.advance(20)
    resp, got = await fetch(proxy, "/page", "gzip, identity;q=0", **{"Accept-Language": "fr"})
    assert "fwd-status=304" in cache_status(resp)
    assert set(scripted.sent(2, "If-None-Match")[0].replace(" ", "").split(",")) == {'"v1"', '"v2"'}
    assert resp.headers.get("Content-Encoding") == "gzip" and resp.headers["ETag"] == '"v1-gzip"'
    assert gzip.decompress(got) == english
