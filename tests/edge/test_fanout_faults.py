"""The purge fan-out under faults: bad stream entries, Redis down across a restart, a trimmed or
lost stream, a purge that fails to apply. Real edges, a real redis-server, the real origin stub.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from typing import Any

import pytest
import redis as redis_sync

from edge.fanout import LAST_ID_META, OUTBOX_META
from proxy.admin import create_admin_app
from proxy.purge import PurgeRequest
from tests.edge.conftest import Edge, RedisServer, StartEdges
from tests.edge.test_cluster import key_for

PATH = "/tags?keys=kept"


def sync_client(redis_server: RedisServer) -> redis_sync.Redis:
    return redis_sync.Redis(port=redis_server.port)


async def until(condition: Any, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def hold(edge: Edge, path: str = PATH) -> None:
    """The edge fetches path and stores it."""
    resp, _ = await edge.get(path)
    assert resp.status == 200
    assert await until(lambda: key_for(edge, path) in edge.storage)


async def holding_edges(start_edges: StartEdges, redis_url: str) -> list[Edge]:
    """Two edges sharing the purge stream (no owner routing), each holding PATH."""
    edges = await start_edges(2, redis_url=redis_url, owner_routing=False)
    for edge in edges:
        await hold(edge)
    return edges


async def restart(start_edges: StartEdges, edge: Edge, redis_url: str, **cluster: Any) -> Edge:
    """Stop an edge (gracefully) if it runs, and start it again on the same port and cache directory."""
    port = edge.server.port
    await edge.server.close()
    (again,) = await start_edges(
        1,
        redis_url=redis_url,
        ports=[port],
        names=[edge.cfg.name],
        owner_routing=False,
        peers=[{"name": edge.cfg.name, "url": f"http://127.0.0.1:{port}"}],
        **cluster,
    )
    assert again.cfg.cache.dir == edge.cfg.cache.dir
    return again


async def purge_seen_by(edges: list[Edge], tag: str) -> None:
    """A purge at edges[0] that every other edge has read (each has a stream position to resume from)."""
    await edges[0].purger.purge(PurgeRequest("tag", (tag,)))
    newest = await edges[0].node.redis.xrevrange("minicdn:purges", count=1)
    target = stream_id(newest[0][0])
    for edge in edges[1:]:
        fanout = edge.node.fanout
        assert fanout is not None
        assert await until(lambda f=fanout: stream_id(f.stats.last_id or "0") >= target)


def stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


# ------------------------------------------------------------ 1. bytes that are not UTF-8


async def test_a_stream_entry_that_is_not_utf8_is_skipped_and_fan_out_goes_on(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    edges = await holding_edges(start_edges, redis_url)
    sync_client(redis_server).xadd(
        "minicdn:purges", {b"from": b"\xff", b"kind": b"url", b"values": b'["/x"]', b"soft": b"0"}
    )
    with caplog.at_level(logging.WARNING, logger="edge.fanout"):
        await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))
        fanout = edges[1].node.fanout
        assert fanout is not None
        assert await until(lambda: fanout.stats.applied_from_stream == 1)
    assert key_for(edges[1], PATH) not in edges[1].storage and fanout.stats.caught_up
    warnings = [r for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert len(warnings) == 2  # one per edge


async def test_a_stream_entry_that_is_not_utf8_does_not_stop_catching_up_at_start(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer
) -> None:
    edges = await holding_edges(start_edges, redis_url)
    await purge_seen_by(edges, "other")
    await edges[1].server.close()
    sync_client(redis_server).xadd("minicdn:purges", {"from": "edge-9", "kind": "tag", "values": b'["\xfe"]'})
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))
    again = await restart(start_edges, edges[1], redis_url)
    assert key_for(again, PATH) not in again.storage  # applied before serving
    fanout = again.node.fanout
    assert fanout is not None and fanout.stats.caught_up and fanout.stats.applied_from_stream == 1


async def test_a_member_record_that_is_not_utf8_is_ignored(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer
) -> None:
    (edge,) = await start_edges(1, redis_url=redis_url, owner_routing=False)
    client = sync_client(redis_server)
    client.set(b"minicdn:node:\xff", b'{"name": "edge-x", "url": "http://127.0.0.1:1"}')
    client.set("minicdn:node:bin", b"\xff\xfe")
    client.set("minicdn:node:edge-y", '{"name": "edge-y", "url": "http://127.0.0.1:2"}')
    states = edge.node.membership.states
    assert await until(lambda: "edge-y" in states)  # membership still follows Redis
    assert "edge-x" in states  # a key name that is not UTF-8 holding a good record is a member
    assert edge.node.membership.redis_errors == 0


# --------------------------------------------------- 4. a purge from the stream that fails


async def test_a_stream_purge_that_fails_is_retried_not_skipped(
    start_edges: StartEdges, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    edges = await holding_edges(start_edges, redis_url)
    catalog = edges[1].purger.catalog
    log_purge = catalog.log_purge
    failures = []

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(1)
            # Not a database or disk error: those the purger carries out locally (Purger._purge_unlogged).
            raise RuntimeError("purge failed")
        return log_purge(*args, **kwargs)

    monkeypatch.setattr(catalog, "log_purge", failing_once)
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))
    fanout = edges[1].node.fanout
    assert fanout is not None
    # (The object leaves the tiers before the purge is over and counted.)
    assert await until(lambda: fanout.stats.applied_from_stream == 1)
    assert key_for(edges[1], PATH) not in edges[1].storage
    assert failures == [1] and fanout.stats.apply_errors == 1
    stored = await asyncio.to_thread(catalog.get_meta, LAST_ID_META)
    assert stored == fanout.stats.last_id


# ----------------------------------------------- 3. entries lost while an edge was down


async def test_an_edge_whose_missed_purges_were_trimmed_invalidates_everything(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    edges = await holding_edges(start_edges, redis_url)
    for edge in edges:
        await hold(edge, "/tags?keys=untouched")
    await purge_seen_by(edges, "other")
    await edges[1].server.close()
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))  # edge-2 misses it...
    for i in range(3):
        await edges[0].purger.purge(PurgeRequest("tag", (f"flood{i}",)))
    sync_client(redis_server).xtrim("minicdn:purges", maxlen=1, approximate=False)  # ...and it is trimmed
    with caplog.at_level(logging.WARNING, logger="edge.fanout"):
        again = await restart(start_edges, edges[1], redis_url)
    assert key_for(again, PATH) not in again.storage  # before serving
    assert key_for(again, "/tags?keys=untouched") not in again.storage  # everything it held
    fanout = again.node.fanout
    assert fanout is not None and fanout.stats.gaps == 1 and fanout.stats.caught_up
    assert any("gap" in r.getMessage() for r in caplog.records)
    # It follows the stream from its end on.
    await hold(again)
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))
    assert await until(lambda: key_for(again, PATH) not in again.storage)


async def test_an_edge_that_finds_the_stream_gone_invalidates_everything(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer
) -> None:
    edges = await holding_edges(start_edges, redis_url)
    await purge_seen_by(edges, "other")
    await edges[1].server.close()
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))
    redis_server.flush()  # Redis restarted empty (no persistence) while edge-2 was down
    again = await restart(start_edges, edges[1], redis_url)
    assert key_for(again, PATH) not in again.storage
    fanout = again.node.fanout
    assert fanout is not None and fanout.stats.gaps == 1


async def test_a_restart_without_a_gap_keeps_the_cache(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer
) -> None:
    edges = await holding_edges(start_edges, redis_url)
    await purge_seen_by(edges, "earlier")
    await purge_seen_by(edges, "other")
    await edges[1].server.close()
    for i in range(3):
        await edges[0].purger.purge(PurgeRequest("tag", (f"elsewhere{i}",)))
    # Trimming entries this edge had read already is no gap.
    sync_client(redis_server).xtrim("minicdn:purges", maxlen=4, approximate=False)
    again = await restart(start_edges, edges[1], redis_url)
    assert key_for(again, PATH) in again.storage
    fanout = again.node.fanout
    assert fanout is not None and fanout.stats.gaps == 0 and fanout.stats.applied_from_stream == 3


# ------------------------------------------------- 2. the outbox while Redis is down


async def test_a_purge_waiting_for_redis_survives_a_restart_of_its_edge(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    edges = await holding_edges(start_edges, redis_url)
    redis_server.stop()
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))
    fanout = edges[0].node.fanout
    assert fanout is not None and fanout.stats.outbox == 1
    with caplog.at_level(logging.WARNING, logger="edge.fanout"):
        await edges[0].server.close()  # Redis still down: the purge is not published
    redis_server.start()
    again = await restart(start_edges, edges[0], redis_url)
    assert await until(lambda: key_for(edges[1], PATH) not in edges[1].storage, 8.0)
    fanout = again.node.fanout
    assert fanout is not None and fanout.stats.outbox == 0 and fanout.stats.published == 1
    assert any("not published" in r.getMessage() for r in caplog.records)  # said at shutdown


async def test_the_outbox_of_a_worker_slot_the_box_no_longer_has_is_taken_over(
    start_edges: StartEdges, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A box of three workers stopped while Redis was down, started again with one: worker 2's
    saved outbox (a purge it had answered) was never loaded by anyone, and the other edges kept
    serving what it covered. The consumer (slot 0) now takes over slots beyond the box's size."""
    edges = await holding_edges(start_edges, redis_url)
    catalog = edges[0].purger.catalog
    saved = [{"kind": "tag", "values": ["kept"], "soft": False}]
    catalog.set_meta(f"{OUTBOX_META}.2", json.dumps(saved))  # what worker slot 2 left behind
    catalog.set_meta(f"{OUTBOX_META}.x", json.dumps(saved))  # not a slot: left alone
    with caplog.at_level(logging.WARNING, logger="edge.fanout"):
        again = await restart(start_edges, edges[0], redis_url)  # one process: slot 0 of 1
    assert await until(lambda: key_for(edges[1], PATH) not in edges[1].storage, 8.0)
    assert again.purger.catalog.get_meta(f"{OUTBOX_META}.2") == "[]"
    assert again.purger.catalog.get_meta(f"{OUTBOX_META}.x") == json.dumps(saved)
    assert any("worker slot 2" in r.getMessage() for r in caplog.records)
    fanout = again.node.fanout
    assert fanout is not None and fanout.stats.outbox == 0 and fanout.stats.published == 1
    assert await fanout.adopt_orphans(1) == 0  # nothing left to take over


