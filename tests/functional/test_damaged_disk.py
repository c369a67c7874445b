"""The disk tier's files damaged between two runs of the proxy (requirements §12: "Corrupt entries read
from disk are a miss, never a 500"; RFC 9111 §3, §4: only a stored response of the request's own key
is reused). A real diskcache directory is filled through the proxy from the origin stub, the proxy is
stopped, the bytes on disk are damaged as a crash, a flipped bit, another version or another process
would leave them, and a proxy started again on the directory is asked over a real socket.

Each damaged entry must answer from the origin (a miss, the origin's own body, never another URL's),
be removed, and the answer be stored again: the next request is a hit, the entry does not fail forever.
"""

from __future__ import annotations

import asyncio
import pickle
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from diskcache.core import DBNAME, MODE_PICKLE

from proxy.purge import PurgeRequest
from tests.functional.conftest import Origin, Proxy, ProxyFactory, cache_status

HOST = {"Host": "cdn.example"}
BIG = "/bytes/40000"  # over diskcache's 32 KiB: its own value file
BIG_TOO = "/bytes/40001"
SMALL = "/max-age/600"  # inline in SQLite
SMALL_TOO = "/max-age/601"


def key(path: str) -> str:
    return f"|http://cdn.example{path}"


async def get(proxy: Proxy, path: str) -> tuple[str, bytes]:
    resp, body = await proxy.get(path, headers=HOST)
    assert resp.status == 200, body
    return cache_status(resp), body


async def fill(start_proxy: ProxyFactory, paths: list[str]) -> tuple[Path, dict[str, bytes]]:
    """Store paths through a proxy, stop it; the L2 directory and each path's body."""
    proxy = await start_proxy()
    bodies = {path: (await get(proxy, path))[1] for path in paths}
    await proxy.server.node.storage.drain()
    await proxy.server.node.purger.flush_rows()
    await proxy.server.close()
    return Path(proxy.cfg.cache.dir), bodies


def row(directory: Path, path: str) -> tuple[int, str | None, object]:
    """(mode, value file, inline value) of path's row in diskcache's table."""
    with sqlite3.connect(directory / DBNAME) as db:
        found = db.execute("SELECT mode, filename, value FROM Cache WHERE key = ?", (key(path),)).fetchone()
    assert found is not None, path
    return int(found[0]), found[1], found[2]


def value_file(directory: Path, path: str) -> Path:
    _, filename, _ = row(directory, path)
    assert filename is not None
    return directory / filename


def set_row(directory: Path, path: str, **columns: object) -> None:
    names = ", ".join(f"{name} = ?" for name in columns)
    with sqlite3.connect(directory / DBNAME) as db:
        db.execute(f"UPDATE Cache SET {names} WHERE key = ?", (*columns.values(), key(path)))


def flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :]


def with_version(data: bytes, version: int) -> bytes:
    return data[:4] + bytes((version,)) + data[5:]


Damage = Callable[[Path], None]


def big_file(change: Callable[[bytes], bytes]) -> Damage:
    def damage(directory: Path) -> None:
        file = value_file(directory, BIG)
        file.write_bytes(change(file.read_bytes()))

    return damage


def small_value(change: Callable[[bytes], bytes]) -> Damage:
    def damage(directory: Path) -> None:
        _, _, value = row(directory, SMALL)
        assert isinstance(value, bytes)
        set_row(directory, SMALL, value=change(value))

    return damage


def big_file_removed(directory: Path) -> None:
    value_file(directory, BIG).unlink()


def big_row_names_another_file(directory: Path) -> None:
    """BIG's row points at BIG_TOO's value file (its header block says BIG_TOO's key)."""
    _, other, _ = row(directory, BIG_TOO)
    set_row(directory, BIG, filename=other, size=value_file(directory, BIG_TOO).stat().st_size)


def big_file_holds_another_record(directory: Path) -> None:
    """BIG's value file overwritten with BIG_TOO's record, its row's size set to match."""
    data = value_file(directory, BIG_TOO).read_bytes()
    value_file(directory, BIG).write_bytes(data)
    set_row(directory, BIG, size=len(data))


def small_row_holds_another_record(directory: Path) -> None:
    _, _, other = row(directory, SMALL_TOO)
    set_row(directory, SMALL, value=other)


def small_row_pickled(directory: Path) -> None:
    set_row(directory, SMALL, mode=MODE_PICKLE, value=pickle.dumps({"status": 200}))


def small_row_text(directory: Path) -> None:
    set_row(directory, SMALL, value="MCDN text, not bytes")


