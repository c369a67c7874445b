"""RFC conformance, second pass (issue 11): an origin sends exactly the headers named, the real
proxy in front of it. Each test names the RFC section it proves and counts what reached the origin.
"""

from __future__ import annotations

import pytest

from proxy.config import PolicyConfig
from tests.functional.conftest import FakeClock, Origin, Proxy, ProxyFactory, cache_status

# ---------------------------------------------------------------- RFC 9111 §5.3: invalid Expires

# Ten days after the fake clock's start (Mon, 25 Jan 2027 08:00:00 GMT), spelled three valid ways
# (RFC 9110 §5.6.7) and several invalid ones: an invalid Expires is already expired.
EXPIRES = [
    pytest.param("Mon, 25 Jan 2027 08:00:00 GMT", True, id="9110-5.6.7-imf-fixdate"),
    pytest.param("Monday, 25-Jan-27 08:00:00 GMT", True, id="9110-5.6.7-rfc850"),
    pytest.param("Mon Jan 25 08:00:00 2027", True, id="9110-5.6.7-asctime"),
    pytest.param("Mon, 25 Jan 2027 08:00:00 UTC", False, id="9111-5.3-utc-zone"),
    pytest.param("Mon, 25 Jan 27 08:00:00 GMT", False, id="9111-5.3-two-digit-year"),
    pytest.param("Mon 25 Jan 2027 08:00:00 GMT", False, id="9111-5.3-no-comma"),
    pytest.param("Mon, 25 Jan 2027 8:00:00 GMT", False, id="9111-5.3-one-digit-hour"),
]


@pytest.mark.parametrize(("expires", "fresh"), EXPIRES)
async def test_rfc9111_s5_3_only_http_dates_make_expires_fresh(
    proxy: Proxy, origin: Origin, clock: FakeClock, expires: str, fresh: bool
) -> None:
    params = [("h", f"Expires:{expires}"), ("h", 'ETag:"e1"'), ("body", "x")]
    await proxy.get("/respond", params=params)
    clock.advance(60)
    second, _ = await proxy.get("/respond", params=params)
    assert ("hit" in cache_status(second).split(";")) is fresh
    assert await origin.hits("/respond") == (1 if fresh else 2)


# ------------------------------------------------- RFC 9213 §2.1: a wrongly typed targeted field

TARGETED = [
    # CDN-Cache-Control next to Cache-Control: no-store; stored only when the targeted field is valid.
    # A wrongly typed member spoils the whole field, even next to a valid s-maxage.
    pytest.param("s-maxage=10000", True, id="9213-2.2-valid-field-wins"),
    pytest.param('max-age="10000"', False, id="9213-2.1-string"),
    pytest.param("s-maxage=10000, max-age=10000.0", False, id="9213-2.1-decimal"),
    pytest.param("s-maxage=10000, max-age=-10000", False, id="9213-2.1-negative"),
    pytest.param("s-maxage=10000, max-age=(10000)", False, id="9213-2.1-inner-list"),
    pytest.param('s-maxage=10000, public="yes"', False, id="9213-2.1-string-flag"),
]


@pytest.mark.parametrize(("targeted", "stored"), TARGETED)
async def test_rfc9213_s2_1_wrongly_typed_cdn_cache_control_is_ignored(
    proxy: Proxy, origin: Origin, clock: FakeClock, targeted: str, stored: bool
) -> None:
    params = [("h", "Cache-Control:no-store"), ("h", f"CDN-Cache-Control:{targeted}"), ("body", "x")]
    first, _ = await proxy.get("/respond", params=params)
    assert ("stored" in cache_status(first)) is stored
    clock.advance(60)
    second, _ = await proxy.get("/respond", params=params)
    assert ("hit" in cache_status(second).split(";")) is stored
    assert await origin.hits("/respond") == (1 if stored else 2)


# ----------------------------------------- RFC 9213 §1: CDN-Cache-Control goes on downstream

TARGETED_FIELDS = {
    "CDN-Cache-Control": "max-age=60",
    "Surrogate-Control": "max-age=60",
    "edge-test-Cache-Control": "max-age=60",  # named after this node (make_config: edge-test)
}

DELIVERED = [
    # (policy.strip_targeted_fields, the targeted fields a client receives)
    pytest.param(None, {"CDN-Cache-Control"}, id="9213-1-default-forwards-cdn-cache-control"),
    pytest.param((), set(TARGETED_FIELDS), id="9213-1-nothing-stripped"),
    pytest.param(
        ("CDN-Cache-Control",), {"Surrogate-Control", "edge-test-Cache-Control"}, id="9213-1-listed"
    ),
]


@pytest.mark.parametrize(("strip", "delivered"), DELIVERED)
@pytest.mark.parametrize("cacheable", [True, False], ids=["stored-and-hit", "pass-through"])
async def test_rfc9213_s1_only_fields_aimed_at_this_cache_are_removed(
    start_proxy: ProxyFactory,
    origin: Origin,
    clock: FakeClock,
    strip: tuple[str, ...] | None,
    delivered: set[str],
    cacheable: bool,
) -> None:
    policy = PolicyConfig() if strip is None else PolicyConfig(strip_targeted_fields=strip)
    proxy = await start_proxy(policy=policy)
    fields = dict(TARGETED_FIELDS)
    if not cacheable:
        fields["CDN-Cache-Control"] = "no-store"  # the first targeted field: nothing is stored
    params = [("h", f"{name}:{value}") for name, value in fields.items()]
    params += [("h", "Cache-Control:max-age=5"), ("body", "x")]
    first, _ = await proxy.get("/respond", params=params)
    clock.advance(10)
    second, _ = await proxy.get("/respond", params=params)
    assert ("hit" in cache_status(second).split(";")) is cacheable
    for resp in (first, second):
        assert {name for name in TARGETED_FIELDS if name in resp.headers} == delivered
        assert resp.headers["Cache-Control"] == "max-age=5"  # passed through unchanged
