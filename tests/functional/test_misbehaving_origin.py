"""An origin that breaks HTTP/1.1 framing, seen through the proxy: a 502 or the right answer,
never a crashed worker and never a wrong response stored (issue 12 rows 15 and 16).

The clients' side of the same rules, against both origin clients, is in test_origin_contract.py;
here the origin is a raw socket writing exact bytes and the real proxy stands in front of it.
"""

from __future__ import annotations

import asyncio
import gzip

import pytest

from tests.functional.conftest import ProxyFactory, StartScripted, cache_status
from tests.functional.test_origin_contract import RawOrigin, StartOrigin, raw_origin

__all__ = ["raw_origin"]  # the fixture, for these tests

GOOD = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\nhello"


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


# ------------------------------------------ issue 12 row 15: a coding other than chunked alone

# The body really is gzip-coded: taken with only the chunked coding removed, the gzip bytes would
# be stored and served as the representation, with nothing left to say they are coded.
CODED = {
    "gzip-then-chunked": b"Transfer-Encoding: gzip, chunked\r\n\r\n" + chunked(gzip.compress(b"hello")),
    "chunked-then-gzip": b"Transfer-Encoding: chunked, gzip\r\n\r\n" + chunked(b"hello"),
}


@pytest.mark.parametrize("coded", CODED)
async def test_rfc9112_s6_1_a_transfer_coding_other_than_chunked_alone_is_a_502_and_nothing_is_stored(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, coded: str
) -> None:
    bad = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n" + CODED[coded]
    origin = await scripted_origin([bad, GOOD])
    proxy = await start_proxy(origin_url=origin.url)
    resp, body = await proxy.get("/doc")
    assert (resp.status, body) == (502, b"origin sent an invalid response\n")
    resp, body = await proxy.get("/doc")  # asked again: nothing was stored
    assert (resp.status, body) == (200, b"hello")
    assert "stored" in cache_status(resp)
    assert len(origin.requests) == 2
    assert origin.accepts == 2  # the connection the bad response came on was not reused


# ------------------------------------------ issue 12 row 16: a body after a HEAD response, late

FORGED = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 6\r\n\r\nforged"
REAL = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 4\r\n\r\nreal"


async def lying(origin: RawOrigin, reader: asyncio.StreamReader, w: asyncio.StreamWriter, _: int) -> None:
    """Answers a HEAD as a GET, but sends the body only once the next request has arrived on the
    same connection; that body is itself a response. Answers a GET with REAL."""
    while request := await origin.request(reader):
        if request.startswith(b"HEAD "):
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(FORGED))
            await w.drain()
            if not await origin.request(reader):  # the proxy closed the connection: nothing follows
                return
            w.write(FORGED)
        w.write(REAL)
        await w.drain()


async def test_a_body_sent_late_after_a_head_response_is_never_served_or_stored_for_another_url(
    start_proxy: ProxyFactory, raw_origin: StartOrigin
) -> None:
    origin = await raw_origin(lying)
    proxy = await start_proxy(origin_url=origin.url)
    async with proxy.request("HEAD", "/a") as head:  # a HEAD miss is passed to the origin as HEAD
        assert head.status == 200 and await head.read() == b""
    resp, body = await proxy.get("/b")
    assert (resp.status, body) == (200, b"real")
    resp, body = await proxy.get("/b")
    assert body == b"real" and "hit" in cache_status(resp).split(";")
    assert origin.accepts == 2


# ------------------------------------------ a 304 to a request that carried no condition

NOT_MODIFIED = b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nCache-Control: max-age=60\r\n\r\n'


@pytest.mark.parametrize("headers", [{}, {"Range": "bytes=0-1"}], ids=["whole", "range"])
async def test_rfc9110_s15_4_5_a_304_to_an_unconditional_fetch_is_a_502_never_passed_on(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, headers: dict[str, str]
) -> None:
    """A cache fetch never carries the client's conditionals (nor ours when nothing is stored): a 304
    to it tells a client holding no copy that its copy is current. Found by a lying-origin run."""
    origin = await scripted_origin([NOT_MODIFIED, GOOD])
    proxy = await start_proxy(origin_url=origin.url)
    resp, body = await proxy.get("/doc", headers=headers)
    assert (resp.status, body) == (502, b"origin sent an invalid response\n")
    assert not origin.sent(0, "If-None-Match") and not origin.sent(0, "If-Modified-Since")
    resp, body = await proxy.get("/doc")  # nothing was stored, and the proxy keeps serving
    assert (resp.status, body) == (200, b"hello")
    assert len(origin.requests) == 2


