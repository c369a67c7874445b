"""Owner routing: the proxy's FetchRouter, filled with rendezvous hashing over the members.

A non-owner asks the owner instead of the origin, so the origin sees one
request per object per cluster and the owner's coalescing merges the
cluster's concurrent misses. An owner that is down, unhealthy or recently
failed is skipped: the edge goes to the origin directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.hashing import owner
from edge.membership import Membership
from proxy.routing import Route


@dataclass(slots=True)
class RouterStats:
    owned_here: int = 0
    owner_unavailable: int = 0


class OwnerRouter:
    """Implements proxy.routing.FetchRouter."""

    def __init__(self, membership: Membership, name: str, enabled: bool = True) -> None:
        self.membership = membership
        self.name = name
        self.enabled = enabled
        self.stats = RouterStats()

    def owner_of(self, key: str) -> str | None:
        return owner(key, self.membership.members())

    def route(self, key: str) -> Route | None:
        if not self.enabled:
            return None
        name = self.owner_of(key)
        if name is None or name == self.name:
            self.stats.owned_here += 1
            return None
        url = self.membership.url_of(name)
        if url is None or not self.membership.available(name):
            self.stats.owner_unavailable += 1
            return None
        return Route(name, url, self.membership.cfg.peer_timeout)

    def is_peer(self, name: str) -> bool:
        return name in self.membership.states

    def failed(self, route: Route) -> None:
        self.membership.trip(route.peer)

    def succeeded(self, route: Route) -> None:
        self.membership.reset(route.peer)
