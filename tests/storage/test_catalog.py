"""The catalogue of keys, tags and purges (proxy/storage/catalog.py)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.storage.catalog import (
    CATALOG_FILE,
    SCHEMA_VERSION,
    Catalog,
    CatalogRow,
    PurgeMatch,
    PurgeRecord,
    split_key,
)


def _open_and_record(directory: str, n: int, barrier: Any) -> None:
    barrier.wait(10)  # every process opens at the same moment
    catalog = Catalog(directory)
    catalog.record(f"|http://h/p{n}", [f"t{n}"], 10, 0.0)
    catalog.close()


def test_processes_opening_one_directory_at_once_all_succeed(tmp_path: Path) -> None:
    """Workers start together; opening (WAL switch, schema) must not fail with 'database is locked'."""
    ctx = multiprocessing.get_context("fork")
    for attempt in range(3):
        directory = tmp_path / f"try{attempt}"
        directory.mkdir()
        barrier = ctx.Barrier(16)
        procs = [ctx.Process(target=_open_and_record, args=(str(directory), n, barrier)) for n in range(16)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0] * 16
        assert Catalog(directory).count() == 16


def test_keys_by_url_path_prefix_and_exact_tag(tmp_path: Path) -> None:
    c = Catalog(tmp_path)
    c.record("|http://a.example/api/items/1", ["item", "api"], 10, 1.0)
    c.record("|http://b.example/api/items/1", ["item"], 10, 1.0)
    c.record("|http://a.example/api/items/10", ["itemx"], 10, 1.0)
    assert sorted(c.keys_for_url("/api/items/1")) == [
        "|http://a.example/api/items/1",
        "|http://b.example/api/items/1",
    ]
    assert c.keys_for_url("http://a.example/api/items/1") == ["|http://a.example/api/items/1"]
    assert len(c.keys_for_prefix("/api/items/1")) == 3  # a prefix, not a path segment
    assert sorted(c.keys_for_tags(["item"])) == [
        "|http://a.example/api/items/1",
        "|http://b.example/api/items/1",
    ]
    c.record("|http://a.example/api/items/1", ["other"], 10, 2.0)  # re-recording replaces the tags
    assert c.keys_for_tags(["item"]) == ["|http://b.example/api/items/1"]
    c.forget(["|http://b.example/api/items/1"])
    assert c.keys_for_tags(["item"]) == []


def test_purge_log_is_ordered_and_reports_when_it_no_longer_reaches_back(tmp_path: Path) -> None:
    import proxy.storage.catalog as catalog_module

    c = Catalog(tmp_path)
    first = c.append_purge(["k1"], soft=False, at=1.0)
    second = c.append_purge(None, soft=True, at=2.0)
    records = c.purges_since(0)
    assert records is not None and [r.epoch for r in records] == [first, second]
    assert records[1].everything and records[1].soft and records[0].keys == ("k1",)
    keep = catalog_module.PURGE_LOG_KEEP
    try:
        catalog_module.PURGE_LOG_KEEP = 2
        for i in range(5):
            c.append_purge([f"k{i}"], soft=False, at=3.0 + i)
        assert c.purges_since(first) is None  # too far behind: the caller clears its L1
    finally:
        catalog_module.PURGE_LOG_KEEP = keep


def test_split_key() -> None:
    assert split_key("ns|https://h.example:8443/a/b?q=1") == ("https://h.example:8443/a/b?q=1", "/a/b?q=1")
    assert split_key("|http://h") == ("http://h", "/")


# The catalogue as version 1 created it: its purge log had no tags, urls or prefixes.
_V1_SCHEMA = """
CREATE TABLE entries (key TEXT PRIMARY KEY, url TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
    stored_at REAL NOT NULL);
