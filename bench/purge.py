"""Benchmark: what purging costs — on the hit path, and to purge one tag covering 10,000 entries.

1. Purge time (in process, real L1 + diskcache L2 + catalogue in a temporary
   directory): store N entries tagged "t" (default 10,000), then time
   `purge tag t` — hard and soft — R times; reports the median and range.
2. Hit path (a real proxy process, wrk): requests per second on one hot key
   before any purge, then after a purge of an unrelated 10,000-key tag (so
   every request consults the purge state: the epoch check and the bans),
   alternating rounds; reports medians and the ratio. wrk must be installed;
   without it part 2 is skipped and says so.

    python bench/purge.py            # N=10,000, 3 purge repeats, 5 rounds of 3 s
    python bench/purge.py --short    # N=2,000, 1 repeat, 2 rounds of 2 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.config import CacheConfig, Config, TierConfig  # noqa: E402
from proxy.entry import CachedResource, StoredResponse  # noqa: E402
from proxy.node import open_purger, open_storage  # noqa: E402
from proxy.purge import PurgeRequest  # noqa: E402


def entry(i: int, tags: tuple[str, ...]) -> CachedResource:
    key = f"|http://bench.example/objects/{i}"
    variant = StoredResponse(
        status=200,
        reason="OK",
        headers=(("Content-Type", "text/plain"), ("Cache-Control", "max-age=600")),
        body=b"x" * 512,
        request_time=time.time(),
        response_time=time.time(),
        corrected_initial_age=0.0,
        freshness_lifetime=600.0,
        tags=tags,
    )
    return CachedResource(key, (variant,))


async def purge_time(n: int, repeats: int, soft: bool) -> list[float]:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-purge-") as tmp:
            cfg = replace(
                Config(),
                cache=CacheConfig(
                    dir=tmp, l1=TierConfig(budget=256 * 1024 * 1024), l2=TierConfig(budget=2 * 1024**3)
                ),
            )
            storage = open_storage(cfg)
            purger = open_purger(cfg, storage, time.time)
            for i in range(n):
                resource = entry(i, ("t", f"own-{i}"))
                await storage.aset(resource)
                purger.record(resource)
            await storage.drain()
            await purger.flush_rows()
            started = time.perf_counter()
            result = await purger.purge(PurgeRequest("tag", ("t",), soft=soft))
            times.append(time.perf_counter() - started)
            assert result.keys == n, result
            await purger.close()
            storage.close()
            purger.catalog.close()
            purger.epoch.close()
    return times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wrk(url: str, seconds: float) -> float:
    out = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{int(seconds)}s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def hit_path(n: int, rounds: int, seconds: float) -> dict[str, float] | None:
    if shutil.which("wrk") is None:
        print("wrk not found: skipping the hit-path part (apt-get install wrk)")
        return None
    with tempfile.TemporaryDirectory(prefix="bench-purge-hit-") as tmp:
        origin_port, port, admin_port = free_port(), free_port(), free_port()
        conf = Path(tmp) / "c.json"
        conf.write_text(json.dumps({"log": {"access_log": False, "level": "WARNING"}, "workers": 1}))
        quiet = {
            "cwd": ROOT,
            "stdout": subprocess.DEVNULL,
            "stderr": subprocess.DEVNULL,
            "start_new_session": True,
        }
        origin_cmd = [sys.executable, "-m", "origin_stub", "--listen", f"127.0.0.1:{origin_port}"]
        proxy_cmd = [
            sys.executable, "-m", "proxy", "--config", str(conf), "--listen", f"127.0.0.1:{port}",
            "--admin-listen", f"127.0.0.1:{admin_port}", "--origin", f"http://127.0.0.1:{origin_port}",
            "--cache-dir", str(Path(tmp) / "cache"),
        ]  # fmt: skip
        procs = [subprocess.Popen(origin_cmd, **quiet), subprocess.Popen(proxy_cmd, **quiet)]  # type: ignore[call-overload]
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(base + "/bytes/1024", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.1)
            print(f"  filling {n} tagged entries ...", flush=True)
            asyncio.run(_fill(base, n))
            hot = base + "/bytes/1024"
            before = [wrk(hot, seconds) for _ in range(rounds)]
            req = urllib.request.Request(
                f"http://127.0.0.1:{admin_port}/purge",
                data=json.dumps({"tag": "bulk"}).encode(),
                method="POST",
            )
            purged = json.loads(urllib.request.urlopen(req, timeout=60).read())["purged"]
            urllib.request.urlopen(hot, timeout=5).read()
            after = [wrk(hot, seconds) for _ in range(rounds)]
        finally:
            for p in procs:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=20)
    return {
        "purged": purged,
        "rps_before_median": statistics.median(before),
        "rps_after_median": statistics.median(after),
        "ratio_after_before": round(statistics.median(after) / max(statistics.median(before), 1), 3),
    }


async def _fill(base: str, n: int) -> None:
    import aiohttp

    sem = asyncio.Semaphore(64)
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> None:
            async with sem, s.get(f"{base}/tags?keys=bulk&i={i}") as r:
                await r.read()

        await asyncio.gather(*(one(i) for i in range(n)))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "bench" / "purge.json"))
    args = parser.parse_args()
    if args.short:
        args.entries, args.repeats, args.rounds, args.seconds = 2_000, 1, 2, 2.0
    print(f"purge of one tag covering {args.entries} entries, {args.repeats} repeats ...", flush=True)
    hard = asyncio.run(purge_time(args.entries, args.repeats, soft=False))
    soft = asyncio.run(purge_time(args.entries, args.repeats, soft=True))
    print("hit path before / after a purge (wrk -t1 -c64) ...", flush=True)
    hits = hit_path(args.entries, args.rounds, args.seconds)
    result = {
        "entries": args.entries,
        "hard_purge_s_median": round(statistics.median(hard), 3),
        "hard_purge_s_range": [round(min(hard), 3), round(max(hard), 3)],
        "soft_purge_s_median": round(statistics.median(soft), 3),
        "hit_path": hits,
    }
    print()
    print(f"{'purge one tag over':<34}{args.entries} entries")
    hard_range = result["hard_purge_s_range"]
    print(f"{'  hard (delete), median':<34}{result['hard_purge_s_median']} s  (range {hard_range})")
    print(f"{'  soft (mark stale), median':<34}{result['soft_purge_s_median']} s")
    if hits:
        print(f"{'hit rps before any purge (median)':<34}{hits['rps_before_median']:.0f}")
        after, bans = hits["rps_after_median"], hits["purged"]
        print(f"{'hit rps after purging the tag':<34}{after:.0f}  ({bans} bans held)")
        print(f"{'ratio':<34}{hits['ratio_after_before']}")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
