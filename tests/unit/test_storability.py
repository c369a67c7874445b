"""proxy.policy.plan_store: what a shared cache may store, and what it keeps of it (RFC 9111 §3)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from multidict import CIMultiDict

from proxy.config import PolicyConfig
from proxy.headers import HOP_BY_HOP
from proxy.policy import HEURISTICALLY_CACHEABLE, DontStore, StorePlan

from .support import DEFAULTS, NOW, hdrs, header_names, http_date, plan, stored

LAST_MODIFIED = http_date(NOW - 10_000)


def _is_stored(result: StorePlan | DontStore) -> bool:
    return isinstance(result, StorePlan)


# --------------------------------------------------------------------------- may it be stored at all?

STORE_CASES = [
    # (method, status, request headers, request Cache-Control, response headers, opts, stored?)
    pytest.param(
        "GET", 200, [], None, [("Cache-Control", "max-age=60")], DEFAULTS, True, id="9111-3-get-200"
    ),
    pytest.param(
        "HEAD",
        200,
        [],
        None,
        [("Cache-Control", "max-age=60")],
        DEFAULTS,
        False,
        id="9111-3-head-never-creates",
    ),
    pytest.param("POST", 200, [], None, [("Cache-Control", "max-age=60")], DEFAULTS, False, id="9111-3-post"),
    pytest.param("PUT", 200, [], None, [("Cache-Control", "max-age=60")], DEFAULTS, False, id="9111-3-put"),
    pytest.param(
        "GET", 103, [], None, [("Cache-Control", "max-age=60")], DEFAULTS, False, id="9111-3-1xx-not-final"
    ),
    pytest.param(
        "GET",
        206,
        [],
        None,
        [("Cache-Control", "max-age=60")],
        DEFAULTS,
        False,
        id="9111-3.3-206-without-content-range",
    ),
    pytest.param("GET", 304, [], None, [("Cache-Control", "max-age=60")], DEFAULTS, False, id="9111-3-304"),
    pytest.param(
        "GET",
        200,
        [],
        "no-store",
        [("Cache-Control", "max-age=60")],
        DEFAULTS,
        False,
        id="9111-5.2.1.5-no-store-request",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("Cache-Control", "max-age=60, no-store")],
        DEFAULTS,
        False,
        id="9111-5.2.2.5-no-store-response",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("Cache-Control", "max-age=60, private")],
        DEFAULTS,
        False,
        id="9111-5.2.2.7-private-never-in-shared-cache",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("cache-control", "PRIVATE"), ("CACHE-CONTROL", "max-age=60")],
        DEFAULTS,
        False,
        id="9111-5.2.2.7-private-any-case",
    ),
    pytest.param(
        "GET",
        200,
        [("Authorization", "Basic x")],
        None,
        [("Cache-Control", "max-age=60")],
        DEFAULTS,
        False,
        id="9111-3.5-authorization-max-age-not-enough",
    ),
    pytest.param(
        "GET",
        200,
        [("authorization", "Basic x")],
        None,
        [("Cache-Control", "public, max-age=60")],
        DEFAULTS,
        True,
        id="9111-3.5-authorization-public",
    ),
    pytest.param(
        "GET",
        200,
        [("Authorization", "Basic x")],
        None,
        [("Cache-Control", "s-maxage=60")],
        DEFAULTS,
        True,
        id="9111-3.5-authorization-s-maxage",
    ),
    pytest.param(
        "GET",
        200,
        [("Authorization", "Basic x")],
        None,
        [("Cache-Control", "max-age=60, must-revalidate")],
        DEFAULTS,
        True,
        id="9111-3.5-authorization-must-revalidate",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("Cache-Control", "max-age=60"), ("Set-Cookie", "sid=1")],
        DEFAULTS,
        False,
        id="requirements-1-set-cookie-not-stored-by-default",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("Cache-Control", "max-age=60"), ("Set-Cookie", "sid=1")],
        replace(DEFAULTS, store_set_cookie=True),
        True,
        id="requirements-1-set-cookie-stored-when-configured",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("Cache-Control", "max-age=60"), ("Vary", "Accept, *")],
        DEFAULTS,
        False,
        id="9111-4.1-vary-star",
    ),
    pytest.param("GET", 200, [], None, [], DEFAULTS, False, id="9111-3-no-freshness-information"),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [],
        replace(DEFAULTS, default_ttl={200: 30.0}),
        True,
        id="requirements-1-configured-default-ttl",
    ),
    pytest.param(
        "GET",
        404,
        [],
        None,
        [],
        replace(DEFAULTS, default_ttl={200: 30.0}),
        False,
        id="requirements-1-default-ttl-is-per-status",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("Expires", http_date(NOW + 60))],
        DEFAULTS,
        True,
        id="9111-3-expires",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("Cache-Control", "s-maxage=60")],
        DEFAULTS,
        True,
        id="9111-3-s-maxage",
    ),
    pytest.param(
        "GET",
        302,
        [],
        None,
        [("Cache-Control", "max-age=60")],
        DEFAULTS,
        True,
        id="9111-3-explicit-freshness-any-final-status",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("Cache-Control", "public"), ("ETag", '"e"')],
        DEFAULTS,
        True,
        id="9111-3-public-with-validator",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("ETag", '"e"')],
        DEFAULTS,
        True,
        id="9111-3-heuristic-status-with-validator-stored-stale",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("Expires", "0")],
        DEFAULTS,
        False,
        id="9111-5.3-invalid-expires-and-no-validator",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("Expires", "0"), ("ETag", '"e"')],
        DEFAULTS,
        True,
        id="9111-5.3-invalid-expires-with-validator-stored-stale",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("CDN-Cache-Control", "max-age=60"), ("Cache-Control", "no-store, private")],
        DEFAULTS,
        True,
        id="9213-2.2-targeted-field-replaces-cache-control",
    ),
    pytest.param(
        "GET",
        200,
        [],
        None,
        [("CDN-Cache-Control", "no-store"), ("Cache-Control", "max-age=60")],
        DEFAULTS,
        False,
        id="9213-2.2-targeted-no-store",
    ),
]


@pytest.mark.parametrize(
    ("method", "status", "request_pairs", "request_cc", "response_pairs", "opts", "expected"), STORE_CASES
)
def test_rfc9111_s3_storable(
    method: str,
    status: int,
    request_pairs: list[tuple[str, str]],
    request_cc: str | None,
    response_pairs: list[tuple[str, str]],
    opts: PolicyConfig,
    expected: bool,
) -> None:
    result = plan(
        hdrs(*response_pairs),
        request=hdrs(*request_pairs),
        method=method,
        status=status,
        request_cc=request_cc,
        opts=opts,
    )
    assert _is_stored(result) is expected, result


@pytest.mark.parametrize("status", sorted(HEURISTICALLY_CACHEABLE - {206}))
def test_rfc9110_s15_1_heuristically_cacheable_status_with_last_modified_stored(status: int) -> None:
    plan_ = plan(hdrs(("Date", http_date(NOW)), ("Last-Modified", LAST_MODIFIED)), status=status)
    assert isinstance(plan_, StorePlan)
    assert plan_.freshness.source == "heuristic"
    assert plan_.template.freshness_lifetime == pytest.approx(1_000.0)


def test_rfc9110_s15_1_heuristically_cacheable_list() -> None:
    assert frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501}) == HEURISTICALLY_CACHEABLE


@pytest.mark.parametrize("status", [302, 303, 307, 400, 403, 500, 502, 503])
def test_rfc9111_s4_2_2_other_status_with_only_last_modified_not_stored(status: int) -> None:
    result = plan(hdrs(("Date", http_date(NOW)), ("Last-Modified", LAST_MODIFIED)), status=status)
    assert isinstance(result, DontStore)


def test_rfc9111_s3_dont_store_gives_a_reason() -> None:
    result = plan(hdrs(("Cache-Control", "private")))
    assert result == DontStore("private")


# --------------------------------------------------------------------------- what is kept (RFC 9111 §3.1)


def test_rfc9111_s5_2_2_7_private_with_field_names_drops_those_fields() -> None:
    e = stored(
        hdrs(
            ("Cache-Control", 'max-age=60, private="X-Secret, x-other"'),
            ("X-Secret", "1"),
            ("x-secret", "2"),
            ("X-Other", "3"),
            ("X-Public", "4"),
        )
    )
    assert "x-secret" not in header_names(e)
    assert "x-other" not in header_names(e)
    assert ("X-Public", "4") in e.headers


def test_rfc9111_s5_2_2_4_no_cache_with_field_names_drops_those_fields() -> None:
    e = stored(hdrs(("Cache-Control", 'max-age=60, no-cache="X-Token"'), ("X-Token", "t"), ("X-Keep", "k")))
    assert "x-token" not in header_names(e)
    assert ("X-Keep", "k") in e.headers
    assert e.no_cache is False  # the qualified form allows reuse of the rest without revalidation


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param(['max-age=60, private="X-Secret", private'], id="one-line"),
        pytest.param(['max-age=60, private="X-Secret"', "private"], id="two-lines"),
    ],
)
def test_rfc9111_s5_2_2_7_an_unqualified_private_after_a_qualified_one_is_not_stored(
    lines: list[str],
) -> None:
    response = CIMultiDict([*(("Cache-Control", line) for line in lines), ("X-Secret", "s")])
    assert plan(response) == DontStore("private")


def test_rfc9111_s5_2_2_7_every_private_field_list_is_withheld() -> None:
    e = stored(
        hdrs(
            ("Cache-Control", 'max-age=60, private="X-A", private="X-B"'),
            ("X-A", "a"),
            ("X-B", "b"),
            ("X-C", "c"),
        )
    )
    assert header_names(e) & {"x-a", "x-b"} == set()
    assert ("X-C", "c") in e.headers


@pytest.mark.parametrize(
    "cache_control",
    [
        pytest.param('max-age=60, no-cache="X-Token", no-cache', id="qualified-first"),
        pytest.param('max-age=60, no-cache, no-cache="X-Token"', id="unqualified-first"),
    ],
)
def test_rfc9111_s5_2_2_4_an_unqualified_no_cache_anywhere_means_revalidate(cache_control: str) -> None:
    e = stored(hdrs(("Cache-Control", cache_control), ("ETag", '"e"'), ("X-Token", "t")))
    assert e.no_cache is True


def test_rfc9111_s5_2_2_4_unqualified_no_cache_stored_for_revalidation() -> None:
    e = stored(hdrs(("Cache-Control", "no-cache"), ("ETag", '"e"')))
    assert e.no_cache is True


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_rfc9110_s7_6_1_hop_by_hop_never_stored(name: str) -> None:
    e = stored(hdrs(("Cache-Control", "max-age=60"), (name, "x")))
    assert name not in header_names(e)


def test_rfc9110_s7_6_1_connection_named_field_never_stored() -> None:
    e = stored(hdrs(("Cache-Control", "max-age=60"), ("Connection", "X-Hop"), ("X-Hop", "1"), ("X-End", "2")))
    assert header_names(e) >= {"cache-control", "x-end"}
    assert "x-hop" not in header_names(e)
    assert "connection" not in header_names(e)


def test_requirements_s1_set_cookie_stripped_when_stored() -> None:
    opts = replace(DEFAULTS, store_set_cookie=True)
    e = stored(
        hdrs(("Cache-Control", "max-age=60"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("ETag", '"e"')),
        opts=opts,
    )
    assert "set-cookie" not in header_names(e)
    assert e.etag == '"e"'


def test_rfc9111_s4_2_3_age_and_content_length_not_stored() -> None:
    e = stored(hdrs(("Cache-Control", "max-age=60"), ("Age", "5"), ("Content-Length", "4")))
    assert header_names(e) & {"age", "content-length"} == set()


def test_rfc9110_s6_6_1_date_added_when_missing() -> None:
    e = stored(hdrs(("Cache-Control", "max-age=60")), response_time=NOW + 3)
    assert ("Date", http_date(NOW + 3)) in e.headers
    assert e.date == http_date(NOW + 3)


@pytest.mark.parametrize(
    "date",
    [
        pytest.param("Tue, 14 Nov 2023 22:13:13 UTC", id="9110-6.6.1-utc-zone"),
        pytest.param("yesterday", id="9110-6.6.1-words"),
        pytest.param("0", id="9110-6.6.1-zero"),
    ],
)
def test_rfc9110_s6_6_1_invalid_date_replaced_by_receipt_time(date: str) -> None:
    e = stored(hdrs(("Cache-Control", "max-age=60"), ("Date", date)), response_time=NOW + 3)
    assert [v for n, v in e.headers if n.lower() == "date"] == [http_date(NOW + 3)]
    assert e.date == http_date(NOW + 3)


def test_rfc9110_s6_6_1_origin_date_kept() -> None:
    e = stored(hdrs(("Cache-Control", "max-age=60"), ("date", http_date(NOW - 7))))
    dates = [v for n, v in e.headers if n.lower() == "date"]
    assert dates == [http_date(NOW - 7)]


MUST_UNDERSTAND = [
    # (status, response fields, request Cache-Control, plan): RFC 9111 §5.2.2.3, "the cache SHOULD
    # ignore the no-store directive if it understands and implements the status code's caching
    # requirements"; §3: with must-understand, only a status the cache understands is stored.
    pytest.param(200, [("Cache-Control", "must-understand, no-store, max-age=60")], None, None, id="200"),
    pytest.param(404, [("Cache-Control", "must-understand, no-store, max-age=60")], None, None, id="404"),
    pytest.param(
        200, [("Cache-Control", "no-store, must-understand"), ("ETag", '"a"')], None, None, id="200-validator"
    ),
    pytest.param(
        299,
        [("Cache-Control", "must-understand, no-store, max-age=60")],
        None,
        DontStore("must-understand"),
        id="299-not-understood",
    ),
    pytest.param(
        299,
        [("Cache-Control", "must-understand, max-age=60")],
        None,
        DontStore("must-understand"),
        id="299-alone",
    ),
    pytest.param(
        206,
        [("Cache-Control", "must-understand, no-store, max-age=60"), ("Content-Range", "bytes 0-4/10")],
        None,
        None,
        id="206-understood-with-its-range",
    ),
    pytest.param(
        206,
        [("Cache-Control", "must-understand, no-store, max-age=60")],
        None,
        DontStore("206 without a single byte range of known length"),
        id="206-without-a-range",
    ),
    pytest.param(
        200,
        [("Cache-Control", "must-understand, no-store, private, max-age=60")],
        None,
        DontStore("private"),
        id="still-private",
    ),
    pytest.param(
        200,
        [("Cache-Control", "must-understand, no-store, max-age=60")],
        "no-store",
        DontStore("request no-store"),
        id="request-no-store-still-wins",
    ),
    pytest.param(
        200,
        [("Cache-Control", "no-store"), ("CDN-Cache-Control", "must-understand, no-store, max-age=60")],
        None,
        None,
        id="9213-targeted-field",
    ),
    pytest.param(299, [("Cache-Control", "max-age=60")], None, None, id="9111-3-unknown-status-without-it"),
]


@pytest.mark.parametrize(("status", "pairs", "request_cc", "expected"), MUST_UNDERSTAND)
def test_rfc9111_s5_2_2_3_must_understand(
    status: int, pairs: list[tuple[str, str]], request_cc: str | None, expected: DontStore | None
) -> None:
    result = plan(hdrs(*pairs), status=status, request_cc=request_cc)
    if expected is None:
        assert _is_stored(result), result
    else:
        assert result == expected


TARGETED_TYPES = [
    # (CDN-Cache-Control value, stored?) next to Cache-Control: no-store (RFC 9213 §2.1: a field
    # with a wrongly typed member is ignored as a whole, and then Cache-Control applies).
    pytest.param("max-age=10000", True, id="9213-2.2-valid-field-overrides-no-store"),
    pytest.param('max-age="10000"', False, id="9213-2.1-string-max-age-ignored"),
    pytest.param("max-age=10000.5", False, id="9213-2.1-decimal-max-age-ignored"),
    pytest.param("max-age=-1", False, id="9213-2.1-negative-max-age-ignored"),
    pytest.param("max-age=(10000)", False, id="9213-2.1-inner-list-max-age-ignored"),
    pytest.param("max-age=10000, public=1", False, id="9213-2.1-integer-flag-ignored"),
]


@pytest.mark.parametrize(("targeted", "expected"), TARGETED_TYPES)
def test_rfc9213_s2_1_wrongly_typed_targeted_field_leaves_cache_control_in_charge(
    targeted: str, expected: bool
) -> None:
    result = plan(hdrs(("Cache-Control", "no-store"), ("CDN-Cache-Control", targeted)))
    assert _is_stored(result) is expected
    if not expected:
        assert result == DontStore("no-store")


STRIPPED = [
    # (strip_targeted_fields, fields that reach clients): RFC 9213 §1, CDN-Cache-Control targets
    # every CDN in a chain and goes on downstream; only fields aimed at this cache alone are removed.
    pytest.param(
        DEFAULTS.strip_targeted_fields,
        {"cdn-cache-control", "edge-cache-control"},
        id="9213-1-default-forwards-cdn-cache-control",
    ),
    pytest.param(
        ("Surrogate-Control", "Edge-Cache-Control"), {"cdn-cache-control"}, id="9213-1-own-field-listed"
    ),
    pytest.param(
        (), {"cdn-cache-control", "surrogate-control", "edge-cache-control"}, id="9213-1-nothing-stripped"
    ),
    pytest.param(
        ("cdn-cache-control", "SURROGATE-CONTROL", "Edge-Cache-Control"),
        set(),
        id="9213-1-everything-stripped-case-insensitive",
    ),
]


@pytest.mark.parametrize(("strip", "delivered"), STRIPPED)
def test_rfc9213_s1_only_fields_aimed_at_this_cache_are_stripped(
    strip: tuple[str, ...], delivered: set[str]
) -> None:
    response = hdrs(
        ("Cache-Control", "max-age=5"),
        ("CDN-Cache-Control", "max-age=60"),
        ("Surrogate-Control", "max-age=30"),
        ("Edge-Cache-Control", "max-age=90"),
    )
    opts = replace(
        DEFAULTS, targeted_fields=("Edge-Cache-Control", "CDN-Cache-Control"), strip_targeted_fields=strip
    )
    e = stored(response, opts=opts)
    assert header_names(e) & {"cdn-cache-control", "surrogate-control", "edge-cache-control"} == delivered
    assert ("Cache-Control", "max-age=5") in e.headers  # passed through unchanged
    assert e.freshness_lifetime == 90  # the first configured field decides, stripped or not


def test_rfc9213_s1_node_named_field_stripped() -> None:
    """The default strips "{name}-Cache-Control", with this node's name (Fetcher applies it)."""
    assert DEFAULTS.stripped_targeted_fields("edge-7") == ("Surrogate-Control", "edge-7-Cache-Control")
    opts = replace(DEFAULTS, strip_targeted_fields=DEFAULTS.stripped_targeted_fields("edge-7"))
    e = stored(hdrs(("Cache-Control", "max-age=5"), ("Edge-7-Cache-Control", "max-age=60")), opts=opts)
    assert "edge-7-cache-control" not in header_names(e)


