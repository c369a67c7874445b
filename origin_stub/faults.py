"""Fault injection: make one path of the stub fail on demand, while the URL stays the same.

Tests of stale-if-error need the *same* cached URL to start failing:
`POST /__fault?path=/max-age/10&status=503` makes that path answer 503,
`&mode=reset` drops the connection, `&ms=N` delays it first (`&mode=delay`
only delays, then answers normally);
`DELETE /__fault` (or `POST /__reset`) clears every fault.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import hdrs, web


@dataclass(frozen=True, slots=True)
class Fault:
    """What a faulty path does instead of its normal answer."""

    status: int = 503
    mode: str = "status"  # "status": answer `status`; "reset": close the connection; "delay": only wait
    ms: int = 0  # delay before failing


class FaultTable(dict[str, Fault]):
    """path -> Fault."""


FAULTS_KEY = web.AppKey("origin_stub.faults", FaultTable)


def respond(request: web.Request, fault: Fault) -> web.StreamResponse:
    """The faulty answer for a request."""
    if fault.mode == "reset":
        if request.transport is not None:
            request.transport.abort()
        return web.Response()
    return web.Response(
        status=fault.status,
        headers={hdrs.CACHE_CONTROL: "no-store"},
        text=f"injected fault: {fault.status}\n",
    )


async def set_fault(request: web.Request) -> web.Response:
    query = request.query
    path = query.get("path", "")
    if not path.startswith("/"):
        raise web.HTTPBadRequest(text="path=/... is required\n")
    try:
        fault = Fault(
            status=int(query.get("status", "503")),
            mode=query.get("mode", "status"),
            ms=int(query.get("ms", "0")),
        )
    except ValueError:
        raise web.HTTPBadRequest(text="status and ms must be integers\n") from None
    if fault.mode not in ("status", "reset", "delay") or not 100 <= fault.status <= 599:
        raise web.HTTPBadRequest(text="mode must be status, reset or delay; status 100-599\n")
    request.app[FAULTS_KEY][path] = fault
    return web.json_response({"path": path, "status": fault.status, "mode": fault.mode, "ms": fault.ms})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[FAULTS_KEY].clear()
    return web.json_response({"cleared": True})


def register(router: web.UrlDispatcher) -> None:
    router.add_post("/__fault", set_fault)
    router.add_delete("/__fault", clear_faults)
