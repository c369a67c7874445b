"""A node starts whatever state its cache directory is in (issue 12 row 7).

A corrupt `cache.db` or catalogue is moved aside and a fresh one started; a cache directory that
cannot be written (a read-only filesystem: root ignores file modes, a mount does not) means a node
without its disk tier, the catalogue in a fallback directory. Each is logged as an error and shown
in /stats under `health`. Real files, real SQLite, a real read-only mount, a real `python -m proxy`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from proxy.storage.opening import fallback_dir
from tests.functional.conftest import Origin, ProxyFactory, cache_status, free_port
from tests.functional.test_cli import Spawn, spawn, wait_listening
from tests.functional.test_workers import stats

__all__ = ["spawn"]

HOST = {"Host": "cdn.example"}
MINICDN_PROXY = [sys.executable, "-m", "proxy"]


def overwrite_header(path: Path) -> None:
    """Garbage over the first 100 bytes: SQLite's header, "SQLite format 3" and the page size."""
    with path.open("r+b") as f:
        f.write(b"\xa5" * 100)


async def test_a_corrupt_cache_db_is_moved_aside_and_the_node_starts_afresh(
    start_proxy: ProxyFactory, origin: Origin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = await start_proxy()
    for path in ("/max-age/60", "/bytes/100000"):  # one record inline in SQLite, one in a value file
        resp, _ = await first.get(path, headers=HOST)
        assert resp.status == 200
    await first.server.close()
    cache = tmp_path / "l2"
    overwrite_header(cache / "cache.db")
    overwrite_header(cache / "catalog.sqlite3")
    caplog.set_level(logging.ERROR, logger="proxy.storage")

    second = await start_proxy()
    health = second.server.node.health
    assert (health.l2, health.catalog) == ("ok", "shared")
    assert len(health.moved_aside) == 2  # the disk tier's files, and the catalogue's
    aside = [Path(p) for p in health.moved_aside]
    assert any((p / "cache.db").exists() for p in aside) and any(
        (p / "catalog.sqlite3").exists() for p in aside
    )
    assert not any(cache.glob("[0-9a-f][0-9a-f]"))  # the old value files went with their database
    assert sum("corrupt" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR) == 2
    resp, _ = await second.get("/max-age/60", headers=HOST)
    assert "fwd=uri-miss" in cache_status(resp)  # a fresh cache: it fills again
    await second.server.node.storage.drain()
    assert second.server.node.storage.l2 is not None and len(second.server.node.storage.l2) == 1


@pytest.fixture
def read_only_cache(tmp_path: Path) -> Iterator[Path]:
    """A cache directory holding a real cache, on a filesystem remounted read-only."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount / "cache"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(fallback_dir(mount / "cache"), ignore_errors=True)


async def test_a_read_only_cache_dir_starts_without_l2_and_says_so(
    spawn: Spawn, origin: Origin, read_only_cache: Path
) -> None:
    port, admin = free_port(), free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}", "--origin", origin.url]
    args += ["--cache-dir", str(read_only_cache), "--workers", "2"]
    first = spawn([*MINICDN_PROXY, *args], "first")
    await wait_listening(first, port)
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/max-age/60") as r:
        assert r.status == 200
    assert first.stop() == 0
    remount = ["mount", "-o", "remount,ro", str(read_only_cache.parent)]
    subprocess.run(remount, check=True, capture_output=True)

    proc = spawn([*MINICDN_PROXY, *args], "read-only")
    await wait_listening(proc, port)
    await wait_listening(proc, admin)
    numbers = await stats(admin)
    health = numbers["health"]
    assert isinstance(health, dict)
    assert health["l2"] == "failed" and health["l2_error"]  # e.g. "unable to open database file"
    assert health["catalog"] == "fallback"
    tiers = numbers["tiers"]
    assert isinstance(tiers, dict) and tiers["l2"] is None
    async with aiohttp.ClientSession() as http:
        for _ in range(4):  # every worker serves (from the origin, then from its L1)
            async with http.get(f"http://127.0.0.1:{port}/max-age/30", headers={"Connection": "close"}) as r:
                assert r.status == 200
        async with http.post(f"http://127.0.0.1:{admin}/purge", json={"url": "/max-age/30"}) as r:
            assert r.status == 200, await r.text()  # purges still work: the log is in the fallback dir
    assert proc.stop() == 0
    assert "running without the disk tier" in proc.output()
    assert "Traceback" not in proc.output()
