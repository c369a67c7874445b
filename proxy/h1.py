"""HTTP/1.1 response heads and body framing for replies the lean front writes itself.

Pure: a Reply in, bytes and a framing decision out (RFC 9112 §6). The rules
follow what aiohttp's own writer does for the same reply, so a response reads
the same whichever front wrote it: no body for HEAD, 1xx, 204 and 304;
Content-Length for a complete body; the origin's Content-Length, else chunked
(HTTP/1.1) or close-delimited (HTTP/1.0), for a streamed one; Date added when
missing (RFC 9110 §6.6.1: a recipient with a clock forwarding a response
without Date adds one).
"""

from __future__ import annotations

import time
from email.utils import formatdate
from enum import Enum

from proxy.engine import Reply
from proxy.wire import cached_status_line

# Framing fields are decided here, never copied from the reply.
_FRAMING = frozenset(("content-length", "transfer-encoding", "connection", "keep-alive"))


class Framing(Enum):
    NONE = "none"  # no body at all
    LENGTH = "length"  # the body's bytes as they are, Content-Length says how many
    CHUNKED = "chunked"  # RFC 9112 §7.1
    CLOSE = "close"  # HTTP/1.0, unknown length: the body ends when the connection does


class HeaderInjection(ValueError):
    """A field name or value would break the header section (CR or LF in it)."""


def reply_head(reply: Reply, method: str, http10: bool, keep_alive: bool) -> tuple[bytes, Framing, bool]:
    """(status line and header section, how the body goes, keep the connection?)."""
    status = reply.status
    body = reply.body
    streamed = not isinstance(body, bytes)
    empty = method == "HEAD" or status < 200 or status in (204, 304)
    headers = reply.headers  # the reply is being written: its framing fields are dropped here
    content_length = headers.get("Content-Length")
    for name in _FRAMING:
        if name in headers:
            del headers[name]
    has_date = "Date" in headers
    lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
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
        lines.append(_date_line())
    if not keep_alive:
        lines.append("Connection: close\r\n")
    elif http10:
        lines.append("Connection: keep-alive\r\n")
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise HeaderInjection("CR or LF inside a header field")
    head = cached_status_line(status, reply.reason) + text.encode("utf-8", "surrogateescape") + b"\r\n"
    return head, framing, keep_alive


_date_cache: tuple[int, str] = (0, "")


def _date_line() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, f"Date: {formatdate(now, usegmt=True)}\r\n")
    return _date_cache[1]


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
