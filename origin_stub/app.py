"""The origin stub application: ``create_app``, hit counting, delays and the Date header."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from origin_stub import api, behaviours, counters, faults, raw
from origin_stub.common import (
    CLOCK_KEY,
    CREATED_AT_KEY,
    HITS,
    KEEP_DATE,
    SEND_DATE_KEY,
    Clock,
    flag,
    http_date,
    now,
    query_int,
)
from origin_stub.counters import HITS_KEY, LOG_KEY, HitCounter, RequestLog, RequestRecord

ADMIN_PREFIX = "/__"

# Routes whose whole point is a delay have a default one; ``?ms=`` overrides it everywhere.
DEFAULT_DELAY_MS = {"/slow": 1000, "/stall": 60_000}
_POLL = 0.05  # seconds between checks that the client is still connected while delaying

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _delay(request: web.Request, seconds: float) -> bool:
    """Sleep ``seconds``; return False early if the client went away meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (remaining := deadline - loop.time()) > 0:
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
        await asyncio.sleep(min(remaining, _POLL))
    return True


def _not_found(request: web.Request) -> web.Response:
    return web.Response(
        status=404, headers={hdrs.CACHE_CONTROL: "max-age=60"}, text=f"not found: {request.path}\n"
    )


@web.middleware
async def origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and log every non-``/__`` request, apply ``?ms=``, turn unknown paths into a cacheable 404."""
    if request.path.startswith(ADMIN_PREFIX):
        return await handler(request)
    count = request.app[HITS_KEY].hit(request.path)
    request[HITS] = count
    body = await request.read()
    request.app[LOG_KEY].append(
        RequestRecord(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers=list(request.headers.items()),
            body_length=len(body),
            hit=count,
            time=now(request),
        )
    )
    fault = request.app[faults.FAULTS_KEY].get(request.path)
    ms = fault.ms if fault is not None else query_int(request, "ms", DEFAULT_DELAY_MS.get(request.path, 0))
    if ms > 0 and not await _delay(request, ms / 1000):
        return web.Response()  # client gone: writing this fails quietly as a disconnect
    if fault is not None and fault.mode != "delay":
        return faults.respond(request, fault)
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _not_found(request)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Last touch on every response's headers: Date from the app clock, hit count (not with
    ``?nohits=1``: then a 304 repeats the stored fields exactly), no-store on ``/__``."""
    headers = response.headers
    if request.path.startswith(ADMIN_PREFIX):
        headers[hdrs.CACHE_CONTROL] = "no-store"
    if HITS in request and not flag(request.query, "nohits"):
        headers["X-Origin-Hits"] = str(request[HITS])
    if request.get(KEEP_DATE):
        return
    app = request.app
    if app[SEND_DATE_KEY] and not flag(request.query, "nodate"):
        headers[hdrs.DATE] = http_date(app[CLOCK_KEY]())
    else:
        headers.popall(hdrs.DATE, None)  # aiohttp adds its own otherwise


def create_app(clock: Clock = time.time, *, send_date: bool = True) -> web.Application:
    """Build the origin stub.

    ``clock`` drives every Date, Expires and Last-Modified the stub computes (pass the proxy's
    fake clock in tests).  ``send_date=False`` omits Date on every response, as ``?nodate=1``
    does per request.
    """
    app = web.Application(middlewares=[origin_middleware])
    app[CLOCK_KEY] = clock
    app[SEND_DATE_KEY] = send_date
    app[CREATED_AT_KEY] = clock()
    app[HITS_KEY] = HitCounter()
    app[LOG_KEY] = RequestLog()
    app[api.ITEMS_KEY] = api.ItemStore()
    app[faults.FAULTS_KEY] = faults.FaultTable()
    counters.register(app.router)
    faults.register(app.router)
    behaviours.register(app.router)
    raw.register(app.router)
    api.register(app.router)
    app.on_response_prepare.append(_on_prepare)
    return app
