"""Cluster test harness: a real redis-server, the real origin stub, and real edges on loopback.

Edges run in the test's event loop on pre-chosen ports (so each knows the
others' URLs before it starts) with real sockets between them; tests that
must kill or restart a process start edges as subprocesses instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis as redis_sync

from edge.config import cluster_config
from edge.node import EdgeNode
from proxy.config import AdminConfig, CacheConfig, Config, OriginConfig, TierConfig
from proxy.front import PublicServer, serve_public
from proxy.node import Node
from proxy.purger import Purger
from proxy.storage.tiered import TieredStorage
from tests.functional.conftest import FakeClock, Origin, clock, free_port, origin, session

# The functional suite's fixtures, shared here (imported fixtures register in this conftest).
__all__ = ["clock", "origin", "session"]


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; .ci/run does this)")
    return found


class RedisServer:
    """A throwaway redis-server on a free loopback port (no persistence)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis_sync.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis_sync.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            self.proc = None

    def flush(self) -> None:
        redis_sync.Redis(port=self.port).flushall()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()  # a test may have stopped it
    redis_server.flush()
    return redis_server.url


class EdgeServer:
    """An in-process edge as `python -m edge` runs it: a Node joined to the cluster, and its front."""

    def __init__(self, cfg: Config, clock: Callable[[], float] | None) -> None:
        self.cfg = cfg
        self.edge = EdgeNode(cfg, cluster_config(cfg))
        self.node = Node(cfg, clock, router=self.edge.router) if clock else Node(cfg, router=self.edge.router)
        self.stack = contextlib.AsyncExitStack()
        self.listener: PublicServer | None = None
        self.port = 0
        self.closed = False

    async def start(self, port: int) -> None:
        await self.stack.enter_async_context(self.node)
        await self.stack.enter_async_context(self.edge.joined(self.node))
        self.listener = await serve_public(self.node, "127.0.0.1", port)
        self.port = self.listener.port

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.listener is not None:
                await self.listener.close()
            await self.stack.aclose()


class Edge:
    """A running in-process edge and a client for it."""

    def __init__(self, server: EdgeServer, session: aiohttp.ClientSession, cfg: Config) -> None:
        self.server = server
        self.session = session
        self.cfg = cfg
        self.url = f"http://127.0.0.1:{server.port}"

    @property
    def node(self) -> EdgeNode:
        return self.server.edge

    @property
    def purger(self) -> Purger:
        return self.server.node.purger

    @property
    def storage(self) -> TieredStorage:
        return self.server.node.storage

    async def get(self, path: str, **kwargs: Any) -> tuple[aiohttp.ClientResponse, bytes]:
        headers = {"Host": "cdn.example", **kwargs.pop("headers", {})}
        async with self.session.get(self.url + path, headers=headers, **kwargs) as resp:
            return resp, await resp.read()


def edge_config(
    name: str, port: int, origin_url: str, cache_dir: Path, cluster: dict[str, Any], **overrides: Any
) -> Config:
    cfg = Config(
        name=name,
        listen=f"127.0.0.1:{port}",
        origin=OriginConfig(url=origin_url, connect_timeout=1.0, read_timeout=3.0),
        cache=CacheConfig(
            dir=str(cache_dir), l1=TierConfig(budget=8 * 1024 * 1024), l2=TierConfig(budget=64 * 1024 * 1024)
        ),
        admin=AdminConfig(enabled=False),
        cluster={"enabled": True, "health_interval": 0.2, "heartbeat_seconds": 0.5, **cluster},
    )
    return replace(cfg, **overrides)


StartEdges = Callable[..., Awaitable[list[Edge]]]


@pytest.fixture
async def start_edges(
    session: aiohttp.ClientSession, tmp_path: Path, origin: Origin, clock: FakeClock
) -> AsyncIterator[StartEdges]:
    """Start n edges (edge-1..edge-n) that know each other, in front of the origin stub.

    `config`: Config fields every edge gets (e.g. rules); the other keywords are cluster settings.
    """
    servers: list[EdgeServer] = []

    async def start(
        n: int,
        *,
        redis_url: str | None = None,
        origin_url: str | None = None,
        ports: list[int] | None = None,
        names: list[str] | None = None,
        use_clock: bool = False,
        config: dict[str, Any] | None = None,
        **cluster: Any,
    ) -> list[Edge]:
        ports = ports or [free_port() for _ in range(n)]
        names = names or [f"edge-{i + 1}" for i in range(n)]
        peers = [{"name": nm, "url": f"http://127.0.0.1:{p}"} for nm, p in zip(names, ports, strict=True)]
        edges = []
        for nm, port in zip(names, ports, strict=True):
            settings: dict[str, Any] = {"peers": peers, **cluster}
            if redis_url:
                settings["redis_url"] = redis_url
            cfg = edge_config(nm, port, origin_url or origin.url, tmp_path / nm, settings, **(config or {}))
            server = EdgeServer(cfg, clock if use_clock else None)
            servers.append(server)
            await server.start(port)
            edges.append(Edge(server, session, cfg))
        # Let every edge see every other as healthy before the test starts.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(
            e.node.membership.available(nm) for e in edges for nm in names
        ):
            await asyncio.sleep(0.02)
        return edges

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def big_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
