"""The admin API: purge, inspect and stats as JSON, on a listener of its own.

`create_admin_app(node)` builds a separate aiohttp application over a `Node`
(proxy/node.py): it reads the node's engine, purger and storage at request
time, so it can be created before the node is open, and it is never routed
through the public port (which forwards every path to the origin).

Routes (JSON in and out, `Cache-Control: no-store`):

- `GET /healthz` (no token needed): `{"name": ..., "status": "ok"}` (liveness: the node runs)
- `GET /readyz` (no token needed): 200 when the node can serve (its origin, and in a cluster
  Redis, reachable), else 503 with what is wrong (proxy/readiness.py)
- `POST /purge` with a body such as `{"url": "/a"}`, `{"tags": ["x"]}`, `{"all": true, "soft": true}`
- `GET /entries?prefix=/api/|tag=x&limit=100`: what is stored, per entry and variant
- `GET /stats`: engine, tier, purge, catalogue and traffic counters, summed over the node's workers
- `GET /metrics`: the same numbers in the Prometheus text format (proxy/metrics.py)
- `GET /dashboard` (no token needed: a static page): the live dashboard (proxy/dashboard/), which
  polls `/stats`
- `POST /reload`: re-read the config and replace the workers (as SIGHUP to the supervisor)

With `admin.token` (or MINICDN_ADMIN_TOKEN) set, every route but `/healthz`
and `/readyz` needs `Authorization: Bearer <token>`. Without one the
configuration only lets the API listen on loopback (`config.check_admin`), and
a request from anywhere else is refused here as well. A refused request is
logged (who, which route, why; never the token it sent).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web

from proxy import dashboard, stats
from proxy.config import is_loopback
from proxy.node import Node
from proxy.purge import PurgeRequestError, parse_purge_request

log = logging.getLogger("proxy.admin")

NODE_KEY = web.AppKey("node", Node)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_BODY = 1024 * 1024
# No token for these: liveness, readiness, and the dashboard's page (static: its data comes from /stats).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/dashboard"})
_ENTRY_PARAMS = frozenset({"prefix", "tag", "limit"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ROUTES = "/healthz, /readyz, /purge, /entries, /stats, /metrics, /dashboard, /reload"


def create_admin_app(node: Node) -> web.Application:
    """The admin application for `node` (open or not yet)."""
    app = web.Application(middlewares=[_json_errors, _authenticate], client_max_size=MAX_BODY)
    app[NODE_KEY] = node
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/dashboard", _dashboard)
    app.router.add_post("/purge", _purge)
    app.router.add_get("/entries", _entries)
    app.router.add_get("/stats", _stats)
    app.router.add_post("/reload", _reload)
    return app


def json_reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    response = web.json_response(data, status=status, headers=headers, dumps=_dumps)
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
    return response


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_reply({"error": message}, status, headers)


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- middlewares


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is a JSON body; never a traceback, never an HTML page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k in (hdrs.ALLOW, hdrs.WWW_AUTHENTICATE)}
        return error_reply(exc.status, _describe(request, exc), headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("admin API error on %s %s", request.method, request.path_qs)
        return error_reply(500, "internal error (see the proxy's log)")


def _describe(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no admin route {request.path} (routes: {ROUTES})"
    if exc.status == 405:
        allowed = exc.headers.get(hdrs.ALLOW, "")
        return f"method {request.method} is not allowed on {request.path} (allowed: {allowed})"
    if exc.status == 413:
        return f"request body is larger than {MAX_BODY} bytes"
    return exc.reason


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    token = request.app[NODE_KEY].cfg.admin.token
    if not token:
        # Only reachable on loopback by configuration; refuse anything else all the same.
        if request.remote is None or not is_loopback(request.remote):
            _refused(request, "not from loopback, and no admin token is configured")
            return error_reply(403, "no admin token is configured: the admin API answers loopback only")
        return await handler(request)
    scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        _refused(request, "no bearer token")
        return error_reply(
            401,
            "an admin token is required (Authorization: Bearer <token>)",
            {hdrs.WWW_AUTHENTICATE: 'Bearer realm="minicdn-admin"'},
        )
    # surrogateescape: a field's bytes that are not UTF-8 (decoded so by aiohttp) compare as sent.
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode()):
        _refused(request, "the token is not valid")
        return error_reply(
            401,
            "the admin token is not valid",
            {hdrs.WWW_AUTHENTICATE: 'Bearer realm="minicdn-admin", error="invalid_token"'},
        )
    return await handler(request)


def _refused(request: web.Request, why: str) -> None:
    """Log a refused admin request: who, what, why; never the token it carried."""
    log.warning("admin API refused %s %s from %s: %s", request.method, request.path, request.remote, why)


# --------------------------------------------------------------------------- routes


async def _healthz(request: web.Request) -> web.Response:
    cfg = request.app[NODE_KEY].cfg
    return json_reply({"name": cfg.name, "status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """200 when the node can serve (proxy/readiness.py: ready or degraded), else 503 with the checks
    that failed."""
    node = request.app[NODE_KEY]
    if not node.started:
        return json_reply({"name": node.cfg.name, "status": "starting", "ready": False}, 503)
    report = await node.readiness.report()
    return json_reply({"name": node.cfg.name, **report}, 200 if report["ready"] else 503)


async def _metrics(request: web.Request) -> web.Response:
    """The box's numbers in the Prometheus text format (or OpenMetrics, when the scraper asks for it)."""
    node = _running(request)
    if node is None:
        return _not_running()
    from proxy import metrics  # prometheus_client, imported on the first scrape (not by the CLI)

    numbers = await stats.box(node)
    numbers["ready"] = await node.readiness.report()
    body, content_type = metrics.render(numbers, request.headers.get(hdrs.ACCEPT, ""))
    response = web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
    return response


