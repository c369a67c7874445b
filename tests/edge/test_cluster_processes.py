"""A cluster of real processes (`minicdn cluster`): one origin fetch per object, purges that reach
every edge, an edge restarted after missing a purge, and a killed owner (issue: edges)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench.cluster import free_block, stop_cluster, wait_ready
from edge.hashing import owner
from proxy.purge import PurgeRequest
from tests.edge.conftest import RedisServer
from tests.functional.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


class Cluster:
    def __init__(self, workdir: Path, redis_url: str) -> None:
        self.workdir = workdir
        self.base = free_block(3)
        self.origin = f"http://127.0.0.1:{free_port()}"
        cmd = [
            sys.executable, "-c", "from edge.cli import main; raise SystemExit(main())", "cluster",
            "--edges", "3", "--port", str(self.base), "--origin-port", self.origin.rsplit(":", 1)[1],
            "--redis-url", redis_url, "--dir", str(workdir),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_ready(self.proc)
        self.edges = [f"http://127.0.0.1:{self.base + i}" for i in range(3)]
        self.admins = [f"http://127.0.0.1:{self.base + 1000 + i}" for i in range(3)]

    def edge_pid(self, i: int) -> int:
        out = subprocess.run(["pgrep", "-f", f"edge-{i + 1}.json"], capture_output=True, text=True)
        return int(out.stdout.split()[0])


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster", redis_url)
    try:
        yield c
    finally:
        stop_cluster(c.proc)


async def hits(session: aiohttp.ClientSession, origin: str) -> int:
    async with session.get(origin + "/__hits") as r:
        return int((await r.json())["total"])


async def test_processes_one_fetch_per_object_and_purge_reaching_every_edge(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    async with aiohttp.ClientSession() as s:
        for edge in cluster.edges:
            async with s.get(edge + "/max-age/600?x=1") as r:
                assert r.status == 200
        assert await hits(s, cluster.origin) == 1
        async with s.post(cluster.admins[0] + "/purge", json={"url": "/max-age/600?x=1"}) as r:
            assert r.status == 200
        started = time.monotonic()
        pending = set(cluster.edges[1:])
        while pending and time.monotonic() - started < 2:
            for edge in list(pending):
                async with s.get(edge + "/max-age/600?x=1", headers={"Cache-Control": "only-if-cached"}) as r:
                    if r.status == 504:
                        pending.discard(edge)
        assert not pending
        assert time.monotonic() - started < 0.5


async def test_processes_restarted_edge_applies_the_purge_it_missed(cluster: Cluster) -> None:
    path = "/max-age/600?y=1"
    async with aiohttp.ClientSession() as s:
        for edge in cluster.edges:
            async with s.get(edge + path) as r:
                await r.read()
        pid = cluster.edge_pid(2)
        os.kill(pid, signal.SIGTERM)  # edge-3 goes down (its L2 keeps the object)
        for _ in range(100):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 0)
                await asyncio.sleep(0.05)
                continue
            break
        async with s.post(cluster.admins[0] + "/purge", json={"url": path}) as r:
            assert r.status == 200
        log = (cluster.workdir / "edge-3-restart.log").open("wb")
        restarted = subprocess.Popen(
            [sys.executable, "-m", "edge", "--config", str(cluster.workdir / "edge-3.json")],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(cluster.edges[2] + "/.well-known/minicdn/health") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
            async with s.get(cluster.edges[2] + path, headers={"Cache-Control": "only-if-cached"}) as r:
                assert r.status == 504  # purged before it served its first request
        finally:
            restarted.terminate()
            restarted.wait(timeout=10)


async def test_processes_killing_the_owner_does_not_fail_requests(cluster: Cluster) -> None:
    members = [(f"edge-{i + 1}", 1.0) for i in range(3)]
    authority = cluster.origin.removeprefix("http://")
    paths = [
        p
        for p in (f"/max-age/600?z={i}" for i in range(200))
        if owner(f"|http://{authority}{p}", members) == "edge-2"
    ]
    os.kill(cluster.edge_pid(1), signal.SIGKILL)  # the owner of these keys dies without warning
    async with aiohttp.ClientSession() as s:
        for path in paths[:10]:
            async with s.get(cluster.edges[0] + path) as r:
                assert r.status == 200


async def test_a_purge_from_the_stream_is_applied_once_per_box(
    start_edges: Any, redis_url: str, origin: Any, tmp_path: Path
) -> None:
    """An edge with two workers applies a purge from the stream once (one consumer per box)."""
    port, admin, other_port = free_port(), free_port(), free_port()
    peers = f"edge-a=http://127.0.0.1:{port},edge-b=http://127.0.0.1:{other_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINICDN_")}
    env.update(MINICDN_NAME="edge-a", MINICDN_REDIS_URL=redis_url, MINICDN_PEERS=peers)
    cmd = [
        sys.executable, "-m", "edge", "--workers", "2", "--listen", f"127.0.0.1:{port}",
        "--admin-listen", f"127.0.0.1:{admin}", "--origin", origin.url, "--cache-dir", str(tmp_path / "a"),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{admin}/stats") as r:
                        if r.status == 200 and (await r.json()).get("workers") == 2:
                            break
                assert time.monotonic() < deadline and proc.poll() is None, "edge-a did not start"
                await asyncio.sleep(0.2)
            (edge_b,) = await start_edges(
                1, redis_url=redis_url, names=["edge-b"], ports=[other_port], peers=[
                    {"name": "edge-a", "url": f"http://127.0.0.1:{port}"},
                    {"name": "edge-b", "url": f"http://127.0.0.1:{other_port}"},
                ],
            )  # fmt: skip
            await edge_b.purger.purge(PurgeRequest("url", ("/max-age/600",)))
            applied = 0
            while time.monotonic() < deadline + 15:
                async with s.get(f"http://127.0.0.1:{admin}/stats") as r:
                    stream = (await r.json())["edge"].get("purge_stream", {})
                applied = stream.get("applied_from_stream", 0)
                if applied:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # time for a second worker to apply it too, if it would
            async with s.get(f"http://127.0.0.1:{admin}/stats") as r:
                stream = (await r.json())["edge"]["purge_stream"]
            assert stream["applied_from_stream"] == 1, stream
    finally:
        proc.terminate()
        proc.wait(timeout=30)
