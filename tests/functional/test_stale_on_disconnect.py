"""Stale on disconnect (RFC 9111 §4.2.4): a raw origin sends exactly the headers named, then fails.

A stored response whose directives allow stale answers for up to `policy.stale_on_disconnect`
seconds past its expiry when the origin cannot be reached, closes the connection, times out or
sends something unparsable; Cache-Status says `fwd=stale;detail="stale-on-disconnect"`. The
directives that forbid stale (no-cache, must-revalidate, proxy-revalidate, s-maxage) still get
the 502/504, and so does an origin's own 5xx (an answer, not a disconnect: stale-if-error's job).
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import OriginConfig, PolicyConfig
from tests.functional.conftest import (
    FakeClock,
    ProxyFactory,
    Script,
    ScriptedOrigin,
    StartScripted,
    cache_status,
)


def ok(cache_control: str, body: bytes = b"stored") -> bytes:
    return b'HTTP/1.1 200 OK\r\nCache-Control: %s\r\nETag: "v1"\r\nContent-Length: %d\r\n\r\n%s' % (
        cache_control.encode(),
        len(body),
        body,
    )


# How the origin fails the revalidation: a script, or "down" (nothing listens any more).
FAILURES: dict[str, Script | str] = {
    "closed-before-a-byte": "close",
    "timed-out": "hang",
    "closed-mid-body": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCache-Control: max-age=10\r\n\r\nhalf",
    "unparsable": b"HTTP/1.1 2x0 Nope\r\n\r\n",
    "down": "down",
}
GATEWAY = {"timed-out": 504}


async def start(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, scripts: list[Script], **policy: Any
) -> tuple[Any, ScriptedOrigin]:
    origin = await scripted_origin(scripts)
    proxy = await start_proxy(
        origin=OriginConfig(url=origin.url, connect_timeout=1.0, read_timeout=0.3, host_header="client"),
        policy=PolicyConfig(**policy),
    )
    return proxy, origin


async def fail_next(origin: ScriptedOrigin, failure: str) -> None:
    if failure == "down":
        await origin.close()


@pytest.mark.parametrize("failure", list(FAILURES))
async def test_rfc9111_s4_2_4_stale_is_served_when_the_origin_is_disconnected(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, clock: FakeClock, failure: str
) -> None:
    script = FAILURES[failure]
    proxy, origin = await start(
        start_proxy, scripted_origin, [ok("max-age=10"), script if script != "down" else b""]
    )
    _, body = await proxy.get("/doc")
    assert body == b"stored"
    clock.advance(10 + 120)  # stale by 120 s: inside the default window (300 s)
    await fail_next(origin, failure)
    resp, body = await proxy.get("/doc")
    assert (resp.status, body) == (200, b"stored")
    member = cache_status(resp)
    assert "fwd=stale" in member and 'detail="stale-on-disconnect"' in member, member
    assert "ttl=-120" in member
    assert resp.headers["Age"] == "130"
    if failure != "down":
        # It did ask (twice when the reused connection closed: the keep-alive race is retried once).
        assert len(origin.requests) >= 2


@pytest.mark.parametrize(
    "cache_control",
    [
        pytest.param("max-age=10, must-revalidate", id="9111-4.2.4-must-revalidate"),
        pytest.param("max-age=10, proxy-revalidate", id="9111-4.2.4-proxy-revalidate"),
        pytest.param("s-maxage=10", id="9111-4.2.4-s-maxage"),
        pytest.param("max-age=10, no-cache", id="9111-4.2.4-no-cache"),
    ],
)
@pytest.mark.parametrize("failure", ["closed-before-a-byte", "timed-out", "down"])
async def test_rfc9111_s4_2_4_directives_that_forbid_stale_still_get_the_gateway_error(
    start_proxy: ProxyFactory,
    scripted_origin: StartScripted,
    clock: FakeClock,
    cache_control: str,
    failure: str,
) -> None:
    script = FAILURES[failure]
    proxy, origin = await start(
        start_proxy, scripted_origin, [ok(cache_control), script if script != "down" else b""]
    )
    await proxy.get("/doc")
    clock.advance(30)
    await fail_next(origin, failure)
    resp, body = await proxy.get("/doc")
    assert resp.status == GATEWAY.get(failure, 502), cache_status(resp)
    assert body != b"stored"


async def test_rfc9111_s4_2_4_the_window_is_bounded_and_configurable(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, clock: FakeClock
) -> None:
    proxy, _ = await start(start_proxy, scripted_origin, [ok("max-age=10"), "close"], stale_on_disconnect=60)
    await proxy.get("/doc")
    clock.advance(10 + 60)
    resp, _ = await proxy.get("/doc")
    assert resp.status == 200 and "stale-on-disconnect" in cache_status(resp)
    clock.advance(1)  # stale by 61 s: past the window
    resp, body = await proxy.get("/doc")
    assert resp.status == 502 and body == b"origin closed the connection\n"


async def test_rfc9111_s4_2_4_zero_turns_it_off(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, clock: FakeClock
) -> None:
    proxy, _ = await start(start_proxy, scripted_origin, [ok("max-age=10"), "close"], stale_on_disconnect=0)
    await proxy.get("/doc")
    clock.advance(11)
    resp, _ = await proxy.get("/doc")
    assert resp.status == 502


async def test_rfc9111_s5_2_1_2_a_clients_max_stale_bounds_it(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, clock: FakeClock
) -> None:
    proxy, _ = await start(start_proxy, scripted_origin, [ok("max-age=10"), "close"])
    await proxy.get("/doc")
    clock.advance(10 + 20)
    resp, _ = await proxy.get("/doc", headers={"Cache-Control": "max-stale=5"})
    assert resp.status == 502  # the client accepts 5 s of staleness, not 20
    resp, body = await proxy.get("/doc")
    assert resp.status == 200 and body == b"stored"
    assert "stale-on-disconnect" in cache_status(resp)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_rfc5861_s4_an_origin_5xx_is_not_a_disconnect(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, clock: FakeClock, status: int
) -> None:
    error = b"HTTP/1.1 %d Oops\r\nContent-Length: 5\r\n\r\noops!" % status
    proxy, _ = await start(start_proxy, scripted_origin, [ok("max-age=10"), error])
    await proxy.get("/doc")
    clock.advance(30)
    resp, body = await proxy.get("/doc")
    assert (resp.status, body) == (status, b"oops!")  # the origin's answer passes


async def test_rfc5861_s4_stale_if_error_keeps_its_own_detail(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, clock: FakeClock
) -> None:
    proxy, _ = await start(start_proxy, scripted_origin, [ok("max-age=10, stale-if-error=600"), "close"])
    await proxy.get("/doc")
    clock.advance(30)
    resp, _ = await proxy.get("/doc")
    assert resp.status == 200 and 'detail="stale-if-error"' in cache_status(resp)
