"""`/metrics`: the box's numbers in the Prometheus text format, built at scrape time.

What must live here: the metric names, their help, labels and types, and how
they are read off the box's stats (proxy/stats.py `box`: every worker's
snapshot, gathered through the supervisor and summed). `BoxCollector` is a
prometheus_client custom collector over that one dict: it yields metric
families when the registry is rendered, and keeps no state between scrapes.

Why a collector over gathered snapshots rather than prometheus_client's
multiprocess mode: the workers count in plain integers (proxy/observe.py),
which costs the hit path a few list increments, where a multiprocess metric
is a locked write to a memory-mapped file per increment (and a `.labels()`
lookup), with files to clean up as workers die, restart and are replaced on
reload. The box already gathers a snapshot from every worker for `/stats`;
summing those is the same work, done once per scrape instead of per request.

Conventions: every name starts with `minicdn_`; counters end in `_total`,
durations are `_seconds`, sizes `_bytes`; labels take a few fixed values
(never a URL, a key or a client address). Histogram buckets are fixed
(proxy/observe.py), so the workers' counts add up.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from proxy import __version__
from proxy.observe import RESULTS, SOURCES, STATUS_CLASSES, UPSTREAMS

Labels = Sequence[str]


def render(stats: Mapping[str, Any], accept: str = "") -> tuple[bytes, str]:
    """The exposition of `stats` (proxy/stats.py `box`) for an Accept header: (body, content type)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BoxCollector(stats))
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


