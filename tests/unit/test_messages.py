"""ClientRequest.read: the fields a lookup reads are picked out whatever their spelling (RFC 9110 §5.1)."""

from __future__ import annotations

import pytest

from proxy import messages
from proxy.messages import ClientRequest


def read(fields: list[tuple[bytes, bytes]], http10: bool = False) -> ClientRequest:
    return ClientRequest.read("GET", "/a", "", fields, "127.0.0.1", http10)


@pytest.mark.parametrize(
    "spelling",
    [b"Cache-Control", b"cache-control", b"CACHE-CONTROL", b"cAcHe-CoNtRoL"],
)
def test_rfc9110_s5_1_field_names_are_case_insensitive_in_every_spelling(spelling: bytes) -> None:
    req = read([(b"HOST" if spelling.isupper() else b"Host", b"cdn.example"), (spelling, b"no-cache")])
    assert req.cache_control == "no-cache"
    assert req.host == "cdn.example"
    assert req.hosts == 1


def test_rfc9110_s5_3_lines_of_one_field_in_two_spellings_are_joined_in_order() -> None:
    req = read(
        [
            (b"Host", b"cdn.example"),
            (b"Accept-Encoding", b"gzip"),
            (b"X-Other", b"1"),
            (b"ACCEPT-ENCODING", b"br"),
            (b"accept-encoding", b"zstd"),
        ]
    )
    assert req.accept_encoding == "gzip, br, zstd"


def test_rfc9112_s3_2_host_in_two_spellings_counts_twice() -> None:
    assert read([(b"Host", b"a"), (b"host", b"a")]).hosts == 2


def test_conditionals_and_framing_fields_in_any_spelling_are_seen() -> None:
    req = read(
        [
            (b"Host", b"cdn.example"),
            (b"IF-NONE-MATCH", b'"v1"'),
            (b"CONTENT-LENGTH", b"3"),
            (b"EXPECT", b"100-continue"),
            (b"CONNECTION", b"close"),
        ]
    )
    assert req.conditional and req.body_follows and req.expect_continue
    assert not req.keep_alive


def test_learned_spellings_are_bounded_and_odd_ones_still_picked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Random field names (a hostile client) must not grow the table without bound, and once
    # it is full an unusual spelling of a picked field is still picked.
    table = dict(messages._SPELLINGS)
    monkeypatch.setattr(messages, "_SPELLINGS", table)
    for n in range(messages.SPELLINGS_LIMIT + 500):
        read([(b"Host", b"a"), (b"X-Random-%d" % n, b"v")])
    assert len(table) == messages.SPELLINGS_LIMIT
    req = read([(b"Host", b"a"), (b"PrAgMa", b"no-cache"), (b"hOsT", b"b")])
    assert req.pragma == "no-cache"
    assert req.hosts == 2
    assert b"PrAgMa" not in table


def test_conditional_and_range_lines_are_kept_apart_in_order() -> None:
    req = read(
        [
            (b"Host", b"cdn.example"),
            (b"If-None-Match", b'"a"'),
            (b"User-Agent", b"x"),
            (b"range", b"bytes=0-1"),
            (b"IF-NONE-MATCH", b'"b"'),
        ]
    )
    assert req.conditional_raw == (
        (b"If-None-Match", b'"a"'),
        (b"range", b"bytes=0-1"),
        (b"IF-NONE-MATCH", b'"b"'),
    )
    assert req.conditional_headers.getall("if-none-match") == ['"a"', '"b"']
    assert "User-Agent" not in req.conditional_headers
    assert read([(b"Host", b"a")]).conditional_raw == ()
