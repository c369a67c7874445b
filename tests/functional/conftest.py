"""Functional test harness: the real origin stub and the real proxy on loopback ports.

Both run in the test's event loop (pytest-aiohttp's `aiohttp_server`) with one
shared fake clock, so tests move time with `clock.advance(seconds)` instead of
sleeping. Tests talk to the proxy over real sockets with their own
ClientSession (no auto-decompression, no cookie jar).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from origin_stub.app import create_app as create_origin
from proxy.config import CacheConfig, Config, OriginConfig, TierConfig
from proxy.front import PublicServer, serve_public
from proxy.node import Node

START = 1_800_000_000.0


class FakeClock:
    """A wall clock that only moves when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Origin:
    """The running origin stub and its test-support endpoints."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.url = str(server.make_url("")).rstrip("/")

    async def hits(self, path: str | None = None) -> int:
        query = {"path": path} if path else {}
        async with self.session.get(self.url + "/__hits", params=query) as resp:
            data = await resp.json()
        return int(data["count"] if path else data["total"])

    async def fault(self, path: str, **params: Any) -> None:
        """Make `path` fail (status=503 by default; mode="reset"; ms=delay) until cleared."""
        query = {"path": path, **{k: str(v) for k, v in params.items()}}
        async with self.session.post(self.url + "/__fault", params=query) as resp:
            assert resp.status == 200, await resp.text()

    async def clear_faults(self) -> None:
        async with self.session.delete(self.url + "/__fault") as resp:
            assert resp.status == 200

    async def requests(self, path: str) -> list[dict[str, Any]]:
        async with self.session.get(self.url + "/__requests", params={"path": path}) as resp:
            return list(await resp.json())


class ProxyServer:
    """An open Node and its public front, as production runs them (proxy.front)."""

    def __init__(self, node: Node, listener: PublicServer) -> None:
        self.node = node
        self.listener = listener
        self.host = "127.0.0.1"
        self.port = listener.port
        self.closed = False

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.listener.close()
            await self.node.__aexit__(None, None, None)


async def open_proxy(cfg: Config, clock: Callable[[], float], port: int = 0) -> ProxyServer:
    """A Node for cfg and its public front on 127.0.0.1:port (0: any free port)."""
    node = await Node(cfg, clock).__aenter__()
    try:
        return ProxyServer(node, await serve_public(node, "127.0.0.1", port))
    except BaseException:
        await node.__aexit__(None, None, None)
        raise


class Proxy:
    """A running proxy and a client session pointed at it."""

    def __init__(self, server: ProxyServer, session: aiohttp.ClientSession, cfg: Config) -> None:
        self.server = server
        self.session = session
        self.cfg = cfg
        self.url = f"http://127.0.0.1:{server.port}"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.session.request(method, self.url + path, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> tuple[aiohttp.ClientResponse, bytes]:
        async with self.session.get(self.url + path, **kwargs) as resp:
            body = await resp.read()
        return resp, body


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
    ) as s:
        yield s


@pytest.fixture
async def origin(aiohttp_server: Any, clock: FakeClock, session: aiohttp.ClientSession) -> Origin:
    server = await aiohttp_server(create_origin(clock))
    return Origin(server, session)


def make_config(origin_url: str, cache_dir: Path, **overrides: Any) -> Config:
    """A test config: small budgets, the given origin, L2 in a temporary directory."""
    cfg = Config(
        name="edge-test",
        # host_header "client": the origin sees, and keys use, the Host the test sends, so tests
        # can name entries by host ("cdn.example"); the default ("origin") has its own tests.
        origin=OriginConfig(url=origin_url, connect_timeout=2.0, read_timeout=2.0, host_header="client"),
        cache=CacheConfig(
            dir=str(cache_dir),
            max_object_size=1024 * 1024,
            l1=TierConfig(budget=8 * 1024 * 1024),
            l2=TierConfig(budget=64 * 1024 * 1024),
        ),
    )
    return replace(cfg, **overrides)


ProxyFactory = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy(
    clock: FakeClock, session: aiohttp.ClientSession, tmp_path: Path, origin: Origin
) -> AsyncIterator[ProxyFactory]:
    """Start a proxy in front of the origin stub; keyword arguments replace Config fields."""
    servers: list[ProxyServer] = []

    async def start(**overrides: Any) -> Proxy:
        origin_url = overrides.pop("origin_url", origin.url)
        cfg = make_config(origin_url, tmp_path / "l2", **overrides)
        server = await open_proxy(cfg, clock)
        servers.append(server)
        return Proxy(server, session, cfg)

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def proxy(start_proxy: ProxyFactory) -> Proxy:
    return await start_proxy()


def cache_status(resp: aiohttp.ClientResponse) -> str:
    """This node's Cache-Status member (the last one)."""
    return resp.headers.get("Cache-Status", "").rsplit(",", 1)[-1].strip()


