"""The figures worked out from the box's numbers (proxy/stats.py `box`), for `minicdn stats` and `top`.

Pure: a stats dict (or two samples of it) in, numbers and short texts out.
Latency percentiles come from the histograms' cumulative bucket counts,
interpolated inside their bucket as PromQL's histogram_quantile does (and the
dashboard's script, proxy/dashboard/index.html, does the same).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from proxy.observe import RESULTS

Stats = Mapping[str, Any]


def result_counts(stats: Stats) -> dict[str, float]:
    requests = section(section(stats, "traffic"), "requests")
    return {result: total(requests.get(result)) for result in RESULTS}


def looked_up(counts: Mapping[str, float]) -> float:
    return counts["hit"] + counts["stale"] + counts["revalidated"] + counts["miss"]


def buckets(histograms: Iterable[Any]) -> dict[float, float]:
    """Cumulative counts by upper bound (+Inf as infinity) of one histogram snapshot or the sum of several."""
    out: dict[float, float] = {}
    for histogram in histograms:
        for bound, count in section(histogram, "buckets").items():
            key = float("inf") if bound == "+Inf" else float(bound)
            out[key] = out.get(key, 0.0) + float(count)
    return out


def quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """The q-quantile of cumulative bucket counts, interpolated in its bucket (as histogram_quantile)."""
    total = cumulative.get(float("inf"), 0.0)
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    finite = sorted(b for b in cumulative if b != float("inf"))
    for bound in finite:
        count = cumulative[bound]
        if count >= rank:
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return finite[-1] if finite else None


def latency(stats: Stats) -> dict[float, float]:
    """Cumulative request latency buckets over every result."""
    return buckets(section(section(stats, "traffic"), "latency").get(result) for result in RESULTS)


def origin_latency(stats: Stats) -> dict[float, float]:
    return buckets([section(section(section(stats, "traffic"), "origin_latency"), "origin")])


def origin_requests(stats: Stats) -> float:
    return total(section(section(stats, "traffic"), "origin_requests").get("origin"))


def diff(now: Mapping[float, float], then: Mapping[float, float]) -> dict[float, float]:
    return {bound: count - then.get(bound, 0.0) for bound, count in now.items()}


def section(data: Any, key: str | None = None) -> Mapping[str, Any]:
    """data[key] (or data) when it is a mapping, else an empty one: a section may be missing."""
    value = data.get(key) if key is not None and isinstance(data, Mapping) else data
    return value if isinstance(value, Mapping) else {}


def total(value: Any) -> float:
    """A number, or the sum of the numbers in nested mappings."""
    if isinstance(value, Mapping):
        return sum(total(v) for v in value.values())
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def number(value: Any) -> str:
    """A count or rate for people: 7, 2.5, 123, 45.6k, 1.2M."""
    n = float(value) if isinstance(value, int | float) else 0.0
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e4:
        return f"{n / 1e3:.1f}k"
    return str(round(n)) if n >= 100 or n == int(n) else f"{n:.1f}"


def percent(x: float) -> str:
    return f"{100 * x:.1f} %"


def seconds(s: float | None) -> str:
    """A duration: µs, ms or s ("-" for none)."""
    if s is None:
        return "-"
    if s < 0.001:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def size(n: Any) -> str:
    """Bytes as "512 B", "1.5 KiB", ... "3.0 GiB"."""
    amount = float(n) if isinstance(n, int | float) else 0.0
    for unit in ("B", "KiB", "MiB"):
        if amount < 1024:
            return f"{int(amount)} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def duration(span: float) -> str:
    """Seconds as "3d 4h", "2h 5m", "4m 10s" or "9s"."""
    s = int(max(span, 0))
    days, hours, minutes = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {s % 60}s" if minutes else f"{s}s"
