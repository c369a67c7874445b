"""Which part of a stored response answers a request: whole, 304, one byte range, or 416.

What must live here: every rule that turns a stored response and a request's
conditionals into the shape of the answer, so that a hit, a stale answer and
the snapshot a fetch just stored are served alike. Pure: no I/O, no clock.

Reference: RFC 9111 §4.3.2 (answering a conditional request from a stored
response), §3.3 (what an incomplete stored response may answer), RFC 9110
§13.2.2 (precedence of preconditions), §14 (Range, If-Range).
"""

from __future__ import annotations

from proxy import policy
from proxy.cache_status import CacheStatus
from proxy.entry import StoredResponse
from proxy.headers import Headers, combined_value
from proxy.messages import Delivery
from proxy.ranges import ByteRange, Unsatisfiable, if_range_allows, parse_range, wanted_range


def covered_range(method: str, headers: Headers | None, entry: StoredResponse) -> ByteRange | None:
    """The byte range a GET asks for, when the incomplete stored `entry` holds all of it (RFC 9111 §3.3).

    `headers` is None when the request carries no conditional or Range. None: it
    may not be answered from `entry` (no Range, several ranges, If-Range not
    matching, or bytes `entry` lacks).
    """
    if method != "GET" or headers is None:
        return None
    wanted = wanted_range(combined_value(headers, "Range"), combined_value(headers, "If-Range"), entry)
    return wanted if wanted is not None and entry.holds(wanted.first, wanted.last) else None


def plan_delivery(
    method: str,
    headers: Headers | None,
    entry: StoredResponse,
    age: float,
    status: CacheStatus,
    extra: tuple[tuple[str, str], ...] = (),
    part: tuple[int, int] | None = None,
) -> Delivery:
    """The Delivery of `entry` for a request; `headers` is None when it carries no conditional or Range.

    An incomplete `entry` (a stored 206) answers only the range it holds
    (covered_range); the caller makes sure it does, or passes `part`: the
    range of the partial response the origin just sent for this request.
    """
    if entry.parts:
        if headers is not None and policy.client_not_modified(headers, entry):
            return Delivery(entry, age, status, "not-modified", extra=extra)
        held = covered_range(method, headers, entry)
        first, last = (held.first, held.last) if held is not None else (part or entry.parts[0])
        return Delivery(entry, age, status, "partial", first, last, extra)
    if headers is None:
        return Delivery(entry, age, status, extra=extra)
    # Step 1 (RFC 9110 §13.2.2): If-None-Match, else If-Modified-Since -> 304.
    if policy.client_not_modified(headers, entry):
        return Delivery(entry, age, status, "not-modified", extra=extra)
    # Step 2 (§14.2): a single byte range of a whole 200 GET, if If-Range allows it.
    ranged = method == "GET" and entry.status == 200 and "range" in headers
    if ranged and if_range_allows(combined_value(headers, "If-Range"), entry):
        # Complete: its body is all of it. Two Range lines make one invalid value (RFC 9110 §5.3).
        wanted = parse_range(combined_value(headers, "Range"), len(entry.body))
        if isinstance(wanted, ByteRange):
            return Delivery(entry, age, status, "partial", wanted.first, wanted.last, extra)
        if isinstance(wanted, Unsatisfiable):
            return Delivery(entry, age, status, "unsatisfiable", extra=extra)
    return Delivery(entry, age, status, extra=extra)
