"""A catalogue (proxy/storage/catalog.py) with rows the proxy never writes: one damaged row is
skipped (a key's rows removed) with a warning, and the rest of the batch it was read in still works
(requirements §6, §12: a damaged disk is a miss or a fallback, never a failed purge or a 500).

The damage is written into the real SQLite file with a second connection, as another process or a
flipped bit would leave it; the proxy runs against the real origin stub over real sockets.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import time
from pathlib import Path

import pytest

import proxy.purger as purger_module
from proxy.purge import PurgeRequest
from proxy.storage import catalog as catalog_module
from proxy.storage.catalog import CATALOG_FILE
from tests.functional.conftest import Proxy, ProxyFactory, cache_status

HOST = {"Host": "cdn.example"}
# Spelled out too, so that the test runs on the code before the fix.
MAX_KEY_CHARS: int = getattr(catalog_module, "MAX_KEY_CHARS", 256 * 1024)
TAGGED = ["/tags?keys=a", "/tags?keys=a,b"]


async def get(proxy: Proxy, path: str) -> str:
    resp, body = await proxy.get(path, headers=HOST)
    assert resp.status == 200, body
    return cache_status(resp)


def catalogue(proxy: Proxy) -> sqlite3.Connection:
    return sqlite3.connect(Path(proxy.cfg.cache.dir) / CATALOG_FILE, isolation_level=None)


def damage_keys(proxy: Proxy) -> None:
    """Rows under /tags with tag "a" whose key is not UTF-8, NULL, a BLOB and longer than any request."""
    huge = "|http://cdn.example/tags?" + "x" * MAX_KEY_CHARS
    with catalogue(proxy) as db:
        for key in ("CAST(x'7cff2f74616773' AS TEXT)", "NULL", "x'7c0102'", "?"):
            args = (huge,) if key == "?" else ()
            db.execute(f"INSERT INTO entries VALUES ({key}, 'http://cdn.example/tags', '/tags', 1, 0)", args)
            if key != "NULL":  # tags.key is NOT NULL
                db.execute(f"INSERT INTO tags VALUES ('a', {key})", args)


def damaged_rows_left(proxy: Proxy) -> int:
    """Rows whose key is not one the proxy writes (damage_keys' rows), in either table."""
    damaged = (
        "key IS NULL OR typeof(key) != 'text' OR key NOT LIKE '|http://cdn.example/%' OR length(key) > ?"
    )
    with catalogue(proxy) as db:
        (entries,) = db.execute(f"SELECT COUNT(*) FROM entries WHERE {damaged}", (MAX_KEY_CHARS,)).fetchone()
        (tags,) = db.execute(f"SELECT COUNT(*) FROM tags WHERE {damaged}", (MAX_KEY_CHARS,)).fetchone()
    return int(entries) + int(tags)


@pytest.mark.parametrize("kind, value", [("tag", "a"), ("prefix", "/tags")])
async def test_a_damaged_key_is_skipped_and_removed_and_the_purge_is_logged(
    proxy: Proxy, kind: str, value: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A key that is not UTF-8 text (or NULL, a BLOB, 256 KiB long) among the rows a purge by tag or
    prefix reads: reading it raised ("Could not decode to UTF-8 column 'key'"), the purge could not
    be logged, and was carried out on this worker only, with a warning blaming a full disk (the other
    workers kept serving what it named). Now the damaged rows are skipped with a warning and removed."""
    for path in TAGGED:
        await get(proxy, path)
    purger = proxy.server.node.purger
    await purger.flush_rows()
    damage_keys(proxy)
    with caplog.at_level(logging.WARNING, logger="proxy.storage.catalog"):
        result = await purger.purge(PurgeRequest(kind, (value,)))
    assert result.warning is None and result.keys == len(TAGGED), result
    assert "damaged keys" in caplog.text and "\\xff" in caplog.text  # named, escaped
    for path in TAGGED:
        assert "fwd=uri-miss" in await get(proxy, path)
    # The NULL key has no tags row (tags.key is NOT NULL): a purge by tag does not read it.
    assert damaged_rows_left(proxy) == (1 if kind == "tag" else 0)


async def test_listing_and_pruning_skip_a_damaged_key(proxy: Proxy) -> None:
    """`minicdn inspect` (Purger.inspect) and pruning read every row: one damaged key failed both
    (inspect answered 500, pruning never ran again). Now the stored entries are listed."""
    for path in TAGGED:
        await get(proxy, path)
    purger = proxy.server.node.purger
    await purger.flush_rows()
    damage_keys(proxy)
    listed = await purger.inspect(prefix=None, tag=None, limit=10)
    assert sorted(e["url"] for e in listed) == sorted(f"http://cdn.example{p}" for p in TAGGED)
    damage_keys(proxy)
    assert purger.catalog.prune(purger._exists) == 0
    assert damaged_rows_left(proxy) == 0


def log_damaged_purge(proxy: Proxy) -> int:
    """A purge log record whose keys are not JSON and whose time is text; returns its epoch."""
    with catalogue(proxy) as db:
        cur = db.execute("INSERT INTO purges(at, soft, everything, keys) VALUES ('soon', 0, 0, '[\"|http')")
        return int(cur.lastrowid or 0)


async def test_a_damaged_purge_record_does_not_fail_the_catalogue_writer(proxy: Proxy) -> None:
    """The catalogue writer reads the purges logged since its worker last looked with every batch:
    one damaged record failed every batch, and each failed batch removed its entries (nothing
    stored was kept). Now the record is skipped and the rows are written."""
    log_damaged_purge(proxy)
    for path in TAGGED:
        await get(proxy, path)
    purger = proxy.server.node.purger
    await purger.flush_rows()
    assert purger.stats.catalog_failed == 0
    for path in TAGGED:
        assert "hit" in (await get(proxy, path)).split(";")
    assert (await purger.purge(PurgeRequest("tag", ("a",)))).keys == len(TAGGED)


async def test_a_worker_behind_a_damaged_purge_record_clears_its_memory_tier(proxy: Proxy) -> None:
    """Another worker's purge that cannot be read: applying it raised on the request that noticed it
    (a 500, and the next request again). What it covered is unknown, so the worker clears its L1 (as
    when it is too far behind the log) and catches up: the request is answered from L2."""
    await get(proxy, "/max-age/600")
    node = proxy.server.node
    await node.purger.flush_rows()
    node.purger.epoch.advance_to(log_damaged_purge(proxy))  # as the other worker's purge would
    member = await get(proxy, "/max-age/600")
    assert "hit" in member.split(";") and "detail=l2" in member.replace('"', ""), member
    assert not node.purger.behind()


async def test_a_damaged_purge_record_does_not_stop_a_restart(start_proxy: ProxyFactory) -> None:
    """A starting worker loads the recent purges as bans: a damaged record made every start fail."""
    first = await start_proxy()
    await get(first, "/max-age/600")
    await first.server.node.purger.flush_rows()
    log_damaged_purge(first)
    await first.server.close()
    second = await start_proxy()
    assert "hit" in (await get(second, "/max-age/600")).split(";")


LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
db.execute("ROLLBACK")
"""


async def test_rows_wait_while_another_process_holds_the_catalogue_lock(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the catalogue's write lock past its busy timeout (10 s): each batch of
    rows failed with "database is locked" and was treated as an I/O error, so every entry stored
    meanwhile was removed from both tiers (served once, then fetched again). A lock is let go: the
    rows now wait, as on a full disk, and are written once it is; the entries stay, purges find them."""
    monkeypatch.setattr(purger_module, "FULL_RETRY_SECONDS", 0.2)
    purger = proxy.server.node.purger
    locker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCKER,
        str(Path(proxy.cfg.cache.dir) / CATALOG_FILE),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert locker.stdin is not None and locker.stdout is not None
    try:
        assert await asyncio.wait_for(locker.stdout.readline(), 10) == b"locked\n"
        for path in TAGGED:
            await get(proxy, path)
        deadline = time.monotonic() + 30
        while purger.stats.catalog_full + purger.stats.catalog_failed == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert purger.stats.catalog_failed == 0, purger.stats
    finally:
        locker.stdin.close()
        await asyncio.wait_for(locker.wait(), 10)
    deadline = time.monotonic() + 10
    while purger._rows and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    for path in TAGGED:
        assert "hit" in (await get(proxy, path)).split(";")
    assert (await purger.purge(PurgeRequest("tag", ("a",)))).keys == len(TAGGED)
