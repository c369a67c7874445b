"""Routes named after HTTP caching behaviours: freshness, validation, Vary, encodings, failures."""

from __future__ import annotations

import gzip
import json
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import hdrs, web
from multidict import CIMultiDict

from origin_stub.common import (
    CREATED_AT_KEY,
    KEEP_DATE,
    TEXT,
    default_text,
    flag,
    hits,
    http_date,
    now,
    optional_int,
    path_int,
    query_int,
)
from origin_stub.conditional import make_etag, not_modified, respond
from origin_stub.ranges import Unsatisfiable, byte_range, content_range

_PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n"  # 64 bytes
_BLOCK = _PATTERN * 1024  # 64 KiB
_DOUBLE_BLOCK = _BLOCK * 2  # lets a piece start at any offset within the pattern
MAX_BYTES = 1 << 30


def _headers(cache_control: str | None = None) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    if cache_control is not None:
        headers[hdrs.CACHE_CONTROL] = cache_control
    return headers


def _max_age(request: web.Request, default: int) -> str:
    return f"max-age={query_int(request, 'max_age', default)}"


def _tag(request: web.Request, default: str = "v1") -> str:
    return make_etag(request.query.get("tag", default), weak=flag(request.query, "weak"))


def pattern_chunks(n: int, chunk: int = len(_BLOCK), first: int = 0) -> Iterator[bytes]:
    """``n`` bytes of the deterministic pattern from offset ``first``, in pieces of at most ``chunk``."""
    chunk = max(1, min(chunk, len(_BLOCK)))
    offset = first
    end = first + n
    while offset < end:
        size = min(chunk, end - offset)
        start = offset % len(_PATTERN)
        yield _DOUBLE_BLOCK[start : start + size]
        offset += size


def pattern(n: int) -> bytes:
    """The first ``n`` bytes of the deterministic pattern (every byte at offset i is _PATTERN[i % 64])."""
    return b"".join(pattern_chunks(n))


# --- freshness ---------------------------------------------------------------------------------


async def max_age(request: web.Request) -> web.Response:
    q = request.query
    directives = ["public"] if flag(q, "public") else []
    directives.append(f"max-age={path_int(request, 'n')}")
    if (swr := optional_int(request, "swr")) is not None:
        directives.append(f"stale-while-revalidate={swr}")
    if (sie := optional_int(request, "sie")) is not None:
        directives.append(f"stale-if-error={sie}")
    if flag(q, "immutable"):
        directives.append("immutable")
    return respond(request, _headers(", ".join(directives)), default_text(request))


async def s_maxage(request: web.Request) -> web.Response:
    cc = f"s-maxage={path_int(request, 'n')}, {_max_age(request, 0)}"
    return respond(request, _headers(cc), default_text(request))


async def expires(request: web.Request) -> web.Response:
    headers = _headers()
    raw = request.query.get("raw")
    headers[hdrs.EXPIRES] = raw if raw is not None else http_date(now(request) + path_int(request, "n"))
    return respond(request, headers, default_text(request))


async def last_modified(request: web.Request) -> web.Response:
    lm = now(request) - path_int(request, "age")
    headers = _headers()
    headers[hdrs.LAST_MODIFIED] = http_date(lm)
    return respond(request, headers, default_text(request), last_modified=lm)


async def no_store(request: web.Request) -> web.Response:
    return respond(request, _headers("no-store"), default_text(request))


async def private(request: web.Request) -> web.Response:
    return respond(request, _headers("private, max-age=60"), default_text(request))


async def slow(request: web.Request) -> web.Response:
    """The delay itself (``?ms=``, default 1 s) is applied by the middleware before this runs."""
    return respond(request, _headers(_max_age(request, 60)), default_text(request))


# --- validation --------------------------------------------------------------------------------


async def no_cache(request: web.Request) -> web.Response:
    etag = _tag(request)
    headers = _headers("no-cache")
    headers[hdrs.ETAG] = etag
    return respond(request, headers, default_text(request), etag=etag)


