"""--workers N: processes on one port (SO_REUSEPORT), each with its own L1, one shared L2.

A purge accepted by the worker that runs the admin API must stop every worker
from serving the object (issue: purge across worker processes of one node).
"""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp

from tests.functional.conftest import Origin, free_port
from tests.functional.test_cli import Spawn, spawn, wait_listening

__all__ = ["spawn"]


def two_workers(port: int, admin: int, origin: Origin, tmp_path: Path) -> list[str]:
    """`python -m proxy --workers 2` on free loopback ports in front of the origin stub."""
    return [
        sys.executable, "-m", "proxy", "--workers", "2",
        "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
        "--origin", origin.url, "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip


async def fresh_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One request on a new connection (the kernel spreads new connections over the workers)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s, s.get(url, headers=headers) as r:
        await r.read()
        return r.status, r.headers.get("Cache-Status", "")


async def test_purge_reaches_every_worker_sharing_the_l2(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    proc = spawn(two_workers(port, admin, origin, tmp_path), "workers")
    await wait_listening(proc, port)
    await wait_listening(proc, admin)
    url = f"http://127.0.0.1:{port}/max-age/600"
    statuses = [await fresh_get(url) for _ in range(40)]
    members = [m for _, m in statuses]
    fetched = sum("fwd=uri-miss" in m for m in members)
    promoted = sum('detail="l2"' in m for m in members)
    # One worker fetched it (L1); the other promoted it from the shared L2 once, unless it asked
    # before the first worker's write-behind reached L2 and so fetched it too. Either way both
    # workers' L1 hold it now.
    assert (fetched, promoted) in ((1, 1), (2, 0)), members
    assert await origin.hits("/max-age/600") == fetched

    purge = f"http://127.0.0.1:{admin}/purge"
    async with aiohttp.ClientSession() as s, s.post(purge, json={"url": "/max-age/600"}) as r:
        assert r.status == 200, await r.text()
    after = [await fresh_get(url, {"Cache-Control": "only-if-cached"}) for _ in range(20)]
    assert all(status == 504 for status, _ in after), after  # neither worker's L1 still serves it
    assert proc.stop() == 0


async def test_workers_exit_when_their_parent_is_killed(spawn: Spawn, origin: Origin, tmp_path: Path) -> None:
    """SIGKILL forwards nothing: the workers must notice and release the port, not live on as orphans."""
    import asyncio
    import signal
    import socket
    import time

    port, admin = free_port(), free_port()
    proc = spawn(two_workers(port, admin, origin, tmp_path), "orphans")
    await wait_listening(proc, port)
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(timeout=5)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return  # nobody listens any more: the workers are gone
        await asyncio.sleep(0.1)
    raise AssertionError("worker processes outlived their killed parent")
