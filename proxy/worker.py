"""One worker process of a supervised node: `python -m proxy.worker`, started by proxy/supervisor.py.

What must live here: a worker's life. It inherits the listening sockets its
supervisor bound (so every worker accepts on the one public port, and a
second node cannot take it), reads its config from the supervisor's first
message, opens its Node with the box link in it (proxy/box.py), serves the
public front and the admin API on those sockets, says "ready", and runs until
the supervisor says "drain" (reload, shutdown) or goes away, or SIGINT /
SIGTERM arrive. Draining stops accepting and lets requests in progress finish
within `drain_timeout` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import gc
import importlib
import json
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from proxy import log_output, stats
from proxy.admin import create_admin_app
from proxy.box import BoxClient
from proxy.config import Config
from proxy.front import PublicServer, serve_public
from proxy.log_output import flush_periodically
from proxy.node import Node, NodeFactory
from proxy.purge import PurgeRequestError, purge_fields, purge_from_fields

log = logging.getLogger("proxy.worker")


def read_start(channel: socket.socket) -> dict[str, Any]:
    """The supervisor's first message, read without consuming anything after its newline."""
    data = b""
    while b"\n" not in data:
        peeked = channel.recv(1 << 20, socket.MSG_PEEK)
        if not peeked:
            raise ConnectionError("the supervisor closed the channel before starting this worker")
        end = peeked.find(b"\n")
        data += channel.recv(end + 1 if end >= 0 else len(peeked))
    message = json.loads(data)
    if not isinstance(message, dict) or message.get("op") != "start":
        raise ValueError("the supervisor's first message is not a start message")
    return message


def start_message(cfg: Config, factory: NodeFactory, index: int, generation: int) -> dict[str, Any]:
    """What a worker is told first: its config (as the supervisor validated it), node factory and place."""
    return {
        "op": "start",
        "config": base64.b64encode(pickle.dumps(cfg)).decode("ascii"),
        "factory": f"{factory.__module__}:{factory.__qualname__}",
        "index": index,
        "generation": generation,
    }


# Young objects a collection waits for (CPython's default is 700). A worker allocates and
# drops a few hundred objects per request, and every stored response it keeps survives
# into the older generations, whose collections walk the whole cache in memory: with the
# defaults, collecting took ~40 µs per stored response on a cold fill and ~7 µs per
# revalidation (bench/miss_path.py with a gc callback timing each collection); with these,
# ~10 µs and ~1 µs. Nothing here depends on cycles being freed quickly.
GC_THRESHOLDS = (7000, 10, 10)


