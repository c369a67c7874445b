"""A cluster as an operator sees it: readiness and Redis; /metrics shows peers and the purge stream."""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

import aiohttp
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from proxy import metrics, stats
from proxy.admin import create_admin_app
from proxy.purge import PurgeRequest
from proxy.readiness import CACHE_SECONDS
from proxy.routing import HEALTH_PATH, READY_PATH
from tests.edge.conftest import RedisServer, StartEdges
from tests.edge.test_cluster import path_owned_by
from tests.functional.conftest import free_port


async def test_a_redis_outage_degrades_readiness_and_strict_readiness_fails(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer
) -> None:
    """Redis down is seen by every edge at once: they stay ready ("degraded", Redis named), so a
    load balancer does not pull the whole cluster; with server.readiness_strict they answer 503."""
    lenient, strict = await start_edges(2, redis_url=redis_url)
    strict.server.node.readiness.strict = True  # as server.readiness_strict: true sets it
    now = [0.0]
    for edge in (lenient, strict):
        edge.server.node.readiness.monotonic = lambda: now[0]
        resp, body = await edge.get(READY_PATH)
        assert resp.status == 200, body
        assert b'"redis": {"ok": true' in body and b'"origin": {"ok": true' in body
    redis_server.stop()
    now[0] += CACHE_SECONDS  # past the cached answer
    resp, body = await lenient.get(READY_PATH)
    assert resp.status == 200 and b'"status": "degraded"' in body and b"redis unreachable" in body, body
    resp, body = await strict.get(READY_PATH)
    assert resp.status == 503 and b'"status": "not ready"' in body and b"redis unreachable" in body, body
    resp, _ = await strict.get(HEALTH_PATH)
    assert resp.status == 200  # still alive: it serves from cache and the origin
    redis_server.start()
    # Each edge's first PING after the restart may meet its pooled connection closed (redis-py
    # reconnects on the next): ask again until both say so.
    deadline = time.monotonic() + 10
    for edge in (strict, lenient):
        while b'"status": "ready"' not in (body := (await edge.get(READY_PATH))[1]):
            assert time.monotonic() < deadline, f"not ready again after Redis came back: {body!r}"
            await asyncio.sleep(0.2)
            now[0] += CACHE_SECONDS


async def test_an_edge_that_never_reached_redis_is_not_ready(start_edges: StartEdges) -> None:
    """Readiness passes once before an outage only degrades it: an edge started with Redis out of
    reach (a wrong redis_url) never takes traffic."""
    (edge,) = await start_edges(1, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    resp, body = await edge.get(READY_PATH)
    assert resp.status == 503 and b'"status": "not ready"' in body and b"redis unreachable" in body, body


async def test_metrics_show_peers_owner_routing_and_the_purge_stream(
    start_edges: StartEdges, redis_url: str
) -> None:
    edges = await start_edges(2, redis_url=redis_url)
    path = path_owned_by("edge-2", edges)
    resp, _ = await edges[0].get(path)  # forwarded to its owner, edge-2
    assert resp.status == 200
    await edges[1].purger.purge(PurgeRequest("url", (path,)))
    fanout = edges[0].node.fanout
    assert fanout is not None
    deadline = time.monotonic() + 5
    while fanout.stats.applied_from_stream < 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)

    numbers = await stats.box(edges[0].server.node)
    body, _ = metrics.render(numbers)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("minicdn_cluster_peer_up", (("peer", "edge-1"),))] == 1
    assert samples[("minicdn_cluster_peer_up", (("peer", "edge-2"),))] == 1
    assert samples[("minicdn_cluster_members", ())] == 2
    assert samples[("minicdn_cluster_owner_requests_total", (("outcome", "forwarded"),))] == 1
    assert samples[("minicdn_cluster_owner_requests_total", (("outcome", "refused"),))] == 0
    assert samples[("minicdn_cluster_upstream_copies_refused_total", ())] == 0
    assert samples[("minicdn_cluster_purges_total", (("direction", "applied"),))] == 1
    assert samples[("minicdn_cluster_purge_stream_caught_up", ())] == 1
    assert 0 <= samples[("minicdn_cluster_purge_stream_lag_seconds", ())] < 5
    assert samples[("minicdn_origin_requests_total", (("outcome", "ok"), ("upstream", "peer")))] == 1
    assert samples[("minicdn_purges_total", (("kind", "url"),))] == 1  # applied from the stream


async def test_the_dashboard_shows_each_edge(
    start_edges: StartEdges, redis_url: str, aiohttp_server: Any, session: aiohttp.ClientSession
) -> None:
    """The dashboard of a cluster edge, in a real browser: every member and its state, the purge stream."""
    dashboard = pytest.importorskip("tests.functional.test_dashboard")
    if shutil.which(dashboard.CHROMIUM) is None:
        pytest.skip(f"{dashboard.CHROMIUM} is not installed")
    edges = await start_edges(2, redis_url=redis_url)
    admin = await aiohttp_server(create_admin_app(edges[0].server.node))
    await edges[1].server.close()  # edge-2 goes down: edge-1's health checks see it
    deadline = time.monotonic() + 10
    while edges[0].node.membership.available("edge-2"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    async with dashboard.playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=dashboard.CHROMIUM, args=dashboard.CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page()
            await page.goto(str(admin.make_url("/dashboard?interval=0.3")))
            await page.wait_for_selector("#members tbody tr", timeout=15_000)
            rows = await page.eval_on_selector_all(
                "#members tbody tr", "rows => rows.map(r => [r.dataset.edge, r.cells[2].textContent])"
            )
            assert dict(rows) == {"edge-1": "up", "edge-2": "down"}
            assert await page.locator("#cluster").is_visible()
            assert await page.text_content("#stream-state") == "caught up"
        finally:
            await browser.close()


async def test_redis_refusing_writes_degrades_readiness_while_purges_wait(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer
) -> None:
    """Redis at maxmemory with noeviction answers PING but refuses every XADD (OOM): the edge's
    purges waited in its outbox, unseen by the other edges, while readiness said "ready" (its Redis
    check is a PING). It is "degraded" now, naming the purge stream, and ready again once published."""
    (edge,) = await start_edges(1, redis_url=redis_url)
    now = [0.0]
    edge.server.node.readiness.monotonic = lambda: now[0]
    resp, body = await edge.get(READY_PATH)
    assert resp.status == 200 and b'"status": "ready"' in body, body
    client = redis.Redis(port=redis_server.port)
    policy = client.config_get("maxmemory-policy")["maxmemory-policy"]
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    try:
        await edge.server.node.purger.purge(PurgeRequest("tag", ("kept",)))
        now[0] += CACHE_SECONDS  # past the cached answer
        resp, body = await edge.get(READY_PATH)
        assert resp.status == 200 and b'"status": "degraded"' in body, body
        assert b'"degraded": ["purge_stream"]' in body and b"not published" in body, body
    finally:
        client.config_set("maxmemory", "0")
        client.config_set("maxmemory-policy", policy)
    deadline = time.monotonic() + 10  # the outbox is retried with a backoff
    while b'"status": "ready"' not in (body := (await edge.get(READY_PATH))[1]):
        assert time.monotonic() < deadline, f"not ready again once Redis took the purge: {body!r}"
        await asyncio.sleep(0.2)
        now[0] += CACHE_SECONDS
