"""The disk tier when its disk fails at run time: a corrupt database, a full disk, a lock held, a
database removed. Real diskcache and SQLite files; the damage is done to the bytes on disk (a full
disk is simulated by diskcache's own write raising ENOSPC, as the kernel would)."""

from __future__ import annotations

import errno
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from diskcache.core import DBNAME

from proxy.entry import CachedResource
from proxy.storage import DiskStorage, MemoryStorage, TieredStorage, opening
from proxy.storage.opening import StorageHealth, _open_or_recover, open_disk

Make = Callable[..., CachedResource]
MiB = 1024 * 1024
# The file a worker leaves next to a database it found corrupt (spelled out: the test runs on older code too).
CORRUPT_MARK = getattr(opening, "CORRUPT_MARK", ".minicdn-corrupt")


def _overwrite_pages(db: Path, where: str) -> None:
    """Garbage over the root pages of the schema objects `where` selects (the WAL checkpointed first)."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = [r for (r,) in con.execute(f"SELECT rootpage FROM sqlite_master WHERE {where} AND rootpage > 0")]
    (size,) = con.execute("PRAGMA page_size").fetchone()
    con.close()
    assert pages
    with db.open("r+b") as f:
        for page in pages:
            f.seek((page - 1) * size)
            f.write(b"\xa5" * size)


def _fill(directory: Path, resource: Make, n: int = 40) -> None:
    disk = DiskStorage(directory, 10 * MiB)
    for i in range(n):
        assert disk.set(resource(f"k{i}", body_size=3000))
    disk.close()


@pytest.fixture
def corrupt_index(tmp_path: Path, resource: Make) -> Path:
    """A cache whose key index is garbage: it opens, and fails at the first lookup."""
    directory = tmp_path / "l2"
    _fill(directory, resource)
    _overwrite_pages(directory / DBNAME, "name = 'Cache_key_raw'")
    return directory


def test_a_database_found_corrupt_at_run_time_marks_the_tier_failed(
    corrupt_index: Path, resource: Make
) -> None:
    told: list[str] = []
    disk = DiskStorage(corrupt_index, 10 * MiB)
    disk.on_corrupt = told.append
    try:
        assert disk.get("k1") is None  # "database disk image is malformed"
        assert disk.failure is not None and "malformed" in disk.failure
        assert len(told) == 1
        assert disk.set(resource("new")) is False  # not tried: the tier is failed
        assert disk.last_failures == ["corrupt"]
        assert disk.read_now("k2", 1 << 20) == (True, None)  # a miss, answered on the loop
        disk.refresh_stats(), disk.delete("k3"), disk.delete_many(["k4", "k5"]), disk.clear()  # never raise
        assert len(told) == 1
    finally:
        disk.close()


async def test_l1_keeps_working_over_a_corrupt_l2(corrupt_index: Path, resource: Make) -> None:
    l2 = DiskStorage(corrupt_index, 10 * MiB)
    tiers = TieredStorage(MemoryStorage(10 * MiB), l2)
    forgotten: list[list[str]] = []
    tiers.write_failed_listeners.append(forgotten.append)
    try:
        assert await tiers.aset(resource("a"))  # queued: the write finds the database corrupt
        await tiers.drain()
        assert l2.failure is not None
        assert (await tiers.aget("a"))[1] == "l1"  # the L1 copy was not undone
        assert forgotten == []  # nor its catalogue row
        assert await tiers.aset(resource("b"))  # L1 only from now on
        assert len(tiers.write_queue) == 0
        assert (await tiers.aget("b"))[1] == "l1"
        assert not await tiers.settle("b")  # the box's other workers do not look for it in L2
    finally:
        tiers.close()


def test_corruption_at_run_time_is_moved_aside_at_the_next_start(corrupt_index: Path, resource: Make) -> None:
    health = StorageHealth()
    disk = open_disk(corrupt_index, 10 * MiB, "lru", health)
    assert disk is not None and health.l2 == "ok"  # the damage is not seen at open
    assert disk.get("k1") is None
    assert health.l2 == "failed" and health.l2_error and "malformed" in health.l2_error
    assert (corrupt_index / CORRUPT_MARK).exists()
    disk.close()

    again = StorageHealth()
    fresh = open_disk(corrupt_index, 10 * MiB, "lru", again)
    try:
        assert fresh is not None and again.l2 == "ok" and len(again.moved_aside) == 1
        assert (Path(again.moved_aside[0]) / DBNAME).exists()
        assert not (corrupt_index / CORRUPT_MARK).exists()
        assert fresh.set(resource("k1")) and fresh.get("k1") is not None  # a fresh, working cache
    finally:
        fresh.close() if fresh is not None else None
    third = StorageHealth()
    assert open_disk(corrupt_index, 10 * MiB, "lru", third) is not None and third.moved_aside == []


def test_damaged_settings_at_run_time_do_not_raise(tmp_path: Path, resource: Make) -> None:
    directory = tmp_path / "l2"
    _fill(directory, resource, 10)
    disk = DiskStorage(directory, 10 * MiB)
    try:
        disk.get("k1")  # the reader connection maps the file: it sees the damage at once
        _overwrite_pages(directory / DBNAME, "tbl_name = 'Settings'")
        disk.refresh_stats()
        disk.delete_many(["k1", "k2"])
        disk.clear()
        assert disk.failure is not None and "malformed" in disk.failure
    finally:
        disk.close()


def test_a_database_removed_at_run_time_is_reported(tmp_path: Path, resource: Make) -> None:
    health = StorageHealth()
    disk = open_disk(tmp_path / "l2", 10 * MiB, "lru", health)
    assert disk is not None
    try:
        disk.set(resource("k"))
        (tmp_path / "l2" / DBNAME).unlink()
        disk.refresh_stats()
        assert disk.failure is not None and "removed" in disk.failure
        assert health.l2 == "failed" and health.l2_error and "removed" in health.l2_error
    finally:
        disk.close()


def _flip_settings_key_type(db: Path) -> None:
    """One bit: the Settings row 'count' gets a key of type BLOB instead of TEXT (diskcache then
    raises TypeError while opening)."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root,) = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'Settings'").fetchone()
    (size,) = con.execute("PRAGMA page_size").fetchone()
    con.close()
    raw = bytearray(db.read_bytes())
    at = raw.find(b"\x03\x17", (root - 1) * size, root * size)
    while raw[at + 3 : at + 8] != b"count":
        at = raw.find(b"\x03\x17", at + 1, root * size)
        assert at > 0
    raw[at + 1] ^= 0x01  # serial type 23 (TEXT, 5 bytes) -> 22 (BLOB, 5 bytes)
    db.write_bytes(bytes(raw))


