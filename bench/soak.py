"""Soak test: ten minutes of mixed traffic, with the proxy's memory and open files sampled.

Starts the stub origin and `python -m proxy --workers N` (default 2) on loopback and runs, at
the same time and for `--minutes` (default 10):

- hits and misses over many keys (some cacheable, some no-store), with browser-like heads;
- purges (by URL, prefix, tag) through the admin API every few seconds;
- slow origin routes, failing ones (503, connection reset, stalls past the read timeout);
- pipelining clients that send ten requests per write;
- slow readers of a large response, and clients that vanish mid-response;
- malformed requests.

Every `--interval` seconds it samples, summed over the supervisor and its workers, RSS and
open file descriptors, and prints a line. At the end it prints the samples' first and last
thirds side by side and says whether RSS and fds stayed flat (the last third's median within
`--tolerance` of the first third's, after warm-up) and how many requests got an unexpected
answer. Exit status 1 when either grew or a request failed unexpectedly.

    python bench/soak.py                  # 10 minutes
    python bench/soak.py --minutes 1      # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

if str(Path(__file__).resolve().parent.parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import rss_and_fds

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tally:
    ok: int = 0
    expected_errors: int = 0  # 502/504 from failing routes, 4xx to malformed requests
    unexpected: list[str] = field(default_factory=list)

    def bad(self, what: str) -> None:
        if len(self.unexpected) < 50:
            self.unexpected.append(what)
        else:
            self.unexpected[-1] = f"... and more ({what})"


BROWSER = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-US,en;q=0.9",
    "Accept-Encoding": "gzip, deflate, br, zstd",
}


async def browsing(base: str, stop: asyncio.Event, tally: Tally) -> None:
    """Hits and misses over 5,000 keys, a quarter uncacheable, with a Zipf-ish popularity."""
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as s:
        while not stop.is_set():
            k = int(random.paretovariate(1.2)) % 5000
            path = (
                f"/bytes/{256 + k % 4096}?k={k}" if k % 4 else f"/respond?h=Cache-Control:no-store&body=k{k}"
            )
            try:
                async with s.get(base + path, headers=BROWSER) as r:
                    await r.read()
                    if r.status == 200:
                        tally.ok += 1
                    else:
                        tally.bad(f"{path}: {r.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.bad(f"{path}: {exc!r}")


async def failing(base: str, stop: asyncio.Event, tally: Tally) -> None:
    """Slow, failing, resetting and stalling origin routes: 502/504 are the expected answers."""
    paths = [
        "/slow?ms=200&max_age=1",
        "/fail?status=503",
        "/reset",
        "/stall?ms=5000",
        "/malformed?kind=header",
    ]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        while not stop.is_set():
            path = random.choice(paths)
            path += ("&" if "?" in path else "?") + f"r={random.randrange(100)}"
            try:
                async with s.get(base + path) as r:
                    await r.read()
                    if r.status in (200, 502, 503, 504):
                        tally.expected_errors += r.status != 200
                        tally.ok += r.status == 200
                    else:
                        tally.bad(f"{path}: {r.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.bad(f"{path}: {exc!r}")


async def pipelining(host: str, port: int, stop: asyncio.Event, tally: Tally) -> None:
    """Ten requests per write on one connection; every answer read."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
            keys = [random.randrange(200) for _ in range(10)]
            writer.write(b"".join(b"GET /bytes/512?p=%d HTTP/1.1\r\nHost: x\r\n\r\n" % k for k in keys))
            for _ in keys:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                tally.ok += 1
            writer.close()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError) as exc:
            tally.bad(f"pipelining: {exc!r}")