def test_requirements_s6_tags_parsed_and_not_delivered() -> None:
    e = stored(
        hdrs(
            ("Cache-Control", "max-age=60"),
            ("Surrogate-Key", "a  b c"),
            ("Cache-Tag", "c,d, e"),
        )
    )
    assert e.tags == ("a", "b", "c", "d", "e")
    # StoredResponse.headers are the fields sent to clients: tags are stripped before delivery.
    assert header_names(e) & {"surrogate-key", "cache-tag"} == set()


def test_rfc9111_s3_template_records_what_the_hit_path_needs() -> None:
    request = hdrs(("Accept-Language", "en,  fr"), ("Accept-Encoding", "gzip"))
    response = hdrs(
        ("Date", http_date(NOW - 2)),
        ("Cache-Control", "max-age=100, immutable, stale-while-revalidate=30, stale-if-error=300"),
        ("ETag", '"v1"'),
        ("Last-Modified", LAST_MODIFIED),
        ("Vary", "Accept-Language"),
        ("vary", "Accept-Encoding, X-Absent"),
    )
    result = plan(response, request=request, request_time=NOW - 1, response_time=NOW)
    assert isinstance(result, StorePlan)
    t = result.template
    assert (t.status, t.reason, t.body) == (200, "Status", b"")
    assert result.build(b"payload").body == b"payload"
    assert (t.request_time, t.response_time) == (NOW - 1, NOW)
    assert t.freshness_lifetime == 100
    assert t.corrected_initial_age == 2  # apparent age from Date
    assert (t.etag, t.last_modified, t.date) == ('"v1"', LAST_MODIFIED, http_date(NOW - 2))
    assert t.vary_names == ("accept-encoding", "accept-language", "x-absent")
    assert t.vary_values == ("gzip", "en,fr", None)
    assert (t.immutable, t.no_cache, t.must_revalidate) == (True, False, False)
    assert (t.stale_while_revalidate, t.stale_if_error) == (30, 300)


