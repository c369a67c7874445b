"""StoredResponse.evolve: the copy the store and freshen paths make instead of dataclasses.replace."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.entry import StoredResponse

BASE = StoredResponse(
    status=200,
    reason="OK",
    headers=(("Content-Type", "text/plain"), ("ETag", '"a"')),
    body=b"hello",
    request_time=1.0,
    response_time=2.0,
    corrected_initial_age=0.0,
    freshness_lifetime=60.0,
    etag='"a"',
)

CHANGES = [
    pytest.param({"body": b"other", "fetch_epoch": 7}, id="body-and-epoch"),
    pytest.param({"freshness_lifetime": 0.0, "immutable": False}, id="soft-purge"),
    pytest.param({"headers": (("Content-Type", "text/html"), ("Accept-Ranges", "none"))},
                 id="headers-rederive"),
    pytest.param({"status": 206, "reason": "Partial Content", "parts": ((0, 1),), "complete_length": 5,
                  "body": b"he"}, id="status-rederive"),
]  # fmt: skip


@pytest.mark.parametrize("changes", CHANGES)
def test_evolve_is_dataclasses_replace(changes: dict[str, object]) -> None:
    evolved = BASE.evolve(**changes)
    replaced = dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]
    assert evolved == replaced
    # The derived hit bytes too (not compared by ==): they follow status and headers.
    assert evolved.hit_fields == replaced.hit_fields
    assert evolved.cache_status_prefix == replaced.cache_status_prefix
    assert evolved.add_accept_ranges == replaced.add_accept_ranges
    assert BASE.body == b"hello"  # the original is untouched


def test_evolve_refuses_unknown_and_derived_fields() -> None:
    with pytest.raises(TypeError):
        BASE.evolve(bogus=1)
    with pytest.raises(TypeError):
        BASE.evolve(hit_fields=b"forged")
