"""Command line: ``python -m origin_stub --listen HOST:PORT [--config FILE]`` (also ``minicdn origin``).

The address comes from --listen, else MINICDN_ORIGIN_STUB__LISTEN, else the
config file's ``origin_stub.listen`` (--config or MINICDN_CONFIG), else 127.0.0.1:8081.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from origin_stub.app import create_app

DEFAULT_LISTEN = "127.0.0.1:8081"


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → (host, port); port 0 picks a free one."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"listen address must be HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def listen_from_config(path: str) -> str | None:
    """The ``origin_stub.listen`` value of a YAML config file, if it has one."""
    data: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    section = data.get("origin_stub")
    if isinstance(section, dict) and section.get("listen") is not None:
        return str(section["listen"])
    flat = data.get("origin_stub.listen")
    return None if flat is None else str(flat)


def build_parser(prog: str = "python -m origin_stub") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Origin server with routes named after HTTP caching behaviours.",
    )
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help=f"address to listen on (default {DEFAULT_LISTEN}; port 0 = any)"
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML config file; its origin_stub.listen is the default address"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    return parser


def _display_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(host: str, port: int, *, access_log: bool = False) -> None:
    """Run the stub until SIGINT/SIGTERM (or cancellation)."""
    runner = web.AppRunner(
        create_app(),
        handler_cancellation=True,  # stop delayed handlers when the client goes away
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = port
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                bound_port = int(address[1])
                break
        print(f"origin stub listening on http://{_display_host(host)}:{bound_port}", flush=True)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        try:
            await stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None, prog: str = "python -m origin_stub") -> int:
    """Entry point; returns the process exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    listen = args.listen or os.environ.get("MINICDN_ORIGIN_STUB__LISTEN") or None
    config = args.config or os.environ.get("MINICDN_CONFIG") or None
    if listen is None and config:
        try:
            listen = listen_from_config(config)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            parser.error(f"cannot read --config: {exc}")
    try:
        host, port = parse_listen(listen or DEFAULT_LISTEN)
    except ValueError as exc:
        parser.error(str(exc))
    if args.access_log:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        asyncio.run(serve(host, port, access_log=args.access_log))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"origin stub: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0
