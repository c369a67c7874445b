"""The one error type for "the origin gave no usable response", and the one table of reasons.

Both origin clients (proxy/origin/lean.py, proxy/origin/aiohttp_client.py)
raise `UpstreamError` with a reason from this table, so a client of the
package cannot tell them apart, and only the front turns an error into a
response (502 or 504 with the reason as its one-line body).

Each reason names its cause, so that an operator reading a 502, an access
line or a metric can tell a refused connection from a name that does not
resolve: `cause` is a short, fixed word (a metric label, a log field) and the
reason the sentence a client and an operator read. `connect_failure` maps the
errors of opening a connection (the same for both clients and the readiness
probe) onto the table.
"""

from __future__ import annotations

import errno
import socket
from typing import Final


class UpstreamError(Exception):
    """The origin could not give a usable response; `status_hint` is 502 or 504.

    `cause` is one of CAUSES (refused, dns, unreachable, timeout, reset, closed,
    incomplete, bad_response, failed, client_body); given a reason of the table,
    it need not be passed.
    """

    def __init__(self, status_hint: int, reason: str, cause: str | None = None) -> None:
        super().__init__(reason)
        self.status_hint = status_hint
        self.reason = reason
        self.cause = cause if cause is not None else CAUSE.get(reason, "failed")


# reason -> the status a client gets for it, and its cause.
REFUSED: Final = "origin refused the connection"
DNS: Final = "origin name does not resolve"
UNREACHABLE: Final = "origin unreachable"
CONNECT_TIMED_OUT: Final = "origin timed out connecting"
TIMED_OUT: Final = "origin timed out"
RESET: Final = "origin reset the connection"
CLOSED: Final = "origin closed the connection"
INCOMPLETE: Final = "origin response body incomplete"
INVALID: Final = "origin sent an invalid response"
FAILED: Final = "origin connection failed"
REQUEST_FAILED: Final = "origin request failed"
# The connection broke while a request body was still on its way to the origin (and no answer had
# come): the origin's doing as RESET and CLOSED are, told apart because an operator looks for a
# different cause (an upload limit or an authentication check that refuses by hanging up).
RESET_DURING_BODY: Final = "origin reset the connection during the request body"
CLOSED_DURING_BODY: Final = "origin closed the connection during the request body"
# Not the origin's doing: the client's request body, being forwarded, broke off (malformed, too
# slow, or the client left). The front answers the client's error instead (400 or 408).
CLIENT_BODY: Final = "request body broke off"
CLIENT_BODY_CAUSE: Final = "client_body"

STATUS: Final = {
    REFUSED: 502,
    DNS: 502,
    UNREACHABLE: 502,
    CONNECT_TIMED_OUT: 504,
    TIMED_OUT: 504,
    RESET: 502,
    CLOSED: 502,
    INCOMPLETE: 502,
    INVALID: 502,
    FAILED: 502,
    REQUEST_FAILED: 502,
    RESET_DURING_BODY: 502,
    CLOSED_DURING_BODY: 502,
    CLIENT_BODY: 400,
}
CAUSE: Final = {
    REFUSED: "refused",
    DNS: "dns",
    UNREACHABLE: "unreachable",
    CONNECT_TIMED_OUT: "timeout",
    TIMED_OUT: "timeout",
    RESET: "reset",
    CLOSED: "closed",
    INCOMPLETE: "incomplete",
    INVALID: "bad_response",
    FAILED: "failed",
    REQUEST_FAILED: "failed",
    RESET_DURING_BODY: "reset",
    CLOSED_DURING_BODY: "closed",
    CLIENT_BODY: CLIENT_BODY_CAUSE,
}
# Every cause, in the order a table of them is shown.
CAUSES: Final = (
    "refused",
    "dns",
    "unreachable",
    "timeout",
    "reset",
    "closed",
    "incomplete",
    "bad_response",
    "failed",
    "client_body",
)


class RequestBodyBroken(ConnectionAbortedError):
    """Raised by a client's request body being forwarded when it breaks off (proxy/front.py):
    an origin client that meets it reports CLIENT_BODY, not a failure of the origin."""


def caused_by_the_request_body(exc: BaseException) -> bool:
    """Whether RequestBodyBroken is in exc's chain of causes (an origin client wraps it)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, RequestBodyBroken):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# What a broken connection is called when it broke while the request body was being sent.
DURING_BODY: Final = {RESET: RESET_DURING_BODY, CLOSED: CLOSED_DURING_BODY}


def failure(reason: str) -> UpstreamError:
    """The UpstreamError for one of the reasons above."""
    return UpstreamError(STATUS[reason], reason, CAUSE[reason])


def connect_failure(exc: BaseException) -> UpstreamError:
    """The UpstreamError for a failure to open a connection to the origin (or a peer)."""
    if isinstance(exc, TimeoutError):
        return failure(CONNECT_TIMED_OUT)
    if isinstance(exc, socket.gaierror):
        return failure(DNS)
    if isinstance(exc, ConnectionRefusedError):
        return failure(REFUSED)
    if isinstance(exc, ConnectionResetError):
        return failure(RESET)
    if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
        return failure(CONNECT_TIMED_OUT)
    return failure(UNREACHABLE)
