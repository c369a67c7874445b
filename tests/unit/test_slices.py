"""proxy.slices: the arithmetic of sliced objects, without I/O.

Which slices cover a range, the range asked for each, the keys they live under
(filed by the catalogue under the object's URL), which stored responses are
slices, which may be combined, and what an origin response tells.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from proxy import slices
from proxy.config import CacheConfig
from proxy.entry import StoredResponse
from proxy.ranges import ByteRange, Unsatisfiable
from proxy.slices import (
    SliceSpec,
    Whole,
    cover_range,
    covering,
    index_of,
    range_request,
    range_start,
    same_representation,
    slice_bounds,
    slice_count,
    slice_in_response,
    slice_key,
    slice_keys,
    slices_held,
    trim,
    wanted,
)
from proxy.storage.catalog import split_key

SPEC = SliceSpec(size=100, threshold=250)  # a 1000-byte object: slices 0..9


def stored_slice(first: int, last: int, length: int = 1000, etag: str | None = '"v1"') -> StoredResponse:
    headers = [("ETag", etag)] if etag is not None else []
    return StoredResponse(
        status=206,
        reason="Partial Content",
        headers=headers,
        body=bytes(last - first + 1),
        request_time=0.0,
        response_time=0.0,
        corrected_initial_age=0.0,
        freshness_lifetime=60.0,
        etag=etag,
        parts=((first, last),),
        complete_length=length,
    )


def test_spec_follows_the_config() -> None:
    assert SliceSpec.of(CacheConfig()) == SliceSpec(1024 * 1024, 10 * 1024 * 1024)
    assert SliceSpec.of(CacheConfig(slice_size=0)) is None
    assert SPEC.sliced(251) and not SPEC.sliced(250)


@pytest.mark.parametrize(
    ("length", "count", "last_slice"),
    [(1000, 10, (900, 999)), (1001, 11, (1000, 1000)), (999, 10, (900, 998)), (100, 1, (0, 99))],
)
def test_slice_count_and_bounds(length: int, count: int, last_slice: tuple[int, int]) -> None:
    assert slice_count(length, 100) == count
    assert slice_bounds(count - 1, 100, length) == last_slice
    assert slice_bounds(0, 100, length) == (0, min(99, length - 1))
    bounds = [slice_bounds(i, 100, length) for i in range(count)]
    # Contiguous, covering every byte once.
    assert bounds[0][0] == 0 and bounds[-1][1] == length - 1
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(bounds))


@pytest.mark.parametrize("index", [-1, 10])
def test_no_slice_outside_the_representation(index: int) -> None:
    with pytest.raises(ValueError):
        slice_bounds(index, 100, 1000)


@pytest.mark.parametrize(
    ("first", "last", "indices"),
    [
        (0, 0, [0]),
        (0, 99, [0]),
        (99, 100, [0, 1]),  # across one boundary: two slices
        (150, 160, [1]),
        (100, 399, [1, 2, 3]),
        (950, 999, [9]),
        (0, 999, list(range(10))),
    ],
)
def test_which_slices_cover_a_range(first: int, last: int, indices: list[int]) -> None:
    assert list(covering(first, last, 100)) == indices


def test_covering_refuses_a_reversed_range() -> None:
    with pytest.raises(ValueError):
        covering(10, 9, 100)


def test_the_range_asked_for_a_slice() -> None:
    assert range_request(0, 100, 1000) == "bytes=0-99"
    assert range_request(4, 100, 1000) == "bytes=400-499"
    assert range_request(9, 100, 950) == "bytes=900-949"


@pytest.mark.parametrize(
    ("value", "cover"),
    [
        ("bytes=0-9", "bytes=0-99"),
        ("bytes=150-160", "bytes=100-199"),
        ("bytes=99-100", "bytes=0-199"),
        ("bytes=100-199", "bytes=100-199"),
        ("bytes=250-", "bytes=200-"),
        ("bytes = 5 - 7", None),  # RFC 9110 §14.1.1: no whitespace there; invalid, so ignored
        ("bytes=5-7,", "bytes=0-99"),  # §5.6.1.2: an empty list element is ignored
        ("bytes=-10", None),  # a suffix: its slices depend on the length, unknown yet
        ("bytes=9-5", None),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        (None, None),
    ],
)
def test_the_cover_of_a_range_is_whole_slices(value: str | None, cover: str | None) -> None:
    assert cover_range(value, 100) == cover


@pytest.mark.parametrize(
    ("value", "start"),
    [("bytes=150-160", 150), ("bytes=0-", 0), ("bytes=-5", None), ("bytes=9-5", None), (None, None)],
)
def test_range_start(value: str | None, start: int | None) -> None:
    assert range_start(value) == start


def test_slice_keys_are_filed_under_the_objects_url() -> None:
    key = "ns|https://cdn.example/v.mp4?q=1"
    assert slice_key(key, 0) == key
    keys = slice_keys(key, 1000, 100)
    assert len(keys) == 10 and len(set(keys)) == 10 and keys[0] == key
    for k in keys:
        # The catalogue's URL and path of every slice are the object's: purge by URL, prefix, tag.
        assert split_key(k) == split_key(key) == ("https://cdn.example/v.mp4?q=1", "/v.mp4?q=1")
    assert slice_key("|http://h/a", 3) != slice_key("|http://h/a", 30)
    # Not a key a client can name: the mark sits in the namespace part, before the URL.
    assert slice_key("|http://h/a", 3) == "~slice/3|http://h/a"


@pytest.mark.parametrize(
    ("entry", "index"),
    [
        pytest.param(stored_slice(0, 99), 0, id="first"),
        pytest.param(stored_slice(400, 499), 4, id="middle"),
        pytest.param(stored_slice(900, 999), 9, id="last"),
        pytest.param(stored_slice(900, 949, length=950), 9, id="short-last"),
        pytest.param(stored_slice(0, 98), None, id="less-than-a-slice"),
        pytest.param(stored_slice(0, 199), None, id="two-slices"),
        pytest.param(stored_slice(50, 149), None, id="not-aligned"),
        pytest.param(stored_slice(0, 99, length=250), None, id="not-above-the-threshold"),
        pytest.param(stored_slice(0, 99, etag='W/"v1"'), None, id="weak-etag"),
        pytest.param(stored_slice(0, 99, etag=None), None, id="no-etag"),
        pytest.param(replace(stored_slice(0, 99), parts=(), complete_length=-1), None, id="complete"),
        pytest.param(replace(stored_slice(0, 99), parts=((0, 99), (200, 299))), None, id="two-parts"),
    ],
)
def test_which_stored_responses_are_slices(entry: StoredResponse, index: int | None) -> None:
    assert index_of(entry, SPEC) == index


@pytest.mark.parametrize(
    ("a", "b", "combine"),
    [
        (stored_slice(0, 99), stored_slice(100, 199), True),
        (stored_slice(0, 99), stored_slice(100, 199, etag='"v2"'), False),  # another representation
        (stored_slice(0, 99), stored_slice(100, 199, length=1001), False),  # another length
        (stored_slice(0, 99, etag='W/"v1"'), stored_slice(100, 199, etag='W/"v1"'), False),  # weak: never
        (stored_slice(0, 99, etag=None), stored_slice(100, 199, etag=None), False),
    ],
)
def test_only_slices_of_one_representation_combine(
    a: StoredResponse, b: StoredResponse, combine: bool
) -> None:
    assert same_representation(a, b) is combine
    assert same_representation(b, a) is combine


@pytest.mark.parametrize(
    ("status", "content_range", "length", "etag", "accept_ranges", "asked", "found"),
    [
        pytest.param(200, None, 1000, '"v"', "bytes", False, (0, 99, 1000), id="large-200"),
        pytest.param(200, None, 1000, '"v"', "none", False, None, id="200-without-ranges"),
        pytest.param(200, None, 1000, '"v"', None, False, None, id="200-not-saying"),
        pytest.param(200, None, 1000, '"v"', "bytes", True, None, id="200-to-a-range: ignored"),
        pytest.param(200, None, 250, '"v"', "bytes", False, None, id="200-at-the-threshold"),
        pytest.param(200, None, None, '"v"', "bytes", False, None, id="200-unknown-length"),
        pytest.param(200, None, 1000, 'W/"v"', "bytes", False, None, id="200-weak-etag"),
        pytest.param(200, None, 1000, None, "bytes", False, None, id="200-no-etag"),
        pytest.param(206, "bytes 400-499/1000", 100, '"v"', None, True, (400, 499, 1000), id="206-a-slice"),
        pytest.param(206, "bytes 400-699/1000", 300, '"v"', None, True, (400, 499, 1000), id="206-slices"),
        pytest.param(206, "bytes 900-949/950", 50, '"v"', None, True, (900, 949, 950), id="206-last"),
        pytest.param(206, "bytes 400-450/1000", 51, '"v"', None, True, None, id="206-less"),
        pytest.param(206, "bytes 450-549/1000", 100, '"v"', None, True, None, id="206-not-aligned"),
        pytest.param(206, "bytes 0-99/200", 100, '"v"', None, True, None, id="206-small-object"),
        pytest.param(206, "bytes 0-99/*", 100, '"v"', None, True, None, id="206-unknown-length"),
        pytest.param(206, "bytes 0-99/1000", 100, 'W/"v"', None, True, None, id="206-weak-etag"),
        pytest.param(304, None, None, '"v"', None, True, None, id="304"),
    ],
)
def test_what_an_origin_response_reveals(
    status: int,
    content_range: str | None,
    length: int | None,
    etag: str | None,
    accept_ranges: str | None,
    asked: bool,
    found: tuple[int, int, int] | None,
) -> None:
    assert slice_in_response(status, content_range, length, etag, accept_ranges, asked, SPEC) == found


@pytest.mark.parametrize(
    ("first", "response_last", "held"),
    [
        (0, 999, [(0, 99), (100, 199)]),  # a whole 200: two slices, then it is dropped
        (400, 499, [(400, 499)]),
        (400, 599, [(400, 499), (500, 599)]),
        (400, 550, [(400, 499)]),  # a slice the response does not hold whole is not kept
        (900, 999, [(900, 999)]),
    ],
)
def test_the_slices_a_revealing_response_gives(
    first: int, response_last: int, held: list[tuple[int, int]]
) -> None:
    assert slices_held(first, response_last, 1000, 100) == held


@pytest.mark.parametrize(
    ("value", "if_range", "expected"),
    [
        (None, None, Whole()),
        ("bytes=150-160", None, ByteRange(150, 160, 1000)),
        ("bytes=-10", None, ByteRange(990, 999, 1000)),
        ("bytes=990-2000", None, ByteRange(990, 999, 1000)),
        ("bytes=1000-", None, Unsatisfiable(1000)),
        ("bytes=0-1,5-6", None, Whole()),  # several ranges: the whole 200
        ("bytes=0-9", '"v1"', ByteRange(0, 9, 1000)),
        ("bytes=0-9", '"v0"', Whole()),  # If-Range of another representation
    ],
)
def test_what_a_request_wants_of_a_sliced_representation(
    value: str | None, if_range: str | None, expected: object
) -> None:
    assert wanted(value, if_range, stored_slice(0, 99)) == expected


@pytest.mark.parametrize(
    ("content_range", "asked", "expected"),
    [
        ("bytes 0-99/1000", "bytes=10-19", (10, ByteRange(10, 19, 1000))),
        ("bytes 100-299/1000", "bytes=150-250", (50, ByteRange(150, 250, 1000))),
        ("bytes 100-199/1000", "bytes=100-199", None),  # exactly what was asked
        ("bytes 100-199/1000", "bytes=50-150", None),  # does not hold it
        ("bytes 900-999/1000", "bytes=950-", (50, ByteRange(950, 999, 1000))),
        ("bytes 0-99/1000", None, None),
        (None, "bytes=0-9", None),
    ],
)
def test_a_cover_is_trimmed_to_the_clients_range(
    content_range: str | None, asked: str | None, expected: tuple[int, ByteRange] | None
) -> None:
    assert trim(content_range, asked) == expected


@pytest.mark.parametrize(
    ("chunks", "skip", "count", "out"),
    [
        ([b"abcdef"], 0, 6, b"abcdef"),
        ([b"abc", b"def", b"ghi"], 2, 5, b"cdefg"),
        ([b"ab", b"cd", b"ef"], 4, 10, b"ef"),  # the stream ends early: fewer bytes, no error here
        ([b"abc"], 1, 0, b""),
        ([b"a", b"", b"bcd"], 1, 2, b"bc"),
    ],
)
async def test_byte_window_yields_the_bytes_asked_and_stops_reading(
    chunks: list[bytes], skip: int, count: int, out: bytes
) -> None:
    read: list[bytes] = []

    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            read.append(chunk)
            yield chunk

    got = [c async for c in slices.byte_window(source(), skip, count)]
    assert b"".join(got) == out and all(got)
    if count and len(out) == count:  # nothing read past the chunk that completed the window
        assert b"".join(read)[: skip + count] == b"".join(chunks)[: skip + count]
        assert len(b"".join(read[:-1])) < skip + count