async def test_an_outbox_that_overflows_becomes_a_purge_of_everything(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    edges = await start_edges(2, redis_url=redis_url, owner_routing=False, outbox_limit=2)
    for edge in edges:
        await hold(edge)
        await hold(edge, "/tags?keys=untouched")
    redis_server.stop()
    with caplog.at_level(logging.WARNING, logger="edge.fanout"):
        for i in range(3):
            await edges[0].purger.purge(PurgeRequest("url", (f"/elsewhere/{i}",), soft=True))
    fanout = edges[0].node.fanout
    assert fanout is not None and fanout.stats.outbox_overflows == 1
    assert list(fanout.outbox) == [PurgeRequest("all", (), soft=True)]  # every one of them was soft
    assert any("overflow" in r.getMessage() for r in caplog.records)
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))  # within the limit again
    assert list(fanout.outbox)[1:] == [PurgeRequest("tag", ("kept",))]
    redis_server.start()
    # edge-2 hears of a purge of everything (soft: marked stale), and the hard purge after it.
    assert await until(lambda: key_for(edges[1], PATH) not in edges[1].storage, 8.0)
    resp, _ = await edges[1].get("/tags?keys=untouched", headers={"Cache-Control": "only-if-cached"})
    assert "hit" not in resp.headers.get("Cache-Status", "")


