"""The write path end to end: what a store, a revalidation and a purge leave in L1, L2 and the catalogue.

Real origin stub, real proxies on loopback, real diskcache and SQLite in a temporary directory,
one fake clock. Two proxies sharing one cache directory stand for two workers of one box.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import proxy.purger as purger_module
from proxy.config import AdminConfig, CacheConfig, TierConfig
from proxy.purge import PurgeRequest
from proxy.purger import BAN_SECONDS, Purger
from proxy.storage.catalog import Catalog
from proxy.storage.disk import DiskStorage
from proxy.storage.tiered import TieredStorage
from tests.functional.conftest import FakeClock, Origin, Proxy, ProxyFactory, cache_status
from tests.functional.test_cli import Spawn, spawn
from tests.functional.test_workers import burst, fresh_get, start, stats

__all__ = ["spawn"]

HOST = {"Host": "cdn.example"}
WAIT = 10.0  # seconds a wait on the outside world may take before the test fails


def key(path: str) -> str:
    return f"|http://cdn.example{path}"


def storage_of(proxy: Proxy) -> TieredStorage:
    return proxy.server.node.storage


def purger_of(proxy: Proxy) -> Purger:
    return proxy.server.node.purger


async def status_of(proxy: Proxy, path: str, **headers: str) -> str:
    resp, body = await proxy.get(path, headers={**HOST, **headers})
    assert resp.status in (200, 504), body
    return cache_status(resp) if resp.status == 200 else "504"


async def only_if_cached(proxy: Proxy, path: str) -> int:
    resp, _ = await proxy.get(path, headers={**HOST, "Cache-Control": "only-if-cached"})
    return resp.status


# -- a 304 rewrites L2 only when L2 gains something -------------------------------------------


async def test_a_304_for_a_response_stale_at_once_freshens_l1_and_leaves_l2_alone(
    proxy: Proxy, origin: Origin, clock: FakeClock
) -> None:
    storage = storage_of(proxy)
    assert storage.l1 is not None and storage.l2 is not None
    path = "/etag?nohits=1"  # max-age=0 + ETag; every 304 repeats the stored fields but Date
    assert "stored" in await status_of(proxy, path)
    await storage.drain()
    on_disk = storage.l2.get(key(path))
    sets = storage.l2.stats.sets
    for _ in range(3):
        clock.advance(5)
        status = await status_of(proxy, path)
        assert "fwd=stale" in status and "fwd-status=304" in status and "stored" in status
    await storage.drain()
    assert storage.l2.stats.sets == sets  # not one L2 write for the three 304s
    assert storage.l2.get(key(path)) == on_disk
    in_memory = storage.l1.peek(key(path))
    assert in_memory is not None and in_memory.variants[0].response_time == clock.now  # L1 was freshened
    # A 304 whose fields changed (the stub's hit counter) does rewrite L2.
    assert "fwd=uri-miss" in await status_of(proxy, "/etag")
    await storage.drain()
    sets = storage.l2.stats.sets
    clock.advance(5)
    assert "fwd-status=304" in await status_of(proxy, "/etag")
    await storage.drain()
    assert storage.l2.stats.sets == sets + 1


async def test_a_304_that_makes_the_response_fresh_rewrites_l2(
    proxy: Proxy, origin: Origin, clock: FakeClock
) -> None:
    storage = storage_of(proxy)
    assert storage.l2 is not None
    path = "/etag?max_age=60"
    await status_of(proxy, path)
    await storage.drain()
    sets = storage.l2.stats.sets
    clock.advance(120)
    assert "fwd-status=304" in await status_of(proxy, path)
    await storage.drain()
    assert storage.l2.stats.sets == sets + 1
    on_disk = storage.l2.get(key(path))
    assert on_disk is not None and on_disk.variants[0].response_time == clock.now


# -- a purge by tag reaches copies the catalogue did not list yet -------------------------------


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    """Poll a condition of the outside world (a request reaching the origin), never a timing."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def expire_bans(proxy: Proxy, clock: FakeClock) -> None:
    """Move past BAN_SECONDS and log an unrelated purge, which lets the older bans go."""
    clock.advance(BAN_SECONDS + 1)
    await purger_of(proxy).purge(PurgeRequest("url", ("/unrelated",)))
    assert not purger_of(proxy).bans.by["tags"]


