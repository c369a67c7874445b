"""DiskStorage specifics: persistence, corrupt and foreign entries, policy mapping, failures."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import diskcache
import pytest

from proxy import codec
from proxy.entry import CachedResource
from proxy.storage import DiskStorage, EvictionPolicy, TieredStorage

Make = Callable[..., CachedResource]
MiB = 1024 * 1024


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[DiskStorage]:
    s = DiskStorage(tmp_path / "l2", 10 * MiB)
    yield s
    s.close()


def _value_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.val"))


def test_survives_close_and_reopen(tmp_path: Path, resource: Make, multi_variant: Make) -> None:
    s = DiskStorage(tmp_path / "l2", 10 * MiB)
    items = [multi_variant(), resource("big", body_size=100_000), resource("small")]
    for r in items:
        assert s.set(r)
    s.close()
    reopened = DiskStorage(tmp_path / "l2", 10 * MiB)
    try:
        for r in items:
            assert reopened.get(r.key) == r
        assert reopened.stats.entries == 3  # refreshed from the shared cache on open
    finally:
        reopened.close()


def test_two_instances_share_a_directory(tmp_path: Path, resource: Make) -> None:
    # Stand-ins for two worker processes: no stale in-process state.
    a = DiskStorage(tmp_path / "l2", 10 * MiB)
    b = DiskStorage(tmp_path / "l2", 10 * MiB)
    try:
        a.set(resource("k"))
        assert b.get("k") == resource("k")
        b.delete("k")
        assert a.get("k") is None
        assert a.refresh_stats().entries == 0
    finally:
        a.close()
        b.close()


def test_garbage_value_is_a_counted_miss_and_removed(
    disk: DiskStorage, caplog: pytest.LogCaptureFixture
) -> None:
    raw = diskcache.Cache(str(disk.directory))
    raw["k"] = b"garbage"
    raw.close()
    with caplog.at_level(logging.WARNING, logger="proxy.storage"):
        assert disk.get("k") is None
    assert disk.stats.corrupt == 1 and disk.stats.misses == 1
    assert "k" not in disk
    assert any("corrupt" in r.message for r in caplog.records)


def test_value_of_another_key_is_rejected(disk: DiskStorage, resource: Make) -> None:
    raw = diskcache.Cache(str(disk.directory))
    raw["k"] = codec.encode(resource("other"))
    raw.close()
    assert disk.get("k") is None
    assert disk.stats.corrupt == 1


@pytest.mark.parametrize("value", [{"a": 1}, "a str", 42], ids=["pickled", "str", "int"])
def test_foreign_values_are_misses_and_never_unpickled(disk: DiskStorage, value: object) -> None:
    raw = diskcache.Cache(str(disk.directory))
    raw["k"] = value
    raw.close()
    assert disk.get("k") is None
    assert disk.stats.corrupt == 1
    assert "k" not in disk


def test_pickled_keys_are_skipped_by_keys(disk: DiskStorage, resource: Make) -> None:
    raw = diskcache.Cache(str(disk.directory))
    raw[("a", "tuple")] = b"x"  # diskcache pickles non-primitive keys
    raw.close()
    disk.set(resource("k"))
    assert list(disk.keys()) == ["k"]


@pytest.mark.parametrize("damage", ["truncate", "delete", "empty"])
def test_damaged_value_file_is_a_miss(disk: DiskStorage, resource: Make, damage: str) -> None:
    assert disk.set(resource("big", body_size=64 * 1024))  # > 32 KiB: its own file
    (path,) = _value_files(disk.directory)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "delete":
        path.unlink()
    else:
        path.write_bytes(b"")
    assert disk.get("big") is None
    assert disk.stats.corrupt == 1
    assert "big" not in disk
    assert disk.set(resource("big", body_size=64 * 1024))  # and the key is usable again
    assert disk.get("big") is not None


def test_sqlite_failure_on_read_is_a_miss(
    disk: DiskStorage, resource: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    disk.set(resource("k"))

    def boom(*args: object, **kwargs: object) -> object:
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(disk._cache, "get", boom)
    assert disk.get("k") is None
    assert disk.stats.corrupt == 1


def test_lock_timeout_on_read_is_a_plain_miss(
    disk: DiskStorage, resource: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk.set(resource("k"))

    def timeout(*args: object, **kwargs: object) -> object:
        raise diskcache.Timeout

    monkeypatch.setattr(disk._cache, "get", timeout)
    assert disk.get("k") is None
    assert (disk.stats.misses, disk.stats.corrupt) == (1, 0)
    monkeypatch.undo()
    assert disk.get("k") is not None  # not deleted


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), diskcache.Timeout()])
def test_write_failure_is_refused_not_raised(
    disk: DiskStorage, resource: Make, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def fail(*args: object, **kwargs: object) -> object:
        raise error

    monkeypatch.setattr(disk._cache, "set", fail)
    assert disk.set(resource("k")) is False
    assert (disk.stats.failed, disk.stats.rejected) == (1, 0)  # an I/O failure, not a refusal


def test_random_policy_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="random"):
        DiskStorage(tmp_path / "l2", MiB, "random")


def test_unknown_policy_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DiskStorage(tmp_path / "l2", MiB, "mru")  # type: ignore[arg-type]


def _fill_then_reopen(tmp_path: Path, policy: EvictionPolicy, resource: Make) -> DiskStorage:
    """20 file-backed entries, then a reopen whose budget has room for none more."""
    directory = tmp_path / policy
    s = DiskStorage(directory, 100 * MiB, policy)
    for i in range(20):
        assert s.set(resource(f"k{i:02}", body_size=40 * 1024))
    volume = s.volume()
    s.close()
    return DiskStorage(directory, volume + 20 * 1024, policy)


@pytest.mark.parametrize(
    ("policy", "survivors"),
    [
        # cull() removes 10 rows at a time (diskcache), hence 10 victims for one new entry.
        ("fifo", {f"k{i:02}" for i in range(10, 20)}),
        ("lru", {f"k{i:02}" for i in range(5)} | {f"k{i:02}" for i in range(15, 20)}),
        ("lfu", {f"k{i:02}" for i in range(5)} | {f"k{i:02}" for i in range(15, 20)}),
    ],
)
def test_policy_picks_victims(
    tmp_path: Path, resource: Make, policy: EvictionPolicy, survivors: set[str]
) -> None:
    s = _fill_then_reopen(tmp_path, policy, resource)
    try:
        for i in range(5):  # read the five oldest entries
            assert s.get(f"k{i:02}") is not None
        assert s.set(resource("new", body_size=40 * 1024))
        assert s.stats.evictions == 10
        assert set(s.keys()) == survivors | {"new"}
        assert s.volume() <= s.budget_bytes
    finally:
        s.close()


def test_budget_below_sqlite_baseline_keeps_nothing_but_never_raises(tmp_path: Path, resource: Make) -> None:
    s = DiskStorage(tmp_path / "l2", 20 * 1024)  # an empty SQLite file alone is ~32 KiB
    try:
        assert s.set(resource("k", body_size=100)) is False
        assert s.get("k") is None
    finally:
        s.close()


def test_delete_many_removes_the_listed_keys_in_one_transaction(disk: DiskStorage, resource: Make) -> None:
    for i in range(50):
        assert disk.set(resource(f"k{i}"))
    removed = disk.delete_many([f"k{i}" for i in range(0, 50, 2)] + ["absent"])
    assert sorted(removed) == sorted(f"k{i}" for i in range(0, 50, 2))
    assert sorted(disk.keys()) == sorted(f"k{i}" for i in range(1, 50, 2))
    assert disk.stats.entries == 25


# -- integrity: a checksum per record (issue 12 row 8) -------------------------------------------


def _overwrite_100_bytes(disk: DiskStorage, key: str) -> None:
    """Change 100 bytes in the middle of key's stored record, keeping its length, behind diskcache's back."""
    db = sqlite3.connect(disk.directory / "cache.db")
    try:
        ((filename, value),) = db.execute("SELECT filename, value FROM Cache WHERE key = ?", (key,))
        if filename is not None:  # a value file: overwritten in place, as a bad disk or a stray write would
            with open(disk.directory / filename, "r+b") as f:
                size = f.seek(0, 2)
                f.seek(size // 2)
                f.write(bytes(100))
        else:  # a record inline in SQLite
            damaged = bytearray(value)
            damaged[len(damaged) // 2 : len(damaged) // 2 + 100] = bytes(100)
            db.execute("UPDATE Cache SET value = ? WHERE key = ?", (bytes(damaged), key))
            db.commit()
    finally:
        db.close()


@pytest.mark.parametrize("body_size", [1_000, 200_000], ids=["inline in SQLite", "value file"])
async def test_bytes_changed_on_disk_are_a_miss_and_the_entry_is_removed(
    tmp_path: Path, resource: Make, body_size: int
) -> None:
    disk = DiskStorage(tmp_path / "l2", 10 * MiB)
    tiers = TieredStorage(None, disk)  # no L1: every read is a disk read, on the loop where it can be
    try:
        stored = resource("k", body_size=body_size)
        assert disk.set(stored)
        assert await tiers.aget("k") == (stored, "l2")  # read once: the loop reader keeps its metadata
        _overwrite_100_bytes(disk, "k")
        await asyncio.sleep(0)  # one loop turn: the loop reader's read transaction of that turn ends
        assert await tiers.aget("k") == (None, None)  # never the damaged bytes
        assert (disk.stats.corrupt, "k" in disk) == (1, False)
        assert await tiers.aget("k") == (None, None)
    finally:
        tiers.close()


def test_records_of_an_older_format_read_as_misses_and_are_removed(disk: DiskStorage, resource: Make) -> None:
    data = codec.encode(resource("k"))
    version_4 = data[:4] + b"\x04" + data[5:9] + data[17:]  # no checksum: what version 4 wrote
    disk._cache.set("k", version_4)
    assert disk.get("k") is None
    assert (disk.stats.outdated, disk.stats.corrupt, "k" in disk) == (1, 0, False)
