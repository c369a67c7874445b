"""The node's numbers: one worker's snapshot, and the sum over the workers of a box.

What must live here: which counters exist and how a box adds them up, so the
admin API's /stats and `minicdn stats` count every request once, whichever
worker took it. A worker's snapshot is plain JSON (it crosses the supervisor's
socket). Summing: counters add up; facts about what the workers share (the
disk tier's entries and bytes, the catalogue, the purge epoch) are one box-wide
value, not one per worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from typing import Any

from proxy import observe
from proxy.node import Node
from proxy.storage.disk import DiskStorage

log = logging.getLogger("proxy.stats")

# Paths (section, key) that describe something the workers share: the same value in every
# snapshot, or the largest when they disagree for a moment (the purge epoch).
SHARED = {
    ("tiers", "l2", "entries"),
    ("tiers", "l2", "bytes"),
    ("catalog", "entries"),
    ("purge", "epoch"),
    # One worker per box follows an edge's purge stream: its lag is the box's.
    ("edge", "purge_stream", "stream_lag_ms"),
}
# Per-worker lines of the breakdown: enough to see how the load spreads.
BREAKDOWN = ("requests", "hits", "misses", "passes", "coalesced", "box_waits")


async def snapshot(node: Node) -> dict[str, Any]:
    """This worker's counters (engine, tiers, storage, purge, slices, catalogue, and any extra sections)."""
    storage = node.storage
    purger = node.purger
    l1, l2 = storage.l1, storage.l2
    slicer = node.engine.slicer
    if isinstance(l2, DiskStorage):
        await asyncio.to_thread(l2.refresh_stats)  # entries/bytes of the shared disk tier
    catalogued = await asyncio.to_thread(purger.catalog.count)
    stats: dict[str, Any] = {
        "name": node.cfg.name,
        "engine": dataclasses.asdict(node.engine.stats),
        "tiers": {
            "l1": dataclasses.asdict(l1.stats) if l1 is not None else None,
            "l2": dataclasses.asdict(l2.stats) if l2 is not None else None,
        },
        # Lookups as seen through both tiers (a hit in either is one hit) and dropped L2 writes;
        # entries and bytes are per tier, above.
        "storage": {
            **{k: v for k, v in dataclasses.asdict(storage.stats).items() if k not in ("entries", "bytes")},
            # The L2 write-behind queue now: writes waiting (or being written), their bytes; batches so far.
            "write_queued": len(storage.write_queue),
            "write_queued_bytes": storage.write_queue.bytes,
            "write_batches": storage.write_queue.batches,
        },
        "purge": {**dataclasses.asdict(purger.stats), "epoch": purger.current_epoch()},
        # What the large-object slicer did (proxy/slicer.py SliceStats); None: slicing is off
        # (cache.slice_size 0).
        "slices": dataclasses.asdict(slicer.stats) if slicer is not None else None,
        "catalog": {"entries": catalogued},
        # How the on-disk parts opened: a disk tier that failed, a catalogue elsewhere, files moved aside.
        "health": dataclasses.asdict(node.health),
        # What the front and the origin client counted (proxy/observe.py): results, statuses,
        # bytes, latency histograms, origin requests, the hottest keys.
        "traffic": node.recorder.snapshot(node.engine),
    }
    for extra in node.extra_stats:
        # More sections from the layer above the proxy (the edge cluster); never replacing ours.
        stats.update({k: v for k, v in extra().items() if k not in stats})
    return stats


async def box(node: Node) -> dict[str, Any]:
    """The box's numbers, as /stats shows them: every worker's snapshot summed, or this node alone.

    Beside the sums: `box` (the supervisor's own counters and when it started)
    and `budgets` (the byte budgets of the tiers, for the whole box).
    """
    supervisor = node.box
    total: dict[str, Any] | None = None
    if supervisor is not None:
        answer = await supervisor.request({"op": "stats"}, timeout=10.0)
        workers = answer.get("workers") if answer is not None else None
        if answer is not None and isinstance(workers, list) and workers:
            total = combine(workers)
            total["box"] = answer.get("box") or {}
            retired = answer.get("retired")
            if isinstance(retired, dict) and retired:
                # The counters of workers that exited (reloads, restarts): the box's never go down.
                total = observe.add(total, retired)
        else:
            log.warning("the supervisor did not answer for the box's stats; showing this worker's")
    if total is None:
        total = alone(await snapshot(node))
        total["box"] = {"started": node.recorder.started}
    cache = node.cfg.cache
    # A worker's L1 budget is its share of the box's (proxy/supervisor.py); L2 is one for the box.
    total["budgets"] = {
        "l1": cache.l1.budget * max(1, int(total.get("workers") or 1)) if cache.l1.enabled else 0,
        "l2": cache.l2.budget if cache.l2.enabled else 0,
    }
    return total


def combine(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """The box's numbers from its workers' snapshots, with the worker count and a per-worker breakdown."""
    live = [s for s in snapshots if s.get("engine")]
    total = _sum([{k: v for k, v in s.items() if k not in ("worker", "pid", "generation")} for s in live], ())
    if not isinstance(total, dict):
        total = {}
    total["workers"] = len(live)
    health = _box_health([s.get("health") for s in live])
    if health is not None:
        total["health"] = health
    total["per_worker"] = [
        {
            "worker": s.get("worker"),
            "pid": s.get("pid"),
            "generation": s.get("generation"),
            **{k: s["engine"].get(k, 0) for k in BREAKDOWN},
        }
        for s in live
    ]
    return total


def alone(stats: dict[str, Any]) -> dict[str, Any]:
    """A node that is not one of several workers: itself is the box."""
    return {
        **stats,
        "health": _box_health([stats.get("health")]),
        "workers": 1,
        "per_worker": [
            {"worker": 0, "pid": os.getpid(), **{k: stats["engine"].get(k, 0) for k in BREAKDOWN}}
        ],
    }


def _box_health(reports: list[Any]) -> dict[str, Any] | None:
    """The box's health from its workers'. Each finds its own disk failures while running (a corrupt
    cache.db, a removed directory): the first worker that has one stands for the box, not whichever
    came first, and `workers_l2_failed` counts them."""
    health = [h for h in reports if isinstance(h, dict)]
    if not health:
        return None
    worst = next((h for h in health if h.get("l2") not in ("ok", "disabled")), health[0])
    return {**worst, "workers_l2_failed": sum(h.get("l2") == "failed" for h in health)}


def _sum(values: list[Any], path: tuple[str, ...]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, dict):
        keys: dict[str, None] = {}
        for v in present:
            if isinstance(v, dict):
                keys.update(dict.fromkeys(v))
        return {k: _sum([v.get(k) for v in present if isinstance(v, dict)], (*path, k)) for k in keys}
    if isinstance(first, bool) or not isinstance(first, int | float):
        return first  # a name, a flag, a URL: the workers agree on it
    numbers = [v for v in present if isinstance(v, int | float) and not isinstance(v, bool)]
    if path in SHARED:
        return max(numbers)
    return sum(numbers)