async def test_a_purge_neither_published_nor_kept_on_disk_says_so(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis down and the catalogue's disk refusing the outbox (as a full disk does): the purge was
    applied here and held only in this edge's memory, a restart would lose it for the other edges,
    yet its answer (admin API, PURGE) said nothing, only the log did. Now it carries a warning; once
    the outbox is kept again, a purge answers without one."""
    edges = await holding_edges(start_edges, redis_url)
    redis_server.stop()
    catalog = edges[0].purger.catalog
    set_meta = catalog.set_meta

    def disk_full(name: str, value: str) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(catalog, "set_meta", disk_full)
    result = await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))
    assert result.keys == 1
    assert result.warning is not None and "could not be kept on disk" in result.warning, result
    assert key_for(edges[0], PATH) not in edges[0].storage  # applied here all the same
    monkeypatch.setattr(catalog, "set_meta", set_meta)
    result = await edges[0].purger.purge(PurgeRequest("tag", ("other",)))
    # Both wait in the outbox, kept on disk: not published yet (said), but not lost by a restart.
    assert result.warning is not None and "could not be kept on disk" not in result.warning, result
    redis_server.start()
    fanout = edges[0].node.fanout
    assert fanout is not None
    await fanout.flush()
    assert await until(lambda: key_for(edges[1], PATH) not in edges[1].storage, 8.0)


# ------------------------------------------- 5. entries lost while an edge stays connected


def failing_purges(edge: Edge, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every purge the edge applies from the stream fail until the returned list is cleared
    (the catalogue's disk, say): its stream position waits before them."""
    catalog = edge.purger.catalog
    log_purge = catalog.log_purge
    failing = [1]

    def maybe_failing(*args: Any, **kwargs: Any) -> Any:
        if failing:
            raise RuntimeError("purge failed")
        return log_purge(*args, **kwargs)

    monkeypatch.setattr(catalog, "log_purge", maybe_failing)
    return failing


async def test_an_edge_that_finds_the_stream_lost_by_a_redis_restart_while_it_runs_invalidates_everything(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis restarted empty (no persistence) while edge-2 ran and had not applied a purge yet: the
    gap was looked for only once per process, before serving, so edge-2 went on reading the new
    stream after its old position and served the purged copy for good. The stream is now checked
    with every read."""
    edges = await holding_edges(start_edges, redis_url)
    await purge_seen_by(edges, "other")
    failing = failing_purges(edges[1], monkeypatch)
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))
    fanout = edges[1].node.fanout
    assert fanout is not None
    assert await until(lambda: fanout.stats.apply_errors >= 1)  # read, not applied
    redis_server.stop()
    redis_server.start()  # empty: the purge is gone from the stream
    failing.clear()
    # (The objects leave the tiers before the purge of everything is over and counted.)
    assert await until(lambda: fanout.stats.gaps == 1, 8.0)
    assert key_for(edges[1], PATH) not in edges[1].storage
    # It follows the new stream from there on, and a purge published after the restart reaches it.
    await hold(edges[1])
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))
    assert await until(lambda: key_for(edges[1], PATH) not in edges[1].storage)
    assert fanout.stats.gaps == 1


async def test_an_edge_whose_unread_purges_are_trimmed_while_it_runs_invalidates_everything(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """edge-2 lagged (its purges failed to apply) while the stream was trimmed past its position
    (stream_maxlen, XTRIM): its next read started at the first entry left and skipped the trimmed
    purges without a word."""
    edges = await holding_edges(start_edges, redis_url)
    await purge_seen_by(edges, "other")
    failing = failing_purges(edges[1], monkeypatch)
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))
    fanout = edges[1].node.fanout
    assert fanout is not None
    assert await until(lambda: fanout.stats.apply_errors >= 1)
    for i in range(3):
        await edges[0].purger.purge(PurgeRequest("tag", (f"flood{i}",)))
    sync_client(redis_server).xtrim("minicdn:purges", maxlen=1, approximate=False)
    failing.clear()
    assert await until(lambda: fanout.stats.gaps == 1, 8.0)
    assert key_for(edges[1], PATH) not in edges[1].storage and await until(lambda: fanout.stats.caught_up)


async def test_an_edge_that_finds_a_new_stream_with_ids_before_its_position_invalidates_everything(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer
) -> None:
    """Redis replaced by an empty one whose clock is behind (a failover to another host): the new
    stream's ids were all before edge-2's position, so no gap showed (its first entry is not after
    the position) and edge-2 read after its position, skipping every purge of the new stream."""
    edges = await holding_edges(start_edges, redis_url)
    await purge_seen_by(edges, "other")
    fanout = edges[1].node.fanout
    assert fanout is not None
    client = sync_client(redis_server)
    with client.pipeline(transaction=True) as pipe:  # edge-2 never sees the stream empty
        pipe.flushall()
        pipe.xadd(
            "minicdn:purges", {"from": "edge-9", "kind": "tag", "values": '["kept"]', "soft": "0"}, id="1-0"
        )
        pipe.execute()
    assert await until(lambda: fanout.stats.gaps == 1, 8.0)
    assert key_for(edges[1], PATH) not in edges[1].storage


async def test_a_purge_answer_says_whether_the_other_edges_were_told(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer, aiohttp_server: Any
) -> None:
    """Redis refusing writes (maxmemory reached, noeviction: OOM errors): the purge was applied
    here and waited in the outbox, but the admin API answered exactly as for a purge every edge
    applied. Its answer now says whether it was published (`propagated`) and, if not, why."""
    edges = await holding_edges(start_edges, redis_url)
    admin = await aiohttp_server(create_admin_app(edges[0].server.node))  # no token: loopback only
    client = sync_client(redis_server)
    policy = client.config_get("maxmemory-policy")["maxmemory-policy"]
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    try:
        async with edges[0].session.post(f"{admin.make_url('/purge')}", json={"tag": "kept"}) as resp:
            answer = await resp.json()
        assert resp.status == 200 and answer["propagated"] is False
        assert "OutOfMemoryError" in answer["warning"] and "not published" in answer["warning"]
        assert key_for(edges[0], PATH) not in edges[0].storage  # applied here all the same
    finally:
        client.config_set("maxmemory", "0")
        client.config_set("maxmemory-policy", policy)
    # The outbox publishes it once Redis takes writes again; a purge then is answered as told.
    assert await until(lambda: key_for(edges[1], PATH) not in edges[1].storage, 8.0)
    async with edges[0].session.post(f"{admin.make_url('/purge')}", json={"tag": "other"}) as resp:
        answer = await resp.json()
    assert answer["propagated"] is True and "warning" not in answer


async def test_an_edge_that_finds_its_unread_purges_trimmed_to_an_empty_stream_invalidates_once(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream trimmed to nothing (XTRIM MAXLEN 0) past a lagging edge-2's position: after
    invalidating everything, edge-2 read on from the newest entry left, "0" in an empty stream, which
    the next read's check took for a replay of a stream that lost entries: a purge of everything
    with every read, for good. It follows the stream from the newest id Redis made instead."""
    edges = await holding_edges(start_edges, redis_url)
    await purge_seen_by(edges, "other")
    failing = failing_purges(edges[1], monkeypatch)
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))
    fanout = edges[1].node.fanout
    assert fanout is not None
    assert await until(lambda: fanout.stats.apply_errors >= 1)
    sync_client(redis_server).xtrim("minicdn:purges", maxlen=0, approximate=False)
    failing.clear()
    assert await until(lambda: fanout.stats.gaps >= 1, 8.0)
    assert key_for(edges[1], PATH) not in edges[1].storage
    await hold(edges[1])
    await asyncio.sleep(0.5)  # a few reads (the harness's wait, not policy)
    assert fanout.stats.gaps == 1 and key_for(edges[1], PATH) in edges[1].storage
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))  # and it still hears of purges
    assert await until(lambda: key_for(edges[1], PATH) not in edges[1].storage)


