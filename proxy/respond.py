"""From a client request to a finished reply, whichever front end read the request.

Both fronts, the lean one (proxy/fastpath.py) and aiohttp's handler
(proxy/app.py), ask the engine through here, so errors map to the same short
answers and every reply carries this node's Cache-Status member and Via.
"""

from __future__ import annotations

import json
import logging

from proxy import log_output
from proxy.cache_status import appended, member
from proxy.config import Config
from proxy.engine import Engine, Reply, error_reply
from proxy.fetcher import ClientRequest
from proxy.upstream_error import UpstreamError

log = logging.getLogger("proxy.app")
access_log = logging.getLogger("proxy.access")


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


def log_access(
    cfg: Config, remote: str | None, method: str, url: str, status: int, cache: str, seconds: float
) -> None:
    """One access-log line (cfg.log.format: text or json); `cache` is this node's Cache-Status member.

    Under the command line's own logging setup the line goes straight to the
    batched stderr writer (proxy.log_output), in logging's format but without
    a LogRecord: a record costs more than a cache hit. Any other setup (tests,
    an embedding application) gets ordinary records.
    """
    if cfg.log.format == "json":
        line = json.dumps(
            {
                "method": method,
                "url": url,
                "status": status,
                "cache": cache,
                "ms": round(seconds * 1000, 2),
                "remote": remote,
            }
        )
    else:
        line = f'{remote} "{method} {url}" {status} "{cache}" {seconds * 1000:.1f}ms'
    writer = log_output.direct_writer(access_log)
    if writer is not None:
        writer.write_info("proxy.access", line)
    else:
        access_log.info("%s", line)


def own_member(reply: Reply) -> str:
    """This node's Cache-Status member of a finished reply (the last one)."""
    return reply.headers.get("Cache-Status", "").rsplit(",", 1)[-1].strip()
