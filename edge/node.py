"""One edge of a cluster: the proxy app plus identity, membership, owner routing and purge fan-out.

`create_edge_app` builds the proxy's aiohttp app and adds the edge's
resources to it. They start after the proxy's own (so they can reach its
purger) and, as aiohttp runs cleanup contexts before it accepts connections,
the purge stream is caught up before the edge serves its first request.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from edge.config import ClusterConfig, cluster_config
from edge.fanout import PurgeFanout
from edge.membership import Membership
from edge.router import OwnerRouter
from proxy.app import ENGINE_KEY, EXTRA_STATS_KEY, PURGER_KEY, ROUTER_KEY, create_app
from proxy.config import Config

log = logging.getLogger("edge.node")


class EdgeNode:
    """The edge's parts, reachable from the app for stats and tests."""

    def __init__(self, cfg: Config, cluster: ClusterConfig) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.redis: Any = None
        if cluster.redis_url:
            self.redis = aioredis.from_url(
                cluster.redis_url, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=2.0
            )
        self.membership = Membership(cluster, cfg.name, self.redis)
        self.router = OwnerRouter(self.membership, cfg.name, enabled=cluster.owner_routing)
        self.fanout: PurgeFanout | None = None

    def stats(self, app: web.Application) -> dict[str, Any]:
        routing = app[ENGINE_KEY].fetcher.stats
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


EDGE_KEY = web.AppKey("edge", EdgeNode)


def create_edge_app(cfg: Config, clock: Callable[[], float] = time.time) -> web.Application:
    """The proxy app for `cfg`, joined to the cluster described by its `cluster:` section."""
    cluster = cluster_config(cfg)
    app = create_app(cfg, clock)
    node = EdgeNode(cfg, cluster)
    app[EDGE_KEY] = node
    app[ROUTER_KEY] = node.router
    app[EXTRA_STATS_KEY] = lambda: {"edge": node.stats(app)}

    async def edge_resources(app: web.Application) -> AsyncIterator[None]:
        purger = app[PURGER_KEY]
        await node.membership.start()
        if node.redis is not None:
            fanout = PurgeFanout(cluster, cfg.name, node.redis, purger)
            node.fanout = fanout
            await fanout.catch_up()  # before the first request is served
            purger.listeners.append(fanout.publish)
            fanout.start()
        log.info(
            "edge %s joined: %d members, owner routing %s, purge fan-out %s",
            cfg.name,
            len(node.membership.states),
            "on" if cluster.owner_routing else "off",
            "on" if node.redis is not None else "off (no redis_url)",
        )
        try:
            yield
        finally:
            if node.fanout is not None:
                await node.fanout.stop()
            await node.membership.stop()
            if node.redis is not None:
                await node.redis.aclose()

    app.cleanup_ctx.append(edge_resources)
    return app
