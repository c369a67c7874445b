"""Single byte-range requests (RFC 9110 §14): which bytes of a representation a GET asks for.

The stub answers one range (`bytes=a-b`, `bytes=a-`, `bytes=-n`) with a 206, as most origins do
(nginx, S3); anything it does not take (several ranges, another unit, a malformed value) gets the
whole representation, which §14.2 allows. aiohttp parses the header (`Request.http_range`); what
is decided here is what §14.2 and §13.1.5 add to it: If-Range, clipping, unsatisfiable ranges.
"""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web

__all__ = ["UNSATISFIABLE", "Unsatisfiable", "byte_range", "content_range"]


class Unsatisfiable:
    """The range asks for no byte of the representation: a 416 (RFC 9110 §15.5.17)."""


UNSATISFIABLE: Final = Unsatisfiable()


def byte_range(request: web.Request, length: int, etag: str | None) -> tuple[int, int] | Unsatisfiable | None:
    """(first, last) byte positions to send in a 206, UNSATISFIABLE, or None for the whole 200.

    `etag` is the representation's entity-tag: an If-Range naming another one (or a weak one)
    means the client's partial copy is outdated, so the whole representation is sent (§13.1.5).
    """
    value = request.headers.get(hdrs.RANGE)
    if value is None or request.method != hdrs.METH_GET:  # Range is defined for GET only (§14.2)
        return None
    if_range = request.headers.get(hdrs.IF_RANGE)
    # A strong comparison of entity-tags; a date never matches here (the stub sends no
    # Last-Modified on these routes), so it also gets the whole representation.
    if if_range is not None and (etag is None or etag.startswith("W/") or if_range.strip() != etag):
        return None
    try:
        wanted = request.http_range
    except ValueError:  # several ranges, another unit, malformed: ignored (§14.2)
        return None
    start, stop = wanted.start, wanted.stop
    suffix = value.partition("=")[2].lstrip().startswith("-")
    if suffix:
        # bytes=-n: the last n bytes (aiohttp gives start=-n); n = 0 selects nothing (§14.1.3).
        if start is None or start == 0:
            return UNSATISFIABLE
        first = max(0, length + start)
        return (first, length - 1) if length else UNSATISFIABLE
    assert start is not None  # "bytes=-" is rejected by aiohttp; a suffix is handled above
    if start >= length:
        return UNSATISFIABLE
    last = length - 1 if stop is None else min(stop - 1, length - 1)
    return start, last


def content_range(first: int, last: int, length: int) -> str:
    """The Content-Range of a 206 (RFC 9110 §14.4)."""
    return f"bytes {first}-{last}/{length}"