@pytest.mark.parametrize(
    "cache_control",
    [
        pytest.param("max-age=60, must-revalidate", id="9111-5.2.2.2-must-revalidate"),
        pytest.param("max-age=60, proxy-revalidate", id="9111-5.2.2.8-proxy-revalidate"),
        pytest.param("s-maxage=60", id="9111-5.2.2.10-s-maxage-implies-proxy-revalidate"),
    ],
)
def test_rfc9111_s4_2_4_directives_that_forbid_stale_are_recorded(cache_control: str) -> None:
    assert stored(hdrs(("Cache-Control", cache_control))).must_revalidate is True


@pytest.mark.parametrize(
    ("cache_control", "opts", "swr", "sie"),
    [
        pytest.param("max-age=1", DEFAULTS, 0, 0, id="5861-absent-is-zero"),
        pytest.param(
            "max-age=1",
            replace(DEFAULTS, default_stale_while_revalidate=7, default_stale_if_error=9),
            7,
            9,
            id="5861-operator-default-when-absent",
        ),
        pytest.param(
            "max-age=1, stale-while-revalidate=3, stale-if-error=4",
            replace(DEFAULTS, default_stale_while_revalidate=7, default_stale_if_error=9),
            3,
            4,
            id="5861-origin-value-beats-default",
        ),
        pytest.param(
            "max-age=1, stale-while-revalidate=abc, stale-if-error=-1",
            replace(DEFAULTS, default_stale_while_revalidate=7, default_stale_if_error=9),
            7,
            9,
            id="5861-invalid-value-uses-default",
        ),
    ],
)
def test_rfc5861_windows_recorded(cache_control: str, opts: PolicyConfig, swr: float, sie: float) -> None:
    e = stored(hdrs(("Cache-Control", cache_control)), opts=opts)
    assert (e.stale_while_revalidate, e.stale_if_error) == (swr, sie)


