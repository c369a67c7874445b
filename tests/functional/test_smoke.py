"""Smoke: a miss then a hit through the real proxy and origin."""

from tests.functional.conftest import Origin, Proxy, cache_status


async def test_second_get_is_a_hit_with_age(proxy: Proxy, origin: Origin, clock) -> None:
    r1, b1 = await proxy.get("/max-age/60")
    assert r1.status == 200, b1
    print(dict(r1.headers))
    assert "fwd=uri-miss" in cache_status(r1)
    clock.advance(5)
    r2, b2 = await proxy.get("/max-age/60")
    print(dict(r2.headers))
    assert b2 == b1
    assert cache_status(r2).startswith("edge-test;hit")
    assert r2.headers["Age"] == "5"
    assert await origin.hits("/max-age/60") == 1