async def test_a_tag_purge_during_the_fetch_leaves_no_worker_serving_the_late_copy(
    start_proxy: ProxyFactory, origin: Origin, clock: FakeClock
) -> None:
    one, two = await start_proxy(), await start_proxy()  # two workers sharing one L2 and catalogue
    path = "/tags?keys=t1&ms=300"
    fetch = asyncio.create_task(status_of(two, path))
    await until("the fetch to reach the origin", lambda: _hits(origin, "/tags", 1))
    result = await purger_of(one).purge(PurgeRequest("tag", ("t1",)))
    assert result.keys == 0  # nothing to find yet: the object is still being fetched
    assert "stored" in await fetch  # the client that asked before the purge gets its answer
    for proxy in (one, two):
        assert await only_if_cached(proxy, path) == 504  # the tag ban screens the late copy
    await purger_of(two).flush_rows()  # its row's batch sees the purge: the copy is purged through the log
    await storage_of(two).drain()
    assert purger_of(two).stats.late_copies == 1
    assert storage_of(two).l2 is not None and key(path) not in storage_of(two).l2
    await expire_bans(one, clock)
    await expire_bans(two, clock)
    for proxy in (one, two):
        assert await only_if_cached(proxy, path) == 504  # nothing comes back once the bans are gone
    assert "fwd=uri-miss" in await status_of(one, path)
    await purger_of(one).flush_rows()
    assert "hit" in await status_of(one, path)  # fetched after the purge: current, kept
    assert (purger_of(one).stats.late_copies, purger_of(two).stats.late_copies) == (0, 1)


