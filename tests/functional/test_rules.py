"""Per-route rules through a real origin (the stub) and the real proxy: each action end to end.

A rule that makes an uncacheable response cacheable, a bypass, key adjustments (query parameters,
a request field, a cookie), tags then a purge by tag, stripped fields, a rule on the response's
status, stale windows, and Cache-Status naming the rules; then a reload of a running box with a
bad rule (refused, naming the rule and the field) and a good one (applied).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from proxy.config import Rule, config_from_mapping
from proxy.purge import PurgeRequest
from tests.functional.conftest import (
    FakeClock,
    Origin,
    Proxy,
    ProxyFactory,
    cache_status,
    raw_exchange,
    raw_status,
)
from tests.functional.test_cli import MINICDN, Spawn, run_to_exit, spawn
from tests.functional.test_workers import fresh_get, start, wait_generation

__all__ = ["spawn"]

HOST = {"Host": "api.example"}
# No Cache-Control, no Expires, no Last-Modified: a shared cache may not store it (RFC 9111 §3).
BARE = "/respond?body=hello"


def rules(*raw: dict[str, Any]) -> tuple[Rule, ...]:
    return config_from_mapping({"rules": list(raw)}, "test", environ={}).rules


async def get(proxy: Proxy, path: str, **headers: str) -> tuple[aiohttp.ClientResponse, bytes, str]:
    resp, body = await proxy.get(path, headers={**HOST, **headers})
    return resp, body, cache_status(resp)


def params(member: str) -> list[str]:
    return [p.strip() for p in member.split(";")]


async def test_a_rule_makes_an_uncacheable_response_cacheable(
    start_proxy: ProxyFactory, origin: Origin, clock: FakeClock
) -> None:
    proxy = await start_proxy(rules=rules({"name": "respond", "match": {"path": "/respond"}, "ttl": 60}))
    _, body, first = await get(proxy, BARE)
    assert body == b"hello"
    assert params(first) == ["edge-test", "fwd=uri-miss", "fwd-status=200", "stored", 'rule="respond"']
    resp, body, second = await get(proxy, BARE)
    assert body == b"hello" and "hit" in params(second) and 'rule="respond"' in params(second)
    assert resp.headers["Age"] == "0" and "Cache-Control" not in resp.headers  # clients see the origin's
    assert await origin.hits("/respond") == 1
    clock.advance(61)
    _, _, third = await get(proxy, BARE)
    assert "fwd=stale" in params(third)
    assert await origin.hits("/respond") == 2


async def test_without_the_rule_the_same_response_is_not_stored(proxy: Proxy, origin: Origin) -> None:
    for _ in range(2):
        _, _, member = await get(proxy, BARE)
        assert "stored" not in params(member) and "rule" not in member
    assert await origin.hits("/respond") == 2


async def test_a_bypass_is_never_looked_up_nor_stored(start_proxy: ProxyFactory, origin: Origin) -> None:
    proxy = await start_proxy(
        rules=rules(
            {"name": "api", "match": {"path": "/api/**"}, "bypass": True},
            {"name": "public", "match": {"path": "/api/items/2"}, "bypass": False},
        )
    )
    for _ in range(2):
        resp, _, member = await get(proxy, "/api/items/1", **{"Accept-Encoding": "x-custom"})
        assert resp.status == 200
        assert params(member) == ["edge-test", "fwd=bypass", "fwd-status=200", 'rule="api"']
    assert await origin.hits("/api/items/1") == 2
    # Forwarded as the client sent it (the reduced Accept-Encoding is for keyed requests).
    (sent, *_) = await origin.requests("/api/items/1")
    assert ["Accept-Encoding", "x-custom"] in sent["headers"]
    storage = proxy.server.node.storage
    assert storage.l1 is not None and len(storage.l1) == 0
    # A later rule undoes it for one route.
    for _ in range(2):
        _, _, member = await get(proxy, "/api/items/2")
    assert "hit" in params(member) and 'rule="api public"' in params(member)


async def test_a_bypass_holds_for_every_spelling_the_origin_routes_alike(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    # README's rules: the API kept 30 s, the user's own data never. /api/%69tems/1 is
    # /api/items/1 to the origin (RFC 3986 §6.2.2.2): matched on the raw path, the bypass
    # missed it, the broad rule stored the answer, and whoever asked that URL next was given
    # it (cache deception: an attacker lures a signed-in user to the link, then asks it).
    proxy = await start_proxy(
        rules=rules(
            {"name": "api", "match": {"path": "/api/**"}, "default_ttl": 30},
            {"name": "private", "match": {"path_regex": "^/api/items/1(/|$)"}, "bypass": True},
        )
    )
    for target in (b"/api/%69tems/1", b"/api/x/../items/1", b"/api/items/%31"):
        for _ in range(2):  # raw: an HTTP client library would normalise the target first
            request = b"GET %s HTTP/1.1\r\nHost: api.example\r\nConnection: close\r\n\r\n" % target
            answer = await raw_exchange(proxy.server.host, proxy.server.port, request)
            assert raw_status(answer) in (200, 404), answer  # (the stub routes no dot segments)
            bypassed = rb'Cache-Status: edge-test;fwd=bypass;fwd-status=\d+;rule="api private"\r\n'
            assert re.search(bypassed, answer), answer
    storage = proxy.server.node.storage
    assert storage.l1 is not None and len(storage.l1) == 0


async def test_query_parameters_dropped_under_one_route_only(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    proxy = await start_proxy(
        rules=rules({"name": "shop", "match": {"path": "/max-age/*"}, "key": {"drop_query": ["utm_*"]}})
    )
    _, _, a = await get(proxy, "/max-age/60?utm_source=mail&id=1")
    _, _, b = await get(proxy, "/max-age/60?id=1&utm_source=ads&utm_medium=x")
    assert "stored" in params(a) and "hit" in params(b) and 'rule="shop"' in params(b)
    assert await origin.hits("/max-age/60") == 1
    await get(proxy, "/etag?utm_source=mail")
    _, _, other = await get(proxy, "/etag?utm_source=ads")
    assert "hit" not in params(other)  # not under the route: the parameter stays in the key
    assert await origin.hits("/etag") == 2


async def test_keep_and_sort_the_query(start_proxy: ProxyFactory, origin: Origin) -> None:
    proxy = await start_proxy(
        rules=rules(
            {
                "name": "list",
                "match": {"path": "/max-age/*"},
                "key": {"keep_query": ["page", "q"], "sort_query": True},
            }
        )
    )
    await get(proxy, "/max-age/60?q=x&page=2&session=a1")
    _, _, member = await get(proxy, "/max-age/60?page=2&q=x&session=b2&_=1")
    assert "hit" in params(member)
    _, _, member = await get(proxy, "/max-age/60?page=3&q=x")
    assert "hit" not in params(member)
    assert await origin.hits("/max-age/60") == 2


async def test_a_request_field_in_the_key(start_proxy: ProxyFactory, origin: Origin) -> None:
    proxy = await start_proxy(
        rules=rules(
            {"name": "versions", "match": {"path": "/max-age/*"}, "key": {"headers": ["X-Api-Version"]}}
        )
    )
    seen = []
    for version in ("1", "2", "1", "2", None):
        extra = {"X-Api-Version": version} if version else {}
        _, _, member = await get(proxy, "/max-age/60", **extra)
        seen.append("hit" in params(member))
    assert seen == [False, False, True, True, False]
    assert await origin.hits("/max-age/60") == 3
    # A purge of the URL covers every value.
    result = await proxy.server.node.purger.purge(PurgeRequest("url", ("/max-age/60",)))
    assert result.keys == 1
    _, _, member = await get(proxy, "/max-age/60", **{"X-Api-Version": "1"})
    assert "hit" not in params(member)


async def test_a_cookie_in_the_key(start_proxy: ProxyFactory, origin: Origin) -> None:
    proxy = await start_proxy(
        rules=rules({"name": "currency", "match": {"path": "/max-age/*"}, "key": {"cookies": ["currency"]}})
    )
    seen = []
    for cookie in ("currency=EUR; session=1", "session=2; currency=USD", "session=3; currency=EUR"):
        _, _, member = await get(proxy, "/max-age/60", Cookie=cookie)
        seen.append("hit" in params(member))
    assert seen == [False, False, True]
    assert await origin.hits("/max-age/60") == 2


async def test_tags_then_purge_by_tag(start_proxy: ProxyFactory, origin: Origin) -> None:
    proxy = await start_proxy(
        rules=rules(
            {"name": "items", "match": {"path": "/api/items/*"}, "tags": ["items"]},
            {"name": "one", "match": {"path": "/api/items/1"}, "tags": ["item-1"]},
        )
    )
    for path in ("/api/items/1", "/api/items/2", "/max-age/60"):
        await get(proxy, path)
    result = await proxy.server.node.purger.purge(PurgeRequest("tag", ("item-1",)))
    assert result.keys == 1
    assert "hit" not in params((await get(proxy, "/api/items/1"))[2])
    assert "hit" in params((await get(proxy, "/api/items/2"))[2])
    result = await proxy.server.node.purger.purge(PurgeRequest("tag", ("items",)))
    assert result.keys == 2
    for path in ("/api/items/1", "/api/items/2"):
        assert "hit" not in params((await get(proxy, path))[2])
    assert "hit" in params((await get(proxy, "/max-age/60"))[2])
    # The tags added are the cache's own: clients never see them.
    resp, _, _ = await get(proxy, "/api/items/2")
    assert "Surrogate-Key" not in resp.headers and "Cache-Tag" not in resp.headers


async def test_stripping_set_cookie_stores_the_response_for_everyone(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    proxy = await start_proxy(
        rules=rules({"name": "static", "match": {"path": "/set-cookie"}, "strip_headers": ["Set-Cookie"]})
    )
    for n in range(3):
        resp, _, member = await get(proxy, "/set-cookie")
        assert "Set-Cookie" not in resp.headers, n
        assert ("hit" in params(member)) is (n > 0)
    assert await origin.hits("/set-cookie") == 1


async def test_a_rule_on_the_status(start_proxy: ProxyFactory, origin: Origin, clock: FakeClock) -> None:
    proxy = await start_proxy(
        rules=rules(
            {"name": "api", "match": {"path": "/fail"}, "tags": ["api"]},
            {"name": "not-found", "match": {"path": "/fail", "status": [404]}, "ttl": 10},
        )
    )
    _, _, member = await get(proxy, "/fail?status=404&max_age=0")
    assert "stored" in params(member) and 'rule="api not-found"' in params(member)
    _, _, member = await get(proxy, "/fail?status=404&max_age=0")
    assert "hit" in params(member) and 'rule="api not-found"' in params(member)
    clock.advance(11)
    _, _, member = await get(proxy, "/fail?status=404&max_age=0")
    assert "hit" not in params(member)
    _, _, member = await get(proxy, "/fail?status=410")  # no-store, and no rule for it
    assert "stored" not in params(member) and 'rule="api"' in params(member)


async def test_stale_windows_from_a_rule(start_proxy: ProxyFactory, origin: Origin, clock: FakeClock) -> None:
    proxy = await start_proxy(
        rules=rules({"name": "static", "match": {"path": "/max-age/*"}, "stale_if_error": 600})
    )
    _, body, _ = await get(proxy, "/max-age/10")
    clock.advance(300)
    await origin.fault("/max-age/10", status=503)
    resp, stale, member = await get(proxy, "/max-age/10")
    assert resp.status == 200 and stale == body
    assert "fwd=stale" in params(member) and 'detail="stale-if-error"' in params(member)
    clock.advance(600)
    resp, _, _ = await get(proxy, "/max-age/10")
    assert resp.status == 503


async def test_cache_private(start_proxy: ProxyFactory, origin: Origin) -> None:
    proxy = await start_proxy(
        rules=rules({"name": "shared", "match": {"path": "/private"}, "cache_private": True})
    )
    await get(proxy, "/private")
    _, _, member = await get(proxy, "/private")
    assert "hit" in params(member)
    assert await origin.hits("/private") == 1


# ------------------------------------------------------------------------ at start and on reload


async def test_a_bad_rule_stops_the_start_naming_the_rule(tmp_path: Path) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text("rules:\n  - name: api\n    match: {path: /api/*}\n    ttl: soon\n")
    done = run_to_exit([sys.executable, "-m", "proxy", "--config", str(config), "--listen", "127.0.0.1:0"])
    assert done.returncode != 0
    assert f"{config}: rules[0] (api): ttl: must be a number of seconds" in done.stderr


async def test_rules_are_checked_and_applied_on_reload(spawn: Spawn, origin: Origin, tmp_path: Path) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text("rules:\n  - name: first\n    match: {path: /respond}\n    ttl: 60\n")
    proc, port, admin = await start(spawn, 2, origin, tmp_path, "--config", str(config))
    url = f"http://127.0.0.1:{port}{BARE}"
    assert 'rule="first"' in (await fresh_get(url))[1]
    config.write_text(
        "rules:\n  - name: first\n    match: {path: /respond}\n    ttl: 60\n"
        "  - name: second\n    match: {path_regex: '('}\n    ttl: 1\n"
    )
    done = run_to_exit([*MINICDN, "reload", "--admin", f"http://127.0.0.1:{admin}"])
    assert done.returncode == 1
    assert "rules[1] (second): match.path_regex: not a regular expression" in done.stderr
    assert "the running workers go on" in done.stderr
    assert 'rule="first"' in (await fresh_get(url))[1]
    config.write_text("rules:\n  - name: renamed\n    match: {path: /respond}\n    ttl: 60\n")
    done = run_to_exit([*MINICDN, "reload", "--admin", f"http://127.0.0.1:{admin}"])
    assert done.returncode == 0, done.stderr
    assert "rules" in done.stdout
    await wait_generation(admin, 2)
    deadline = time.monotonic() + 10
    while 'rule="renamed"' not in (member := (await fresh_get(url))[1]):
        assert time.monotonic() < deadline, member
    assert proc.stop() == 0
