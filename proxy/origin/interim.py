"""Interim (1xx) responses from the origin, handed to whoever asked for them as they arrive.

RFC 9110 §15.2: a proxy forwards 1xx responses (103 Early Hints, 102, an unsolicited
100) before the final response. Both origin clients report each interim response
through an `InterimSink` the caller passes with the request; the final response
never carries an interim response's fields, and nothing of it is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from multidict import CIMultiDictProxy

log = logging.getLogger("proxy.origin")

# (status, reason phrase, header fields) of one interim response.
InterimSink = Callable[[int, str, CIMultiDictProxy[str]], None]


def report(sink: InterimSink, status: int, reason: str, headers: CIMultiDictProxy[str]) -> None:
    """Call the sink; its failure never breaks the origin exchange (the 1xx is advisory)."""
    try:
        sink(status, reason, headers)
    except Exception:
        log.exception("forwarding a %d interim response failed", status)
