"""One edge of a cluster: a proxy Node plus identity, membership, owner routing and purge fan-out.

`open_edge(cfg, clock)` opens the proxy's `Node` with the edge's owner router
in it, then joins the cluster: membership starts, and the purge stream is
caught up before the node is handed out, so the edge never serves a request
before it has applied the purges it missed while it was down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis

from edge.config import ClusterConfig, cluster_config
from edge.fanout import PurgeFanout
from edge.membership import Membership
from edge.router import OwnerRouter
from proxy.box import BoxClient
from proxy.config import Config
from proxy.node import Node

log = logging.getLogger("edge.node")


def redis_client(url: str) -> Any:
    """The edge's Redis client. Replies are decoded as UTF-8 with errors="surrogateescape": anyone
    can write bytes that are not UTF-8 into a stream entry or a member key, and a strict decoding
    fails the whole read (the purge stream would stop at that entry for good). The bytes come back
    as lone surrogates, which the readers treat as malformed (edge/fanout.py, edge/membership.py),
    and which encode back to the same bytes (a key name passed on to MGET)."""
    return aioredis.from_url(
        url,
        decode_responses=True,
        encoding_errors="surrogateescape",
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
    )


class EdgeNode:
    """The edge's own parts, beside the proxy node they extend."""

    def __init__(self, cfg: Config, cluster: ClusterConfig) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.redis: Any = None
        if cluster.redis_url:
            self.redis = redis_client(cluster.redis_url)
        self.membership = Membership(cluster, cfg.name, self.redis)
        self.router = OwnerRouter(self.membership, cfg.name, enabled=cluster.owner_routing)
        self.fanout: PurgeFanout | None = None

    def stats(self, node: Node) -> dict[str, Any]:
        routing = node.engine.fetcher.stats
        out: dict[str, Any] = {
            "name": self.cfg.name,
            "members": {
                name: {"url": s.peer.url, "healthy": s.healthy, "available": self.membership.available(name)}
                for name, s in self.membership.states.items()
            },
            "routing": {**dataclasses.asdict(routing), **dataclasses.asdict(self.router.stats)},
            "membership_redis_errors": self.membership.redis_errors,
        }
        if self.fanout is not None:
            out["purge_stream"] = dataclasses.asdict(self.fanout.stats)
        return out

    async def redis_reachable(self) -> str | None:
        """A readiness check (proxy/readiness.py): None when Redis answers a PING."""
        try:
            await self.redis.ping()
        except Exception as exc:
            return f"redis unreachable ({self.cluster.redis_url}): {exc}"
        return None

    @contextlib.asynccontextmanager
    async def joined(self, node: Node) -> AsyncIterator[None]:
        """Membership and purge fan-out for an open node, until the block ends."""
        purger = node.purger
        await self.membership.start()
        try:
            if self.redis is not None:
                slot = 0 if node.box is None else node.box.index
                durable = node.health.catalog != "memory"
                # A box's workers are told its size as cfg.workers (proxy/supervisor.py).
                workers = max(1, node.cfg.workers) if node.box is not None else 1
                fanout = PurgeFanout(self.cluster, self.cfg.name, self.redis, purger, slot, durable, workers)
                self.fanout = fanout
                await fanout.load_outbox()  # purges accepted before a restart, not published yet
                if slot == 0:
                    await fanout.adopt_orphans(workers)  # and those of slots no longer in the box
                await fanout.catch_up()  # before the first request is served
                if fanout.outbox:
                    await fanout.flush()
                purger.listeners.append(fanout.publish)
                # Every worker publishes the purges it accepts (and retries its outbox); one per
                # box applies the stream, so a purge reaches the shared tiers once (the others
                # learn of it through the purge log, as of any purge: proxy/purger.py).
                fanout.start(consume=slot == 0)
            log.info(
                "edge %s joined: %d members, owner routing %s, purge fan-out %s",
                self.cfg.name,
                len(self.membership.states),
                "on" if self.cluster.owner_routing else "off",
                "on" if self.redis is not None else "off (no redis_url)",
            )
            node.extra_stats.append(lambda: {"edge": self.stats(node)})
            if self.redis is not None:
                node.readiness.add("redis", self.redis_reachable, self.cluster.redis_url or "")
            if self.fanout is not None:
                node.readiness.add("purge_stream", self.fanout.lagging, self.cluster.purge_stream)
            yield
        finally:
            if self.fanout is not None:
                await self.fanout.stop()
            await self.membership.stop()
            if self.redis is not None:
                await self.redis.aclose()


@contextlib.asynccontextmanager
async def open_edge(
    cfg: Config, clock: Callable[[], float] = time.time, box: BoxClient | None = None
) -> AsyncIterator[Node]:
    """The proxy node for `cfg`, joined to the cluster its `cluster:` section describes."""
    edge = EdgeNode(cfg, cluster_config(cfg))
    async with Node(cfg, clock, router=edge.router, box=box) as node, edge.joined(node):
        yield node
