"""Bans: what a purge screens for a while after it ran, wherever a copy it could not reach turns up.

What must live here: when a purge covers a stored copy. A variant is covered by
a purge when it was fetched before the purge (its `fetch_epoch` is lower than
the purge's epoch) and the purge named its key, its URL or path, a prefix of
either, one of the variant's tags, or everything (after Varnish's bans, keyed
by the purge log's epochs instead of times). A hard purge drops such a
variant; a soft one marks it stale as of the purge (`policy.soft_purged`).

Pure: no clock, no I/O; the caller passes the time to `expire`. Each kind of
ban is bounded (`LIMITS`); past the bound the oldest bans of that kind go
first and are counted in `dropped`. Bans only have to outlive the copies a
purge could not reach eagerly (fetches in flight, catalogue rows not written
yet), which the purger then purges through the log: seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from proxy import policy
from proxy.entry import CachedResource, StoredResponse

BanKind = Literal["keys", "tags", "urls", "prefixes"]
# At most this many bans of each kind are held; a prefix costs a lookup per distinct length.
LIMITS: dict[BanKind, int] = {"keys": 200_000, "tags": 100_000, "urls": 100_000, "prefixes": 1_000}


@dataclass(frozen=True, slots=True)
class Ban:
    epoch: int
    at: float
    soft: bool


class PurgeLike(Protocol):
    """A purge as the log records it (proxy.storage.catalog.PurgeRecord)."""

    @property
    def epoch(self) -> int: ...
    @property
    def at(self) -> float: ...
    @property
    def soft(self) -> bool: ...
    @property
    def everything(self) -> bool: ...
    @property
    def keys(self) -> tuple[str, ...]: ...
    @property
    def tags(self) -> tuple[str, ...]: ...
    @property
    def urls(self) -> tuple[str, ...]: ...
    @property
    def prefixes(self) -> tuple[str, ...]: ...
    @property
    def ban_epoch(self) -> int: ...


def split_key(key: str) -> tuple[str, str]:
    """(url, path) of a primary key "<namespace>|<scheme>://<host><path?query>"."""
    _, _, url = key.partition("|")
    _, _, rest = url.partition("://")
    slash = rest.find("/")
    return url, (rest[slash:] if slash >= 0 else "/")


def matches(
    key: str, tags: Iterable[str], *, want_tags: Iterable[str], urls: Iterable[str], prefixes: Iterable[str]
) -> bool:
    """Does a purge naming these tags, URLs and prefixes cover key (carrying `tags`)?

    URLs and prefixes starting with "/" are paths (any host), others absolute URLs.
    """
    if not set(want_tags).isdisjoint(tags):
        return True
    url, path = split_key(key)
    for u in urls:
        if u == (path if u.startswith("/") else url):
            return True
    return any((path if p.startswith("/") else url).startswith(p) for p in prefixes)


class Bans:
    """The bans one worker holds: by key, tag, URL (or path), prefix, and of everything."""

    def __init__(self) -> None:
        self.by: dict[BanKind, dict[str, Ban]] = {kind: {} for kind in LIMITS}
        self._prefix_lengths: frozenset[int] = frozenset()
        self.everything: Ban | None = None
        # The highest epoch of any ban held: a copy fetched at or after it is covered by none.
        self.newest = 0
        self.dropped = 0  # bans let go early because their kind was at its bound

    def __bool__(self) -> bool:
        return self.newest > 0

    def __len__(self) -> int:
        return sum(len(d) for d in self.by.values()) + (self.everything is not None)

    def add(self, record: PurgeLike) -> None:
        """Hold the bans of one purge (covering copies fetched before its ban_epoch, or its epoch)."""
        ban = Ban(record.ban_epoch or record.epoch, record.at, record.soft)
        if record.everything:
            if self.everything is None or ban.epoch >= self.everything.epoch:
                self.everything = ban
        else:
            self._put("keys", record.keys, ban)
            self._put("tags", record.tags, ban)
            self._put("urls", record.urls, ban)
            if record.prefixes:
                self._put("prefixes", record.prefixes, ban)
                self._prefix_lengths = frozenset(len(p) for p in self.by["prefixes"])
        self.newest = max(self.newest, ban.epoch)

    def _put(self, kind: BanKind, names: tuple[str, ...], ban: Ban) -> None:
        held = self.by[kind]
        for name in names:
            old = held.pop(name, None)  # re-inserted: the newest ban of a name is the youngest entry
            held[name] = ban if old is None or old.epoch <= ban.epoch else old
        excess = len(held) - LIMITS[kind]
        if excess > 0:
            for name in list(held)[:excess]:
                del held[name]
            self.dropped += excess

    def expire(self, horizon: float) -> None:
        """Let go of the bans of purges that ran before `horizon` (clock time)."""
        if self.everything is not None and self.everything.at < horizon:
            self.everything = None
        newest = self.everything.epoch if self.everything is not None else 0
        for kind, held in self.by.items():
            # Insertion order is (nearly) purge order: stop at the first ban still young.
            old = []
            for name, ban in held.items():
                if ban.at >= horizon:
                    break
                old.append(name)
            for name in old:
                del held[name]
            if held:
                newest = max(newest, max(b.epoch for b in held.values()))
            if kind == "prefixes" and old:
                self._prefix_lengths = frozenset(len(p) for p in held)
        self.newest = newest

    # ----------------------------------------------------------- screening

    def _resource_bans(self, key: str) -> list[Ban]:
        """The bans that cover every variant stored under key (key, URL, prefix, everything)."""
        found: list[Ban] = []
        if self.everything is not None:
            found.append(self.everything)
        ban = self.by["keys"].get(key)
        if ban is not None:
            found.append(ban)
        urls, prefixes = self.by["urls"], self.by["prefixes"]
        if urls or prefixes:
            url, path = split_key(key)
            for name in (url, path):
                ban = urls.get(name)
                if ban is not None:
                    found.append(ban)
                for length in self._prefix_lengths:
                    if length <= len(name):
                        ban = prefixes.get(name[:length])
                        if ban is not None:
                            found.append(ban)
        return found

    def verdict(self, resource_bans: list[Ban], fetch_epoch: int, tags: Iterable[str]) -> Ban | None:
        """The ban that decides a variant: the newest hard one covering it, else the latest soft one."""
        tag_bans = self.by["tags"]
        hard: Ban | None = None
        soft: Ban | None = None
        candidates = resource_bans
        if tag_bans:
            candidates = candidates + [b for t in tags if (b := tag_bans.get(t)) is not None]
        for ban in candidates:
            if ban.epoch <= fetch_epoch:
                continue
            if not ban.soft:
                if hard is None or ban.epoch > hard.epoch:
                    hard = ban
            elif soft is None or ban.at > soft.at:
                soft = ban
        return hard or soft

    def covering(self, key: str, fetch_epoch: int, tags: Iterable[str]) -> Ban | None:
        """The ban that decides a copy of key fetched at `fetch_epoch` carrying `tags`, if any."""
        if fetch_epoch >= self.newest:
            return None
        return self.verdict(self._resource_bans(key), fetch_epoch, tags)

    def latest(self, key: str, tags: Iterable[str]) -> Ban | None:
        """The most recent ban, hard or soft, naming key (its URL, a prefix, everything) or one of tags.

        For a copy whose fetch epoch is not ours (a peer edge's): the caller
        compares the ban's time with when that copy left the origin. A soft
        purge too: the copy is the one the purge made stale, and it is being
        refetched.
        """
        tag_bans = self.by["tags"]
        candidates = self._resource_bans(key) + [b for t in tags if (b := tag_bans.get(t)) is not None]
        return max(candidates, key=lambda b: b.at) if candidates else None

    def screen(self, resource: CachedResource) -> CachedResource | None:
        """The resource without the variants a hard ban covers, those a soft one covers made stale.

        Returns `resource` itself when no ban covers it, None when nothing is left.
        """
        variants = resource.variants
        if all(v.fetch_epoch >= self.newest for v in variants):
            return resource  # fetched after every purge held: the common case after a purge
        resource_bans = self._resource_bans(resource.key)
        kept: list[StoredResponse] = []
        changed = False
        for v in variants:
            ban = self.verdict(resource_bans, v.fetch_epoch, v.tags)
            if ban is None:
                kept.append(v)
            elif ban.soft:
                soft = policy.soft_purged(v, ban.at)
                changed |= soft is not v
                kept.append(soft)
            else:
                changed = True
        if not changed:
            return resource
        return replace(resource, variants=tuple(kept)) if kept else None

    def covers_row(self, key: str, variants: tuple[tuple[int, tuple[str, ...]], ...]) -> Ban | None:
        """For a catalogue row ((fetch epoch, tags) per variant): the ban that decides it, a hard one
        covering any variant first, else a soft one; None when no ban covers it."""
        if all(epoch >= self.newest for epoch, _ in variants):
            return None
        resource_bans = self._resource_bans(key)
        found: Ban | None = None
        for epoch, tags in variants:
            ban = self.verdict(resource_bans, epoch, tags)
            if ban is not None:
                if not ban.soft:
                    return ban
                found = ban
        return found
