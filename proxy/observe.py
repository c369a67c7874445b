"""What one worker counts about the requests it answers, cheaply enough for the hit path.

What must live here: the counters behind `/metrics`, the dashboard and
`minicdn top` that the front, the origin client and the engine bump as they
work, and the worker's snapshot of them. Counting is plain integers in
preallocated lists: a request costs a few list increments, one `bisect` for
its latency bucket and no allocation. Nothing here formats metrics (that is
proxy/metrics.py, at scrape time, over the snapshots of every worker of the
box: proxy/stats.py) and nothing here does I/O.

Every answer is classified once, from this node's Cache-Status member
(`outcome`): its result and the tier its body came from.

| result        | what happened                                                   | tier             |
|---------------|-----------------------------------------------------------------|------------------|
| `hit`         | a fresh stored response answered                                | `l1` / `l2`      |
| `stale`       | a stale stored response answered (stale-while-revalidate,       | `l1` / `l2` or   |
|               | stale-if-error, stale on disconnect, a client's max-stale)      | `cache`          |
| `revalidated` | the origin answered a conditional request with 304: the stored  | `cache`          |
|               | response, freshened, answered                                   |                  |
| `miss`        | the origin's (or the owner edge's) answer, stored or not        | `origin`         |
| `pass`        | forwarded without a lookup (unsafe methods, request directives) | `origin`         |
| `error`       | the node's own error: the origin failed, a bad request          | `none`           |
| `synth`       | the node's own answer: health, readiness, PURGE                 | `none`           |

`cache` is a stored response whose tier the answer does not say. Latency is
the time from reading the request head to writing the last byte of the answer.
"""

from __future__ import annotations

import bisect
import heapq
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

from proxy.cache_status import CacheStatus

if TYPE_CHECKING:
    from proxy.engine import Engine

RESULTS: Final = ("hit", "stale", "revalidated", "miss", "pass", "error", "synth")
# (result, tier) of each outcome code, and where the body of such an answer came from.
OUTCOMES: Final = (
    ("hit", "l1"),
    ("hit", "l2"),
    ("stale", "l1"),
    ("stale", "l2"),
    ("stale", "cache"),
    ("revalidated", "cache"),
    ("miss", "origin"),
    ("pass", "origin"),
    ("error", "none"),
    ("synth", "none"),
)
(
    HIT_L1,
    HIT_L2,
    STALE_L1,
    STALE_L2,
    STALE,
    REVALIDATED,
    MISS,
    PASS,
    ERROR,
    SYNTH,
) = range(len(OUTCOMES))
SOURCES: Final = ("cache", "origin", "node")
_SOURCE = {"hit": 0, "stale": 0, "revalidated": 0, "miss": 1, "pass": 1, "error": 2, "synth": 2}
_SOURCE_OF: Final = tuple(_SOURCE[result] for result, _ in OUTCOMES)
STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")

# Histogram bucket bounds (seconds; each is an upper bound, `le`), fixed so that the workers'
# counts add up. A hit takes tens of microseconds, an origin fetch milliseconds to seconds.
REQUEST_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
ORIGIN_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
UPSTREAMS: Final = ("origin", "peer")

# The hottest keys: counted per worker over a window of HOT_WINDOW seconds (this one and the
# last), at most HOT_LIMIT keys held (the least counted are dropped beyond it), HOT_TOP reported.
HOT_WINDOW: Final = 30.0
HOT_LIMIT: Final = 2048
HOT_TOP: Final = 20

# Seconds the request being answered has waited for the origin's response heads (its own
# fetches: a coalesced waiter's stays 0). The front sets a fresh OriginTimer for each request
# it answers in a task; the origin client adds to whatever timer its task's context holds.
origin_timer: ContextVar[OriginTimer | None] = ContextVar("origin_timer", default=None)


class OriginTimer:
    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0


def outcome(status: CacheStatus, code: int) -> int:
    """The outcome code (an index of OUTCOMES) of an answer with this Cache-Status and status code."""
    if status.hit:
        ttl = status.ttl
        if ttl is not None and ttl < 0:
            return STALE_L2 if status.detail == "l2" else STALE_L1  # a client's max-stale
        return HIT_L2 if status.detail == "l2" else HIT_L1
    fwd = status.fwd
    if fwd is None:
        return ERROR if code >= 400 else SYNTH  # the node's own answer
    if status.ttl is not None:
        return STALE  # a stored response instead of (or before) the origin's
    fwd_status = status.fwd_status
    if fwd_status is None:
        # Another worker's fetch, read from L2 (collapsed), or a stream of a large object's slices
        # whose head went out before the missing ones were fetched (proxy/slicer.py); else the
        # origin gave no usable answer.
        return MISS if status.collapsed or status.detail == "slices" else ERROR
    if fwd == "bypass":
        return PASS
    if fwd_status == 304 and fwd in ("stale", "request"):
        return REVALIDATED
    return MISS