async def test_a_restart_after_a_gap_in_a_stream_trimmed_to_nothing_keeps_the_cache(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer
) -> None:
    """After a gap in a stream trimmed to nothing (XTRIM MAXLEN 0), edge-2 saved "0" as its position
    (the newest entry left: none), which the next start took for a replay of a stream that lost
    entries: it invalidated everything again at every restart."""
    edges = await holding_edges(start_edges, redis_url)
    await purge_seen_by(edges, "other")
    await edges[1].server.close()
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))  # edge-2 misses it...
    sync_client(redis_server).xtrim("minicdn:purges", maxlen=0, approximate=False)  # ...and it is trimmed
    again = await restart(start_edges, edges[1], redis_url)
    fanout = again.node.fanout
    assert fanout is not None and fanout.stats.gaps == 1
    await hold(again)
    again = await restart(start_edges, again, redis_url)
    fanout = again.node.fanout
    assert fanout is not None and fanout.stats.gaps == 0
    assert key_for(again, PATH) in again.storage


async def test_purges_published_while_connections_are_killed_reach_the_other_edge(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer
) -> None:
    """CLIENT KILL TYPE normal between purges (every edge's connections: the blocking read, the
    publisher's): a purge published while edge-2 reconnects is read from its position, one whose
    XADD failed is published from the outbox; none is missed and none is taken for a gap."""
    edges = await start_edges(2, redis_url=redis_url, owner_routing=False)
    paths = [f"/tags?keys=t{i}" for i in range(6)]
    for path in paths:
        await hold(edges[1], path)
    client = sync_client(redis_server)
    for i in range(len(paths)):
        client.client_kill_filter(_type="normal")
        await edges[0].purger.purge(PurgeRequest("tag", (f"t{i}",)))
    fanout = edges[1].node.fanout
    assert fanout is not None
    # (An object leaves the tiers before its purge is over and counted.)
    assert await until(lambda: fanout.stats.applied_from_stream >= len(paths), 10.0)
    assert all(key_for(edges[1], p) not in edges[1].storage for p in paths)
    assert fanout.stats.gaps == 0


