"""`minicdn top` (and `minicdn stats --watch`): the dashboard's figures in a terminal, refreshed.

What must live here: the terminal view of the box's numbers (the admin API's
`/stats` and `/readyz`, polled every `--interval` seconds): requests/s by
result, hit ratio, origin fetches/s, latency percentiles over the interval,
tier fill and evictions/s, large objects by slices, the hottest keys, and each edge of a cluster (the
arithmetic is proxy/figures.py's). On a terminal the view redraws in place
(rich's Live); into a pipe or a file each sample is printed after the last,
and `--count N` bounds how many.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from proxy import figures as f
from proxy.admin_client import AdminClient, AdminClientError
from proxy.observe import RESULTS

Stats = Mapping[str, Any]


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    stats: Stats
    ready: Mapping[str, Any] | None


def run(
    client: AdminClient,
    *,
    interval: float,
    count: int | None,
    console: Console | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll and show until Ctrl-C (or `count` samples). AdminClientError when the first call fails."""
    console = console or Console()
    previous: Sample | None = None
    shown = 0
    live: Live | None = None
    try:
        while count is None or shown < count:
            try:
                sample = Sample(time.monotonic(), client.stats(), _ready(client))
            except AdminClientError as exc:
                if previous is None:
                    raise
                view: RenderableType = Text(f"{exc} (retrying)", style="red")
            else:
                view = render(sample, previous)
                previous = sample
            shown += 1
            if console.is_terminal:
                if live is None:
                    live = Live(view, console=console, auto_refresh=False)
                    live.start()
                live.update(view, refresh=True)
            else:
                console.print(view)
                console.print()
            if count is None or shown < count:
                sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    return 0


def _ready(client: AdminClient) -> Mapping[str, Any] | None:
    try:
        return client.readiness()
    except AdminClientError:
        return None


def render(now: Sample, then: Sample | None) -> RenderableType:
    """One screen: node, traffic, latency, requests by result, tiers, slices, hottest keys, the cluster."""
    stats = now.stats
    span = now.at - then.at if then is not None else 0.0
    before = then.stats if then is not None and span > 0 else None
    counts = f.result_counts(stats)
    previous = f.result_counts(before) if before is not None else None

    def rate(value: float, old: float | None) -> str:
        return "-" if old is None else f.number((value - old) / span)

    window_looked = f.looked_up(counts) - f.looked_up(previous) if previous is not None else 0.0
    hit_ratio = (
        f.percent((counts["hit"] - previous["hit"]) / window_looked)
        if previous is not None and window_looked > 0
        else "-"
    )
    lifetime_ratio = f.percent(counts["hit"] / f.looked_up(counts)) if f.looked_up(counts) else "-"
    served = f.section(f.section(stats, "traffic"), "served_bytes")
    traffic = Text.assemble(
        ("hit ratio ", "dim"),
        (hit_ratio, "bold"),
        (f" (since start {lifetime_ratio})   ", "dim"),
        ("requests/s ", "dim"),
        (rate(sum(counts.values()), sum(previous.values()) if previous is not None else None), "bold"),
        ("   origin fetches/s ", "dim"),
        (rate(f.origin_requests(stats), f.origin_requests(before) if before is not None else None), "bold"),
        (f"   served {f.size(served.get('cache', 0))} from cache, ", "dim"),
        (f"{f.size(served.get('origin', 0))} from the origin", "dim"),
    )
    window = f.diff(f.latency(stats), f.latency(before)) if before is not None else f.latency(stats)
    origin = (
        f.diff(f.origin_latency(stats), f.origin_latency(before))
        if before is not None
        else f.origin_latency(stats)
    )
    latency = Text.assemble(
        ("latency " + ("in the last interval" if before is not None else "since start") + ": ", "dim"),
        *(
            piece
            for q, name in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))
            for piece in ((f"{name} ", "dim"), (f.seconds(f.quantile(q, window)) + "  ", "bold"))
        ),
        ("  origin p50 ", "dim"),
        (f.seconds(f.quantile(0.5, origin)), "bold"),
        (" p99 ", "dim"),
        (f.seconds(f.quantile(0.99, origin)), "bold"),
    )
    results = Table(title="requests by result", title_justify="left")
    results.add_column("result")
    results.add_column("per second", justify="right")
    results.add_column("since start", justify="right")
    for result in RESULTS:
        old = previous[result] if previous is not None else None
        results.add_row(result, rate(counts[result], old), f.number(counts[result]))
    parts: list[RenderableType] = [
        _header(now),
        traffic,
        latency,
        results,
        _tiers(stats, before, span),
    ]
    sliced = stats.get("slices")
    if isinstance(sliced, Mapping):  # None: slicing is off (cache.slice_size 0)
        parts.append(_slices(sliced, f.section(before, "slices") if before is not None else None, span))
    parts.append(_hot_keys(stats))
    edge = stats.get("edge")
    if isinstance(edge, Mapping):
        parts.append(_cluster(edge))
    return Group(*parts)


