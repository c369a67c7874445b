"""L2 reads on the event loop (DiskStorage.read_now, TieredStorage.get_now / aget).

Small values are read with a read-only SELECT on the loop's thread; big value
files, entries that look broken and keys with a delete in flight go to the
I/O pool as before. lru/lfu accesses are batched and written before eviction.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.entry import CachedResource
from proxy.storage import DiskStorage, MemoryStorage, TieredStorage, tiered

Make = Callable[..., CachedResource]
KiB = 1024
MiB = 1024 * KiB


class ThreadSpy(DiskStorage):
    """Records on which thread the pool path (get) and the loop path (read_now) ran."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls: list[tuple[str, int]] = []

    def get(self, key: str) -> CachedResource | None:
        self.calls.append(("get", threading.get_ident()))
        return super().get(key)

    def read_now(
        self, key: str, max_bytes: int, *, count_miss: bool = True
    ) -> tuple[bool, CachedResource | None]:
        self.calls.append(("read_now", threading.get_ident()))
        return super().read_now(key, max_bytes, count_miss=count_miss)


async def test_small_l2_values_are_read_on_the_loop_without_a_thread_hop(
    tmp_path: Path, resource: Make
) -> None:
    spy = ThreadSpy(tmp_path / "l2", 10 * MiB)
    t = TieredStorage(None, spy, loop_read_max=64 * KiB)
    try:
        spy.set(resource("k", body_size=1 * KiB))
        assert await t.aget("k") == (resource("k", body_size=1 * KiB), "l2")
        assert await t.aget("missing") == (None, None)
        loop_thread = threading.get_ident()
        assert spy.calls == [("read_now", loop_thread), ("read_now", loop_thread)]
        assert (t.stats.hits, t.stats.misses) == (1, 1)
    finally:
        t.close()


async def test_big_l2_values_are_read_on_the_pool(tmp_path: Path, resource: Make) -> None:
    spy = ThreadSpy(tmp_path / "l2", 10 * MiB)
    t = TieredStorage(None, spy, loop_read_max=64 * KiB)
    try:
        big = resource("big", body_size=200 * KiB)  # diskcache keeps it in a file of its own
        spy.set(big)
        assert await t.aget("big") == (big, "l2")
        loop_thread = threading.get_ident()
        assert [name for name, _ in spy.calls] == ["read_now", "get"]
        assert spy.calls[1][1] != loop_thread
        assert (t.stats.hits, t.stats.misses) == (1, 0)  # counted once, by the path that answered
    finally:
        t.close()


async def test_get_now_answers_l1_l2_and_misses_and_defers_big_values(tmp_path: Path, resource: Make) -> None:
    l1 = MemoryStorage(MiB)
    l2 = DiskStorage(tmp_path / "l2", 10 * MiB)
    t = TieredStorage(l1, l2, loop_read_max=64 * KiB)
    try:
        small, big = resource("small", body_size=KiB), resource("big", body_size=200 * KiB)
        l2.set(small)
        l2.set(big)
        assert t.get_now("small") == (True, small, "l2")
        assert l1.peek("small") == small  # promoted
        assert t.get_now("small") == (True, small, "l1")
        assert t.get_now("nothing") == (True, None, None)
        assert t.get_now("big") == (False, None, None)  # only aget() reads it, on the pool
        assert await t.aget("big") == (big, "l2")
    finally:
        t.close()


async def test_a_key_with_a_delete_in_flight_is_not_read_on_the_loop(tmp_path: Path, resource: Make) -> None:
    entered, release = threading.Event(), threading.Event()

    class SlowDeletes(DiskStorage):
        def delete(self, key: str) -> bool:
            entered.set()
            release.wait(5)
            return super().delete(key)

    l2 = SlowDeletes(tmp_path / "l2", 10 * MiB)
    t = TieredStorage(None, l2, loop_read_max=64 * KiB)
    try:
        l2.set(resource("k"))
        deleting = asyncio.create_task(t.adelete("k"))
        assert await asyncio.to_thread(entered.wait, 5)
        # The row is still there, but a purge is under way: the loop must not serve it.
        assert t.get_now("k") == (False, None, None)
        release.set()
        assert await deleting is True
        assert t.get_now("k") == (True, None, None)
    finally:
        release.set()
        t.close()


async def test_a_corrupt_row_found_on_the_loop_is_dropped_by_the_pool_read(
    tmp_path: Path, resource: Make
) -> None:
    l2 = DiskStorage(tmp_path / "l2", 10 * MiB)
    t = TieredStorage(None, l2, loop_read_max=64 * KiB)
    try:
        l2._cache.set("k", b"MCDN garbage that is no codec record")
        assert l2.read_now("k", 64 * KiB) == (False, None)  # not judged on the loop
        assert await t.aget("k") == (None, None)
        assert l2.stats.corrupt == 1
        assert "k" not in l2
    finally:
        t.close()


def test_lru_eviction_follows_hits_read_on_the_loop(tmp_path: Path, resource: Make) -> None:
    l2 = DiskStorage(tmp_path / "l2", 600 * KiB, "lru")
    for i in range(30):
        l2.set(resource(f"k{i}", body_size=8 * KiB))
    assert l2.stats.evictions == 0
    assert l2.read_now("k0", MiB)[1] is not None  # the oldest entry is now the most recently used
    assert l2.access_pending()
    i = 30
    while l2.stats.evictions < 15:  # set() writes the batched access before culling
        l2.set(resource(f"k{i}", body_size=8 * KiB))
        i += 1
    assert "k0" in l2
    assert "k1" not in l2
    assert not l2.access_pending()
    l2.close()


