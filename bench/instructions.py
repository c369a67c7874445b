"""Instructions per request, counted by valgrind: a measure the machine's noise cannot move.

`bench/hit_path.py` and `bench/miss_path.py` report CPU microseconds, which on this shared 2-core
machine swing by a third from run to run; `compare.py` needs several rounds against nginx to see a
10 % change. This script runs the same in-process cases (bench/hit_path.py's hits: the real front,
engine and hit writer, a transport that only counts bytes; bench/miss_path.py's miss, revalidation
and cold fill: the same front and a real nginx origin in its own process, not counted) under
`valgrind --tool=callgrind` twice, with 2,000 and with 6,000 requests, and reports the difference per
request: the instructions one more request costs once everything is warm. Only this process's
user-space instructions count: the kernel's share of a socket call does not. The children run with
PYTHONHASHSEED=0, and then the count repeats exactly (117,751 twice for the browser case; with
random seeds it moved by about 1 %), so two checkouts can be compared in one go and a change of 1 %
shows. A miss case takes about 4 minutes under valgrind, a hit case about 2.

Instructions are not time (a cache miss costs more than an add), but on this code the two move
together: a cut from 131.9k to 120.0k instructions per hit (-9 %) came out as +14-15 % hits per second
in compare.py's multi-key rows.

    python bench/instructions.py                          # this checkout, the browser-head hit
    python bench/instructions.py --root ../base --root .  # two checkouts side by side
    python bench/instructions.py --case all               # every hit_path case (about 2 min each)
    python bench/instructions.py --case misses            # every miss_path case

Needs valgrind (Debian's package). Each measurement takes about a minute; two run at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_CASE = "hit, 2000 keys, browser heads"
SMALL, LARGE = 2000, 6000
# A miss case runs one request at a time against a real origin after its own warm-up (bench/miss_path.py
# run_counted): 1,000 and 3,000 requests give the same per-request figure in half the time.
MISS_SMALL, MISS_LARGE = 1000, 3000
_COLLECTED = re.compile(r"Collected : (\d+)")


def child(root: str, case: str, requests: int) -> None:
    """Run one case from checkout `root`: a warm-up of SMALL requests, then `requests` more."""
    sys.path.insert(0, root)
    os.chdir(root)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    import bench.miss_path as mp

    if case in mp.CASES:
        mp.run_counted(case, requests)
        return
    import bench.hit_path as hp  # the checkout's own harness and proxy package
    from proxy.config import CacheConfig, Config, LogConfig, TierConfig
    from proxy.front import FrontContext
    from proxy.h1 import via_line
    from proxy.node import Node

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            if hasattr(hp, "bench_config"):
                cfg = hp.bench_config(tmp, l2=case == hp.L2_CASE)
            else:  # a checkout from before the L2 case: the L1 node only
                cfg = Config(
                    cache=CacheConfig(
                        dir=tmp, l1=TierConfig(budget=512 * 1024 * 1024), l2=TierConfig(enabled=False)
                    ),
                    log=replace(LogConfig(), access_log=False),
                )
            async with Node(cfg, clock=lambda: hp.NOW + 10) as node:
                hp.store_objects(node)
                ctx = FrontContext(node=node, cfg=cfg, via=via_line(cfg.name), access_log=False)
                heads, per_read = hp.cases()[case]
                hp.run_case(ctx, heads, per_read, SMALL)
                if requests:
                    hp.run_case(ctx, heads, per_read, requests)

    asyncio.run(main())


def sizes(case: str) -> tuple[int, int]:
    from bench.miss_path import CASES

    return (MISS_SMALL, MISS_LARGE) if case in CASES else (SMALL, LARGE)


def count(root: str, case: str, requests: int) -> int:
    """Instructions valgrind counted for one child run."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        root,
        case,
        str(requests),
    ]
    # A fixed hash seed: dict and set layouts (and so the instructions of a lookup) stay the same.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed for {root} {case!r}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/instructions.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", action="append", help="a checkout to measure (repeatable; default: this one)"
    )
    parser.add_argument(
        "--case",
        action="append",
        help=(
            "a bench/hit_path.py or bench/miss_path.py case; all: every hit case, misses: every"
            f" miss case (default: {DEFAULT_CASE!r})"
        ),
    )
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        root, case, n = args.child
        child(root, case, int(n))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    roots = [str(Path(r).resolve()) for r in (args.root or [HERE.parent])]
    cases = args.case or [DEFAULT_CASE]
    sys.path.insert(0, str(HERE.parent))
    if cases == ["all"]:
        from bench.hit_path import cases as all_cases

        cases = list(all_cases())
    elif cases == ["misses"]:
        from bench.miss_path import CASES

        cases = list(CASES)
    jobs = [(root, case, n) for root in roots for case in cases for n in sizes(case)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: count(*job), jobs), strict=True))
    width = max(map(len, cases))
    print(
        "instructions per request (valgrind callgrind: the difference between two runs of"
        f" {SMALL:,} and {LARGE:,} requests ({MISS_SMALL:,} and {MISS_LARGE:,} for a miss case), per request)"
    )
    print(f"{'case':<{width}}  " + "  ".join(f"{Path(r).name:>12}" for r in roots))
    for case in cases:
        small, large = sizes(case)
        cells = [(counts[(r, case, large)] - counts[(r, case, small)]) / (large - small) for r in roots]
        line = f"{case:<{width}}  " + "  ".join(f"{c:>12,.0f}" for c in cells)
        if len(cells) > 1:
            line += "  " + "  ".join(f"x{c / cells[0]:.3f}" for c in cells[1:])
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
