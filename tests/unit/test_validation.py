"""proxy.policy validation (RFC 9111 §4.3): conditional requests, 304 updates, 304s to clients."""

from __future__ import annotations

import pytest

from proxy.entry import StoredResponse
from proxy.policy import (
    DontStore,
    StorePlan,
    client_not_modified,
    conditional_headers,
    current_age,
    freshen,
    freshened_for_disk,
    has_precondition_for_origin,
    head_may_update,
    not_modified_header_list,
    select_for_update,
)

from .support import DEFAULTS, NOW, entry, hdrs, header_names, http_date, stored

LM = http_date(NOW - 3600)
DATE = http_date(NOW)

# --------------------------------------------------------------------------- conditional request (§4.3.1)


def test_rfc9111_s4_3_1_if_none_match_carries_every_variants_etag() -> None:
    selected = entry(etag='"a"', last_modified=LM)
    variants = (
        selected,
        entry(etag='"b"'),
        entry(etag='W/"c"'),
        entry(etag=None),
        entry(etag='"a"'),
    )
    out = conditional_headers(selected, variants)
    assert out.getall("If-None-Match") == ['"a", "b", W/"c"']
    assert out.getall("If-Modified-Since") == [LM]


def test_rfc9111_s4_3_1_if_modified_since_from_date_without_last_modified() -> None:
    e = entry(etag=None, last_modified=None, date=DATE)
    assert dict(conditional_headers(e, (e,))) == {"If-Modified-Since": DATE}


def test_rfc9111_s4_3_1_no_date_fallback_when_an_etag_is_sent() -> None:
    """RFC 9110 §13.1.3: the origin ignores If-Modified-Since next to If-None-Match, so Date is not sent."""
    e = entry(etag='"a"', last_modified=None, date=DATE)
    assert dict(conditional_headers(e, (e,))) == {"If-None-Match": '"a"'}


def test_rfc9111_s4_3_1_nothing_to_validate_with() -> None:
    e = entry(etag=None, last_modified=None, date=None)
    assert len(conditional_headers(e, (e,))) == 0


# ------------------------------------------------------------ which stored responses a 304 updates (§4.3.4)

A1 = entry(etag='"a"', body=b"a1", response_time=NOW - 20)
A2 = entry(etag='"a"', body=b"a2", response_time=NOW - 10)
WEAK_A = entry(etag='W/"a"', body=b"wa", response_time=NOW - 5)
B = entry(etag='"b"', body=b"b", response_time=NOW - 1)
VARIANTS = (A1, A2, WEAK_A, B)


def _bodies(selected: list[StoredResponse]) -> list[bytes]:
    return [v.body for v in selected]


def _select(
    not_modified: list[tuple[str, str]], revalidated: StoredResponse, variants: tuple[StoredResponse, ...]
) -> list[bytes]:
    """select_for_update for a 304 to the conditional request the cache makes (§4.3.1)."""
    sent = conditional_headers(revalidated, variants)
    return _bodies(select_for_update(hdrs(*not_modified), revalidated, variants, sent))


def test_rfc9111_s4_3_4_strong_etag_selects_every_strong_match() -> None:
    assert _select([("ETag", ' "a" ')], B, VARIANTS) == [b"a1", b"a2"]


def test_rfc9111_s4_3_4_strong_etag_matching_nothing_updates_nothing() -> None:
    assert _select([("ETag", '"zzz"')], B, VARIANTS) == []


def test_rfc9111_s4_3_4_weak_etag_selects_the_most_recent_match() -> None:
    assert _select([("ETag", 'W/"a"')], B, VARIANTS) == [b"wa"]
    assert _select([("ETag", 'W/"a"')], B, (A1, A2)) == [b"a2"]


def test_rfc9111_s4_3_4_last_modified_selects_matching() -> None:
    old = entry(etag=None, last_modified=http_date(NOW - 9999), body=b"old")
    lm = entry(etag=None, last_modified=LM, body=b"lm")
    assert _select([("Last-Modified", LM)], old, (old, lm)) == [b"lm"]


def test_rfc9111_s4_3_4_last_modified_is_weak_most_recent_only() -> None:
    older = entry(etag=None, last_modified=LM, body=b"older", response_time=NOW - 20)
    newer = entry(etag=None, last_modified=LM, body=b"newer", response_time=NOW - 10)
    assert _select([("Last-Modified", LM)], older, (older, newer)) == [b"newer"]


