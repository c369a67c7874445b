"""URIs a response names: Link targets (RFC 8288) and same-host resolution of references. Pure.

A response names other URIs in Location and Content-Location (RFC 9110 §10.2.2, §8.7) and
in Link (RFC 8288). The cache acts on them only for its own host: invalidating after an
unsafe method (RFC 9111 §4.4), storing a write-through answer (policy.write_through), and
prefetching preload targets (proxy/prefetch.py). A reference to another host is never
followed: one origin must not purge or fill another's entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from yarl import URL

__all__ = ["link_values", "preload_targets", "same_host_target"]

# RFC 9110 §5.6.2 token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_OWS = " \t"


def same_host_target(scheme: str, authority: str, path: str, reference: str | None) -> URL | None:
    """`reference` resolved against the request's URI (RFC 3986 §5.2: "b.css" is relative to the
    request's path); None when missing, malformed or naming another origin (scheme or authority)."""
    if not reference:
        return None
    try:
        base = URL.build(scheme=scheme, authority=authority, path=path or "/", encoded=True)
        target = base.join(URL(reference.strip(), encoded=True))
    except (ValueError, TypeError):
        return None
    if (
        not target.absolute
        or target.scheme != base.scheme
        or target.raw_authority.lower() != base.raw_authority.lower()
    ):
        return None
    return target


def link_values(fields: Iterable[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Each link-value of Link field lines (RFC 8288 §3): its target and parameters.

    Parameter names are lower-cased; a parameter given twice keeps its first value (§3.3
    says so of `rel`). A link-value that does not parse is skipped up to the next comma
    outside a quoted string, as a recipient of a malformed list element would.
    """
    for field in fields:
        yield from _parse(field)


def preload_targets(fields: Iterable[str], limit: int | None = None) -> list[str]:
    """The targets of the link-values whose relation types include `preload` (W3C Preload), in
    order, each once, at most `limit`. Relation types are compared case-insensitively (RFC 8288
    §2.1.1)."""
    found: dict[str, None] = {}
    for target, params in link_values(fields):
        if limit is not None and len(found) >= limit:
            break
        if "preload" in params.get("rel", "").lower().split():
            found[target] = None
    return list(found)


def _parse(field: str) -> Iterator[tuple[str, dict[str, str]]]:
    i, n = 0, len(field)
    while i < n:
        while i < n and field[i] in _OWS + ",":
            i += 1
        if i >= n:
            return
        if field[i] != "<":
            i = _next_element(field, i)
            continue
        end = field.find(">", i + 1)
        if end < 0:
            return
        target = field[i + 1 : end]
        i = end + 1
        params: dict[str, str] = {}
        ok = True
        while True:
            while i < n and field[i] in _OWS:
                i += 1
            if i >= n or field[i] == ",":
                break
            if field[i] != ";":
                ok = False
                break
            i += 1
            while i < n and field[i] in _OWS:
                i += 1
            name = _TOKEN.match(field, i)
            if name is None:
                ok = False
                break
            i = name.end()
            while i < n and field[i] in _OWS:
                i += 1
            value = ""
            if i < n and field[i] == "=":
                i += 1
                while i < n and field[i] in _OWS:
                    i += 1
                if i < n and field[i] == '"':
                    quoted = _quoted(field, i)
                    if quoted is None:
                        return  # an unterminated quoted string runs to the end of the line
                    value, i = quoted
                else:
                    token = _TOKEN.match(field, i)
                    if token is None:
                        ok = False
                        break
                    value, i = token.group(), token.end()
            params.setdefault(name.group().lower(), value)
        if ok:
            yield target, params
        else:
            i = _next_element(field, i)


def _quoted(field: str, i: int) -> tuple[str, int] | None:
    """The quoted-string at `i` (RFC 9110 §5.6.4), unescaped, and the index after it."""
    out: list[str] = []
    i += 1
    while i < len(field):
        c = field[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\" and i + 1 < len(field):
            i += 1
            c = field[i]
        out.append(c)
        i += 1
    return None


def _next_element(field: str, i: int) -> int:
    """The index after the next comma outside a quoted string (or the end)."""
    quoted = False
    while i < len(field):
        c = field[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            return i + 1
        i += 1
    return i
