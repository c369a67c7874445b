"""Serialising this node's member of the Cache-Status field (RFC 9211) with http_sfv.

A response may already carry members from the origin or lower tiers; this
node's member is appended last (RFC 9211 §2: ordered from the origin to the
client).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from http_sfv.item import Item
from http_sfv.types import Token

# RFC 9211 §2.2: the values of the fwd parameter.
FWD_REASONS = frozenset({"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"})


class CacheStatus(NamedTuple):
    """What happened to one request in this cache.

    A tuple rather than a frozen dataclass: one is made per request, and a
    tuple is built and hashed (for the memoised serialisation) in C.
    """

    hit: bool = False
    fwd: str | None = None
    fwd_status: int | None = None
    ttl: int | None = None
    stored: bool = False
    collapsed: bool = False
    key: str | None = None
    detail: str | None = None
    # The configured rules that applied (proxy/rules.py), space separated: an extension
    # parameter (RFC 9211 §2 lets a cache add parameters; recipients ignore unknown ones).
    rule: str | None = None


# A node sees few distinct statuses (ttl varies most), and serialising with
# http_sfv costs more than the rest of a pass-through's header work.
@functools.lru_cache(maxsize=4096)
def member(node: str, status: CacheStatus) -> str:
    """This node's list member, e.g. `edge-1;hit;ttl=57` or `edge-1;fwd=uri-miss;fwd-status=200;stored`."""
    item = Item()
    item.value = Token(node) if _is_token(node) else _sf_text(node)
    params = item.params
    if status.hit:
        params["hit"] = True
    if status.fwd is not None:
        params["fwd"] = Token(status.fwd)
    if status.fwd_status is not None:
        params["fwd-status"] = status.fwd_status
    if status.ttl is not None:
        params["ttl"] = status.ttl
    if status.stored:
        params["stored"] = True
    if status.collapsed:
        params["collapsed"] = True
    if status.key is not None:
        params["key"] = _sf_text(status.key)
    if status.detail is not None:
        params["detail"] = _sf_text(status.detail)
    if status.rule is not None:
        params["rule"] = _sf_text(status.rule)
    return str(item)


class Members:
    """This node's Cache-Status members as the bytes a response carries, memoised per status.

    A CacheStatus is a tuple, so the lookup hashes in C; the text itself
    always comes from `member`, the one serialisation. Bounded: ttl values
    vary, so the memo is dropped when it grows past LIMIT.
    """

    __slots__ = ("_memo", "node")

    LIMIT = 8192

    def __init__(self, node: str) -> None:
        self.node = node
        self._memo: dict[CacheStatus, bytes] = {}

    def of(self, status: CacheStatus) -> bytes:
        found = self._memo.get(status)
        if found is None:
            if len(self._memo) >= self.LIMIT:
                self._memo.clear()
            found = self._memo[status] = member(self.node, status).encode("ascii")
        return found


def appended(existing: str | None, node_member: str) -> str:
    """The Cache-Status field value with this node's member appended."""
    if existing and existing.strip():
        return f"{existing}, {node_member}"
    return node_member


def _is_token(text: str) -> bool:
    # RFC 9651 §3.3.4: ASCII only (str.isalpha() would also accept "é").
    if not text or not text.isascii() or not (text[0].isalpha() or text[0] == "*"):
        return False
    return all(c.isalnum() or c in "!#$%&'*+-.^_`|~:/" for c in text)


def _sf_text(text: str) -> str:
    """An sf-string holds printable ASCII only (RFC 9651 §3.3.3); anything else becomes "?"."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)
