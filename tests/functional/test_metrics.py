"""`/metrics` counts every worker of the box; readiness fails until the origin could be reached.

The metrics test runs a real box of two workers (`python -m proxy --workers 2`), sends a known
sequence of requests (a miss, hits until both workers have answered, a stale answer, a pass, a
purge), and reads the Prometheus exposition with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy import metrics, stats
from proxy.config import ServerConfig
from proxy.readiness import CACHE_SECONDS
from proxy.routing import HEALTH_PATH, READY_PATH
from tests.functional.conftest import Origin, ProxyFactory, free_port
from tests.functional.test_admin import AdminFactory, start_admin
from tests.functional.test_cli import MINICDN, Spawn, run_to_exit, spawn
from tests.functional.test_workers import fresh_get, start, wait_generation

__all__ = ["spawn", "start_admin"]  # fixtures

# Stored already stale (Age beyond max-age) within stale-while-revalidate: the next request is a stale answer.
STALE = "/respond?h=Cache-Control:max-age%3D1,stale-while-revalidate%3D600&h=Age:5&h=ETag:%22v1%22&body=x"

Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(admin: int, headers: dict[str, str] | None = None) -> tuple[str, Samples]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{admin}/metrics", headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
        text = await r.text()
        content_type = r.headers["Content-Type"]
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return content_type, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    found = [v for have, v in samples.get(name, []) if all(have.get(k) == w for k, w in labels.items())]
    assert found, f"no sample {name}{labels}"
    return sum(found)


async def test_metrics_count_a_known_sequence_across_two_workers(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    proc, port, admin = await start(spawn, 2, origin, tmp_path)
    base = f"http://127.0.0.1:{port}"

    status, member = await fresh_get(base + "/max-age/600")
    assert status == 200 and "fwd=uri-miss" in member  # miss 1
    hits = 0
    while True:  # hits, each on a new connection, until both workers have answered some
        status, member = await fresh_get(base + "/max-age/600")
        assert status == 200 and ";hit" in member, member
        hits += 1
        _, samples = await scrape(admin)
        per_worker = [v for _, v in samples["minicdn_worker_requests_total"]]
        if hits >= 2 and len(per_worker) == 2 and all(per_worker):
            break
        assert hits < 60, per_worker
    status, member = await fresh_get(base + STALE)
    assert status == 200 and "stored" in member  # miss 2, stored stale
    status, member = await fresh_get(base + STALE)
    assert status == 200 and "fwd=stale" in member and "stale-while-revalidate" in member  # the stale answer
    deadline = time.monotonic() + 10
    while await origin.hits("/respond") < 2:  # its revalidation behind the answer
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as s:
        async with s.post(base + "/echo", data=b"x") as r:  # the pass (and an invalidation)
            assert r.status == 200 and "fwd=bypass" in r.headers["Cache-Status"]
        async with s.post(f"http://127.0.0.1:{admin}/purge", json={"url": "/max-age/600"}) as r:
            assert r.status == 200, await r.text()

    content_type, m = await scrape(admin)
    assert content_type.startswith("text/plain; version=0.0.4")
    answered = 1 + hits + 2 + 1
    assert value(m, "minicdn_workers") == 2
    assert value(m, "minicdn_requests_total", result="miss", tier="origin") == 2
    assert value(m, "minicdn_requests_total", result="hit") == hits
    assert value(m, "minicdn_requests_total", result="hit", tier="l2") >= 1  # the second worker read L2
    assert value(m, "minicdn_requests_total", result="stale", tier="cache") == 1
    assert value(m, "minicdn_requests_total", result="pass", tier="origin") == 1
    assert value(m, "minicdn_requests_total") == answered
    assert value(m, "minicdn_responses_total", **{"class": "2xx"}) == answered
    assert value(m, "minicdn_responses_total") == answered
    assert value(m, "minicdn_request_duration_seconds_count") == answered
    assert value(m, "minicdn_request_duration_seconds_count", result="hit") == hits
    assert value(m, "minicdn_request_duration_seconds_bucket", result="hit", le="+Inf") == hits
    assert 0 < value(m, "minicdn_request_duration_seconds_sum", result="miss") < 10
    assert value(m, "minicdn_served_bytes_total", source="cache") > 0
    assert value(m, "minicdn_served_bytes_total", source="origin") > 0
    # Two misses, the revalidation behind the stale answer, the pass.
    assert value(m, "minicdn_origin_requests_total", upstream="origin", outcome="ok") == 4
    assert value(m, "minicdn_origin_request_duration_seconds_count", upstream="origin") == 4
    assert value(m, "minicdn_background_fetches_total", kind="revalidation") == 1
    assert value(m, "minicdn_purges_total", kind="url") == 1
    assert value(m, "minicdn_purges_total", kind="invalidation") == 1  # the POST's (RFC 9111 §4.4)
    assert value(m, "minicdn_purged_keys_total") >= 1
    assert value(m, "minicdn_worker_requests_total") == 1 + hits + 2 + 1  # lookups, the POST's too
    assert value(m, "minicdn_cache_objects", tier="l2") >= 1
    assert value(m, "minicdn_cache_bytes", tier="l1") > 0
    assert value(m, "minicdn_cache_budget_bytes", tier="l2") > 0
    # Main's write path: the stored responses reached L2 in batches behind the answers.
    assert value(m, "minicdn_l2_write_batches_total") >= 1
    assert value(m, "minicdn_l2_writes_dropped_total") == value(m, "minicdn_l2_writes_failed_total") == 0
    assert value(m, "minicdn_cache_writes_total", tier="l2", result="failed") == 0
    assert value(m, "minicdn_l2_write_queue_bytes") >= 0 and value(m, "minicdn_l2_write_queue_writes") >= 0
    assert value(m, "minicdn_purge_late_copies_total") == 0
    assert value(m, "minicdn_coalesced_requests_total") == 0
    assert value(m, "minicdn_hit_for_pass_total") == 0
    assert value(m, "minicdn_ready") == 1
    assert value(m, "minicdn_start_time_seconds") <= time.time()
    # Low cardinality: no label value is a URL.
    assert not any("/" in v for samples in m.values() for labels, _ in samples for v in labels.values())

    # OpenMetrics for a scraper that asks for it.
    content_type, _ = await scrape(admin, {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert content_type.startswith("application/openmetrics-text")
    assert proc.stop() == 0


async def test_metrics_need_the_admin_token(
    start_admin: AdminFactory, session: aiohttp.ClientSession
) -> None:
    _, admin = await start_admin()
    async with session.get(admin.url + "/metrics") as resp:
        assert resp.status == 401
    async with session.get(admin.url + "/metrics", headers={"Authorization": "Bearer t0ken"}) as resp:
        assert resp.status == 200
        assert "minicdn_requests_total" in await resp.text()


async def test_origin_errors_are_counted_by_cause(
    start_proxy: ProxyFactory, session: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    from proxy.admin import create_admin_app

    proxy = await start_proxy(origin_url=f"http://127.0.0.1:{free_port()}")
    admin = await aiohttp_server(create_admin_app(proxy.server.node))  # no token: loopback only
    resp, _ = await proxy.get("/max-age/60")
    assert resp.status == 502
    async with session.get(str(admin.make_url("/metrics"))) as r:
        text = await r.text()
    assert 'minicdn_origin_requests_total{outcome="refused",upstream="origin"} 1.0' in text
    assert 'minicdn_requests_total{result="error",tier="none"} 1.0' in text
    assert 'minicdn_responses_total{class="5xx"} 1.0' in text
    assert "minicdn_ready 0.0" in text


# --------------------------------------------------------------------------- readiness


async def test_readiness_fails_while_the_origin_was_never_reached_and_liveness_stays_ok(
    start_proxy: ProxyFactory, origin: Origin, session: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    from proxy.admin import create_admin_app

    down = await start_proxy(origin_url=f"http://127.0.0.1:{free_port()}")
    admin = await aiohttp_server(create_admin_app(down.server.node))
    resp, body = await down.get(READY_PATH)
    assert resp.status == 503, body
    assert b'"ready": false' in body and b"origin refused the connection" in body
    async with session.get(str(admin.make_url("/readyz"))) as r:  # no token needed, like /healthz
        assert r.status == 503
        report = await r.json()
    assert report["status"] == "not ready" and not report["checks"]["origin"]["ok"]
    assert "refused" in report["checks"]["origin"]["error"]
    resp, _ = await down.get(HEALTH_PATH)
    assert resp.status == 200  # alive: an orchestrator must not restart it for its origin
    async with session.get(str(admin.make_url("/healthz"))) as r:
        assert r.status == 200

    up = await start_proxy()
    resp, body = await up.get(READY_PATH)
    assert resp.status == 200 and b'"status": "ready"' in body
    assert await origin.hits() == 0  # a TCP connect, no request


class Listener:
    """A TCP listener standing in for the origin of the readiness check (a connect, no request)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def ready_after(proxy: Any, now: list[float]) -> tuple[int, dict[str, Any]]:
    """The public readiness answer, past the cached one (the readiness clock moved on a second)."""
    now[0] += CACHE_SECONDS
    resp, body = await proxy.get(READY_PATH)
    return resp.status, json.loads(body)


