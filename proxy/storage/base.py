"""The narrow contract every storage tier meets.

A tier maps a primary cache key (str) to a CachedResource. It never interprets
HTTP: policy decides what to store, the tier only keeps it within its byte
budget. Implementations are synchronous; the engine runs disk-backed tiers in a
thread so that the event loop never blocks on I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from proxy.entry import CachedResource

EvictionPolicy = Literal["lru", "lfu", "fifo", "random", "noeviction"]
EVICTION_POLICIES: tuple[EvictionPolicy, ...] = ("lru", "lfu", "fifo", "random", "noeviction")


@dataclass(slots=True)
class TierStats:
    """Counters a tier keeps about itself (exposed by the stats endpoint later)."""

    hits: int = 0
    misses: int = 0
    sets: int = 0
    rejected: int = 0  # refused: too big for the budget, or noeviction and full
    evictions: int = 0
    corrupt: int = 0  # entries that did not decode and were dropped
    entries: int = 0
    bytes: int = 0
    failed: int = 0  # writes that failed with an I/O error (a full disk, a lock timeout)
    outdated: int = 0  # entries of an older codec version, read as misses and removed
    # TieredStorage only: stores dropped because the L2 write-behind queue was
    # full (neither tier took the value; both keep whatever they had for the key).
    write_dropped: int = 0
    # TieredStorage only: queued L2 writes that failed (their stores undone in L1 as well).
    write_failed: int = 0


class Storage(Protocol):
    """A byte-budgeted map from primary key to CachedResource."""

    name: str
    stats: TierStats

    def get(self, key: str) -> CachedResource | None:
        """The resource stored under key, or None. Undecodable data is a miss and is removed."""
        ...

    def set(self, resource: CachedResource) -> bool:
        """Store resource under resource.key; False when the tier refused it."""
        ...

    def delete(self, key: str) -> bool:
        """Remove key; True when something was removed."""
        ...

    def __contains__(self, key: object) -> bool:
        """Whether key is stored (no recency or stats side effects)."""
        ...

    def keys(self) -> Iterator[str]:
        """Every stored key (a snapshot; safe to delete while iterating)."""
        ...

    def clear(self) -> None:
        """Remove everything."""
        ...

    def close(self) -> None:
        """Release files and handles."""
        ...
