"""The Storage contract, run against every tier (cachetools CacheTestMixin style).

Each tier is built by a factory taking (budget_bytes, policy); `used` reports
the bytes each underlying tier occupies against its budget, with the disk
tier measured by diskcache's volume() (see DISK_NOEVICTION_ALLOWANCE).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.entry import CachedResource
from proxy.storage import DiskStorage, EvictionPolicy, MemoryStorage, Storage, TieredStorage

KiB = 1024
# volume() counts SQLite pages; noeviction's admission check can only
# estimate the page rounding of the entry it admits. The evicting policies
# cull after every set, so they get no allowance (given a budget above the
# ~32 KiB an empty SQLite file takes).
DISK_NOEVICTION_ALLOWANCE = 16 * KiB


@dataclass
class Tier:
    make: Callable[[int, EvictionPolicy], Storage]
    used: Callable[[Storage], list[tuple[int, int]]]  # (bytes used, allowed) per underlying tier


def _memory_used(s: Storage) -> list[tuple[int, int]]:
    assert isinstance(s, MemoryStorage)
    return [(s.stats.bytes, s.budget_bytes)]


def _disk_used(s: Storage) -> list[tuple[int, int]]:
    assert isinstance(s, DiskStorage)
    allowance = DISK_NOEVICTION_ALLOWANCE if s.policy == "noeviction" else 0
    return [(s.volume(), s.budget_bytes + allowance)]


def _tiered_used(s: Storage) -> list[tuple[int, int]]:
    assert isinstance(s, TieredStorage) and s.l1 is not None and s.l2 is not None
    return _memory_used(s.l1) + _disk_used(s.l2)


@pytest.fixture(params=["memory", "disk", "tiered"])
def tier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tier]:
    made: list[Storage] = []
    dirs = itertools.count()

    def disk(budget: int, policy: EvictionPolicy) -> DiskStorage:
        return DiskStorage(tmp_path / f"d{next(dirs)}", budget, policy)

    def make(budget: int, policy: EvictionPolicy) -> Storage:
        s: Storage
        if request.param == "memory":
            s = MemoryStorage(budget, policy)
        elif request.param == "disk":
            s = disk(budget, policy)
        else:
            s = TieredStorage(MemoryStorage(budget, policy), disk(budget, policy))
        made.append(s)
        return s

    used = {"memory": _memory_used, "disk": _disk_used, "tiered": _tiered_used}[request.param]
    yield Tier(make, used)
    for s in made:
        s.close()


BIG = 10 * 1024 * KiB


def test_round_trip(
    tier: Tier, resource: Callable[..., CachedResource], multi_variant: Callable[..., CachedResource]
) -> None:
    s = tier.make(BIG, "lru")
    items = [
        multi_variant(),
        resource("https://example.test/empty", body=b""),
        resource("https://example.test/ünïcode?q=✓", headers=(("X-Ü", "✓ välue"), ("X-Raw", "caf\udce9"))),
        resource("https://example.test/big", body_size=100 * KiB),  # a separate file on disk
        CachedResource(key="https://example.test/no-variants"),
    ]
    for r in items:
        assert s.set(r) is True
    for r in items:
        got = s.get(r.key)
        assert got == r
        assert got is not None and type(got.variants) is tuple


def test_missing_key(tier: Tier) -> None:
    s = tier.make(BIG, "lru")
    assert s.get("https://example.test/nope") is None


def test_replace(tier: Tier, resource: Callable[..., CachedResource]) -> None:
    s = tier.make(BIG, "lru")
    assert s.set(resource("k", body=b"one"))
    assert s.set(resource("k", body=b"two, longer"))
    got = s.get("k")
    assert got is not None and got.variants[0].body == b"two, longer"
    assert list(s.keys()) == ["k"]


def test_delete(tier: Tier, resource: Callable[..., CachedResource]) -> None:
    s = tier.make(BIG, "lru")
    s.set(resource("a"))
    s.set(resource("b"))
    assert s.delete("a") is True
    assert s.delete("a") is False
    assert s.delete("never") is False
    assert s.get("a") is None
    assert s.get("b") is not None


def test_keys_snapshot_survives_deletes(tier: Tier, resource: Callable[..., CachedResource]) -> None:
    s = tier.make(BIG, "lru")
    names = {f"k{i}" for i in range(20)}
    for k in names:
        s.set(resource(k))
    seen = set()
    snapshot = s.keys()  # iterated while deleting: must not be a live view
    for k in snapshot:
        seen.add(k)
        assert s.delete(k)
    assert seen == names
    assert list(s.keys()) == []


def test_clear(tier: Tier, resource: Callable[..., CachedResource]) -> None:
    s = tier.make(BIG, "lru")
    for i in range(5):
        s.set(resource(f"k{i}"))
    s.clear()
    assert list(s.keys()) == []
    assert s.get("k0") is None
    assert s.set(resource("again"))
    assert s.get("again") is not None


def test_stats_counters(tier: Tier, resource: Callable[..., CachedResource]) -> None:
    s = tier.make(BIG, "lru")
    s.set(resource("a"))
    s.set(resource("b"))
    s.get("a")
    s.get("a")
    s.get("missing")
    assert (s.stats.sets, s.stats.hits, s.stats.misses, s.stats.rejected) == (2, 2, 1, 0)


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "noeviction"])
def test_byte_budget_holds_under_a_stream(
    tier: Tier, policy: EvictionPolicy, resource: Callable[..., CachedResource]
) -> None:
    budget = 256 * KiB
    s = tier.make(budget, policy)
    accepted = 0
    for i in range(120):
        # Sizes vary from 1 to ~12 KiB; a few hits keep lru/lfu honest.
        accepted += s.set(resource(f"https://example.test/{i}", body_size=1 + (i * 3001) % (12 * KiB)))
        if i % 3 == 0:
            s.get(f"https://example.test/{i // 2}")
        for used, allowed in tier.used(s):
            assert used <= allowed
    assert accepted > 0
    if policy == "noeviction":
        assert accepted < 120 and s.stats.rejected > 0


def test_object_larger_than_budget_rejected(tier: Tier, resource: Callable[..., CachedResource]) -> None:
    budget = 64 * KiB
    s = tier.make(budget, "lru")
    assert s.set(resource("small", body_size=KiB))
    assert s.set(resource("huge", body_size=budget + 1)) is False
    assert s.get("huge") is None
    assert s.stats.rejected == 1
    assert s.get("small") is not None  # nothing was evicted to make room


def test_noeviction_refuses_when_full(tier: Tier, resource: Callable[..., CachedResource]) -> None:
    s = tier.make(128 * KiB, "noeviction")
    stored: list[str] = []
    for i in range(40):
        key = f"https://example.test/{i}"
        if not s.set(resource(key, body_size=10 * KiB)):
            break
        stored.append(key)
    else:
        pytest.fail("noeviction never refused")
    assert stored and s.stats.rejected == 1
    # Nothing was evicted, and a same-size replacement of a stored key fits.
    assert all(s.get(k) is not None for k in stored)
    assert s.set(resource(stored[0], body_size=10 * KiB, status=201))
    got = s.get(stored[0])
    assert got is not None and got.variants[0].status == 201
    # After a delete there is room again.
    assert s.delete(stored[1])
    assert s.set(resource("https://example.test/new", body_size=10 * KiB))
