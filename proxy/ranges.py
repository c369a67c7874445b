"""Pure handling of byte ranges: Range requests answered from a stored response, and the
bookkeeping of incomplete (206) stored responses.

Reference: RFC 9110 §14 (Range, Content-Range, 416) and §13.1.5 (If-Range);
RFC 9111 §3.3 (storing incomplete responses) and §3.4 (combining partial
content). Only single byte ranges are served as 206, forwarded to the origin
or stored; a multi-range request gets the whole 200 (RFC 9110 §14.2 lets a
server ignore Range), which keeps this file free of multipart/byteranges
framing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from proxy.entry import StoredResponse
from proxy.headers import MAX_DECIMAL_DIGITS, bounded_decimal, parse_http_date, strong_match

# RFC 9110 §14.1.1: range-unit "=" range-set, and a byte-range-spec is first-pos "-" [last-pos] or
# "-" suffix-length: no whitespace but around the list's commas (§5.6.1). The unit is case-insensitive.
_BYTES_UNIT_RE = re.compile(r"bytes=", re.IGNORECASE)
_RANGE_SPEC_RE = re.compile(r"([0-9]*)-([0-9]*)")  # DIGIT is ASCII (RFC 5234)
# A position past the end of any representation (what a longer one reads as: headers.bounded_decimal).
BEYOND_ANY_LENGTH = 10**MAX_DECIMAL_DIGITS
# RFC 9110 §14.4: Content-Range of a single part, with a known complete length.
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes[ ]+(\d+)-(\d+)/(\d+)\s*$", re.IGNORECASE)

# Parts one incomplete stored response may hold; past it the smallest others go (RFC 9111
# §3.3 leaves the bookkeeping to the cache; this bounds its metadata and merging work).
MAX_PARTS = 32


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


def single_byte_range(value: str | None) -> tuple[int | None, int | None] | None:
    """(first-pos, last-pos) of a Range that asks one byte range (RFC 9110 §14.1.1); either may be None.

    (None, n) is a suffix range of n bytes. None for no Range, another unit, several ranges
    (a server may ignore them, §14.2: a cache answers them with the whole representation, which
    also disarms many small or overlapping ones) or an invalid header, which §14.2 says to ignore:
    whitespace around "=" or "-", no position, a last-pos before the first-pos. Empty list
    elements (`bytes=0-9,`) are ignored (§5.6.1.2). A position past any length reads as
    BEYOND_ANY_LENGTH.
    """
    if value is None:
        return None
    value = value.strip(" \t")
    if not _BYTES_UNIT_RE.match(value):
        return None
    specs = [spec.strip(" \t") for spec in value[len("bytes=") :].split(",")]
    specs = [spec for spec in specs if spec]
    if len(specs) != 1:
        return None
    m = _RANGE_SPEC_RE.fullmatch(specs[0])
    if m is None or m.group(0) == "-":
        return None
    first, last = _position(m.group(1)), _position(m.group(2))
    if first is not None and last is not None and last < first:
        return None
    return first, last


def _position(digits: str) -> int | None:
    return bounded_decimal(digits, BEYOND_ANY_LENGTH) if digits else None


def parse_range(value: str | None, length: int) -> ByteRange | Unsatisfiable | None:
    """A single byte range for a representation of `length` bytes.

    None means "serve the whole representation": no Range, a syntax this file
    does not serve (several ranges, another unit), or an invalid header (RFC
    9110 §14.2 says to ignore it); see single_byte_range.
    """
    asked = single_byte_range(value)
    if asked is None:
        return None
    first, last = asked
    if first is None:
        # Suffix range: the last N bytes.
        assert last is not None
        if last == 0 or length == 0:
            return Unsatisfiable(length)
        return ByteRange(max(0, length - last), length - 1, length)
    if first >= length:
        return Unsatisfiable(length)
    last = length - 1 if last is None else min(last, length - 1)
    return ByteRange(first, last, length)


def if_range_allows(value: str | None, entry: StoredResponse) -> bool:
    """RFC 9110 §13.1.5: may the Range be honoured given If-Range?

    An entity-tag must match strongly; a date must equal Last-Modified exactly, and be a strong
    validator: the stored response's Date at least one second later (§8.8.2.2), or the
    representation may have changed within the second it names.
    """
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        return entry.etag is not None and strong_match(value, entry.etag)
    when = parse_http_date(value, now=entry.response_time)
    last_modified = parse_http_date(entry.last_modified, now=entry.response_time)
    if when is None or last_modified is None or when != last_modified:
        return False
    date = parse_http_date(entry.date, now=entry.response_time)
    return date is not None and date - last_modified >= 1


def parse_content_range(value: str | None) -> tuple[int, int, int] | None:
    """(first, last, complete length) of a single-part Content-Range (RFC 9110 §14.4), or None.

    None for anything a cache cannot file: an absent or malformed field, an unknown
    complete length ("*"), or a range that does not fit inside the representation.
    """
    if value is None:
        return None
    m = _CONTENT_RANGE_RE.match(value)
    if not m:
        return None
    first, last, length = (bounded_decimal(g, BEYOND_ANY_LENGTH) for g in m.groups())
    if not first <= last < length < BEYOND_ANY_LENGTH:
        return None
    return first, last, length


# RFC 9110 §14.4: a byte range and a complete length that may be unknown ("*").
_STATED_RANGE_RE = re.compile(r"^\s*bytes[ ]+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def states_one_range(value: str | None) -> bool:
    """Whether a 206's Content-Range says which bytes its single part holds (RFC 9110 §15.3.7.1).

    False for none (a multipart body, which answers no single-range request, §15.3.7.2), the
    unsatisfied-range form "*/length" (a 416's, §14.4), or a malformed or impossible range.
    """
    m = _STATED_RANGE_RE.match(value) if value is not None else None
    if m is None:
        return False
    first, last = bounded_decimal(m[1], BEYOND_ANY_LENGTH), bounded_decimal(m[2], BEYOND_ANY_LENGTH)
    length = BEYOND_ANY_LENGTH if m[3] == "*" else bounded_decimal(m[3], BEYOND_ANY_LENGTH)
    return first <= last < BEYOND_ANY_LENGTH and (m[3] == "*" or last < length < BEYOND_ANY_LENGTH)


def forwardable_range(value: str | None) -> str | None:
    """The Range to ask the origin for on a client's behalf: one byte range, written plainly.

    None for no Range, several ranges, another unit or an invalid one (those
    fetch the whole representation, which then answers them).
    """
    asked = single_byte_range(value)
    if asked is None:
        return None
    first, last = asked
    if first is None and last == 0:
        return None  # bytes=-0: unsatisfiable whatever the length
    return f"bytes={'' if first is None else first}-{'' if last is None else last}"


def wanted_range(value: str | None, if_range: str | None, entry: StoredResponse) -> ByteRange | None:
    """The single byte range a request asks of `entry`, if If-Range lets it apply (else None)."""
    if value is None or not if_range_allows(if_range, entry):
        return None
    wanted = parse_range(value, entry.length)
    return wanted if isinstance(wanted, ByteRange) else None


def strong_validator(entry: StoredResponse) -> str | None:
    """The entity-tag of `entry` when it is strong (RFC 9110 §8.8.1), else None."""
    etag = entry.etag
    if etag is None or etag.lstrip().startswith("W/"):
        return None
    return etag


def combine(stored: StoredResponse | None, new: StoredResponse, max_parts: int = MAX_PARTS) -> StoredResponse:
    """RFC 9111 §3.4: a newly received part combined with what is stored of the same representation.

    `new` is an incomplete response (one part) or a complete one. They combine only
    when both carry the same strong entity-tag and describe a representation of
    the same length; otherwise `new` replaces what was stored. The result takes
    its header fields and freshness from `new` (the most recent response, §3.2).
    Bytes `new` holds win where parts overlap (a strong validator means they are
    equal anyway). When the parts cover the whole representation it becomes a
    complete 200; past `max_parts` the smallest older parts are dropped.
    """
    if not new.parts:
        return new
    pieces: list[tuple[int, int, bytes]] = []
    tag = strong_validator(new)
    if stored is not None and tag is not None:
        old_tag = strong_validator(stored)
        if old_tag is not None and strong_match(old_tag, tag) and stored.length == new.length:
            pieces = _pieces(stored)
    first, last = new.parts[0]
    data = new.body
    kept: list[tuple[int, int, bytes]] = []
    for a, b, bytes_ in pieces:
        if b < first - 1 or a > last + 1:
            kept.append((a, b, bytes_))  # neither overlapping nor adjacent
            continue
        if a < first:  # a piece reaching in from the left keeps its head
            data = bytes_[: first - a] + data
            first = a
        if b > last:  # ... and one reaching out to the right its tail
            data = data + bytes_[len(bytes_) - (b - last) :]
            last = b
    merged = (first, last, data)
    kept.append(merged)
    if len(kept) > max_parts:
        others = sorted((p for p in kept if p is not merged), key=lambda p: p[1] - p[0], reverse=True)
        kept = [merged, *others[: max_parts - 1]]
    kept.sort()
    length = new.length
    if len(kept) == 1 and kept[0][0] == 0 and kept[0][1] == length - 1:
        # Complete: from now on a plain 200 (RFC 9111 §3.3 "made complete").
        return new.evolve(status=200, reason="OK", body=kept[0][2], parts=(), complete_length=-1)
    return new.evolve(
        body=b"".join(p[2] for p in kept),
        parts=tuple((a, b) for a, b, _ in kept),
        complete_length=length,
    )


def _pieces(entry: StoredResponse) -> list[tuple[int, int, bytes]]:
    """(first, last, bytes) of each stored part; a complete response is one part."""
    if not entry.parts:
        return [(0, len(entry.body) - 1, entry.body)] if entry.body else []
    out = []
    offset = 0
    for a, b in entry.parts:
        size = b - a + 1
        out.append((a, b, entry.body[offset : offset + size]))
        offset += size
    return out