# A 304 without ETag or Last-Modified (many origins omit them): the one validator the conditional
# request carried stands for it (RFC 9110 §15.4.5: the 304 says that validator matched), so the
# stored response it belongs to is freshened, with no second, unconditional request.
BARE = entry(etag=None, last_modified=None, body=b"bare")
BARE_2 = entry(etag=None, last_modified=None, body=b"bare2", date=http_date(NOW - 5))
LM_ONLY = entry(etag=None, last_modified=LM, body=b"lm")
LM_OLDER = entry(etag=None, last_modified=LM, body=b"lm-older", response_time=NOW - 30)
ETAG_AND_LM = entry(etag='"e"', last_modified=LM, body=b"e-lm")

NO_VALIDATOR = [
    # (revalidated, stored variants, bodies selected)
    pytest.param(A1, (A1,), [b"a1"], id="9111-4.3.4-sole-if-none-match-selects"),
    pytest.param(WEAK_A, (WEAK_A,), [b"wa"], id="9111-4.3.4-sole-weak-if-none-match-selects"),
    pytest.param(ETAG_AND_LM, (ETAG_AND_LM,), [b"e-lm"], id="9110-13.2.2-if-none-match-before-ims"),
    pytest.param(A1, (A1, A2), [b"a1", b"a2"], id="9111-4.3.4-one-strong-tag-of-two-variants"),
    pytest.param(A1, (A1, B), [], id="9111-4.3.4-several-tags-ambiguous"),
    pytest.param(LM_ONLY, (LM_ONLY,), [b"lm"], id="9111-4.3.4-sole-if-modified-since-selects"),
    pytest.param(LM_OLDER, (LM_OLDER, LM_ONLY), [b"lm"], id="9111-4.3.4-last-modified-most-recent"),
    pytest.param(BARE, (BARE,), [b"bare"], id="9111-4.3.4-no-validators-anywhere"),
    pytest.param(BARE, (BARE, BARE_2), [b"bare"], id="9111-4.3.4-date-of-the-revalidated-one"),
    pytest.param(BARE, (BARE, A1), [b"a1"], id="9110-13.2.2-the-etag-sent-not-the-date"),
]


@pytest.mark.parametrize(("revalidated", "variants", "expected"), NO_VALIDATOR)
def test_rfc9111_s4_3_4_304_without_validator_selects_what_the_request_validated(
    revalidated: StoredResponse, variants: tuple[StoredResponse, ...], expected: list[bytes]
) -> None:
    assert _select([("Date", DATE)], revalidated, variants) == expected


def test_rfc9111_s4_3_4_304_without_validator_to_an_unconditional_request_selects_nothing() -> None:
    assert select_for_update(hdrs(("Date", DATE)), A1, (A1,), hdrs()) == []


# --------------------------------------------------------------------------- freshening (§3.2, §4.3.4)

ORIGINAL = stored(
    hdrs(
        ("Date", http_date(NOW - 100)),
        ("Cache-Control", "max-age=60"),
        ("ETag", '"v1"'),
        ("Content-Type", "text/html"),
        ("Content-Encoding", "gzip"),
        ("X-Version", "1"),
        ("X-Version", "1b"),
        ("Vary", "Accept-Language"),
        ("Surrogate-Key", "t1 t2"),
    ),
    request=hdrs(("Accept-Language", "en")),
    request_time=NOW - 100,
    response_time=NOW - 100,
)
LATER = NOW + 1000


def _freshen(not_modified: list[tuple[str, str]], **kwargs: object) -> StoredResponse:
    result = freshen(
        ORIGINAL,
        hdrs(*not_modified),
        hdrs(("Accept-Language", "de")),  # a 304 may answer another variant's request
        LATER - 1,
        LATER,
        DEFAULTS,
    )
    assert isinstance(result, StorePlan), result
    return result.template


def _values(e: StoredResponse, name: str) -> list[str]:
    return [v for n, v in e.headers if n.lower() == name.lower()]


def test_rfc9111_s4_3_4_freshen_keeps_body_vary_values_and_tags() -> None:
    e = _freshen([("Date", http_date(LATER)), ("ETag", '"v1"')])
    assert e.body == b"body"
    assert (e.vary_names, e.vary_values) == (("accept-language",), ("en",))
    assert e.tags == ("t1", "t2")