def decode_json(body: bytes) -> Any:
    return json.loads(body.decode())


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes a connecting socket's local port from (Linux; else a default)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, for a server a test starts (bound, closed again).

    Drawn from below the ephemeral range: a port the kernel picked with bind(0) is one it may
    give any outgoing connection (the proxy's to its origin, a test's client) before the server
    binds it, and the server then fails with "address in use". No connect takes a port outside
    that range. Never the same port twice in a session. Falls back to bind(0) if none is free.
    """
    low, _ = _ephemeral_ports()
    candidates = range(max(1024, low - 12000), low)
    for _ in range(200 if candidates else 0):
        port = random.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def raw_exchange(host: str, port: int, data: bytes, *, timeout: float = 3.0) -> bytes:
    """Write raw bytes to host:port and read until the peer closes (or `timeout` passes)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        chunks: list[bytes] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (remaining := deadline - loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), remaining)
            except (TimeoutError, ConnectionError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def raw_status(response: bytes) -> int:
    """The status code of a raw HTTP/1.x response (0 if there is no status line)."""
    parts = response.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return 0
    return int(parts[1])


def logged_header(record: dict[str, Any], name: str) -> list[str]:
    """Values of one header (case-insensitive) in an origin request-log record."""
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


# What a ScriptedOrigin does for one request: write these bytes; write the pieces in order,
# sleeping for each number (seconds) and waiting for each event between them; close the
# connection without a byte; or read the request and never answer.
Script = bytes | Sequence[bytes | float | asyncio.Event] | Literal["close", "hang"]


class ScriptedOrigin:
    """A raw-socket origin: the n-th request gets scripts[n] (the last one repeats), byte for byte.

    Counts accepted connections, so a test can tell whether the proxy reused one.
    """

    def __init__(self, scripts: Sequence[Script]) -> None:
        self.scripts = scripts
        self.requests: list[str] = []
        self.accepts = 0
        self.server: asyncio.Server | None = None
        self.url = ""
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> ScriptedOrigin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.accepts += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests.append(head.decode("latin-1"))
                script = self.scripts[min(len(self.requests), len(self.scripts)) - 1]
                if script == "close":
                    return
                if script == "hang":
                    await asyncio.sleep(3600)
                pieces = [script] if isinstance(script, bytes) else script
                for piece in pieces:
                    if isinstance(piece, bytes):
                        writer.write(piece)
                        await writer.drain()
                    elif isinstance(piece, asyncio.Event):
                        await piece.wait()
                    else:
                        await asyncio.sleep(float(piece))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.tasks.discard(task)

    def sent(self, index: int, name: str) -> list[str]:
        """Values of header `name` in request `index`."""
        lines = self.requests[index].split("\r\n")[1:]
        return [
            line.split(":", 1)[1].strip() for line in lines if line.lower().startswith(name.lower() + ":")
        ]

    def method(self, index: int) -> str:
        return self.requests[index].split(" ", 1)[0]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.server.wait_closed()


StartScripted = Callable[[Sequence[Script]], Awaitable[ScriptedOrigin]]


@pytest.fixture
async def scripted_origin() -> AsyncIterator[StartScripted]:
    started: list[ScriptedOrigin] = []

    async def start(scripts: Sequence[Script]) -> ScriptedOrigin:
        started.append(await ScriptedOrigin(scripts).start())
        return started[-1]

    yield start
    for origin in started:
        await origin.close()
