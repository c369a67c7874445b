"""TieredStorage specifics: promotion, the async API, disabled tiers, races with writes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxy.entry import CachedResource
from proxy.storage import DiskStorage, MemoryStorage, TieredStorage

Make = Callable[..., CachedResource]
MiB = 1024 * 1024


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[tuple[TieredStorage, MemoryStorage, DiskStorage]]:
    l1 = MemoryStorage(MiB)
    l2 = DiskStorage(tmp_path / "l2", 10 * MiB)
    t = TieredStorage(l1, l2)
    yield t, l1, l2
    t.close()


def test_l2_hit_is_promoted(tiers: tuple[TieredStorage, MemoryStorage, DiskStorage], resource: Make) -> None:
    t, l1, l2 = tiers
    r = resource("k")
    l2.set(r)
    assert t.get("k") == r
    assert l1.peek("k") == r
    assert (l1.stats.misses, l2.stats.hits) == (1, 1)
    assert t.get("k") == r
    assert (l1.stats.hits, l2.stats.hits) == (1, 1)  # second read never reached L2


async def test_aget_reports_the_answering_tier(
    tiers: tuple[TieredStorage, MemoryStorage, DiskStorage], resource: Make
) -> None:
    t, _, l2 = tiers
    r = resource("k")
    l2.set(r)
    assert await t.aget("k") == (r, "l2")
    assert await t.aget("k") == (r, "l1")
    assert await t.aget("missing") == (None, None)
    assert (t.stats.hits, t.stats.misses) == (2, 1)


async def test_aset_and_adelete(
    tiers: tuple[TieredStorage, MemoryStorage, DiskStorage], resource: Make
) -> None:
    t, l1, l2 = tiers
    r = resource("k")
    assert await t.aset(r) is True
    await t.drain()  # aset writes L2 behind (see test_write_behind.py)
    assert l1.peek("k") == r and l2.get("k") == r
    assert await t.adelete("k") is True
    assert await t.adelete("k") is False
    assert l1.peek("k") is None and l2.get("k") is None


async def test_l2_runs_off_the_event_loop_thread_when_loop_reads_are_off(
    tmp_path: Path, resource: Make
) -> None:
    loop_thread = threading.get_ident()
    calls: list[tuple[str, int]] = []

    class Spy(DiskStorage):
        def get(self, key: str) -> CachedResource | None:
            calls.append(("get", threading.get_ident()))
            return super().get(key)

        def set_many(self, resources: list[CachedResource]) -> list[bool | None]:
            calls.append(("set", threading.get_ident()))
            return super().set_many(resources)

    t = TieredStorage(MemoryStorage(MiB), Spy(tmp_path / "l2", 10 * MiB), loop_read_max=0)
    try:
        await t.aset(resource("k"))
        await t.drain()  # the write-behind drainer writes in the pool too
        await t.aget("other")
        assert [name for name, _ in calls] == ["set", "get"]
        assert all(tid != loop_thread for _, tid in calls)
    finally:
        t.close()


async def test_fast_path_then_l2(
    tiers: tuple[TieredStorage, MemoryStorage, DiskStorage], resource: Make
) -> None:
    t, l1, l2 = tiers
    l2.set(resource("k"))
    answered, got, tier = t.get_now("k")
    assert (answered, tier) == (True, "l2") and got is not None
    assert l1.stats.misses == 1  # L1 was asked once
    assert t.get_now("k") == (True, got, "l1")  # promoted
    assert (t.stats.hits, t.stats.misses) == (2, 0)


async def test_tiers_may_be_disabled(tmp_path: Path, resource: Make) -> None:
    only_l1 = TieredStorage(MemoryStorage(MiB), None)
    only_l2 = TieredStorage(None, DiskStorage(tmp_path / "l2", 10 * MiB))
    neither = TieredStorage(None, None)
    try:
        for t, tier in ((only_l1, "l1"), (only_l2, "l2")):
            r = resource("k")
            assert await t.aset(r)
            assert await t.aget("k") == (r, tier)
            assert list(t.keys()) == ["k"]
            assert await t.adelete("k")
        assert only_l2.get_now("k") == (True, None, None)
        assert await neither.aset(resource("k")) is False
        assert await neither.aget("k") == (None, None)
        assert neither.get("k") is None and neither.delete("k") is False
    finally:
        only_l1.close()
        only_l2.close()
        neither.close()


def test_refused_write_drops_the_older_value(tmp_path: Path, resource: Make) -> None:
    # v2 is too big for L1; L1 must not keep serving v1 in front of L2's v2.
    l1 = MemoryStorage(5000)
    t = TieredStorage(l1, DiskStorage(tmp_path / "l2", 10 * MiB))
    try:
        t.set(resource("k", body_size=100))
        assert l1.peek("k") is not None
        v2 = resource("k", body_size=20_000)
        assert t.set(v2) is True
        assert l1.peek("k") is None
        assert t.get("k") == v2
    finally:
        t.close()


def test_keys_is_the_union(tiers: tuple[TieredStorage, MemoryStorage, DiskStorage], resource: Make) -> None:
    t, l1, l2 = tiers
    l1.set(resource("only-l1"))
    l2.set(resource("only-l2"))
    t.set(resource("both"))
    assert sorted(t.keys()) == ["both", "only-l1", "only-l2"]


async def test_delete_during_an_l2_read_is_not_undone_by_promotion(tmp_path: Path, resource: Make) -> None:
    started = threading.Event()
    release = threading.Event()

    class SlowDisk(DiskStorage):
        def get(self, key: str) -> CachedResource | None:
            found = super().get(key)
            started.set()
            release.wait(timeout=5)
            return found

    l1 = MemoryStorage(MiB)
    t = TieredStorage(l1, SlowDisk(tmp_path / "l2", 10 * MiB), loop_read_max=0)
    try:
        t.l2.set(resource("k"))  # type: ignore[union-attr]
        read = asyncio.create_task(t.aget("k"))
        await asyncio.to_thread(started.wait, 5)
        assert await t.adelete("k") is True  # a purge while L2 is being read
        release.set()
        got, tier = await read
        assert tier == "l2" and got is not None  # the read began before the purge
        assert l1.peek("k") is None  # ...but it must not resurrect the entry in L1
        assert await t.aget("k") == (None, None)
    finally:
        release.set()
        t.close()


async def test_close_then_reuse(
    tiers: tuple[TieredStorage, MemoryStorage, DiskStorage], resource: Make
) -> None:
    t, _, _ = tiers
    await t.aset(resource("k"))
    t.close()
    t.close()  # idempotent
    assert await t.aget("k") == (resource("k"), "l2")  # L1 was dropped, L2 persists


async def test_read_during_a_pending_write_sees_the_new_value(tmp_path: Path, resource: Make) -> None:
    entered = threading.Event()
    release = threading.Event()

    class SlowWrites(DiskStorage):
        def set(self, resource: CachedResource) -> bool:
            entered.set()
            release.wait(timeout=5)
            return super().set(resource)

    l1 = MemoryStorage(5000)
    l2 = SlowWrites(tmp_path / "l2", 10 * MiB)
    t = TieredStorage(l1, l2)
    try:
        v1 = resource("k", body_size=100)
        release.set()
        await t.aset(v1)
        await t.drain()
        release.clear()
        entered.clear()
        v2 = resource("k", body_size=20_000)  # too big for L1, so L1 drops v1
        assert await t.aset(v2) is True  # write-behind: returns while the L2 write blocks
        await asyncio.to_thread(entered.wait, 5)
        # L2 still has v1, but the read answers from the write in flight.
        assert await t.aget("k") == (v2, "l2")
        assert l1.peek("k") is None  # and v1 was not promoted to shadow v2
        release.set()
        await t.drain()
        assert await t.aget("k") == (v2, "l2")
    finally:
        release.set()
        t.close()
