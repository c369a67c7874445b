"""`minicdn warm` in a cluster: each URL goes to its key's owner edge, so the cluster stores each
object once (at its owner, where every other edge asks for it) and the origin is asked once.

The members are the ones the configured edge would see (its static peers, and those registered
in Redis); the key is computed as the edges compute it (proxy.warm.cache_key), so run it with an edge's
configuration: on an edge (its environment), or with --config of one of `minicdn cluster`'s
edge files. Without the cluster enabled, or with --edge, the proxy's plain warm runs.
"""

from __future__ import annotations

import argparse

from edge.config import cluster_config
from edge.hashing import owner
from edge.membership import Membership
from edge.node import redis_client
from proxy import warm
from proxy.config import Config
from proxy.node import url_keys_of


class OwnerRouter:
    """Implements proxy.warm.Router: the owner edge of each target's cache key."""

    def __init__(self, cfg: Config, membership: Membership) -> None:
        self.cfg = cfg
        self.url_keys = url_keys_of(cfg)  # keyed as the edges key requests, per-route rules included
        self.membership = membership
        members = membership.members()
        self.description = (
            f"{len(members)} edges (each key's owner: {', '.join(sorted(n for n, _ in members))})"
        )

    def edge_for(self, target: warm.Target) -> str:
        name = owner(warm.cache_key(self.url_keys, target), self.membership.members())
        url = self.membership.url_of(name) if name is not None else None
        if url is None:
            raise warm.WarmError("no edge in the cluster")
        return url


async def owner_router(cfg: Config, args: argparse.Namespace) -> OwnerRouter | None:
    """The cluster's owner router when the configuration enables the cluster, else None."""
    cluster = cluster_config(cfg)
    if not cluster.enabled:
        return None
    redis = None
    if cluster.redis_url:
        redis = redis_client(cluster.redis_url)
    membership = Membership(cluster, cfg.name, redis)
    try:
        await membership.refresh()
    finally:
        if redis is not None:
            await redis.aclose()
    if membership.redis_errors:
        raise warm.WarmError(f"cannot read the cluster's members from {cluster.redis_url}")
    return OwnerRouter(cfg, membership)


def run(args: argparse.Namespace) -> int:
    return warm.run(args, router_factory=owner_router)
