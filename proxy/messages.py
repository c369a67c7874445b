"""The messages passed between the front, the engine and the origin side: a request in, an answer out.

What must live here: the shapes every layer above the pure policy shares, and
nothing that does I/O. `ClientRequest` is what the front read off the wire
(proxy/front.py builds it; tests may build one with `ClientRequest.of`).
An answer is one of two kinds:

- `Delivery`: a stored response to serve (a hit, a stale answer, or the
  snapshot a fetch just stored); its bytes come from the one hit writer,
  `proxy.h1.delivery_head`, which starts from the head built once per stored
  response;
- `Reply`: anything else (an origin response streamed or read whole, an
  error page, the node's own answers); framed by `proxy.h1.reply_head`.

A request keeps its header fields as the bytes they arrived as. The few
fields a cache lookup reads (Cache-Control, Pragma, Accept-Encoding, the
conditionals, Host) are picked out once while the head is read; the full
case-insensitive multidict is built only when something needs it (a miss,
a Vary on another field, forwarding).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.cache_status import CacheStatus
from proxy.entry import StoredResponse

__all__ = ["ClientRequest", "Delivery", "Reply", "error_reply"]

RawFields = Sequence[tuple[bytes, bytes]]

# Request fields whose presence means a hit needs more than the stored head and body
# (RFC 9110 §13: conditionals; §14.2: Range).
CONDITIONAL_FIELDS = frozenset(
    {b"if-none-match", b"if-modified-since", b"if-range", b"range", b"if-match", b"if-unmodified-since"}
)


def _text(raw: bytes) -> str:
    # As aiohttp decodes fields: bytes that are not UTF-8 survive the round trip to the origin.
    return raw.decode("utf-8", "surrogateescape")


class ClientRequest:
    """A client request as the front read it; immutable after construction."""

    __slots__ = (
        "_headers",
        "accept_encoding",
        "body",
        "cache_control",
        "conditional",
        "hop",
        "host",
        "http10",
        "keep_alive",
        "method",
        "path",
        "pragma",
        "query",
        "raw_fields",
        "remote",
        "scheme",
    )

    def __init__(
        self,
        method: str,
        scheme: str,
        host: str,
        path: str,
        query: str,
        raw_fields: RawFields,
        *,
        remote: str | None = None,
        body: AsyncIterator[bytes] | None = None,
        http10: bool = False,
        keep_alive: bool = True,
        cache_control: str | None = None,
        pragma: str | None = None,
        accept_encoding: str | None = None,
        conditional: bool = False,
        hop: str | None = None,
    ) -> None:
        self.method = method
        self.scheme = scheme
        self.host = host  # the Host field (or the absolute-form target's authority)
        self.path = path  # raw, percent-encoded
        self.query = query  # raw, without "?"
        self.raw_fields = raw_fields  # (name, value) as received
        self.remote = remote
        self.body = body
        self.http10 = http10
        self.keep_alive = keep_alive
        # Picked out of raw_fields by whoever built the request (repeated lines joined with ", ").
        self.cache_control = cache_control
        self.pragma = pragma
        self.accept_encoding = accept_encoding
        self.conditional = conditional  # any of CONDITIONAL_FIELDS present
        self.hop = hop  # routing.HOP_HEADER: the peer edge that sent it
        self._headers: CIMultiDictProxy[str] | None = None

    @classmethod
    def of(
        cls,
        method: str,
        target: str,
        fields: Iterable[tuple[str, str]] = (),
        *,
        scheme: str = "http",
        remote: str | None = None,
        body: AsyncIterator[bytes] | None = None,
        http10: bool = False,
    ) -> ClientRequest:
        """A request from text fields, with the looked-up fields picked out as the front does."""
        raw = [(n.encode("ascii"), v.encode("utf-8", "surrogateescape")) for n, v in fields]
        path, _, query = target.partition("?")
        picked = pick_fields(raw)
        return cls(
            method,
            scheme,
            picked.host or "",
            path or "/",
            query,
            raw,
            remote=remote,
            body=body,
            http10=http10,
            keep_alive=picked.keep_alive(http10),
            cache_control=picked.cache_control,
            pragma=picked.pragma,
            accept_encoding=picked.accept_encoding,
            conditional=picked.conditional,
            hop=picked.hop,
        )

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """Every field as received, case-insensitive (built on first use)."""
        headers = self._headers
        if headers is None:
            headers = CIMultiDictProxy(CIMultiDict((_text(n), _text(v)) for n, v in self.raw_fields))
            self._headers = headers
        return headers

    @property
    def path_qs(self) -> str:
        return self.path + ("?" + self.query if self.query else "")

    def __repr__(self) -> str:
        return f"ClientRequest({self.method} {self.path_qs} host={self.host!r})"


@dataclass(slots=True)
class PickedFields:
    """The fields a lookup reads, picked out of a request's fields in one pass."""

    host: str | None = None
    hosts: int = 0
    cache_control: str | None = None
    pragma: str | None = None
    accept_encoding: str | None = None
    connection: str | None = None
    conditional: bool = False
    hop: str | None = None
    # Framing the front needs: a body follows the head (Content-Length other than 0, or
    # Transfer-Encoding), and the client waits for "100 Continue" before sending it.
    body_follows: bool = False
    expect_continue: bool = False

    def keep_alive(self, http10: bool) -> bool:
        """RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive"."""
        connection = (self.connection or "").lower()
        return "keep-alive" in connection if http10 else "close" not in connection


