"""A stderr that nobody reads stops the log, not the requests.

The soak benchmark once hung both workers of a box after a quarter of an hour: their stderr was a
pipe it never read, and when the pipe's 64 KiB filled, the next flush of the log blocked the event
loop. The log is now written by a thread (proxy/log_output.BackgroundWriter). A real proxy process
whose stderr is an unread pipe, with its access log on, answers thousands of requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.functional.conftest import Origin, free_port

ROOT = Path(__file__).resolve().parents[2]


async def test_a_stderr_nobody_reads_does_not_stop_the_requests(origin: Origin, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--workers", "1", "--listen", f"127.0.0.1:{port}",
         "--origin", origin.url, "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,  # never read
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert time.monotonic() < deadline and proc.poll() is None, "the proxy did not start"
            await asyncio.sleep(0.1)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            # An access line each (~150 bytes): 3,000 of them are several times a pipe's 64 KiB.
            for i in range(3000):
                async with session.get(f"http://127.0.0.1:{port}/max-age/600?pipe={i % 50}") as resp:
                    assert resp.status == 200, i
                    await resp.read()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
