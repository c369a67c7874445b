"""Where a cache fetch goes: the origin, or a peer edge that owns the key.

The proxy itself has no peers; the edge layer (edge/) fills this hook with
rendezvous hashing over its cluster. A request forwarded to a peer carries
HOP_HEADER naming the sender, and a request that arrives with it is never
forwarded again (one hop at most, no loops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

HOP_HEADER = "X-Minicdn-Hop"
# RFC 8615 well-known paths each node answers itself: liveness (health checks by peers and
# orchestrators) and readiness (load balancers: the origin, and in a cluster Redis, reachable).
HEALTH_PATH = "/.well-known/minicdn/health"
READY_PATH = "/.well-known/minicdn/ready"


@dataclass(frozen=True, slots=True)
class Route:
    """Fetch from this peer instead of the origin."""

    peer: str
    base_url: str
    # A slow owner costs at most this long before the origin is asked instead.
    timeout: float = 2.0


class FetchRouter(Protocol):
    """Chooses the owner of a key and learns whether it answered."""

    def route(self, key: str) -> Route | None:
        """The peer to ask for key, or None for the origin (we own it, or the owner is down)."""
        ...

    def is_peer(self, name: str) -> bool:
        """Whether `name` (a HOP_HEADER value) is a member of the cluster."""
        ...

    def failed(self, route: Route) -> None:
        """The peer did not answer usefully: skip it for a while (circuit breaker)."""
        ...

    def succeeded(self, route: Route) -> None: ...
