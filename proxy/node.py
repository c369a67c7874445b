"""The composition root of one edge process: config, clock, storage, origin, purger and engine.

What must live here: which parts a node has and the order they start and
stop in. Nothing else constructs them. The public front (proxy/front.py),
the admin API (proxy/admin.py), the command line and the edge layer (edge/)
all take a `Node` instead of looking parts up in each other:

    async with Node(cfg, clock) as node:
        server = await serve_public(node, host, port)
        ...

Resources open in __aenter__ and close in __aexit__ in reverse order; queued
L2 writes reach disk before the tiers close.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

from yarl import URL

from proxy.box import BoxClient
from proxy.cache_status import Members
from proxy.config import Config
from proxy.engine import Engine
from proxy.keys import UrlKeys
from proxy.observe import Recorder
from proxy.origin import Upstream
from proxy.purger import Purger
from proxy.readiness import Readiness
from proxy.routing import FetchRouter
from proxy.rules import RuleSet
from proxy.storage.memory import MemoryStorage
from proxy.storage.opening import StorageHealth, open_catalog, open_disk
from proxy.storage.tiered import TieredStorage

Clock = Callable[[], float]
# A section the layer above adds to the admin API's /stats (the edge cluster's).
ExtraStats = Callable[[], dict[str, Any]]


def open_storage(cfg: Config, health: StorageHealth | None = None) -> TieredStorage:
    """The L1 memory tier and the L2 disk tier the config asks for (without L2 if it cannot be opened)."""
    health = health if health is not None else StorageHealth()
    l1 = MemoryStorage(cfg.cache.l1.budget, cfg.cache.l1.eviction) if cfg.cache.l1.enabled else None
    l2 = None
    if cfg.cache.l2.enabled:
        l2 = open_disk(cfg.cache.dir, cfg.cache.l2.budget, cfg.cache.l2.eviction, health)
    else:
        health.l2 = "disabled"
    return TieredStorage(
        l1,
        l2,
        loop_read_max=cfg.cache.l2_read_on_loop_max,
        write_queue=cfg.cache.l2_write_queue,
        write_batch=cfg.cache.l2_write_batch,
    )


def url_keys_of(cfg: Config) -> UrlKeys:
    """How this config keys a URL: keys.* under its per-route rules (compiled here, once per process)."""
    rules = RuleSet(cfg.rules, cfg.keys) if cfg.rules else None
    return UrlKeys(cfg.keys, rules, cfg.origin.host_header, URL(cfg.origin.url).raw_authority)


def open_purger(
    cfg: Config,
    storage: TieredStorage,
    clock: Clock,
    health: StorageHealth | None = None,
    url_keys: UrlKeys | None = None,
) -> Purger:
    """The catalogue, purge log and epoch counter, next to the L2 (shared by its workers).

    `url_keys`: how requests are keyed (default: as `cfg` keys them), which its purges name URLs by.
    """
    directory = cfg.cache.dir if cfg.cache.l2.enabled else None
    catalog, epoch = open_catalog(directory, health if health is not None else StorageHealth())
    return Purger(storage, catalog, epoch, url_keys if url_keys is not None else url_keys_of(cfg), clock)


class Node:
    """One edge process's parts, opened and closed together."""

    def __init__(
        self,
        cfg: Config,
        clock: Clock = time.time,
        *,
        router: FetchRouter | None = None,
        box: BoxClient | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.router = router
        self.box = box  # the supervisor's link when this is one worker of several (proxy/box.py)
        self.members = Members(cfg.name)  # this node's Cache-Status members, memoised
        self.extra_stats: list[ExtraStats] = []
        self.health = StorageHealth()  # how the on-disk parts opened (shown in /stats)
        self.recorder = Recorder()  # what the front and the origin client count (proxy/observe.py)
        # /readyz: the origin reachable, and what edge/ adds
        self.readiness = Readiness(cfg.origin, cfg.server.readiness_strict)
        self._storage: TieredStorage | None = None
        self._upstream: Upstream | None = None
        self._purger: Purger | None = None
        self._engine: Engine | None = None

    @property
    def started(self) -> bool:
        return self._engine is not None

    @property
    def storage(self) -> TieredStorage:
        assert self._storage is not None, "the node is not open"
        return self._storage

    @property
    def upstream(self) -> Upstream:
        assert self._upstream is not None, "the node is not open"
        return self._upstream

    @property
    def purger(self) -> Purger:
        assert self._purger is not None, "the node is not open"
        return self._purger

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "the node is not open"
        return self._engine

    async def __aenter__(self) -> Node:
        cfg = self.cfg
        self.health = StorageHealth()
        self._storage = storage = open_storage(cfg, self.health)
        try:
            self._upstream = upstream = Upstream(cfg.origin, self.recorder)
            await upstream.start()
            # One way of keying URLs for the requests (the fetcher) and the purges that name them.
            url_keys = url_keys_of(cfg)
            self._purger = purger = open_purger(cfg, storage, self.clock, self.health, url_keys)
            self._engine = Engine(cfg, storage, upstream, self.clock, purger, url_keys, self.router, self.box)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.close()
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            await upstream.close()
        storage = self._storage
        purger, self._purger = self._purger, None
        if storage is not None:
            await storage.drain()  # queued L2 writes reach disk before exit (SIGTERM runs this)
        if purger is not None:
            await purger.close()  # and the catalogue rows (a failed L2 write forgets its row)
        if storage is not None:
            storage.close()
        if purger is not None:
            purger.catalog.close()
            purger.epoch.close()


# Opens the node a process serves from: a lone proxy's (open_node) or an edge's (edge.node.open_edge).
# A module-level function, so that a supervised worker can be told its name (proxy/worker.py).
NodeFactory = Callable[[Config, Clock, BoxClient | None], AbstractAsyncContextManager[Node]]


def open_node(cfg: Config, clock: Clock = time.time, box: BoxClient | None = None) -> Node:
    """The NodeFactory of a lone proxy."""
    return Node(cfg, clock, box=box)
