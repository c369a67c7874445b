"""Socket-level misbehaviours: truncated bodies, dropped connections and malformed responses.

Each handler breaks the connection itself and then returns an ordinary response; aiohttp's
attempt to write it fails with a ConnectionError, which it treats as a premature client
disconnect (logged at debug level only) instead of an unhandled exception.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from origin_stub.behaviours import pattern
from origin_stub.common import TEXT, query_int

# ``/malformed?kind=...``: what to write instead of a valid response.
MALFORMED = {
    "status": b"HTTP/1.1 abc Bogus\r\n\r\n",
    "header": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nthis is not a header\r\n\r\nok",
    "length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok",
    "garbage": b"\x00\x01\x02 definitely not HTTP\r\n\r\n",
}


def _close(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was already written, then FIN


async def drop(request: web.Request) -> web.StreamResponse:
    """Declare ``?n=`` (1000) bytes, send about half, then close the connection."""
    n = query_int(request, "n", 1000)
    if n < 2:
        raise web.HTTPBadRequest(text="n must be at least 2\n")
    resp = web.StreamResponse(
        headers={hdrs.CACHE_CONTROL: "max-age=60", hdrs.CONTENT_TYPE: TEXT, hdrs.CONTENT_LENGTH: str(n)}
    )
    await resp.prepare(request)
    if request.method != hdrs.METH_HEAD:
        await resp.write(pattern(n // 2))
    _close(request)
    return resp


async def reset(request: web.Request) -> web.Response:
    """Close the connection without sending a single byte."""
    _close(request)
    return web.Response()


async def malformed(request: web.Request) -> web.Response:
    """Write an unparsable response (``?kind=status|header|length|garbage``) and close."""
    kind = request.query.get("kind", "status")
    payload = MALFORMED.get(kind)
    if payload is None:
        raise web.HTTPBadRequest(text=f"kind must be one of {', '.join(MALFORMED)}\n")
    transport = request.transport
    if transport is not None:
        transport.write(payload)
    _close(request)
    return web.Response()


def register(router: web.UrlDispatcher) -> None:
    router.add_route("*", "/drop", drop)
    router.add_route("*", "/reset", reset)
    router.add_route("*", "/malformed", malformed)