def tune_gc() -> None:
    """Once the node is up: what exists now lives as long as the process (gc.freeze keeps it out
    of every later collection), and collections come less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def resolve(name: str) -> NodeFactory:
    module, _, qualname = name.partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]


async def run(
    cfg: Config,
    factory: NodeFactory,
    channel: socket.socket,
    public: list[socket.socket],
    admin: socket.socket | None,
    index: int,
) -> int:
    box = BoxClient(channel, index)
    await box.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP is the supervisor's (reload); one sent to the whole process group must not end a worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    flusher = asyncio.create_task(flush_periodically())  # log lines reach stderr within 0.2 s
    try:
        async with factory(cfg, time.time, box) as node:
            box.snapshot = lambda: stats.snapshot(node)
            # Readiness gates are the box's: passed in any worker, before or after this one started.
            box.checks_passed.update(node.readiness.passed)
            node.readiness.passed = box.checks_passed
            node.readiness.on_first_pass = box.tell_passed
            # Purges the purge log refused (a full disk) reach the box's other workers through it.
            purges_from_box: set[asyncio.Task[object]] = set()
            node.purger.on_unlogged = lambda request: box.send({"op": "purge", **purge_fields(request)})
            box.on_purge = functools.partial(_purge_from_box, node, purges_from_box)
            servers = [await serve_public(node, sock=sock) for sock in public]
            adopted: dict[int, list[PublicServer]] = {}
            box.places = _places(node, servers, adopted)
            runner: web.AppRunner | None = None
            if admin is not None:
                runner = web.AppRunner(create_admin_app(node), access_log=None, handle_signals=False)
                await runner.setup()
                await web.SockSite(runner, admin).start()
            tune_gc()
            box.send({"op": "ready"})
            waits = [asyncio.create_task(e.wait()) for e in (stop, box.drain, box.lost)]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()
            # Drain: stop accepting (the socket stays open in the supervisor and the other
            # workers, so no client is refused), finish what is in progress, then close.
            box.places = None
            for place in adopted.values():
                servers += place
            await asyncio.gather(*(server.close(cfg.drain_timeout) for server in servers))
            if runner is not None:
                await runner.cleanup()
            # What this worker counted, for the box to carry on after it exits (proxy/box.py).
            box.send({"op": "final", "stats": await stats.snapshot(node)})
    finally:
        await box.close()
        flusher.cancel()
        for handler in logging.getLogger().handlers:
            handler.flush()
    return 0


def _purge_from_box(node: Node, running: set[asyncio.Task[object]], message: dict[str, Any]) -> None:
    """Carry out a purge another worker of the box could not log (a full disk), as if from the log."""
    try:
        request = purge_from_fields(message)
    except PurgeRequestError as exc:
        log.warning("box: ignoring a malformed purge from another worker: %s", exc)
        return
    by = "another worker of the box (its purge log could not be written)"
    task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
        node.purger.purge(request, propagate=False, by=by, from_box=True)
    )
    running.add(task)
    task.add_done_callback(running.discard)


def _places(
    node: Node, servers: list[PublicServer], adopted: dict[int, list[PublicServer]]
) -> Callable[[str, int, list[int]], None]:
    """What the worker does when the supervisor has it adopt or release another worker's place.

    While a worker's place is empty (it died; its replacement is not ready yet) the kernel
    still hands that place's sockets their share of new connections, and nobody would
    accept them: this worker accepts on them meanwhile (its own dups of the fds it inherited).
    Released, it stops accepting there; what it accepted is served, and drained at exit.
    In the order the supervisor sent them (one lock, first come first served).
    """
    lock = asyncio.Lock()
    tasks: set[asyncio.Task[None]] = set()

    async def apply(op: str, place: int, fds: list[int]) -> None:
        async with lock:
            if op == "release":
                for server in adopted.pop(place, []):
                    server.server.close()  # no more accepting there; its connections go on
                    servers.append(server)  # drained with the worker's own
                return
            if place in adopted:
                return
            try:
                adopted[place] = [
                    await serve_public(node, sock=socket.socket(fileno=os.dup(fd))) for fd in fds
                ]
            except OSError as exc:
                log.error("cannot accept for worker %d's place: %s", place, exc)
                return
            log.info("accepting for worker %d's place until it is back", place)

    def places(op: str, place: int, fds: list[int]) -> None:
        task = asyncio.get_running_loop().create_task(apply(op, place, fds))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return places


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.worker", description="one worker of a supervised node"
    )
    parser.add_argument("--channel", type=int, required=True, help="fd of the supervisor's socketpair end")
    parser.add_argument(
        "--public", required=True, help="fds of the public listening sockets, comma-separated"
    )
    parser.add_argument("--admin", type=int, help="fd of the admin listening socket")
    args = parser.parse_args(argv)
    channel = socket.socket(fileno=args.channel)
    start = read_start(channel)
    cfg = pickle.loads(base64.b64decode(start["config"]))
    assert isinstance(cfg, Config)
    factory = resolve(str(start["factory"]))
    log_output.install(cfg.log.level, cfg.log.format, worker=int(start["index"]))
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    public = [socket.socket(fileno=int(fd)) for fd in args.public.split(",")]
    admin = socket.socket(fileno=args.admin) if args.admin is not None else None
    try:
        return asyncio.run(run(cfg, factory, channel, public, admin, int(start["index"])))
    except Exception:
        log.exception("worker %s failed", start.get("index"))
        return 1


if __name__ == "__main__":
    sys.exit(main())