class Histogram:
    """Counts per fixed bucket (the last is +Inf) and the sum, for one series."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict[str, Any]:
        """Cumulative counts by upper bound (`le`, as Prometheus has them), the sum and the count."""
        cumulative: dict[str, int] = {}
        running = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            cumulative[bound] = running
        return {"buckets": cumulative, "sum": self.sum, "count": running}


class HotKeys:
    """How often each key was looked up lately: this window and the last, bounded to HOT_LIMIT keys.

    Windows turn over when someone looks (`top`: a scrape, the dashboard) or when
    the count is trimmed, never on the hit path: after a quiet spell with nobody
    looking, the first look counts since the look before.
    """

    __slots__ = ("current", "previous", "rotated")

    def __init__(self) -> None:
        self.current: dict[str, int] = {}
        self.previous: dict[str, int] = {}
        self.rotated = time.monotonic()

    def count(self, key: str) -> None:
        current = self.current
        seen = current.get(key)
        if seen is not None:
            current[key] = seen + 1
        elif len(current) < HOT_LIMIT:  # only a new key can grow the count
            current[key] = 1
        else:
            self._trim()
            self.current[key] = 1

    def _trim(self) -> None:
        # Keep the most counted half: a key counted a few times among thousands is not hot.
        kept = heapq.nlargest(HOT_LIMIT // 2, self.current.items(), key=lambda kv: kv[1])
        self.current = dict(kept)
        self._rotate(time.monotonic())

    def _rotate(self, now: float) -> None:
        if now - self.rotated >= HOT_WINDOW:
            self.previous, self.current = self.current, {}
            self.rotated = now

    def top(self, n: int = HOT_TOP) -> dict[str, int]:
        """The n most looked-up keys over the last one to two windows, by count."""
        self._rotate(time.monotonic())
        merged = dict(self.previous)
        for key, count in self.current.items():
            merged[key] = merged.get(key, 0) + count
        return dict(heapq.nlargest(n, merged.items(), key=lambda kv: kv[1]))


class Recorder:
    """One worker's traffic counters (see the module docstring); `answered` is on the hit path.

    One increment per answer: `counts` has a cell for each (outcome, status class,
    latency bucket), so the outcome, the status class and the latency histogram
    are bumped together, and summed apart only in `snapshot`; beside it, the
    outcome's bytes and latency sum.
    """

    __slots__ = ("counts", "origin", "origin_latency", "served", "started", "sums")

    def __init__(self) -> None:
        self.started = time.time()
        self.counts = [0] * (len(OUTCOMES) * 10 * _WIDTH)  # by outcome, status // 100, latency bucket
        self.sums = [0.0] * len(OUTCOMES)  # latency, by outcome
        self.served = [0] * len(OUTCOMES)  # bytes written to clients, by outcome
        # Requests to the origin (or a peer) up to their response heads: (upstream, outcome) -> count,
        # outcome "ok" or an UpstreamError's cause; and how long they took, per upstream.
        self.origin: dict[tuple[str, str], int] = {}
        self.origin_latency = {name: Histogram(ORIGIN_BUCKETS) for name in UPSTREAMS}

    def answered(self, status: CacheStatus, code: int, nbytes: int, seconds: float) -> int:
        """Count one answer written to a client (`code`: its status, 100-999); returns its outcome code."""
        # outcome() for a hit, inline; CacheStatus by index (hit, ttl, detail), as fields cost a lookup.
        if status[0]:
            kind = HIT_L2 if status[7] == "l2" else HIT_L1
            ttl = status[3]
            if ttl is not None and ttl < 0:
                kind += STALE_L1 - HIT_L1
        else:
            kind = outcome(status, code)
        # Most hits take less than the first bound: no bisect for them.
        bucket = 0 if seconds <= _FIRST_BOUND else bisect_left(REQUEST_BUCKETS, seconds)
        self.counts[(kind * 10 + code // 100) * _WIDTH + bucket] += 1
        self.served[kind] += nbytes
        self.sums[kind] += seconds
        return kind

    def origin_request(self, upstream: str, result: str, seconds: float) -> None:
        """One request to the origin (upstream "origin") or an owner edge ("peer") got its head, or failed."""
        key = (upstream, result)
        self.origin[key] = self.origin.get(key, 0) + 1
        self.origin_latency[upstream].observe(seconds)

    def snapshot(self, engine: Engine | None = None) -> dict[str, Any]:
        """Plain JSON, shaped so that the box's sum of every worker's snapshot is the box's (stats._sum)."""
        counts = self.counts
        requests: dict[str, dict[str, int]] = {}
        responses = dict.fromkeys(STATUS_CLASSES, 0)
        served = dict.fromkeys(SOURCES, 0)
        latency = {result: Histogram(REQUEST_BUCKETS) for result in RESULTS}
        for kind, (result, tier) in enumerate(OUTCOMES):
            answers = 0
            histogram = latency[result]
            for status_class in range(10):
                start = (kind * 10 + status_class) * _WIDTH
                cells = counts[start : start + _WIDTH]
                n = sum(cells)
                if not n:
                    continue
                answers += n
                if 1 <= status_class <= 5:
                    responses[STATUS_CLASSES[status_class - 1]] += n
                histogram.counts = [a + b for a, b in zip(histogram.counts, cells, strict=True)]
            requests.setdefault(result, {})[tier] = answers
            histogram.sum += self.sums[kind]
            served[SOURCES[_SOURCE_OF[kind]]] += self.served[kind]
        origin: dict[str, dict[str, int]] = {name: {} for name in UPSTREAMS}
        for (upstream, result), count in self.origin.items():
            origin.setdefault(upstream, {})[result] = count
        out: dict[str, Any] = {
            "requests": requests,
            "responses": responses,
            "served_bytes": served,
            "latency": {result: histogram.snapshot() for result, histogram in latency.items()},
            "origin_requests": origin,
            "origin_latency": {name: h.snapshot() for name, h in self.origin_latency.items()},
        }
        if engine is not None:
            out["hit_for_pass_marks"] = len(engine.hit_for_pass)
            # Keys without their namespace: "<scheme>://<host><target>".
            out["hot_keys"] = {key.partition("|")[2] or key: n for key, n in engine.hot.top().items()}
        return out


