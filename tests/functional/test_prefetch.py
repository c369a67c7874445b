"""Preload prefetching (`fetch.prefetch_preload`, proxy/prefetch.py), with the stub origin.

When a response is stored, the same-host targets its `Link: <...>; rel=preload` lines name are
fetched into the cache behind it (W3C Preload; RFC 8288 for the field), without the client's
credentials, so the browser's requests for them are hits. The page is the stub's /respond route
with the Link lines given in the query; the targets are /max-age/60 with a query per asset.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from proxy.admin import create_admin_app
from proxy.config import FetchConfig
from proxy.prefetch import Prefetcher
from tests.functional.conftest import Origin, Proxy, ProxyFactory, cache_status

HOST = {"Host": "cdn.example"}
ASSET = "/max-age/60"


def page(*links: str, extra: tuple[str, ...] = ()) -> str:
    """The stub's /respond with a minute of freshness and these Link lines."""
    query = [("h", "Cache-Control:max-age=60"), *(("h", f"Link:{link}") for link in links)]
    query += [("h", h) for h in extra]
    return "/respond?" + urlencode([*query, ("body", "<html>")])


def prefetching(per_response: int = 8, at_once: int = 4) -> FetchConfig:
    return replace(FetchConfig(), prefetch_preload=per_response, prefetch_max_concurrent=at_once)


def prefetcher(proxy: Proxy) -> Prefetcher:
    found = proxy.server.node.engine.prefetcher
    assert found is not None
    return found


async def fetched_assets(origin: Origin) -> list[dict[str, Any]]:
    return await origin.requests(ASSET)


async def get(proxy: Proxy, path: str, **headers: str) -> aiohttp.ClientResponse:
    resp, _ = await proxy.get(path, headers={**HOST, **headers})
    assert resp.status == 200
    return resp


async def test_preload_targets_of_a_stored_page_are_hits_for_the_browser(
    start_proxy: ProxyFactory, origin: Origin, aiohttp_server: Any
) -> None:
    proxy = await start_proxy(fetch=prefetching())
    links = (f"<{ASSET}?asset=css>; rel=preload; as=style", f"<{ASSET}?asset=js>; rel=preload; as=script")
    resp = await get(proxy, page(*links), Cookie="session=alice", **{"Accept-Encoding": "gzip"})
    assert "stored" in cache_status(resp)
    await prefetcher(proxy).settled()
    seen = await fetched_assets(origin)
    assert sorted(r["query"] for r in seen) == ["asset=css", "asset=js"]
    for request in seen:
        fields = {name.lower(): value for name, value in request["headers"]}
        assert fields["sec-purpose"] == "prefetch"
        assert fields["accept-encoding"] == "gzip"  # the variant this browser will ask for
        assert "cookie" not in fields and "authorization" not in fields  # never a user's credentials
    for asset in ("css", "js"):
        resp = await get(proxy, f"{ASSET}?asset={asset}", **{"Accept-Encoding": "gzip"})
        assert cache_status(resp).startswith("edge-test;hit"), cache_status(resp)
    assert len(await fetched_assets(origin)) == 2
    stats = proxy.server.node.engine.stats.prefetch
    assert (stats.started, stats.skipped, stats.failed) == (2, 0, 0)

    admin = await aiohttp_server(create_admin_app(proxy.server.node))  # no token: loopback only
    async with proxy.session.get(str(admin.make_url("/metrics"))) as r:
        text = await r.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("minicdn_background_fetches_total", (("kind", "prefetch"),))] == 2
    assert samples[("minicdn_prefetch_skipped_total", ())] == 0


async def test_only_same_host_preload_links_are_followed(start_proxy: ProxyFactory, origin: Origin) -> None:
    proxy = await start_proxy(fetch=prefetching())
    links = (
        f"<http://other.example{ASSET}?asset=elsewhere>; rel=preload",  # another host: never
        f"<{ASSET}?asset=sheet>; rel=stylesheet",  # not a preload
        f"<{ASSET}?asset=next>; rel=prefetch",  # a hint to the browser, not to us
        f"<http://cdn.example{ASSET}?asset=absolute>; rel=preload",  # the page's own host, absolute
        f"<https://cdn.example{ASSET}?asset=tls>; rel=preload",  # another scheme: another origin
        f"<{ASSET}?asset=a b>; rel=preload",  # a space: no request-target (left alone, no error)
        f"<{ASSET}?asset=\u00fc>; rel=preload",  # not ASCII
    )
    await get(proxy, page(*links))
    await prefetcher(proxy).settled()
    assert [r["query"] for r in await fetched_assets(origin)] == ["asset=absolute"]


async def test_prefetching_is_off_by_default(proxy: Proxy, origin: Origin) -> None:
    assert proxy.server.node.engine.prefetcher is None
    await get(proxy, page(f"<{ASSET}?asset=css>; rel=preload"))
    assert await fetched_assets(origin) == []


async def test_at_most_prefetch_preload_targets_per_response(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    proxy = await start_proxy(fetch=prefetching(per_response=2))
    await get(proxy, page(*(f"<{ASSET}?asset={n}>; rel=preload" for n in range(5))))
    await prefetcher(proxy).settled()
    assert sorted(r["query"] for r in await fetched_assets(origin)) == ["asset=0", "asset=1"]


async def test_prefetches_at_once_are_bounded_and_the_rest_counted(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    proxy = await start_proxy(fetch=prefetching(at_once=1))
    await get(proxy, page(*(f"<{ASSET}?asset={n}>; rel=preload" for n in range(3))))
    await prefetcher(proxy).settled()
    assert [r["query"] for r in await fetched_assets(origin)] == ["asset=0"]
    stats = proxy.server.node.engine.stats.prefetch
    assert (stats.started, stats.skipped) == (1, 2)


async def test_a_prefetched_responses_own_links_are_not_followed(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    proxy = await start_proxy(fetch=prefetching())
    chained = page(f"<{ASSET}?asset=deeper>; rel=preload")  # what the first target links to
    await get(proxy, page(f"<{chained}>; rel=preload"))
    await prefetcher(proxy).settled()
    assert await fetched_assets(origin) == []  # /respond was prefetched; its own link was not
    assert proxy.server.node.engine.stats.prefetch.started == 1


async def test_a_page_that_is_not_stored_prefetches_nothing(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    proxy = await start_proxy(fetch=prefetching())
    uncacheable = page(f"<{ASSET}?asset=css>; rel=preload", extra=("Cache-Control:no-store",))
    resp = await get(proxy, uncacheable)
    assert "stored" not in cache_status(resp)
    await prefetcher(proxy).settled()
    assert await fetched_assets(origin) == []
