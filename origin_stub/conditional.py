"""Conditional GET support: If-None-Match (weak comparison) and If-Modified-Since → 304."""

from __future__ import annotations

import re

from aiohttp import hdrs, web
from multidict import CIMultiDict

from origin_stub.common import parse_http_date

# One entity-tag (RFC 9110 §8.8.3): optional W/ prefix, then a quoted opaque tag.
_ETAG_RE = re.compile(r'\s*(W/)?("[^"]*")\s*(?:,|$)')

# Headers a 304 must repeat when the 200 would have carried them (RFC 9110 §15.4.5).
_304_HEADERS = (
    hdrs.CACHE_CONTROL,
    hdrs.CONTENT_LOCATION,
    hdrs.ETAG,
    hdrs.EXPIRES,
    hdrs.VARY,
    hdrs.LAST_MODIFIED,
    "CDN-Cache-Control",
    "Surrogate-Control",
)


def make_etag(tag: str, *, weak: bool = False) -> str:
    """Quote ``tag`` as an entity-tag, weak when asked."""
    return f'{"W/" if weak else ""}"{tag}"'


def _opaque(etag: str) -> str:
    etag = etag.strip()
    return etag[2:] if etag.startswith("W/") else etag


def etag_list(value: str) -> list[str] | None:
    """Parse an If-None-Match value into entity-tags; ``["*"]`` for the wildcard, None if malformed."""
    value = value.strip()
    if value == "*":
        return ["*"]
    tags: list[str] = []
    pos = 0
    while pos < len(value):
        if value[pos] in " \t,":
            pos += 1
            continue
        match = _ETAG_RE.match(value, pos)
        if match is None:
            return None
        tags.append((match.group(1) or "") + match.group(2))
        pos = match.end()
    return tags


def none_match(if_none_match: str, etag: str) -> bool:
    """True when If-None-Match matches ``etag`` by weak comparison (RFC 9110 §13.1.2)."""
    tags = etag_list(if_none_match)
    if not tags:
        return False
    if tags == ["*"]:
        return True
    target = _opaque(etag)
    return any(_opaque(tag) == target for tag in tags)


def not_modified(
    request: web.Request, *, etag: str | None = None, last_modified: float | None = None
) -> bool:
    """Whether a GET/HEAD should be answered 304 given the representation's validators.

    If-None-Match takes precedence; If-Modified-Since is only evaluated without it (RFC 9110 §13.2.2).
    """
    if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
        return False
    inm = request.headers.getall(hdrs.IF_NONE_MATCH, [])
    if inm:
        return etag is not None and none_match(", ".join(inm), etag)
    ims = request.headers.get(hdrs.IF_MODIFIED_SINCE)
    if ims is None or last_modified is None:
        return False
    since = parse_http_date(ims)
    # HTTP-dates have one-second resolution: compare whole seconds.
    return since is not None and int(last_modified) <= since


def respond(
    request: web.Request,
    headers: CIMultiDict[str],
    body: bytes | str,
    *,
    status: int = 200,
    etag: str | None = None,
    last_modified: float | None = None,
) -> web.Response:
    """A 200 with ``body`` and ``headers``, or a body-less 304 if the request's validators match.

    ``etag`` / ``last_modified`` must already be in ``headers`` when given; they are passed
    separately so the comparison does not have to re-parse them.
    """
    if status == 200 and not_modified(request, etag=etag, last_modified=last_modified):
        kept: CIMultiDict[str] = CIMultiDict()
        for name in _304_HEADERS:
            for value in headers.getall(name, []):
                kept.add(name, value)
        return web.Response(status=304, headers=kept)
    if isinstance(body, str):
        body = body.encode()
    headers.setdefault(hdrs.CONTENT_TYPE, "text/plain; charset=utf-8")
    return web.Response(status=status, headers=headers, body=body)