async def slow_reader(base: str, stop: asyncio.Event, tally: Tally) -> None:
    """A large response read slowly, and one abandoned half way."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        while not stop.is_set():
            try:
                async with s.get(base + f"/bytes/{8 * 1024 * 1024}?chunked=1&s={random.randrange(20)}") as r:
                    read = 0
                    async for chunk in r.content.iter_chunked(64 * 1024):
                        read += len(chunk)
                        await asyncio.sleep(0.01)
                        if read > 2 * 1024 * 1024 and random.random() < 0.5:
                            break  # gone mid-response
                tally.ok += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                tally.bad(f"slow reader: {exc!r}")


async def malformed(host: str, port: int, stop: asyncio.Event, tally: Tally) -> None:
    bad = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n",
    ]
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(random.choice(bad))
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            status = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/1.1 ") else 0
            if 400 <= status < 600:
                tally.expected_errors += 1
            else:
                tally.bad(f"malformed: {answer[:40]!r}")
        except (OSError, TimeoutError, ValueError) as exc:
            tally.bad(f"malformed: {exc!r}")
        await asyncio.sleep(0.05)


async def purging(admin: str, stop: asyncio.Event, tally: Tally) -> None:
    bodies = [
        {"urls": ["/bytes/300?k=1"]},
        {"prefixes": ["/bytes/"]},
        {"tags": ["t1"]},
        {"all": True, "soft": True},
    ]
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            await asyncio.sleep(3)
            try:
                async with s.post(admin + "/purge", json=random.choice(bodies)) as r:
                    await r.read()
                    if r.status != 200:
                        tally.bad(f"purge: {r.status}")
            except aiohttp.ClientError as exc:
                tally.bad(f"purge: {exc!r}")


async def soak(args: argparse.Namespace) -> int:
    origin_port, port, admin_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        cfg = Path(tmp) / "edge.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "log": {"level": "WARNING", "access_log": False},
                    "origin": {"read_timeout": 2, "connect_timeout": 2},
                    "cache": {
                        "l1": {"budget": "64MiB"},
                        "l2": {"budget": "256MiB"},
                        "max_object_size": "1MiB",
                    },
                }
            )
        )
        origin = subprocess.Popen(
            [sys.executable, "-m", "origin_stub", "--listen", f"127.0.0.1:{origin_port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        edge = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--workers", str(args.workers), "--config", str(cfg),
             "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}",
             "--origin", f"http://127.0.0.1:{origin_port}", "--cache-dir", tmp],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(Path(tmp) / "edge.log").open("wb"),
        )  # fmt: skip
        base, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
        try:
            deadline = time.monotonic() + 30
            async with aiohttp.ClientSession() as s:
                while True:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with s.get(admin + "/stats") as r:
                            if r.status == 200 and (await r.json()).get("workers") == args.workers:
                                break
                    if time.monotonic() > deadline or edge.poll() is not None:
                        print("the proxy did not start", file=sys.stderr)
                        return 2
                    await asyncio.sleep(0.2)
            stop = asyncio.Event()
            tally = Tally()
            loads = [browsing(base, stop, tally) for _ in range(6)]
            loads += [failing(base, stop, tally), pipelining("127.0.0.1", port, stop, tally)]
            loads += [slow_reader(base, stop, tally), malformed("127.0.0.1", port, stop, tally)]
            loads += [purging(admin, stop, tally)]
            tasks = [asyncio.create_task(load) for load in loads]
            samples: list[tuple[float, int, int]] = []
            started = time.monotonic()
            end = started + args.minutes * 60
            print(
                f"{'t s':>6} {'RSS MiB':>9} {'fds':>6} {'ok':>9} {'expected errors':>16} {'unexpected':>11}"
            )
            while time.monotonic() < end:
                await asyncio.sleep(args.interval)
                rss, fds = rss_and_fds(edge.pid)
                t = time.monotonic() - started
                samples.append((t, rss, fds))
                print(
                    f"{t:>6.0f} {rss / 2**20:>9.1f} {fds:>6} {tally.ok:>9} {tally.expected_errors:>16} "
                    f"{len(tally.unexpected):>11}",
                    flush=True,
                )
            stop.set()
            await asyncio.wait(tasks, timeout=30)
            for task in tasks:
                task.cancel()
        finally:
            edge.terminate()
            origin.terminate()
            edge.wait(timeout=60)
            origin.wait(timeout=30)
    third = max(1, len(samples) // 3)
    first, last = samples[:third], samples[-third:]
    rss_first, rss_last = statistics.median(s[1] for s in first), statistics.median(s[1] for s in last)
    fds_first, fds_last = statistics.median(s[2] for s in first), statistics.median(s[2] for s in last)
    rss_flat = rss_last <= rss_first * (1 + args.tolerance)
    fds_flat = fds_last <= fds_first * (1 + args.tolerance) + 4
    print()
    mib = 2**20
    rss_verdict = "flat" if rss_flat else "GREW"
    fds_verdict = "flat" if fds_flat else "GREW"
    first_mib, last_mib = rss_first / mib, rss_last / mib
    print(f"RSS median: first third {first_mib:.1f} MiB, last third {last_mib:.1f} MiB: {rss_verdict}")
    print(f"open fds median: first third {fds_first:.0f}, last third {fds_last:.0f}: {fds_verdict}")
    answered = tally.ok + tally.expected_errors
    print(f"requests answered as expected: {answered}; unexpected: {len(tally.unexpected)}")
    for what in tally.unexpected[:20]:
        print(f"  {what}")
    return 0 if rss_flat and fds_flat and not tally.unexpected else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python bench/soak.py", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (10)")
    parser.add_argument("--tolerance", type=float, default=0.10, help="growth allowed (0.10 = 10 %%)")
    args = parser.parse_args()
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
