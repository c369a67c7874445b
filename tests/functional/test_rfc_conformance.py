"""RFC conformance, second pass (issue 11): an origin sends exactly the headers named, the real
proxy in front of it. Each test names the RFC section it proves and counts what reached the origin.
"""

from __future__ import annotations

import pytest

from tests.functional.conftest import FakeClock, Origin, Proxy, cache_status

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
