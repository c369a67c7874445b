"""The dashboard in a real browser: Debian's chromium driven by playwright, against a box under traffic.

Nothing downloads a browser: playwright launches /usr/bin/chromium (`.ci/run` installs Debian's
package); the test is skipped where it is missing. The page is loaded from a running box of two
workers while a client sends hits, misses and passes; the test waits for the figures to appear,
then for them to change.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.functional.conftest import Origin
from tests.functional.test_cli import Spawn, spawn
from tests.functional.test_workers import start

__all__ = ["spawn"]

CHROMIUM = "/usr/bin/chromium"
# As root a sandbox cannot start; nothing in the background may reach out (no network here).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TRAFFIC_LIMIT = 20_000  # requests at most, and TRAFFIC_SECONDS at most: the load stops by itself
TRAFFIC_SECONDS = 90.0
SCREENSHOT = os.environ.get("DASHBOARD_SCREENSHOT")  # a path: keep a picture of the page

playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is not installed (Debian's chromium package)"
)


LARGE = "/bytes/12582912"  # 12 MiB: above the default slice_threshold (10 MiB), stored in 1 MiB slices


async def traffic(port: int, stop: asyncio.Event) -> int:
    """Hits on ten keys, a miss every tenth request, a pass every fiftieth, a range of a large (sliced)
    object every hundredth, after one whole GET of it; until stopped (bounded)."""
    base = f"http://127.0.0.1:{port}"
    sent = 0
    deadline = time.monotonic() + TRAFFIC_SECONDS
    async with aiohttp.ClientSession() as s:
        for n in itertools.count():
            if stop.is_set() or sent >= TRAFFIC_LIMIT or time.monotonic() > deadline:
                break
            headers = {}
            if n == 0:
                method, path = "GET", LARGE
            elif n % 100 == 99:
                method, path, headers = "GET", LARGE, {"Range": f"bytes={n * 1000}-{n * 1000 + 99}"}
            elif n % 50 == 49:
                method, path = "POST", "/echo"
            elif n % 10 == 9:
                method, path = "GET", f"/max-age/600?miss={n}"
            else:
                method, path = "GET", f"/max-age/600?k={n % 10}"
            body = b"x" if method == "POST" else None
            async with s.request(method, base + path, data=body, headers=headers) as r:
                await r.read()
            sent += 1
            if n % 20 == 0:
                await asyncio.sleep(0.01)  # a steady load, not all the CPU
    return sent


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


async def text(page: Any, selector: str) -> str:
    return str(await page.text_content(selector) or "").strip()


async def test_the_dashboard_shows_live_figures_that_change(
    spawn: Spawn, origin: Origin, tmp_path: Path, browser: Any
) -> None:
    proc, port, admin = await start(spawn, 2, origin, tmp_path)
    stop = asyncio.Event()
    load = asyncio.create_task(traffic(port, stop))
    try:
        page = await browser.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        await page.goto(f"http://127.0.0.1:{admin}/dashboard?interval=0.5&window=2")
        assert await page.title() == "minicdn dashboard"

        # The figures appear: rates need two samples, the hottest keys some traffic.
        await page.wait_for_function(
            """() => ["rps", "hit-ratio", "p50", "origin-rps"].every(
                   id => !["", "–"].includes(document.getElementById(id).textContent.trim()))
               && document.querySelectorAll("#hot-keys tbody tr").length > 0""",
            timeout=30_000,
        )
        assert await text(page, "#node-name") == "edge-1"
        assert await text(page, "#workers") == "2"
        assert await text(page, "#ready") == "ready"
        assert (await text(page, "#hit-ratio")).endswith("%")
        assert float(await text(page, "#rps")) > 0
        assert (await text(page, "#p50")).endswith(("µs", "ms"))
        assert (await text(page, "#l1-fill")).endswith("%") and (await text(page, "#l2-fill")).endswith("%")
        hot = await page.eval_on_selector_all("#hot-keys td.key", "cells => cells.map(c => c.textContent)")
        assert any("/max-age/600?k=" in key for key in hot), hot
        rates = await page.eval_on_selector_all(
            "#results tbody tr",
            "rows => rows.map(r => [r.dataset.result, r.querySelector('.rate').textContent])",
        )
        assert dict(rates)["hit"] not in ("–", "0"), rates
        assert await page.locator("#cluster").is_hidden()  # a lone box: no cluster section

        # The large object's slices (slicing is on by default): fetched once, then ranges from them.
        await page.wait_for_function(
            """() => !document.getElementById("slices").hidden
               && ["answers", "fetched", "hits"].every(name => parseInt(document.querySelector(
                      `#slice-figures tr[data-figure="${name}"] .total`).dataset.value || "0") > 0)""",
            timeout=30_000,
        )
        figures = dict(
            await page.eval_on_selector_all(
                "#slice-figures tbody tr",
                "rows => rows.map(r => [r.dataset.figure, r.querySelector('.total').textContent])",
            )
        )
        assert int(figures["fetched"]) >= 10, figures
        assert figures["unsliced"] == "0" and figures["aborted"] == "0", figures

        # ... and change while the traffic goes on.
        total = "document.getElementById('requests-total').dataset.value"
        first = int(await page.evaluate(total))
        assert first > 0
        await page.wait_for_function(f"() => parseInt({total}) > {first}", timeout=15_000)
        assert int(await page.evaluate(total)) > first
        assert await page.locator("#chart polygon").count() == 7  # one band per result
        assert not problems, problems
        if SCREENSHOT:
            await page.screenshot(path=SCREENSHOT, full_page=True)
    finally:
        stop.set()
        sent = await load
    assert sent > 0
    assert proc.stop() == 0


async def test_the_dashboard_asks_for_the_token(
    spawn: Spawn, origin: Origin, tmp_path: Path, browser: Any
) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text("admin:\n  token: dash-t0ken\n")
    proc, _, admin = await start_with_token(spawn, origin, tmp_path, config)
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{admin}/dashboard?interval=0.3")  # the page needs no token
    await page.wait_for_selector("#login", state="visible", timeout=15_000)
    await page.fill("#token", "dash-t0ken")
    await page.click("#login button")
    await page.wait_for_function(
        "() => document.getElementById('workers').textContent.trim() === '1'", timeout=15_000
    )
    assert await page.locator("#login").is_hidden()
    assert proc.stop() == 0


async def start_with_token(
    spawn: Spawn, origin: Origin, tmp_path: Path, config: Path
) -> tuple[Any, int, int]:
    from tests.functional.conftest import free_port
    from tests.functional.test_cli import wait_listening
    from tests.functional.test_workers import workers_cmd

    port, admin = free_port(), free_port()
    proc = spawn(workers_cmd(1, port, admin, origin, tmp_path, "--config", str(config)), "dash-token")
    await wait_listening(proc, port)
    await wait_listening(proc, admin)
    return proc, port, admin
