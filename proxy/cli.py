"""The `minicdn` command line: run an edge, the stub origin, or both for a demo.

`minicdn serve` (also `python -m proxy`) runs one edge; `minicdn origin`
(also `python -m origin_stub`) runs the stub origin; `minicdn up` runs both in
one process, the edge in front of the stub, for a first look.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Sequence

from aiohttp import web

from proxy.app import create_app
from proxy.config import Config, ConfigError, load_config


def _serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config file (default: the project's config.yaml)")
    parser.add_argument("--listen", help="HOST:PORT to listen on (overrides the config)")
    parser.add_argument("--origin", help="origin URL, e.g. http://127.0.0.1:8081 (overrides the config)")
    parser.add_argument("--cache-dir", help="directory of the L2 disk tier (overrides the config)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minicdn", description="HTTP caching reverse proxy and mini-CDN")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_args(sub.add_parser("serve", help="run one edge node in front of the origin"))
    up = sub.add_parser("up", help="run the stub origin and one edge in front of it (demo)")
    _serve_args(up)
    up.add_argument("--origin-listen", default="127.0.0.1:8081", help="HOST:PORT of the stub origin")
    origin = sub.add_parser("origin", help="run the stub origin")
    origin.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8081)")
    origin.add_argument("--config", help="config file")
    return parser


def load(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    return cfg.with_overrides(listen=args.listen, origin=args.origin, cache_dir=args.cache_dir)


def setup_logging(cfg: Config) -> None:
    logging.basicConfig(
        level=cfg.log.level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


async def _run_forever(runners: list[web.AppRunner]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


async def _start(app: web.Application, listen: str) -> web.AppRunner:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True)
    await site.start()
    return runner


async def serve(cfg: Config, origin_listen: str | None = None) -> None:
    runners: list[web.AppRunner] = []
    if origin_listen is not None:
        from origin_stub.app import create_app as create_origin

        runners.append(await _start(create_origin(), origin_listen))
        print(f"origin stub listening on http://{origin_listen}", flush=True)
    runners.append(await _start(create_app(cfg, time.time), cfg.listen))
    print(
        f"edge {cfg.name} listening on http://{cfg.listen} -> origin {cfg.origin.url} "
        f"(L2 in {cfg.cache.dir}); Ctrl-C stops",
        flush=True,
    )
    await _run_forever(runners)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "origin":
        from origin_stub.cli import main as origin_main

        forwarded = []
        if args.listen:
            forwarded += ["--listen", args.listen]
        if args.config:
            forwarded += ["--config", args.config]
        return origin_main(forwarded)
    try:
        cfg = load(args)
    except ConfigError as exc:
        print(f"minicdn: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg)
    _install_uvloop()
    origin_listen = None
    if args.command == "up":
        origin_listen = args.origin_listen
        if args.origin is None:
            cfg = cfg.with_overrides(origin=f"http://{origin_listen}")
    try:
        asyncio.run(serve(cfg, origin_listen))
    except OSError as exc:
        print(f"minicdn: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


def proxy_main(argv: Sequence[str] | None = None) -> int:
    """`python -m proxy [--listen ...]`: the same as `minicdn serve`."""
    return main(["serve", *(sys.argv[1:] if argv is None else argv)])
