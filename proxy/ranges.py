"""Pure handling of byte Range requests answered from a complete stored response.

Reference: RFC 9110 §14 (Range, Content-Range, 416) and §13.1.5 (If-Range).
Only single byte ranges are served as 206; a multi-range request gets the
whole 200 (RFC 9110 §14.2 lets a server ignore Range), which keeps this file
free of multipart/byteranges framing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.entry import StoredResponse
from proxy.headers import parse_http_date, strong_match

_BYTES_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range [first, last] of a representation of `length` bytes."""

    first: int
    last: int
    length: int

    @property
    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.length}"


@dataclass(frozen=True, slots=True)
class Unsatisfiable:
    """No part of the range overlaps the representation: 416 (RFC 9110 §15.5.17)."""

    length: int

    @property
    def content_range(self) -> str:
        return f"bytes */{self.length}"


def parse_range(value: str | None, length: int) -> ByteRange | Unsatisfiable | None:
    """A single byte range for a representation of `length` bytes.

    None means "serve the whole representation": no Range, a syntax this file
    does not serve (several ranges, another unit), or an invalid header (RFC
    9110 §14.2 says to ignore it).
    """
    if value is None:
        return None
    m = _BYTES_RANGE_RE.match(value)
    if not m:
        return None
    first_text, last_text = m.groups()
    if not first_text and not last_text:
        return None
    if not first_text:
        # Suffix range: the last N bytes.
        suffix = int(last_text)
        if suffix == 0 or length == 0:
            return Unsatisfiable(length)
        return ByteRange(max(0, length - suffix), length - 1, length)
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # invalid range-spec: ignore the header
    if first >= length:
        return Unsatisfiable(length)
    last = int(last_text) if last_text else length - 1
    return ByteRange(first, min(last, length - 1), length)


def if_range_allows(value: str | None, entry: StoredResponse) -> bool:
    """RFC 9110 §13.1.5: may the Range be honoured given If-Range?

    An entity-tag must match strongly; a date must equal Last-Modified exactly.
    """
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return entry.etag is not None and strong_match(value, entry.etag)
    when = parse_http_date(value, now=entry.response_time)
    last_modified = parse_http_date(entry.last_modified, now=entry.response_time)
    return when is not None and last_modified is not None and when == last_modified
