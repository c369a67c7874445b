"""StoredResponse.evolve: the copy the store and freshen paths make instead of dataclasses.replace."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.cache_status import CacheStatus
from proxy.entry import StoredResponse
from proxy.h1 import delivery_head
from proxy.messages import Delivery

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


def test_a_304s_lines_are_derived_once_and_again_after_new_headers() -> None:
    # RFC 9111 §4.3.4: a freshened response's 304s carry its new fields, not the remembered ones.
    def not_modified(entry: StoredResponse) -> bytes:
        delivery = Delivery(entry, 0.0, CacheStatus(hit=True), "not-modified")
        head, _ = delivery_head(delivery, b"n", b"", "GET", False, True)
        return head

    entry = BASE.evolve(headers=(("ETag", '"a"'), ("Cache-Control", "max-age=60")))
    assert b"Cache-Control: max-age=60\r\n" in not_modified(entry)
    assert entry.not_modified_lines is not None  # remembered
    freshened = entry.evolve(headers=(("ETag", '"a"'), ("Cache-Control", "max-age=600")))
    assert freshened.not_modified_lines is None
    assert b"Cache-Control: max-age=600\r\n" in not_modified(freshened)
    assert entry.evolve(body=b"x").not_modified_lines == entry.not_modified_lines  # same fields
