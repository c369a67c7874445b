"""Benchmark: RSS of the L1 tier — 100,000 cached 1 KiB objects, and a full budget of 1 MiB objects.

Each case runs in a fresh Python process (so one cannot inherit the other's
heap), builds entries the way the proxy stores them (`policy.plan_store` on
origin-like headers, then the tier's `set`), and reports RSS growth against
the payload bytes and against the L1 byte budget.

    python bench/memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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


def main() -> int:
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
    Path(ROOT / "bench" / "memory.json").write_text(json.dumps({"small": small, "big": big}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
