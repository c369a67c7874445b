"""aiohttp glue: builds the application from a Config and writes the engine's replies.

Resources (storage tiers, the origin session) are opened and closed in
`cleanup_ctx`; the only handler turns an aiohttp request into a
`ClientRequest`, asks the engine, appends this node's Cache-Status member and
Via, writes the reply, and logs one line.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.cache_status import CacheStatus
from proxy.config import Config
from proxy.engine import Engine, Reply, error_reply
from proxy.fetcher import ClientRequest
from proxy.headers import VALID_HOST
from proxy.keys import key_host
from proxy.purge import PurgeRequestError, parse_purge_request
from proxy.purger import Purger
from proxy.respond import finish, log_access, own_member, respond
from proxy.routing import HEALTH_PATH, FetchRouter
from proxy.storage.catalog import Catalog
from proxy.storage.disk import DiskStorage
from proxy.storage.epoch import EpochCounter
from proxy.storage.memory import MemoryStorage
from proxy.storage.tiered import TieredStorage
from proxy.upstream import Upstream, UpstreamError

CONFIG_KEY = web.AppKey("config", Config)
ENGINE_KEY = web.AppKey("engine", Engine)
STORAGE_KEY = web.AppKey("storage", TieredStorage)
PURGER_KEY = web.AppKey("purger", Purger)
# Set by the edge layer before startup: where cache fetches go (owner routing).
ROUTER_KEY = web.AppKey("router", FetchRouter)
# Set by the edge layer: more sections for the admin API's /stats.
ExtraStats = Callable[[], dict[str, Any]]
EXTRA_STATS_KEY: web.AppKey[ExtraStats] = web.AppKey("extra_stats")

log = logging.getLogger("proxy.app")


def open_purger(cfg: Config, storage: TieredStorage, clock: Callable[[], float]) -> Purger:
    """The catalogue, purge log and epoch counter, next to the L2 (shared by its workers)."""
    directory = cfg.cache.dir if cfg.cache.l2.enabled else None
    host_for = functools.partial(
        key_host, host_header=cfg.origin.host_header, origin_authority=URL(cfg.origin.url).raw_authority
    )
    return Purger(storage, Catalog(directory), EpochCounter(directory), cfg.keys, clock, host_for)


def open_storage(cfg: Config) -> TieredStorage:
    """The L1 memory tier and the L2 disk tier the config asks for."""
    l1 = MemoryStorage(cfg.cache.l1.budget, cfg.cache.l1.eviction) if cfg.cache.l1.enabled else None
    l2 = None
    if cfg.cache.l2.enabled:
        Path(cfg.cache.dir).mkdir(parents=True, exist_ok=True)
        l2 = DiskStorage(cfg.cache.dir, cfg.cache.l2.budget, cfg.cache.l2.eviction)
    return TieredStorage(l1, l2, loop_read_max=cfg.cache.l2_read_on_loop_max)


def create_app(cfg: Config, clock: Callable[[], float] = time.time) -> web.Application:
    """The proxy application for one edge node."""
    app = web.Application(handler_args={"max_field_size": 16384, "max_line_size": 16384})
    app[CONFIG_KEY] = cfg

    async def resources(app: web.Application) -> AsyncIterator[None]:
        storage = open_storage(cfg)
        upstream = Upstream(cfg.origin)
        await upstream.start()
        purger = open_purger(cfg, storage, clock)
        app[STORAGE_KEY] = storage
        app[PURGER_KEY] = purger
        app[ENGINE_KEY] = Engine(cfg, storage, upstream, clock, purger, app.get(ROUTER_KEY))
        try:
            yield
        finally:
            await app[ENGINE_KEY].close()
            await upstream.close()
            await storage.drain()  # queued L2 writes reach disk before exit (SIGTERM runs this)
            storage.close()
            purger.catalog.close()
            purger.epoch.close()

    app.cleanup_ctx.append(resources)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


async def _handle(request: web.Request) -> web.StreamResponse:
    app = request.app
    cfg = app[CONFIG_KEY]
    engine = app[ENGINE_KEY]
    started = time.perf_counter()
    if not VALID_HOST.fullmatch(request.headers.get("Host", "")):
        reply = finish(cfg, error_reply(400, "invalid Host header"))
    elif request.path == HEALTH_PATH:
        reply = finish(cfg, _health(cfg))
    elif request.method == "PURGE" and cfg.admin.purge_method:
        try:
            reply = finish(cfg, await _purge_method(request, cfg, app[PURGER_KEY]))
        except Exception:
            log.exception("error handling PURGE %s", request.path_qs)
            reply = finish(cfg, error_reply(500, "internal error"))
    else:
        reply = await respond(engine, cfg, _client_request(request))
    response = await _write(request, reply)
    if cfg.log.access_log:
        log_access(
            cfg,
            request.remote,
            request.method,
            request.path_qs,
            reply.status,
            own_member(reply),
            time.perf_counter() - started,
        )
    return response


def _health(cfg: Config) -> Reply:
    """This node's own health answer (peers and load balancers ask it; never forwarded)."""
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Content-Type"] = "application/json"
    headers["Cache-Control"] = "no-store"
    body = json.dumps({"name": cfg.name, "status": "ok"}) + "\n"
    return Reply(200, "", headers, body.encode(), CacheStatus(detail="health"))


