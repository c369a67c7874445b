"""Benchmark: memory of a proxy serving large bodies to slow readers (issue 12 row 6).

Starts the stub origin and `python -m proxy --workers 1` on loopback, then opens `--clients`
connections at once (default 100), each asking a distinct chunked (unknown-length) object of
`--size` MiB (default 8, within `--max-object-size`, default 16 MiB, so each may be stored) and
reading it slowly (64 KiB every 20 ms). While they read, it samples the proxy's RSS. It runs
the same twice: with `cache.stream_above` at its default (1 MiB: the body is passed on as it
arrives and spooled to disk for the cache) and with it at `max_object_size` (the earlier
behaviour: each body read whole before the client gets its first byte), and prints the peak
RSS growth of each, the time to the first byte and whether every body arrived intact.

    python bench/large_bodies.py                      # about a minute
    python bench/large_bodies.py --size 50 --max-object-size 10   # the issue's case: not stored
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.procs import rss_and_fds  # noqa: E402
from origin_stub.behaviours import pattern  # noqa: E402

MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def slow_read(url: str, size: int, first: list[float], ok: list[bool]) -> None:
    started = time.monotonic()
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        parts = []
        got_first = False
        while True:
            data = await resp.content.read(64 * 1024)
            if not data:
                break
            if not got_first:
                first.append(time.monotonic() - started)
                got_first = True
            parts.append(data)
            await asyncio.sleep(0.02)
        ok.append(b"".join(parts) == pattern(size))


async def one_run(args: argparse.Namespace, stream_above: str) -> dict[str, float]:
    origin_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        cfg = Path(tmp) / "edge.json"
        cache = {
            "max_object_size": f"{args.max_object_size}MiB",
            "stream_above": stream_above,
            "l1": {"budget": "16MiB"},
        }
        cfg.write_text(json.dumps({"log": {"level": "WARNING", "access_log": False}, "cache": cache}))
        origin = subprocess.Popen(
            [sys.executable, "-m", "origin_stub", "--listen", f"127.0.0.1:{origin_port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        edge = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--workers", "1", "--config", str(cfg),
             "--listen", f"127.0.0.1:{port}", "--origin", f"http://127.0.0.1:{origin_port}",
             "--cache-dir", tmp],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as s:
                for _ in range(150):
                    with contextlib.suppress(aiohttp.ClientError):
                        async with s.get(base + "/.well-known/minicdn/health") as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)
            before, _ = rss_and_fds(edge.pid)
            size = args.size * MIB
            first: list[float] = []
            ok: list[bool] = []
            readers = asyncio.gather(
                *(
                    slow_read(f"{base}/bytes/{size}?chunked=1&k={stream_above}-{i}", size, first, ok)
                    for i in range(args.clients)
                )
            )
            peak = before
            while not readers.done():
                peak = max(peak, rss_and_fds(edge.pid)[0])
                await asyncio.sleep(0.1)
            await readers
            return {
                "peak_growth_mib": (peak - before) / MIB,
                "first_byte_ms": statistics.median(first) * 1000,
                "intact": float(all(ok) and len(ok) == args.clients),
            }
        finally:
            for proc in (edge, origin):
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)


async def main_async(args: argparse.Namespace) -> int:
    whole = f"{args.max_object_size}MiB"
    rows = [("stream_above 1MiB (spooled)", "1MiB"), ("read whole first (before)", whole)]
    results = []
    for label, value in rows:
        results.append((label, await one_run(args, value)))
    print(
        f"{args.clients} slow readers of distinct {args.size} MiB chunked objects, one worker, "
        f"cache.max_object_size {args.max_object_size} MiB"
    )
    print(f"{'':32} {'peak RSS growth':>16} {'first byte (median)':>20} {'intact':>7}")
    for label, r in results:
        growth, first, intact = r["peak_growth_mib"], r["first_byte_ms"], "yes" if r["intact"] else "NO"
        print(f"{label:32} {growth:>12.0f} MiB {first:>17.0f} ms {intact:>7}")
    ratio = results[1][1]["peak_growth_mib"] / max(results[0][1]["peak_growth_mib"], 1)
    print(f"peak growth, before / after: {ratio:.1f}x")
    return 0 if all(r["intact"] for _, r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/large_bodies.py", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--size", type=int, default=8, help="MiB per object (8)")
    parser.add_argument("--max-object-size", type=int, default=16, help="MiB (16: the objects are stored)")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
