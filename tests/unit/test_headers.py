"""proxy.headers: Cache-Control and targeted-field parsing, HTTP-dates, entity-tags, hop-by-hop fields."""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator

import pytest
from multidict import CIMultiDict

from proxy import headers as headers_module
from proxy.config import OriginConfig
from proxy.headers import (
    HOP_BY_HOP,
    combined_value,
    connection_listed,
    end_to_end,
    fields_end_to_end,
    format_http_date,
    parse_cache_control,
    parse_etags,
    parse_http_date,
    parse_targeted_field,
    strong_match,
    weak_match,
)

from .support import hdrs

# --------------------------------------------------------------------------- Cache-Control (RFC 9111 §5.2)

CC_PARSE = [
    pytest.param(["no-cache"], {"no-cache": None}, id="9111-5.2-directive-without-argument"),
    pytest.param(["max-age=60"], {"max-age": "60"}, id="9111-5.2-token-argument"),
    pytest.param(['max-age="60"'], {"max-age": "60"}, id="9111-5.2-quoted-argument-accepted"),
    pytest.param(
        ["Max-Age=5, NO-STORE"], {"max-age": "5", "no-store": None}, id="9111-5.2-names-case-insensitive"
    ),
    pytest.param(
        ['private="Set-Cookie, X-A", max-age=5'],
        {"private": "Set-Cookie, X-A", "max-age": "5"},
        id="9111-5.2-comma-inside-quoted-string",
    ),
    pytest.param([r'ext="a\"b\\c"'], {"ext": 'a"b\\c'}, id="9110-5.6.4-quoted-pair-unescaped"),
    pytest.param(["max-age=5", "public"], {"max-age": "5", "public": None}, id="9110-5.3-lines-combined"),
    pytest.param([", ,max-age=5,,"], {"max-age": "5"}, id="9110-5.6.1-empty-list-elements-ignored"),
    pytest.param(["  max-age=5 ,\tpublic  "], {"max-age": "5", "public": None}, id="9110-5.6.3-ows-ignored"),
    pytest.param(["x-ext=1, public"], {"x-ext": "1", "public": None}, id="9111-5.2.3-extension-kept"),
    pytest.param([], {}, id="9111-5.2-absent"),
]


@pytest.mark.parametrize(("lines", "expected"), CC_PARSE)
def test_parse_cache_control(lines: list[str], expected: dict[str, str | None]) -> None:
    parsed = parse_cache_control(lines)
    assert dict(parsed.values) == expected
    assert not parsed.invalid
    assert parsed.duplicates == frozenset()


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(["max-age=5, max-age=10"], id="9111-4.2.1-duplicate-in-one-line"),
        pytest.param(["max-age=5", "MAX-AGE=10"], id="9111-4.2.1-duplicate-across-lines"),
    ],
)
def test_rfc9111_s4_2_1_duplicate_directive_recorded(lines: list[str]) -> None:
    parsed = parse_cache_control(lines)
    assert parsed.duplicates == frozenset({"max-age"})
    assert parsed.get("max-age") == "5"  # the first occurrence
    assert parsed.seconds("max-age") == -1  # but not usable: the policy treats it as stale


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("max-age=5 60", id="9111-5.2-junk-after-argument"),
        pytest.param("max-age=", id="9111-5.2-empty-argument"),
        pytest.param('private="unterminated', id="9111-5.2-unterminated-quoted-string"),
        pytest.param("=5", id="9111-5.2-missing-name"),
        pytest.param("max age", id="9111-5.2-space-in-name"),
    ],
)
def test_rfc9111_s5_2_invalid_syntax_flagged(line: str) -> None:
    assert parse_cache_control([line]).invalid


