"""Benchmark: a hot key expires under load. How many origin requests per expiry, and what p99?

Starts the stub origin and one edge as subprocesses on loopback, then runs
concurrent clients against one hot URL whose freshness lifetime is short and
whose origin answer is slow, for each scenario:

  herd            coalescing off: every client waiting at expiry goes to the origin
  coalesce        one fetch per expiry, everyone else waits for it
  coalesce+ahead  refresh-ahead renews the key before it expires
  swr             stale-while-revalidate: nobody waits, one background revalidation

Prints a table (origin requests per expiry, client p50 / p99 / max latency, and
how many requests waited for the origin) and writes it as JSON. Every run is
bounded in time and stops what it started.

    python bench/hot_key_expiry.py            # about 40 s
    python bench/hot_key_expiry.py --short    # about 12 s
    python bench/hot_key_expiry.py --workers 2  # the edge with two worker processes: still one per box
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Scenario:
    name: str
    path: str
    fetch: dict[str, object]


@dataclass
class Result:
    scenario: str
    seconds: float
    requests: int
    expiries: float
    origin_requests: int
    origin_per_expiry: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    waited_for_origin: int  # requests slower than half the origin's response time
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str, deadline: float) -> None:
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as resp:
                    await resp.read()
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def load(url: str, clients: int, seconds: float) -> tuple[list[tuple[float, float]], int]:
    """`clients` loops requesting `url` for `seconds`; (start offset, latency) per request."""
    samples: list[tuple[float, float]] = []
    errors = 0
    begin = time.monotonic()
    end = begin + seconds
    timeout = aiohttp.ClientTimeout(total=10)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while (t0 := time.monotonic()) < end:
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            samples.append((t0 - begin, time.monotonic() - t0))

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return samples, errors


async def run_scenario(sc: Scenario, args: argparse.Namespace, workdir: Path) -> Result:
    origin_port, edge_port = free_port(), free_port()
    origin_url = f"http://127.0.0.1:{origin_port}"
    edge_url = f"http://127.0.0.1:{edge_port}"
    cfg = workdir / f"{sc.name}.yaml"
    cfg.write_text(
        json.dumps(
            {
                "name": "bench",
                # With several workers the box coalesces across them too (proxy/box.py).
                "workers": args.workers,
                "log": {"access_log": False, "level": "WARNING"},
                "fetch": sc.fetch,
            }
        )
    )
    origin = start(
        [sys.executable, "-m", "origin_stub", "--listen", f"127.0.0.1:{origin_port}"], workdir / "origin.log"
    )
    edge = start(
        [
            sys.executable,
            "-m",
            "proxy",
            "--config",
            str(cfg),
            "--listen",
            f"127.0.0.1:{edge_port}",
            "--origin",
            origin_url,
            "--cache-dir",
            str(workdir / f"cache-{sc.name}"),
        ],
        workdir / f"edge-{sc.name}.log",
    )
    try:
        deadline = time.monotonic() + 15
        await wait_ready(origin_url + "/__hits", deadline)
        await wait_ready(edge_url + "/__hits", deadline)
        async with aiohttp.ClientSession() as s:
            async with s.get(edge_url + sc.path) as r:  # warm: the first fetch is not an expiry
                await r.read()
            async with s.post(origin_url + "/__reset") as r:
                await r.read()
        samples, errors = await load(edge_url + sc.path, args.clients, args.seconds)
        async with aiohttp.ClientSession() as s, s.get(origin_url + "/__hits") as r:
            origin_requests = int((await r.json())["total"])
    finally:
        stop(edge)
        stop(origin)
    lifetime = args.max_age
    expiries = args.seconds / lifetime
    latencies = [lat * 1000 for _, lat in samples]
    waited = sum(1 for lat in latencies if lat >= args.origin_ms / 2)
    return Result(
        scenario=sc.name,
        seconds=args.seconds,
        requests=len(samples),
        expiries=round(expiries, 1),
        origin_requests=origin_requests,
        origin_per_expiry=round(origin_requests / expiries, 2),
        p50_ms=round(statistics.median(latencies), 2) if latencies else 0.0,
        p99_ms=round(percentile(latencies, 0.99), 2),
        max_ms=round(max(latencies, default=0.0), 2),
        waited_for_origin=waited,
        errors=errors,
    )


def table(results: list[Result]) -> str:
    head = (
        f"{'scenario':<16}{'requests':>9}{'expiries':>9}{'origin req':>11}{'per expiry':>11}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'waited for origin':>19}{'errors':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.scenario:<16}{r.requests:>9}{r.expiries:>9}{r.origin_requests:>11}{r.origin_per_expiry:>11}"
            f"{r.p50_ms:>9}{r.p99_ms:>9}{r.max_ms:>9}{r.waited_for_origin:>19}{r.errors:>8}"
        )
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="a quick check (3 s per scenario)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of the edge (1)")
    parser.add_argument("--seconds", type=float, default=8.0, help="load duration per scenario")
    parser.add_argument("--clients", type=int, default=50, help="concurrent client loops")
    parser.add_argument("--max-age", type=int, default=2, help="freshness lifetime of the hot key (s)")
    parser.add_argument("--origin-ms", type=int, default=300, help="origin response time (ms)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "hot_key_expiry.json"), help="JSON output")
    args = parser.parse_args()
    if args.short:
        args.seconds = 3.0
    base = f"/max-age/{args.max_age}?ms={args.origin_ms}"
    scenarios = [
        Scenario("herd", base, {"coalesce": False, "refresh_ahead_fraction": 0}),
        Scenario("coalesce", base, {"coalesce": True, "refresh_ahead_fraction": 0}),
        Scenario("coalesce+ahead", base, {"coalesce": True, "refresh_ahead_fraction": 0.25}),
        Scenario("swr", base + "&swr=60", {"coalesce": True, "refresh_ahead_fraction": 0}),
    ]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-hot-key-") as tmp:
        for i, sc in enumerate(scenarios, 1):
            print(
                f"[{i}/{len(scenarios)}] {sc.name}: {args.clients} clients for {args.seconds:.0f} s ...",
                flush=True,
            )
            results.append(await run_scenario(sc, args, Path(tmp)))
    print()
    print(
        f"hot key /max-age/{args.max_age}, origin {args.origin_ms} ms, {args.clients} clients, "
        f"{args.seconds:.0f} s per scenario, {args.workers} worker process(es)"
    )
    print(table(results))
    Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