def test_rfc9111_s3_2_freshen_replaces_header_fields() -> None:
    e = _freshen(
        [
            ("Date", http_date(LATER)),
            ("ETag", '"v1"'),
            ("Cache-Control", "max-age=120"),
            ("X-Version", "2"),
            ("X-New", "n"),
        ]
    )
    assert _values(e, "X-Version") == ["2"]
    assert _values(e, "X-New") == ["n"]
    assert _values(e, "Cache-Control") == ["max-age=120"]
    assert _values(e, "Date") == [http_date(LATER)]
    assert e.freshness_lifetime == 120


def test_rfc9111_s3_2_freshen_keeps_fields_describing_the_stored_body() -> None:
    e = _freshen(
        [
            ("ETag", '"v1"'),
            ("Content-Length", "999"),
            ("Content-Encoding", "br"),
            ("Content-Type", "text/plain"),
            ("Content-Range", "bytes 0-1/2"),
            ("Set-Cookie", "sid=other-user"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "X-Hop"),
            ("X-Hop", "1"),
        ]
    )
    assert _values(e, "Content-Encoding") == ["gzip"]
    assert _values(e, "Content-Type") == ["text/html"]
    assert (
        header_names(e) & {"content-length", "content-range", "set-cookie", "transfer-encoding", "x-hop"}
        == set()
    )


def test_rfc9111_s4_3_4_freshen_resets_the_age() -> None:
    assert current_age(ORIGINAL, LATER) > 1000  # it was long stale
    e = _freshen([("Date", http_date(LATER)), ("ETag", '"v1"')])
    assert (e.request_time, e.response_time) == (LATER - 1, LATER)
    assert e.corrected_initial_age == 1  # the response delay of the revalidation
    assert current_age(e, LATER + 10) == 11


def test_rfc9111_s4_2_3_freshen_counts_the_age_of_the_304() -> None:
    """A 304 from an upstream cache carries Age; the freshened response is that old (§4.2.3)."""
    e = _freshen([("Date", http_date(LATER)), ("ETag", '"v1"'), ("Age", "30")])
    assert e.corrected_initial_age == 31
    assert "age" not in header_names(e)


def test_rfc9110_s6_6_1_freshen_dates_a_304_without_date() -> None:
    """The 304's receipt time replaces the old Date, or the apparent age would make it stale again."""
    e = _freshen([("ETag", '"v1"'), ("Cache-Control", "max-age=60")])
    assert _values(e, "Date") == [http_date(LATER)]
    assert e.corrected_initial_age == 1
    assert current_age(e, LATER) < e.freshness_lifetime


def test_rfc9111_s3_2_freshen_with_no_store_is_not_stored() -> None:
    result = freshen(ORIGINAL, hdrs(("Cache-Control", "no-store")), hdrs(), LATER, LATER, DEFAULTS)
    assert isinstance(result, DontStore)


# --------------------------------------------------------------------------- client conditionals (§4.3.2)

STORED = entry(etag='"v1"', last_modified=LM, date=DATE)
NO_LM = entry(etag=None, last_modified=None, date=DATE)

