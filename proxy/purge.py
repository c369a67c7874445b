"""What a purge asks for, parsed and validated (pure; the admin API and the CLI share it).

A purge names exact URLs (absolute, or a path meaning every host), URL or
path prefixes, exact tags (surrogate keys), or everything; it is hard
(delete) or soft (mark stale, RFC 5861 windows still apply).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from yarl import URL

PurgeKind = Literal["url", "prefix", "tag", "all"]
_KINDS: tuple[PurgeKind, ...] = ("url", "prefix", "tag", "all")
_PLURALS = {"urls": "url", "prefixes": "prefix", "tags": "tag"}
MAX_VALUES = 1000


class PurgeRequestError(ValueError):
    """The purge request is malformed; the message says what is wrong (answered with 400)."""


@dataclass(frozen=True, slots=True)
class PurgeRequest:
    kind: PurgeKind
    values: tuple[str, ...] = ()
    soft: bool = False


def parse_purge_request(body: object) -> PurgeRequest:
    """Validate a JSON purge body such as {"tag": "a"}, {"urls": [...], "soft": true} or {"all": true}."""
    if not isinstance(body, dict):
        raise PurgeRequestError('body must be a JSON object like {"url": "/path"}')
    soft = body.get("soft", False)
    if not isinstance(soft, bool):
        raise PurgeRequestError("'soft' must be true or false")
    found: list[tuple[PurgeKind, object]] = []
    for name, value in body.items():
        if name == "soft":
            continue
        kind = _PLURALS.get(name, name)
        if kind not in _KINDS:
            raise PurgeRequestError(
                f"unknown field {name!r} (use one of: url, urls, prefix, prefixes, tag, tags, all, soft)"
            )
        found.append((kind, value))
    if len(found) != 1:
        raise PurgeRequestError("name exactly one of: url(s), prefix(es), tag(s), all")
    kind, value = found[0]
    if kind == "all":
        if value is not True:
            raise PurgeRequestError("'all' must be true")
        return PurgeRequest("all", (), soft)
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise PurgeRequestError(f"'{kind}' must be a non-empty string or a list of non-empty strings")
    if len(values) > MAX_VALUES:
        raise PurgeRequestError(f"at most {MAX_VALUES} values per purge")
    checked = tuple(_check(kind, v) for v in values)
    return PurgeRequest(kind, checked, soft)


def _check(kind: PurgeKind, value: str) -> str:
    if any(c.isspace() for c in value):
        raise PurgeRequestError(f"{kind} {value!r} must not contain whitespace")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON): no URL or tag has one
        raise PurgeRequestError(f"{kind} {value!r} is not valid text") from None
    if not value.isprintable():
        # No request target or tag field has one; the purge's log line wrote it as it came
        # (an ESC sequence rewrote the terminal of whoever read the log).
        raise PurgeRequestError(f"{kind} {value!r} has a control character; no URL or tag has one")
    if kind == "tag":
        return value
    if "#" in value:
        if kind == "prefix":  # cut there, it would cover more than it says
            raise PurgeRequestError(f"prefix {value!r} has a fragment (#...): leave it out")
        # A fragment is never sent (RFC 9110 §7.1): the URL without it is the one stored. An absolute
        # URL lost it already (yarl), a /path kept it and purged nothing.
        value = value.partition("#")[0]
    if value.startswith("/"):
        return value
    try:
        url = URL(value)
        host = url.host  # decodes an IDNA host: "xn--" alone is not one (a UnicodeError)
    except ValueError:
        raise PurgeRequestError(f"{kind} {value!r} is not a URL or a /path") from None
    if url.scheme not in ("http", "https") or not host:
        raise PurgeRequestError(f"{kind} {value!r} must be an http(s):// URL or start with /")
    if "@" in value.partition("://")[2].partition("/")[0]:
        # No key has one: the purge matched nothing and said "purged 0".
        raise PurgeRequestError(f"{kind} {value!r}: a stored URL has no user:password@; leave it out")
    return value


def purge_fields(request: PurgeRequest) -> dict[str, object]:
    """A purge request as JSON fields (passed between the workers of a box); purge_from_fields reads them."""
    return {"kind": request.kind, "values": list(request.values), "soft": request.soft}


def purge_from_fields(fields: dict[str, object]) -> PurgeRequest:
    """The purge request purge_fields wrote; PurgeRequestError if the fields are not one."""
    kind = fields.get("kind")
    if not isinstance(kind, str):
        raise PurgeRequestError("a purge needs a kind")
    return parse_purge_request(
        {kind: True if kind == "all" else fields.get("values"), "soft": fields.get("soft")}
    )
