"""Shared builders for the unit tests of the pure policy layer.

No clock, no event loop: every time is an offset from the fixed epoch `NOW`.
HTTP-dates are formatted here independently of `proxy.headers`, so that a bug
in the module under test cannot hide itself.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import replace
from typing import Any

from multidict import CIMultiDict

from proxy.config import PolicyConfig
from proxy.entry import StoredResponse
from proxy.headers import EMPTY_DIRECTIVES, Directives, parse_cache_control
from proxy.policy import DontStore, StorePlan, plan_store

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
DEFAULTS = PolicyConfig()


def hdrs(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    """A header multidict in the given order (repeated names allowed)."""
    return CIMultiDict(pairs)


def http_date(timestamp: float) -> str:
    """IMF-fixdate, written out by hand (RFC 9110 §5.6.7)."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(timestamp))


def epoch(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def entry(**overrides: Any) -> StoredResponse:
    """A stored 200, received at NOW with no delay and 60 s of freshness, unless overridden."""
    base = StoredResponse(
        status=200,
        reason="OK",
        headers=(("Date", http_date(NOW)),),
        body=b"hello",
        request_time=NOW,
        response_time=NOW,
        corrected_initial_age=0.0,
        freshness_lifetime=60.0,
        date=http_date(NOW),
    )
    return replace(base, **overrides)


def req_directives(cache_control: str | None) -> Directives:
    if cache_control is None:
        return EMPTY_DIRECTIVES
    return parse_cache_control([cache_control])


def plan(
    response: CIMultiDict[str],
    *,
    request: CIMultiDict[str] | None = None,
    method: str = "GET",
    status: int = 200,
    request_cc: str | None = None,
    opts: PolicyConfig = DEFAULTS,
    request_time: float = NOW,
    response_time: float = NOW,
) -> StorePlan | DontStore:
    """Run plan_store with the usual defaults."""
    return plan_store(
        method,
        request if request is not None else hdrs(),
        req_directives(request_cc),
        status,
        "Status",
        response,
        request_time,
        response_time,
        opts,
    )


def stored(response: CIMultiDict[str], **kwargs: Any) -> StoredResponse:
    """The StoredResponse plan_store builds (the test fails if it refuses to store)."""
    result = plan(response, **kwargs)
    assert isinstance(result, StorePlan), f"expected the response to be stored, got {result}"
    return result.build(b"body")


def header_names(entry_: StoredResponse) -> set[str]:
    return {name.lower() for name, _ in entry_.headers}
