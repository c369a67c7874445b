"""Pure arithmetic of sliced objects: large objects fetched and stored in fixed-size slices.

An object whose representation is longer than `cache.slice_threshold` is stored
as slices of `cache.slice_size` bytes (as nginx's slice module does): slice i
holds bytes [i * size, min((i + 1) * size, length) - 1]. Each slice is an
ordinary stored 206 (`StoredResponse` with one part and the complete length)
under its own key: slice 0 under the object's own key, slice i under
`slice_key(key, i)`. The I/O lives in proxy/slicer.py; this file answers:

- which slices cover a byte range, and the range to ask the origin for each;
- which key holds a slice (one the catalogue files under the object's URL, so
  a purge by URL, prefix or tag finds every slice);
- whether a stored response is a slice, whether two slices belong to the same
  representation (the same strong entity-tag and complete length: anything
  else must never be combined into one response), and whether an origin
  response reveals a sliced object and which slice it carries;
- what part of the representation a request asks for, and the part of an
  origin 206 that answers a client who asked less.

Reference: RFC 9110 §14 (ranges), §8.8.3 (strong entity-tags), RFC 9111 §3.3 / §3.4
(storing and combining partial content).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from proxy.config import CacheConfig
from proxy.entry import StoredResponse
from proxy.headers import strong_match
from proxy.ranges import (
    ByteRange,
    Unsatisfiable,
    if_range_allows,
    parse_content_range,
    parse_range,
    single_byte_range,
)

# Between a key's namespace and its URL in the key of slice i > 0: the catalogue files a key under
# what follows the first "|", so every slice is filed under the object's URL (storage/catalog.py).
SLICE_MARK = "~slice/"


@dataclass(frozen=True, slots=True)
class SliceSpec:
    """How objects are sliced: `size` bytes a slice, for objects longer than `threshold`."""

    size: int
    threshold: int

    @classmethod
    def of(cls, cache: CacheConfig) -> SliceSpec | None:
        """The configured slicing, or None when it is off (cache.slice_size 0)."""
        if cache.slice_size <= 0:
            return None
        return cls(cache.slice_size, cache.slice_threshold)

    def sliced(self, length: int) -> bool:
        """Is a representation of `length` bytes stored in slices?"""
        return length > self.threshold


def slice_key(key: str, index: int) -> str:
    """The storage key of slice `index` of the object stored under `key` (slice 0: the key itself).

    The mark goes before the key's first "|" (after its namespace), so the
    catalogue's URL and path of every slice are the object's own.
    """
    if index == 0:
        return key
    head, sep, rest = key.partition("|")
    return f"{head}{SLICE_MARK}{index}{sep}{rest}"


def slice_count(length: int, size: int) -> int:
    """How many slices a representation of `length` bytes has."""
    return -(-length // size)


def slice_bounds(index: int, size: int, length: int) -> tuple[int, int]:
    """The inclusive byte range of slice `index` of a representation of `length` bytes."""
    first = index * size
    if index < 0 or first >= length:
        raise ValueError(f"slice {index} is outside a representation of {length} bytes")
    return first, min(first + size, length) - 1


def covering(first: int, last: int, size: int) -> range:
    """The indices of the slices holding bytes first..last (inclusive)."""
    if first < 0 or last < first:
        raise ValueError(f"bytes {first}-{last} is not a range")
    return range(first // size, last // size + 1)


def slice_keys(key: str, length: int, size: int) -> list[str]:
    """The keys of every slice of a representation of `length` bytes stored under `key`."""
    return [slice_key(key, i) for i in range(slice_count(length, size))]


def range_request(index: int, size: int, length: int) -> str:
    """The Range asked of the origin for slice `index`."""
    first, last = slice_bounds(index, size, length)
    return f"bytes={first}-{last}"


def cover_range(value: str | None, size: int) -> str | None:
    """The Range to ask the origin for a client's single byte range when the length is unknown.

    Whole slices: from the start of the slice holding the first byte to the end
    of the slice holding the last (or open-ended, like the client's). The
    answer then either reveals a sliced object (its first slice is stored) or
    holds all the client asked of a smaller one. None for a suffix range, whose
    slices cannot be known before the length is (it is asked as it is), and for
    anything that is not one byte range.
    """
    first, last = single_byte_range(value) or (None, None)
    if first is None:
        return None
    start = first - first % size
    if last is None:
        return f"bytes={start}-"
    return f"bytes={start}-{last - last % size + size - 1}"


def range_start(value: str | None) -> int | None:
    """The first byte of a single byte range that names it (not a suffix range), else None."""
    asked = single_byte_range(value)
    return None if asked is None else asked[0]


def strong_etag(etag: str | None) -> str | None:
    """The entity-tag when it is strong (RFC 9110 §8.8.3), else None."""
    if etag is None:
        return None
    etag = etag.strip()
    if not etag.startswith('"') or len(etag) < 2 or not etag.endswith('"'):
        return None
    return etag


def index_of(entry: StoredResponse, spec: SliceSpec) -> int | None:
    """The index of the slice `entry` is, or None when it is not one.

    A slice is a stored 206 of a representation longer than the threshold,
    with a strong entity-tag, holding exactly one whole slice.
    """
    parts = entry.parts
    if len(parts) != 1 or not spec.sliced(entry.complete_length) or strong_etag(entry.etag) is None:
        return None
    first, last = parts[0]
    if first % spec.size:
        return None
    index = first // spec.size
    if slice_bounds(index, spec.size, entry.complete_length)[1] != last:
        return None
    return index


def same_representation(a: StoredResponse, b: StoredResponse) -> bool:
    """May slices `a` and `b` be combined into one response?

    Only when both carry the same strong entity-tag and describe a
    representation of the same length (RFC 9111 §3.4).
    """
    tag_a, tag_b = strong_etag(a.etag), strong_etag(b.etag)
    return (
        tag_a is not None
        and tag_b is not None
        and strong_match(tag_a, tag_b)
        and a.complete_length == b.complete_length
    )


def slice_in_response(
    status: int,
    content_range: str | None,
    content_length: int | None,
    etag: str | None,
    accept_ranges: str | None,
    asked_range: bool,
    spec: SliceSpec,
) -> tuple[int, int, int] | None:
    """The slice an origin response carries when it reveals a sliced object: (first, last, length).

    - a 200 to a request without Range, whose Content-Length is above the
      threshold, with a strong ETag and `Accept-Ranges: bytes` (the origin says
      it answers ranges, so the other slices can be asked for): slice 0;
    - a 206 whose Content-Range starts a slice, holds all of it, and says the
      complete length is above the threshold, with a strong ETag: that slice.

    None otherwise: the response is handled as before slicing existed.
    """
    if strong_etag(etag) is None:
        return None
    if status == 200:
        if asked_range or content_length is None or not spec.sliced(content_length):
            return None
        units = {u.strip().lower() for u in (accept_ranges or "").split(",")}
        if "bytes" not in units:
            return None
        return (*slice_bounds(0, spec.size, content_length), content_length)
    if status != 206:
        return None
    part = parse_content_range(content_range)
    if part is None:
        return None
    first, last, length = part
    if not spec.sliced(length) or first % spec.size:
        return None
    bounds = slice_bounds(first // spec.size, spec.size, length)
    if last < bounds[1]:
        return None  # less than the slice: not one
    return (*bounds, length)


def slices_held(
    first: int, response_last: int, length: int, size: int, limit: int = 2
) -> list[tuple[int, int]]:
    """The whole slices (at most `limit`) of a response whose bytes first..response_last start a slice.

    What a response that revealed a sliced object gives before it is dropped: a
    range crossing one slice boundary costs one origin request, and reading it
    holds at most `limit` slices.
    """
    held: list[tuple[int, int]] = []
    index = first // size
    while len(held) < limit and index * size < length:
        bounds = slice_bounds(index, size, length)
        if bounds[1] > response_last:
            break
        held.append(bounds)
        index += 1
    return held


@dataclass(frozen=True, slots=True)
class Whole:
    """The whole representation (200)."""


Wanted = Whole | ByteRange | Unsatisfiable


def wanted(range_value: str | None, if_range: str | None, entry: StoredResponse) -> Wanted:
    """What a GET asks of the sliced representation `entry` belongs to (RFC 9110 §14.2, §13.1.5).

    One byte range (206), an unsatisfiable one (416), or the whole (200): no
    Range, several ranges, an invalid one, or an If-Range that does not match.
    """
    if range_value is None or not if_range_allows(if_range, entry):
        return Whole()
    found = parse_range(range_value, entry.complete_length)
    return Whole() if found is None else found


def trim(content_range: str | None, asked: str | None) -> tuple[int, ByteRange] | None:
    """How to answer a client's range from an origin 206 that holds more (a slice-aligned cover).

    (bytes to skip at the start of the 206's body, the range the client gets),
    or None when the 206 is already what the client asked, or cannot answer it.
    """
    part = parse_content_range(content_range)
    if part is None:
        return None
    first, last, length = part
    wanted = parse_range(asked, length)
    if not isinstance(wanted, ByteRange) or (wanted.first, wanted.last) == (first, last):
        return None
    if wanted.first < first or wanted.last > last:
        return None
    return wanted.first - first, wanted


async def byte_window(chunks: AsyncIterator[bytes], skip: int, count: int) -> AsyncIterator[bytes]:
    """Bytes skip .. skip+count-1 of a stream of chunks; stops reading once they are out.

    Fewer than `count` when the stream ends early: the caller decides what that means.
    """
    if count <= 0:
        return
    async for chunk in chunks:
        if skip:
            dropped = min(skip, len(chunk))
            chunk, skip = chunk[dropped:], skip - dropped
        if chunk:
            chunk = chunk[:count]
            count -= len(chunk)
            yield chunk
            if count <= 0:
                return
