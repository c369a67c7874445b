"""Micro-benchmark: the Python cost of one request through the front and the engine, without sockets.

The wrk comparison (bench/compare.py) measures the whole server against nginx and Varnish, but on
this shared 2-core machine its absolute numbers move with other people's load. This script feeds
the real front (proxy/front.py: httptools parsing, admission, Engine.lookup, the hit writer) with
request heads through a transport that only counts bytes, and reports CPU microseconds per request
(time.process_time, so time spent waiting for the CPU does not count) for:

- hits on 2,000 distinct 1 KiB objects with browser-like heads (uniform), and with minimal heads;
- the same head repeated (what a one-URL benchmark measures);
- pipelined hits (10 per read);
- a 304 to a conditional request, and a range;
- hits from the disk tier with the memory tier off (as compare.py's mk-l2-hit-1k), browser heads.

Each case runs in alternating rounds; the table shows the median. Compare two checkouts by running
it in each (`python bench/hit_path.py`), or use --profile to see where the time goes. `--rules N`
configures N per-route rules (bench/compare_workload.py's bench_rules) that none of these requests
match: what rules cost a request they do not concern.

    python bench/hit_path.py              # about 20 s
    python bench/hit_path.py --rounds 9 --requests 50000
    python bench/hit_path.py --rules 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from multidict import CIMultiDict, CIMultiDictProxy  # noqa: E402

from bench.compare_workload import bench_rules, browser_fields  # noqa: E402
from proxy.config import CacheConfig, Config, LogConfig, TierConfig, config_from_mapping  # noqa: E402
from proxy.entry import CachedResource  # noqa: E402
from proxy.front import Connection, FrontContext  # noqa: E402
from proxy.h1 import via_line  # noqa: E402
from proxy.headers import EMPTY_DIRECTIVES  # noqa: E402
from proxy.keys import primary_key  # noqa: E402
from proxy.node import Node  # noqa: E402
from proxy.policy import plan_store  # noqa: E402

KEYS = 2000
NOW = 1_800_000_000.0


class CountingTransport:
    """Enough of asyncio.Transport for the front: writes are counted, never sent."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        for part in parts:
            self.written += len(part)

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def head(path: str, fields: list[tuple[str, str]]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1:8080", *(f"{n}: {v}" for n, v in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# The case answered by a node with the memory tier off: from the disk tier (L2).
L2_CASE = "L2 hit (L1 off), 2000 keys, browser heads"


def bench_config(tmp: str, *, l2: bool, rules: Any = ()) -> Config:
    """The node of the L1 cases (memory tier only), or of L2_CASE (disk tier only)."""
    tiers = (
        {"l1": TierConfig(enabled=False), "l2": TierConfig(budget=1024 * 1024 * 1024)}
        if l2
        else {"l1": TierConfig(budget=512 * 1024 * 1024), "l2": TierConfig(enabled=False)}
    )
    return Config(
        cache=CacheConfig(dir=tmp, **tiers), log=replace(LogConfig(), access_log=False), rules=rules
    )


def store_objects(node: Node) -> None:
    """KEYS stored 1 KiB objects, as a miss through the origin would have stored them
    (in the memory tier, or in the disk tier when the node has no memory tier)."""
    cfg = node.cfg
    origin = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Content-Type", "application/octet-stream"),
                ("Cache-Control", "max-age=86400"),
                ("ETag", '"v1"'),
                ("Date", "Thu, 15 Jan 2027 08:00:00 GMT"),
            ]
        )
    )
    for k in range(KEYS):
        plan = plan_store("GET", CIMultiDict(), EMPTY_DIRECTIVES, 200, "OK", origin, NOW, NOW, cfg.policy)
        assert not isinstance(plan, str) and hasattr(plan, "build")
        entry = plan.build(b"x" * 1024)  # type: ignore[union-attr]
        host = node.engine.fetcher.key_host("127.0.0.1:8080")
        key = primary_key("http", host, "/bytes/1024", f"k={k}", cfg.keys)
        tier = node.storage.l1 if node.storage.l1 is not None else node.storage.l2
        assert tier is not None
        tier.set(CachedResource(key, (entry,)))


def cases() -> dict[str, tuple[list[bytes], int]]:
    """name -> (the heads to send, in order; how many heads per data_received call)."""
    browser = browser_fields(False)
    distinct = [head(f"/bytes/1024?k={k}", browser) for k in range(KEYS)]
    minimal = [head(f"/bytes/1024?k={k}", []) for k in range(KEYS)]
    same = [distinct[7]] * KEYS
    conditional = [head(f"/bytes/1024?k={k}", [*browser, ("If-None-Match", '"v1"')]) for k in range(KEYS)]
    ranged = [head(f"/bytes/1024?k={k}", [*browser, ("Range", "bytes=0-99")]) for k in range(KEYS)]
    return {
        "hit, 2000 keys, browser heads": (distinct, 1),
        "hit, 2000 keys, minimal heads": (minimal, 1),
        "hit, one head repeated": (same, 1),
        "hit, 2000 keys, 10 pipelined": (distinct, 10),
        "304 to If-None-Match, 2000 keys": (conditional, 1),
        "range 0-99, 2000 keys": (ranged, 1),
        L2_CASE: (distinct, 1),
    }


def run_case(ctx: FrontContext, heads: list[bytes], per_read: int, requests: int) -> float:
    """CPU microseconds per request."""
    conn = Connection(ctx)
    transport = CountingTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    chunks = [b"".join(heads[i : i + per_read]) for i in range(0, len(heads), per_read)]
    sent = 0
    started = time.process_time()
    while sent < requests:
        for chunk in chunks:
            conn.data_received(chunk)
        sent += len(heads)
    elapsed = time.process_time() - started
    assert conn.task is None and not transport.closed, "a request took the slow path"
    conn.connection_lost(None)
    return elapsed / sent * 1e6


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as tmp_l2:
        rules = config_from_mapping({"rules": bench_rules(args.rules)}, "bench", environ={}).rules
        cfg = bench_config(tmp, l2=False, rules=rules)
        cfg_l2 = bench_config(tmp_l2, l2=True, rules=rules)
        clock = lambda: NOW + 10  # noqa: E731
        async with Node(cfg, clock=clock) as node, Node(cfg_l2, clock=clock) as node_l2:
            store_objects(node)
            store_objects(node_l2)
            ctx = FrontContext(node=node, cfg=cfg, via=via_line(cfg.name), access_log=False)
            ctx_l2 = FrontContext(node=node_l2, cfg=cfg_l2, via=via_line(cfg.name), access_log=False)
            table = cases()
            if args.profile:
                heads, per_read = table[args.profile]
                profiler = cProfile.Profile()
                profiler.enable()
                run_case(ctx_l2 if args.profile == L2_CASE else ctx, heads, per_read, args.requests)
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
                return 0
            results: dict[str, list[float]] = {name: [] for name in table}
            for _ in range(args.rounds):
                for name, (heads, per_read) in table.items():
                    on = ctx_l2 if name == L2_CASE else ctx
                    results[name].append(run_case(on, heads, per_read, args.requests))
            width = max(map(len, results))
            print(f"{len(rules)} rules")
            print(f"{'case':<{width}}  µs/request (median of {args.rounds})  min")
            for name, values in results.items():
                print(f"{name:<{width}}  {statistics.median(values):>10.2f}  {min(values):>17.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/hit_path.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000, help="per case and round")
    parser.add_argument("--profile", metavar="CASE", help="profile one case with cProfile instead")
    parser.add_argument("--rules", type=int, default=0, help="per-route rules configured (none match)")
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