CLIENT = [
    pytest.param(STORED, [("If-None-Match", '"v1"')], True, id="9110-13.1.2-strong-match"),
    pytest.param(STORED, [("If-None-Match", 'W/"v1"')], True, id="9110-13.1.2-weak-comparison"),
    pytest.param(
        entry(etag='W/"v1"'), [("If-None-Match", '"v1"')], True, id="9110-13.1.2-weak-comparison-stored-weak"
    ),
    pytest.param(STORED, [("If-None-Match", '"x", "v1"')], True, id="9110-13.1.2-list"),
    pytest.param(STORED, [("If-None-Match", '"x"')], False, id="9110-13.1.2-no-match"),
    pytest.param(STORED, [("If-None-Match", "*")], True, id="9110-13.1.2-star"),
    pytest.param(NO_LM, [("If-None-Match", '"v1"')], False, id="9110-13.1.2-stored-without-etag"),
    pytest.param(
        STORED,
        [("If-None-Match", "v1"), ("If-Modified-Since", DATE)],
        False,
        id="9110-13.1.2-malformed-if-none-match-ignored",
    ),
    pytest.param(
        STORED,
        [("If-None-Match", '"x"'), ("If-Modified-Since", DATE)],
        False,
        id="9110-13.1.3-if-none-match-takes-precedence",
    ),
    pytest.param(
        STORED,
        [("If-None-Match", '"v1"'), ("If-Modified-Since", http_date(NOW - 99_999))],
        True,
        id="9110-13.1.3-if-modified-since-ignored-with-if-none-match",
    ),
    pytest.param(STORED, [("If-Modified-Since", DATE)], True, id="9110-13.1.3-not-modified-since"),
    pytest.param(STORED, [("If-Modified-Since", LM)], True, id="9110-13.1.3-equal-date"),
    pytest.param(
        STORED, [("If-Modified-Since", http_date(NOW - 7200))], False, id="9110-13.1.3-modified-since"
    ),
    pytest.param(STORED, [("If-Modified-Since", "yesterday")], False, id="9110-13.1.3-invalid-date-ignored"),
    # RFC 9110 §5.6.7: every format is a date (NOW spelled three ways); §13.1.3: anything else is ignored.
    pytest.param(
        STORED, [("If-Modified-Since", "Tuesday, 14-Nov-23 22:13:20 GMT")], True, id="9110-5.6.7-rfc850-ims"
    ),
    pytest.param(
        STORED, [("If-Modified-Since", "Tue Nov 14 22:13:20 2023")], True, id="9110-5.6.7-asctime-ims"
    ),
    pytest.param(
        STORED, [("If-Modified-Since", "Tue, 14 Nov 2023 22:13:20 UTC")], False, id="9110-13.1.3-utc-ignored"
    ),
    pytest.param(
        entry(etag=None, last_modified="Tue Nov 14 21:13:20 2023"),
        [("If-Modified-Since", DATE)],
        True,
        id="9110-5.6.7-asctime-last-modified",
    ),
    pytest.param(NO_LM, [("If-Modified-Since", DATE)], True, id="9111-4.3.2-date-when-no-last-modified"),
    pytest.param(NO_LM, [("If-Modified-Since", http_date(NOW - 1))], False, id="9111-4.3.2-date-newer"),
    pytest.param(
        entry(status=404, etag='"v1"'), [("If-None-Match", '"v1"')], False, id="9110-13.2.1-only-2xx"
    ),
    pytest.param(STORED, [], False, id="9110-13.2.2-unconditional"),
    # RFC 9110 §5.3: a list field on several lines is one list (found by a differential fuzz pass).
    pytest.param(
        STORED,
        [("If-None-Match", '"nope"'), ("If-None-Match", '"v1"')],
        True,
        id="9110-5.3-list-on-two-lines",
    ),
    pytest.param(
        STORED,
        [("If-None-Match", '"nope"'), ("If-None-Match", '"other"')],
        False,
        id="9110-5.3-no-line-matches",
    ),
]


@pytest.mark.parametrize(("stored_entry", "request_pairs", "expected"), CLIENT)
def test_rfc9111_s4_3_2_client_conditional(
    stored_entry: StoredResponse, request_pairs: list[tuple[str, str]], expected: bool
) -> None:
    assert client_not_modified(hdrs(*request_pairs), stored_entry) is expected


def test_rfc9110_s15_4_5_not_modified_header_list() -> None:
    e = entry(
        headers=(
            ("Date", DATE),
            ("ETag", '"v1"'),
            ("Content-Type", "text/html"),
            ("Last-Modified", LM),
            ("Cache-Control", "max-age=60"),
            ("Expires", http_date(NOW + 60)),
            ("Vary", "Accept"),
            ("vary", "Accept-Language"),
            ("Content-Location", "/a.html"),
            ("Content-Encoding", "gzip"),
            ("X-Custom", "1"),
        )
    )
    assert not_modified_header_list(e) == (
        ("Date", DATE),
        ("ETag", '"v1"'),
        ("Last-Modified", LM),
        ("Cache-Control", "max-age=60"),
        ("Expires", http_date(NOW + 60)),
        ("Vary", "Accept"),
        ("vary", "Accept-Language"),
        ("Content-Location", "/a.html"),
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("If-Match", True),
        ("if-unmodified-since", True),
        ("If-None-Match", False),
        ("If-Modified-Since", False),
    ],
)
def test_rfc9110_s13_2_1_preconditions_left_to_the_origin(name: str, expected: bool) -> None:
    assert has_precondition_for_origin(hdrs((name, '"x"'))) is expected


