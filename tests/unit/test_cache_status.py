"""proxy.cache_status: this node's Cache-Status member (RFC 9211), serialised with http_sfv."""

from __future__ import annotations

from typing import Any

import http_sfv
import pytest

from proxy.cache_status import FWD_REASONS, CacheStatus, appended, member


def parse_members(field: str) -> list[tuple[Any, dict[str, Any]]]:
    """The field as an SF List: (cache name, parameters) per member, from the origin to the client."""
    parsed = http_sfv.List()
    parsed.parse(field.encode("ascii"))
    return [(item.value, dict(item.params)) for item in parsed]


SERIALISED = [
    pytest.param(CacheStatus(hit=True, ttl=57), "edge-1;hit;ttl=57", id="9211-2.1-hit-2.7-ttl"),
    pytest.param(CacheStatus(hit=True, ttl=-5), "edge-1;hit;ttl=-5", id="9211-2.7-negative-ttl-when-stale"),
    pytest.param(
        CacheStatus(fwd="uri-miss", fwd_status=200, stored=True),
        "edge-1;fwd=uri-miss;fwd-status=200;stored",
        id="9211-2.2-fwd-2.3-fwd-status-2.4-stored",
    ),
    pytest.param(
        CacheStatus(fwd="miss", fwd_status=200, collapsed=True),
        "edge-1;fwd=miss;fwd-status=200;collapsed",
        id="9211-2.5-collapsed",
    ),
    pytest.param(
        CacheStatus(fwd="bypass", detail="origin timed out"),
        'edge-1;fwd=bypass;detail="origin timed out"',
        id="9211-2.8-detail-string",
    ),
    pytest.param(CacheStatus(key="k|/a"), 'edge-1;key="k|/a"', id="9211-2.6-key"),
    pytest.param(CacheStatus(), "edge-1", id="9211-2-no-parameters"),
]


@pytest.mark.parametrize(("status", "expected"), SERIALISED)
def test_rfc9211_member_serialisation(status: CacheStatus, expected: str) -> None:
    assert member("edge-1", status) == expected


@pytest.mark.parametrize("reason", sorted(FWD_REASONS))
def test_rfc9211_s2_2_fwd_is_a_token(reason: str) -> None:
    [(_, params)] = parse_members(member("edge-1", CacheStatus(fwd=reason)))
    assert isinstance(params["fwd"], http_sfv.Token)
    assert params["fwd"] == reason


def test_rfc9211_s2_2_fwd_values() -> None:
    assert {"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"} == FWD_REASONS


def test_rfc9211_s2_8_detail_quoting_round_trips() -> None:
    detail = 'said "no" \\ twice'
    field = member("edge-1", CacheStatus(detail=detail))
    assert field == 'edge-1;detail="said \\"no\\" \\\\ twice"'
    assert parse_members(field)[0][1]["detail"] == detail


@pytest.mark.parametrize(
    "detail",
    [
        pytest.param("caf\u00e9", id="9651-3.3.3-non-ascii"),
        pytest.param("line\nbreak\x7f", id="9651-3.3.3-control-characters"),
    ],
)
def test_rfc9211_detail_outside_sf_string_still_serialises(detail: str) -> None:
    """An sf-string is printable ASCII only; a stray character must not break every response."""
    field = member("edge-1", CacheStatus(detail=detail))
    [(_, params)] = parse_members(field)
    assert isinstance(params["detail"], str)


def test_rfc9211_s2_cache_name_not_a_token_is_a_string() -> None:
    assert member("1edge", CacheStatus(hit=True)) == '"1edge";hit'
    [(name, _)] = parse_members(member("edge-1", CacheStatus(hit=True)))
    assert isinstance(name, http_sfv.Token)


def test_rfc9211_s2_non_ascii_cache_name_still_serialises() -> None:
    [(_, params)] = parse_members(member("\u00e9dge", CacheStatus(hit=True)))
    assert params == {"hit": True}


@pytest.mark.parametrize("existing", [None, "", "  "])
def test_rfc9211_s2_first_member(existing: str | None) -> None:
    assert appended(existing, "edge-1;hit") == "edge-1;hit"


def test_rfc9211_s2_member_appended_after_upstream_members() -> None:
    field = appended('origin;fwd=miss, "lower tier";hit', member("edge-1", CacheStatus(hit=True, ttl=3)))
    assert field == 'origin;fwd=miss, "lower tier";hit, edge-1;hit;ttl=3'
    assert [name for name, _ in parse_members(field)] == ["origin", "lower tier", "edge-1"]
