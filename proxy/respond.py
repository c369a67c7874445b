"""From a client request to a finished reply, whichever front end read the request.

Both fronts, the lean one (proxy/fastpath.py) and aiohttp's handler
(proxy/app.py), ask the engine through here, so errors map to the same short
answers and every reply carries this node's Cache-Status member and Via.
"""

from __future__ import annotations

import logging

from proxy.cache_status import appended, member
from proxy.config import Config
from proxy.engine import Engine, Reply, error_reply
from proxy.fetcher import ClientRequest
from proxy.upstream_error import UpstreamError

log = logging.getLogger("proxy.app")


async def respond(engine: Engine, cfg: Config, request: ClientRequest, *, known_miss: bool = False) -> Reply:
    """The engine's answer to request, finished; never raises (a bug becomes a 500)."""
    try:
        reply = await engine.handle(request, known_miss=known_miss)
    except UpstreamError as exc:
        reply = error_reply(exc.status_hint, exc.reason)
    except Exception:
        log.exception("error handling %s %s", request.method, request.path_qs)
        reply = error_reply(500, "internal error")
    return finish(cfg, reply)


def finish(cfg: Config, reply: Reply) -> Reply:
    """Append this node's Cache-Status member (RFC 9211) and Via (RFC 9110 §7.6.3)."""
    headers = reply.headers
    headers["Cache-Status"] = appended(
        ",".join(headers.getall("Cache-Status", [])) or None, member(cfg.name, reply.cache_status)
    )
    headers.add("Via", f"1.1 {cfg.name}")
    return reply
