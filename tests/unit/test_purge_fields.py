"""proxy.purge: a purge request as the JSON fields the workers of a box pass each other (proxy/box.py)."""

from __future__ import annotations

import pytest

from proxy.purge import PurgeRequest, PurgeRequestError, purge_fields, purge_from_fields


@pytest.mark.parametrize(
    "request_",
    [
        PurgeRequest("url", ("/a?b=1", "http://h.example/c")),
        PurgeRequest("prefix", ("/api/",), soft=True),
        PurgeRequest("tag", ("x", "y")),
        PurgeRequest("all", (), soft=True),
    ],
)
def test_a_purge_survives_the_trip_between_workers(request_: PurgeRequest) -> None:
    assert purge_from_fields(purge_fields(request_)) == request_


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"kind": 3},
        {"kind": "nope", "values": ["/a"]},
        {"kind": "url", "values": "not a list", "soft": "x"},
    ],
)
def test_fields_that_are_not_a_purge_are_refused_not_applied(fields: dict[str, object]) -> None:
    """A malformed message from the box is a PurgeRequestError (logged and ignored), never a crash."""
    with pytest.raises(PurgeRequestError):
        purge_from_fields(fields)
