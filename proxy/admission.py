"""What the public front answers itself, before a request reaches the cache.

What must live here: the rules that turn a request away or answer it without
the engine, so the front applies each of them in one place: an invalid Host
(RFC 9112 §3.2: 400), the node's own health and readiness paths (never
forwarded), and `PURGE /path` from an allowed network when `admin.purge_method`
is on.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from proxy.cache_status import CacheStatus
from proxy.config import Config
from proxy.headers import VALID_HOST
from proxy.messages import ClientRequest, Reply, error_reply
from proxy.networks import address_in
from proxy.purge import PurgeRequestError, parse_purge_request
from proxy.purger import Purger
from proxy.readiness import Readiness
from proxy.routing import HEALTH_PATH, READY_PATH

if TYPE_CHECKING:
    from proxy.node import Node


def admit(req: ClientRequest, cfg: Config) -> Reply | None:
    """The node's own answer to req, or None when the cache should answer it."""
    host = req.host
    if host not in _valid_hosts:
        if not VALID_HOST.fullmatch(host) or (not host and not req.http10):
            return error_reply(400, "invalid Host header")
        if len(_valid_hosts) >= 4096:
            _valid_hosts.clear()
        if host:
            _valid_hosts.add(host)
    if req.path == HEALTH_PATH:
        return health(cfg)
    return None


# Hosts already found valid (a few names carry nearly all requests): a set lookup, not a regex.
_valid_hosts: set[str] = set()


def health(cfg: Config) -> Reply:
    """This node's own health answer (peers and load balancers ask it; never forwarded)."""
    body = json.dumps({"name": cfg.name, "status": "ok"}) + "\n"
    return _json(200, body, CacheStatus(detail="health"))


def deferred(req: ClientRequest, cfg: Config, node: Node) -> Awaitable[Reply] | None:
    """The node's own answer to req when it needs awaiting (PURGE, readiness), else None."""
    if req.method == "PURGE" and cfg.admin.purge_method:
        return purge_method(req, cfg, node.purger)
    if req.path == READY_PATH:
        return ready(cfg, node.readiness)
    return None


async def ready(cfg: Config, readiness: Readiness) -> Reply:
    """This node's readiness (proxy/readiness.py): 200 when it can serve (ready or degraded), 503
    with what is wrong."""
    report = await readiness.report()
    body = json.dumps({"name": cfg.name, **report})
    return _json(200 if report["ready"] else 503, body + "\n", CacheStatus(detail="ready"))


async def purge_method(req: ClientRequest, cfg: Config, purger: Purger) -> Reply:
    """`PURGE /path?query` from an allowed network: purge that URL on every host (admin.purge_method)."""
    if not address_in(req.remote, cfg.admin.purge_networks):
        return error_reply(403, "PURGE is not allowed from this address", CacheStatus(detail="purge denied"))
    mode = req.headers.get("Purge-Mode", "hard").strip().lower()
    if mode not in ("hard", "soft"):
        return error_reply(400, "Purge-Mode must be hard or soft", CacheStatus(detail="purge"))
    try:
        purge = parse_purge_request({"url": req.path_qs, "soft": mode == "soft"})
    except PurgeRequestError as exc:
        return error_reply(400, str(exc), CacheStatus(detail="purge"))
    result = await purger.purge(purge, by=f"PURGE from {req.remote}")
    body = json.dumps({**result.answer(), "soft": purge.soft}) + "\n"
    return _json(200, body, CacheStatus(detail="purge"))


def _json(status: int, body: str, cache_status: CacheStatus) -> Reply:
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Content-Type"] = "application/json"
    headers["Cache-Control"] = "no-store"
    return Reply(status, "", headers, body.encode(), cache_status)