HEAD_UPDATES = [
    # (fields of the 200 answering HEAD, may it update the stored response (ETag "v1", LM, 5 bytes)?)
    pytest.param([("ETag", '"v1"')], True, id="9111-4.3.5-etag"),
    pytest.param([("ETag", '"v1"'), ("Content-Length", "5")], True, id="9111-4.3.5-etag-and-length"),
    pytest.param([("Last-Modified", "Tue, 14 Nov 2023 12:00:00 GMT")], True, id="9111-4.3.5-last-modified"),
    pytest.param(
        [("Last-Modified", "Tuesday, 14-Nov-23 12:00:00 GMT")], True, id="9110-5.6.7-same-date-other-format"
    ),
    pytest.param([("ETag", '"v2"')], False, id="9111-4.3.5-other-etag"),
    pytest.param([("ETag", 'W/"v1"')], False, id="9111-4.3.5-weak-is-another-value"),
    pytest.param(
        [("ETag", '"v1"'), ("Last-Modified", "Wed, 15 Nov 2023 12:00:00 GMT")],
        False,
        id="9111-4.3.5-one-differs",
    ),
    pytest.param([("ETag", '"v1"'), ("Content-Length", "6")], False, id="9111-4.3.5-other-length"),
    pytest.param([("ETag", '"v1"'), ("Content-Length", "five")], False, id="9111-4.3.5-bad-length"),
    pytest.param([("Content-Length", "5")], False, id="9111-4.3.5-no-validator"),
    pytest.param([], False, id="9111-4.3.5-nothing"),
]


@pytest.mark.parametrize(("fields", "expected"), HEAD_UPDATES)
def test_rfc9111_s4_3_5_head_may_update(fields: list[tuple[str, str]], expected: bool) -> None:
    stored = entry(etag='"v1"', last_modified="Tue, 14 Nov 2023 12:00:00 GMT", body=b"hello")
    assert head_may_update(stored, hdrs(*fields)) is expected


def test_rfc9111_s4_3_5_the_length_of_an_incomplete_response_is_its_representations() -> None:
    stored = entry(etag='"v1"', status=206, body=b"he", parts=((0, 1),), complete_length=5)
    assert head_may_update(stored, hdrs(("ETag", '"v1"'), ("Content-Length", "5"))) is True
    assert head_may_update(stored, hdrs(("ETag", '"v1"'), ("Content-Length", "2"))) is False


# -- does a 304 give the disk copy anything? (policy.freshened_for_disk) -------------------------

REVALIDATED = (("Cache-Control", "max-age=0"), ("ETag", '"v1"'), ("X-Version", "1"))


@pytest.mark.parametrize(
    ("stored_fields", "not_modified", "expected"),
    [
        # Stale at once and nothing but Date changed: the old copy is revalidated just the same.
        (REVALIDATED, [("Date", http_date(LATER)), ("ETag", '"v1"')], False),
        (REVALIDATED, [("ETag", '"v1"')], False),  # no Date: dated on receipt, still only Date
        (REVALIDATED, [("Date", http_date(LATER)), ("X-Version", "1")], False),  # repeated, same value
        # A field changed: a restart would otherwise serve the old one.
        (REVALIDATED, [("Date", http_date(LATER)), ("X-Version", "2")], True),
        (REVALIDATED, [("Date", http_date(LATER)), ("X-New", "n")], True),
        (REVALIDATED, [("Date", http_date(LATER)), ("ETag", '"v2"')], True),
        (REVALIDATED, [("Date", http_date(LATER)), ("Surrogate-Key", "t9")], True),
        # Fresh for a while: an L1 eviction or a restart would use the new lifetime.
        (REVALIDATED, [("Date", http_date(LATER)), ("Cache-Control", "max-age=60")], True),
        ((("Cache-Control", "max-age=60"), ("ETag", '"v1"')), [("Date", http_date(LATER))], True),
        # Usable without the origin for a while (RFC 5861 windows count from the new response).
        ((("Cache-Control", "max-age=0, stale-while-revalidate=30"), ("ETag", '"v1"')), [], True),
        ((("Cache-Control", "max-age=0, stale-if-error=60"), ("ETag", '"v1"')), [], True),
    ],
)
def test_a_304_rewrites_the_disk_copy_only_when_it_gains_something(
    stored_fields: tuple[tuple[str, str], ...], not_modified: list[tuple[str, str]], expected: bool
) -> None:
    old = stored(hdrs(("Date", http_date(NOW)), *stored_fields), request_time=NOW, response_time=NOW)
    plan = freshen(old, hdrs(*not_modified), hdrs(), LATER - 1, LATER, DEFAULTS)
    assert isinstance(plan, StorePlan), plan
    assert freshened_for_disk(old, plan.template) is expected