@pytest.mark.parametrize("strict", [False, True], ids=["default", "readiness_strict"])
async def test_an_origin_outage_after_the_start_degrades_readiness_not_fails_it(
    start_proxy: ProxyFactory, strict: bool
) -> None:
    """An origin outage is seen by every edge at once: failing readiness then would have a load
    balancer pull them all, the whole cache, while they can still serve stored and stale copies.
    Once its checks have passed, a node stays ready, "degraded"; readiness_strict restores the 503."""
    origin = Listener()
    await origin.start()
    proxy = await start_proxy(
        origin_url=f"http://127.0.0.1:{origin.port}",
        server=ServerConfig(readiness_strict=strict),
    )
    now = [0.0]
    proxy.server.node.readiness.monotonic = lambda: now[0]
    status, report = await ready_after(proxy, now)
    assert status == 200 and report["status"] == "ready" and report["checks"]["origin"]["ok"], report

    await origin.stop()
    status, report = await ready_after(proxy, now)
    assert not report["checks"]["origin"]["ok"] and "refused" in report["checks"]["origin"]["error"]
    if strict:
        assert status == 503 and report["status"] == "not ready" and report["ready"] is False, report
    else:
        assert status == 200 and report["status"] == "degraded" and report["ready"] is True, report
        assert report["degraded"] == ["origin"]
    numbers = await stats.box(proxy.server.node)
    numbers["ready"] = await proxy.server.node.readiness.report()
    body, _ = metrics.render(numbers)
    assert f"minicdn_ready {0.0 if strict else 1.0}" in body.decode()
    assert 'minicdn_ready_check{check="origin"} 0.0' in body.decode()

    await origin.start()
    status, report = await ready_after(proxy, now)
    assert status == 200 and report["status"] == "ready" and "degraded" not in report, report


