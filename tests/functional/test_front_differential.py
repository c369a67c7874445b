"""Differential: a request gets the same bytes whichever way it reaches the front.

One front answers every request (proxy/front.py); a stored response's head is
written by one function (proxy.h1.delivery_head). Before, a plain GET on a new
connection was answered by the lean front and the same GET after a POST on that
connection by aiohttp, and the two had drifted. This test sends one table of
requests (hits, HEAD, ranges, conditionals, Vary, HTTP/1.0, Connection: close)
each way a request can arrive, and asserts byte-identical heads and bodies
(Date and Age aside):

- first on a new connection;
- after a POST with a body, and after a chunked POST, on the same connection;
- after a GET that carries a body;
- written one byte at a time (every TCP split of the head);
- pipelined behind a miss, so it is answered after an asynchronous fetch.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.functional.conftest import Origin, Proxy

# name -> (request line, extra fields); every request also carries Host: cdn.example.
TABLE: dict[str, tuple[str, tuple[str, ...]]] = {
    "hit": ("GET /bytes/300 HTTP/1.1", ()),
    "head": ("HEAD /bytes/300 HTTP/1.1", ()),
    "range": ("GET /bytes/300 HTTP/1.1", ("Range: bytes=10-19",)),
    "suffix-range": ("GET /bytes/300 HTTP/1.1", ("Range: bytes=-5",)),
    "unsatisfiable": ("GET /bytes/300 HTTP/1.1", ("Range: bytes=5000-",)),
    "if-range-mismatch": ("GET /bytes/300 HTTP/1.1", ("Range: bytes=0-1", 'If-Range: "other"')),
    "if-none-match": ("GET /bytes/300 HTTP/1.1", ('If-None-Match: "x", "bytes-300"',)),
    "if-none-match-miss": ("GET /bytes/300 HTTP/1.1", ('If-None-Match: "nope"',)),
    "if-modified-since": ("GET /bytes/300 HTTP/1.1", ("If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT",)),
    "vary-gzip": ("GET /vary/accept-encoding HTTP/1.1", ("Accept-Encoding: gzip, deflate",)),
    "vary-other-spelling": ("GET /vary/accept-encoding HTTP/1.1", ("Accept-Encoding: deflate,gzip;q=0.5",)),
    "origin-cache-status": (
        "GET /respond?h=Cache-Status:origin-cache;hit&h=Cache-Control:max-age%3D60&body=x HTTP/1.1",
        (),
    ),
    "http10": ("GET /bytes/300 HTTP/1.0", ()),
    "http10-keep-alive": ("GET /bytes/300 HTTP/1.0", ("Connection: keep-alive",)),
    "connection-close": ("GET /bytes/300 HTTP/1.1", ("Connection: close",)),
    "large-hit": ("GET /bytes/100000 HTTP/1.1", ()),
}

WARM = [
    "/bytes/300",
    "/bytes/100000",
    "/respond?h=Cache-Status:origin-cache;hit&h=Cache-Control:max-age%3D60&body=x",
]


def _request(line: str, extra: tuple[str, ...]) -> bytes:
    return "\r\n".join((line, "Host: cdn.example", *extra, "", "")).encode()


PREAMBLES: dict[str, bytes] = {
    "first": b"",
    "after-post": b"POST /echo HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: 5\r\n\r\nhello",
    "after-chunked-post": (
        b"POST /echo HTTP/1.1\r\nHost: cdn.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    ),
    "after-get-with-body": b"GET /echo HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: 3\r\n\r\nabc",
    "behind-a-miss": b"GET /bytes/77?behind-a-miss=%d HTTP/1.1\r\nHost: cdn.example\r\n\r\n",
}


class Responses:
    """Reads HTTP/1.1 responses off a stream one at a time, by their framing."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    async def next(self, head_request: bool) -> tuple[bytes, bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        fields = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip()
        if head_request or status in (204, 304) or status < 200:
            return head, b""
        if b"content-length" in fields:
            body = await self.reader.readexactly(int(fields[b"content-length"]))
            return head, body
        if fields.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    return head, body
                body += data[:-2]
        return head, await asyncio.wait_for(self.reader.read(), 5)  # close-delimited


def comparable(head: bytes) -> list[bytes]:
    """The head's lines without the ones that change from one second to the next."""
    return [line for line in head.split(b"\r\n") if not line.lower().startswith((b"date:", b"age:"))]


async def send(proxy: Proxy, preamble: bytes, request: bytes, *, bytewise: bool) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    try:
        responses = Responses(reader)
        if preamble:
            writer.write(preamble)
        if bytewise:
            for i in range(len(request)):
                writer.write(request[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)
        else:
            writer.write(request)
        await writer.drain()
        if preamble:
            await responses.next(head_request=False)
        return await responses.next(head_request=request.startswith(b"HEAD "))
    finally:
        writer.close()


@pytest.mark.parametrize("name", list(TABLE))
async def test_each_request_is_answered_alike_whichever_way_it_arrives(
    proxy: Proxy, origin: Origin, name: str
) -> None:
    for path in WARM:
        resp, _ = await proxy.get(path, headers={"Host": "cdn.example"})
        assert resp.status == 200
    for encoding in ("gzip", "identity"):
        resp, _ = await proxy.get(
            "/vary/accept-encoding", headers={"Host": "cdn.example", "Accept-Encoding": encoding}
        )
    request = _request(*TABLE[name])
    reference_head, reference_body = await send(proxy, b"", request, bytewise=False)
    assert b";hit;" in reference_head, reference_head  # every row is answered from the cache
    hits_before = await origin.hits()
    ways = dict(PREAMBLES)
    for index, (way, preamble) in enumerate(ways.items()):
        if b"%d" in preamble:
            preamble = preamble % index
        head, body = await send(proxy, preamble, request, bytewise=False)
        assert comparable(head) == comparable(reference_head), (name, way, head)
        assert body == reference_body, (name, way)
    head, body = await send(proxy, b"", request, bytewise=True)
    assert comparable(head) == comparable(reference_head), (name, "bytewise", head)
    assert body == reference_body
    # Only the preambles reached the origin (two POSTs, the GET with a body, one miss).
    assert await origin.hits() - hits_before == 4