CREATE TABLE tags (tag TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (tag, key)) WITHOUT ROWID;
CREATE TABLE purges (epoch INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, soft INTEGER NOT NULL,
    everything INTEGER NOT NULL, keys TEXT NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO entries VALUES ('|http://h/a', 'http://h/a', '/a', 10, 1.0);
INSERT INTO tags VALUES ('t', '|http://h/a');
INSERT INTO purges(at, soft, everything, keys) VALUES (5.0, 0, 0, '["|http://h/old"]');
"""


def test_a_version_1_catalogue_is_migrated_in_place(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / CATALOG_FILE)
    db.executescript(_V1_SCHEMA)
    db.close()
    for _ in range(2):  # a second open finds it migrated
        c = Catalog(tmp_path)
        assert c.purges_since(0) == [PurgeRecord(1, 5.0, False, False, ("|http://h/old",))]
        assert c.keys_for_tags(["t"]) == ["|http://h/a"]
        c.close()
    c = Catalog(tmp_path)
    epoch, keys = c.log_purge([], PurgeMatch(tags=("t",), prefixes=("/b",)), soft=True, at=6.0)
    assert (epoch, keys) == (2, ["|http://h/a"])
    assert c.recent_purges(6.0) == [PurgeRecord(2, 6.0, True, False, ("|http://h/a",), ("t",), (), ("/b",))]
    epoch, _ = c.log_purge(["|http://h/late"], None, soft=False, at=7.0, ban_epoch=2)
    assert c.recent_purges(7.0) == [PurgeRecord(epoch, 7.0, False, False, ("|http://h/late",), ban_epoch=2)]
    (version,) = c._db.execute("PRAGMA user_version").fetchone()
    assert version == SCHEMA_VERSION
    c.close()


@dataclass(frozen=True)
class Verdict:
    soft: bool
    epoch: int


def _judge_by_key(records: list[PurgeRecord]) -> Callable[[CatalogRow], Verdict | None]:
    purged = {k: r for r in records for k in (*r.keys, *r.tags)}

    def judge(row: CatalogRow) -> Verdict | None:
        r = purged.get(row.key) or next((purged[t] for t in row.tags if t in purged), None)
        return None if r is None else Verdict(r.soft, r.epoch)

    return judge


def test_a_batch_of_rows_is_screened_against_the_purges_it_missed(tmp_path: Path) -> None:
    c = Catalog(tmp_path)
    seen = c.append_purge(["|http://h/seen"], soft=False, at=1.0)  # the writer already knew of this one
    c.log_purge([], PurgeMatch(tags=("hard",)), soft=False, at=2.0)
    c.log_purge([], PurgeMatch(tags=("soft",)), soft=True, at=3.0)
    rows = [
        CatalogRow("|http://h/seen", (), 1, 4.0),
        CatalogRow("|http://h/hard", ("hard",), 1, 4.0),
        CatalogRow("|http://h/soft", ("soft",), 1, 4.0),
    ]
    records, covered = c.write_rows(rows, [], seen, _judge_by_key)
    assert [r.epoch for r in records] == [seen + 1, seen + 2]
    assert covered == {"|http://h/hard": Verdict(False, seen + 1), "|http://h/soft": Verdict(True, seen + 2)}
    assert sorted(c.all_keys()) == ["|http://h/seen", "|http://h/soft"]  # the hard-covered row is not listed
    # Forgetting in the same kind of batch.
    c.write_rows([], ["|http://h/soft"], seen + 2, _judge_by_key)
    assert c.all_keys() == ["|http://h/seen"] and c.keys_for_tags(["soft"]) == []


def test_a_purge_resolves_and_logs_in_one_step(tmp_path: Path) -> None:
    c = Catalog(tmp_path)
    c.record("|http://a.example/api/1", ["x"], 1, 1.0)
    c.record("|http://a.example/other", ["y"], 1, 1.0)
    epoch, keys = c.log_purge(["|extra"], PurgeMatch(tags=("y",), urls=("/api/1",)), soft=False, at=2.0)
    assert sorted(keys) == ["|extra", "|http://a.example/api/1", "|http://a.example/other"]
    (record,) = c.purges_since(epoch - 1) or []
    assert (record.keys, record.tags, record.urls) == (tuple(keys), ("y",), ("/api/1",))
