"""Weighted rendezvous (highest random weight) hashing of cache keys to owner edges.

Each (node, key) pair gets a score from xxhash; the node with the highest
weighted score owns the key. Adding or removing one of N equal nodes moves
about 1/N of the keys, and only the keys that node gains or loses.
Reference: Thaler & Ravishankar, "Using name-based mappings to increase hit
rates" (1998); the weighted form -w / ln(u) is Schindelhauer & Schomaker's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import xxhash

_SPAN = float(2**64)


def score(node: str, weight: float, key: str) -> float:
    """The weighted score of node for key (larger wins)."""
    h = xxhash.xxh64_intdigest(f"{node}\x00{key}".encode("utf-8", "surrogateescape"))
    u = (h + 0.5) / _SPAN  # strictly inside (0, 1)
    return -weight / math.log(u)


def owner(key: str, nodes: Iterable[tuple[str, float]]) -> str | None:
    """The node that owns key, or None when there are no nodes."""
    best: str | None = None
    best_score = -1.0
    for name, weight in nodes:
        s = score(name, weight, key)
        if s > best_score or (s == best_score and best is not None and name < best):
            best, best_score = name, s
    return best