DELTA_SECONDS = [
    pytest.param("max-age=60", 60, id="9111-1.2.2-digits"),
    pytest.param('max-age="60"', 60, id="9111-5.2-quoted-digits"),
    pytest.param("public", None, id="9111-1.2.2-absent"),
    pytest.param("max-age", -1, id="9111-1.2.2-missing-argument"),
    pytest.param("max-age=-1", -1, id="9111-1.2.2-negative"),
    pytest.param("max-age=1.5", -1, id="9111-1.2.2-decimal"),
    pytest.param("max-age=abc", -1, id="9111-1.2.2-letters"),
    pytest.param("max-age=99999999999", 2**31, id="9111-1.2.2-overflow-is-2^31"),
    # int() raised on these past 4300 digits (a 500): no more than 18 significant digits are converted.
    pytest.param("max-age=" + "9" * 5000, 2**31, id="9111-1.2.2-5000-digits-is-2^31"),
    pytest.param("max-age=" + "0" * 5000 + "60", 60, id="9111-1.2.2-5000-leading-zeros"),
    # delta-seconds is 1*DIGIT, and DIGIT is ASCII (RFC 5234): other Unicode digits are invalid.
    pytest.param('max-age="\u00b2"', -1, id="9111-1.2.2-superscript-digit-invalid"),
    pytest.param('max-age="\u0663"', -1, id="9111-1.2.2-arabic-indic-digit-invalid"),
]


@pytest.mark.parametrize(("line", "expected"), DELTA_SECONDS)
def test_rfc9111_s1_2_2_delta_seconds(line: str, expected: int | None) -> None:
    assert parse_cache_control([line]).seconds("max-age") == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            'private="Set-Cookie, X-Secret"', ("set-cookie", "x-secret"), id="9111-5.2.2.7-qualified"
        ),
        pytest.param('no-cache="X-A,,x-b "', ("x-a", "x-b"), id="9111-5.2.2.4-qualified-list"),
        pytest.param("private", (), id="9111-5.2.2.7-unqualified"),
        pytest.param("public", (), id="9111-5.2.2.7-absent"),
    ],
)
def test_rfc9111_s5_2_2_field_names(line: str, expected: tuple[str, ...]) -> None:
    parsed = parse_cache_control([line])
    name = "no-cache" if "no-cache" in line else "private"
    assert parsed.field_names(name) == expected


# --------------------------------------------------------------------------- targeted fields (RFC 9213 §2.1)

TARGETED = [
    pytest.param(["max-age=60"], {"max-age": "60"}, id="9213-2.1-integer"),
    pytest.param(["public"], {"public": None}, id="9213-2.1-boolean-true-is-valueless"),
    pytest.param(["no-store=?1"], {"no-store": None}, id="9213-2.1-explicit-true"),
    pytest.param(["private=?0, max-age=5"], {"max-age": "5"}, id="9213-2.1-false-means-absent"),
    pytest.param(['private="set-cookie"'], {"private": "set-cookie"}, id="9213-2.1-string"),
    pytest.param(["foo=bar"], {"foo": "bar"}, id="9213-2.1-token"),
    pytest.param(["max-age=60;x=1"], {"max-age": "60"}, id="9213-2.1-parameters-ignored"),
    pytest.param(["max-age=0"], {"max-age": "0"}, id="9213-2.1-zero-integer"),
    pytest.param(
        ["no-cache, private"], {"no-cache": None, "private": None}, id="9213-2.1-flag-or-string-as-flag"
    ),
    pytest.param(['no-cache="a, b"'], {"no-cache": "a, b"}, id="9213-2.1-field-names-string"),
    pytest.param(["foo=1.5, public"], {"public": None}, id="9213-2.1-extension-of-any-type-ignored"),
    pytest.param(["foo=(a b), max-age=5"], {"max-age": "5"}, id="9213-2.1-extension-inner-list-ignored"),
    pytest.param(["max-age=60", "public"], {"max-age": "60", "public": None}, id="9213-2.1-lines-combined"),
    pytest.param(["none"], {"none": None}, id="9213-3.1-unknown-directive-still-valid"),
]


