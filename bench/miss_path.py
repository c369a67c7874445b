"""Micro-benchmark: the Python cost of a miss and of a revalidation, with a real origin but no client socket.

bench/hit_path.py measures what a hit costs; this one measures the requests that go to the origin.
It feeds the real front (proxy/front.py) request heads through a transport that only records what is
written, so the client side costs nothing, while the engine asks a real origin over loopback with the
real origin client: nginx serving static files (as in bench/compare.py), in its own process on the
other CPU, so that its work does not count. The figure is this process's CPU time per request
(time.process_time: user and system, the origin socket's syscalls included), which moves far less
with other people's load than a wrk rate does. Cases:

- miss: 2,000 distinct `no-store` 1 KiB URLs, browser-like heads (bench/compare.py's mk-miss-1k);
- revalidation: 2,000 `max-age=0` + ETag URLs stored first, each request a conditional GET the
  origin answers 304 (mk-reval-1k);
- fill: every request a new key, a cacheable 1 KiB object fetched and stored (mk-fill-1k).

The proxy has compare.py's tiers (L1 512 MiB, L2 2 GiB on disk, written behind), so a fill's cost
includes its L2 write and catalogue row on their threads (until 2026-11-30 evening L2 was off here).

Requests run `--concurrency` at a time (default 16, one connection each), in alternating rounds;
the table shows the median and the minimum.

    python bench/miss_path.py                 # about 30 s
    python bench/miss_path.py --profile miss  # where the time goes (cProfile)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):  # bench/compare.py imports its workload module by name
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench.compare import free_port, nginx_origin_conf, pattern, wait_http  # noqa: E402
from bench.compare_workload import browser_fields  # noqa: E402
from bench.hit_path import CountingTransport, head  # noqa: E402
from proxy.config import CacheConfig, Config, LogConfig, OriginConfig, TierConfig  # noqa: E402
from proxy.front import Connection, FrontContext  # noqa: E402
from proxy.h1 import via_line  # noqa: E402
from proxy.node import Node  # noqa: E402

KEYS = 2000


class RecordingTransport(CountingTransport):
    """hit_path's transport, whose write of a complete answer also wakes the waiter."""

    def __init__(self) -> None:
        super().__init__()
        self.waiter: asyncio.Future[None] | None = None

    def write(self, data: bytes) -> None:
        super().write(data)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.write(b"".join(parts))


def heads_for(path: str, start: int = 0) -> list[bytes]:
    """KEYS browser-like heads, every fourth with a Cookie (as bench/compare.py's)."""
    return [head(f"{path}?k={k}", browser_fields(k % 4 == 3)) for k in range(start, start + KEYS)]


async def drive(
    ctx: FrontContext,
    heads: list[bytes],
    concurrency: int,
    settle: Callable[[], Awaitable[None]] | None = None,
) -> float:
    """CPU microseconds per request for answering every head, `concurrency` connections at once
    (`settle`: awaited after each answer, before the connection's next request)."""
    loop = asyncio.get_running_loop()
    per_conn = [heads[i::concurrency] for i in range(concurrency)]

    async def one_connection(mine: list[bytes]) -> None:
        conn = Connection(ctx)
        transport = RecordingTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        for data in mine:
            transport.waiter = loop.create_future()
            conn.data_received(data)
            await transport.waiter
            while conn.task is not None:  # the task finishes after its last write
                await asyncio.sleep(0)
            if settle is not None:
                await settle()
        conn.connection_lost(None)

    started = time.process_time()
    await asyncio.gather(*(one_connection(mine) for mine in per_conn))
    return (time.process_time() - started) / len(heads) * 1e6


