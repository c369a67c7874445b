"""Shared pieces of the origin stub: app/request keys, HTTP dates, query parsing and text bodies."""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Any

from aiohttp import web

Clock = Callable[[], float]

# Application configuration (set once by create_app).
CLOCK_KEY = web.AppKey[Clock]("origin_stub.clock")
SEND_DATE_KEY = web.AppKey("origin_stub.send_date", bool)
CREATED_AT_KEY = web.AppKey("origin_stub.created_at", float)

# Per-request values: web.RequestKey where aiohttp has it (3.13+), plain strings before that.
_RequestKey: Any = getattr(web, "RequestKey", None)


def _request_key(name: str, t: type) -> Any:
    return name if _RequestKey is None else _RequestKey(name, t)


HITS: Any = _request_key("origin_stub.hits", int)  # the path's hit count after this request was counted
KEEP_DATE: Any = _request_key("origin_stub.keep_date", bool)  # handler set Date itself: leave it alone

TEXT = "text/plain; charset=utf-8"
TRUTHY = frozenset({"1", "true", "yes", "on"})


def http_date(ts: float) -> str:
    """Format a POSIX timestamp as an IMF-fixdate (RFC 9110 §5.6.7)."""
    return email.utils.formatdate(ts, usegmt=True)


def parse_http_date(value: str) -> float | None:
    """Parse an HTTP-date into a POSIX timestamp; None when it is not a valid date."""
    try:
        parsed = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000": HTTP dates are always GMT
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def now(request: web.Request) -> float:
    """The app's clock (the same fake clock the proxy runs on in tests)."""
    return request.app[CLOCK_KEY]()


def flag(query: Mapping[str, str], name: str) -> bool:
    """True when ``?name=1`` (or true/yes/on) was given."""
    return query.get(name, "").strip().lower() in TRUTHY


def query_int(request: web.Request, name: str, default: int) -> int:
    """An integer query parameter; 400 when present but not an integer."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"query parameter {name!r} must be an integer\n") from None


def optional_int(request: web.Request, name: str) -> int | None:
    """An integer query parameter, or None when absent."""
    if request.query.get(name, "") == "":
        return None
    return query_int(request, name, 0)


def path_int(request: web.Request, name: str) -> int:
    """An integer path segment (routes constrain it with a regex)."""
    return int(request.match_info[name])


def hits(request: web.Request) -> int:
    """This path's hit count including the current request (0 for uncounted routes)."""
    value = request.get(HITS, 0)
    return int(value)


def default_text(request: web.Request, note: str = "") -> str:
    """The small default body: path and hit count, so a test can tell which fetch produced it."""
    suffix = f" {note}" if note else ""
    return f"origin stub {request.path} hit={hits(request)}{suffix}\n"