async def must_revalidate(request: web.Request) -> web.Response:
    etag = _tag(request)
    headers = _headers(f"max-age={path_int(request, 'n')}, must-revalidate")
    headers[hdrs.ETAG] = etag
    return respond(request, headers, default_text(request), etag=etag)


async def etag(request: web.Request) -> web.Response:
    tag = _tag(request)
    headers = _headers(_max_age(request, 0))
    headers[hdrs.ETAG] = tag
    return respond(request, headers, default_text(request), etag=tag)


async def last_modified_304(request: web.Request) -> web.Response:
    lm = request.app[CREATED_AT_KEY] - 86400
    headers = _headers(_max_age(request, 0))
    headers[hdrs.LAST_MODIFIED] = http_date(lm)
    return respond(request, headers, default_text(request), last_modified=lm)


# --- representation variants -------------------------------------------------------------------


async def vary(request: web.Request) -> web.Response:
    name = request.match_info["header"]
    headers = _headers("max-age=60")
    headers[hdrs.VARY] = name
    return respond(request, headers, f"{name}={request.headers.get(name, '-')}")


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding value allows gzip (explicitly, or via ``*``) with q > 0."""
    star: float | None = None
    for part in accept_encoding.split(","):
        coding, _, params = part.partition(";")
        coding = coding.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if coding in ("gzip", "x-gzip"):
            return q > 0
        if coding == "*":
            star = q
    return star is not None and star > 0


async def gzip_route(request: web.Request) -> web.Response:
    headers = _headers("max-age=60")
    headers[hdrs.VARY] = hdrs.ACCEPT_ENCODING
    headers[hdrs.CONTENT_TYPE] = TEXT
    text = default_text(request, "gzip demo").encode() * 8
    if accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, "")):
        headers[hdrs.CONTENT_ENCODING] = "gzip"
        return respond(request, headers, gzip.compress(text, mtime=0))
    return respond(request, headers, text)


async def set_cookie(request: web.Request) -> web.Response:
    headers = _headers("max-age=60")
    headers[hdrs.SET_COOKIE] = f"session={hits(request)}; Path=/"
    return respond(request, headers, default_text(request))


async def bytes_route(request: web.Request) -> web.StreamResponse:
    n = path_int(request, "n")
    if n > MAX_BYTES:
        raise web.HTTPBadRequest(text=f"at most {MAX_BYTES} bytes\n")
    tag = make_etag(f"bytes-{n}")
    headers = _headers(_max_age(request, 60))
    headers[hdrs.CONTENT_TYPE] = "application/octet-stream"
    headers[hdrs.ETAG] = tag
    headers[hdrs.ACCEPT_RANGES] = "bytes"
    if not_modified(request, etag=tag):  # preconditions before Range (RFC 9110 §13.2.2)
        return respond(request, headers, b"", etag=tag)
    wanted = byte_range(request, n, tag)
    if isinstance(wanted, Unsatisfiable):
        # No Cache-Control: a 416 says nothing a cache should keep (as nginx answers it).
        return web.Response(status=416, headers={hdrs.CONTENT_RANGE: f"bytes */{n}"})
    chunked = flag(request.query, "chunked")
    if wanted is None and not chunked and n <= len(_BLOCK):
        return respond(request, headers, pattern(n), etag=tag)
    first, size = 0, n
    resp = web.StreamResponse(headers=headers)
    if wanted is not None:  # one range: a 206 of known length, whatever `chunked` says
        first, last = wanted
        size = last - first + 1
        resp.set_status(206)
        resp.headers[hdrs.CONTENT_RANGE] = content_range(first, last, n)
        chunked = False
    if chunked:
        resp.enable_chunked_encoding()
        chunk = max(1, min(len(_BLOCK), -(-n // 4)))  # several writes even for small bodies
    else:
        resp.headers[hdrs.CONTENT_LENGTH] = str(size)
        chunk = len(_BLOCK)
    await resp.prepare(request)
    if request.method != hdrs.METH_HEAD:
        for piece in pattern_chunks(size, chunk, first):
            await resp.write(piece)
    await resp.write_eof()
    return resp


# --- errors and odd headers --------------------------------------------------------------------


async def fail(request: web.Request) -> web.Response:
    status = query_int(request, "status", 503)
    if not 200 <= status <= 599:
        raise web.HTTPBadRequest(text="status must be 200..599\n")
    max_age_value = optional_int(request, "max_age")
    cc = "no-store" if max_age_value is None else f"max-age={max_age_value}"
    return respond(request, _headers(cc), default_text(request, f"status={status}"), status=status)


async def stall(request: web.Request) -> web.Response:
    """The stall itself (``?ms=``, default 60 s) is applied by the middleware before this runs."""
    return respond(request, _headers(_max_age(request, 60)), default_text(request))


async def respond_route(request: web.Request) -> web.Response:
    status = query_int(request, "status", 200)
    if not 200 <= status <= 599:
        raise web.HTTPBadRequest(text="status must be 200..599\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for spec in request.query.getall("h", []):
        name, sep, value = spec.partition(":")
        if not sep or not name.strip():
            raise web.HTTPBadRequest(text=f"h={spec!r} is not Name:Value\n")
        headers.add(name.strip(), value.strip())
    if hdrs.DATE in headers:
        request[KEEP_DATE] = True
    # `repeat=N`: the body N times (bodies longer than a request line can carry).
    repeat = query_int(request, "repeat", 1)
    if not 1 <= repeat <= 10_000:
        raise web.HTTPBadRequest(text="repeat must be 1..10000\n")
    body = request.query.get("body", "") * repeat
    if body:
        headers.setdefault(hdrs.CONTENT_TYPE, TEXT)
    return web.Response(status=status, headers=headers, body=body.encode())


async def echo(request: web.Request) -> web.Response:
    seconds = query_int(request, "max_age", 0)
    headers = _headers(f"max-age={seconds}" if seconds > 0 else "no-store")
    body = await request.read()
    data = {
        "method": request.method,
        "path": request.path,
        "query": request.query_string,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_length": len(body),
        "hit": hits(request),
    }
    headers[hdrs.CONTENT_TYPE] = "application/json"
    return respond(request, headers, json.dumps(data))


async def tags(request: web.Request) -> web.Response:
    headers = _headers("max-age=60")
    keys = [k.strip() for k in request.query.get("keys", "").split(",") if k.strip()]
    if keys:
        headers["Surrogate-Key"] = " ".join(keys)
        headers["Cache-Tag"] = ",".join(keys)
    return respond(request, headers, default_text(request, f"tags={','.join(keys)}"))


def register(router: web.UrlDispatcher) -> None:
    """Behaviour routes answer any method (GET semantics; only GET/HEAD get 304s)."""
    routes: list[tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
        (r"/max-age/{n:-?\d+}", max_age),
        (r"/s-maxage/{n:-?\d+}", s_maxage),
        (r"/expires/{n:-?\d+}", expires),
        (r"/last-modified/{age:-?\d+}", last_modified),
        ("/last-modified-304", last_modified_304),
        ("/no-store", no_store),
        ("/no-cache", no_cache),
        ("/private", private),
        (r"/must-revalidate/{n:-?\d+}", must_revalidate),
        ("/etag", etag),
        ("/vary/{header}", vary),
        ("/gzip", gzip_route),
        ("/set-cookie", set_cookie),
        (r"/bytes/{n:\d+}", bytes_route),
        ("/slow", slow),
        ("/stall", stall),
        ("/fail", fail),
        ("/respond", respond_route),
        ("/echo", echo),
        ("/tags", tags),
    ]
    for path, handler in routes:
        router.add_route("*", path, handler)