def test_lfu_counts_every_hit_read_on_the_loop(tmp_path: Path, resource: Make) -> None:
    l2 = DiskStorage(tmp_path / "l2", 10 * MiB, "lfu")
    l2.set(resource("k"))
    for _ in range(3):
        assert l2.read_now("k", MiB)[1] is not None
    l2.flush_access()
    ((count,),) = l2._cache._sql("SELECT access_count FROM Cache WHERE key = ?", ("k",)).fetchall()
    assert count == 3
    l2.close()


def test_fifo_hits_record_nothing(tmp_path: Path, resource: Make) -> None:
    l2 = DiskStorage(tmp_path / "l2", 10 * MiB, "fifo")
    l2.set(resource("k"))
    assert l2.read_now("k", MiB)[1] is not None
    assert not l2.access_pending()
    l2.close()


async def test_batched_accesses_are_written_in_the_background(
    tmp_path: Path, resource: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiered, "ACCESS_FLUSH_INTERVAL", 0.01)
    l2 = DiskStorage(tmp_path / "l2", 10 * MiB, "lru")
    t = TieredStorage(None, l2, loop_read_max=64 * KiB)
    try:
        l2.set(resource("k"))
        ((before,),) = l2._cache._sql("SELECT access_time FROM Cache WHERE key = 'k'").fetchall()
        assert (await t.aget("k"))[1] == "l2"
        assert l2.access_pending()
        # A timer of ACCESS_FLUSH_INTERVAL on the loop hands the batch to the pool.
        for _ in range(250):
            if not l2.access_pending():
                break
            await asyncio.sleep(0.02)
        assert not l2.access_pending()
        await asyncio.gather(*t._background)
        ((after,),) = l2._cache._sql("SELECT access_time FROM Cache WHERE key = 'k'").fetchall()
        assert after >= before
    finally:
        t.close()


def test_close_writes_batched_accesses(tmp_path: Path, resource: Make) -> None:
    l2 = DiskStorage(tmp_path / "l2", 10 * MiB, "lfu")
    l2.set(resource("k"))
    assert l2.read_now("k", MiB)[1] is not None
    l2.close()
    reopened = DiskStorage(tmp_path / "l2", 10 * MiB, "lfu")
    ((count,),) = reopened._cache._sql("SELECT access_count FROM Cache WHERE key = 'k'").fetchall()
    assert count == 1
    reopened.close()


async def test_reads_of_one_loop_iteration_share_a_snapshot(tmp_path: Path, resource: Make) -> None:
    l2 = DiskStorage(tmp_path / "l2", 10 * MiB)
    try:
        v1, v2 = resource("k", body=b"one"), resource("k", body=b"two")
        l2.set(v1)
        assert l2.read_now("k", MiB) == (True, v1)  # opens this iteration's read transaction
        await asyncio.to_thread(l2.set, v2)  # another connection commits meanwhile...
        # ...to_thread resumed us in a later iteration: the transaction has ended, v2 is seen.
        assert l2.read_now("k", MiB) == (True, v2)
        l2.read_now("k", MiB)
        writer = threading.Thread(target=l2.set, args=(v1,))
        writer.start()
        writer.join()  # committed while this iteration's transaction is open
        assert l2.read_now("k", MiB) == (True, v2)  # the same snapshot until the iteration ends
        await asyncio.sleep(0)
        assert l2.read_now("k", MiB) == (True, v1)
    finally:
        l2.close()


async def test_a_truncated_value_file_is_not_served_from_the_loop(tmp_path: Path, resource: Make) -> None:
    l2 = DiskStorage(tmp_path / "l2", 10 * MiB)
    t = TieredStorage(None, l2, loop_read_max=MiB)
    try:
        l2.set(resource("k", body_size=100 * KiB))  # a value file of its own
        (filename,) = [f for f in (tmp_path / "l2").rglob("*.val")]
        filename.write_bytes(filename.read_bytes()[:-10])
        assert l2.read_now("k", MiB) == (False, None)
        assert await t.aget("k") == (None, None)  # the pool read judged it corrupt and dropped it
        assert l2.stats.corrupt == 1 and "k" not in l2
    finally:
        t.close()


async def test_value_files_are_read_afresh_when_their_metadata_changes(
    tmp_path: Path, resource: Make
) -> None:
    l2 = DiskStorage(tmp_path / "l2", 10 * MiB)
    try:
        body = b"b" * (100 * KiB)
        v1 = resource("k", body=body)
        v2 = resource("k", body=body, response_time=1_700_000_100.5, etag='"v2"abc')  # same lengths
        l2.set(v1)
        assert l2.read_now("k", MiB) == (True, v1)
        assert l2.read_now("k", MiB) == (True, v1)  # the kept metadata, the body read on its own
        l2.set(v2)
        # Within the same loop iteration the read snapshot still names v1's file, which the
        # overwrite deleted; its open descriptor still reads v1, the snapshot's value...
        assert l2.read_now("k", MiB) == (True, v1)
        await asyncio.sleep(0)
        assert l2.read_now("k", MiB) == (True, v2)  # ...and the next iteration sees v2
        (value_file,) = (tmp_path / "l2").rglob("*.val")
        value_file.write_bytes(value_file.read_bytes()[:-1])
        await asyncio.sleep(0)
        assert l2.read_now("k", MiB) == (False, None)  # short file: left to the pool read
    finally:
        l2.close()
