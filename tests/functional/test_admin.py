"""The admin API over HTTP (requirements §6): authentication, purge, entries, stats, errors as JSON;
the admin routes never reachable through the public port; the optional PURGE method on the public port;
the rule that an admin API without a token only listens on loopback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.admin import create_admin_app
from proxy.config import AdminConfig, Config, ConfigError, config_from_mapping
from proxy.node import Node
from tests.functional.conftest import FakeClock, Origin, Proxy, ProxyFactory, cache_status, make_config

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOST = {"Host": "cdn.example"}


class Admin:
    """A running admin API in front of a running proxy."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.url = str(server.make_url("")).rstrip("/")

    async def call(
        self, method: str, path: str, *, auth: bool = True, **kwargs: Any
    ) -> tuple[aiohttp.ClientResponse, Any]:
        headers = {**(AUTH if auth else {}), **kwargs.pop("headers", {})}
        async with self.session.request(method, self.url + path, headers=headers, **kwargs) as resp:
            assert resp.content_type == "application/json", await resp.text()
            return resp, await resp.json()

    async def purge(self, body: Any) -> dict[str, Any]:
        resp, data = await self.call("POST", "/purge", json=body)
        assert resp.status == 200, data
        return dict(data)


AdminFactory = Callable[..., Awaitable[tuple[Proxy, Admin]]]


@pytest.fixture
def start_admin(
    aiohttp_server: Any, start_proxy: ProxyFactory, session: aiohttp.ClientSession
) -> AdminFactory:
    async def start(**admin: Any) -> tuple[Proxy, Admin]:
        proxy = await start_proxy(admin=AdminConfig(**{"token": TOKEN, **admin}))
        server = await aiohttp_server(create_admin_app(proxy.server.node))
        return proxy, Admin(server, session)

    return start


@pytest.fixture
async def admin_and_proxy(start_admin: AdminFactory) -> tuple[Proxy, Admin]:
    return await start_admin()


async def get(proxy: Proxy, path: str) -> str:
    resp, body = await proxy.get(path, headers=HOST)
    assert resp.status == 200, body
    return cache_status(resp)


def is_hit(member: str) -> bool:
    return "hit" in member.split(";")


# --------------------------------------------------------------------------- authentication


async def test_token_is_required_except_for_healthz(admin_and_proxy: tuple[Proxy, Admin]) -> None:
    _, admin = admin_and_proxy
    for path in ("/stats", "/entries"):
        resp, data = await admin.call("GET", path, auth=False)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert "token" in data["error"]
        resp, data = await admin.call("GET", path, auth=False, headers={"Authorization": "Bearer wrong"})
        assert resp.status == 401, data
        assert "not valid" in data["error"]
        resp, data = await admin.call("GET", path, auth=False, headers={"Authorization": f"Basic {TOKEN}"})
        assert resp.status == 401, data
        resp, data = await admin.call("GET", path)
        assert resp.status == 200, data
    resp, data = await admin.call("POST", "/purge", auth=False, json={"all": True})
    assert resp.status == 401
    resp, data = await admin.call("GET", "/healthz", auth=False)
    assert resp.status == 200
    assert data == {"name": "edge-test", "status": "ok"}
    assert resp.headers["Cache-Control"] == "no-store"


async def test_non_ascii_token_is_refused_not_crashed(admin_and_proxy: tuple[Proxy, Admin]) -> None:
    _, admin = admin_and_proxy
    resp, data = await admin.call("GET", "/stats", auth=False, headers={"Authorization": "Bearer tøken"})
    assert resp.status == 401, data