async def _purge_method(request: web.Request, cfg: Config, purger: Purger) -> Reply:
    """`PURGE /path?query` from an allowed network: purge that URL on every host (admin.purge_method)."""
    if not _purge_allowed(request.remote, cfg.admin.purge_networks):
        return error_reply(403, "PURGE is not allowed from this address", CacheStatus(detail="purge denied"))
    mode = request.headers.get("Purge-Mode", "hard").strip().lower()
    if mode not in ("hard", "soft"):
        return error_reply(400, "Purge-Mode must be hard or soft", CacheStatus(detail="purge"))
    try:
        purge = parse_purge_request({"url": request.raw_path, "soft": mode == "soft"})
    except PurgeRequestError as exc:
        return error_reply(400, str(exc), CacheStatus(detail="purge"))
    result = await purger.purge(purge)
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Content-Type"] = "application/json"
    headers["Cache-Control"] = "no-store"
    body = json.dumps({"purged": result.keys, "epoch": result.epoch, "soft": purge.soft}) + "\n"
    return Reply(200, "", headers, body.encode(), CacheStatus(detail="purge"))


@functools.lru_cache(maxsize=16)
def _networks(networks: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def _purge_allowed(remote: str | None, networks: tuple[str, ...]) -> bool:
    if not remote:
        return False
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in _networks(networks))


def _client_request(request: web.Request) -> ClientRequest:
    raw_path, _, query = request.raw_path.partition("?")
    body = request.content.iter_any() if request.body_exists else None
    return ClientRequest(
        method=request.method,
        scheme=request.scheme,
        host=request.headers.get("Host", ""),
        path=raw_path or "/",
        query=query,
        headers=request.headers,
        remote=request.remote,
        body=body,
    )


async def _write(request: web.Request, reply: Reply) -> web.StreamResponse:
    if isinstance(reply.body, bytes):
        return web.Response(
            status=reply.status, reason=reply.reason or None, headers=reply.headers, body=reply.body
        )
    stream = web.StreamResponse(status=reply.status, reason=reply.reason or None, headers=reply.headers)
    await stream.prepare(request)
    try:
        async for chunk in reply.body:
            await stream.write(chunk)
    except UpstreamError as exc:
        # The origin broke off mid-body: the client must see a broken response,
        # not a short one that looks complete.
        log.warning("origin body broke off for %s %s: %s", request.method, request.path_qs, exc.reason)
        if request.transport is not None:
            request.transport.abort()
        return stream
    await stream.write_eof()
    return stream
