"""proxy.policy.decide: may a stored response answer this request?

RFC 9111 §4, §4.2.4 and §5.2.1, RFC 8246 (immutable), RFC 5861 (stale-while-revalidate, stale-if-error).

Entries are built by plan_store from real response headers, received at NOW; the
request is decided at NOW + `elapsed`, so "fresh for 60 s" and "10 s stale" are
plain arithmetic.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from proxy.config import PolicyConfig
from proxy.entry import StoredResponse
from proxy.policy import (
    ERROR_STATUSES,
    Decision,
    Deliver,
    Fetch,
    GatewayTimeout,
    Pass,
    Revalidate,
    decide,
    may_serve_stale,
    request_directives,
    stale_for_failure,
    within_stale_if_error,
    within_stale_while_revalidate,
)

from .support import DEFAULTS, NOW, hdrs, req_directives, stored

IGNORE_CLIENT = replace(DEFAULTS, honour_request_directives=False)


def cached(cache_control: str, opts: PolicyConfig = DEFAULTS) -> StoredResponse:
    """A stored 200 with this Cache-Control and an ETag, received at NOW with no delay."""
    return stored(hdrs(("Cache-Control", cache_control), ("ETag", '"v1"')), opts=opts)


def run(
    request_pairs: list[tuple[str, str]],
    entry: StoredResponse | None,
    elapsed: float,
    opts: PolicyConfig = DEFAULTS,
    method: str = "GET",
    any_stored: bool = False,
) -> Decision:
    directives = request_directives(hdrs(*request_pairs), opts)
    return decide(method, directives, entry, any_stored or entry is not None, NOW + elapsed, opts)


def summary(decision: Decision) -> str:
    """A short, comparable form: 'deliver', 'deliver-stale', 'revalidate:<why>', 'fetch:<why>', ..."""
    match decision:
        case Deliver(stale=True, revalidate_in_background=True):
            return "deliver-stale-and-revalidate"
        case Deliver(stale=True):
            return "deliver-stale"
        case Deliver():
            return "deliver"
        case Revalidate(reason=why):
            return f"revalidate:{why}"
        case Fetch(reason=why):
            return f"fetch:{why}"
        case Pass(reason=why):
            return f"pass:{why}"
        case GatewayTimeout():
            return "504"
    raise AssertionError(decision)


FRESH_60 = cached("max-age=60")
CC = "Cache-Control"

CASES = [
    # (request headers, entry, elapsed seconds, opts, expected)
    pytest.param([], FRESH_60, 10, DEFAULTS, "deliver", id="9111-4.2-fresh-delivered"),
    pytest.param([], FRESH_60, 70, DEFAULTS, "revalidate:stale", id="9111-4.2-stale-revalidated"),
    pytest.param([], FRESH_60, 60, DEFAULTS, "revalidate:stale", id="9111-4.2-age-equal-lifetime-is-stale"),
    pytest.param(
        [],
        cached("max-age=60, no-cache"),
        1,
        DEFAULTS,
        "revalidate:no-cache",
        id="9111-5.2.2.4-no-cache-response",
    ),
    pytest.param([(CC, "no-cache")], FRESH_60, 1, DEFAULTS, "revalidate:request", id="9111-5.2.1.4-no-cache"),
    pytest.param([("Pragma", "no-cache")], FRESH_60, 1, DEFAULTS, "revalidate:request", id="9111-5.4-pragma"),
    pytest.param(
        [("Pragma", "foo, No-Cache")], FRESH_60, 1, DEFAULTS, "revalidate:request", id="9111-5.4-pragma-list"
    ),
    pytest.param(
        [("Pragma", "no-cache"), (CC, "max-age=3600")],
        FRESH_60,
        1,
        DEFAULTS,
        "deliver",
        id="9111-5.4-pragma-ignored-with-cache-control",
    ),
    pytest.param(
        [(CC, "max-age=0")], FRESH_60, 1, DEFAULTS, "revalidate:request", id="9111-5.2.1.1-max-age-0"
    ),
    pytest.param(
        [(CC, "max-age=5")],
        FRESH_60,
        10,
        DEFAULTS,
        "revalidate:request",
        id="9111-5.2.1.1-older-than-max-age",
    ),
    pytest.param(
        [(CC, "max-age=10")], FRESH_60, 10, DEFAULTS, "deliver", id="9111-5.2.1.1-age-equal-max-age-ok"
    ),
    pytest.param(
        [(CC, "max-age=100")], FRESH_60, 70, DEFAULTS, "revalidate:stale", id="9111-5.2.1.1-max-age-no-stale"
    ),
    pytest.param(
        [(CC, "min-fresh=30")],
        FRESH_60,
        40,
        DEFAULTS,
        "revalidate:request",
        id="9111-5.2.1.3-min-fresh-not-met",
    ),
    pytest.param([(CC, "min-fresh=30")], FRESH_60, 20, DEFAULTS, "deliver", id="9111-5.2.1.3-min-fresh-met"),
    pytest.param(
        [(CC, "max-stale")], FRESH_60, 10_000, DEFAULTS, "deliver-stale", id="9111-5.2.1.2-max-stale-any"
    ),
    pytest.param(
        [(CC, "max-stale=20")], FRESH_60, 80, DEFAULTS, "deliver-stale", id="9111-5.2.1.2-max-stale-within"
    ),
    pytest.param(
        [(CC, "max-stale=20")], FRESH_60, 81, DEFAULTS, "revalidate:stale", id="9111-5.2.1.2-max-stale-beyond"
    ),
    pytest.param(
        [(CC, "max-stale=abc")],
        FRESH_60,
        61,
        DEFAULTS,
        "revalidate:stale",
        id="9111-5.2.1.2-max-stale-invalid",
    ),
    pytest.param(
        [(CC, "max-stale")],
        cached("max-age=60, must-revalidate"),
        61,
        DEFAULTS,
        "revalidate:stale",
        id="9111-4.2.4-max-stale-refused-must-revalidate",
    ),
    pytest.param(
        [(CC, "max-stale")],
        cached("max-age=60, proxy-revalidate"),
        61,
        DEFAULTS,
        "revalidate:stale",
        id="9111-4.2.4-max-stale-refused-proxy-revalidate",
    ),
    pytest.param(
        [(CC, "max-stale")],
        cached("s-maxage=60"),
        61,
        DEFAULTS,
        "revalidate:stale",
        id="9111-4.2.4-max-stale-refused-s-maxage",
    ),
    pytest.param(
        [(CC, "max-stale")],
        cached("max-age=60, no-cache"),
        61,
        DEFAULTS,
        "revalidate:no-cache",
        id="9111-4.2.4-max-stale-refused-no-cache",
    ),
    pytest.param(
        [(CC, "max-stale")],
        cached("max-age=60, must-revalidate"),
        61,
        replace(DEFAULTS, serve_stale_despite_prohibitions=True),
        "deliver-stale",
        id="requirements-4-operator-allows-stale-despite-must-revalidate",
    ),
    pytest.param(
        [(CC, "only-if-cached")], FRESH_60, 10, DEFAULTS, "deliver", id="9111-5.2.1.7-only-if-cached-fresh"
    ),
    pytest.param(
        [(CC, "only-if-cached")], FRESH_60, 70, DEFAULTS, "504", id="9111-5.2.1.7-only-if-cached-stale"
    ),
    pytest.param(
        [(CC, "only-if-cached, no-cache")],
        FRESH_60,
        1,
        DEFAULTS,
        "504",
        id="9111-5.2.1.7-only-if-cached-no-cache",
    ),
    pytest.param(
        [(CC, "only-if-cached, max-stale")],
        FRESH_60,
        70,
        DEFAULTS,
        "deliver-stale",
        id="9111-5.2.1.7-only-if-cached-with-max-stale",
    ),
    pytest.param([(CC, "only-if-cached")], None, 0, DEFAULTS, "504", id="9111-5.2.1.7-only-if-cached-miss"),
    pytest.param([], None, 0, DEFAULTS, "fetch:uri-miss", id="9211-2.2-uri-miss"),
    # RFC 8246: immutable
    pytest.param(
        [(CC, "no-cache")],
        cached("max-age=60, immutable"),
        10,
        DEFAULTS,
        "deliver",
        id="8246-2-immutable-fresh-despite-reload",
    ),
    pytest.param(
        [(CC, "max-age=0")],
        cached("max-age=60, immutable"),
        10,
        DEFAULTS,
        "deliver",
        id="8246-2-immutable-fresh-despite-max-age-0",
    ),
    pytest.param(
        [(CC, "no-cache")],
        cached("max-age=60, immutable"),
        10,
        replace(DEFAULTS, honour_immutable=False),
        "revalidate:request",
        id="8246-2-immutable-not-honoured-when-disabled",
    ),
    pytest.param(
        [(CC, "no-cache")],
        cached("max-age=60, immutable"),
        70,
        DEFAULTS,
        "revalidate:request",
        id="8246-2-immutable-stale-revalidated",
    ),
    pytest.param(
        [],
        cached("max-age=60, immutable, no-cache"),
        10,
        DEFAULTS,
        "revalidate:no-cache",
        id="8246-2-immutable-does-not-override-no-cache",
    ),
    # RFC 5861 §3: stale-while-revalidate
    pytest.param(
        [],
        cached("max-age=60, stale-while-revalidate=30"),
        80,
        DEFAULTS,
        "deliver-stale-and-revalidate",
        id="5861-3-within-stale-while-revalidate",
    ),
    pytest.param(
        [],
        cached("max-age=60, stale-while-revalidate=30"),
        91,
        DEFAULTS,
        "revalidate:stale",
        id="5861-3-beyond-stale-while-revalidate",
    ),
    pytest.param(
        [],
        cached("max-age=60, stale-while-revalidate=30, must-revalidate"),
        80,
        DEFAULTS,
        "revalidate:stale",
        id="9111-4.2.4-stale-while-revalidate-refused-must-revalidate",
    ),
    pytest.param(
        [],
        cached("s-maxage=60, stale-while-revalidate=30"),
        80,
        DEFAULTS,
        "revalidate:stale",
        id="9111-4.2.4-stale-while-revalidate-refused-s-maxage",
    ),
    pytest.param(
        [],
        cached("max-age=60", replace(DEFAULTS, default_stale_while_revalidate=30)),
        80,
        DEFAULTS,
        "deliver-stale-and-revalidate",
        id="5861-3-operator-default-window",
    ),
    pytest.param(
        [(CC, "no-cache")],
        cached("max-age=60, stale-while-revalidate=30"),
        80,
        DEFAULTS,
        "revalidate:request",
        id="5861-3-client-no-cache-beats-stale-while-revalidate",
    ),
]


@pytest.mark.parametrize(("request_pairs", "entry", "elapsed", "opts", "expected"), CASES)
def test_decide(
    request_pairs: list[tuple[str, str]],
    entry: StoredResponse | None,
    elapsed: float,
    opts: PolicyConfig,
    expected: str,
) -> None:
    assert summary(run(request_pairs, entry, elapsed, opts)) == expected


def test_rfc9111_s4_1_vary_miss_when_the_url_has_other_variants() -> None:
    assert summary(run([], None, 0, any_stored=True)) == "fetch:vary-miss"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_rfc9111_s4_other_methods_pass(method: str) -> None:
    assert summary(run([], FRESH_60, 1, method=method)) == "pass:method"


def test_requirements_s11_head_answered_from_stored_get() -> None:
    decision = run([], FRESH_60, 10, method="HEAD")
    assert isinstance(decision, Deliver)
    assert decision.entry is FRESH_60


def test_rfc9111_s4_2_deliver_reports_age_and_ttl() -> None:
    entry = replace(FRESH_60, corrected_initial_age=5.0)
    decision = run([], entry, 10, DEFAULTS)
    assert isinstance(decision, Deliver)
    assert (decision.age, decision.ttl, decision.stale) == (15, 45, False)


@pytest.mark.parametrize(
    "request_pairs",
    [
        pytest.param([(CC, "no-cache")], id="no-cache"),
        pytest.param([(CC, "max-age=0")], id="max-age-0"),
        pytest.param([(CC, "min-fresh=3600")], id="min-fresh"),
        pytest.param([("Pragma", "no-cache")], id="pragma"),
    ],
)
def test_requirements_s8_client_directives_ignored_when_configured(
    request_pairs: list[tuple[str, str]],
) -> None:
    assert summary(run(request_pairs, FRESH_60, 10, IGNORE_CLIENT)) == "deliver"


def test_requirements_s8_ignored_max_stale_and_only_if_cached() -> None:
    assert summary(run([(CC, "max-stale")], FRESH_60, 70, IGNORE_CLIENT)) == "revalidate:stale"
    assert summary(run([(CC, "only-if-cached")], None, 0, IGNORE_CLIENT)) == "fetch:uri-miss"
    assert summary(run([(CC, "only-if-cached")], FRESH_60, 70, IGNORE_CLIENT)) == "revalidate:stale"


def test_requirements_s8_ignored_request_directives_are_empty() -> None:
    h = hdrs((CC, "no-store, no-cache, only-if-cached"), ("Pragma", "no-cache"))
    assert dict(request_directives(h, IGNORE_CLIENT).values) == {}
    assert set(request_directives(h, DEFAULTS).values) == {"no-store", "no-cache", "only-if-cached"}


# --------------------------------------------------------------------------- serving stale (§4.2.4, RFC 5861)


@pytest.mark.parametrize(
    ("cache_control", "allowed"),
    [
        pytest.param("max-age=60", True, id="9111-4.2.4-plain"),
        pytest.param("max-age=60, must-revalidate", False, id="9111-4.2.4-must-revalidate"),
        pytest.param("max-age=60, proxy-revalidate", False, id="9111-4.2.4-proxy-revalidate"),
        pytest.param("s-maxage=60", False, id="9111-4.2.4-s-maxage"),
        pytest.param("max-age=60, no-cache", False, id="9111-4.2.4-no-cache"),
    ],
)
def test_rfc9111_s4_2_4_may_serve_stale(cache_control: str, allowed: bool) -> None:
    entry = cached(cache_control)
    assert may_serve_stale(entry, DEFAULTS) is allowed
    assert may_serve_stale(entry, replace(DEFAULTS, serve_stale_despite_prohibitions=True)) is True


def test_rfc5861_s4_error_statuses() -> None:
    assert frozenset({500, 502, 503, 504}) == ERROR_STATUSES


def test_rfc5861_s3_no_window_means_no_stale_while_revalidate() -> None:
    assert within_stale_while_revalidate(FRESH_60, NOW + 60, DEFAULTS) is False
    assert within_stale_while_revalidate(FRESH_60, NOW + 61, DEFAULTS) is False


@pytest.mark.parametrize(
    ("cache_control", "request_cc", "elapsed", "expected"),
    [
        pytest.param("max-age=60, stale-if-error=30", None, 90, True, id="5861-4-within-response-window"),
        pytest.param("max-age=60, stale-if-error=30", None, 91, False, id="5861-4-beyond-response-window"),
        pytest.param("max-age=60", "stale-if-error=30", 90, True, id="5861-4-request-directive"),
        pytest.param(
            "max-age=60, stale-if-error=5", "stale-if-error=30", 90, True, id="5861-4-larger-window-wins"
        ),
        pytest.param("max-age=60", None, 61, False, id="5861-4-no-window"),
        pytest.param("max-age=60", None, 60, False, id="5861-4-no-window-at-expiry"),
        pytest.param(
            "max-age=60, stale-if-error=30, must-revalidate", None, 61, False, id="9111-4.2.4-must-revalidate"
        ),
        pytest.param("s-maxage=60, stale-if-error=30", None, 61, False, id="9111-4.2.4-s-maxage"),
    ],
)
def test_rfc5861_s4_stale_if_error(
    cache_control: str, request_cc: str | None, elapsed: float, expected: bool
) -> None:
    entry = cached(cache_control)
    assert within_stale_if_error(entry, req_directives(request_cc), NOW + elapsed, DEFAULTS) is expected


@pytest.mark.parametrize(
    ("request_cc", "elapsed", "background"),
    [
        pytest.param(None, 70, True, id="5861-3-within-window"),
        pytest.param("max-stale", 70, True, id="9111-5.2.1.2-max-stale-any"),
        pytest.param("max-stale=30", 70, True, id="9111-5.2.1.2-max-stale-covers-staleness"),
        pytest.param("max-stale=0", 70, False, id="9111-5.2.1.2-max-stale-0-refuses-swr"),
        pytest.param("max-stale=5", 70, False, id="9111-5.2.1.2-max-stale-below-staleness"),
    ],
)
def test_rfc5861_s3_swr_respects_the_clients_max_stale(
    request_cc: str | None, elapsed: float, background: bool
) -> None:
    entry = cached("max-age=60, stale-while-revalidate=60")
    decision = decide("GET", req_directives(request_cc), entry, True, NOW + elapsed, DEFAULTS)
    if background:
        assert isinstance(decision, Deliver) and decision.stale
    else:
        # max-stale=N below the staleness: neither max-stale nor SWR may answer stale.
        assert isinstance(decision, Revalidate)


STALE_FOR_FAILURE = [
    # (Cache-Control, request Cache-Control, seconds since stored, disconnected, options, rule)
    pytest.param("max-age=60", None, 61, True, {}, "stale-on-disconnect", id="9111-4.2.4-just-stale"),
    pytest.param("max-age=60", None, 360, True, {}, "stale-on-disconnect", id="9111-4.2.4-end-of-window"),
    pytest.param("max-age=60", None, 361, True, {}, None, id="9111-4.2.4-past-the-window"),
    pytest.param("max-age=60", None, 61, False, {}, None, id="5861-4-a-5xx-is-no-disconnect"),
    pytest.param("max-age=60", None, 61, True, {"stale_on_disconnect": 0}, None, id="9111-4.2.4-off"),
    pytest.param(
        "max-age=60", None, 1000, True, {"stale_on_disconnect": 3600}, "stale-on-disconnect", id="wider"
    ),
    pytest.param("max-age=60, must-revalidate", None, 61, True, {}, None, id="9111-4.2.4-must-revalidate"),
    pytest.param("max-age=60, proxy-revalidate", None, 61, True, {}, None, id="9111-4.2.4-proxy-revalidate"),
    pytest.param("s-maxage=60", None, 61, True, {}, None, id="9111-4.2.4-s-maxage"),
    pytest.param("max-age=60, no-cache", None, 61, True, {}, None, id="9111-4.2.4-no-cache"),
    pytest.param(
        "max-age=60, must-revalidate",
        None,
        61,
        True,
        {"serve_stale_despite_prohibitions": True},
        "stale-on-disconnect",
        id="operator-override",
    ),
    pytest.param("max-age=60", "max-stale=5", 70, True, {}, None, id="9111-5.2.1.2-max-stale-below"),
    pytest.param("max-age=60", "max-stale=10", 70, True, {}, "stale-on-disconnect", id="9111-5.2.1.2-covers"),
    pytest.param("max-age=60", "max-stale", 70, True, {}, "stale-on-disconnect", id="9111-5.2.1.2-any"),
    pytest.param("max-age=60, stale-if-error=30", None, 80, True, {}, "stale-if-error", id="5861-4-wins"),
    pytest.param("max-age=60, stale-if-error=30", None, 80, False, {}, "stale-if-error", id="5861-4-5xx"),
    pytest.param(
        "max-age=60, stale-if-error=30", None, 100, False, {}, None, id="5861-4-5xx-past-its-window"
    ),
]


@pytest.mark.parametrize(
    ("cache_control", "request_cc", "elapsed", "disconnected", "options", "rule"), STALE_FOR_FAILURE
)
def test_rfc9111_s4_2_4_stale_for_failure(
    cache_control: str,
    request_cc: str | None,
    elapsed: float,
    disconnected: bool,
    options: dict[str, Any],
    rule: str | None,
) -> None:
    opts = replace(DEFAULTS, **options)
    found = stale_for_failure(
        cached(cache_control), req_directives(request_cc), NOW + elapsed, opts, disconnected=disconnected
    )
    assert found == rule


def test_rfc9111_s4_2_4_default_window_is_bounded() -> None:
    assert 0 < DEFAULTS.stale_on_disconnect <= 3600


@pytest.mark.parametrize(
    ("request_cc", "elapsed", "covered", "expected"),
    [
        pytest.param(None, 10, True, "deliver", id="9111-3.3-a-held-range-fresh"),
        pytest.param(None, 70, True, "revalidate:stale", id="9111-3.3-a-held-range-stale"),
        pytest.param(None, 10, False, "fetch:partial", id="9111-3.3-not-held"),
        pytest.param(None, 70, False, "fetch:partial", id="9111-3.3-not-held-stale"),
        pytest.param("only-if-cached", 10, False, "504", id="9111-5.2.1.7-not-held-only-if-cached"),
    ],
)
def test_rfc9111_s3_3_an_incomplete_response_answers_only_what_it_holds(
    request_cc: str | None, elapsed: float, covered: bool, expected: str
) -> None:
    stored = replace(cached("max-age=60"), status=206, parts=((0, 4),), complete_length=10)
    decision = decide("GET", req_directives(request_cc), stored, True, NOW + elapsed, DEFAULTS, covered)
    assert summary(decision) == expected
