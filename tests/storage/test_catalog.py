"""The catalogue of keys, tags and purges (proxy/storage/catalog.py)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from proxy.storage.catalog import Catalog, split_key


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