async def _dashboard(request: web.Request) -> web.Response:
    response = web.Response(body=dashboard.page(), content_type="text/html", charset="utf-8")
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
    # The page talks to this API only, and runs only its own inline script.
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
    return response


def _running(request: web.Request) -> Node | None:
    node = request.app[NODE_KEY]
    return node if node.started else None


def _not_running() -> web.Response:
    return error_reply(503, "the proxy is not running (yet)")


async def _purge(request: web.Request) -> web.Response:
    raw = await request.read()
    if not raw.strip():
        return error_reply(400, 'request body is empty; send JSON such as {"url": "/path"}')
    try:
        body = json.loads(raw, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        return error_reply(400, f"request body is not valid JSON: {_short(exc)}")
    try:
        purge = parse_purge_request(body)
    except PurgeRequestError as exc:
        return error_reply(400, str(exc))
    node = _running(request)
    if node is None:
        return _not_running()
    result = await node.purger.purge(purge, by=f"admin API {request.remote}")
    answer = {**result.answer(), "kind": purge.kind, "soft": purge.soft}
    return json_reply(answer)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once: json.loads keeps the last of two, so
    {"url": "/a", "url": "/b"} purged /b alone and said nothing of /a."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} is given twice")
        out[key] = value
    return out


def _short(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


async def _entries(request: web.Request) -> web.Response:
    query = request.query
    unknown = sorted(set(query) - _ENTRY_PARAMS)
    if unknown:
        return error_reply(400, f"unknown query parameter {unknown[0]!r} (use prefix, tag, limit)")
    for name in _ENTRY_PARAMS:
        if len(query.getall(name, [])) > 1:
            return error_reply(400, f"give {name!r} once")
    prefix = query.get("prefix")
    tag = query.get("tag")
    if prefix is not None and tag is not None:
        return error_reply(400, "give prefix or tag, not both")
    try:
        # The purge request parser checks a prefix (a /path or http(s) URL) and a tag alike.
        if prefix is not None:
            parse_purge_request({"prefix": prefix})
        if tag is not None:
            parse_purge_request({"tag": tag})
    except PurgeRequestError as exc:
        return error_reply(400, str(exc))
    limit_text = query.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(limit_text)
    except ValueError:
        limit = 0
    if limit < 1:
        return error_reply(400, f"limit {limit_text!r} must be a whole number from 1 to {MAX_LIMIT}")
    node = _running(request)
    if node is None:
        return _not_running()
    entries = await node.purger.inspect(prefix=prefix, tag=tag, limit=min(limit, MAX_LIMIT))
    return json_reply({"entries": entries})


async def _stats(request: web.Request) -> web.Response:
    """The node's numbers: with several workers, summed over all of them (one request counts once)."""
    node = _running(request)
    if node is None:
        return _not_running()
    return json_reply(await stats.box(node))


async def _reload(request: web.Request) -> web.Response:
    """Ask the supervisor to re-read the config and replace the workers (as SIGHUP does)."""
    node = request.app[NODE_KEY]
    box = node.box
    if box is None:
        return error_reply(501, "this node runs without a supervisor (tests, embedding): nothing to reload")
    answer = await box.request({"op": "reload"}, timeout=120.0)
    if answer is None:
        return error_reply(503, "the supervisor did not answer")
    message = str(answer.get("message", ""))
    if not answer.get("ok"):
        return error_reply(409, message)
    return json_reply({"reloaded": True, "message": message})
