"""Benchmark: a 3-edge cluster (real processes) — origin requests per object, and purge propagation.

Starts `minicdn cluster --edges N` (stub origin, redis-server, N edges), then

1. requests M distinct objects through every edge, concurrently, and reports
   origin requests per object (1.0 is the ideal: one fetch per cluster);
2. runs P purges, each sent to edge-1's admin API, and times how long until
   every other edge stops serving the object (polled with
   `Cache-Control: only-if-cached`, which answers 504 once it is gone);
   reports median, p90, p99 and max.

    python bench/cluster.py             # 3 edges, 200 objects, 100 purges
    python bench/cluster.py --short     # 3 edges, 50 objects, 20 purges
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_block(n: int) -> int:
    """A base port with n consecutive free ports (and +1000 for the admin APIs)."""
    for _ in range(200):
        base = random.randint(20_000, 40_000)
        ok = True
        for p in [*range(base, base + n), *range(base + 1000, base + 1000 + n)]:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cluster(edges: int, workdir: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    base = free_block(edges)
    origin_port, redis_port = free_port(), free_port()
    cmd = [
        sys.executable, "-c", "from edge.cli import main; raise SystemExit(main())", "cluster",
        "--edges", str(edges), "--port", str(base), "--origin-port", str(origin_port),
        "--redis-port", str(redis_port), "--dir", str(workdir),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    return proc, base, origin_port


def wait_ready(proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    while time.monotonic() < deadline:
        chunk = proc.stdout.read() or b""
        buf += chunk
        if b"Ctrl-C stops them all" in buf:
            return buf.decode()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    lines.append(buf.decode())
    raise RuntimeError("cluster did not start:\n" + "".join(lines))


def stop_cluster(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


async def origin_requests_per_object(
    session: aiohttp.ClientSession, edges: list[str], origin: str, objects: int
) -> dict[str, float]:
    async with session.post(origin + "/__reset") as r:
        await r.read()

    async def fetch(edge: str, i: int) -> int:
        async with session.get(f"{edge}/max-age/600?obj={i}") as resp:
            await resp.read()
            return resp.status

    tasks = [fetch(edge, i) for i in range(objects) for edge in edges]
    random.shuffle(tasks)
    statuses = await asyncio.gather(*tasks)
    async with session.get(origin + "/__hits") as r:
        total = int((await r.json())["total"])
    return {
        "objects": objects,
        "requests": len(statuses),
        "errors": sum(s != 200 for s in statuses),
        "origin_requests": total,
        "origin_per_object": round(total / objects, 3),
    }


async def purge_propagation(
    session: aiohttp.ClientSession, edges: list[str], admins: list[str], n: int
) -> list[float]:
    latencies = []
    only_cached = {"Cache-Control": "only-if-cached"}
    for i in range(n):
        path = f"/max-age/600?purge={i}"
        for edge in edges:
            async with session.get(edge + path) as r:
                await r.read()
        started = time.perf_counter()
        async with session.post(admins[0] + "/purge", json={"url": path}) as r:
            assert r.status == 200, await r.text()
        pending = set(edges[1:])
        deadline = started + 5
        while pending and time.perf_counter() < deadline:
            for edge in list(pending):
                async with session.get(edge + path, headers=only_cached) as r:
                    await r.read()
                    if r.status == 504:
                        pending.discard(edge)
        if pending:
            raise RuntimeError(f"purge {i} did not reach {pending} within 5 s")
        latencies.append((time.perf_counter() - started) * 1000)
        if (i + 1) % 20 == 0:
            print(f"  {i + 1}/{n} purges", flush=True)
    return latencies


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edges", type=int, default=3)
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--purges", type=int, default=100)
    parser.add_argument("--short", action="store_true", help="50 objects, 20 purges")
    parser.add_argument("--json", default=str(ROOT / "bench" / "cluster.json"))
    args = parser.parse_args()
    if args.short:
        args.objects, args.purges = 50, 20
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        print(f"starting a {args.edges}-edge cluster ...", flush=True)
        proc, base, origin_port = start_cluster(args.edges, Path(tmp))
        try:
            wait_ready(proc)
            edges = [f"http://127.0.0.1:{base + i}" for i in range(args.edges)]
            admins = [f"http://127.0.0.1:{base + 1000 + i}" for i in range(args.edges)]
            origin = f"http://127.0.0.1:{origin_port}"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
                print(f"requesting {args.objects} objects through each edge ...", flush=True)
                offload = await origin_requests_per_object(session, edges, origin, args.objects)
                print(f"timing {args.purges} purges ...", flush=True)
                latencies = await purge_propagation(session, edges, admins, args.purges)
        finally:
            stop_cluster(proc)
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    result = {
        "edges": args.edges,
        **offload,
        "purges": len(latencies),
        "purge_ms_median": round(statistics.median(latencies), 2),
        "purge_ms_p90": round(q[89], 2),
        "purge_ms_p99": round(q[98], 2),
        "purge_ms_max": round(max(latencies), 2),
    }
    print()
    print(f"{'edges':<28}{result['edges']}")
    print(f"{'objects x edges requests':<28}{result['requests']} ({result['errors']} errors)")
    print(f"{'origin requests':<28}{result['origin_requests']}")
    print(f"{'origin requests per object':<28}{result['origin_per_object']}")
    print(
        f"{'purge propagation (ms)':<28}median {result['purge_ms_median']}, p90 {result['purge_ms_p90']}, "
        f"p99 {result['purge_ms_p99']}, max {result['purge_ms_max']}  (over {result['purges']} purges)"
    )
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