async def test_a_stream_trimmed_exactly_up_to_an_edges_position_is_no_gap(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer
) -> None:
    """While edge-2 was down, the stream was trimmed exactly up to its position (XTRIM MINID, or a
    MAXLEN trim that ended there): nothing it had not read was lost, but the stream starting after
    its position was taken for a gap, and edge-2 invalidated everything it held. The stream's count
    of entries added, kept with the position (and the stream's incarnation), tells the two apart."""
    edges = await holding_edges(start_edges, redis_url)
    await purge_seen_by(edges, "earlier")
    await purge_seen_by(edges, "other")
    await edges[1].server.close()
    client = sync_client(redis_server)
    for i in range(3):
        await edges[0].purger.purge(PurgeRequest("tag", (f"elsewhere{i}",)))
    first_unread = client.xrange("minicdn:purges", count=3)[2][0]  # after "earlier" and "other"
    client.xtrim("minicdn:purges", minid=first_unread, approximate=False)
    again = await restart(start_edges, edges[1], redis_url)
    fanout = again.node.fanout
    assert fanout is not None and fanout.stats.gaps == 0 and fanout.stats.applied_from_stream == 3
    assert key_for(again, PATH) in again.storage
    # One entry more trimmed (the first it had not read) is a gap.
    await again.server.close()
    await edges[0].purger.purge(PurgeRequest("tag", ("kept",)))
    await edges[0].purger.purge(PurgeRequest("tag", ("elsewhere",)))
    second = client.xrange("minicdn:purges", "-", "+")[-1][0]
    client.xtrim("minicdn:purges", minid=second, approximate=False)
    again = await restart(start_edges, again, redis_url)
    fanout = again.node.fanout
    assert fanout is not None and fanout.stats.gaps == 1
    assert key_for(again, PATH) not in again.storage


