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
from proxy.headers import connection_options

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
    """A client request as the front read it; immutable after construction.

    Built by `ClientRequest.read` (the front's one pass over the fields) or,
    from text, by `ClientRequest.of`.
    """

    __slots__ = (
        "_conditional_headers",
        "_headers",
        "accept_encoding",
        "body",
        "body_follows",
        "cache_control",
        "conditional",
        "conditional_raw",
        "connection",
        "expect_continue",
        "hop",
        "host",
        "hosts",
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

    method: str
    scheme: str
    host: str  # the Host field (or the absolute-form target's authority)
    path: str  # raw, percent-encoded
    query: str  # raw, without "?"
    raw_fields: RawFields  # (name, value) as received
    remote: str | None
    body: AsyncIterator[bytes] | None
    http10: bool
    keep_alive: bool  # RFC 9112 §9.3, from the version and Connection
    # The fields a lookup reads, picked out of raw_fields (repeated lines joined with ", ").
    cache_control: str | None
    pragma: str | None
    accept_encoding: str | None
    conditional: bool  # any of CONDITIONAL_FIELDS present
    conditional_raw: RawFields  # their lines as received, in order (empty when none)
    connection: str | None  # the Connection field (RFC 9110 §7.6.1): the names it lists are hop-by-hop
    hop: str | None  # routing.HOP_HEADER: the peer edge that sent it
    # Framing facts for the front: Host lines seen, a body follows the head (Content-Length
    # other than 0, or Transfer-Encoding), the client waits for "100 Continue".
    hosts: int
    body_follows: bool
    expect_continue: bool
    _headers: CIMultiDictProxy[str] | None
    _conditional_headers: CIMultiDictProxy[str] | None

    @classmethod
    def read(
        cls, method: str, path: str, query: str, raw: RawFields, remote: str | None, http10: bool
    ) -> ClientRequest:
        """A request from its parsed head, picking out the looked-up fields in one pass (RFC 9110 §5.3)."""
        self = object.__new__(cls)
        host = cache_control = pragma = accept_encoding = connection = hop = None
        conditionals: list[tuple[bytes, bytes]] | None = None
        hosts = 0
        conditional = body_follows = expect_continue = False
        spelled = _SPELLINGS.get
        for name, value in raw:
            kind = spelled(name)
            if kind is None:
                kind = _learn_spelling(name)
            if kind == _OTHER:
                continue  # most fields: nothing to pick
            # Host, Accept-Encoding and Connection come with nearly every request: _text and
            # _joined inline for them (a Python call each saved).
            if kind == _HOST:
                hosts += 1
                host = value.decode("utf-8", "surrogateescape").strip(" \t")
            elif kind == _ACCEPT_ENCODING:
                text = value.decode("utf-8", "surrogateescape")
                accept_encoding = text if accept_encoding is None else f"{accept_encoding}, {text}"
            elif kind == _CONNECTION:
                text = value.decode("utf-8", "surrogateescape")
                connection = text if connection is None else f"{connection}, {text}"
            elif kind == _CACHE_CONTROL:
                cache_control = _joined(cache_control, _text(value))
            elif kind == _CONDITIONAL:
                conditional = True
                if conditionals is None:
                    conditionals = []
                conditionals.append((name, value))
            elif kind == _PRAGMA:
                pragma = _joined(pragma, _text(value))
            elif kind == _CONTENT_LENGTH:
                body_follows = body_follows or value.strip(b" \t") != b"0"
            elif kind == _TRANSFER_ENCODING:
                body_follows = True
            elif kind == _EXPECT:
                expect_continue = value.strip(b" \t").lower() == b"100-continue"
            else:  # _HOP
                hop = _text(value).strip(" \t")
        self.method = method
        self.scheme = "http"
        self.host = host or ""
        self.path = path
        self.query = query
        self.raw_fields = raw
        self.remote = remote
        self.body = None
        self.http10 = http10
        # RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
        if connection is None:
            self.keep_alive = not http10
        else:
            lowered = connection.lower()
            if lowered == "keep-alive":  # what nearly every browser sends
                self.keep_alive = True
            else:
                # Connection options are tokens (RFC 9110 §7.6.1): "closed" is not "close".
                options = connection_options(lowered)
                self.keep_alive = "keep-alive" in options if http10 else "close" not in options
        self.cache_control = cache_control
        self.pragma = pragma
        self.accept_encoding = accept_encoding
        self.conditional = conditional
        self.conditional_raw = () if conditionals is None else tuple(conditionals)
        self.connection = connection
        self.hop = hop
        self.hosts = hosts
        self.body_follows = body_follows
        # RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored (and
        # an HTTP/1.0 client gets no 1xx, §15.2).
        self.expect_continue = expect_continue and not http10
        self._headers = None
        self._conditional_headers = None
        return self

    def as_get(self) -> ClientRequest:
        """A GET of the same URI with the same fields and no body: how a later GET of it would be
        keyed, matched by rules and Vary (policy.write_through stores a POST's answer for it)."""
        twin = ClientRequest.read("GET", self.path, self.query, self.raw_fields, self.remote, self.http10)
        twin.scheme = self.scheme
        return twin

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
        self = cls.read(method, path or "/", query, raw, remote, http10)
        self.scheme = scheme
        self.body = body
        return self

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """Every field as received, case-insensitive (built on first use)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = _decoded(self.raw_fields)
        return headers

    @property
    def conditional_headers(self) -> CIMultiDictProxy[str]:
        """The conditional and Range fields as received (CONDITIONAL_FIELDS), without the others:
        what a conditional lookup reads, without building the multidict of every field."""
        found = self._conditional_headers
        if found is None:
            found = self._conditional_headers = _decoded(self.conditional_raw)
        return found

    @property
    def path_qs(self) -> str:
        return self.path + ("?" + self.query if self.query else "")

    def __repr__(self) -> str:
        return f"ClientRequest({self.method} {self.path_qs} host={self.host!r})"


def _decoded(raw: RawFields) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict((_text(n), _text(v)) for n, v in raw))


def _joined(prior: str | None, value: str) -> str:
    return value if prior is None else f"{prior}, {value}"


# What ClientRequest.read picks out, by field name as spelled on the wire: one dict lookup
# per field. The usual spellings are there from the start; another spelling of a name is
# lowered once and remembered (up to SPELLINGS_LIMIT, so random names cannot grow it).
(
    _OTHER,
    _HOST,
    _ACCEPT_ENCODING,
    _CACHE_CONTROL,
    _PRAGMA,
    _CONNECTION,
    _CONDITIONAL,
    _CONTENT_LENGTH,
    _TRANSFER_ENCODING,
    _EXPECT,
    _HOP,
) = range(11)
_PICKED: dict[bytes, int] = {}  # lower-case name -> kind (_OTHER when absent)
for _names, _kind in (
    (("Host",), _HOST),
    (("Accept-Encoding",), _ACCEPT_ENCODING),
    (("Cache-Control",), _CACHE_CONTROL),
    (("Pragma",), _PRAGMA),
    (("Connection",), _CONNECTION),
    (
        ("If-None-Match", "If-Modified-Since", "If-Range", "Range", "If-Match", "If-Unmodified-Since"),
        _CONDITIONAL,
    ),
    (("Content-Length",), _CONTENT_LENGTH),
    (("Transfer-Encoding",), _TRANSFER_ENCODING),
    (("Expect",), _EXPECT),
    (("X-Minicdn-Hop",), _HOP),
):
    for _name in _names:
        _PICKED[_name.lower().encode("ascii")] = _kind
del _names, _kind, _name
_COMMON = (
    "User-Agent",
    "Accept",
    "Accept-Language",
    "Cookie",
    "Referer",
    "Origin",
    "Authorization",
    "Upgrade-Insecure-Requests",
    "Sec-Fetch-Dest",
    "Sec-Fetch-Mode",
    "Sec-Fetch-Site",
    "Sec-Fetch-User",
    "Sec-Ch-Ua",
    "Sec-Ch-Ua-Mobile",
    "Sec-Ch-Ua-Platform",
    "Priority",
    "DNT",
    "X-Requested-With",
    "X-Forwarded-For",
    "Content-Type",
    "Host",
    "Accept-Encoding",
    "Cache-Control",
    "Pragma",
    "Connection",
    "If-None-Match",
    "If-Modified-Since",
    "If-Range",
    "Range",
    "If-Match",
    "If-Unmodified-Since",
    "Content-Length",
    "Transfer-Encoding",
    "Expect",
    "X-Minicdn-Hop",
)
SPELLINGS_LIMIT = 1024
_SPELLINGS: dict[bytes, int] = {
    spelling: _PICKED.get(spelling.lower(), _OTHER)
    for name in _COMMON
    for spelling in (name.encode("ascii"), name.lower().encode("ascii"))
}


def _learn_spelling(name: bytes) -> int:
    kind = _PICKED.get(name.lower(), _OTHER)
    if len(_SPELLINGS) < SPELLINGS_LIMIT:
        _SPELLINGS[name] = kind
    return kind


@dataclass(slots=True)
class Reply:
    """An answer that is not a stored response: a complete body, or a stream."""

    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes | AsyncIterator[bytes] = b""
    cache_status: CacheStatus = field(default_factory=CacheStatus)

    async def drop_body(self) -> None:
        """Close a streamed body nobody will read (what it streams from, an origin response, goes)."""
        aclose = getattr(self.body, "aclose", None)
        if aclose is not None:
            await aclose()


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
