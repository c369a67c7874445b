"""proxy.policy freshness lifetime (RFC 9111 §4.2.1, §4.2.2, RFC 9213) and age (§4.2.3)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from multidict import CIMultiDict

from proxy.config import PolicyConfig
from proxy.policy import (
    Freshness,
    age_value,
    corrected_initial_age,
    current_age,
    freshness_lifetime,
    remaining_ttl,
    response_directives,
)

from .support import DEFAULTS, NOW, entry, hdrs, http_date

DATE = ("Date", http_date(NOW))
LM_1000 = ("Last-Modified", http_date(NOW - 10_000))  # heuristic: 10% = 1000 s
DAY = 86_400.0


def lifetime(headers: CIMultiDict[str], status: int = 200, opts: PolicyConfig = DEFAULTS) -> Freshness:
    """The freshness lifetime exactly as plan_store computes it (response received at NOW)."""
    directives, targeted = response_directives(headers, opts)
    return freshness_lifetime(status, headers, directives, targeted is not None, NOW, opts)


PRECEDENCE = [
    pytest.param(
        [DATE, ("CDN-Cache-Control", "max-age=10"), ("Cache-Control", "s-maxage=20, max-age=30")],
        10,
        "max-age",
        id="9213-2.2-targeted-field-beats-s-maxage",
    ),
    pytest.param(
        [DATE, ("Cache-Control", "max-age=30, s-maxage=20")],
        20,
        "s-maxage",
        id="9111-4.2.1-s-maxage-beats-max-age",
    ),
    pytest.param(
        [DATE, ("Cache-Control", "max-age=30"), ("Expires", http_date(NOW + 100))],
        30,
        "max-age",
        id="9111-4.2.1-max-age-beats-expires",
    ),
    pytest.param(
        [DATE, ("Expires", http_date(NOW + 100)), LM_1000],
        100,
        "expires",
        id="9111-4.2.1-expires-beats-heuristic",
    ),
    pytest.param(
        [("Date", http_date(NOW - 50)), ("Expires", http_date(NOW + 100))],
        150,
        "expires",
        id="9111-4.2.1-expires-minus-date-not-now",
    ),
    pytest.param(
        [("Expires", http_date(NOW + 100))],
        100,
        "expires",
        id="9111-4.2.1-expires-without-date-uses-response-time",
    ),
    pytest.param(
        [DATE, ("Expires", http_date(NOW - 100))], 0, "expires", id="9111-4.2.1-expires-in-the-past"
    ),
    pytest.param([DATE, LM_1000], 1000, "heuristic", id="9111-4.2.2-heuristic-10-percent"),
    pytest.param(
        [DATE, ("Last-Modified", http_date(NOW - 30 * DAY))],
        DAY,
        "heuristic",
        id="9111-4.2.2-heuristic-capped",
    ),
    pytest.param(
        [DATE, ("Last-Modified", http_date(NOW + 100))],
        0,
        "heuristic",
        id="9111-4.2.2-last-modified-in-future",
    ),
    pytest.param([DATE], 0, "none", id="9111-4.2.2-no-explicit-no-heuristic"),
    pytest.param([DATE, ("Cache-Control", 'max-age="60"')], 60, "max-age", id="9111-5.2-quoted-max-age"),
]


@pytest.mark.parametrize(("pairs", "expected", "source"), PRECEDENCE)
def test_rfc9111_s4_2_1_precedence(pairs: list[tuple[str, str]], expected: float, source: str) -> None:
    result = lifetime(hdrs(*pairs))
    assert result.lifetime == pytest.approx(expected)
    assert result.source == source


def test_rfc9111_s4_2_2_heuristic_fraction_and_cap_configurable() -> None:
    assert lifetime(hdrs(DATE, LM_1000), opts=replace(DEFAULTS, heuristic_fraction=0.2)).lifetime == 2000
    capped = lifetime(hdrs(DATE, LM_1000), opts=replace(DEFAULTS, heuristic_max=300.0))
    assert (capped.lifetime, capped.source) == (300, "heuristic")


def test_rfc9111_s4_2_2_heuristic_only_for_heuristically_cacheable_status() -> None:
    assert lifetime(hdrs(DATE, LM_1000), status=302).source == "none"


def test_rfc9111_s4_2_2_public_allows_heuristic_for_any_status() -> None:
    result = lifetime(hdrs(DATE, LM_1000, ("Cache-Control", "public")), status=302)
    assert (result.lifetime, result.source) == (1000, "heuristic")


def test_requirements_s3_heuristic_beats_configured_default() -> None:
    opts = replace(DEFAULTS, default_ttl={200: 5.0})
    assert lifetime(hdrs(DATE, LM_1000), opts=opts).source == "heuristic"
    assert lifetime(hdrs(DATE), opts=opts) == Freshness(5.0, "default")
    assert lifetime(hdrs(DATE), status=404, opts=opts) == Freshness(0.0, "none")


# --------------------------------------------------------------------------- targeted fields (RFC 9213 §2.2)


def test_rfc9213_s2_2_targeted_field_ignores_expires() -> None:
    result = lifetime(hdrs(DATE, ("CDN-Cache-Control", "public"), ("Expires", http_date(NOW + 100))))
    assert (result.lifetime, result.source) == (0, "none")


def test_rfc9213_s2_2_targeted_field_ignores_cache_control() -> None:
    result = lifetime(
        hdrs(DATE, ("CDN-Cache-Control", "max-age=10"), ("Cache-Control", "no-store, max-age=999"))
    )
    assert result == Freshness(10.0, "max-age")
    directives, name = response_directives(
        hdrs(("CDN-Cache-Control", "max-age=10"), ("Cache-Control", "no-store")), DEFAULTS
    )
    assert name == "CDN-Cache-Control"
    assert "no-store" not in directives


def test_rfc9213_s2_2_invalid_targeted_field_falls_back_to_the_next_one() -> None:
    pairs = [DATE, ("CDN-Cache-Control", "max-age=60,,"), ("Surrogate-Control", "max-age=20")]
    assert lifetime(hdrs(*pairs)) == Freshness(20.0, "max-age")
    assert response_directives(hdrs(*pairs), DEFAULTS)[1] == "Surrogate-Control"


@pytest.mark.parametrize(
    "targeted",
    [
        pytest.param("MAX-AGE=60", id="9213-2.1-invalid"),
        pytest.param("", id="9213-2.1-empty"),
        pytest.param('max-age="10000"', id="9213-2.1-max-age-string"),
        pytest.param("max-age=10000.0", id="9213-2.1-max-age-decimal"),
        pytest.param("max-age=-10000", id="9213-2.1-max-age-negative"),
        pytest.param("max-age=(10000)", id="9213-2.1-max-age-inner-list"),
        pytest.param('max-age=10000, no-store="x"', id="9213-2.1-one-bad-member-spoils-all"),
    ],
)
def test_rfc9213_s2_2_invalid_targeted_field_falls_back_to_cache_control(targeted: str) -> None:
    pairs = [DATE, ("CDN-Cache-Control", targeted), ("Cache-Control", "max-age=30"), ("Expires", "0")]
    assert lifetime(hdrs(*pairs)) == Freshness(30.0, "max-age")
    assert response_directives(hdrs(*pairs), DEFAULTS)[1] is None


def test_rfc9213_s2_1_wrong_type_falls_back_to_the_next_targeted_field() -> None:
    pairs = [DATE, ("CDN-Cache-Control", 'max-age="10000"'), ("Surrogate-Control", "max-age=20")]
    assert lifetime(hdrs(*pairs)) == Freshness(20.0, "max-age")
    assert response_directives(hdrs(*pairs), DEFAULTS)[1] == "Surrogate-Control"


def test_rfc9213_s2_2_first_configured_field_wins() -> None:
    pairs = [DATE, ("Surrogate-Control", "max-age=20"), ("CDN-Cache-Control", "max-age=10")]
    assert lifetime(hdrs(*pairs)).lifetime == 10
    opts = replace(DEFAULTS, targeted_fields=("Edge-Cache-Control", "Surrogate-Control", "CDN-Cache-Control"))
    assert lifetime(hdrs(*pairs), opts=opts).lifetime == 20
    assert lifetime(hdrs(*pairs, ("edge-cache-control", "max-age=5")), opts=opts).lifetime == 5


# ---------------------------------------------------------------- conservative: invalid means stale

STALE = [
    pytest.param([DATE, ("Expires", "0")], id="9111-5.3-invalid-expires-0"),
    pytest.param(
        [DATE, ("Expires", http_date(NOW + 100)), ("Expires", http_date(NOW + 200))],
        id="9111-4.2.1-duplicate-expires",
    ),
    pytest.param([DATE, ("Cache-Control", "max-age=60, max-age=120")], id="9111-4.2.1-duplicate-max-age"),
    pytest.param(
        [DATE, ("Cache-Control", "max-age=60"), ("Cache-Control", "max-age=60")], id="9111-4.2.1-dup-lines"
    ),
    pytest.param([DATE, ("Cache-Control", "max-age=abc"), LM_1000], id="9111-4.2.1-invalid-max-age"),
    pytest.param([DATE, ("Cache-Control", "max-age=-5")], id="9111-1.2.2-negative-max-age"),
    pytest.param(
        [DATE, ("Cache-Control", "s-maxage=x, max-age=60")], id="9111-4.2.1-invalid-s-maxage-not-skipped"
    ),
    pytest.param(
        [DATE, ("Cache-Control", "max-age=60 junk"), ("Expires", http_date(NOW + 100))],
        id="9111-4.2.1-unparsable-cache-control",
    ),
]


@pytest.mark.parametrize("pairs", STALE)
def test_rfc9111_s4_2_1_invalid_freshness_information_is_stale(pairs: list[tuple[str, str]]) -> None:
    assert lifetime(hdrs(*pairs)) == Freshness(0.0, "invalid")


# RFC 9111 §5.3: "A cache recipient MUST interpret invalid date formats ... as representing a time
# in the past". Each of these spells Fri, 24 Nov 2023 (ten days after NOW) in a form that is not
# one of RFC 9110 §5.6.7's three, so a lenient parser would give ten days of freshness.
INVALID_EXPIRES = [
    pytest.param("Fri, 24 Nov 2023 22:13:20 UTC", id="9111-5.3-utc-zone"),
    pytest.param("Fri, 24 Nov 2023 22:13:20 AEST", id="9111-5.3-aest-zone"),
    pytest.param("Fri, 24 Nov 2023 22:13:20 +0000", id="9111-5.3-numeric-zone"),
    pytest.param("Fri, 24 Nov 23 22:13:20 GMT", id="9111-5.3-imf-fixdate-two-digit-year"),
    pytest.param("Fri 24 Nov 2023 22:13:20 GMT", id="9111-5.3-no-comma"),
    pytest.param("Fri,  24 Nov  2023 22:13:20 GMT", id="9111-5.3-several-spaces"),
    pytest.param("Fri, 24-Nov-2023 22:13:20 GMT", id="9111-5.3-dashes-in-the-date"),
    pytest.param("Fri, 24 Nov 2023 22.13.20 GMT", id="9111-5.3-dots-in-the-time"),
    pytest.param("Sat, 25 Nov 2023 9:13:20 GMT", id="9111-5.3-one-digit-hour"),
    pytest.param("fri, 24 nov 2023 22:13:20 gmt", id="9111-5.3-lower-case-names"),
    pytest.param("2023-11-24T22:13:20Z", id="9111-5.3-iso-8601"),
    pytest.param("Fri, 31 Nov 2023 22:13:20 GMT", id="9111-5.3-no-such-day"),
]


@pytest.mark.parametrize("expires", INVALID_EXPIRES)
def test_rfc9111_s5_3_invalid_expires_is_already_expired(expires: str) -> None:
    assert lifetime(hdrs(DATE, ("Expires", expires))) == Freshness(0.0, "invalid")


VALID_EXPIRES = [
    # RFC 9110 §5.6.7: recipients MUST accept all three formats (ten days after NOW each).
    pytest.param("Fri, 24 Nov 2023 22:13:20 GMT", id="9110-5.6.7-imf-fixdate"),
    pytest.param("Friday, 24-Nov-23 22:13:20 GMT", id="9110-5.6.7-rfc850"),
    pytest.param("Fri Nov 24 22:13:20 2023", id="9110-5.6.7-asctime"),
]


@pytest.mark.parametrize("expires", VALID_EXPIRES)
def test_rfc9110_s5_6_7_every_date_format_gives_expires_freshness(expires: str) -> None:
    assert lifetime(hdrs(DATE, ("Expires", expires))) == Freshness(10 * DAY, "expires")


# The other HTTP-date fields of a response go through the same parser (RFC 9110 §5.6.7):
# the obsolete formats still count, an invalid value counts as absent.
OTHER_DATE_FIELDS = [
    # (Date, Last-Modified, lifetime): heuristic 10% of Date - Last-Modified (10 000 s -> 1000 s).
    pytest.param(
        "Tuesday, 14-Nov-23 22:13:20 GMT", "Tue Nov 14 19:26:40 2023", 1000, id="9110-5.6.7-obsolete-formats"
    ),
    pytest.param(
        "Tue, 14 Nov 2023 23:13:20 UTC", http_date(NOW - 10_000), 1000, id="9110-6.6.1-invalid-date-is-now"
    ),
    pytest.param(
        http_date(NOW), "Tue, 14 Nov 2023 19:26:40 UTC", None, id="9111-4.2.2-invalid-last-modified"
    ),
]


@pytest.mark.parametrize(("date", "last_modified", "expected"), OTHER_DATE_FIELDS)
def test_rfc9110_s5_6_7_date_and_last_modified_formats(
    date: str, last_modified: str, expected: float | None
) -> None:
    result = lifetime(hdrs(("Date", date), ("Last-Modified", last_modified)))
    if expected is None:
        assert result.source == "none"
    else:
        assert result == Freshness(expected, "heuristic")


# --------------------------------------------------------------------------- age (RFC 9111 §4.2.3)

AGES = [
    # (response headers, request_time, response_time, corrected initial age)
    pytest.param([], NOW, NOW, 0, id="9111-4.2.3-nothing"),
    pytest.param([], NOW - 2, NOW, 2, id="9111-4.2.3-response-delay"),
    pytest.param([("Age", "30")], NOW - 2, NOW, 32, id="9111-4.2.3-age-plus-delay"),
    pytest.param(
        [("Age", "30"), ("Date", http_date(NOW - 100))],
        NOW - 2,
        NOW,
        100,
        id="9111-4.2.3-apparent-age-larger",
    ),
    pytest.param(
        [("Age", "300"), ("Date", http_date(NOW - 100))], NOW - 2, NOW, 302, id="9111-4.2.3-age-larger"
    ),
    pytest.param(
        [("Date", http_date(NOW + 100))], NOW - 1, NOW, 1, id="9111-4.2.3-date-in-future-apparent-age-0"
    ),
    pytest.param(
        [("Date", "Tuesday, 14-Nov-23 22:11:40 GMT")], NOW, NOW, 100, id="9110-5.6.7-rfc850-date-counts"
    ),
    pytest.param(
        [("Date", "Tue, 14 Nov 2023 22:11:40 UTC")], NOW, NOW, 0, id="9110-5.6.7-invalid-date-no-apparent-age"
    ),
    pytest.param([("Age", "abc")], NOW - 1, NOW, 1, id="9111-5.1-invalid-age-ignored"),
    pytest.param([("Age", "-5")], NOW, NOW, 0, id="9111-5.1-negative-age-ignored"),
    pytest.param([("Age", "\u00b2")], NOW, NOW, 0, id="9111-5.1-non-ascii-digit-ignored"),
    pytest.param([("Age", "10"), ("Age", "20")], NOW, NOW, 10, id="9111-5.1-first-age-line"),
]


@pytest.mark.parametrize(("pairs", "request_time", "response_time", "expected"), AGES)
def test_rfc9111_s4_2_3_corrected_initial_age(
    pairs: list[tuple[str, str]], request_time: float, response_time: float, expected: float
) -> None:
    assert corrected_initial_age(hdrs(*pairs), request_time, response_time) == pytest.approx(expected)


def test_rfc9111_s1_2_2_age_overflow_is_2_pow_31() -> None:
    assert age_value(hdrs(("Age", "99999999999"))) == 2**31


def test_rfc9111_s4_2_3_current_age_grows_with_resident_time() -> None:
    e = entry(corrected_initial_age=10.0, response_time=NOW, freshness_lifetime=60.0)
    assert current_age(e, NOW) == 10
    assert current_age(e, NOW + 5) == 15
    assert current_age(e, NOW + 500) == 510
    assert current_age(e, NOW - 5) == 10  # a clock stepping back never makes a response younger
    assert remaining_ttl(e, NOW + 5) == 45
    assert remaining_ttl(e, NOW + 60) == -10
