"""Benchmark: RSS of the L1 tier — 100,000 cached 1 KiB objects, a full budget of 1 MiB objects, and a
whole box of worker processes filled past its budget.

The first two cases run in a fresh Python process each (so one cannot inherit
the other's heap), build entries the way the proxy stores them
(`policy.plan_store` on origin-like headers, then the tier's `set`), and report
RSS growth against the payload bytes and against the L1 byte budget.

The third runs the real thing: `python -m proxy --workers N` (default 2) with
`cache.l1.budget: 64MiB` in front of the stub origin, asks it for 4 x the budget
of 1 MiB objects over new connections (so every worker fills), and reports the
growth of the summed RSS of the supervisor and its workers. `cache.l1.budget`
is for the whole box (each worker keeps budget / N), so the growth should stay
near the budget, not N x the budget.

    python bench/memory.py              # about a minute
    python bench/memory.py --workers 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.procs import rss_and_fds  # noqa: E402

CHILD = r"""
import gc, json, sys, time
sys.path.insert(0, sys.argv[1])
from multidict import CIMultiDict
from proxy import policy
from proxy.config import PolicyConfig
from proxy.entry import CachedResource
from proxy.storage.memory import MemoryStorage

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

count, size, budget = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
opts = PolicyConfig()
now = time.time()
request = CIMultiDict({"Host": "cdn.example", "Accept-Encoding": "gzip"})
tier = MemoryStorage(budget, "lru")
gc.collect()
before = rss()
for i in range(count):
    headers = CIMultiDict({
        "Cache-Control": "max-age=600", "Content-Type": "application/octet-stream",
        "Date": "Fri, 27 Nov 2026 14:00:00 GMT", "ETag": f'"obj-{i}"',
        "Server": "origin/1.0", "X-Request-Id": f"{i:016x}",
    })
    plan = policy.plan_store("GET", request, policy.EMPTY_DIRECTIVES, 200, "OK", headers, now, now, opts)
    body = i.to_bytes(8, "little") * (size // 8)
    tier.set(CachedResource(f"|http://cdn.example/objects/{i}", (plan.build(body),)))
gc.collect()
after = rss()
print(json.dumps({"entries": len(tier), "payload": len(tier) * size, "tier_bytes": tier.stats.bytes,
                  "rss_growth": after - before, "rss_total": after}))
"""


def run(count: int, size: int, budget: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(count), str(size), str(budget)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    result: dict[str, int] = json.loads(out)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def box_rss(pid: int) -> int:
    """RSS of pid and its children (the supervisor and its workers)."""
    return rss_and_fds(pid)[0]


def run_box(workers: int, budget_mib: int) -> dict[str, int]:
    """The real proxy with `workers` processes and a box-wide L1 budget, filled with 4 x budget."""
    import aiohttp

    mib = 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        origin_port, port, admin = free_port(), free_port(), free_port()
        config = Path(tmp) / "edge.yaml"
        config.write_text(
            f"log: {{level: WARNING, access_log: false}}\ncache: {{l1: {{budget: {budget_mib}MiB}}, "
            f"l2: {{enabled: false}}, max_object_size: 2MiB}}\n"
        )
        origin = subprocess.Popen(
            [sys.executable, "-m", "origin_stub", "--listen", f"127.0.0.1:{origin_port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        edge = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--workers", str(workers), "--config", str(config),
             "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
             "--origin", f"http://127.0.0.1:{origin_port}", "--cache-dir", tmp],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:

            async def fill() -> tuple[int, int, int]:
                deadline = time.monotonic() + 30
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
                    while True:
                        try:
                            async with s.get(f"http://127.0.0.1:{admin}/stats") as r:
                                if r.status == 200 and (await r.json()).get("workers") == workers:
                                    break
                        except aiohttp.ClientError:
                            pass
                        if time.monotonic() > deadline:
                            raise RuntimeError("the proxy did not start")
                        await asyncio.sleep(0.2)
                    before = box_rss(edge.pid)
                    objects = 4 * budget_mib
                    for start in range(0, objects, 16):
                        urls = [
                            f"http://127.0.0.1:{port}/bytes/{mib}?k={k}" for k in range(start, start + 16)
                        ]

                        async def get(url: str) -> None:
                            async with s.get(url) as r:
                                await r.read()

                        await asyncio.gather(*(get(u) for u in urls))
                    async with s.get(f"http://127.0.0.1:{admin}/stats") as r:
                        stats = await r.json()
                    return before, box_rss(edge.pid), int(stats["tiers"]["l1"]["bytes"])

            before, after, l1_bytes = asyncio.run(fill())
        finally:
            for proc in (edge, origin):
                proc.terminate()
                proc.wait(timeout=30)
    return {"workers": workers, "budget": budget_mib * mib, "rss_before": before, "rss_after": after,
            "l1_bytes": l1_bytes}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/memory.py", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the box case (2)")
    args = parser.parse_args()
    mib = 1024 * 1024
    print("100,000 objects of 1 KiB in L1 ...", flush=True)
    small = run(100_000, 1024, 1024 * mib)
    print("a 256 MiB L1 budget filled (and overfilled) with 1 MiB objects ...", flush=True)
    big = run(400, mib, 256 * mib)
    ratio = small["rss_growth"] / small["payload"]
    print()
    print(f"{'case':<34}{'entries':>9}{'payload MiB':>13}{'RSS growth MiB':>16}{'ratio':>8}")
    print(
        f"{'100k x 1 KiB':<34}{small['entries']:>9}{small['payload'] / mib:>13.1f}"
        f"{small['rss_growth'] / mib:>16.1f}{ratio:>8.2f}  (target <= 2.5)"
    )
    over = (big["rss_total"] - 256 * mib) / mib
    print(
        f"{'256 MiB budget of 1 MiB objects':<34}{big['entries']:>9}{big['payload'] / mib:>13.1f}"
        f"{big['rss_growth'] / mib:>16.1f}{'':>8}  RSS {big['rss_total'] / mib:.0f} MiB"
        f" = budget + {over:.0f} MiB (target <= budget + 100)"
    )
    print(
        f"\na box of {args.workers} workers with cache.l1.budget 64MiB, asked for 256 objects of 1 MiB ...",
        flush=True,
    )
    box = run_box(args.workers, 64)
    growth = box["rss_after"] - box["rss_before"]
    print(
        f"{'box of ' + str(args.workers) + ' workers, L1 budget 64 MiB':<34}"
        f"{'':>9}{box['l1_bytes'] / mib:>13.1f}{growth / mib:>16.1f}{'':>8}"
        f"  RSS growth = budget + {(growth - box['budget']) / mib:.0f} MiB over {args.workers} workers"
        f" (per worker budgets would allow {args.workers * 64} MiB)"
    )
    Path(ROOT / "bench" / "memory.json").write_text(
        json.dumps({"small": small, "big": big, "box": box}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
