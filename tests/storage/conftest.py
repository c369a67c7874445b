"""Shared builders for storage tests: StoredResponse / CachedResource with realistic fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from proxy.entry import CachedResource, StoredResponse


def make_response(body: bytes = b"hello", **overrides: Any) -> StoredResponse:
    """A StoredResponse with every field set to a non-default value unless overridden."""
    fields: dict[str, Any] = {
        "status": 200,
        "reason": "OK",
        "headers": (
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "max-age=60, stale-while-revalidate=30"),
            ("X-Ünïcode", "välue ✓ 日本"),
        ),
        "body": body,
        "request_time": 1_700_000_000.25,
        "response_time": 1_700_000_000.5,
        "corrected_initial_age": 3.0,
        "freshness_lifetime": 60.0,
        "vary_names": ("accept-encoding", "accept-language"),
        "vary_values": ("gzip", None),
        "no_cache": False,
        "must_revalidate": True,
        "immutable": False,
        "stale_while_revalidate": 30.0,
        "stale_if_error": 300.0,
        "etag": '"abc123"',
        "last_modified": "Tue, 14 Nov 2023 22:13:20 GMT",
        "date": "Tue, 14 Nov 2023 22:13:20 GMT",
        "tags": ("product-42", "catalog"),
    }
    fields.update(overrides)
    return StoredResponse(**fields)


def make_resource(
    key: str = "https://example.test/a", body_size: int | None = None, **overrides: Any
) -> CachedResource:
    """A one-variant resource; body_size gives a body of that many bytes (distinct per key)."""
    if body_size is not None:
        seed = key.encode()
        overrides["body"] = (seed * (body_size // max(len(seed), 1) + 1))[:body_size]
    return CachedResource(key=key, variants=(make_response(**overrides),))


def make_multi_variant(key: str = "https://example.test/multi") -> CachedResource:
    """Three variants exercising empty bodies, unicode, None validators and Vary: *."""
    return CachedResource(
        key=key,
        variants=(
            make_response(b"gzip body \x00\xff", vary_values=("gzip", "en")),
            make_response(
                b"",
                status=204,
                reason="No Content",
                headers=(),
                vary_values=(None, None),
                etag=None,
                last_modified=None,
                date=None,
                tags=(),
                no_cache=True,
                must_revalidate=False,
                immutable=True,
            ),
            make_response(
                "ünïcödé body ✓".encode(),
                headers=(("Set-Thing", "a"), ("set-thing", "b"), ("X-Empty", "")),
                vary_names=("*",),
                vary_values=(None,),
                freshness_lifetime=0.0,
            ),
        ),
    )


# Exposed as fixtures rather than imported, so that test modules need no
# sys.path assumptions (other test directories have conftest.py files too).


@pytest.fixture
def response() -> Callable[..., StoredResponse]:
    return make_response


@pytest.fixture
def resource() -> Callable[..., CachedResource]:
    return make_resource


@pytest.fixture
def multi_variant() -> Callable[..., CachedResource]:
    return make_multi_variant