def hold_back_rows(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Hold every catalogue batch in its thread until the returned event is set (then write it)."""
    release = threading.Event()
    write_rows = catalog.write_rows

    def held_back(*args: Any) -> Any:
        assert release.wait(WAIT), "never released"
        return write_rows(*args)  # the real batch, once released

    monkeypatch.setattr(catalog, "write_rows", held_back)
    return release


async def test_a_tag_purge_before_the_row_is_written_leaves_no_worker_serving_it(
    start_proxy: ProxyFactory, origin: Origin, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = await start_proxy(), await start_proxy()
    catalog = purger_of(two).catalog
    release = hold_back_rows(catalog, monkeypatch)
    try:
        path = "/tags?keys=t2"
        assert "stored" in await status_of(two, path)  # answered with its row not written
        assert "hit" in await status_of(two, path)
        result = await purger_of(one).purge(PurgeRequest("tag", ("t2",)))
        assert result.keys == 0  # the catalogue does not list it yet
        assert await only_if_cached(two, path) == 504  # two applies the logged tag ban to its L1 copy
        assert await only_if_cached(one, path) == 504  # and its L2 copy waits for the row
    finally:
        release.set()
    await purger_of(two).flush_rows()
    assert purger_of(two).stats.late_copies == 1
    assert catalog.keys_for_tags(["t2"]) == []
    await expire_bans(one, clock)
    await expire_bans(two, clock)
    for proxy in (one, two):
        assert await only_if_cached(proxy, path) == 504


async def test_purging_a_late_copy_leaves_the_copy_fetched_since_alone(
    proxy: Proxy, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The purge of a late copy covers what the purge that caught it covered, so a hot key is not
    purged again and again (each refetch would otherwise be older than the last late-copy purge)."""
    purger = purger_of(proxy)
    release = hold_back_rows(purger.catalog, monkeypatch)
    path = "/tags?keys=hot&ms=200"
    try:
        late = asyncio.create_task(status_of(proxy, path))
        await until("the fetch to reach the origin", lambda: _hits(origin, "/tags", 1))
        assert (await purger.purge(PurgeRequest("tag", ("hot",)))).keys == 0
        assert "stored" in await late  # fetched before the purge; its row's batch is held back
        status = await status_of(proxy, path)
        assert "fwd=uri-miss" in status and "stored" in status  # the late copy is screened: fetched anew
    finally:
        release.set()
    await purger.flush_rows()
    assert purger.stats.late_copies == 1  # the first copy, purged through the log...
    assert "hit" in await status_of(proxy, path)  # ...and the one fetched since kept
    assert purger.catalog.keys_for_tags(["hot"]) == [key(path)]


async def test_a_purge_sees_the_rows_its_own_worker_has_not_written(
    proxy: Proxy, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    purger = purger_of(proxy)
    release = hold_back_rows(purger.catalog, monkeypatch)
    try:
        await status_of(proxy, "/tags?keys=first")  # its batch is held back in a thread
        for path in ("/tags?keys=mine", "/tags?keys=mine,other", "/api/items/1"):
            await status_of(proxy, path)  # queued behind it
        # The purge waits for the batch in flight, and finds the rest among the rows still queued.
        purge = asyncio.create_task(purger.purge(PurgeRequest("tag", ("mine", "first"))))
        await asyncio.sleep(0)  # one loop turn: the purge is now waiting for that batch
        assert not purge.done()
        release.set()
        tagged = await purge
        assert tagged.keys == 3
        assert (await purger.purge(PurgeRequest("prefix", ("/api/",)))).keys == 1
    finally:
        release.set()
    for path in ("/tags?keys=mine", "/tags?keys=first", "/api/items/1"):
        assert await only_if_cached(proxy, path) == 504
    await purger.flush_rows()
    assert purger.catalog.all_keys() == []


async def _hits(origin: Origin, path: str, n: int) -> bool:
    return await origin.hits(path) >= n


async def test_workers_of_a_box_serve_no_late_copy_after_a_tag_purge(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    """Real processes: a tag purge at worker 0 while some worker fetches the tagged object."""
    proc, port, admin = await start(spawn, 2, origin, tmp_path)
    url = f"http://127.0.0.1:{port}/tags?keys=box&ms=500"
    fetch = asyncio.create_task(fresh_get(url))
    await until("the fetch to reach the origin", lambda: _hits(origin, "/tags", 1))
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{admin}/purge", json={"tag": "box"}) as r,
    ):
        assert r.status == 200, await r.text()
        assert (await r.json())["purged"] == 0
    status, member = await fetch
    assert status == 200 and "stored" in member
    after = [await fresh_get(url, {"Cache-Control": "only-if-cached"}) for _ in range(20)]
    assert all(code == 504 for code, _ in after), after  # no worker serves it, from L1 or L2

    async def late_copy_purged() -> bool:
        purge = (await stats(admin)).get("purge")
        return isinstance(purge, dict) and purge.get("late_copies") == 1

    await until("the late copy to be purged through the log", late_copy_purged)
    assert proc.stop() == 0
    disk = DiskStorage(tmp_path / "cache", 1024 * 1024 * 1024)
    try:
        stored = list(disk.keys())  # a Storage, not a dict: keys() is the API
        assert not any("/tags?keys=box" in k for k in stored), stored  # gone, not only screened
    finally:
        disk.close()
    assert Catalog(tmp_path / "cache").keys_for_tags(["box"]) == []


# -- a full disk only stops storing (issue 12 row 2) ----------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: a real filesystem that fills up (needs root, as on this project's machines)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_only_stops_storing(
    start_proxy: ProxyFactory,
    origin: Origin,
    tiny_disk: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(purger_module, "FULL_RETRY_SECONDS", 0.2, raising=False)
    ballast = tiny_disk / "ballast"
    ballast.write_bytes(bytes(1024 * 1024))  # 1 MiB taken by someone else
    proxy = await start_proxy(cache=replace(proxy_cache(tiny_disk / "cache"), max_object_size=1024 * 1024))
    storage, purger = storage_of(proxy), purger_of(proxy)
    assert storage.l1 is not None and storage.l2 is not None
    caplog.set_level(logging.WARNING)
    n = 30  # 30 x 200 KB: three times what fits
    for i in range(n):
        resp, body = await proxy.get(f"/bytes/200000?i={i}", headers=HOST)
        assert resp.status == 200 and len(body) == 200_000  # the origin's answer, whatever the disk says
        await storage.drain()  # each write has its outcome before the next request
        await purger.flush_rows()
    failed = storage.stats.write_failed
    assert failed > 0 and storage.l2.stats.failed >= failed
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 0 < len(warnings) <= 8, [r.getMessage() for r in warnings]  # rate-limited, not one per failure
    assert all(r.levelno < logging.ERROR or "purging" in r.getMessage() for r in warnings)
    # L1 keeps what the disk could not take (each served again from memory, not the origin), and
    # every copy anywhere is one a purge finds: catalogued, or in the rows that wait for room.
    on_disk, in_memory = set(storage.l2.keys()), set(storage.l1.keys())
    findable = set(purger.catalog.all_keys()) | set(purger._rows)
    assert in_memory - on_disk and in_memory | on_disk <= findable
    memory_only = sorted(in_memory - on_disk)[0].partition("cdn.example")[2]
    hits = await origin.hits("/bytes/200000")
    resp, _ = await proxy.get(memory_only, headers=HOST)
    assert "hit" in cache_status(resp).split(";") and await origin.hits("/bytes/200000") == hits
    await purger.purge(PurgeRequest("url", (memory_only,)))
    resp, _ = await proxy.get(memory_only, headers=HOST)
    assert "hit" not in cache_status(resp).split(";")  # the purge found the copy without a written row
    await storage.drain()
    failed = storage.stats.write_failed  # that one's disk write failed too
    # Room again: nothing half-written is served, the rows that waited are written, storing resumes.
    ballast.unlink()
    deadline = time.monotonic() + 10
    while purger._rows and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert in_memory - {key(memory_only)} <= set(purger.catalog.all_keys())
    for key_ in on_disk:
        found = storage.l2.get(key_)
        assert found is not None and len(found.variants[0].body) == 200_000
    resp, _ = await proxy.get("/bytes/200000?i=again", headers=HOST)
    assert "stored" in cache_status(resp)
    await storage.drain()
    assert key("/bytes/200000?i=again") in storage.l2
    assert storage.stats.write_failed == failed


async def test_a_purge_on_a_full_disk_still_purges_here_and_says_so(
    start_proxy: ProxyFactory, origin: Origin, tiny_disk: Path
) -> None:
    proxy = await start_proxy(cache=proxy_cache(tiny_disk / "cache"))
    storage, purger = storage_of(proxy), purger_of(proxy)
    for path in ("/max-age/60?a", "/max-age/60?b"):
        resp, _ = await proxy.get(path, headers=HOST)
        assert resp.status == 200
    await storage.drain()
    await purger.flush_rows()
    assert key("/max-age/60?a") in storage.l2  # type: ignore[operator]
    ballast = tiny_disk / "ballast"
    with ballast.open("wb") as f:  # fill the filesystem to the last byte
        try:
            while True:
                f.write(bytes(65536))
                f.flush()
        except OSError:
            pass
    try:
        result = await purger.purge(PurgeRequest("url", ("/max-age/60?a",)))
        assert result.warning is not None and "full" in result.warning  # the log could not be written
        assert result.keys == 1
        assert storage.l1 is not None and key("/max-age/60?a") not in storage.l1  # gone here
        left, _ = await storage.aget(key("/max-age/60?a"))  # L2 could not delete it (a full disk)
        assert left is None or purger.screen(left) is None  # the ban screens it
        resp, _ = await proxy.get("/max-age/60?a", headers=HOST)
        assert "fwd=" in cache_status(resp)  # not served from cache
        assert "hit" in cache_status((await proxy.get("/max-age/60?b", headers=HOST))[0])  # nothing else
        result = await purger.purge(PurgeRequest("all"))
        assert result.warning is not None and result.keys == -1
        assert "fwd=" in cache_status((await proxy.get("/max-age/60?b", headers=HOST))[0])
    finally:
        ballast.unlink()


async def test_a_purge_method_on_a_full_disk_says_it_was_carried_out_here_only(
    start_proxy: ProxyFactory, origin: Origin, tiny_disk: Path
) -> None:
    """`PURGE /path` (admin.purge_method) on a full disk: the purge log could not be written, so the
    purge was carried out on this worker only, but its answer said {"purged": 1, ...} as any other
    (the admin API's answer says "warning"; the PURGE method's did not): a CDN's purge client saw a
    purge the other workers never heard of as done. Now its JSON carries the same "warning"."""
    proxy = await start_proxy(cache=proxy_cache(tiny_disk / "cache"), admin=AdminConfig(purge_method=True))
    resp, _ = await proxy.get("/max-age/60?a", headers=HOST)
    assert resp.status == 200
    await storage_of(proxy).drain()
    await purger_of(proxy).flush_rows()
    ballast = tiny_disk / "ballast"
    with ballast.open("wb") as f:  # fill the filesystem to the last byte
        try:
            while True:
                f.write(bytes(65536))
                f.flush()
        except OSError:
            pass
    try:
        async with proxy.request("PURGE", "/max-age/60?a", headers=HOST) as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert answer["purged"] == 1 and "full" in answer.get("warning", ""), answer
        assert "fwd=" in cache_status((await proxy.get("/max-age/60?a", headers=HOST))[0])
    finally:
        ballast.unlink()
    async with proxy.request("PURGE", "/max-age/60?a", headers=HOST) as resp:  # room again: logged
        assert "warning" not in await resp.json()


def proxy_cache(directory: Path) -> CacheConfig:
    return CacheConfig(
        dir=str(directory),
        l1=TierConfig(budget=8 * 1024 * 1024),
        l2=TierConfig(budget=64 * 1024 * 1024),  # the budget is not what stops it: the disk is
    )


# -- a full write queue stores nothing: tiers and catalogue agree (issue 12 row 18) ---------------


async def test_stores_the_write_queue_cannot_take_are_made_nowhere(
    start_proxy: ProxyFactory, origin: Origin, tmp_path: Path
) -> None:
    proxy = await start_proxy(cache=replace(proxy_cache(tmp_path / "l2"), l2_write_queue=1))
    storage, purger = storage_of(proxy), purger_of(proxy)
    assert storage.l1 is not None and storage.l2 is not None
    storage.write_queue.lock.acquire()  # the disk is busy: the first batch waits for it in its thread
    try:
        statuses = [await status_of(proxy, f"/max-age/60?i={i}") for i in range(4)]
    finally:
        storage.write_queue.lock.release()
    assert "stored" in statuses[0] and not any("stored" in s for s in statuses[1:]), statuses
    assert storage.stats.write_dropped == 3
    await storage.drain()
    await purger.flush_rows()
    # The one store that was made is in both tiers and catalogued; the others nowhere.
    assert set(storage.l2.keys()) == set(purger.catalog.all_keys()) == {key("/max-age/60?i=0")}
    assert set(storage.l1.keys()) == {key("/max-age/60?i=0")}
    assert "hit" in await status_of(proxy, "/max-age/60?i=0")
    assert "fwd=uri-miss" in await status_of(proxy, "/max-age/60?i=1")  # fetched again, and stored now


async def test_a_304_for_the_box_reaches_its_other_workers_through_l2(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    """With several workers the L2 is also how a revalidation reaches the workers that waited for it:
    there a 304 is written to L2 even when it is stale at once, so the box revalidates once."""
    proc, port, _ = await start(spawn, 2, origin, tmp_path)
    path = "/etag?nohits=1&ms=500"  # max-age=0 + ETag; each 304 takes half a second
    status, member = await fresh_get(f"http://127.0.0.1:{port}{path}")
    assert status == 200 and "stored" in member, member
    answers = await burst(f"http://127.0.0.1:{port}{path}", 20)  # on new connections: both workers
    assert all(status == 200 for status, _ in answers), answers
    assert await origin.hits("/etag") == 2, answers  # the first fetch and one revalidation for the box
    assert proc.stop() == 0


async def test_a_cache_on_a_read_only_filesystem_starts_without_l2_and_never_answers_a_500(
    start_proxy: ProxyFactory, origin: Origin, tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The filesystem under a filled cache remounted read-only between two runs (as after an I/O
    error): even root cannot write cache.db, the catalogue or a value file. The node starts, says
    which part could not be used and why (naming the path), answers from the origin and L1, and
    purges; never a 500."""
    first = await start_proxy(cache=proxy_cache(tiny_disk / "cache"))
    for path in ("/max-age/60?a", "/bytes/40000"):
        resp, _ = await first.get(path, headers=HOST)
        assert resp.status == 200
    await storage_of(first).drain()
    await purger_of(first).flush_rows()
    await first.server.close()
    gc.collect()  # diskcache's connections of the storage threads (closed with their threads)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True, capture_output=True)
    try:
        with caplog.at_level(logging.ERROR, logger="proxy.storage"):
            proxy = await start_proxy(cache=proxy_cache(tiny_disk / "cache"))
        assert proxy.server.node.health.l2 == "failed"
        assert f"disk cache {tiny_disk / 'cache'} cannot be used" in caplog.text
        for path in ("/max-age/60?a", "/bytes/40000", "/max-age/60?a"):
            resp, body = await proxy.get(path, headers=HOST)
            assert resp.status == 200, body
        assert "hit" in cache_status(resp).split(";")  # L1 still stores
        result = await purger_of(proxy).purge(PurgeRequest("url", ("/max-age/60?a",)))
        assert result.keys == 1, result
        resp, _ = await proxy.get("/max-age/60?a", headers=HOST)
        assert resp.status == 200 and "hit" not in cache_status(resp).split(";")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_disk)], check=False)


async def test_a_purge_on_a_full_disk_reaches_every_worker_of_the_box(
    spawn: Spawn, origin: Origin, tiny_disk: Path
) -> None:
    """Two workers; the disk fills up; a purge through the admin API: the worker that took it could
    not write the purge log, so it purged its own copies only, and the other worker went on serving
    the purged object from its memory (the log is how workers hear of each other's purges). Now the
    purge reaches the other workers through the box (in memory), and the answer says so."""
    proc, port, admin = await start(spawn, 2, origin, tiny_disk)
    url = f"http://127.0.0.1:{port}/max-age/600"
    for _ in range(20):  # new connections: both workers take some, each keeps the object in L1
        assert (await fresh_get(url))[0] == 200
    ballast = tiny_disk / "ballast"
    with ballast.open("wb") as f:  # fill the filesystem to the last byte
        try:
            while True:
                f.write(bytes(65536))
                f.flush()
        except OSError:
            pass
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"http://127.0.0.1:{admin}/purge", json={"url": "/max-age/600"}) as r,
        ):
            assert r.status == 200, await r.text()
            answer = await r.json()
        assert "other workers of this node were told" in answer.get("warning", ""), answer
        # The other worker hears of it through the supervisor, within milliseconds of the answer.
        deadline = time.monotonic() + 5
        while True:
            after = [await fresh_get(url, {"Cache-Control": "only-if-cached"}) for _ in range(20)]
            if all(status == 504 for status, _ in after) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert all(status == 504 for status, _ in after), after  # no worker's L1 still serves it
    finally:
        ballast.unlink()
    assert proc.stop() == 0


async def test_an_invalidation_on_a_full_disk_reaches_every_worker_of_the_box(
    spawn: Spawn, origin: Origin, tiny_disk: Path
) -> None:
    """RFC 9111 §4.4: a PUT's 2xx invalidates the stored GET of its URI. On a full disk the purge log
    refused it, the worker that took the PUT removed its own copies (L2's delete failing too, with no
    ban to screen what was left) and the other worker went on serving the old response from memory.
    Now it is a purge of the URL carried out without the log (a ban here) and told to the box."""
    proc, port, _ = await start(spawn, 2, origin, tiny_disk)
    url = f"http://127.0.0.1:{port}/max-age/600"
    for _ in range(20):  # new connections: both workers take some, each keeps the object in L1
        assert (await fresh_get(url))[0] == 200
    ballast = tiny_disk / "ballast"
    with ballast.open("wb") as f:  # fill the filesystem to the last byte
        try:
            while True:
                f.write(bytes(65536))
                f.flush()
        except OSError:
            pass
    try:
        async with aiohttp.ClientSession() as s, s.put(url, data=b"{}") as r:
            assert r.status == 200, await r.text()
        deadline = time.monotonic() + 5
        while True:
            after = [await fresh_get(url, {"Cache-Control": "only-if-cached"}) for _ in range(20)]
            if all(status == 504 for status, _ in after) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert all(status == 504 for status, _ in after), after  # no worker still serves the old one
    finally:
        ballast.unlink()
    assert proc.stop() == 0