def _header(sample: Sample) -> Text:
    stats = sample.stats
    started = f.section(stats, "box").get("started")
    uptime = f.duration(time.time() - float(started)) if isinstance(started, int | float) else "-"
    ready = sample.ready
    if ready is None:
        state = ("readiness unknown", "yellow")
    else:
        status = str(ready.get("status") or ("ready" if ready.get("ready") else "not ready"))
        state = (status, {"ready": "green", "degraded": "yellow"}.get(status, "red"))
    return Text.assemble(
        ("minicdn ", "bold"),
        (str(stats.get("name", "?")), "bold cyan"),
        (f"   workers {stats.get('workers', '-')}   up {uptime}   ", "dim"),
        state,
    )


def _tiers(stats: Stats, before: Stats | None, span: float) -> Table:
    table = Table(title="cache tiers", title_justify="left")
    for name in ("tier", "fill", "bytes", "objects", "evictions/s", "evicted"):
        table.add_column(name, justify="left" if name == "tier" else "right")
    tiers = f.section(stats, "tiers")
    budgets = f.section(stats, "budgets")
    for tier in ("l1", "l2"):
        t = tiers.get(tier)
        if not isinstance(t, Mapping):
            table.add_row(tier, "disabled", "", "", "", "")
            continue
        budget = float(budgets.get(tier) or 0)
        fill = f.percent(float(t.get("bytes", 0)) / budget) if budget else "-"
        evictions = float(t.get("evictions", 0))
        old = f.section(f.section(before, "tiers"), tier).get("evictions") if before is not None else None
        per_second = f.number((evictions - float(old)) / span) if isinstance(old, int | float) else "-"
        table.add_row(
            tier,
            fill,
            f.size(t.get("bytes", 0)),
            f.number(t.get("entries", 0)),
            per_second,
            f.number(evictions),
        )
    return table


# The slicer's counters (proxy/slicer.py SliceStats), as the view names them.
SLICE_FIGURES = (
    ("answers", "answered from slices"),
    ("hits", "slices from the cache"),
    ("fetched", "slices fetched (206)"),
    ("revalidated", "slices revalidated (304)"),
    ("invalidations", "objects changed: slices dropped"),
    ("unsliced", "objects no longer sliced"),
    ("aborted", "streams cut after their head"),
)


def _slices(sliced: Stats, before: Stats | None, span: float) -> Table:
    """Large objects answered from slices: what the slicer did per second and since start."""
    table = Table(title="large objects (slices)", title_justify="left")
    table.add_column("")
    table.add_column("per second", justify="right")
    table.add_column("since start", justify="right")
    for name, label in SLICE_FIGURES:
        count = float(sliced.get(name, 0))
        old = before.get(name) if before is not None else None
        per_second = f.number((count - float(old)) / span) if isinstance(old, int | float) else "-"
        table.add_row(label, per_second, f.number(count))
    return table


def _hot_keys(stats: Stats) -> Table:
    table = Table(title="hottest keys (last 30-60 s)", title_justify="left")
    table.add_column("key", overflow="fold")
    table.add_column("lookups", justify="right")
    hot = f.section(f.section(stats, "traffic"), "hot_keys")
    for key, count in sorted(hot.items(), key=lambda kv: -float(kv[1]))[:10]:
        # Text, not str: rich reads a str cell as console markup, and a client picks the keys
        # (`GET /a[/b]` stopped top with a MarkupError; `[link=...]` drew a link).
        table.add_row(Text(str(key)), f.number(count))
    return table


def _cluster(edge: Mapping[str, Any]) -> Table:
    stream = f.section(edge, "purge_stream")
    if stream:
        lag = f.seconds(float(stream.get("stream_lag_ms", 0)) / 1000)
        caption = f"purge stream: lag {lag}, {'caught up' if stream.get('caught_up') else 'catching up'}"
    else:
        caption = "no purge stream (no Redis)"
    table = Table(title="cluster", title_justify="left", caption=caption, caption_justify="left")
    table.add_column("edge")
    table.add_column("url")
    table.add_column("state")
    for name, member in sorted(f.section(edge, "members").items()):
        m = f.section(member)
        state = "up" if m.get("available") else "breaker open" if m.get("healthy") else "down"
        me = " (this edge)" if name == edge.get("name") else ""
        # Text: names and URLs come from Redis, never read as markup (see _hot_keys).
        table.add_row(
            Text(name + me),
            Text(str(m.get("url", ""))),
            Text(state, style="green" if state == "up" else "red"),
        )
    return table