bisect_left = bisect.bisect_left
_FIRST_BOUND = REQUEST_BUCKETS[0]
_WIDTH = len(REQUEST_BUCKETS) + 1


# A tier's counters (proxy/storage/base.py TierStats), and the tiers' together (TieredStorage).
_TIER_COUNTERS = (
    *("hits", "misses", "sets", "rejected", "evictions", "corrupt", "failed", "outdated"),
    *("write_dropped", "write_failed"),
)
# The counters of a snapshot (proxy/stats.py) that a worker leaves behind when it exits (a reload,
# a restart): the box keeps adding them, so that what the box has counted never goes down. Gauges
# (entries, bytes, the epoch, marks held, hot keys, members, the L2 write queue now, bans held,
# catalogue rows waiting) are not carried: they are the live workers'. None: every number of the section.
CARRIED: Final[dict[str, Any]] = {
    "engine": None,
    "traffic": ("requests", "responses", "served_bytes", "latency", "origin_requests", "origin_latency"),
    "purge": (
        *("purges", "by_kind", "keys_purged", "applied_from_log", "screened", "late_copies", "bans_dropped"),
        *("catalog_batches", "catalog_rows", "catalog_failed", "catalog_full", "catalog_dropped"),
    ),
    "tiers": {tier: _TIER_COUNTERS for tier in ("l1", "l2")},
    "storage": (*_TIER_COUNTERS, "write_batches"),
    "slices": None,
    "edge": {"routing": None, "purge_stream": ("published", "applied_from_stream", "redis_errors")},
}


def carried(snapshot: dict[str, Any], spec: Any = CARRIED) -> dict[str, Any]:
    """The counters of `snapshot` that CARRIED names (nested dicts of numbers)."""
    out: dict[str, Any] = {}
    for key, value in snapshot.items():
        if isinstance(spec, dict):
            if key not in spec:
                continue
            inner = spec[key]
        elif isinstance(spec, tuple):
            if key not in spec:
                continue
            inner = None
        else:
            inner = None
        if isinstance(value, dict):
            part = carried(value, inner)
            if part:
                out[key] = part
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = value
    return out


def add(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """total + part, number by number through nested dicts (a new dict)."""
    out = dict(total)
    for key, value in part.items():
        mine = out.get(key)
        if isinstance(value, dict):
            out[key] = add(mine if isinstance(mine, dict) else {}, value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = (mine if isinstance(mine, int | float) and not isinstance(mine, bool) else 0) + value
    return out
