"""HTTP/1.1 response heads: the one hit writer for stored responses, and the framing of every other reply.

What must live here: every byte of a response head this node writes. Pure:
an answer in, bytes and a framing decision out (RFC 9112 §6).

- `delivery_head` writes a stored response (a hit, a stale answer, the
  snapshot a fetch just stored): the status line and stored fields come from
  the header block built once per stored response (`StoredResponse.hit_fields`),
  followed by Age, this node's Cache-Status member, Via and Connection.
- `interim_head` writes a 1xx response the origin sent ahead of its final one
  (RFC 9110 §15.2), for HTTP/1.1 clients only.
- `reply_head` frames any other answer: no body for HEAD, 1xx, 204 and 304;
  Content-Length for a complete body; the origin's Content-Length, else
  chunked (HTTP/1.1) or close-delimited (HTTP/1.0), for a streamed one; Date
  added when missing (RFC 9110 §6.6.1), from a line the caller passes in.

Both append this node's Cache-Status member to any the origin or a lower
tier sent (RFC 9211 §2) and add Via (RFC 9110 §7.6.3).
"""

from __future__ import annotations

from enum import Enum

from proxy import policy
from proxy.headers import Headers, end_to_end
from proxy.messages import Delivery, Reply
from proxy.wire import cached_status_line, status_line

# Framing fields are decided here, never copied from the reply.
_FRAMING = frozenset(("content-length", "transfer-encoding", "connection", "keep-alive"))
# What reply_head writes itself: the framing, and Cache-Status (its members come first).
_REWRITTEN = _FRAMING | {"cache-status"}
# RFC 9110 §15.5.17: a 416 describes no representation.
_NOT_IN_416 = frozenset(("content-type", "content-encoding"))

CLOSE_LINE = b"Connection: close\r\n"
ACCEPT_RANGES_LINE = b"Accept-Ranges: bytes\r\n"
KEEP_ALIVE_LINE = b"Connection: keep-alive\r\n"


class Framing(Enum):
    NONE = "none"  # no body at all
    LENGTH = "length"  # the body's bytes as they are, Content-Length says how many
    CHUNKED = "chunked"  # RFC 9112 §7.1
    CLOSE = "close"  # HTTP/1.0, unknown length: the body ends when the connection does


class HeaderInjection(ValueError):
    """A field name or value would break the header section (CR or LF in it)."""


def connection_line(http10: bool, keep_alive: bool) -> bytes:
    """RFC 9112 §9.3: say "close" when closing; an HTTP/1.0 client must be told it may keep it."""
    if not keep_alive:
        return CLOSE_LINE
    return KEEP_ALIVE_LINE if http10 else b""


def via_line(node: str) -> bytes:
    return f"Via: 1.1 {node}\r\n".encode("ascii")


def delivery_head(
    d: Delivery, member: bytes, via: bytes, method: str, http10: bool, keep_alive: bool
) -> tuple[bytes, bytes]:
    """(head, body) for a stored response; `member` is this node's Cache-Status member."""
    entry = d.entry
    kind = d.kind
    age = int(d.age)
    extra = (
        b"".join(f"{n}: {v}\r\n".encode("utf-8", "surrogateescape") for n, v in d.extra) if d.extra else b""
    )
    connection = connection_line(http10, keep_alive)
    if kind == "whole":
        # The hit path: one join of the parts built at store time and this response's lines.
        status = entry.status
        head = b"".join(
            (
                cached_status_line(status, entry.reason),
                entry.hit_fields,
                ACCEPT_RANGES_LINE if entry.add_accept_ranges else b"",
                b"Content-Length: %d\r\nAge: %d\r\n" % (len(entry.body), age)
                if status != 204 and status != 304
                else b"Age: %d\r\n" % age,
                extra,
                b"Cache-Status: ",
                entry.cache_status_prefix,
                member,
                b"\r\n",
                via,
                connection,
                b"\r\n",
            )
        )
        return head, entry.body if method != "HEAD" else b""
    # What every other kind ends with: this response's fields after Age.
    after = (extra, b"Cache-Status: ", entry.cache_status_prefix, member, b"\r\n", via, connection, b"\r\n")
    tail = (b"Age: %d\r\n" % age, *after)
    if kind == "partial":
        length = d.last - d.first + 1
        # A complete response's body is the representation; an incomplete one holds parts of it.
        incomplete = bool(entry.parts)
        lines = b"Content-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n" % (
            d.first,
            d.last,
            entry.complete_length if incomplete else len(entry.body),
            length,
        )
        head = b"".join((cached_status_line(206, ""), entry.hit_fields, lines, *tail))
        if method == "HEAD":
            return head, b""
        return head, entry.bytes_of(d.first, d.last) if incomplete else entry.body[d.first : d.last + 1]
    if kind == "not-modified":
        kept_lines = entry.not_modified_lines
        if kept_lines is None:
            kept = policy.not_modified_header_list(entry)
            text = "".join(f"{n}: {v}\r\n" for n, v in kept if n.lower() != "cache-status")
            kept_lines = text.encode("utf-8", "surrogateescape")
            # Derived once per stored response (a pure function of its fields): browsers
            # revalidate the same objects over and over.
            object.__setattr__(entry, "not_modified_lines", kept_lines)
        head = cached_status_line(304, "") + kept_lines + b"".join(tail)
        return head, b""
    # unsatisfiable
    fields = "".join(
        f"{n}: {v}\r\n"
        for n, v in entry.headers
        if n.lower() not in _NOT_IN_416 and n.lower() != "cache-status"
    )
    lines = b"Content-Range: bytes */%d\r\nContent-Length: 0\r\n" % entry.length
    head = b"".join((cached_status_line(416, ""), fields.encode("utf-8", "surrogateescape"), lines, *tail))
    return head, b""


