"""The rules both origin clients follow, in one place (tests/functional/test_origin_contract.py runs both).

`proxy.origin.lean` and `proxy.origin.aiohttp_client` implement them each in
their own way; what a response may be, how big its head may get, which
requests are sent twice and how long an idle connection is kept are decided
here, so that a caller cannot tell the clients apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

# The methods whose request may be sent twice (RFC 9110 §9.2.2). A request is retried once,
# on another connection, only when a reused keep-alive connection turns out to have been
# closed by the origin before any byte of a response arrived (the keep-alive race, RFC 9112
# §9.3.1), and only when its body, if any, can be sent again. A fresh connection that fails,
# a response that breaks off, a timeout: never retried (the origin did fail; asking twice
# doubles its load and the client's wait).
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

# The largest response header section accepted (name, ": ", value and CRLF per field),
# and the most fields in it; beyond either, the response is invalid (502).
MAX_HEADER_BYTES: Final = 64 * 1024
MAX_HEADER_FIELDS: Final = 200

# An idle keep-alive connection is closed this long after its last response (aiohttp's default
# keepalive_timeout; Upstream passes `origin.idle_timeout` from the config instead): the older it
# is, the likelier the origin is closing it right now, and the origin's connection slots are not
# ours to hold while we have nothing to ask. Each client closes it on time, not at its next use.
IDLE_TIMEOUT: Final = 15.0


def check_pool(max_connections: int, idle_timeout: float) -> None:
    """ValueError unless a client's pool settings are usable: at least one connection per origin
    (aiohttp would read 0 as "no limit"), and idle connections kept for some time."""
    if max_connections < 1:
        raise ValueError("max_connections must be at least 1")
    if idle_timeout <= 0:
        raise ValueError("idle_timeout must be greater than 0")


# Responses that never have a body, whatever their framing fields say (RFC 9110 §15.3.5, §15.4.5).
NO_BODY_STATUSES: Final = frozenset({204, 304})


def section_size(fields: list[tuple[str, str]]) -> int:
    """The size of a header section as MAX_HEADER_BYTES counts it."""
    return sum(len(name) + len(value) + 4 for name, value in fields)


def final_status_ok(status: int) -> bool:
    """A final response's status: 2xx to 5xx (RFC 9110 §15: values outside 100..599 are
    invalid). A 1xx is interim, and 101 (an upgrade nobody asked for) is invalid too."""
    return 200 <= status <= 599


def http1(major: int) -> bool:
    """Whether a response's status line names HTTP/1.x, the only version an HTTP/1.1 connection
    carries (RFC 9112 §2.3; llhttp took "HTTP/2.0" and "HTTP/0.9" status lines). Both parsers
    refuse a minor version above 1 themselves, which §2.3 would have read as 1.1: none exists."""
    return major == 1


def has_body(status: int, head: bool) -> bool:
    """Whether a final response has a body to frame (RFC 9112 §6.3): not a HEAD's, a 204 or a 304."""
    return not head and status not in NO_BODY_STATUSES


def chunked_alone(transfer_encoding: Sequence[str]) -> bool:
    """Whether a response's Transfer-Encoding field lines name the chunked coding alone.

    Only then may a response with a body be taken (RFC 9112 §6.1): chunked is the final coding
    and is applied once, and any other coding (gzip, deflate, ...) would be left on the body,
    which a cache must not forward or store as if it were the representation; neither client
    decodes one. One field line, "chunked" in any case with trailing spaces: the spaces are all
    llhttp still reads as chunked ("chunked\t" is another coding to it), and the lean client
    passes the value as llhttp read it (aiohttp strips it: its client asks its parser too).
    Without a body (`has_body`) the field only says what a GET would have got: no matter.
    """
    return len(transfer_encoding) == 1 and transfer_encoding[0].rstrip(" ").lower() == "chunked"


# RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding is treated as if its framing were
# faulty, even beside a Content-Length (HTTP/1.0 has no transfer codings; an intermediary that
# took one may frame the body differently from the next): a response with a body is refused.
HTTP10_TRANSFER_ENCODING: Final = "Transfer-Encoding in an HTTP/1.0 response"


def reusable_after_head(status: int, content_length: str | None) -> bool:
    """Whether a connection may carry another request after this response to a HEAD.

    An origin that answers HEAD as if it were GET (RFC 9110 §9.3.2 forbids it, some do) sends
    the body after the header section, perhaps much later, and whatever arrives on a reused
    connection is read as the next request's response: a 502 at best, a body made to look like
    a response served and stored for another URL at worst. Nothing can tell at reuse time
    whether such bytes are on their way, so only a response whose GET would have had no body
    keeps its connection: a 204, a 304 or Content-Length: 0. Any other goes (one more TCP
    connection per such HEAD; HEADs are few next to the GETs a cache sends).
    """
    if status in NO_BODY_STATUSES:
        return True
    return content_length is not None and content_length.isdigit() and int(content_length) == 0


def check_lines(block: str, lines: int) -> None:
    """`block` holds exactly `lines` CRLF-terminated lines and no NUL (else: request splitting)."""
    if block.count("\r") != lines or block.count("\n") != lines or "\0" in block:
        raise ValueError("CR, LF or NUL in a request line or header field")


def check_request_line(line: str) -> None:
    """`line` ("METHOD target HTTP/1.1\\r\\n") has no space but its two separators."""
    if line.count(" ") != 2:
        raise ValueError("a space in the method or request-target")
