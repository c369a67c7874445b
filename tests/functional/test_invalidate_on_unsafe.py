"""Which unsafe requests invalidate what is stored: `policy.invalidate_on_unsafe` (issue 12 row 19).

Row 19: "`PURGE /x` on the public port with `purge_method: false` is forwarded and, if the origin
accepts it, evicts the entry (RFC 9111 §4.4)". That is the RFC's rule (a non-error response to an
unsafe method invalidates the target URI), so it stays the default; the key narrows it to some
methods from some client networks. A request left out is still forwarded: only the eviction goes.

The stub origin answers any method on /max-age/N with a 200, as an origin that "accepts" PURGE.
The test client connects from 127.0.0.1.
"""

from __future__ import annotations

from dataclasses import replace

from proxy.config import InvalidationConfig, PolicyConfig
from tests.functional.conftest import Origin, Proxy, ProxyFactory, cache_status

HOST = {"Host": "cdn.example"}
PATH = "/max-age/600"


async def stored_and_hit(proxy: Proxy) -> None:
    resp, _ = await proxy.get(PATH, headers=HOST)
    assert "stored" in cache_status(resp), resp.headers
    assert await is_hit(proxy)


async def is_hit(proxy: Proxy) -> bool:
    resp, _ = await proxy.get(PATH, headers=HOST)
    assert resp.status == 200
    return cache_status(resp).startswith("edge-test;hit")


async def send(proxy: Proxy, method: str) -> None:
    """An unsafe request for PATH; the origin's 200 comes back (forwarded, not answered by the node)."""
    async with proxy.request(method, PATH, headers=HOST, data=b"{}") as resp:
        assert resp.status == 200, await resp.read()
        assert "fwd=bypass" in cache_status(resp) and "fwd-status=200" in cache_status(resp)


def limited(methods: tuple[str, ...], networks: tuple[str, ...]) -> PolicyConfig:
    return replace(PolicyConfig(), invalidate_on_unsafe=InvalidationConfig(methods, networks))


async def test_by_default_a_forwarded_purge_invalidates_as_the_rfc_says(proxy: Proxy, origin: Origin) -> None:
    # Issue 12 row 19: the default keeps RFC 9111 §4.4 (every unsafe method, from every client).
    await stored_and_hit(proxy)
    await send(proxy, "PURGE")
    assert not await is_hit(proxy)
    assert [r["method"] for r in await origin.requests(PATH)] == ["GET", "PURGE", "GET"]


async def test_a_purge_from_a_network_not_listed_is_forwarded_without_invalidating(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    # Issue 12 row 19: every method counts, but only from 10.0.0.0/8; the client is 127.0.0.1.
    proxy = await start_proxy(policy=limited(("*",), ("10.0.0.0/8",)))
    await stored_and_hit(proxy)
    await send(proxy, "PURGE")
    await send(proxy, "PUT")  # the network decides for every method
    assert await is_hit(proxy)
    assert [r["method"] for r in await origin.requests(PATH)] == ["GET", "PURGE", "PUT"]


async def test_a_listed_method_from_a_listed_network_invalidates_and_no_other_method_does(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    # Issue 12 row 19: the operator's list without PURGE, from loopback (where the client is).
    proxy = await start_proxy(policy=limited(("POST", "PUT", "DELETE", "PATCH"), ("127.0.0.0/8", "::1/128")))
    await stored_and_hit(proxy)
    await send(proxy, "PURGE")
    assert await is_hit(proxy)
    await send(proxy, "PUT")
    assert not await is_hit(proxy)
    assert [r["method"] for r in await origin.requests(PATH)] == ["GET", "PURGE", "PUT", "GET"]