@pytest.mark.parametrize(("lines", "expected"), TARGETED)
def test_rfc9213_targeted_field_parsed(lines: list[str], expected: dict[str, str | None]) -> None:
    parsed = parse_targeted_field(lines)
    assert parsed is not None
    assert dict(parsed.values) == expected


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(["max-age=60,,"], id="9213-2.1-empty-member"),
        pytest.param(["MAX-AGE=60"], id="9213-2.1-uppercase-key"),
        pytest.param(['max-age="60'], id="9213-2.1-unterminated-string"),
        pytest.param(["max-age=60 public"], id="9213-2.1-missing-comma"),
        pytest.param(['private="caf\u00e9"'], id="9213-2.1-non-ascii"),
        pytest.param([""], id="9213-2.1-empty-field"),
        pytest.param([], id="9213-2.1-absent"),
    ],
)
def test_rfc9213_unparsable_targeted_field_is_none(lines: list[str]) -> None:
    assert parse_targeted_field(lines) is None


# RFC 9213 §2.1: a known directive whose value has another type than its definition implies
# ("SHOULD NOT consume values that violate these inferred constraints") makes the field invalid
# as a whole, so Cache-Control applies (see test_freshness / test_storability).
WRONG_TYPES = [
    pytest.param(['max-age="10000"'], id="9213-2.1-max-age-string"),
    pytest.param(["max-age=ten"], id="9213-2.1-max-age-token"),
    pytest.param(["max-age=1.5"], id="9213-2.1-max-age-decimal"),
    pytest.param(["max-age=-1"], id="9213-2.1-max-age-negative"),
    pytest.param(["max-age=(1 2)"], id="9213-2.1-max-age-inner-list"),
    pytest.param(["max-age"], id="9213-2.1-max-age-without-value"),
    pytest.param(["max-age=?0"], id="9213-2.1-max-age-boolean"),
    pytest.param(["max-age=:AAAA:"], id="9213-2.1-max-age-byte-sequence"),
    pytest.param(['s-maxage="60"'], id="9213-2.1-s-maxage-string"),
    pytest.param(["stale-while-revalidate=1.0"], id="5861-3-swr-decimal"),
    pytest.param(["stale-if-error=-5"], id="5861-4-sie-negative"),
    pytest.param(["no-store=1"], id="9213-2.1-no-store-integer"),
    pytest.param(['public="yes"'], id="9213-2.1-public-string"),
    pytest.param(["must-revalidate=(a)"], id="9213-2.1-must-revalidate-inner-list"),
    pytest.param(["no-cache=set-cookie"], id="9213-2.1-no-cache-token"),
    pytest.param(["private=(a b)"], id="9213-2.1-private-inner-list"),
    pytest.param(["private=3"], id="9213-2.1-private-integer"),
    pytest.param(["max-age=60", 'public, s-maxage="5"'], id="9213-2.1-any-line-spoils-the-field"),
]


@pytest.mark.parametrize("lines", WRONG_TYPES)
def test_rfc9213_s2_1_wrong_member_type_invalidates_the_field(lines: list[str]) -> None:
    assert parse_targeted_field(lines) is None


# --------------------------------------------------------------------------- HTTP-date (RFC 9110 §5.6.7)

SUNDAY = 784_111_777.0  # Sun, 06 Nov 1994 08:49:37 GMT, the RFC's example


