"""The in-process tier (L1): a byte-budgeted dict with a pluggable eviction policy.

MemoryStorage keeps CachedResource objects as they are (no serialisation), so a
hit is a dict lookup plus the policy's bookkeeping. The budget is in bytes, as
measured by CachedResource.size(), never in item count.

Each policy is a small helper class that only tracks ordering; MemoryStorage
owns the data and the byte accounting.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Protocol

from proxy.entry import CachedResource
from proxy.storage.base import EVICTION_POLICIES, EvictionPolicy, TierStats


class _Policy(Protocol):
    """Ordering bookkeeping for one eviction policy."""

    # Called on every hit; None when hits do not change the order, so that the
    # hit path can skip a function call altogether.
    touch: Callable[[str], object] | None

    def insert(self, key: str, prior: int) -> None:
        """Track key; prior is what remove() returned for it when it is a replacement, else 0."""

    def remove(self, key: str) -> int:
        """Stop tracking key; returns state worth carrying over a replacement (LFU: its count)."""

    def victim(self) -> str:
        """The key to evict next (only called when something is tracked)."""

    def clear(self) -> None:
        """Forget everything."""


class _OrderPolicy:
    """LRU and FIFO: an OrderedDict of keys, oldest first (O(1) everything).

    LRU moves a key to the end on every hit; FIFO does not. A replacement counts
    as a new insertion for both (FIFO then matches diskcache's
    least-recently-stored, where a replace refreshes store_time).
    """

    def __init__(self, reorder_on_hit: bool) -> None:
        self._order: OrderedDict[str, None] = OrderedDict()
        # The bound C method itself: the LRU hit path makes no Python-level call.
        self.touch: Callable[[str], object] | None = self._order.move_to_end if reorder_on_hit else None

    def insert(self, key: str, prior: int) -> None:
        self._order[key] = None

    def remove(self, key: str) -> int:
        del self._order[key]
        return 0

    def victim(self) -> str:
        return next(iter(self._order))

    def clear(self) -> None:
        self._order.clear()


class _LfuPolicy:
    """Least frequently used, ties broken by least recently used, O(1) per operation.

    Keys live in per-count buckets (OrderedDicts, least recently used first);
    a hit moves a key from bucket n to the end of bucket n + 1. The minimum
    non-empty count is tracked so that finding the victim needs no scan,
    except after an explicit delete emptied the minimum bucket (then a
    min() over the distinct counts, which are few).

    A replacement keeps the key's count (and adds one for the set): a popular
    URL that was revalidated is still popular. Counts never age.
    """

    def __init__(self) -> None:
        self._count: dict[str, int] = {}
        self._buckets: dict[int, OrderedDict[str, None]] = {}
        self._min = 0
        self.touch: Callable[[str], object] | None = self._touch

    def _touch(self, key: str) -> None:
        count = self._count[key]
        bucket = self._buckets[count]
        del bucket[key]
        if not bucket:
            del self._buckets[count]
            if self._min == count:
                self._min = count + 1
        self._count[key] = count + 1
        nxt = self._buckets.get(count + 1)
        if nxt is None:
            nxt = self._buckets[count + 1] = OrderedDict()
        nxt[key] = None

    def insert(self, key: str, prior: int) -> None:
        count = prior + 1
        self._count[key] = count
        bucket = self._buckets.get(count)
        if bucket is None:
            bucket = self._buckets[count] = OrderedDict()
        bucket[key] = None
        if count < self._min or len(self._count) == 1:
            self._min = count

    def remove(self, key: str) -> int:
        count = self._count.pop(key)
        bucket = self._buckets[count]
        del bucket[key]
        if not bucket:
            del self._buckets[count]
            # _min may now point at an empty bucket; victim() repairs it lazily.
        return count

    def victim(self) -> str:
        bucket = self._buckets.get(self._min)
        if bucket is None:
            self._min = min(self._buckets)
            bucket = self._buckets[self._min]
        return next(iter(bucket))

    def clear(self) -> None:
        self._count.clear()
        self._buckets.clear()
        self._min = 0


class _RandomPolicy:
    """A uniformly random victim in O(1): a key list plus key → index, swap-remove on delete."""

    def __init__(self, seed: int | None) -> None:
        self._keys: list[str] = []
        self._index: dict[str, int] = {}
        self._rng = random.Random(seed)
        self.touch: Callable[[str], object] | None = None

    def insert(self, key: str, prior: int) -> None:
        self._index[key] = len(self._keys)
        self._keys.append(key)

    def remove(self, key: str) -> int:
        i = self._index.pop(key)
        last = self._keys.pop()
        if last != key:
            self._keys[i] = last
            self._index[last] = i
        return 0

    def victim(self) -> str:
        return self._keys[self._rng.randrange(len(self._keys))]

    def clear(self) -> None:
        self._keys.clear()
        self._index.clear()


class _NoEvictionPolicy:
    """Tracks nothing: MemoryStorage refuses sets that do not fit instead of evicting."""

    def __init__(self) -> None:
        self.touch: Callable[[str], object] | None = None

    def insert(self, key: str, prior: int) -> None:
        pass

    def remove(self, key: str) -> int:
        return 0

    def victim(self) -> str:  # pragma: no cover - never called for noeviction
        raise LookupError("noeviction has no victims")

    def clear(self) -> None:
        pass


def _make_policy(policy: EvictionPolicy, rng_seed: int | None) -> _Policy:
    if policy == "lru":
        return _OrderPolicy(reorder_on_hit=True)
    if policy == "fifo":
        return _OrderPolicy(reorder_on_hit=False)
    if policy == "lfu":
        return _LfuPolicy()
    if policy == "random":
        return _RandomPolicy(rng_seed)
    return _NoEvictionPolicy()


class MemoryStorage:
    """In-process storage tier bounded by a byte budget (CachedResource.size()).

    Policies: "lru", "lfu" (ties: least recent), "fifo" (hits do not reorder;
    a replacement counts as a new insertion), "random" (seedable with
    rng_seed), and "noeviction" (a set that does not fit is refused: set()
    returns False and stats.rejected grows; replacing a key is allowed when
    the new value fits once the old one is gone). An object larger than the
    whole budget is always refused. A refused set leaves any previous value
    under that key in place.

    Not thread-safe, by design: the engine calls it only from the event-loop
    thread, and locking would tax every hit.
    """

    def __init__(
        self,
        budget_bytes: int,
        policy: EvictionPolicy = "lru",
        *,
        name: str = "l1",
        rng_seed: int | None = None,
    ) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        if policy not in EVICTION_POLICIES:
            raise ValueError(f"unknown eviction policy {policy!r}; expected one of {EVICTION_POLICIES}")
        self.name = name
        self.stats = TierStats()
        self.budget_bytes = budget_bytes
        self.policy: EvictionPolicy = policy
        # key -> (resource, its size): sizes are cached because size() walks headers.
        self._data: dict[str, tuple[CachedResource, int]] = {}
        self._policy = _make_policy(policy, rng_seed)
        self._touch = self._policy.touch
        self._bytes = 0

    def get(self, key: str) -> CachedResource | None:
        """The resource under key (counts a hit or miss and updates recency/frequency)."""
        entry = self._data.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        touch = self._touch
        if touch is not None:
            touch(key)
        self.stats.hits += 1
        return entry[0]

    def peek(self, key: str) -> CachedResource | None:
        """The resource under key without touching recency, frequency or stats."""
        entry = self._data.get(key)
        return None if entry is None else entry[0]

    def set(self, resource: CachedResource) -> bool:
        """Store resource, evicting as the policy says; False when refused."""
        stats = self.stats
        key = resource.key
        size = resource.size()
        budget = self.budget_bytes
        if size > budget:
            stats.rejected += 1
            return False
        old = self._data.get(key)
        old_size = 0 if old is None else old[1]
        if self.policy == "noeviction" and self._bytes - old_size + size > budget:
            stats.rejected += 1
            return False

        prior = 0
        if old is not None:
            # Take the old value out first, so that eviction never picks the
            # key being written and the byte count is exact.
            del self._data[key]
            prior = self._policy.remove(key)
            self._bytes -= old_size
        while self._bytes + size > budget:
            self._evict_one()
        self._data[key] = (resource, size)
        self._policy.insert(key, prior)
        self._bytes += size
        stats.sets += 1
        stats.entries = len(self._data)
        stats.bytes = self._bytes
        return True

    def _evict_one(self) -> None:
        victim = self._policy.victim()
        self._policy.remove(victim)
        _, size = self._data.pop(victim)
        self._bytes -= size
        self.stats.evictions += 1

    def delete(self, key: str) -> bool:
        """Remove key; True when it was present."""
        entry = self._data.pop(key, None)
        if entry is None:
            return False
        self._policy.remove(key)
        self._bytes -= entry[1]
        self.stats.entries = len(self._data)
        self.stats.bytes = self._bytes
        return True

    def keys(self) -> Iterator[str]:
        """A snapshot of the keys (safe to delete while iterating)."""
        return iter(list(self._data))

    def clear(self) -> None:
        """Remove everything (counters other than entries/bytes are kept)."""
        self._data.clear()
        self._policy.clear()
        self._bytes = 0
        self.stats.entries = 0
        self.stats.bytes = 0

    def close(self) -> None:
        """Drop the contents: an in-process tier holds no other resources."""
        self.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