CASES: dict[str, tuple[str, Damage]] = {
    "value file truncated": (BIG, big_file(lambda d: d[: len(d) // 2])),
    "value file one byte short": (BIG, big_file(lambda d: d[:-1])),
    "value file longer": (BIG, big_file(lambda d: d + b"more")),
    "value file empty": (BIG, big_file(lambda d: b"")),
    "value file garbled": (BIG, big_file(flip_middle)),
    "value file of an older format": (BIG, big_file(lambda d: with_version(d, 4))),
    "value file of a future format": (BIG, big_file(lambda d: with_version(d, 9))),
    "value file removed": (BIG, big_file_removed),
    "row names another key's file": (BIG, big_row_names_another_file),
    "value file holds another key's record": (BIG, big_file_holds_another_record),
    "inline value truncated": (SMALL, small_value(lambda d: d[: len(d) // 2])),
    "inline value garbled": (SMALL, small_value(flip_middle)),
    "inline value of an older format": (SMALL, small_value(lambda d: with_version(d, 4))),
    "inline value of a future format": (SMALL, small_value(lambda d: with_version(d, 9))),
    "inline value empty": (SMALL, small_value(lambda d: b"")),
    "inline value holds another key's record": (SMALL, small_row_holds_another_record),
    "inline value pickled": (SMALL, small_row_pickled),
    "inline value text": (SMALL, small_row_text),
}


@pytest.mark.parametrize("case", CASES)
async def test_a_damaged_entry_is_a_miss_with_its_own_body_and_is_stored_again(
    start_proxy: ProxyFactory, origin: Origin, case: str
) -> None:
    path, damage = CASES[case]
    directory, bodies = await fill(start_proxy, [BIG, BIG_TOO, SMALL, SMALL_TOO])
    damage(directory)
    proxy = await start_proxy()
    # /max-age/N's body says which request of the path the origin answers: the second, now.
    fresh = bodies[path].replace(b"hit=1", b"hit=2")
    member, body = await get(proxy, path)
    assert body == fresh, case  # the origin's answer: never another URL's body, nor the damaged bytes
    assert "hit" not in member.split(";"), member
    member, body = await get(proxy, path)
    assert "hit" in member.split(";") and body == fresh, member
    await proxy.server.node.storage.drain()
    await proxy.server.close()
    again = await start_proxy()  # stored again on disk, whole: a hit from L2 after a restart
    member, body = await get(again, path)
    assert "hit" in member.split(";") and body == fresh, member
    assert await origin.hits(path) == 2


async def test_a_cache_directory_that_is_a_file_starts_without_l2_naming_the_path(
    start_proxy: ProxyFactory, origin: Origin, tmp_path: Path
) -> None:
    """The cache directory replaced by a file before a start: the node starts without L2 (the
    health names the path and why), and answers from the origin and L1, never a 500."""
    (tmp_path / "l2").write_bytes(b"not a directory")
    proxy = await start_proxy()
    health = proxy.server.node.health
    assert health.l2 == "failed" and str(tmp_path / "l2") in str(health.l2_error), health
    member, _ = await get(proxy, SMALL)
    assert "hit" not in member.split(";")
    assert "hit" in (await get(proxy, SMALL))[0].split(";")


async def test_a_cache_directory_replaced_by_a_file_while_running_is_a_miss_not_a_500(
    start_proxy: ProxyFactory, origin: Origin, tmp_path: Path
) -> None:
    """The directory removed and a file put in its place under a running node: what it had on disk
    is gone (a miss from the origin, the right body), every request is still answered, and the
    health says the disk tier failed (once its figures are refreshed, as /stats does)."""
    proxy = await start_proxy()
    _, big = await get(proxy, BIG)
    storage = proxy.server.node.storage
    await storage.drain()
    assert storage.l1 is not None and storage.l2 is not None
    storage.l1.clear()  # as an eviction would: the next read is from L2
    directory = Path(proxy.cfg.cache.dir)
    for item in sorted(directory.rglob("*"), reverse=True):
        item.rmdir() if item.is_dir() else item.unlink()
    directory.rmdir()
    directory.write_bytes(b"not a directory")
    member, body = await get(proxy, BIG)
    assert "hit" not in member.split(";") and body == big
    for path in (BIG_TOO, SMALL, SMALL):
        await get(proxy, path)
    await storage.drain()
    storage.l2.refresh_stats()
    assert proxy.server.node.health.l2 == "failed", proxy.server.node.health


LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
db.execute("ROLLBACK")
"""


async def test_a_disk_database_locked_by_another_process_is_a_miss_or_a_hit_never_a_500(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    """Another process holds cache.db's write lock: stored entries are still read (on the loop, no
    write needed), new responses are answered from the origin though they cannot be stored, a purge
    still purges; once the lock is let go, storing resumes.

    The purge's L2 delete times out (the lock), so its ban screens the copy left on disk: the
    request that found it awaited a second delete and waited the disk's lock timeout (5 s), and so
    did every request for the key until the ban expired (600 s). It no longer waits for that delete
    (TieredStorage.delete_behind). Each request is given 4 s (the timeout is 5 s)."""
    proxy = await start_proxy()
    await get(proxy, SMALL)
    storage = proxy.server.node.storage
    await storage.drain()
    assert storage.l1 is not None
    storage.l1.clear()
    locker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCKER,
        str(Path(proxy.cfg.cache.dir) / DBNAME),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert locker.stdin is not None and locker.stdout is not None
    try:
        assert await asyncio.wait_for(locker.stdout.readline(), 10) == b"locked\n"
        member, _ = await asyncio.wait_for(get(proxy, SMALL), 4)
        assert "hit" in member.split(";"), member
        member, _ = await asyncio.wait_for(get(proxy, SMALL_TOO), 4)
        assert "hit" not in member.split(";")
        result = await proxy.server.node.purger.purge(PurgeRequest("url", (SMALL,)))
        assert result.keys == 1 and result.warning is None
        member, _ = await asyncio.wait_for(get(proxy, SMALL), 4)
        assert "hit" not in member.split(";"), member  # purged, though L2 could not delete it yet
    finally:
        locker.stdin.close()
        await asyncio.wait_for(locker.wait(), 10)
    await storage.drain()
    await get(proxy, BIG)
    await storage.drain()
    storage.l1.clear()
    assert "hit" in (await get(proxy, BIG))[0].split(";")