class BoxCollector(Collector):
    """Metric families read off one box's stats dict (see the module docstring)."""

    def __init__(self, stats: Mapping[str, Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield from self._traffic(_section(s, "traffic"))  # first: what `curl /metrics | head` shows
        yield from self._node(s)
        yield from self._engine(_section(s, "engine"), _section(s, "traffic"))
        yield from self._tiers(s)
        yield from self._purges(_section(s, "purge"), _section(s, "catalog"))
        slices = s.get("slices")
        if isinstance(slices, Mapping):  # None: slicing is off (cache.slice_size 0)
            yield from self._slices(slices)
        yield from self._box(_section(s, "box"), s.get("per_worker") or [])
        edge = s.get("edge")
        if isinstance(edge, Mapping):
            yield from self._cluster(edge)

    # ---------------------------------------------------------------- families

    def _node(self, s: Mapping[str, Any]) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "minicdn_info", "This node: its name and version.", labels=["name", "version"]
        )
        info.add_metric([str(s.get("name", "")), __version__], 1)
        yield info
        yield _gauge(
            "minicdn_workers", "Worker processes serving as one cache (one box).", s.get("workers", 1)
        )
        box = _section(s, "box")
        if "started" in box:
            yield _gauge(
                "minicdn_start_time_seconds",
                "When the box started, in seconds since the epoch.",
                box["started"],
            )
        ready = s.get("ready")
        if isinstance(ready, Mapping):
            yield _gauge(
                "minicdn_ready",
                "1 when the node is ready: its checks passed (or degraded: passed once, failing now).",
                ready["ready"],
            )
            checks = GaugeMetricFamily(
                "minicdn_ready_check", "1 when a readiness check passes.", labels=["check"]
            )
            for name, check in sorted(_section(ready, "checks").items()):
                checks.add_metric([name], 1 if isinstance(check, Mapping) and check.get("ok") else 0)
            yield checks

    def _traffic(self, t: Mapping[str, Any]) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "minicdn_requests",
            "Requests answered, by cache result (hit, stale, revalidated, miss, pass, error, synth) and by"
            " the tier the body came from (l1, l2, cache: stored but tier not tracked, origin, none).",
            labels=["result", "tier"],
        )
        for result, tiers in _section(t, "requests").items():  # in proxy.observe.OUTCOMES's order
            for tier, count in _section(tiers).items():
                requests.add_metric([result, tier], count)
        yield requests
        yield _counters(
            "minicdn_responses",
            "Responses written to clients, by status class.",
            "class",
            {c: _section(t, "responses").get(c, 0) for c in STATUS_CLASSES},
        )
        yield _counters(
            "minicdn_served_bytes",
            "Bytes written to clients (heads and bodies), by where the body came from"
            " (cache, origin, node: the node's own answers).",
            "source",
            {src: _section(t, "served_bytes").get(src, 0) for src in SOURCES},
        )
        latency = HistogramMetricFamily(
            "minicdn_request_duration_seconds",
            "Time from reading a request's head to writing the last byte of its answer, by cache result.",
            labels=["result"],
        )
        for result in RESULTS:
            _histogram(latency, [result], _section(_section(t, "latency"), result))
        yield latency
        origin = CounterMetricFamily(
            "minicdn_origin_requests",
            "Requests sent to the origin (upstream=origin) or to the owner edge of a key (upstream=peer), by"
            " outcome: ok (a response head arrived) or the cause of the failure (refused, dns,"
            " unreachable, timeout, reset, closed, incomplete, bad_response, failed).",
            labels=["upstream", "outcome"],
        )
        for upstream, outcomes in sorted(_section(t, "origin_requests").items()):
            for outcome, count in sorted(_section(outcomes).items()):
                origin.add_metric([upstream, outcome], count)
        yield origin
        origin_latency = HistogramMetricFamily(
            "minicdn_origin_request_duration_seconds",
            "Time from sending a request to the origin (or owner edge) to its response head, or its failure.",
            labels=["upstream"],
        )
        for upstream in UPSTREAMS:
            _histogram(origin_latency, [upstream], _section(_section(t, "origin_latency"), upstream))
        yield origin_latency

    def _engine(self, e: Mapping[str, Any], t: Mapping[str, Any]) -> Iterator[Metric]:
        prefetch = _section(e, "prefetch")
        yield _counters(
            "minicdn_coalesced_requests",
            "Requests answered from another request's origin fetch: in the same worker (scope=worker), or"
            " from the copy another worker of the box fetched and stored in L2 (scope=box).",
            "scope",
            {"worker": e.get("coalesced", 0), "box": e.get("box_waits", 0)},
        )
        yield _counter(
            "minicdn_coalesce_timeouts",
            "Requests that stopped waiting for another request's fetch and fetched alone.",
            e.get("coalesce_timeouts", 0),
        )
        yield _counter(
            "minicdn_purged_flights",
            "Requests that would have joined an origin fetch begun before a purge of their key, and"
            " fetched again instead (the purge came first: the fetch's copy is not for them).",
            e.get("purged_flights", 0),
        )
        yield _counters(
            "minicdn_hit_for_pass",
            "Requests sent to the origin at once, without waiting for another fetch of their key, because"
            " the key was marked hit-for-pass by this worker (scope=worker) or by another (scope=box).",
            "scope",
            {"worker": e.get("hit_for_pass", 0), "box": e.get("box_passes", 0)},
        )
        yield _counter(
            "minicdn_hit_for_pass_marks",
            "Hit-for-pass marks set (a response that may not be shared).",
            e.get("pass_marks", 0),
        )
        yield _gauge(
            "minicdn_hit_for_pass_keys",
            "Keys marked hit-for-pass now (summed over workers).",
            t.get("hit_for_pass_marks", 0),
        )
        yield _counters(
            "minicdn_background_fetches",
            "Fetches behind an answer: revalidations (stale-while-revalidate), refresh-ahead, whole"
            " objects fetched after a range miss, and preload prefetches (a hit among them included).",
            "kind",
            {
                "revalidation": e.get("background_revalidations", 0),
                "refresh_ahead": e.get("refresh_ahead", 0),
                "range_completion": e.get("partial_completions", 0),
                "prefetch": prefetch.get("started", 0),
            },
        )
        yield _counter(
            "minicdn_background_fetch_failures",
            "Background fetches that failed.",
            e.get("background_failures", 0) + prefetch.get("failed", 0),
        )
        yield _counter(
            "minicdn_prefetch_skipped",
            "Link: rel=preload targets not prefetched: too many at once, or already in flight.",
            prefetch.get("skipped", 0),
        )
        yield _counter(
            "minicdn_refresh_ahead_skipped",
            "Refresh-ahead (or range completion) fetches skipped: too many in flight.",
            e.get("refresh_ahead_skipped", 0),
        )

    def _tiers(self, s: Mapping[str, Any]) -> Iterator[Metric]:
        tiers = _section(s, "tiers")
        budgets = _section(s, "budgets")
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "bytes": GaugeMetricFamily(
                "minicdn_cache_bytes", "Bytes stored, by tier (L1: every worker's memory).", labels=["tier"]
            ),
            "budget": GaugeMetricFamily(
                "minicdn_cache_budget_bytes", "Byte budget of a tier, for the box.", labels=["tier"]
            ),
            "objects": GaugeMetricFamily(
                "minicdn_cache_objects", "Objects (keys) stored, by tier.", labels=["tier"]
            ),
            "evictions": CounterMetricFamily(
                "minicdn_cache_evictions", "Objects evicted to stay within a tier's budget.", labels=["tier"]
            ),
            "lookups": CounterMetricFamily(
                "minicdn_cache_lookups",
                "Lookups in a tier, by result (hit, miss).",
                labels=["tier", "result"],
            ),
            "writes": CounterMetricFamily(
                "minicdn_cache_writes",
                "Writes to a tier, by result (stored, rejected, failed: an I/O error such as a full disk).",
                labels=["tier", "result"],
            ),
            "corrupt": CounterMetricFamily(
                "minicdn_cache_corrupt",
                "Stored records that did not decode and were dropped.",
                labels=["tier"],
            ),
        }
        for tier in ("l1", "l2"):
            stats = tiers.get(tier)
            if not isinstance(stats, Mapping):
                continue  # disabled
            families["bytes"].add_metric([tier], stats.get("bytes", 0))
            families["budget"].add_metric([tier], budgets.get(tier, 0))
            families["objects"].add_metric([tier], stats.get("entries", 0))
            families["evictions"].add_metric([tier], stats.get("evictions", 0))
            families["lookups"].add_metric([tier, "hit"], stats.get("hits", 0))
            families["lookups"].add_metric([tier, "miss"], stats.get("misses", 0))
            families["writes"].add_metric([tier, "stored"], stats.get("sets", 0))
            families["writes"].add_metric([tier, "rejected"], stats.get("rejected", 0))
            families["writes"].add_metric([tier, "failed"], stats.get("failed", 0))
            families["corrupt"].add_metric([tier], stats.get("corrupt", 0))
        yield from families.values()
        storage = _section(s, "storage")
        yield _counter(
            "minicdn_l2_writes_dropped",
            "Stores not made because the L2 write-behind queue was full (cache.l2_write_queue): neither"
            " tier took the object.",
            storage.get("write_dropped", 0),
        )
        yield _counter(
            "minicdn_l2_writes_failed",
            "Queued L2 writes that failed (their stores undone in L1 as well).",
            storage.get("write_failed", 0),
        )
        yield _counter(
            "minicdn_l2_write_batches",
            "Disk transactions of the L2 write-behind.",
            storage.get("write_batches", 0),
        )
        yield _gauge(
            "minicdn_l2_write_queue_bytes",
            "Bytes of values waiting in the L2 write-behind queue (or being written).",
            storage.get("write_queued_bytes", 0),
        )
        yield _gauge(
            "minicdn_l2_write_queue_writes",
            "Writes waiting in the L2 write-behind queue (or being written).",
            storage.get("write_queued", 0),
        )

    def _purges(self, p: Mapping[str, Any], catalog: Mapping[str, Any]) -> Iterator[Metric]:
        kinds = {kind: 0 for kind in ("url", "prefix", "tag", "all", "invalidation", "slices")}
        kinds.update(_section(p, "by_kind"))
        yield _counters(
            "minicdn_purges",
            "Purges carried out, by kind: url, prefix, tag, all, invalidation (a successful unsafe"
            " request, RFC 9111 section 4.4), or slices (of a large object the origin changed or stopped"
            " slicing). In a cluster, purges from the purge stream count too.",
            "kind",
            kinds,
        )
        yield _counter("minicdn_purged_keys", "Keys the purges covered.", p.get("keys_purged", 0))
        yield _counter(
            "minicdn_purges_applied_from_log",
            "Other workers' purges applied to a worker's memory tier.",
            p.get("applied_from_log", 0),
        )
        yield _counter(
            "minicdn_purge_screened",
            "Late copies of purged objects caught when they turned up (an in-flight fetch, a queued write).",
            p.get("screened", 0),
        )
        yield _counter(
            "minicdn_purge_late_copies",
            "Copies a purge covered that it could not find at once (catalogued later), purged through the"
            " log.",
            p.get("late_copies", 0),
        )
        yield _gauge("minicdn_purge_epoch", "The purge log's epoch (one per purge).", p.get("epoch", 0))
        yield _gauge("minicdn_catalog_entries", "Entries in the purge catalogue.", catalog.get("entries", 0))

    def _slices(self, sl: Mapping[str, Any]) -> Iterator[Metric]:
        yield _counter(
            "minicdn_slice_answers",
            "Requests answered from the slices of a large object (cache.slice_threshold, cache.slice_size).",
            sl.get("answers", 0),
        )
        yield _counters(
            "minicdn_slices",
            "Slices of large objects the slicer had, by how: hit (stored and fresh), fetched (a 206 from"
            " the origin, stored), revalidated (a stale slice the origin confirmed with a 304, in the"
            " background too). The slice whose fetch showed an object to be large is a miss, not counted.",
            "result",
            {
                "hit": sl.get("hits", 0),
                "fetched": sl.get("fetched", 0),
                "revalidated": sl.get("revalidated", 0),
            },
        )
        yield _counter(
            "minicdn_slice_invalidations",
            "Sliced objects whose slices were all dropped because the origin's representation changed"
            " (another ETag or length).",
            sl.get("invalidations", 0),
        )
        yield _counter(
            "minicdn_slice_unsliced",
            "Sliced objects no longer sliced because the origin stopped answering their slices (a 200 to a"
            " Range, no strong ETag, not storable): their slices dropped, handled without slices.",
            sl.get("unsliced", 0),
        )
        yield _counter(
            "minicdn_slice_streams_aborted",
            "Streams of slices cut after their head went out: a slice could not be had, or was of another"
            " representation.",
            sl.get("aborted", 0),
        )

    def _box(self, box: Mapping[str, Any], per_worker: Sequence[Any]) -> Iterator[Metric]:
        yield _counter(
            "minicdn_box_fetch_locks",
            "Fetch locks the supervisor handed out (or refused).",
            box.get("locks", 0),
        )
        yield _counter(
            "minicdn_box_lock_waits",
            "Lock requests that waited for another worker's fetch of the same key.",
            box.get("waits", 0),
        )
        yield _counter(
            "minicdn_box_leaders_gone",
            "Keys released because the worker fetching them died.",
            box.get("gone", 0),
        )
        yield _counter(
            "minicdn_box_pass_marks",
            "Box-wide hit-for-pass marks set by the supervisor (a response no worker may share).",
            box.get("passes", 0),
        )
        worker_requests = CounterMetricFamily(
            "minicdn_worker_requests",
            "Requests looked up, by live worker (how the load spreads) and its generation (reloads).",
            labels=["worker", "generation"],
        )
        for row in per_worker:
            if isinstance(row, Mapping):
                labels = [str(row.get("worker")), str(row.get("generation") or 1)]
                worker_requests.add_metric(labels, row.get("requests", 0))
        yield worker_requests

    def _cluster(self, edge: Mapping[str, Any]) -> Iterator[Metric]:
        members = _section(edge, "members")
        up = GaugeMetricFamily(
            "minicdn_cluster_peer_up",
            "1 when a member of the cluster is healthy and its breaker closed (as the first worker sees it).",
            labels=["peer"],
        )
        for name, state in sorted(members.items()):
            up.add_metric([name], 1 if isinstance(state, Mapping) and state.get("available") else 0)
        yield up
        yield _gauge("minicdn_cluster_members", "Members of the cluster, this edge included.", len(members))
        routing = _section(edge, "routing")
        yield _counters(
            "minicdn_cluster_owner_requests",
            "Cache fetches for keys another edge owns: forwarded to the owner, or sent to the origin"
            " after the owner failed (fallback), while it was unavailable, or because its copy was older"
            " than a purge made here that it had not heard of (refused).",
            "outcome",
            {
                "forwarded": routing.get("forwarded_to_owner", 0),
                "fallback": routing.get("owner_fallbacks", 0),
                "unavailable": routing.get("owner_unavailable", 0),
                "refused": routing.get("owner_copies_refused", 0),
            },
        )
        yield _counter(
            "minicdn_cluster_upstream_copies_refused",
            "Answers of an upstream cache (a shield) older than a purge made here: asked again (no-cache).",
            routing.get("upstream_copies_refused", 0),
        )
        yield _counter(
            "minicdn_cluster_owned_here",
            "Cache fetches for keys this edge owns.",
            routing.get("owned_here", 0),
        )
        yield _counter(
            "minicdn_cluster_served_for_peers",
            "Requests other edges sent here as the owner of their key.",
            routing.get("served_for_peers", 0),
        )
        stream = _section(edge, "purge_stream")
        if stream:
            yield _gauge(
                "minicdn_cluster_purge_stream_lag_seconds",
                "Delay between publishing and applying the last purge taken from the purge stream.",
                float(stream.get("stream_lag_ms", 0.0)) / 1000,
            )
            yield _gauge(
                "minicdn_cluster_purge_stream_caught_up",
                "1 once the purge stream was read up to its end since the start.",
                1 if stream.get("caught_up") else 0,
            )
            yield _counters(
                "minicdn_cluster_purges",
                "Purges published to the purge stream, and applied from it.",
                "direction",
                {"published": stream.get("published", 0), "applied": stream.get("applied_from_stream", 0)},
            )
            yield _gauge(
                "minicdn_cluster_purge_outbox",
                "Purges accepted here, not published yet.",
                stream.get("outbox", 0),
            )
        yield _counters(
            "minicdn_cluster_redis_errors",
            "Failed Redis calls, by part (membership, purge_stream).",
            "part",
            {
                "membership": edge.get("membership_redis_errors", 0),
                "purge_stream": stream.get("redis_errors", 0),
            },
        )


# ------------------------------------------------------------------------- helpers


def _section(data: Any, key: str | None = None) -> Mapping[str, Any]:
    """data[key] (or data itself) when it is a mapping, else an empty one: a section may be absent."""
    value = data.get(key) if key is not None and isinstance(data, Mapping) else data
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _counter(name: str, doc: str, value: Any) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=_number(value))


def _counters(name: str, doc: str, label: str, values: Mapping[str, Any]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], _number(value))
    return family


def _gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=_number(value))


def _histogram(family: HistogramMetricFamily, labels: Labels, data: Mapping[str, Any]) -> None:
    """One series of a histogram from proxy.observe.Histogram.snapshot (cumulative counts by `le`)."""
    buckets = _section(data, "buckets")
    if not buckets:
        return
    family.add_metric(
        list(labels),
        [(_le(bound), _number(count)) for bound, count in buckets.items()],
        sum_value=_number(data.get("sum", 0.0)),
    )


def _le(bound: str) -> str:
    return bound if bound == "+Inf" else repr(float(bound))