async def test_rfc9110_s15_4_5_a_304_to_an_unconditional_head_miss_is_a_502_never_passed_on(
    start_proxy: ProxyFactory, scripted_origin: StartScripted
) -> None:
    """A HEAD that nothing stored answers is forwarded as the client sent it (a HEAD response creates
    no entry); a 304 to one without If-None-Match / If-Modified-Since was passed on to the client, which
    holds no copy for it to be current. A fetch's unasked 304 is a 502 (above): so is this one."""
    origin = await scripted_origin([NOT_MODIFIED, GOOD])
    proxy = await start_proxy(origin_url=origin.url)
    async with proxy.request("HEAD", "/doc") as resp:
        assert resp.status == 502 and "fwd-status" not in cache_status(resp)
    assert origin.method(0) == "HEAD" and not origin.sent(0, "If-None-Match")
    async with proxy.request("HEAD", "/doc") as resp:  # the proxy keeps serving
        assert (resp.status, resp.headers["Content-Length"]) == (200, "5")


# ------------------------------------------ numbers of thousands of digits

LONG = b"9" * 5000  # past the 4300 digits int() converts


@pytest.mark.parametrize(
    ("field", "stored"),
    [(b"Cache-Control: max-age=" + LONG, True), (b"Cache-Control: max-age=60\r\nAge: " + LONG, False)],
    ids=["9111-1.2.2-max-age", "9111-5.1-age"],
)
async def test_a_delta_seconds_of_5000_digits_from_the_origin_is_2_to_the_31(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, field: bytes, stored: bool
) -> None:
    """RFC 9111 §1.2.2: a delta-seconds too large to hold is taken as 2^31. Its int() raised past 4300
    digits, and the response was a 500 `internal error`; now a max-age that long is a long lifetime, an
    Age that long makes the response stale on arrival (with max-age=60)."""
    ok = b"HTTP/1.1 200 OK\r\n" + field + b"\r\nContent-Length: 5\r\n\r\nhello"
    origin = await scripted_origin([ok, GOOD])
    proxy = await start_proxy(origin_url=origin.url)
    resp, body = await proxy.get("/doc")
    assert (resp.status, body) == (200, b"hello")
    again, _ = await proxy.get("/doc")
    assert ("hit" in cache_status(again).split(";")) == stored


async def test_rfc9110_s14_4_a_content_range_length_of_5000_digits_is_a_502(
    start_proxy: ProxyFactory, scripted_origin: StartScripted
) -> None:
    """A complete length past any representation a cache can hold says nothing it can use: the 206 is
    a 502 like one without a Content-Range, never stored. Its int() raised (a 500 `internal error`)."""
    bad = (
        b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-1/"
        + LONG
        + b"\r\nContent-Length: 2\r\n\r\nhe"
    )
    origin = await scripted_origin([bad, GOOD])
    proxy = await start_proxy(origin_url=origin.url)
    resp, body = await proxy.get("/doc", headers={"Range": "bytes=0-1"})
    assert (resp.status, body) == (502, b"origin sent an invalid response\n")
    resp, body = await proxy.get("/doc")
    assert (resp.status, body) == (200, b"hello")


# ------------------------------------------ a 206 that says no range, answering the range asked

UNSAID = {
    "unsatisfied-form": b"Content-Range: bytes */10\r\n",
    "none": b"",
    "no-length": b"Content-Range: bytes 0-9\r\n",
}


@pytest.mark.parametrize("content_range", UNSAID)
async def test_rfc9110_s15_3_7_a_206_without_the_range_it_holds_answering_one_range_is_a_502(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, content_range: str
) -> None:
    """The range asked of the origin is the slice covering the client's (bytes=0-1048575 for
    bytes=5-9): a 206 that does not say which bytes it holds was passed on as it came, its body
    (bytes 0-9 here) taken by the client for the bytes 5-9 it asked. Found by a lying-origin run."""
    head = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n" + UNSAID[content_range]
    bad = head + b"\r\n0123456789"
    origin = await scripted_origin([bad, GOOD])
    proxy = await start_proxy(origin_url=origin.url)
    resp, body = await proxy.get("/doc", headers={"Range": "bytes=5-9"})
    assert origin.sent(0, "Range") == ["bytes=0-1048575"]
    assert (resp.status, body) == (502, b"origin sent an invalid response\n")
    resp, body = await proxy.get("/doc")  # nothing was stored, and the proxy keeps serving
    assert (resp.status, body) == (200, b"hello")
