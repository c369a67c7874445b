"""Several edges in front of one origin behave as one cache (issue: edges).

Real edges on loopback sockets, a real redis-server, the real origin stub.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import pytest
from yarl import URL

from edge.hashing import owner
from proxy import metrics, stats
from proxy.config import Config, config_from_mapping
from proxy.purge import PurgeRequest
from tests.edge.conftest import Edge, RedisServer, StartEdges
from tests.functional.conftest import FakeClock, Origin, cache_status


def members(edge: Edge) -> list[tuple[str, float]]:
    return edge.node.membership.members()


def key_for(edge: Edge, path: str) -> str:
    """The cache key of path on this edge: keys use the host the origin sees (origin.host_header)."""
    return f"|http://{URL(edge.cfg.origin.url).raw_authority}{path}"


def path_owned_by(edge_name: str, edges: list[Edge], stem: str = "/max-age/600?o=") -> str:
    for i in range(1000):
        path = f"{stem}{i}"
        if owner(key_for(edges[0], path), members(edges[0])) == edge_name:
            return path
    raise AssertionError("no key owned by " + edge_name)


async def test_same_url_through_each_of_three_edges_reaches_the_origin_once(
    start_edges: StartEdges, origin: Origin
) -> None:
    edges = await start_edges(3)
    path = path_owned_by("edge-2", edges)
    bodies = set()
    for edge in (edges[0], edges[2], edges[1]):
        resp, body = await edge.get(path)
        assert resp.status == 200
        bodies.add(body)
    assert len(bodies) == 1
    assert await origin.hits("/max-age/600") == 1
    assert edges[0].node.stats(edges[0].server.node)["routing"]["forwarded_to_owner"] == 1
    assert edges[1].node.stats(edges[1].server.node)["routing"]["served_for_peers"] == 2


async def test_owner_cache_status_member_is_kept(start_edges: StartEdges) -> None:
    edges = await start_edges(3)
    path = path_owned_by("edge-3", edges)
    resp, _ = await edges[0].get(path)
    status = resp.headers["Cache-Status"]
    assert status.startswith("edge-3;fwd=uri-miss") and "edge-1;fwd=uri-miss" in status, status
    resp, _ = await edges[1].get(path)
    assert resp.headers["Cache-Status"].startswith("edge-3;hit"), resp.headers["Cache-Status"]


async def test_300_concurrent_cold_requests_over_three_edges_reach_the_origin_once(
    start_edges: StartEdges, origin: Origin, big_session: aiohttp.ClientSession
) -> None:
    edges = await start_edges(3)

    async def one(i: int) -> int:
        edge = edges[i % 3]
        async with big_session.get(edge.url + "/slow?ms=300", headers={"Host": "cdn.example"}) as resp:
            await resp.read()
            return resp.status

    statuses = await asyncio.gather(*(one(i) for i in range(300)))
    assert statuses == [200] * 300
    assert await origin.hits("/slow") == 1


async def test_purge_on_one_edge_reaches_the_others_within_100ms(
    start_edges: StartEdges, redis_url: str
) -> None:
    edges = await start_edges(3, redis_url=redis_url)
    path = "/tags?keys=news"
    for edge in edges:
        await edge.get(path)
        assert key_for(edge, path) in edge.storage
    latencies = []
    for round_ in range(3):
        if round_:
            for edge in edges:
                await edge.get(path)
        started = time.monotonic()
        await edges[0].purger.purge(PurgeRequest("tag", ("news",)))
        deadline = started + 1.0
        while any(key_for(e, path) in e.storage for e in edges[1:]) and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        latencies.append(time.monotonic() - started)
    assert max(latencies) < 0.1, latencies
    for edge in edges[1:]:
        # only-if-cached: a plain GET could be refetched through the owner and hit legitimately.
        resp, _ = await edge.get(path, headers={"Cache-Control": "only-if-cached"})
        assert resp.status == 504
        fanout = edge.node.fanout
        assert fanout is not None
        # The object leaves the tiers before the purge finishes (catalogue, epoch, counters).
        deadline = time.monotonic() + 2
        while fanout.stats.applied_from_stream < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert fanout.stats.applied_from_stream == 3


async def test_a_purge_fanned_out_finds_the_key_a_route_rule_changed_on_every_edge(
    start_edges: StartEdges, redis_url: str
) -> None:
    rule = {
        "name": "tracked",
        "match": {"path": "/max-age/*"},
        "key": {"drop_query": ["utm_*"], "sort_query": True},
    }
    rules = config_from_mapping({"rules": [rule]}, "test", environ={}).rules
    edges = await start_edges(2, redis_url=redis_url, config={"rules": rules})
    stored = "/max-age/600?utm_source=mail&b=2&a=1"
    for edge in edges:
        await edge.get(stored)
        assert key_for(edge, "/max-age/600?a=1&b=2") in edge.storage
    # The URL as another client spelled it, on every host: each edge keys it with its rules.
    result = await edges[0].purger.purge(PurgeRequest("url", ("/max-age/600?a=1&b=2&utm_medium=ads",)))
    assert result.keys == 1
    deadline = time.monotonic() + 2
    while key_for(edges[1], "/max-age/600?a=1&b=2") in edges[1].storage and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert key_for(edges[1], "/max-age/600?a=1&b=2") not in edges[1].storage


async def test_edge_stopped_during_a_purge_applies_it_before_serving_again(
    start_edges: StartEdges, redis_url: str, origin: Origin, aiohttp_server: object
) -> None:
    edges = await start_edges(2, redis_url=redis_url, owner_routing=False)
    path = "/tags?keys=gone"
    for edge in edges:
        await edge.get(path)
    second_cfg: Config = edges[1].cfg
    port = edges[1].server.port
    await edges[1].server.close()  # edge-2 is down (its L2 keeps the object)
    await edges[0].purger.purge(PurgeRequest("tag", ("gone",)))
    restarted = await start_edges(
        1,
        redis_url=redis_url,
        ports=[port],
        names=["edge-2"],
        owner_routing=False,
        peers=[{"name": "edge-2", "url": f"http://127.0.0.1:{port}"}],
    )
    assert restarted[0].cfg.cache.dir == second_cfg.cache.dir
    resp, _ = await restarted[0].get(path)
    assert "fwd=uri-miss" in cache_status(resp)
    assert restarted[0].node.fanout is not None and restarted[0].node.fanout.stats.applied_from_stream == 1


async def test_killing_the_owner_does_not_fail_requests(start_edges: StartEdges, origin: Origin) -> None:
    edges = await start_edges(3)
    path = path_owned_by("edge-3", edges)
    await edges[2].server.close()  # the owner dies
    resp, _ = await edges[0].get(path)
    assert resp.status == 200
    stats = edges[0].node.stats(edges[0].server.node)["routing"]
    assert stats["owner_fallbacks"] + stats["owner_unavailable"] >= 1
    # Once the breaker or the health check has marked it, requests go straight to the origin.
    resp, _ = await edges[1].get(path_owned_by("edge-3", edges, stem="/max-age/600?p="))
    assert resp.status == 200


async def test_redis_outage_keeps_local_purges_and_fan_out_resumes(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer
) -> None:
    edges = await start_edges(2, redis_url=redis_url, owner_routing=False)
    path = "/tags?keys=later"
    for edge in edges:
        await edge.get(path)
    redis_server.stop()
    result = await edges[0].purger.purge(PurgeRequest("tag", ("later",)))
    assert result.keys == 1 and key_for(edges[0], path) not in edges[0].storage  # the local purge worked
    fanout = edges[0].node.fanout
    assert fanout is not None and fanout.stats.redis_errors >= 1 and fanout.stats.outbox == 1
    redis_server.start()
    deadline = time.monotonic() + 10
    while key_for(edges[1], path) in edges[1].storage and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert key_for(edges[1], path) not in edges[1].storage
    assert fanout.stats.outbox == 0


async def test_peers_join_through_redis_heartbeats(start_edges: StartEdges, redis_url: str) -> None:
    first = (await start_edges(1, redis_url=redis_url, names=["edge-a"]))[0]
    second = (await start_edges(1, redis_url=redis_url, names=["edge-b"]))[0]
    deadline = time.monotonic() + 5
    while "edge-b" not in first.node.membership.states and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert {"edge-a", "edge-b"} <= set(first.node.membership.states)
    await second.server.close()  # stops heartbeating and deletes its key
    deadline = time.monotonic() + 5
    while "edge-b" in first.node.membership.states and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert "edge-b" not in first.node.membership.states


async def test_a_member_prefix_is_matched_literally_not_as_a_redis_glob(
    start_edges: StartEdges, redis_url: str
) -> None:
    """The members are found by SCAN MATCH <member_prefix>*: "minicdn:[eu]:" was a character class,
    so an edge of that cluster never found its own members and took in another cluster's
    ("minicdn:e:") sharing the Redis."""
    (other,) = await start_edges(1, redis_url=redis_url, names=["edge-y"], member_prefix="minicdn:e:")
    await start_edges(1, redis_url=redis_url, names=["edge-a"], member_prefix="minicdn:[eu]:")
    (edge_b,) = await start_edges(1, redis_url=redis_url, names=["edge-b"], member_prefix="minicdn:[eu]:")
    deadline = time.monotonic() + 5
    while "edge-a" not in edge_b.node.membership.states and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert set(edge_b.node.membership.states) == {"edge-a", "edge-b"}
    assert "edge-b" not in other.node.membership.states


async def test_shield_tier_keeps_age_and_cache_status_right(
    start_edges: StartEdges, origin: Origin, clock: FakeClock
) -> None:
    shield = (await start_edges(1, names=["shield"], owner_routing=False, use_clock=True))[0]
    edge_a, edge_b = await start_edges(
        2, names=["edge-a", "edge-b"], origin_url=shield.url, owner_routing=False, use_clock=True
    )
    resp, body = await edge_a.get("/max-age/60")
    status = resp.headers["Cache-Status"]
    assert status.startswith("shield;fwd=uri-miss") and "edge-a;fwd=uri-miss" in status, status
    clock.advance(10)
    resp, body_b = await edge_b.get("/max-age/60")  # a miss at edge-b, a hit at the shield
    status = resp.headers["Cache-Status"]
    assert status.startswith("shield;hit;ttl=50") and "edge-b;fwd=uri-miss" in status, status
    assert resp.headers["Age"] == "10" and body_b == body
    clock.advance(5)
    resp, _ = await edge_b.get("/max-age/60")
    assert resp.headers["Age"] == "15" and "edge-b;hit;ttl=45" in resp.headers["Cache-Status"]
    assert await origin.hits("/max-age/60") == 1


async def test_edge_stats_report_routing_and_stream(start_edges: StartEdges, redis_url: str) -> None:
    edges = await start_edges(2, redis_url=redis_url)
    path = path_owned_by("edge-2", edges)
    await edges[0].get(path)
    await edges[1].purger.purge(PurgeRequest("url", (path,)))
    deadline = time.monotonic() + 2
    fanout = edges[0].node.fanout
    assert fanout is not None
    while fanout.stats.applied_from_stream < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stats = edges[0].node.stats(edges[0].server.node)
    assert stats["routing"]["forwarded_to_owner"] == 1
    assert stats["purge_stream"]["applied_from_stream"] == 1
    assert stats["purge_stream"]["stream_lag_ms"] >= 0
    assert set(stats["members"]) == {"edge-1", "edge-2"}


async def test_a_slow_owner_is_skipped_after_peer_timeout(
    start_edges: StartEdges, origin: Origin, aiohttp_server: Any
) -> None:
    from aiohttp import web

    async def slow(request: web.Request) -> web.Response:
        if request.path == "/.well-known/minicdn/health":
            return web.json_response({"status": "ok"})
        await asyncio.sleep(5)  # an owner that answers far too late
        return web.Response(text="late")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", slow)
    slow_server = await aiohttp_server(app)
    peers = [{"name": "edge-slow", "url": f"http://127.0.0.1:{slow_server.port}"}]
    (edge,) = await start_edges(1, peer_timeout=0.3, peers=peers)
    path = path_owned_by("edge-slow", [edge])
    started = time.monotonic()
    resp, body = await edge.get(path)
    assert resp.status == 200 and body != b"late"
    assert time.monotonic() - started < 2.0
    stats = edge.node.stats(edge.server.node)["routing"]
    assert stats["owner_fallbacks"] == 1 and await origin.hits("/max-age/600") == 1


async def fake_owner(answer: bytes, trickle: float = 0.0) -> tuple[asyncio.Server, str]:
    """A peer edge that is healthy and answers every other request with `answer`, then closes
    (with `trickle`, the body a byte at a time, that many seconds apart)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            while head := await reader.readuntil(b"\r\n\r\n"):
                if head.startswith(b"GET /.well-known/minicdn/health "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    continue
                head_part, _, body = answer.partition(b"\r\n\r\n")
                writer.write(head_part + b"\r\n\r\n" + (b"" if trickle else body))
                for i in range(len(body) if trickle else 0):
                    await asyncio.sleep(trickle)
                    writer.write(body[i : i + 1])
                await writer.drain()
                break
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


OWNERS_OWN_502 = (
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 30\r\nCache-Control: no-store\r\n"
    b'Cache-Status: edge-x;fwd=uri-miss;detail="origin refused the connection"\r\n\r\n'
    b"origin refused the connection\n"
)
ORIGINS_502_THROUGH_THE_OWNER = OWNERS_OWN_502.replace(b"fwd=uri-miss;", b"fwd=uri-miss;fwd-status=502;")
CUT_BODY = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nCache-Control: max-age=600\r\n\r\n" + b"x" * 30
TRICKLED_BODY = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nCache-Control: max-age=600\r\n\r\n" + b"x" * 40


@pytest.mark.parametrize(
    "answer, trickle, falls_back",
    [
        pytest.param(OWNERS_OWN_502, 0.0, True, id="the-owners-own-502"),
        pytest.param(ORIGINS_502_THROUGH_THE_OWNER, 0.0, False, id="the-origins-502-through-the-owner"),
        pytest.param(CUT_BODY, 0.0, True, id="a-body-cut-short"),
        pytest.param(TRICKLED_BODY, 0.05, True, id="a-body-trickling-past-the-peer-timeout"),
    ],
)
async def test_an_owner_that_fails_after_its_head_is_skipped_for_the_origin(
    start_edges: StartEdges, origin: Origin, answer: bytes, trickle: float, falls_back: bool
) -> None:
    # Found by fuzzing a cluster: an owner that could not reach the origin (its readiness said so,
    # its liveness did not) passed its own 502 to every edge for its share of the keys, and an
    # owner whose small body broke off or trickled after a good head was a 502 (or a wait of the
    # whole body) on every request: only failures before the head fell back to the origin.
    server, url = await fake_owner(answer, trickle)
    try:
        (edge,) = await start_edges(1, peer_timeout=0.5, peers=[{"name": "edge-x", "url": url}])
        path = path_owned_by("edge-x", [edge])
        started = time.monotonic()
        resp, body = await edge.get(path)
        routing = edge.node.stats(edge.server.node)["routing"]
        if falls_back:
            assert resp.status == 200 and b"origin stub" in body, (resp.status, body[:80])
            assert routing["owner_fallbacks"] == 1 and await origin.hits("/max-age/600") == 1
            assert time.monotonic() - started < 1.5  # 40 bytes at 50 ms each would be 2 s
            resp, body = await edge.get(path)  # stored from the origin's answer
            assert "hit" in cache_status(resp).split(";")
        else:
            assert resp.status == 502 and routing["owner_fallbacks"] == 0
            assert await origin.hits("/max-age/600") == 0
    finally:
        server.close()


async def test_a_purge_at_an_edge_reaches_the_shield(
    start_edges: StartEdges, origin: Origin, redis_url: str
) -> None:
    shield = (
        await start_edges(
            1, names=["shield"], redis_url=redis_url, owner_routing=False, member_prefix="minicdn:shield:"
        )
    )[0]
    (edge,) = await start_edges(1, names=["edge-a"], origin_url=shield.url, redis_url=redis_url)
    assert "shield" not in edge.node.membership.states  # the shield owns no keys
    path = "/tags?keys=deep"
    await edge.get(path)
    assert key_for(shield, path) in shield.storage
    await edge.purger.purge(PurgeRequest("url", (path,)))
    deadline = time.monotonic() + 2
    while key_for(shield, path) in shield.storage and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert key_for(shield, path) not in shield.storage  # else the edge would refetch the old copy
    resp, _ = await edge.get(path)
    assert resp.headers["Cache-Status"].startswith("shield;fwd=uri-miss")
    assert await origin.hits("/tags") == 2


async def test_an_edge_refuses_an_owner_copy_older_than_a_purge_the_owner_has_not_heard_of(
    start_edges: StartEdges, origin: Origin, redis_url: str, redis_server: RedisServer
) -> None:
    # Issue 12 row 11: Redis down, a purge at edge-1 of an object edge-3 owns stays local; edge-1
    # must not refill from edge-3's pre-purge copy. When Redis is back, edge-3 drops its copy too.
    edges = await start_edges(3, redis_url=redis_url)
    path = path_owned_by("edge-3", edges)
    resp, _ = await edges[0].get(path)
    assert resp.status == 200 and await origin.hits("/max-age/600") == 1
    redis_server.stop()
    await edges[0].purger.purge(PurgeRequest("url", (path,)))
    resp, _ = await edges[0].get(path)
    assert resp.status == 200
    assert await origin.hits("/max-age/600") == 2, resp.headers.get("Cache-Status")  # not edge-3's copy
    assert edges[0].server.node.engine.fetcher.stats.owner_copies_refused == 1
    exposition, _ = metrics.render(await stats.box(edges[0].server.node))  # /metrics counts it too
    assert 'minicdn_cluster_owner_requests_total{outcome="refused"} 1.0' in exposition.decode()
    redis_server.start()
    deadline = time.monotonic() + 15
    while key_for(edges[2], path) in edges[2].storage and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert key_for(edges[2], path) not in edges[2].storage  # the queued purge reached the owner


async def test_a_soft_purged_copy_an_owner_serves_stale_is_not_stored_as_fresh(
    start_edges: StartEdges, origin: Origin
) -> None:
    # Found by fuzzing a cluster: after a soft purge on both edges, edge-1 served its stale copy
    # and revalidated by asking the owner, which answered with its own soft-purged copy, served
    # stale while it revalidated too (fwd=stale). Its fields still said fresh (max-age=600, small
    # Age): edge-1 stored it as fresh and served the purged object for 10 minutes.
    edges = await start_edges(2)
    path = path_owned_by("edge-2", edges, stem="/max-age/600?swr=600&o=")
    resp, body = await edges[0].get(path)
    assert resp.status == 200 and b"hit=1" in body
    for edge in edges:
        await edge.purger.purge(PurgeRequest("url", (path,), soft=True), propagate=False)
    resp, body = await edges[0].get(path)
    assert "fwd=stale" in cache_status(resp) and b"hit=1" in body  # served stale, refreshed behind
    for edge in edges:
        await edge.server.node.engine.flights.settle()
    for edge in edges:
        await edge.server.node.engine.flights.settle()
    resp, body = await edges[0].get(path)
    assert "hit" in cache_status(resp).split(";") and b"hit=1" not in body, (cache_status(resp), body)
    assert edges[0].server.node.engine.fetcher.stats.owner_copies_refused == 1


async def test_an_owner_copy_fetched_after_a_purge_is_taken_at_once(
    start_edges: StartEdges, origin: Origin, redis_url: str
) -> None:
    # The other side of row 11: with the stream up, the owner hears the purge and fetches anew;
    # the edge that purged takes that copy (its Cache-Status member is a forward), even within
    # the second of the purge, which Age alone cannot tell apart from an older copy.
    edges = await start_edges(3, redis_url=redis_url)
    path = path_owned_by("edge-3", edges)
    await edges[0].get(path)
    await edges[0].purger.purge(PurgeRequest("url", (path,)))
    deadline = time.monotonic() + 5
    while key_for(edges[2], path) in edges[2].storage and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    resp, _ = await edges[0].get(path)
    assert resp.headers["Cache-Status"].startswith("edge-3;fwd=uri-miss"), resp.headers["Cache-Status"]
    assert await origin.hits("/max-age/600") == 2
    assert edges[0].server.node.engine.fetcher.stats.owner_copies_refused == 0


async def test_an_edge_has_a_shield_that_missed_a_purge_ask_its_origin(
    start_edges: StartEdges, origin: Origin
) -> None:
    # The fan-out reaches a shield on its own time (here: never, it follows no stream). An edge
    # that purged must not store the shield's older copy again: it asks with no-cache, and the
    # shield goes to the origin (RFC 9111 §5.2.1.4).
    (shield,) = await start_edges(1, names=["shield"], owner_routing=False)
    (edge,) = await start_edges(1, names=["edge-a"], origin_url=shield.url)
    path = "/tags?keys=deep"
    await edge.get(path)
    assert await origin.hits("/tags") == 1
    await edge.purger.purge(PurgeRequest("url", (path,)))
    resp, _ = await edge.get(path)
    shield_member = resp.headers["Cache-Status"].split(",")[0]
    assert ";hit" not in shield_member, resp.headers["Cache-Status"]
    assert await origin.hits("/tags") == 2, resp.headers["Cache-Status"]
    assert edge.server.node.engine.fetcher.stats.upstream_copies_refused == 1
    # Once past the purge, the shield's copies are taken as they are.
    resp, _ = await edge.get(path)
    assert await origin.hits("/tags") == 2
