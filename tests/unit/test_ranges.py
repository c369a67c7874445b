"""proxy.ranges: single byte ranges from a stored response (RFC 9110 §14), If-Range (§13.1.5), and the
bookkeeping of incomplete stored responses (RFC 9111 §3.3, §3.4)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from multidict import CIMultiDict

from proxy.delivery import covered_range
from proxy.entry import StoredResponse
from proxy.ranges import (
    ByteRange,
    Unsatisfiable,
    combine,
    forwardable_range,
    if_range_allows,
    parse_content_range,
    parse_range,
    states_one_range,
)

from .support import NOW, entry, http_date

LENGTH = 100

RANGES = [
    pytest.param("bytes=0-9", ByteRange(0, 9, LENGTH), id="9110-14.1.1-first-bytes"),
    pytest.param("bytes=0-0", ByteRange(0, 0, LENGTH), id="9110-14.1.1-single-byte"),
    pytest.param("bytes=90-", ByteRange(90, 99, LENGTH), id="9110-14.1.1-open-ended"),
    pytest.param("bytes=-10", ByteRange(90, 99, LENGTH), id="9110-14.1.1-suffix"),
    pytest.param("bytes=-1000", ByteRange(0, 99, LENGTH), id="9110-14.1.1-suffix-longer-than-representation"),
    pytest.param("bytes=50-1000", ByteRange(50, 99, LENGTH), id="9110-14.1.1-last-beyond-end-clipped"),
    pytest.param("Bytes=1-2", ByteRange(1, 2, LENGTH), id="9110-14.1-unit-case-insensitive"),
    pytest.param("bytes=100-", Unsatisfiable(LENGTH), id="9110-15.5.17-start-at-length"),
    pytest.param("bytes=200-300", Unsatisfiable(LENGTH), id="9110-15.5.17-start-beyond-length"),
    pytest.param("bytes=-0", Unsatisfiable(LENGTH), id="9110-14.1.1-zero-suffix"),
    pytest.param("bytes=0-1,5-6", None, id="9110-14.2-multiple-ranges-served-whole"),
    pytest.param("items=0-1", None, id="9110-14.2-other-unit-ignored"),
    pytest.param("bytes=5-2", None, id="9110-14.1.1-last-before-first-invalid"),
    pytest.param("bytes=-", None, id="9110-14.1.1-empty-spec-invalid"),
    pytest.param("bytes=a-b", None, id="9110-14.1.1-not-numbers-invalid"),
    pytest.param("bytes 0-1", None, id="9110-14.1.1-missing-equals-invalid"),
    pytest.param(None, None, id="9110-14.2-no-range"),
    # The grammar has no whitespace inside a range-spec nor around "=": an invalid Range is ignored
    # (§14.2), and "bytes = 1-2" was honoured.
    pytest.param("bytes = 1-2", None, id="9110-14.1.1-whitespace-around-equals-invalid"),
    pytest.param("bytes=1 - 2", None, id="9110-14.1.1-whitespace-around-dash-invalid"),
    pytest.param("bytes =1-2", None, id="9110-14.1.1-whitespace-before-equals-invalid"),
    pytest.param(" bytes=1-2\t", ByteRange(1, 2, LENGTH), id="9110-5.5-surrounding-ows-is-not-the-value"),
    # §5.6.1.2: a recipient ignores empty list elements; OWS around the commas is the list's.
    pytest.param("bytes=1-2,", ByteRange(1, 2, LENGTH), id="9110-5.6.1.2-trailing-empty-element"),
    pytest.param("bytes=, 1-2 ,,", ByteRange(1, 2, LENGTH), id="9110-5.6.1.2-empty-elements"),
    pytest.param("bytes=,", None, id="9110-14.1.1-only-empty-elements-invalid"),
    pytest.param("bytes=01-002", ByteRange(1, 2, LENGTH), id="9110-14.1.1-leading-zeros"),
    pytest.param("bytes=1-2,1-2", None, id="9110-14.2-overlapping-ranges-served-whole"),
    # A position of thousands of digits was converted with int(): past 4300 digits that raised (a 500).
    pytest.param("bytes=1-" + "9" * 5000, ByteRange(1, 99, LENGTH), id="9110-14.1.1-huge-last-pos"),
    pytest.param("bytes=" + "9" * 5000 + "-", Unsatisfiable(LENGTH), id="9110-14.1.1-huge-first-pos"),
    pytest.param("bytes=-" + "9" * 5000, ByteRange(0, 99, LENGTH), id="9110-14.1.1-huge-suffix"),
    pytest.param("bytes=" + "0" * 5000 + "1-2", ByteRange(1, 2, LENGTH), id="9110-14.1.1-many-leading-zeros"),
]


@pytest.mark.parametrize(("value", "expected"), RANGES)
def test_rfc9110_s14_parse_range(value: str | None, expected: ByteRange | Unsatisfiable | None) -> None:
    assert parse_range(value, LENGTH) == expected


def test_rfc9110_s14_empty_representation_is_unsatisfiable() -> None:
    assert parse_range("bytes=0-", 0) == Unsatisfiable(0)
    assert parse_range("bytes=-5", 0) == Unsatisfiable(0)


def test_rfc9110_s14_4_content_range() -> None:
    assert ByteRange(0, 9, 100).content_range == "bytes 0-9/100"
    assert Unsatisfiable(100).content_range == "bytes */100"


LM = http_date(NOW - 3600)
STRONG = entry(etag='"v1"', last_modified=LM)
WEAK = entry(etag='W/"v1"', last_modified=LM)

IF_RANGE = [
    pytest.param(None, STRONG, True, id="9110-13.1.5-absent"),
    pytest.param('"v1"', STRONG, True, id="9110-13.1.5-strong-etag-matches"),
    pytest.param('"v2"', STRONG, False, id="9110-13.1.5-other-etag"),
    pytest.param('W/"v1"', STRONG, False, id="9110-13.1.5-weak-etag-never-matches"),
    pytest.param('"v1"', WEAK, False, id="9110-13.1.5-stored-weak-etag-never-matches"),
    pytest.param('"v1"', entry(etag=None), False, id="9110-13.1.5-stored-without-etag"),
    pytest.param(LM, STRONG, True, id="9110-13.1.5-date-equal-last-modified"),
    pytest.param(http_date(NOW - 3599), STRONG, False, id="9110-13.1.5-date-unequal"),
    pytest.param(http_date(NOW), STRONG, False, id="9110-13.1.5-later-date-is-not-enough"),
    pytest.param(
        LM, entry(etag='"v1"', last_modified=None), False, id="9110-13.1.5-stored-without-last-modified"
    ),
    pytest.param("garbage", STRONG, False, id="9110-13.1.5-neither-etag-nor-date"),
    # §8.8.2.2: Last-Modified is a strong validator only when Date is a second later or more; a date
    # that matched a weak one was honoured, though the representation may have changed within it.
    pytest.param(
        LM, replace(STRONG, date=http_date(NOW - 3600)), False, id="9110-13.1.5-date-of-a-weak-last-modified"
    ),
    pytest.param(
        LM, replace(STRONG, date=http_date(NOW - 3599)), True, id="9110-8.8.2.2-date-a-second-later"
    ),
    pytest.param(LM, replace(STRONG, date=None), False, id="9110-8.8.2.2-no-date-no-strong-date"),
]


@pytest.mark.parametrize(("value", "stored_entry", "expected"), IF_RANGE)
def test_rfc9110_s13_1_5_if_range(value: str | None, stored_entry: StoredResponse, expected: bool) -> None:
    assert if_range_allows(value, stored_entry) is expected


# ------------------------------------------ incomplete stored responses (RFC 9111 §3.3, §3.4)

CONTENT_RANGES = [
    pytest.param("bytes 0-4/10", (0, 4, 10), id="9110-14.4-first-bytes"),
    pytest.param("bytes 9-9/10", (9, 9, 10), id="9110-14.4-last-byte"),
    pytest.param("BYTES 0-9/10", (0, 9, 10), id="9110-14.4-unit-case-insensitive"),
    pytest.param("bytes 0-4/*", None, id="9111-3.3-unknown-length-cannot-be-filed"),
    pytest.param("bytes */10", None, id="9110-14.4-unsatisfied"),
    pytest.param("bytes 5-4/10", None, id="9110-14.4-backwards"),
    pytest.param("bytes 0-10/10", None, id="9110-14.4-past-the-length"),
    pytest.param("bytes 0-4/10, bytes 5-9/10", None, id="9110-14.4-two"),
    pytest.param("bytes=0-4/10", None, id="9110-14.4-not-a-range-request"),
    pytest.param(None, None, id="absent"),
    # A complete length past any a cache can hold: nothing to file (its int() raised past 4300 digits).
    pytest.param("bytes 0-1/" + "9" * 5000, None, id="9110-14.4-length-of-5000-digits"),
]


@pytest.mark.parametrize(("value", "expected"), CONTENT_RANGES)
def test_rfc9110_s14_4_parse_content_range(value: str | None, expected: tuple[int, int, int] | None) -> None:
    assert parse_content_range(value) == expected


FORWARDABLE = [
    pytest.param("bytes=0-4", "bytes=0-4", id="9110-14.1.1-range"),
    pytest.param("Bytes=05-9", "bytes=5-9", id="9110-14.1.1-written-plainly"),
    pytest.param("bytes = 5-9", None, id="9110-14.1.1-whitespace-invalid"),
    pytest.param("bytes=5-9, ", "bytes=5-9", id="9110-5.6.1.2-empty-element"),
    pytest.param("bytes=5-" + "9" * 5000, "bytes=5-1000000000000000000", id="9110-14.1.1-past-any-length"),
    pytest.param("bytes=5-", "bytes=5-", id="9110-14.1.1-the-rest"),
    pytest.param("bytes=-5", "bytes=-5", id="9110-14.1.1-suffix"),
    pytest.param("bytes=-0", None, id="9110-14.1.1-zero-suffix"),
    pytest.param("bytes=5-4", None, id="9110-14.1.1-backwards"),
    pytest.param("bytes=0-1,5-6", None, id="9110-14.2-several-fetch-the-whole"),
    pytest.param("items=0-4", None, id="9110-14.2-another-unit"),
    pytest.param("bytes=-", None, id="9110-14.1.1-empty"),
    pytest.param(None, None, id="absent"),
]


@pytest.mark.parametrize(("value", "expected"), FORWARDABLE)
def test_rfc9111_s3_3_forwardable_range(value: str | None, expected: str | None) -> None:
    assert forwardable_range(value) == expected


BODY = b"0123456789"


def part(
    first: int, last: int, etag: str | None = '"v1"', length: int = 10, **fields: object
) -> StoredResponse:
    """An incomplete stored response holding bytes first..last of BODY (or of a `length`-byte one)."""
    data = (BODY * (length // 10 + 1))[first : last + 1]
    return entry(status=206, body=data, parts=((first, last),), complete_length=length, etag=etag, **fields)


def parts_of(stored: StoredResponse, *pieces: tuple[int, int]) -> StoredResponse:
    """`stored` holding several pieces (already ascending and apart)."""
    data = b"".join(BODY[a : b + 1] for a, b in pieces)
    return replace(stored, body=data, parts=tuple(pieces))


COMBINE = [
    # (stored, new part, expected parts (None: complete), combined?)
    pytest.param(None, part(0, 4), ((0, 4),), id="9111-3.3-first-part"),
    pytest.param(part(0, 4), part(7, 8), ((0, 4), (7, 8)), id="9111-3.4-apart"),
    pytest.param(part(0, 4), part(5, 6), ((0, 6),), id="9111-3.4-adjacent-merge"),
    pytest.param(part(2, 6), part(0, 3), ((0, 6),), id="9111-3.4-overlap-on-the-left"),
    pytest.param(part(2, 6), part(5, 8), ((2, 8),), id="9111-3.4-overlap-on-the-right"),
    pytest.param(part(2, 6), part(3, 4), ((2, 6),), id="9111-3.4-inside"),
    pytest.param(
        parts_of(part(0, 1), (0, 1), (4, 5), (8, 8)), part(1, 4), ((0, 5), (8, 8)), id="9111-3.4-bridge"
    ),
    pytest.param(part(0, 4), part(5, 9), None, id="9111-3.4-the-rest-completes"),
    pytest.param(parts_of(part(0, 1), (0, 1), (8, 9)), part(2, 7), None, id="9111-3.4-the-gap-completes"),
    pytest.param(None, part(0, 9), None, id="9111-3.3-a-whole-206-is-complete"),
    pytest.param(entry(body=BODY, etag='"v1"'), part(3, 5), None, id="9111-3.4-with-a-complete-one"),
    pytest.param(part(0, 4, 'W/"v1"'), part(5, 9, 'W/"v1"'), ((5, 9),), id="9111-3.4-weak-never"),
    pytest.param(part(0, 4), part(5, 9, '"v2"'), ((5, 9),), id="9111-3.4-other-validator"),
    pytest.param(part(0, 4, None), part(5, 9, None), ((5, 9),), id="9111-3.4-no-validator"),
    pytest.param(part(0, 4), part(5, 9, length=20), ((5, 9),), id="9111-3.4-other-length"),
]


@pytest.mark.parametrize(("stored", "new", "expected"), COMBINE)
def test_rfc9111_s3_4_combine(
    stored: StoredResponse | None, new: StoredResponse, expected: tuple[tuple[int, int], ...] | None
) -> None:
    combined = combine(stored, new)
    if expected is None:
        assert (combined.status, combined.reason, combined.parts, combined.complete_length) == (
            200,
            "OK",
            (),
            -1,
        )
        assert combined.body == BODY
        return
    assert combined.status == 206 and combined.parts == expected
    assert combined.complete_length == new.length
    for first, last in expected:
        source = (BODY * 2)[first : last + 1]
        assert combined.bytes_of(first, last) == source
    # Header fields and freshness come from the newer response (RFC 9111 §3.2).
    assert combined.etag == new.etag and combined.response_time == new.response_time


def test_rfc9111_s3_4_newer_bytes_win_where_parts_overlap() -> None:
    stored = replace(part(0, 4), body=b"XXXXX")
    combined = combine(stored, part(3, 6))
    assert combined.parts == ((0, 6),) and combined.body == b"XXX3456"


def test_rfc9111_s3_3_stored_parts_are_bounded() -> None:
    pieces = [(i * 10, i * 10 + size) for i, size in enumerate([0, 5, 1, 3, 2])]  # five parts of 1..6 bytes
    stored = part(0, 0, length=100)
    stored = replace(
        stored,
        body=b"".join((BODY * 10)[a : b + 1] for a, b in pieces),
        parts=tuple(pieces),
    )
    combined = combine(stored, part(60, 60, length=100), max_parts=3)
    # The new part stays, with the two largest of the others (6 and 4 bytes).
    assert combined.parts == ((10, 15), (30, 33), (60, 60))
    assert len(combined.body) == 6 + 4 + 1


COVERED = [
    # (request fields, range answered from parts 0-4 and 8-9 of a 10-byte representation)
    pytest.param({"Range": "bytes=0-4"}, ByteRange(0, 4, 10), id="9111-3.3-a-whole-part"),
    pytest.param({"Range": "bytes=1-2"}, ByteRange(1, 2, 10), id="9111-3.3-within-a-part"),
    pytest.param({"Range": "bytes=-2"}, ByteRange(8, 9, 10), id="9111-3.3-suffix"),
    pytest.param({"Range": "bytes=8-"}, ByteRange(8, 9, 10), id="9111-3.3-open-ended"),
    pytest.param({"Range": "bytes=3-8"}, None, id="9111-3.3-across-a-gap"),
    pytest.param({"Range": "bytes=5-6"}, None, id="9111-3.3-in-a-gap"),
    pytest.param({"Range": "bytes=20-"}, None, id="9111-3.3-unsatisfiable-goes-to-the-origin"),
    pytest.param({"Range": "bytes=0-1,8-9"}, None, id="9110-14.2-several"),
    pytest.param({}, None, id="9111-3.3-no-range"),
    pytest.param({"Range": "bytes=0-4", "If-Range": '"v1"'}, ByteRange(0, 4, 10), id="9110-13.1.5-match"),
    pytest.param({"Range": "bytes=0-4", "If-Range": '"v0"'}, None, id="9110-13.1.5-no-match"),
]


@pytest.mark.parametrize(("fields", "expected"), COVERED)
def test_rfc9111_s3_3_covered_range(fields: dict[str, str], expected: ByteRange | None) -> None:
    stored = parts_of(part(0, 4), (0, 4), (8, 9))
    assert covered_range("GET", CIMultiDict(fields), stored) == expected
    assert covered_range("HEAD", CIMultiDict(fields), stored) is None
    assert covered_range("GET", None, stored) is None


@pytest.mark.parametrize(
    "value, stated",
    [
        ("bytes 0-9/10", True),
        ("bytes 5-9/*", True),  # RFC 9110 §14.4: the complete length may be unknown
        ("BYTES  0-0/1 ", True),
        ("bytes */10", False),  # a 416's unsatisfied-range form
        (None, False),  # a multipart body, or nothing said
        ("bytes 0-9", False),
        ("bytes 9-0/10", False),
        ("bytes 0-10/10", False),
        ("items 0-9/10", False),
        ("bytes 0-1/" + "9" * 5000, False),  # past any length a cache can hold (int() raised on it)
        ("bytes 0-" + "9" * 5000 + "/*", False),
    ],
)
def test_rfc9110_s15_3_7_a_206_states_the_one_range_it_holds(value: str | None, stated: bool) -> None:
    assert states_one_range(value) is stated