async def test_a_new_stream_with_as_many_entries_trimmed_as_an_edge_had_read_is_a_gap(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer
) -> None:
    """Redis restarted empty, and the new stream had lost as many entries as edge-2 had read of the
    old one: the count alone would call it no gap; the stream's incarnation, made anew, does."""
    edges = await holding_edges(start_edges, redis_url)
    await purge_seen_by(edges, "earlier")
    await edges[1].server.close()
    client = sync_client(redis_server)
    read = int(client.xinfo_stream("minicdn:purges")["entries-added"])
    redis_server.stop()
    redis_server.start()
    for i in range(read + 1):
        await edges[0].purger.purge(PurgeRequest("tag", (f"new{i}",)))
    newest = client.xrange("minicdn:purges", "-", "+")[-1][0]
    client.xtrim("minicdn:purges", minid=newest, approximate=False)  # `read` entries trimmed
    again = await restart(start_edges, edges[1], redis_url)
    fanout = again.node.fanout
    assert fanout is not None and fanout.stats.gaps == 1
    assert key_for(again, PATH) not in again.storage


async def test_a_purge_answer_does_not_deny_a_publish_that_timed_out(
    start_edges: StartEdges, redis_url: str, redis_server: RedisServer, aiohttp_server: Any
) -> None:
    """Redis too slow to answer the XADD in time (CLIENT PAUSE WRITE past the client's 2 s socket
    timeout, as DEBUG SLEEP): it took the purge once it woke, yet the answer said "not published".
    It now says Redis may have taken it, and it is published again (applied twice at worst)."""
    edges = await holding_edges(start_edges, redis_url)
    admin = await aiohttp_server(create_admin_app(edges[0].server.node))
    sync_client(redis_server).client_pause(3000, all=False)  # WRITE: reads still answer
    async with edges[0].session.post(f"{admin.make_url('/purge')}", json={"tag": "kept"}) as resp:
        answer = await resp.json()
    assert answer["propagated"] is False
    assert "may have taken it" in answer["warning"] and "not published" not in answer["warning"]
    fanout = edges[1].node.fanout
    assert fanout is not None
    assert await until(lambda: fanout.stats.applied_from_stream >= 1, 8.0)
    assert key_for(edges[1], PATH) not in edges[1].storage
