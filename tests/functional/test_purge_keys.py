"""A purge names a URL the way a request for that URL is keyed: `keys.*` as the rules change them.

A per-route rule can change a URL's key (drop, keep or sort query parameters), and `keys.*`
changes every URL's. A purge of the URL a client used must find the object that client's
request stored, whichever way it is named: an absolute URL (admin API), a path meaning every
host (admin API, and `PURGE /path?query` on the public port), an invalidation after an unsafe
request. Each test stores through one spelling of the URL and purges through another that a
request would key alike; the next request must be a miss.
"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestServer

from proxy.admin import create_admin_app
from proxy.config import AdminConfig, KeyConfig, Rule, config_from_mapping
from tests.functional.conftest import Origin, Proxy, ProxyFactory, cache_status

HOST = "api.example"
TOKEN = "t0ken"
# Under /max-age/*: tracking parameters are not part of the key, the rest is sorted.
ROUTE_RULE: dict[str, Any] = {
    "name": "tracked",
    "match": {"path": "/max-age/*"},
    "key": {"drop_query": ["utm_*"], "sort_query": True},
}
STORED = "/max-age/600?utm_source=mail&b=2&a=1"  # keyed as /max-age/600?a=1&b=2
PURGED = "/max-age/600?a=1&b=2&utm_medium=ads"  # keyed alike


def rules(*raw: dict[str, Any]) -> tuple[Rule, ...]:
    return config_from_mapping({"rules": list(raw)}, "test", environ={}).rules


async def member(proxy: Proxy, path: str, host: str = HOST) -> str:
    resp, body = await proxy.get(path, headers={"Host": host})
    assert resp.status == 200, body
    return cache_status(resp)


def is_hit(status: str) -> bool:
    return "hit" in [p.strip() for p in status.split(";")]


async def stored(proxy: Proxy, path: str, host: str = HOST) -> None:
    """Fetch and store path, then check the next request for it is a hit."""
    assert "stored" in await member(proxy, path, host)
    assert is_hit(await member(proxy, path, host))


async def admin_purge(aiohttp_server: Any, proxy: Proxy, body: dict[str, Any]) -> dict[str, Any]:
    """POST /purge to the node's admin API over HTTP."""
    server: TestServer = await aiohttp_server(create_admin_app(proxy.server.node))
    async with proxy.session.post(
        str(server.make_url("/purge")), json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        data = await resp.json()
        assert resp.status == 200, data
    return dict(data)


async def purge_method(proxy: Proxy, path: str, host: str = HOST) -> dict[str, Any]:
    """`PURGE path` on the public port (admin.purge_method)."""
    async with proxy.request("PURGE", path, headers={"Host": host}) as resp:
        data = await resp.json()
        assert resp.status == 200, data
    return dict(data)


async def with_route_rule(start_proxy: ProxyFactory) -> Proxy:
    return await start_proxy(rules=rules(ROUTE_RULE), admin=AdminConfig(token=TOKEN, purge_method=True))


# ------------------------------------------------------------------ a rule changes the key


async def test_absolute_url_purge_finds_the_key_a_route_rule_changed(
    start_proxy: ProxyFactory, origin: Origin, aiohttp_server: Any
) -> None:
    proxy = await with_route_rule(start_proxy)
    await stored(proxy, STORED)
    result = await admin_purge(aiohttp_server, proxy, {"url": f"http://{HOST}{PURGED}"})
    assert result["purged"] == 1
    assert "fwd=uri-miss" in await member(proxy, STORED)
    assert await origin.hits("/max-age/600") == 2


async def test_path_purge_finds_the_key_a_route_rule_changed(
    start_proxy: ProxyFactory, origin: Origin, aiohttp_server: Any
) -> None:
    proxy = await with_route_rule(start_proxy)
    await stored(proxy, STORED)
    result = await admin_purge(aiohttp_server, proxy, {"url": PURGED})
    assert result["purged"] == 1
    assert "fwd=uri-miss" in await member(proxy, STORED)


async def test_purge_method_finds_the_key_a_route_rule_changed(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    proxy = await with_route_rule(start_proxy)
    await stored(proxy, STORED)
    assert (await purge_method(proxy, PURGED))["purged"] == 1
    assert "fwd=uri-miss" in await member(proxy, STORED)


async def test_soft_path_purge_finds_the_key_a_route_rule_changed(
    start_proxy: ProxyFactory, origin: Origin, aiohttp_server: Any
) -> None:
    proxy = await with_route_rule(start_proxy)
    await stored(proxy, STORED)
    result = await admin_purge(aiohttp_server, proxy, {"url": PURGED, "soft": True})
    assert result["purged"] == 1
    assert "fwd=stale" in await member(proxy, STORED)


async def test_url_outside_the_rules_route_is_purged_with_the_global_key_config(
    start_proxy: ProxyFactory, origin: Origin, aiohttp_server: Any
) -> None:
    proxy = await start_proxy(
        keys=KeyConfig(sort_query=True),
        rules=rules(ROUTE_RULE),
        admin=AdminConfig(token=TOKEN, purge_method=True),
    )
    # Outside the route the tracking parameter stays in the key, and the query is sorted (keys.*).
    outside = "/etag?max_age=600&utm_source=mail&b=2"
    await stored(proxy, outside)
    await stored(proxy, "/etag?max_age=600&b=2")  # another key: utm_source is not dropped here
    await stored(proxy, STORED)
    absolute = await admin_purge(
        aiohttp_server, proxy, {"url": f"http://{HOST}/etag?utm_source=mail&b=2&max_age=600"}
    )
    assert absolute["purged"] == 1
    assert "fwd=uri-miss" in await member(proxy, outside)
    assert is_hit(await member(proxy, "/etag?max_age=600&b=2"))
    assert is_hit(await member(proxy, STORED))

    path = await admin_purge(aiohttp_server, proxy, {"url": "/etag?utm_source=mail&max_age=600&b=2"})
    assert path["purged"] == 1
    assert "fwd=uri-miss" in await member(proxy, outside)

    assert (await purge_method(proxy, "/etag?max_age=600&utm_source=mail&b=2"))["purged"] == 1
    assert "fwd=uri-miss" in await member(proxy, outside)
    assert is_hit(await member(proxy, "/etag?max_age=600&b=2"))
    assert is_hit(await member(proxy, STORED))


async def test_path_purge_covers_each_hosts_key_when_a_rule_changes_it_for_one_host(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    rule = {**ROUTE_RULE, "match": {"path": "/max-age/*", "hosts": [HOST]}}
    proxy = await start_proxy(rules=rules(rule), admin=AdminConfig(purge_method=True))
    await stored(proxy, STORED)  # api.example: keyed as /max-age/600?a=1&b=2
    await stored(proxy, STORED, host="www.example")  # www.example: keyed as requested
    assert (await purge_method(proxy, STORED))["purged"] == 2
    assert "fwd=uri-miss" in await member(proxy, STORED)
    assert "fwd=uri-miss" in await member(proxy, STORED, host="www.example")


async def test_unsafe_request_invalidates_the_key_a_route_rule_changed(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    proxy = await with_route_rule(start_proxy)
    await stored(proxy, STORED)
    async with proxy.request("POST", PURGED, headers={"Host": HOST}, data=b"{}") as resp:
        assert resp.status == 200, await resp.read()
    assert "fwd=uri-miss" in await member(proxy, STORED)


# ------------------------------------------------------------------- keys.* without rules


async def test_path_purge_normalises_the_query_as_keys_config_does_without_rules(
    start_proxy: ProxyFactory, origin: Origin, aiohttp_server: Any
) -> None:
    proxy = await start_proxy(
        keys=KeyConfig(sort_query=True, ignore_query_params=("utm_*",)),
        admin=AdminConfig(token=TOKEN, purge_method=True),
    )
    await stored(proxy, STORED)
    result = await admin_purge(aiohttp_server, proxy, {"url": PURGED})
    assert result["purged"] == 1
    assert "fwd=uri-miss" in await member(proxy, STORED)  # and stored again
    assert is_hit(await member(proxy, STORED))
    assert (await purge_method(proxy, "/max-age/600?b=2&a=1"))["purged"] == 1
    assert "fwd=uri-miss" in await member(proxy, STORED)