async def test_workers_started_during_an_outage_are_degraded_like_the_ones_they_replace(
    spawn: Spawn, tmp_path: Path
) -> None:
    """The gate "passed once" is the box's: after a reload (or a restart) during an origin outage
    the new workers, which never reached the origin themselves, answer "degraded", not 503."""
    origin = Listener()
    await origin.start()
    at = SimpleNamespace(url=f"http://127.0.0.1:{origin.port}")
    proc, port, admin = await start(spawn, 2, cast(Origin, at), tmp_path)

    async def probes(n: int) -> list[tuple[int, str]]:
        out = []
        for _ in range(n):  # a connection each: SO_REUSEPORT spreads them over the workers
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{READY_PATH}") as r:
                out.append((r.status, (await r.json())["status"]))
        return out

    assert set(await probes(6)) == {(200, "ready")}
    await origin.stop()
    done = await asyncio.to_thread(run_to_exit, [*MINICDN, "reload", "--admin", f"http://127.0.0.1:{admin}"])
    assert done.returncode == 0, done.stderr
    await wait_generation(admin, 2)
    assert set(await probes(6)) == {(200, "degraded")}, proc.output()[-2000:]
    assert proc.stop() == 0


async def test_readiness_is_checked_at_most_once_a_second(start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy()
    readiness = proxy.server.node.readiness
    calls = 0
    original = readiness.checks["origin"]

    async def counted() -> str | None:
        nonlocal calls
        calls += 1
        return await original()

    readiness.add("origin", counted)
    answers = await asyncio.gather(*(proxy.get(READY_PATH) for _ in range(20)))
    assert all(resp.status == 200 for resp, _ in answers)
    assert calls == 1


# --------------------------------------------------------------------------- minicdn stats / top


async def test_minicdn_stats_and_top_show_the_figures(spawn: Spawn, origin: Origin, tmp_path: Path) -> None:
    proc, port, admin = await start(spawn, 2, origin, tmp_path)
    for _ in range(5):
        status, _ = await fresh_get(f"http://127.0.0.1:{port}/max-age/600?top=1")
        assert status == 200
    url = f"http://127.0.0.1:{admin}"
    done = await asyncio.to_thread(run_to_exit, [*MINICDN, "stats", "--admin", url], 60)
    assert done.returncode == 0, done.stderr
    assert "answers  hit 4 (l1 " in done.stdout and "miss 1" in done.stdout, done.stdout
    assert "2xx 5" in done.stdout and "latency  p50 " in done.stdout
    assert "\nhot      " in done.stdout and "/max-age/600?top=1 (5)" in done.stdout

    args = [*MINICDN, "top", "--admin", url, "--count", "2", "--interval", "1"]
    top = asyncio.ensure_future(asyncio.to_thread(run_to_exit, args, 60))
    for _ in range(2000):  # requests until top has taken its two samples (bounded)
        if top.done():
            break
        await fresh_get(f"http://127.0.0.1:{port}/max-age/600?top=1")
    done = await top
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.split("minicdn edge-1")[1:]
    assert "requests/s -" in first and "workers 2" in first and "ready" in first
    assert "requests by result" in second and "cache tiers" in second and "hottest keys" in second
    rate = re.search(r"requests/s (\S+)", second)
    assert rate is not None and float(rate.group(1)) > 0, second
    assert "/max-age/600?top=1" in second
    assert proc.stop() == 0


async def test_the_box_counts_never_go_down_when_workers_are_replaced(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    """A reload replaces every worker: the counters of the old ones are carried on, or rate() would jump."""
    config = tmp_path / "edge.yaml"
    config.write_text("drain_timeout: 2\n")
    proc, port, admin = await start(spawn, 2, origin, tmp_path, "--config", str(config))
    for _ in range(12):
        status, _ = await fresh_get(f"http://127.0.0.1:{port}/max-age/600")
        assert status == 200
    _, before = await scrape(admin)
    for _ in range(3):  # after the scrape: only the snapshot a draining worker sends has them
        await fresh_get(f"http://127.0.0.1:{port}/max-age/600")
    proc.popen.send_signal(signal.SIGHUP)
    await wait_generation(admin, 2)  # the old generation drained and exited
    _, after = await scrape(admin)
    assert value(after, "minicdn_requests_total") == value(before, "minicdn_requests_total") + 3 == 15
    assert value(after, "minicdn_request_duration_seconds_count") == 15
    assert value(after, "minicdn_responses_total", **{"class": "2xx"}) == 15
    assert value(after, "minicdn_origin_requests_total", outcome="ok") == 1
    assert value(after, "minicdn_cache_lookups_total", tier="l1") >= value(
        before, "minicdn_cache_lookups_total", tier="l1"
    )
    assert {labels["generation"] for labels, _ in after["minicdn_worker_requests_total"]} == {"2"}
    assert proc.stop() == 0
