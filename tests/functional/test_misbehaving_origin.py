"""An origin that breaks HTTP/1.1 framing, seen through the proxy: a 502 or the right answer,
never a crashed worker and never a wrong response stored (issue 12 row 15).

The clients' side of the same rules, against both origin clients, is in test_origin_contract.py;
here the origin is a raw socket writing exact bytes and the real proxy stands in front of it.
"""

from __future__ import annotations

import gzip

import pytest

from tests.functional.conftest import ProxyFactory, StartScripted, cache_status

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