@pytest.fixture
def far_from_utc() -> Iterator[None]:
    """Run with a local time zone far from UTC, so that a date read as local time is caught."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        yield
    finally:
        mp.undo()
        time.tzset()


# Two-digit RFC 850 years are placed relative to the receipt time (§5.6.7); 2023 here.
RECEIVED = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT


@pytest.mark.usefixtures("far_from_utc")
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT", id="9110-5.6.7-imf-fixdate"),
        pytest.param("Sunday, 06-Nov-94 08:49:37 GMT", id="9110-5.6.7-rfc850"),
        pytest.param("Sun Nov  6 08:49:37 1994", id="9110-5.6.7-asctime-is-utc"),
        pytest.param("Sun Nov 06 08:49:37 1994", id="9110-5.6.7-asctime-2digit-day"),
        pytest.param("  Sun, 06 Nov 1994 08:49:37 GMT ", id="9110-5.5-surrounding-whitespace"),
        pytest.param("\tSun, 06 Nov 1994 08:49:37 GMT", id="9110-5.5-surrounding-tab"),
    ],
)
def test_rfc9110_s5_6_7_date_formats(value: str) -> None:
    assert parse_http_date(value, now=RECEIVED) == SUNDAY


# RFC 9110 §5.6.7: only the three formats are HTTP-dates; RFC 9111 §5.3 then makes such an
# Expires "already expired" (see test_freshness), and If-Modified-Since is ignored (§13.1.3).
INVALID_DATES = [
    pytest.param("0", id="9111-5.3-zero"),
    pytest.param("-1", id="9110-5.6.7-negative"),
    pytest.param("", id="9110-5.6.7-empty"),
    pytest.param(None, id="9110-5.6.7-absent"),
    pytest.param("yesterday", id="9110-5.6.7-words"),
    pytest.param("Sun, 06 Foo 1994 08:49:37 GMT", id="9110-5.6.7-bad-month"),
    pytest.param("Sun, 06 Nov 1994 08:49:37 UTC", id="9110-5.6.7-utc-not-gmt"),
    pytest.param("Sun, 06 Nov 1994 08:49:37 AEST", id="9110-5.6.7-aest-zone"),
    pytest.param("Sun, 06 Nov 1994 08:49:37 +0000", id="9110-5.6.7-numeric-zone"),
    pytest.param("Sun, 06 Nov 1994 08:49:37", id="9110-5.6.7-no-zone"),
    pytest.param("Sun, 06 Nov 94 08:49:37 GMT", id="9110-5.6.7-imf-fixdate-two-digit-year"),
    pytest.param("Sun 06 Nov 1994 08:49:37 GMT", id="9110-5.6.7-no-comma"),
    pytest.param("Sun,  06 Nov 1994 08:49:37 GMT", id="9110-5.6.7-two-spaces-after-comma"),
    pytest.param("Sun, 06  Nov  1994  08:49:37  GMT", id="9110-5.6.7-several-spaces"),
    pytest.param("Sun, 06-Nov-1994 08:49:37 GMT", id="9110-5.6.7-dashes-in-imf-fixdate"),
    pytest.param("Sun, 06 Nov 1994 08.49.37 GMT", id="9110-5.6.7-dots-in-time"),
    pytest.param("Sun, 06 Nov 1994 8:49:37 GMT", id="9110-5.6.7-one-digit-hour"),
    pytest.param("Sun, 6 Nov 1994 08:49:37 GMT", id="9110-5.6.7-one-digit-day"),
    pytest.param("Sun, 06 Nov 1994 08:49 GMT", id="9110-5.6.7-no-seconds"),
    pytest.param("sun, 06 nov 1994 08:49:37 gmt", id="9110-5.6.7-names-are-case-sensitive"),
    pytest.param("Sunday, 06 Nov 1994 08:49:37 GMT", id="9110-5.6.7-long-day-name-in-imf-fixdate"),
    pytest.param("Sun, 06-Nov-94 08:49:37 GMT", id="9110-5.6.7-rfc850-short-day-name"),
    pytest.param("Sunday, 06-Nov-1994 08:49:37 GMT", id="9110-5.6.7-rfc850-four-digit-year"),
    pytest.param("Sun Nov 6 08:49:37 1994", id="9110-5.6.7-asctime-one-space-before-one-digit-day"),
    pytest.param("Sun Nov  6 08:49:37 1994 GMT", id="9110-5.6.7-asctime-with-zone"),
    pytest.param("1994-11-06T08:49:37Z", id="9110-5.6.7-iso-8601"),
    pytest.param("Sun, 31 Nov 1994 08:49:37 GMT", id="9110-5.6.7-no-such-day"),
    pytest.param("Sun, 06 Nov 1994 24:00:00 GMT", id="9110-5.6.7-hour-24"),
    pytest.param("Sun, 06 Nov 1994 08:60:00 GMT", id="9110-5.6.7-minute-60"),
    pytest.param("Sun, 06 Nov 1994 08:49:37 GMT junk", id="9110-5.6.7-trailing-text"),
    pytest.param("Sun, \u0660\u0666 Nov 1994 08:49:37 GMT", id="9110-5.6.7-non-ascii-digits"),
]


@pytest.mark.parametrize("value", INVALID_DATES)
def test_rfc9110_s5_6_7_invalid_date_is_none(value: str | None) -> None:
    assert parse_http_date(value, now=RECEIVED) is None


RFC850_YEARS = [
    # (two-digit year, receipt time, year it means): §5.6.7 "more than 50 years in the future" is the past.
    pytest.param("94", RECEIVED, 1994, id="9110-5.6.7-rfc850-past-century"),
    pytest.param("23", RECEIVED, 2023, id="9110-5.6.7-rfc850-this-year"),
    pytest.param("73", RECEIVED, 2073, id="9110-5.6.7-rfc850-50-years-ahead-is-future"),
    pytest.param("74", RECEIVED, 1974, id="9110-5.6.7-rfc850-51-years-ahead-is-past"),
    pytest.param("01", 946_684_800.0 - 86_400, 2001, id="9110-5.6.7-rfc850-across-the-century"),
]


@pytest.mark.parametrize(("yy", "received", "year"), RFC850_YEARS)
def test_rfc9110_s5_6_7_rfc850_two_digit_year(yy: str, received: float, year: int) -> None:
    expected = calendar.timegm((year, 11, 6, 8, 49, 37, 0, 0, 0))
    # The day name is not checked against the date (the ABNF has no such rule).
    assert parse_http_date(f"Sunday, 06-Nov-{yy} 08:49:37 GMT", now=received) == expected


def test_rfc9110_s5_6_7_leap_second_accepted() -> None:
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT", now=RECEIVED) == 1_483_228_800.0


def test_rfc9110_s5_6_7_rfc850_year_follows_now_when_parsed_again() -> None:
    # Parsed dates are remembered, but an RFC 850 date's century depends on the receipt time.
    value = "Sunday, 06-Nov-74 08:49:37 GMT"
    assert parse_http_date(value, now=RECEIVED) == calendar.timegm((1974, 11, 6, 8, 49, 37, 0, 0, 0))
    later = calendar.timegm((2030, 1, 1, 0, 0, 0, 0, 0, 0))
    assert parse_http_date(value, now=later) == calendar.timegm((2074, 11, 6, 8, 49, 37, 0, 0, 0))


def test_parsed_dates_are_remembered_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    memo: dict[str, float] = {}
    monkeypatch.setattr(headers_module, "_PARSED_DATES", memo)
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT", now=RECEIVED) == SUNDAY
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT", now=RECEIVED) == SUNDAY
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 UTC", now=RECEIVED) is None
    assert list(memo) == ["Sun, 06 Nov 1994 08:49:37 GMT"]  # what is not a date is not kept
    # A date still, but not kept: its size is the client's to choose.
    padded = " " * 8000 + "Sun, 06 Nov 1994 08:49:37 GMT"
    assert parse_http_date(padded, now=RECEIVED) == SUNDAY
    assert padded not in memo
    for second in range(headers_module.PARSED_DATES_LIMIT + 10):
        parse_http_date(format_http_date(RECEIVED + second), now=RECEIVED)
    assert len(memo) <= headers_module.PARSED_DATES_LIMIT


def test_rfc9110_s5_6_7_format_is_imf_fixdate() -> None:
    assert format_http_date(SUNDAY) == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert parse_http_date(format_http_date(RECEIVED), now=RECEIVED) == RECEIVED


# --------------------------------------------------------------------------- entity-tags (RFC 9110 §8.8.3)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param('"a"', ['"a"'], id="9110-8.8.3-strong"),
        pytest.param('W/"a", "b"', ['W/"a"', '"b"'], id="9110-13.1.2-list"),
        pytest.param(' "a" ,  "b" ', ['"a"', '"b"'], id="9110-13.1.2-list-with-ows"),
        pytest.param('""', ['""'], id="9110-8.8.3-empty-opaque-tag"),
        pytest.param("*", ["*"], id="9110-13.1.2-star"),
        pytest.param("a", None, id="9110-8.8.3-unquoted-malformed"),
        pytest.param('"a', None, id="9110-8.8.3-unterminated-malformed"),
        pytest.param("W/a", None, id="9110-8.8.3-weak-unquoted-malformed"),
        pytest.param('"a" "b"', None, id="9110-13.1.2-missing-comma-malformed"),
        pytest.param('"a", *', None, id="9110-13.1.2-star-inside-list-malformed"),
        pytest.param(None, None, id="9110-13.1.2-absent"),
    ],
)
def test_rfc9110_parse_etags(value: str | None, expected: list[str] | None) -> None:
    wanted = None if expected is None else tuple(expected)
    assert parse_etags(value) == wanted
    assert parse_etags(value) == wanted  # the remembered answer, malformed ones included


def test_parse_etags_memo_stays_bounded() -> None:
    from proxy import headers

    for n in range(headers.PARSED_ETAGS_LIMIT + 10):
        assert parse_etags(f'"{n}"') == (f'"{n}"',)
    assert len(headers._PARSED_ETAGS) <= headers.PARSED_ETAGS_LIMIT
    # A long list (a client's to choose) is parsed, never kept: memory stays bounded by size too.
    long_list = ", ".join(f'"{n:04}"' for n in range(100))
    assert parse_etags(long_list) == tuple(f'"{n:04}"' for n in range(100))
    assert long_list not in headers._PARSED_ETAGS


# RFC 9110 §8.8.3.2, the table of example comparisons.
@pytest.mark.parametrize(
    ("a", "b", "strong", "weak"),
    [
        pytest.param('W/"1"', 'W/"1"', False, True, id="9110-8.8.3.2-weak-weak-same"),
        pytest.param('W/"1"', 'W/"2"', False, False, id="9110-8.8.3.2-weak-weak-different"),
        pytest.param('W/"1"', '"1"', False, True, id="9110-8.8.3.2-weak-strong-same"),
        pytest.param('"1"', '"1"', True, True, id="9110-8.8.3.2-strong-strong-same"),
        pytest.param('"1"', '"2"', False, False, id="9110-8.8.3.2-strong-strong-different"),
    ],
)
def test_rfc9110_s8_8_3_2_comparison_table(a: str, b: str, strong: bool, weak: bool) -> None:
    assert strong_match(a, b) is strong
    assert strong_match(b, a) is strong
    assert weak_match(a, b) is weak
    assert weak_match(b, a) is weak


def test_rfc9110_s5_3_combined_value() -> None:
    h = hdrs(("Vary", "Accept"), ("vary", "Accept-Encoding"))
    assert combined_value(h, "VARY") == "Accept, Accept-Encoding"
    assert combined_value(h, "Link") is None


# --------------------------------------------------------------------------- hop-by-hop (RFC 9110 §7.6.1)


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_rfc9110_s7_6_1_hop_by_hop_field_stripped(name: str) -> None:
    h = hdrs((name.title(), "x"), ("Cache-Control", "max-age=60"))
    assert list(end_to_end(h).items()) == [("Cache-Control", "max-age=60")]


def test_rfc9110_s7_6_1_hop_by_hop_list_is_complete() -> None:
    assert {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    } <= HOP_BY_HOP


def test_rfc9110_s7_6_1_connection_named_fields_stripped() -> None:
    h = hdrs(
        ("Connection", "x-FOO, close"),
        ("connection", "X-Bar"),
        ("X-Foo", "1"),
        ("X-Bar", "2"),
        ("Link", "</a>"),
        ("ETag", '"e"'),
        ("Link", "</b>"),
    )
    assert connection_listed(h) == frozenset({"x-foo", "close", "x-bar"})
    # End-to-end fields keep their order and their repeated lines.
    assert list(end_to_end(h).items()) == [("Link", "</a>"), ("ETag", '"e"'), ("Link", "</b>")]


def test_end_to_end_drop_is_case_insensitive() -> None:
    h = hdrs(("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("ETag", '"e"'))
    assert list(end_to_end(h, drop=("SET-COOKIE",)).items()) == [("ETag", '"e"')]


def test_requirements_s2_unkeyed_inputs_are_dropped_by_default() -> None:
    """Cache poisoning: the default unkeyed request fields are removable with end_to_end(drop=...)."""
    unkeyed = OriginConfig().unkeyed_request_headers
    for name in ("X-Forwarded-Host", "X-Forwarded-Scheme", "X-Original-URL"):
        assert name in unkeyed
    h = hdrs(
        ("x-forwarded-host", "evil.example"),
        ("X-FORWARDED-SCHEME", "http"),
        ("X-Original-URL", "/admin"),
        ("Accept", "*/*"),
    )
    assert list(end_to_end(h, drop=unkeyed).items()) == [("Accept", "*/*")]


# The request's fields as received (bytes), straight to end-to-end: what Engine.normalised
# sends to the origin and keys variants on. It must keep exactly what end_to_end keeps.
FIELDS_CASES = [
    pytest.param([(b"Host", b"a"), (b"Accept", b"*/*")], (), True, id="plain"),
    pytest.param(
        [(b"Connection", b"x-FOO, close"), (b"X-Foo", b"1"), (b"connection", b"X-Bar"), (b"x-bar", b"2"),
         (b"Keep-Alive", b"t=5"), (b"Link", b"</a>"), (b"TE", b"trailers"), (b"Link", b"</b>")],
        (), True, id="9110-7.6.1-connection-named-and-hop-by-hop-dropped-order-and-repeats-kept",
    ),
    pytest.param([(b"X-Forwarded-Host", b"evil"), (b"x-forwarded-host", b"e2"), (b"A", b"1")],
                 ("X-Forwarded-Host",), True, id="drop-list-case-insensitive"),
    pytest.param([(b"X_Forwarded_Host", b"evil"), (b"Accept", b"*/*")], (), False,
                 id="underscored-names-dropped"),
    pytest.param([(b"X_Forwarded_Host", b"v"), (b"Accept", b"*/*")], (), True, id="underscored-names-kept"),
    pytest.param([(b"X-Name", "caf\u00e9".encode()), (b"X-Raw", b"\xff\xfe")], (), True,
                 id="non-ascii-values-round-trip"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "drop", "underscores"), FIELDS_CASES)
def test_fields_end_to_end_keeps_what_end_to_end_keeps(
    raw: list[tuple[bytes, bytes]], drop: tuple[str, ...], underscores: bool
) -> None:
    decoded = CIMultiDict(
        (n.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape")) for n, v in raw
    )
    connection = ", ".join(decoded.getall("Connection", ())) or None
    expected = list(end_to_end(decoded, drop, underscores=underscores).items())
    assert list(fields_end_to_end(raw, connection, drop, underscores=underscores).items()) == expected


def test_format_http_date_remembers_only_the_same_second() -> None:
    # The memo of the last second's text must give what email.utils gives, across seconds,
    # fractions and back again (revalidations are not in clock order across workers' threads).
    import email.utils

    for t in (RECEIVED, RECEIVED + 0.999, RECEIVED + 1, RECEIVED + 0.5, RECEIVED - 86400.25, 0.0, -0.5):
        assert format_http_date(t) == email.utils.formatdate(t, usegmt=True)