def test_damaged_settings_at_open_are_moved_aside(tmp_path: Path, resource: Make) -> None:
    directory = tmp_path / "l2"
    _fill(directory, resource, 5)
    _flip_settings_key_type(directory / DBNAME)
    with pytest.raises(TypeError):
        DiskStorage(directory, 10 * MiB)
    health = StorageHealth()
    disk = open_disk(directory, 10 * MiB, "lru", health)
    try:
        assert disk is not None and health.l2 == "ok" and len(health.moved_aside) == 1
        assert disk.get("k1") is None and disk.set(resource("k1"))
    finally:
        disk.close() if disk is not None else None


def test_another_error_at_open_never_moves_a_healthy_cache_aside(tmp_path: Path, resource: Make) -> None:
    directory = tmp_path / "l2"
    _fill(directory, resource, 5)

    def opener() -> DiskStorage:
        raise TypeError("a bug, not the file")

    with pytest.raises(TypeError):
        _open_or_recover(directory, DBNAME, opener, StorageHealth())
    disk = DiskStorage(directory, 10 * MiB)
    try:
        assert disk.get("k1") is not None  # nothing moved
    finally:
        disk.close()


def test_a_purge_waits_out_a_held_lock_once(tmp_path: Path, resource: Make) -> None:
    directory = tmp_path / "l2"
    timeout = 0.2
    disk = DiskStorage(directory, 10 * MiB, timeout=timeout)
    keys = [f"k{i}" for i in range(8)]
    for key in keys:
        disk.set(resource(key))
    other = sqlite3.connect(directory / DBNAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        started = time.monotonic()
        assert disk.delete_many(keys) == []  # left to the purge's bans
        assert time.monotonic() - started < 3 * timeout  # not once more per key
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert disk.delete_many(keys) == keys
    disk.close()


def _no_space(*args: object, **kwargs: object) -> object:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[tuple[TieredStorage, DiskStorage, list[list[str]]]]:
    l2 = DiskStorage(tmp_path / "l2", 10 * MiB, timeout=0.2)
    tiered = TieredStorage(MemoryStorage(10 * MiB), l2)
    forgotten: list[list[str]] = []
    tiered.write_failed_listeners.append(forgotten.append)
    yield tiered, l2, forgotten
    tiered.close()


async def test_a_full_disk_keeps_the_l1_copy(
    tiers: tuple[TieredStorage, DiskStorage, list[list[str]]], resource: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiered, l2, forgotten = tiers
    monkeypatch.setattr(l2._cache, "set", _no_space)
    for _ in range(3):
        assert await tiered.aset(resource("hot"))
        await tiered.drain()
        assert (await tiered.aget("hot"))[1] == "l1"  # served from memory: no trip to the origin
    assert tiered.stats.write_failed == 3 and l2.last_failures == ["no_space"]
    assert forgotten == []  # the catalogue keeps listing it: purges still reach it
    assert "hot" not in l2


async def test_a_lock_timeout_still_undoes_the_l1_copy(
    tiers: tuple[TieredStorage, DiskStorage, list[list[str]]], tmp_path: Path, resource: Make
) -> None:
    tiered, _, forgotten = tiers
    other = sqlite3.connect(tmp_path / "l2" / DBNAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        assert await tiered.aset(resource("k"))
        await tiered.drain()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert tiered.stats.write_failed == 1 and forgotten == [["k"]]
    assert await tiered.aget("k") == (None, None)  # every copy it serves is one the box shares
