"""The one error type for "the origin gave no usable response", and the one table of reasons.

Both origin clients (proxy/origin/lean.py, proxy/origin/aiohttp_client.py)
raise `UpstreamError` with a reason from this table, so a client of the
package cannot tell them apart, and only the front turns an error into a
response (502 or 504 with the reason as its one-line body).
"""

from __future__ import annotations

from typing import Final


class UpstreamError(Exception):
    """The origin could not give a usable response; `status_hint` is 502 or 504."""

    def __init__(self, status_hint: int, reason: str) -> None:
        super().__init__(reason)
        self.status_hint = status_hint
        self.reason = reason


# reason -> the status a client gets for it.
TIMED_OUT: Final = "origin timed out"
UNREACHABLE: Final = "origin unreachable"
CLOSED: Final = "origin closed the connection"
INCOMPLETE: Final = "origin response body incomplete"
INVALID: Final = "origin sent an invalid response"
FAILED: Final = "origin connection failed"
REQUEST_FAILED: Final = "origin request failed"

STATUS: Final = {
    TIMED_OUT: 504,
    UNREACHABLE: 502,
    CLOSED: 502,
    INCOMPLETE: 502,
    INVALID: 502,
    FAILED: 502,
    REQUEST_FAILED: 502,
}


def failure(reason: str) -> UpstreamError:
    """The UpstreamError for one of the reasons above."""
    return UpstreamError(STATUS[reason], reason)
