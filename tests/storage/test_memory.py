"""MemoryStorage specifics: which victim each policy picks, byte accounting, peek."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from proxy.entry import CachedResource
from proxy.storage import EVICTION_POLICIES, EvictionPolicy, MemoryStorage

Make = Callable[..., CachedResource]


def _three_slot_store(policy: EvictionPolicy, resource: Make) -> MemoryStorage:
    """A store whose budget holds exactly three of the same-size objects a, b, c."""
    size = resource("a", body_size=1000).size()
    store = MemoryStorage(3 * size, policy)
    for key in "abc":
        assert store.set(resource(key, body_size=1000))
    return store


def _keys(store: MemoryStorage) -> set[str]:
    return set(store.keys())


def test_lru_evicts_least_recently_got(resource: Make) -> None:
    s = _three_slot_store("lru", resource)
    s.get("a")
    s.set(resource("d", body_size=1000))
    assert _keys(s) == {"a", "c", "d"}
    assert s.stats.evictions == 1


def test_lfu_evicts_least_frequently_got(resource: Make) -> None:
    s = _three_slot_store("lfu", resource)
    for key in "aaacb":  # a: 3 hits; b and c: 1 each, b more recent
        s.get(key)
    s.set(resource("d", body_size=1000))
    assert _keys(s) == {"a", "b", "d"}  # c: fewest hits, and least recent among ties
    # The newcomer d has no hits yet, so it is the next victim.
    s.set(resource("e", body_size=1000))
    assert _keys(s) == {"a", "b", "e"}


def test_lfu_ties_broken_by_least_recent(resource: Make) -> None:
    s = _three_slot_store("lfu", resource)
    for key in "cab":
        s.get(key)
    s.set(resource("d", body_size=1000))
    assert _keys(s) == {"a", "b", "d"}


def test_lfu_replacement_keeps_frequency(resource: Make) -> None:
    s = _three_slot_store("lfu", resource)
    for key in "aabbc":
        s.get(key)
    s.set(resource("a", body_size=1000, status=203))  # a popular key, revalidated
    s.set(resource("d", body_size=1000))
    assert _keys(s) == {"a", "b", "d"}


def test_lfu_victim_after_deleting_the_least_frequent(resource: Make) -> None:
    s = _three_slot_store("lfu", resource)
    for key in "aaabbc":  # uses: a 4, b 3, c 2
        s.get(key)
    s.delete("c")  # the minimum-count bucket is gone; victim() must look further
    # Exactly the room a leaves: one eviction is needed, and it must be b, not a.
    a = s.peek("a")
    assert a is not None
    room = s.budget_bytes - a.size()
    assert s.set(resource("big", body_size=1000 + room - resource("big", body_size=1000).size()))
    assert _keys(s) == {"a", "big"}


def test_fifo_evicts_oldest_even_if_recently_read(resource: Make) -> None:
    s = _three_slot_store("fifo", resource)
    for _ in range(5):
        s.get("a")
    s.set(resource("d", body_size=1000))
    assert _keys(s) == {"b", "c", "d"}


def test_fifo_replacement_counts_as_new_insertion(resource: Make) -> None:
    s = _three_slot_store("fifo", resource)
    s.set(resource("a", body_size=1000, status=203))
    s.set(resource("d", body_size=1000))
    assert _keys(s) == {"a", "c", "d"}


def test_random_holds_budget_and_is_deterministic_with_a_seed(resource: Make) -> None:
    def run(seed: int) -> list[str]:
        s = MemoryStorage(20_000, "random", rng_seed=seed)
        for i in range(300):
            s.set(resource(f"k{i}", body_size=100 + (i * 37) % 900))
            assert s.stats.bytes <= s.budget_bytes
        return sorted(s.keys())

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_noeviction_refuses_and_keeps_everything(resource: Make) -> None:
    s = _three_slot_store("noeviction", resource)
    assert s.set(resource("d", body_size=1000)) is False
    assert s.stats.rejected == 1 and s.stats.evictions == 0
    assert _keys(s) == {"a", "b", "c"}
    # Same-size replacement fits once the old value is discounted; a larger one does not.
    assert s.set(resource("a", body_size=1000, status=203))
    assert s.set(resource("a", body_size=1001)) is False
    got = s.peek("a")
    assert got is not None and got.variants[0].status == 203  # the refused set left it alone


@pytest.mark.parametrize("policy", EVICTION_POLICIES)
def test_byte_accounting_over_random_sets(policy: EvictionPolicy, resource: Make) -> None:
    rng = random.Random(1234)
    s = MemoryStorage(50_000, policy, rng_seed=1)
    for _ in range(1000):
        key = f"k{rng.randrange(150)}"  # repeats exercise replacement
        op = rng.random()
        if op < 0.6:
            s.set(resource(key, body_size=rng.randrange(0, 6000)))
        elif op < 0.9:
            s.get(key)
        else:
            s.delete(key)
        assert s.stats.bytes <= s.budget_bytes
    live = [s.peek(k) for k in list(s.keys())]
    assert s.stats.bytes == sum(r.size() for r in live if r is not None)
    assert s.stats.entries == len(live) == len(s)


def test_replace_fixes_byte_accounting(resource: Make) -> None:
    s = MemoryStorage(1_000_000)
    s.set(resource("k", body_size=5000))
    small = resource("k", body_size=10)
    s.set(small)
    assert s.stats.bytes == small.size()
    assert s.stats.entries == 1
    s.delete("k")
    assert (s.stats.bytes, s.stats.entries) == (0, 0)


def test_peek_touches_nothing(resource: Make) -> None:
    s = _three_slot_store("lru", resource)
    before = (s.stats.hits, s.stats.misses)
    assert s.peek("a") is not None
    assert s.peek("zz") is None
    assert (s.stats.hits, s.stats.misses) == before
    s.set(resource("d", body_size=1000))
    assert "a" not in s  # peek did not make a recently used


def test_get_returns_the_same_object(resource: Make) -> None:
    s = MemoryStorage(1_000_000)
    r = resource("k")
    s.set(r)
    assert s.get("k") is r  # no copy on the hit path


def test_zero_budget_refuses_everything(resource: Make) -> None:
    s = MemoryStorage(0)
    assert s.set(resource("k")) is False
    assert s.stats.rejected == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        MemoryStorage(-1)
    with pytest.raises(ValueError):
        MemoryStorage(100, "mru")  # type: ignore[arg-type]
