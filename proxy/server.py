"""Starting the public listener: the lean hit front (fastpath.py) before aiohttp's protocol.

Used by the command line and by the tests, so the tests exercise exactly what
runs in production. `reuse_port` lets several worker processes share the port.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from aiohttp import web

from proxy.app import CONFIG_KEY, ENGINE_KEY
from proxy.fastpath import FastContext, FastPathProtocol
from proxy.routing import HEALTH_PATH

# Seconds a request in progress may take to finish once the listener closes.
SHUTDOWN_TIMEOUT = 10.0


@dataclass
class PublicListener:
    """A running public listener; `close()` stops it and the app's resources."""

    runner: web.AppRunner
    server: asyncio.Server
    front: FastContext

    @property
    def port(self) -> int:
        sock = self.server.sockets[0]
        return int(sock.getsockname()[1])

    async def close(self) -> None:
        self.server.close()
        await self.front.shutdown(SHUTDOWN_TIMEOUT)  # connections the lean front answers
        await self.runner.shutdown()  # connections aiohttp took over
        await self.runner.cleanup()  # the app's cleanup contexts (queue drain, files)
        await self.server.wait_closed()


async def start_public(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False
) -> PublicListener:
    """Set the app up (its resources start here) and listen on host:port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    cfg = app[CONFIG_KEY]
    aiohttp_protocol = runner.server
    assert aiohttp_protocol is not None
    ctx = FastContext(
        engine=app[ENGINE_KEY],
        cfg=cfg,
        aiohttp_protocol=aiohttp_protocol,
        health_path=HEALTH_PATH.encode(),
        name=cfg.name.encode(),
        access_log=cfg.log.access_log,
    )
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            lambda: FastPathProtocol(ctx),
            host.strip("[]") or None,
            port,
            reuse_address=True,
            reuse_port=reuse_port,
            backlog=1024,
            family=socket.AF_UNSPEC,
        )
    except BaseException:
        await runner.cleanup()
        raise
    return PublicListener(runner, server, ctx)