def _joined(prior: str | None, value: str) -> str:
    return value if prior is None else f"{prior}, {value}"


def pick_fields(raw: RawFields) -> PickedFields:
    """One pass over the raw fields (RFC 9110 §5.3: repeated lines combine with ", ")."""
    out = PickedFields()
    for name, value in raw:
        lower = name.lower()
        if lower == b"host":
            out.hosts += 1
            out.host = _text(value).strip(" \t")
        elif lower == b"accept-encoding":
            out.accept_encoding = _joined(out.accept_encoding, _text(value))
        elif lower == b"cache-control":
            out.cache_control = _joined(out.cache_control, _text(value))
        elif lower == b"pragma":
            out.pragma = _joined(out.pragma, _text(value))
        elif lower == b"connection":
            out.connection = _joined(out.connection, _text(value))
        elif lower in CONDITIONAL_FIELDS:
            out.conditional = True
        elif lower == b"x-minicdn-hop":
            out.hop = _text(value).strip(" \t")
        elif lower == b"content-length":
            out.body_follows = out.body_follows or value.strip(b" \t") != b"0"
        elif lower == b"transfer-encoding":
            out.body_follows = True
        elif lower == b"expect":
            out.expect_continue = value.strip(b" \t").lower() == b"100-continue"
    return out


@dataclass(slots=True)
class Reply:
    """An answer that is not a stored response: a complete body, or a stream."""

    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes | AsyncIterator[bytes] = b""
    cache_status: CacheStatus = field(default_factory=CacheStatus)


# What part of a stored response a delivery sends (RFC 9110 §15.4.5, §14.2, §15.5.17).
DeliveryKind = Literal["whole", "not-modified", "partial", "unsatisfiable"]


@dataclass(slots=True)
class Delivery:
    """A stored response to serve, and how: whole, as a 304, as one range, or as a 416."""

    entry: StoredResponse
    age: float
    cache_status: CacheStatus
    kind: DeliveryKind = "whole"
    first: int = 0  # partial: the byte range sent (inclusive)
    last: int = -1
    # Fields for this client only, after the stored ones: the Set-Cookie of the response
    # a leader fetched (never stored), or the tags a peer edge needs.
    extra: tuple[tuple[str, str], ...] = ()


Answer = Reply | Delivery


def error_reply(status: int, reason: str, cache_status: CacheStatus | None = None) -> Reply:
    """A short plain-text error; never a traceback."""
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Content-Type"] = "text/plain; charset=utf-8"
    headers["Cache-Control"] = "no-store"
    return Reply(status, "", headers, (reason + "\n").encode(), cache_status or CacheStatus(detail=reason))
