"""Bans (proxy/bans.py): which stored copies a purge covers, by key, URL, prefix, tag or everything."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from proxy import bans as bans_module
from proxy.bans import Bans, matches
from proxy.entry import CachedResource

from .support import NOW, entry

KEY = "|http://cdn.example/api/items/1?x=1"


@dataclass(frozen=True)
class Purge:
    epoch: int
    at: float = NOW
    soft: bool = False
    everything: bool = False
    keys: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    ban_epoch: int = 0


def resource(*epochs_and_tags: tuple[int, tuple[str, ...]], key: str = KEY) -> CachedResource:
    return CachedResource(key, tuple(entry(fetch_epoch=e, tags=t) for e, t in epochs_and_tags))


@pytest.mark.parametrize(
    ("purge", "covered"),
    [
        (Purge(5, keys=(KEY,)), True),
        (Purge(5, keys=("|http://cdn.example/other",)), False),
        (Purge(5, tags=("item",)), True),
        (Purge(5, tags=("ite",)), False),  # tags match exactly
        (Purge(5, urls=("/api/items/1?x=1",)), True),  # a path: any host
        (Purge(5, urls=("http://cdn.example/api/items/1?x=1",)), True),
        (Purge(5, urls=("http://other.example/api/items/1?x=1",)), False),
        (Purge(5, urls=("/api/items/1",)), False),  # the query is part of the URL
        (Purge(5, prefixes=("/api/",)), True),
        (Purge(5, prefixes=("http://cdn.example/api/items",)), True),
        (Purge(5, prefixes=("/api/items/2",)), False),
        (Purge(5, everything=True), True),
        (Purge(3, tags=("item",)), False),  # the copy was fetched after the purge (epoch 4 >= 3)
        (Purge(4, tags=("item",)), False),  # ... or while it was logged
    ],
)
def test_a_purge_covers_copies_fetched_before_it_that_it_names(purge: Purge, covered: bool) -> None:
    bans = Bans()
    bans.add(purge)
    r = resource((4, ("item", "api")))
    assert (bans.screen(r) is None) is covered
    ban = bans.covers_row(r.key, ((4, ("item", "api")),))
    assert (ban is not None and not ban.soft) is covered
    if not purge.keys and not purge.everything and purge.epoch > 4:
        # What a purge consults among the rows not written yet: the names alone, no epochs.
        named = matches(
            r.key, ("item", "api"), want_tags=purge.tags, urls=purge.urls, prefixes=purge.prefixes
        )
        assert named is covered


def test_each_variant_is_judged_by_its_own_epoch_and_tags() -> None:
    bans = Bans()
    bans.add(Purge(10, tags=("old",)))
    r = resource((9, ("old",)), (9, ("new",)), (11, ("old",)))
    screened = bans.screen(r)
    assert screened is not None
    assert [(v.fetch_epoch, v.tags) for v in screened.variants] == [(9, ("new",)), (11, ("old",))]


def test_a_soft_purge_marks_stale_and_a_later_hard_one_wins() -> None:
    bans = Bans()
    bans.add(Purge(5, at=NOW + 10, soft=True, tags=("item",)))
    r = resource((4, ("item",)))
    soft = bans.screen(r)
    assert soft is not None and soft is not r
    assert soft.variants[0].freshness_lifetime == pytest.approx(10)  # stale from the purge on
    ban = bans.covers_row(r.key, ((4, ("item",)),))
    assert ban is not None and (ban.soft, ban.epoch) == (True, 5)
    bans.add(Purge(6, prefixes=("/api/",)))
    assert bans.screen(r) is None
    ban = bans.covers_row(r.key, ((4, ("item",)),))
    assert ban is not None and (ban.soft, ban.epoch) == (False, 6)


def test_a_copy_fetched_after_every_ban_is_returned_as_is() -> None:
    bans = Bans()
    bans.add(Purge(5, everything=True))
    r = resource((5, ()))
    assert bans.screen(r) is r


def test_bans_expire_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    bans = Bans()
    bans.add(Purge(1, at=NOW, tags=("a",), prefixes=("/a",)))
    bans.add(Purge(2, at=NOW + 100, tags=("b",), everything=False))
    bans.expire(NOW + 50)
    assert set(bans.by["tags"]) == {"b"} and not bans.by["prefixes"]
    assert bans.newest == 2
    bans.expire(NOW + 200)
    assert not bans and len(bans) == 0
    assert bans.screen(resource((0, ("b",)))) is not None

    monkeypatch.setitem(bans_module.LIMITS, "tags", 2)
    for epoch, tag in enumerate(("x", "y", "z"), start=3):
        bans.add(Purge(epoch, tags=(tag,)))
    assert list(bans.by["tags"]) == ["y", "z"] and bans.dropped == 1  # the oldest goes first
    bans.add(Purge(9, tags=("y",)))  # a name purged again is young again
    bans.add(Purge(10, tags=("w",)))
    assert list(bans.by["tags"]) == ["y", "w"]


def test_prefix_bans_of_many_lengths() -> None:
    bans = Bans()
    bans.add(Purge(5, prefixes=("/a", "/api/items/", "http://cdn.example/zzz", "/api/items/1?x=1")))
    for path, covered in [
        ("/api/items/1?x=1", True),
        ("/b", False),
        ("/apx", True),
        ("/zz", False),
        ("/zzzz", True),
    ]:
        r = replace(resource((1, ())), key=f"|http://cdn.example{path}")
        assert (bans.screen(r) is None) is covered, path


def test_a_purge_of_late_copies_covers_what_the_purge_that_caught_them_covered() -> None:
    """Logged at epoch 9 for copies a purge at epoch 5 covered: a copy fetched at 7 is current."""
    bans = Bans()
    bans.add(Purge(9, keys=(KEY,), ban_epoch=5))
    assert bans.screen(resource((4, ()))) is None
    current = resource((7, ()))
    assert bans.screen(current) is current
    assert bans.covers_row(KEY, ((7, ()),)) is None