async def test_a_token_that_is_not_utf8_is_refused_not_crashed(admin_and_proxy: tuple[Proxy, Admin]) -> None:
    # Before authentication: its bytes reached the comparison as surrogates, and encoding them raised.
    _, admin = admin_and_proxy
    reader, writer = await asyncio.open_connection(admin.server.host, admin.server.port)
    writer.write(b"GET /stats HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer \xff\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:100]


async def test_entries_with_a_bad_idna_prefix_is_400(admin_and_proxy: tuple[Proxy, Admin]) -> None:
    _, admin = admin_and_proxy
    resp, data = await admin.call("GET", "/entries", params={"prefix": "http://xn--/"})
    assert resp.status == 400, data


async def test_without_a_token_loopback_clients_are_accepted(start_admin: AdminFactory) -> None:
    _, admin = await start_admin(token=None)
    resp, data = await admin.call("GET", "/stats", auth=False)
    assert resp.status == 200, data


async def test_unknown_route_and_wrong_method_answer_json(admin_and_proxy: tuple[Proxy, Admin]) -> None:
    _, admin = admin_and_proxy
    resp, data = await admin.call("GET", "/nope")
    assert resp.status == 404
    assert "/nope" in data["error"]
    resp, data = await admin.call("GET", "/purge")
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"]
    assert "GET" in data["error"]
    resp, data = await admin.call("DELETE", "/stats")
    assert resp.status == 405


# --------------------------------------------------------------------------- purge

BAD_BODIES: dict[str, tuple[bytes, str]] = {
    "not-json": (b"{url: /a}", "not valid JSON"),
    "empty": (b"", "empty"),
    "not-an-object": (b'["/a"]', "JSON object"),
    "two-kinds": (b'{"url": "/a", "tag": "x"}', "exactly one"),
    "unknown-field": (b'{"urls": ["/a"], "hard": true}', "'hard'"),
    "no-kind": (b'{"soft": true}', "exactly one"),
    "empty-list": (b'{"urls": []}', "non-empty"),
    "all-false": (b'{"all": false}', "'all' must be true"),
    "not-a-url": (b'{"url": "ftp://x/a"}', "http(s)://"),
    "relative": (b'{"url": "a/b"}', "start with /"),
    "whitespace": (b'{"tag": "a b"}', "whitespace"),
    "soft-not-bool": (b'{"all": true, "soft": "yes"}', "'soft'"),
    "too-deep": (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    # Found by fuzzing: each was a 500 with a traceback.
    "lone-surrogate": (b'{"url": "/\\ud800"}', "not valid text"),
    "bad-idna-host": (b'{"url": "http://xn--/"}', "not a URL"),
    "bad-idna-prefix": (b'{"prefix": "http://xn--/"}', "not a URL"),
    # No stored URL or tag has these: each was a 200 "purged 0", and a control character went into
    # the purge's log line as it came (ESC [2J cleared the screen of whoever tailed the log).
    "control-character-tag": (b'{"tag": "a\\u001b[2Jb"}', "control character"),
    "control-character-url": (b'{"url": "/a\\u0000b"}', "control character"),
    "userinfo-url": (b'{"url": "http://u:pw@cdn.example/a"}', "user:password@"),
    # json.loads kept the last of two: /b alone was purged, and /a silently not.
    "key-given-twice": (b'{"url": "/a", "url": "/b"}', "the key 'url' is given twice"),
    # Cut at the "#", a prefix would cover more than it says.
    "prefix-with-fragment": (b'{"prefix": "/api#x"}', "fragment"),
}


@pytest.mark.parametrize(("body", "problem"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_malformed_purge_is_400_naming_the_problem(
    admin_and_proxy: tuple[Proxy, Admin], body: bytes, problem: str
) -> None:
    _, admin = admin_and_proxy
    resp, data = await admin.call("POST", "/purge", data=body)
    assert resp.status == 400, data
    assert problem in data["error"]


async def test_purge_body_too_large_is_413(admin_and_proxy: tuple[Proxy, Admin]) -> None:
    _, admin = admin_and_proxy
    resp, data = await admin.call("POST", "/purge", data=b" " * (2 * 1024 * 1024))
    assert resp.status == 413
    assert "larger" in data["error"]


async def test_purge_by_url_makes_the_next_get_a_miss(
    admin_and_proxy: tuple[Proxy, Admin], origin: Origin
) -> None:
    proxy, admin = admin_and_proxy
    for path in ("/max-age/600", "/max-age/300"):
        await get(proxy, path)
        assert is_hit(await get(proxy, path))

    result = await admin.purge({"url": "/max-age/600"})
    assert result["purged"] == 1
    assert result["kind"] == "url" and result["soft"] is False
    assert result["epoch"] >= 1

    assert "fwd=uri-miss" in await get(proxy, "/max-age/600")
    assert await origin.hits("/max-age/600") == 2
    assert is_hit(await get(proxy, "/max-age/300"))
    assert await origin.hits("/max-age/300") == 1

    # An absolute URL names one host; the count covers what was stored.
    result = await admin.purge(
        {"urls": ["http://cdn.example/max-age/300", "http://other.example/max-age/300"]}
    )
    assert result["purged"] == 1
    assert "fwd=uri-miss" in await get(proxy, "/max-age/300")


async def test_purge_of_a_url_with_a_fragment_purges_the_url(admin_and_proxy: tuple[Proxy, Admin]) -> None:
    """A fragment is never sent (RFC 9110 §7.1), so "/x#top" names what a request for /x stored. An
    absolute URL lost its fragment already; a /path kept it and purged nothing ("purged 0")."""
    proxy, admin = admin_and_proxy
    for path in ("/max-age/600", "/max-age/300"):
        await get(proxy, path)
    assert (await admin.purge({"url": "/max-age/600#top"}))["purged"] == 1
    assert "fwd=uri-miss" in await get(proxy, "/max-age/600")
    assert (await admin.purge({"url": "http://cdn.example/max-age/300#top"}))["purged"] == 1


async def test_a_purge_logs_a_long_value_cut_short(
    admin_and_proxy: tuple[Proxy, Admin], caplog: pytest.LogCaptureFixture
) -> None:
    """A purge body of up to 1 MiB may name a URL of a million characters: the purge's log line
    held it whole (one line per worker of the box). Each value is cut at 200 characters."""
    _, admin = admin_and_proxy
    caplog.set_level(logging.INFO)
    await admin.purge({"urls": ["/" + "a" * 900_000, "/b"]})
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("purge hard url")]
    assert line.startswith("purge hard url /" + "a" * 199 + "...(+899801),/b by admin API"), line[:300]
    assert len(line) < 400


async def test_purge_by_tag_is_exact(admin_and_proxy: tuple[Proxy, Admin], origin: Origin) -> None:
    proxy, admin = admin_and_proxy
    for path in ("/tags?keys=a,b", "/tags?keys=a", "/tags?keys=ab"):
        await get(proxy, path)
    result = await admin.purge({"tag": "a"})
    assert result == {"purged": 2, "epoch": result["epoch"], "kind": "tag", "soft": False}
    assert "fwd=uri-miss" in await get(proxy, "/tags?keys=a,b")
    assert "fwd=uri-miss" in await get(proxy, "/tags?keys=a")
    assert is_hit(await get(proxy, "/tags?keys=ab"))
    assert await origin.hits("/tags") == 5  # three first fetches, two refetches


async def test_purge_prefix_all_and_soft(admin_and_proxy: tuple[Proxy, Admin]) -> None:
    proxy, admin = admin_and_proxy
    for path in ("/max-age/600", "/max-age/601", "/s-maxage/600"):
        await get(proxy, path)
    result = await admin.purge({"prefix": "/max-age/", "soft": True})
    assert result["purged"] == 2 and result["soft"] is True and result["kind"] == "prefix"
    assert not is_hit(await get(proxy, "/max-age/600"))
    assert is_hit(await get(proxy, "/s-maxage/600"))
    result = await admin.purge({"all": True})
    assert result["purged"] == -1 and result["kind"] == "all"
    assert not is_hit(await get(proxy, "/s-maxage/600"))


# --------------------------------------------------------------------------- entries and stats


async def test_entries_lists_what_is_stored(admin_and_proxy: tuple[Proxy, Admin]) -> None:
    proxy, admin = admin_and_proxy
    for path in ("/tags?keys=a,b", "/tags?keys=c", "/max-age/600"):
        await get(proxy, path)

    resp, data = await admin.call("GET", "/entries")
    assert resp.status == 200, data
    by_url = {e["url"]: e for e in data["entries"]}
    assert set(by_url) == {
        "http://cdn.example/tags?keys=a,b",
        "http://cdn.example/tags?keys=c",
        "http://cdn.example/max-age/600",
    }
    entry = by_url["http://cdn.example/tags?keys=a,b"]
    assert entry["key"] == "|http://cdn.example/tags?keys=a,b"
    assert entry["tier"] == "l1"
    assert entry["size"] > 0
    (variant,) = entry["variants"]
    assert variant["tags"] == ["a", "b"]
    assert variant["age"] == 0
    assert variant["ttl"] == 60
    assert variant["status"] == 200

    resp, data = await admin.call("GET", "/entries", params={"tag": "c"})
    assert [e["url"] for e in data["entries"]] == ["http://cdn.example/tags?keys=c"]
    resp, data = await admin.call("GET", "/entries", params={"prefix": "/max-age/"})
    assert [e["url"] for e in data["entries"]] == ["http://cdn.example/max-age/600"]
    resp, data = await admin.call("GET", "/entries", params={"limit": "1"})
    assert len(data["entries"]) == 1
    resp, data = await admin.call("GET", "/entries", params={"limit": "999999"})
    assert resp.status == 200 and len(data["entries"]) == 3


BAD_QUERIES: dict[str, tuple[dict[str, str], str]] = {
    "limit-text": ({"limit": "ten"}, "limit"),
    "limit-zero": ({"limit": "0"}, "limit"),
    "limit-negative": ({"limit": "-5"}, "limit"),
    "both": ({"prefix": "/a", "tag": "x"}, "not both"),
    "empty-tag": ({"tag": ""}, "non-empty"),
    "bad-prefix": ({"prefix": "api"}, "start with /"),
    "unknown": ({"tags": "x"}, "'tags'"),
}


@pytest.mark.parametrize(("query", "problem"), BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
async def test_bad_entries_query_is_400(
    admin_and_proxy: tuple[Proxy, Admin], query: dict[str, str], problem: str
) -> None:
    _, admin = admin_and_proxy
    resp, data = await admin.call("GET", "/entries", params=query)
    assert resp.status == 400, data
    assert problem in data["error"]


async def test_stats_counters_move(admin_and_proxy: tuple[Proxy, Admin]) -> None:
    proxy, admin = admin_and_proxy
    resp, before = await admin.call("GET", "/stats")
    assert resp.status == 200
    assert before["name"] == "edge-test"
    assert set(before) >= {"engine", "tiers", "purge", "catalog"}
    assert set(before["tiers"]) == {"l1", "l2"}

    await get(proxy, "/max-age/600")
    await get(proxy, "/max-age/600")
    await proxy.server.node.storage.drain()  # the L2 write is behind a queue
    await admin.purge({"url": "/nothing-stored"})

    _, after = await admin.call("GET", "/stats")
    assert after["engine"]["requests"] == before["engine"]["requests"] + 2
    assert after["engine"]["hits"] == before["engine"]["hits"] + 1
    assert after["engine"]["misses"] == before["engine"]["misses"] + 1
    assert after["purge"]["purges"] == before["purge"]["purges"] + 1
    assert after["purge"]["epoch"] > before["purge"]["epoch"]
    assert after["catalog"]["entries"] == before["catalog"]["entries"] + 1
    assert after["tiers"]["l1"]["entries"] == 1
    assert after["tiers"]["l2"]["entries"] == 1  # refreshed from disk
    assert after["tiers"]["l2"]["bytes"] > 0


async def test_stats_include_sections_of_the_layer_above(
    aiohttp_server: Any, origin: Origin, clock: FakeClock, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    cfg = make_config(origin.url, tmp_path / "l2", admin=AdminConfig(token=TOKEN))
    async with Node(cfg, clock) as node:
        node.extra_stats.append(
            lambda: {"edge": {"members": {"edge-2": {"healthy": True}}}, "engine": "not ours"}
        )
        admin = Admin(await aiohttp_server(create_admin_app(node)), session)
        resp, data = await admin.call("GET", "/stats")
    assert resp.status == 200, data
    assert data["edge"] == {"members": {"edge-2": {"healthy": True}}}
    assert isinstance(data["engine"], dict)  # a section of ours is never replaced


async def test_admin_app_before_the_proxy_starts_answers_503(
    aiohttp_server: Any, origin: Origin, clock: FakeClock, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    node = Node(make_config(origin.url, tmp_path / "l2", admin=AdminConfig(token=TOKEN)), clock)
    admin = Admin(await aiohttp_server(create_admin_app(node)), session)
    resp, data = await admin.call("GET", "/healthz")
    assert resp.status == 200
    for method, path, body in (
        ("GET", "/stats", None),
        ("GET", "/entries", None),
        ("POST", "/purge", {"all": True}),
    ):
        resp, data = await admin.call(method, path, json=body)
        assert resp.status == 503, data
        assert "not running" in data["error"]


# --------------------------------------------------------------------------- not on the public port


async def test_admin_routes_are_not_on_the_public_port(
    admin_and_proxy: tuple[Proxy, Admin], origin: Origin
) -> None:
    proxy, _ = admin_and_proxy
    await get(proxy, "/max-age/600")
    headers = {**HOST, **AUTH}
    async with proxy.request("POST", "/purge", json={"all": True}, headers=headers) as resp:
        await resp.read()
    async with proxy.request("GET", "/stats", headers=headers) as resp:
        body = await resp.read()
        assert b"engine" not in body
    logged = await origin.requests("/purge")
    assert [r["method"] for r in logged] == ["POST"]
    assert await origin.requests("/stats")
    assert is_hit(await get(proxy, "/max-age/600"))
    assert await origin.hits("/max-age/600") == 1


# --------------------------------------------------------------------------- PURGE method


async def test_purge_method_disabled_is_forwarded_to_the_origin(
    admin_and_proxy: tuple[Proxy, Admin], origin: Origin
) -> None:
    proxy, _ = admin_and_proxy  # purge_method is off by default
    async with proxy.request("PURGE", "/max-age/600", headers=HOST) as resp:
        assert b"purged" not in await resp.read()
        assert "fwd=bypass" in cache_status(resp)
    assert [r["method"] for r in await origin.requests("/max-age/600")] == ["PURGE"]


async def test_purge_method_from_an_allowed_network_purges(start_admin: AdminFactory, origin: Origin) -> None:
    proxy, _ = await start_admin(purge_method=True)
    await get(proxy, "/max-age/600")
    await get(proxy, "/max-age/300")
    async with proxy.request("PURGE", "/max-age/600", headers=HOST) as resp:
        assert resp.status == 200
        assert await resp.json() == {"purged": 1, "epoch": 1, "soft": False}
        assert 'detail="purge"' in cache_status(resp)
        assert resp.headers["Via"] == "1.1 edge-test"
    assert await origin.requests("/max-age/600") and all(
        r["method"] == "GET" for r in await origin.requests("/max-age/600")
    )
    assert "fwd=uri-miss" in await get(proxy, "/max-age/600")
    assert await origin.hits("/max-age/600") == 2
    assert is_hit(await get(proxy, "/max-age/300"))

    async with proxy.request("PURGE", "/max-age/300", headers={**HOST, "Purge-Mode": "soft"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["soft"] is True
    assert not is_hit(await get(proxy, "/max-age/300"))
    async with proxy.request("PURGE", "/x", headers={**HOST, "Purge-Mode": "later"}) as resp:
        assert resp.status == 400


async def test_purge_method_from_another_network_is_403(start_admin: AdminFactory, origin: Origin) -> None:
    proxy, _ = await start_admin(purge_method=True, purge_networks=("10.0.0.0/8",))
    await get(proxy, "/max-age/600")
    async with proxy.request("PURGE", "/max-age/600", headers=HOST) as resp:
        assert resp.status == 403
        assert "not allowed" in await resp.text()
        assert resp.headers["Cache-Status"].startswith("edge-test;")
    assert is_hit(await get(proxy, "/max-age/600"))
    assert await origin.hits("/max-age/600") == 1


# --------------------------------------------------------------------------- configuration


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No MINICDN_* variable of the developer's or CI's leaks into these tests."""
    for name in ("NAME", "LISTEN", "ORIGIN", "CACHE_DIR", "ADMIN_TOKEN", "ADMIN_LISTEN"):
        monkeypatch.delenv(f"MINICDN_{name}", raising=False)
    return monkeypatch


@pytest.mark.parametrize("listen", ["0.0.0.0:8090", "10.1.2.3:8090", "[::]:8090", "example.com:8090"])
def test_no_token_on_a_non_loopback_address_is_a_config_error(
    listen: str, clean_env: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"admin\.listen.*admin\.token") as err:
        config_from_mapping({"admin": {"listen": listen}}, "edge.yaml")
    assert "edge.yaml" in str(err.value)
    with pytest.raises(ConfigError, match="admin"):
        Config().with_overrides(admin_listen=listen)
    # A token (in the file, or from the environment) or a disabled API makes it acceptable.
    assert config_from_mapping({"admin": {"listen": listen, "token": "x"}}).admin.listen == listen
    assert config_from_mapping({"admin": {"listen": listen, "enabled": False}}).admin.enabled is False
    clean_env.setenv("MINICDN_ADMIN_TOKEN", "from-env")
    assert config_from_mapping({"admin": {"listen": listen}}).admin.token == "from-env"


@pytest.mark.parametrize("listen", ["127.0.0.1:8090", "127.9.9.9:1", "[::1]:8090", "localhost:8090"])
@pytest.mark.usefixtures("clean_env")
def test_no_token_on_loopback_is_fine(listen: str) -> None:
    assert config_from_mapping({"admin": {"listen": listen}}).admin.listen == listen
    assert Config().with_overrides(admin_listen=listen).admin.listen == listen


def test_admin_listen_from_the_environment_is_checked(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MINICDN_ADMIN_LISTEN", "0.0.0.0:8090")
    with pytest.raises(ConfigError, match=r"admin\.listen"):
        config_from_mapping({}, "edge.yaml")


@pytest.mark.usefixtures("clean_env")
def test_admin_and_public_listener_must_differ() -> None:
    with pytest.raises(ConfigError, match="port of its own"):
        config_from_mapping({"listen": "127.0.0.1:9000", "admin": {"listen": "127.0.0.1:9000"}})
