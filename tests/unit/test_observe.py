"""proxy.observe (what a worker counts), proxy.figures (what is worked out of it) and the terminal view."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
from rich.console import Console

from proxy import figures, stats, top
from proxy.cache_status import CacheStatus
from proxy.observe import (
    CARRIED,
    HOT_LIMIT,
    OUTCOMES,
    REQUEST_BUCKETS,
    HotKeys,
    Recorder,
    carried,
    outcome,
)
from proxy.purger import PurgeStats
from proxy.slicer import SliceStats
from proxy.storage.base import TierStats


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (CacheStatus(hit=True, ttl=50, detail="l1"), 200, ("hit", "l1")),
        (CacheStatus(hit=True, ttl=50, detail="l2"), 304, ("hit", "l2")),
        (CacheStatus(hit=True, ttl=-5, detail="l2"), 200, ("stale", "l2")),  # a client's max-stale
        (CacheStatus(fwd="stale", ttl=-3, detail="stale-while-revalidate"), 200, ("stale", "cache")),
        (CacheStatus(fwd="stale", fwd_status=503, ttl=-3, detail="stale-if-error"), 200, ("stale", "cache")),
        (CacheStatus(fwd="stale", ttl=-9, detail="stale-on-disconnect"), 200, ("stale", "cache")),
        (CacheStatus(fwd="stale", fwd_status=304, stored=True), 200, ("revalidated", "cache")),
        (CacheStatus(fwd="request", fwd_status=304, stored=True), 200, ("revalidated", "cache")),
        (CacheStatus(fwd="stale", fwd_status=200, stored=True), 200, ("miss", "origin")),
        (CacheStatus(fwd="uri-miss", fwd_status=200, stored=True), 200, ("miss", "origin")),
        (CacheStatus(fwd="vary-miss", fwd_status=200, collapsed=True), 200, ("miss", "origin")),
        (CacheStatus(fwd="uri-miss", collapsed=True, detail="l2"), 200, ("miss", "origin")),  # a box waiter
        (CacheStatus(fwd="uri-miss", fwd_status=503), 503, ("miss", "origin")),  # the origin's own 503
        (CacheStatus(fwd="bypass", fwd_status=201), 201, ("pass", "origin")),
        (CacheStatus(fwd="bypass", fwd_status=200, rule="api private"), 200, ("pass", "origin")),  # a rule's
        # A large object's slices (proxy/slicer.py): one fetched for this answer, a stream of them
        # with some not stored yet, all of them stored.
        (CacheStatus(fwd="partial", fwd_status=206, stored=True), 206, ("miss", "origin")),
        (CacheStatus(fwd="partial", detail="slices"), 200, ("miss", "origin")),
        (CacheStatus(hit=True, ttl=30, detail="l2"), 206, ("hit", "l2")),
        (CacheStatus(fwd="bypass", detail="origin timed out"), 504, ("error", "none")),
        (CacheStatus(fwd="uri-miss", detail="origin refused the connection"), 502, ("error", "none")),
        (CacheStatus(detail="only-if-cached"), 504, ("error", "none")),
        (CacheStatus(detail="invalid Host header"), 400, ("error", "none")),
        (CacheStatus(detail="health"), 200, ("synth", "none")),
        (CacheStatus(detail="purge"), 200, ("synth", "none")),
    ],
)
def test_every_answer_has_one_result_and_tier(
    status: CacheStatus, code: int, expected: tuple[str, str]
) -> None:
    assert OUTCOMES[outcome(status, code)] == expected
    # The recorder's inline shortcut for hits agrees with outcome().
    assert OUTCOMES[Recorder().answered(status, code, 1, 0.001)] == expected


def test_a_recorder_counts_results_statuses_bytes_and_latency_buckets() -> None:
    recorder = Recorder()
    hit = CacheStatus(hit=True, ttl=9, detail="l1")
    recorder.answered(hit, 200, 100, 0.00005)  # below the first bound
    recorder.answered(hit, 200, 100, REQUEST_BUCKETS[3])  # exactly on a bound: le, counted there
    recorder.answered(CacheStatus(fwd="uri-miss", fwd_status=404), 404, 50, 99.0)  # past the last
    recorder.origin_request("origin", "ok", 0.01)
    recorder.origin_request("origin", "refused", 0.001)
    snap = recorder.snapshot()
    assert snap["requests"]["hit"] == {"l1": 2, "l2": 0}
    assert snap["requests"]["miss"] == {"origin": 1}
    assert snap["responses"] == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 0}
    assert snap["served_bytes"] == {"cache": 200, "origin": 50, "node": 0}
    hits = snap["latency"]["hit"]
    assert hits["count"] == 2 and math.isclose(hits["sum"], 0.00005 + REQUEST_BUCKETS[3])
    assert hits["buckets"][repr(REQUEST_BUCKETS[0])] == 1
    assert hits["buckets"][repr(REQUEST_BUCKETS[2])] == 1 and hits["buckets"][repr(REQUEST_BUCKETS[3])] == 2
    assert snap["latency"]["miss"]["buckets"]["10.0"] == 0 and snap["latency"]["miss"]["buckets"]["+Inf"] == 1
    assert snap["origin_requests"]["origin"] == {"ok": 1, "refused": 1}
    assert snap["origin_latency"]["origin"]["count"] == 2


def test_the_box_sum_of_two_snapshots_is_their_sum() -> None:
    one, two = Recorder(), Recorder()
    one.answered(CacheStatus(hit=True, ttl=1, detail="l1"), 200, 10, 0.001)
    two.answered(CacheStatus(hit=True, ttl=1, detail="l2"), 200, 20, 0.5)
    total = stats.combine(
        [{"engine": {"requests": 1}, "traffic": r.snapshot()} for r in (one, two)]  # as gathered
    )["traffic"]
    assert total["requests"]["hit"] == {"l1": 1, "l2": 1}
    assert total["served_bytes"]["cache"] == 30
    assert total["latency"]["hit"]["buckets"]["+Inf"] == 2 and total["latency"]["hit"]["count"] == 2


def test_the_box_health_shows_a_worker_whose_disk_failed_while_running() -> None:
    ok = {"l2": "ok", "l2_error": None, "catalog": "shared"}
    failed = {"l2": "failed", "l2_error": "DatabaseError: disk image is malformed", "catalog": "shared"}
    for order in ([ok, failed], [failed, ok]):
        total = stats.combine([{"engine": {"requests": 1}, "health": dict(h)} for h in order])
        assert total["health"]["l2"] == "failed" and "malformed" in total["health"]["l2_error"]
        assert total["health"]["workers_l2_failed"] == 1
    total = stats.combine([{"engine": {"requests": 1}, "health": dict(ok)}] * 2)
    assert total["health"]["l2"] == "ok" and total["health"]["workers_l2_failed"] == 0


def test_the_box_sum_of_the_slicers_counters_is_their_sum() -> None:
    one = {name: 1 for name in SliceStats.__dataclass_fields__}
    two = {name: 2 for name in SliceStats.__dataclass_fields__}
    total = stats.combine([{"engine": {"requests": 1}, "slices": part} for part in (one, two)])
    assert total["slices"] == {name: 3 for name in SliceStats.__dataclass_fields__}
    # Slicing off (cache.slice_size 0): the section is None in every snapshot, and in the sum.
    assert stats.combine([{"engine": {"requests": 1}, "slices": None}] * 2)["slices"] is None


def test_hot_keys_stay_bounded_and_keep_the_hottest() -> None:
    hot = HotKeys()
    for _ in range(50):
        hot.count("ns|http://h/hot")
    for n in range(HOT_LIMIT * 3):
        hot.count(f"ns|http://h/cold{n}")
    assert len(hot.current) <= HOT_LIMIT
    top_keys = hot.top(3)
    assert next(iter(top_keys)) == "ns|http://h/hot" and top_keys["ns|http://h/hot"] == 50


def test_hot_keys_turn_over_with_the_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window turns over when someone looks: the counts are the last one to two windows'."""
    now = [1000.0]
    monkeypatch.setattr("proxy.observe.time", type("Clock", (), {"monotonic": staticmethod(lambda: now[0])}))
    hot = HotKeys()
    hot.count("a")
    now[0] += 31
    assert hot.top() == {"a": 1}  # the last window
    hot.count("b")
    hot.count("b")
    assert hot.top() == {"b": 2, "a": 1}  # this window and the last
    now[0] += 31
    assert hot.top() == {"b": 2}
    now[0] += 31
    assert hot.top() == {}