def test_header_names_are_case_insensitive() -> None:
    lower = stored(CIMultiDict([("cache-control", "max-age=60"), ("etag", '"e"')]))
    upper = stored(CIMultiDict([("CACHE-CONTROL", "max-age=60"), ("ETAG", '"e"')]))
    assert (lower.freshness_lifetime, lower.etag) == (upper.freshness_lifetime, upper.etag) == (60, '"e"')


PARTIAL = [
    # (Content-Range of a 206, (parts, complete length) stored, or None: not stored)
    pytest.param("bytes 0-4/10", (((0, 4),), 10), id="9111-3.3-first-bytes"),
    pytest.param("bytes 5-9/10", (((5, 9),), 10), id="9111-3.3-last-bytes"),
    pytest.param("BYTES  2-2/3", (((2, 2),), 3), id="9110-14.4-case-and-spaces"),
    pytest.param("bytes 0-4/*", None, id="9111-3.3-unknown-complete-length"),
    pytest.param("bytes */10", None, id="9110-14.4-unsatisfied-range"),
    pytest.param("bytes 5-4/10", None, id="9110-14.4-backwards"),
    pytest.param("bytes 0-10/10", None, id="9110-14.4-beyond-the-length"),
    pytest.param("items 0-4/10", None, id="9110-14.4-another-unit"),
    pytest.param(None, None, id="9110-15.3.7.2-multipart-has-no-content-range"),
]


@pytest.mark.parametrize(("content_range", "expected"), PARTIAL)
def test_rfc9111_s3_3_a_206_is_stored_with_its_range(
    content_range: str | None, expected: tuple[tuple[tuple[int, int], ...], int] | None
) -> None:
    pairs = [("Cache-Control", "max-age=60"), ("ETag", '"v1"')]
    if content_range is not None:
        pairs.append(("Content-Range", content_range))
    result = plan(hdrs(*pairs), status=206)
    if expected is None:
        assert isinstance(result, DontStore)
        return
    assert isinstance(result, StorePlan)
    template = result.template
    assert (template.parts, template.complete_length) == expected
    assert "Content-Range" not in dict(template.headers)  # per delivery, never stored