def start_origin(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    for rel in ("nostore/1k", "reval/1k", "static/1k"):
        f = tmp / "www" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(pattern(1024))
    conf = tmp / "origin.conf"
    conf.write_text(nginx_origin_conf(tmp, port, as_root=True))
    log = tmp / "origin.log"
    cmd = ["nginx", "-p", str(tmp), "-e", str(tmp / "origin-error.log"), "-c", str(conf)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", "1", *cmd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    wait_http("origin", port, proc, log, "/__status")
    return proc, port


def proxy_config(origin_port: int, tmp: Path) -> Config:
    return Config(
        origin=replace(OriginConfig(), url=f"http://127.0.0.1:{origin_port}"),
        # The tiers of compare.py's edge (proxy_config): a fill is written behind to L2, and a 304
        # asks whether the disk copy gains anything, as in the mk-fill-1k and mk-reval-1k rows.
        cache=CacheConfig(
            dir=str(tmp / "cache"),
            l1=TierConfig(budget=512 * 1024 * 1024),
            l2=TierConfig(budget=2 * 1024 * 1024 * 1024),
        ),
        log=replace(LogConfig(), access_log=False),
    )


async def prepared_cases(
    ctx: FrontContext, concurrency: int, only: str | None = None
) -> dict[str, Callable[[], list[bytes]]]:
    """The cases by name, each a maker of one round's heads, after the warm-up they need
    (`only`: the warm-up of that case alone)."""
    miss, reval = heads_for("/nostore/1k"), heads_for("/reval/1k")
    if only in (None, CASES[0]):
        await drive(ctx, miss, concurrency)  # warm: every key hit-for-pass, as in wrk's steady state
    if only in (None, CASES[1]):
        await drive(ctx, reval, concurrency)  # stored (stale at once, with its ETag)
    fill_start = [0]

    def fill() -> list[bytes]:
        fill_start[0] += KEYS
        return heads_for("/static/1k", 10_000_000 + fill_start[0])

    return dict(zip(CASES, (lambda: miss, lambda: reval, fill), strict=True))


CASES = ("miss (no-store), 2000 keys", "revalidation (304), 2000 keys", "cold fill (stored), new keys")


def run_counted(case: str, requests: int) -> None:
    """bench/instructions.py's child: the case's warm-up, then `requests` more of it, one at a time.

    One at a time (concurrency 1): with 16 connections the count moved by 5 % between runs, as
    the origin's answers met the event loop in batches of varying size."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        proc, port = start_origin(tmp)
        try:

            async def main() -> None:
                cfg = proxy_config(port, tmp)
                async with Node(cfg, clock=time.time) as node:
                    ctx = FrontContext(node=node, cfg=cfg, via=via_line(cfg.name), access_log=False)
                    make = (await prepared_cases(ctx, 1, only=case))[case]

                    async def written() -> None:
                        await node.storage.drain()
                        await node.purger.flush_rows()

                    # A fill's L2 write and catalogue row are written before the next request: one
                    # write per transaction every time, so the count does not depend on how the writer
                    # threads' batches happened to fall (the same code read 1.12M and 1.75M in two
                    # sessions; settled, two copies of one checkout read 1.80M and 1.82M). It counts
                    # a commit per fill, which under load is shared by ~35 (compare.py's fill row).
                    settle = written if case == CASES[2] else None
                    done = 0
                    while done < requests:
                        heads = make()[: requests - done]
                        await drive(ctx, heads, 1, settle)
                        done += len(heads)

            asyncio.run(main())
        finally:
            proc.terminate()
            proc.wait(10)


async def main_async(args: argparse.Namespace, origin_port: int, tmp: Path) -> int:
    cfg = proxy_config(origin_port, tmp)
    async with Node(cfg, clock=time.time) as node:
        ctx = FrontContext(node=node, cfg=cfg, via=via_line(cfg.name), access_log=False)
        table = await prepared_cases(ctx, args.concurrency)
        if args.profile:
            name = next(n for n in table if n.startswith(args.profile))
            profiler = cProfile.Profile()
            profiler.enable()
            await drive(ctx, table[name](), args.concurrency)
            profiler.disable()
            stats = pstats.Stats(profiler).sort_stats(args.sort)
            stats.print_stats(args.top)
            if args.callees:
                stats.print_callees(args.callees)
            return 0
        results: dict[str, list[float]] = {name: [] for name in table}
        for _ in range(args.rounds):
            for name, make in table.items():
                results[name].append(await drive(ctx, make(), args.concurrency))
        width = max(map(len, results))
        print(f"concurrency {args.concurrency}, {KEYS} requests per round, Python {sys.version.split()[0]}")
        print(f"{'case':<{width}}  CPU µs/request (median of {args.rounds})  min")
        for name, values in results.items():
            print(f"{name:<{width}}  {statistics.median(values):>12.1f}  {min(values):>24.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/miss_path.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--profile", metavar="CASE", help="miss, revalidation or cold: cProfile one case")
    parser.add_argument("--sort", default="tottime", help="with --profile: pstats sort key (e.g. cumulative)")
    parser.add_argument("--top", type=int, default=30, help="with --profile: functions listed")
    parser.add_argument("--callees", metavar="REGEX", help="with --profile: what these call")
    args = parser.parse_args(argv)
    if shutil.which("nginx") is None:
        print("needs nginx (the origin)", file=sys.stderr)
        return 2
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        proc, port = start_origin(tmp)
        try:
            return asyncio.run(main_async(args, port, tmp))
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
