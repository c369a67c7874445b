"""Rendezvous hashing: balance, minimal movement (15-35% of keys move when a 4th edge joins), weights."""

from __future__ import annotations

from collections import Counter

from edge.hashing import owner

KEYS = [f"|http://cdn.example/objects/{i}" for i in range(10_000)]
THREE = [("edge-1", 1.0), ("edge-2", 1.0), ("edge-3", 1.0)]


def test_keys_spread_evenly_over_three_edges() -> None:
    counts = Counter(owner(k, THREE) for k in KEYS)
    assert set(counts) == {"edge-1", "edge-2", "edge-3"}
    assert all(2_900 < n < 3_800 for n in counts.values()), counts


def test_a_fourth_edge_moves_between_15_and_35_percent_of_keys_and_only_to_itself() -> None:
    before = {k: owner(k, THREE) for k in KEYS}
    after = {k: owner(k, [*THREE, ("edge-4", 1.0)]) for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert 0.15 <= len(moved) / len(KEYS) <= 0.35, len(moved) / len(KEYS)
    assert all(after[k] == "edge-4" for k in moved)  # nobody else's keys are reshuffled


def test_removing_an_edge_moves_only_its_keys() -> None:
    before = {k: owner(k, THREE) for k in KEYS}
    after = {k: owner(k, THREE[:2]) for k in KEYS}
    assert all(before[k] == after[k] for k in KEYS if before[k] != "edge-3")


def test_weights_shift_ownership_proportionally() -> None:
    counts = Counter(owner(k, [("big", 3.0), ("small", 1.0)]) for k in KEYS)
    assert 0.70 < counts["big"] / len(KEYS) < 0.80, counts


def test_ownership_is_deterministic_and_order_independent() -> None:
    assert [owner(k, THREE) for k in KEYS[:100]] == [owner(k, list(reversed(THREE))) for k in KEYS[:100]]
    assert owner("k", []) is None