@pytest.mark.parametrize(
    ("q", "cumulative", "expected"),
    [
        (0.5, {0.1: 50.0, 0.2: 100.0, math.inf: 100.0}, 0.1),
        (0.75, {0.1: 50.0, 0.2: 100.0, math.inf: 100.0}, 0.15),
        (0.5, {0.1: 0.0, 0.2: 0.0, math.inf: 10.0}, 0.2),  # all past the last bound: that bound
        (0.5, {0.1: 0.0, math.inf: 0.0}, None),
    ],
)
def test_quantiles_interpolate_inside_their_bucket(
    q: float, cumulative: dict[float, float], expected: float | None
) -> None:
    got = figures.quantile(q, cumulative)
    assert got == expected if expected is None else math.isclose(got or 0, expected)


class FakeClient:
    """An AdminClient that answers from a script of /stats documents."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.documents = documents

    def stats(self) -> dict[str, Any]:
        return self.documents.pop(0)

    def readiness(self) -> dict[str, Any]:
        return {"ready": True, "checks": {}}


def document(hits: int) -> dict[str, Any]:
    recorder = Recorder()
    for _ in range(hits):
        recorder.answered(CacheStatus(hit=True, ttl=1, detail="l1"), 200, 10, 0.0002)
    return {
        "name": "edge-9",
        "workers": 3,
        "traffic": recorder.snapshot(),
        "tiers": {"l1": {"bytes": 512, "entries": 2, "evictions": 0}, "l2": None},
        "budgets": {"l1": 1024, "l2": 0},
        "edge": {"name": "edge-9", "members": {"edge-9": {"url": "http://a", "available": True}}},
    }


def test_top_redraws_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    client = FakeClient([document(10), document(30)])
    assert top.run(client, interval=0.5, count=2, console=console, sleep=lambda _: None) == 0  # type: ignore[arg-type]
    text = out.getvalue()
    assert "\x1b[" in text  # drawn with cursor movements, not printed twice as plain text
    assert "edge-9" in text and "cache tiers" in text and "cluster" in text and "disabled" in text
    assert "50.0 %" in text  # L1 fill


def test_top_prints_each_sample_into_a_pipe() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    client = FakeClient([document(10), document(30)])
    top.run(client, interval=1.0, count=2, console=console, sleep=lambda _: None)  # type: ignore[arg-type]
    first, second = out.getvalue().split("minicdn edge-9")[1:]
    assert "requests/s -" in first
    assert "hit ratio 100.0 %" in second


def test_every_counter_a_worker_reports_is_carried_over_when_it_exits() -> None:
    """The box's counters never go down (observe.CARRIED): every counter of the storage, purge and
    slices sections is carried, the gauges are not."""
    gauges = {"entries", "bytes", "bans", "catalog_pending"}
    tier = {name: 1 for name in TierStats.__dataclass_fields__}
    purge = {name: 1 for name in PurgeStats.__dataclass_fields__ if name != "by_kind"}
    snapshot = {
        "tiers": {"l1": tier, "l2": tier},
        "storage": {**tier, "write_queued": 1, "write_queued_bytes": 1, "write_batches": 1},
        "purge": {**purge, "by_kind": {"url": 1}, "epoch": 1},
        "slices": {name: 1 for name in SliceStats.__dataclass_fields__},
    }
    kept = carried(snapshot)
    for section in ("l1", "l2"):
        assert set(kept["tiers"][section]) == set(tier) - gauges
    assert set(kept["storage"]) == (set(tier) - gauges) | {"write_batches"}
    assert set(kept["purge"]) == (set(purge) - gauges) | {"by_kind"}
    assert kept["slices"] == snapshot["slices"]
    assert "health" not in CARRIED


def test_top_shows_the_slicers_counters_per_second_and_since_start() -> None:
    """Slicing is on by default: `minicdn top` shows what the slicer did (the `slices` section)."""
    first, second = document(10), document(30)
    first["slices"] = {name: 0 for name in SliceStats.__dataclass_fields__}
    second["slices"] = {**first["slices"], "answers": 4, "fetched": 12, "hits": 30, "aborted": 1}

    def shown(now: top.Sample, then: top.Sample | None) -> dict[str, list[str]]:
        out = io.StringIO()
        Console(file=out, force_terminal=False, width=120).print(top.render(now, then))
        text = out.getvalue()
        assert "large objects (slices)" in text
        rows = (line.split("│") for line in text.splitlines() if line.count("│") == 4)
        return {row[1].strip(): [cell.strip() for cell in row[2:4]] for row in rows}

    rows = shown(top.Sample(12.0, second, None), top.Sample(10.0, first, None))  # 2 s apart
    assert rows["slices fetched (206)"] == ["6", "12"]
    assert rows["answered from slices"] == ["2", "4"]
    assert rows["slices from the cache"] == ["15", "30"]
    assert rows["streams cut after their head"] == ["0.5", "1"]
    assert rows["objects changed: slices dropped"] == ["0", "0"]
    assert shown(top.Sample(12.0, second, None), None)["slices fetched (206)"] == ["-", "12"]
    assert {name for name, _ in top.SLICE_FIGURES} == set(SliceStats.__dataclass_fields__)


def test_top_leaves_out_slices_when_slicing_is_off() -> None:
    out = io.StringIO()
    doc = {**document(1), "slices": None}
    Console(file=out, width=120).print(top.render(top.Sample(1.0, doc, None), None))
    assert "large objects" not in out.getvalue() and "cache tiers" in out.getvalue()


def test_top_says_whether_the_node_is_ready_degraded_or_not_ready() -> None:
    """proxy/readiness.py: "degraded" (a check that passed once fails now) is ready, and says so."""

    def header(ready: dict[str, object] | None) -> str:
        out = io.StringIO()
        Console(file=out, width=120).print(top.render(top.Sample(1.0, document(1), ready), None))
        return out.getvalue().splitlines()[0]

    ready = header({"ready": True, "status": "ready", "checks": {}})
    assert "ready" in ready and "not ready" not in ready and "degraded" not in ready
    degraded = header({"ready": True, "status": "degraded", "degraded": ["origin"], "checks": {}})
    assert "degraded" in degraded and "not ready" not in degraded
    assert "not ready" in header({"ready": False, "status": "not ready", "checks": {}})
    assert "not ready" in header({"ready": False, "checks": {}})  # a node from before the status field
    assert "readiness unknown" in header(None)


def test_top_shows_keys_and_edge_names_as_they_are_not_as_markup() -> None:
    """A client picks the hot keys (its request targets: `[` and `]` are legal in one), and an
    edge's name and URL come from Redis. rich reads a plain str cell as console markup: a key with
    `[/b]` in it stopped `minicdn top` with a MarkupError, and `[link=...]` drew a link."""
    doc = document(1)
    keys = {
        "http://o/rich[/b]x": 3,
        "http://o/[link=http://evil.example/]click[/link]": 2,
        "http://o/[bold]big": 1,
    }
    doc["traffic"]["hot_keys"] = keys
    doc["edge"] = {"name": "e[/i]", "members": {"e[/i]": {"url": "http://[red]a", "available": True}}}
    out = io.StringIO()
    Console(file=out, force_terminal=True, width=200).print(top.render(top.Sample(1.0, doc, None), None))
    text = out.getvalue()
    for shown in (*keys, "e[/i] (this edge)", "http://[red]a"):
        assert shown in text, shown
    assert "\x1b]8;" not in text  # no terminal hyperlink (OSC 8)