def interim_head(status: int, reason: str, headers: Headers, via: bytes) -> bytes:
    """A 1xx response as forwarded (RFC 9110 §15.2): its end-to-end fields and Via; it has no content."""
    fields = end_to_end(headers, ("content-length",))
    text = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    if text.count("\n") != len(fields) or text.count("\r") != len(fields):
        raise HeaderInjection("CR or LF inside a header field")
    return b"".join((status_line(status, reason), text.encode("utf-8", "surrogateescape"), via, b"\r\n"))


def reply_head(
    reply: Reply, member: bytes, via: bytes, method: str, http10: bool, keep_alive: bool, date: str
) -> tuple[bytes, Framing, bool]:
    """(status line and header section, how the body goes, keep the connection?).

    `date` is the Date line to add when the reply has none (the caller owns the clock).
    """
    status = reply.status
    body = reply.body
    streamed = not isinstance(body, bytes)
    empty = method == "HEAD" or status < 200 or status in (204, 304)
    headers = reply.headers
    content_length = headers.get("Content-Length")
    prior = headers.getall("Cache-Status", ())
    lines = [f"{name}: {value}\r\n" for name, value in headers.items() if name.lower() not in _REWRITTEN]
    has_date = "Date" in headers
    if status in (204, 304) or status < 200:
        framing = Framing.NONE
    elif not streamed:
        assert isinstance(body, bytes)
        # A HEAD answer says how long the GET body is (RFC 9110 §9.3.2), when known.
        if body or not empty:
            lines.append(f"Content-Length: {len(body)}\r\n")
        elif content_length is not None:
            lines.append(f"Content-Length: {content_length}\r\n")
        framing = Framing.NONE if empty else Framing.LENGTH
    elif content_length is not None:
        lines.append(f"Content-Length: {content_length}\r\n")
        framing = Framing.NONE if empty else Framing.LENGTH
    elif empty:
        framing = Framing.NONE
    elif http10:
        framing = Framing.CLOSE
        keep_alive = False
    else:
        lines.append("Transfer-Encoding: chunked\r\n")
        framing = Framing.CHUNKED
    if not has_date:
        lines.append(date)
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise HeaderInjection("CR or LF inside a header field")
    prior_members = ", ".join(prior).encode("utf-8", "surrogateescape")
    head = b"".join(
        (
            cached_status_line(status, reply.reason),
            text.encode("utf-8", "surrogateescape"),
            b"Cache-Status: ",
            prior_members + b", " if prior_members.strip() else b"",
            member,
            b"\r\n",
            via,
            connection_line(http10, keep_alive),
            b"\r\n",
        )
    )
    if b"\n" in prior_members or b"\r" in prior_members:
        raise HeaderInjection("CR or LF inside a header field")
    return head, framing, keep_alive


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
