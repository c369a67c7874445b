"""proxy.ranges: single byte ranges from a complete stored 200 (RFC 9110 §14) and If-Range (§13.1.5)."""

from __future__ import annotations

import pytest

from proxy.entry import StoredResponse
from proxy.ranges import ByteRange, Unsatisfiable, if_range_allows, parse_range

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
]


@pytest.mark.parametrize(("value", "stored_entry", "expected"), IF_RANGE)
def test_rfc9110_s13_1_5_if_range(value: str | None, stored_entry: StoredResponse, expected: bool) -> None:
    assert if_range_allows(value, stored_entry) is expected
