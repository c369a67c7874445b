"""proxy.codec: round trips, and every kind of damage raising CodecError (never anything else)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import struct
from collections.abc import Callable
from typing import Any

import pytest
from xxhash import xxh3_64_intdigest

from proxy import codec
from proxy.codec import CodecError, CodecVersionError, decode, encode
from proxy.entry import CachedResource, StoredResponse
from proxy.wire import HeaderBlock

HEADER = 17  # magic (4) + version (1) + metadata length (4) + checksum (8)


def test_round_trip_multi_variant(multi_variant: Callable[..., CachedResource]) -> None:
    res = multi_variant()
    back = decode(encode(res))
    assert back == res
    # Tuples must come back as tuples (frozen dataclasses, hashable fields).
    for v in back.variants:
        # Headers are kept as one hashable wire.HeaderBlock; its items are tuples.
        assert isinstance(v.headers, HeaderBlock) and all(type(h) is tuple for h in v.headers)
        assert type(v.vary_names) is tuple and type(v.vary_values) is tuple and type(v.tags) is tuple
        assert type(v.body) is bytes
    assert type(back.variants) is tuple


def test_round_trip_edge_values(resource: Callable[..., CachedResource]) -> None:
    cases = [
        CachedResource(key="k", variants=()),
        CachedResource(key="", variants=()),
        resource(key="ключ ✓ \U0001f600", body=b""),
        # aiohttp decodes undecodable header bytes with surrogateescape.
        resource(headers=(("X-Raw", "caf\udce9"),)),
        resource(body=bytes(range(256)) * 4, request_time=0.1 + 0.2, freshness_lifetime=float("inf")),
        resource(freshness_lifetime=60),  # an int where a float is declared
    ]
    for res in cases:
        assert decode(encode(res)) == res


def test_ints_in_float_fields_come_back_as_floats(resource: Callable[..., CachedResource]) -> None:
    back = decode(encode(resource(freshness_lifetime=60, stale_if_error=0)))
    assert type(back.variants[0].freshness_lifetime) is float
    assert type(back.variants[0].stale_if_error) is float


def test_codec_covers_every_stored_response_field() -> None:
    # Guards against a field added to StoredResponse but not to the codec.
    stored = [f.name for f in dataclasses.fields(StoredResponse) if f.init]  # init=False fields are derived
    assert sorted(codec._VARIANT_FIELDS) == sorted(stored)


def test_decode_accepts_bytearray_and_memoryview(resource: Callable[..., CachedResource]) -> None:
    res = resource()
    data = encode(res)
    assert decode(bytearray(data)) == res  # type: ignore[arg-type]
    assert decode(memoryview(data)) == res  # type: ignore[arg-type]


def test_format_prefix(resource: Callable[..., CachedResource]) -> None:
    data = encode(resource())
    assert data[:5] == b"MCDN\x05"
    (meta_len,) = struct.unpack(">I", data[5:9])
    json.loads(data[HEADER : HEADER + meta_len])  # the metadata block is plain JSON


# -- corruption -----------------------------------------------------------------


def _split(data: bytes) -> tuple[Any, bytes]:
    (meta_len,) = struct.unpack(">I", data[5:9])
    return json.loads(data[HEADER : HEADER + meta_len]), data[HEADER + meta_len :]


def _join(meta: Any, bodies: bytes, raw_meta: bytes | None = None) -> bytes:
    """A record with this metadata and these bodies, and the checksum that holds for them (so that
    decode's other checks are what a damaged field meets)."""
    m = raw_meta if raw_meta is not None else json.dumps(meta).encode()
    return (
        b"MCDN\x05"
        + struct.pack(">I", len(m))
        + struct.pack(">Q", xxh3_64_intdigest(m + bodies))
        + m
        + bodies
    )


def _with_meta(edit: Callable[[Any], None]) -> Callable[[bytes], bytes]:
    def mutate(data: bytes) -> bytes:
        meta, bodies = _split(data)
        edit(meta)
        return _join(meta, bodies)

    return mutate


def _set_field(name: str, value: Any) -> Callable[[bytes], bytes]:
    index = codec._VARIANT_FIELDS.index(name)

    def edit(meta: Any) -> None:
        meta[1][0][index] = value

    return _with_meta(edit)


def _header_len(data: bytes) -> int:
    meta, _ = _split(data)
    return int(meta[1][0][codec._VARIANT_FIELDS.index("headers")])


def _damage_header_block(data: bytes, old: bytes, new: bytes) -> bytes:
    """Replace the first `old` in the (first) header block with `new`, of the same length."""
    assert len(old) == len(new)
    _, rest = _split(data)
    n = _header_len(data)
    block = rest[:n]
    assert old in block
    damaged = block.replace(old, new, 1)
    meta, _ = _split(data)
    return _join(meta, damaged + rest[n:])


def _flip_json_byte(data: bytes) -> bytes:
    meta, bodies = _split(data)
    raw = bytearray(json.dumps(meta).encode())
    raw[0] ^= 0xFF  # the opening "[" of the metadata
    return _join(None, bodies, raw_meta=bytes(raw))


CORRUPTIONS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("empty", lambda d: b""),
    ("wrong magic", lambda d: b"XCDN" + d[4:]),
    ("wrong version", lambda d: d[:4] + b"\x01" + d[5:]),
    ("version zero", lambda d: d[:4] + b"\x00" + d[5:]),
    ("pickle", lambda d: b"\x80\x04\x95" + d),
    ("trailing garbage", lambda d: d + b"x"),
    ("metadata length too big", lambda d: d[:5] + struct.pack(">I", len(d)) + d[9:]),
    ("metadata length too small", lambda d: d[:5] + struct.pack(">I", 3) + d[9:]),
    ("checksum changed", lambda d: d[:9] + bytes(8) + d[17:]),
    ("a body byte changed", lambda d: d[:-1] + bytes([d[-1] ^ 1])),
    ("a header byte changed, same shape", lambda d: d.replace(b"text/html", b"text/xtml", 1)),
    ("a metadata digit changed", lambda d: d.replace(b"60.0", b"90.0", 1)),
    ("flipped JSON byte", _flip_json_byte),
    ("not JSON", lambda d: _join(None, b"", raw_meta=b"{not json")),
    ("invalid utf-8 in JSON", lambda d: _join(None, b"", raw_meta=b'["\xff\xfe", []]')),
    ("deep nesting", lambda d: _join(None, b"", raw_meta=b"[" * 100_000 + b"]" * 100_000)),
    ("metadata is an object", lambda d: _join({"key": "k"}, b"")),
    ("metadata too short", lambda d: _join(["k"], b"")),
    ("key not a string", _with_meta(lambda m: m.__setitem__(0, 42))),
    ("variants not a list", _with_meta(lambda m: m.__setitem__(1, {"a": 1}))),
    ("variant not a list", _with_meta(lambda m: m[1].__setitem__(0, "v"))),
    ("variant missing a field", _with_meta(lambda m: m[1][0].pop())),
    ("variant with an extra field", _with_meta(lambda m: m[1][0].append(1))),
    ("body length longer than data", _set_field("body", 10_000)),
    ("body length shorter than data", _set_field("body", 1)),
    ("negative body length", _set_field("body", -1)),
    ("body length a float", _set_field("body", 5.0)),
    ("status a string", _set_field("status", "200")),
    ("status a bool", _set_field("status", True)),
    ("status a float", _set_field("status", 200.0)),
    ("reason null", _set_field("reason", None)),
    ("header length a string", _set_field("headers", "5")),
    ("header length a bool", _set_field("headers", True)),
    ("header length negative", _set_field("headers", -1)),
    ("header length beyond the data", _set_field("headers", 10_000)),
    ("header length cuts a line", lambda d: _set_field("headers", _header_len(d) - 1)(d)),
    ("header block with a bare LF", lambda d: _damage_header_block(d, b"\r\n", b"\n\n")),
    ("header block with a bare CR", lambda d: _damage_header_block(d, b"\r\n", b"\r\r")),
    ("header line without a colon", lambda d: _damage_header_block(d, b": ", b"  ")),
    ("header value with a NUL", lambda d: _damage_header_block(d, b"e", b"\x00")),
    ("old format version 2", lambda d: d[:4] + b"\x02" + d[5:]),
    ("old format version 3", lambda d: d[:4] + b"\x03" + d[5:]),
    ("parts on a 200", _set_field("parts", [[0, 4]])),
    ("complete length on a complete response", _set_field("complete_length", 5)),
    ("request_time a string", _set_field("request_time", "now")),
    ("response_time null", _set_field("response_time", None)),
    ("freshness a bool", _set_field("freshness_lifetime", True)),
    ("age too large for a float", _set_field("corrected_initial_age", 10**400)),
    ("swr a list", _set_field("stale_while_revalidate", [1])),
    ("sie null", _set_field("stale_if_error", None)),
    ("vary_names with null", _set_field("vary_names", ["a", None])),
    ("vary_names a string", _set_field("vary_names", "accept")),
    ("vary_values with a number", _set_field("vary_values", [1])),
    ("tags with a number", _set_field("tags", ["a", 2])),
    ("no_cache an int", _set_field("no_cache", 1)),
    ("must_revalidate null", _set_field("must_revalidate", None)),
    ("immutable a string", _set_field("immutable", "true")),
    ("etag a number", _set_field("etag", 5)),
    ("last_modified a list", _set_field("last_modified", [])),
    ("date a bool", _set_field("date", False)),
]


@pytest.mark.parametrize("mutate", [c[1] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_corruption_raises_codec_error(
    mutate: Callable[[bytes], bytes], resource: Callable[..., CachedResource]
) -> None:
    data = mutate(encode(resource()))
    with pytest.raises(CodecError):
        decode(data)


def test_truncation_at_every_offset_raises_codec_error(multi_variant: Callable[..., CachedResource]) -> None:
    data = encode(multi_variant())
    for end in range(len(data)):
        with pytest.raises(CodecError):
            decode(data[:end])


def test_single_byte_flips_never_raise_anything_but_codec_error(
    multi_variant: Callable[..., CachedResource],
) -> None:
    # A flip inside a body or a string value can still decode (to different
    # content); what matters is that nothing other than CodecError escapes.
    data = encode(multi_variant())
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0x5A
        with contextlib.suppress(CodecError):
            decode(bytes(damaged))


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


def test_encode_unrepresentable_raises_codec_error(resource: Callable[..., CachedResource]) -> None:
    with pytest.raises(CodecError):
        encode(resource(tags=(object(),)))  # headers are bytes by now; tags still go through JSON


def test_codec_field_order_is_the_stored_response_field_order() -> None:
    # decode() passes values positionally to StoredResponse.from_checked.
    from proxy.entry import STORED_FIELDS

    assert codec._VARIANT_FIELDS == STORED_FIELDS


def test_from_checked_builds_what_init_builds(multi_variant: Callable[..., CachedResource]) -> None:
    from proxy.entry import STORED_FIELDS

    for v in multi_variant().variants:
        rebuilt = StoredResponse.from_checked(tuple(getattr(v, name) for name in STORED_FIELDS))
        assert rebuilt == v
        assert (rebuilt.hit_fields, rebuilt.cache_status_prefix, rebuilt.add_accept_ranges) == (
            v.hit_fields,
            v.cache_status_prefix,
            v.add_accept_ranges,
        )


# -- DecodeMemo: the disk tier's hit-path decoder ---------------------------------------


def test_memo_reuses_metadata_only_for_identical_bytes(resource: Callable[..., CachedResource]) -> None:
    memo = codec.DecodeMemo()
    first = resource(key="k", body=b"one!")
    assert memo.decode("k", encode(first)) == first
    same_meta_new_body = resource(key="k", body=b"two!")
    assert memo.decode("k", encode(same_meta_new_body)) == same_meta_new_body  # body from the bytes
    refetched = resource(key="k", body=b"one!", response_time=1_700_000_999.5)
    assert memo.decode("k", encode(refetched)) == refetched  # metadata changed: decoded afresh
    longer = resource(key="k", body=b"longer body")
    assert memo.decode("k", encode(longer)) == longer


def test_memo_never_hides_damage(resource: Callable[..., CachedResource]) -> None:
    memo = codec.DecodeMemo()
    data = encode(resource(key="k"))
    memo.decode("k", data)
    with pytest.raises(CodecError):
        memo.decode("k", data[:-1])  # truncated: not the recorded shape, so decoded in full
    with pytest.raises(CodecError):
        memo.decode("k", data + b"x")


def test_memo_keeps_no_bodies_and_stays_bounded(resource: Callable[..., CachedResource]) -> None:
    memo = codec.DecodeMemo(capacity=10)
    for i in range(25):
        memo.decode(f"k{i}", encode(resource(key=f"k{i}", body=b"x" * 1000)))
    assert len(memo._records) <= 10
    assert all(template.body == b"" for _, _, template, _, _ in memo._records.values())


def test_memo_skips_multi_variant_records(multi_variant: Callable[..., CachedResource]) -> None:
    memo = codec.DecodeMemo()
    res = multi_variant()
    assert memo.decode(res.key, encode(res)) == res
    assert memo._records == {}


def test_memo_rereads_only_the_body_of_the_same_source(resource: Callable[..., CachedResource]) -> None:
    memo = codec.DecodeMemo()
    res = resource(key="k", body=b"body")
    data = encode(res)
    assert memo.decode("k", data, source="ab/cd.val") == res
    body_start = memo.known_source("k", "ab/cd.val")
    assert body_start == len(data) - 4
    assert memo.known_source("k", "other.val") is None  # a new write is a new file
    assert memo.reuse("k", "ab/cd.val", b"body") == res
    assert memo.reuse("k", "ab/cd.val", b"BOD") is None  # short: damaged, never served
    assert memo.reuse("k", "ab/cd.val", b"BODY") is None  # same length, other bytes: the checksum says so
    assert memo.reuse("k", "other.val", b"BODY") is None


# -- incomplete (206) responses: RFC 9111 §3.3 bookkeeping ---------------------------------


def _partial(resource: Callable[..., CachedResource]) -> CachedResource:
    # Bytes 0-1 and 5-7 of a 10-byte representation.
    return resource(
        status=206, reason="Partial Content", body=b"ab" + b"fgh", parts=((0, 1), (5, 7)), complete_length=10
    )


def test_round_trip_partial(resource: Callable[..., CachedResource]) -> None:
    res = _partial(resource)
    back = decode(encode(res))
    assert back == res
    variant = back.variants[0]
    assert variant.parts == ((0, 1), (5, 7)) and type(variant.parts[0]) is tuple
    assert variant.length == 10 and variant.bytes_of(6, 7) == b"gh" and not variant.holds(1, 5)


PART_CORRUPTIONS: list[tuple[str, Any]] = [
    ("parts not a list", "x"),
    ("a part not a pair", [[0, 1, 2], [5, 7]]),
    ("a part of floats", [[0.0, 1.0], [5, 7]]),
    ("parts out of order", [[5, 7], [0, 1]]),
    ("parts overlapping", [[0, 5], [5, 7]]),
    ("parts adjacent", [[0, 1], [2, 4]]),
    ("a part beyond the complete length", [[0, 1], [8, 10]]),
    ("a part backwards", [[1, 0], [5, 7]]),
    ("negative first byte", [[-1, 0], [5, 7]]),
    ("parts not adding up to the body", [[0, 1], [5, 8]]),
]


@pytest.mark.parametrize("parts", [c[1] for c in PART_CORRUPTIONS], ids=[c[0] for c in PART_CORRUPTIONS])
def test_corrupt_parts_raise_codec_error(parts: Any, resource: Callable[..., CachedResource]) -> None:
    data = _set_field("parts", parts)(encode(_partial(resource)))
    with pytest.raises(CodecError):
        decode(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [("status", 200), ("complete_length", "10"), ("complete_length", -1)],
    ids=["parts-on-a-200", "length-a-string", "no-length"],
)
def test_partial_with_bad_fields_raises_codec_error(
    field: str, value: Any, resource: Callable[..., CachedResource]
) -> None:
    data = _set_field(field, value)(encode(_partial(resource)))
    with pytest.raises(CodecError):
        decode(data)


def test_older_format_versions_are_a_version_error(resource: Callable[..., CachedResource]) -> None:
    data = encode(resource())
    for version in (1, 2, 3, 4):
        with pytest.raises(CodecVersionError):
            decode(data[:4] + bytes((version,)) + data[5:])
    for version in (0, 6, 32):  # not a version this cache ever wrote: damage
        with pytest.raises(CodecError) as raised:
            decode(data[:4] + bytes((version,)) + data[5:])
        assert not isinstance(raised.value, CodecVersionError)


def test_memo_checks_the_body_of_a_reused_record(resource: Callable[..., CachedResource]) -> None:
    memo = codec.DecodeMemo()
    data = encode(resource(key="k", body=b"original"))
    memo.decode("k", data)
    with pytest.raises(CodecError, match="checksum"):
        memo.decode("k", data[:-8] + b"ORIGINAL")  # same prefix, same length, other body


# A record whose checksum holds but that the hit path must not write as it is (the checksum only
# proves the record is what was written: a forged record, or a bug on the write side, has a valid one).
FORGED: list[tuple[str, Callable[[StoredResponse], StoredResponse]]] = [
    ("CRLF in the reason", lambda v: dataclasses.replace(v, reason="OK\r\nSet-Cookie: session=attacker")),
    ("LF in the reason", lambda v: dataclasses.replace(v, reason="OK\nX: y")),
    ("NUL in the reason", lambda v: dataclasses.replace(v, reason="O\x00K")),
    ("status 99999", lambda v: dataclasses.replace(v, status=99999)),
    ("status 1000", lambda v: dataclasses.replace(v, status=1000)),
    ("status 101", lambda v: dataclasses.replace(v, status=101)),
    ("status -200", lambda v: dataclasses.replace(v, status=-200)),
    *(
        (
            f"{line!r} in the header block",
            lambda v, line=line: dataclasses.replace(
                v, headers=HeaderBlock.from_wire(cast_wire(v) + line + b"\r\n")
            ),
        )
        for line in (
            b"Content-Length: 5",
            b"content-length: 5",
            b"Content-Length : 5",
            b"Transfer-Encoding: chunked",
            b"TRANSFER-ENCODING: gzip",
        )
    ),
    (
        "a framing field first in the block",
        lambda v: dataclasses.replace(
            v, headers=HeaderBlock.from_wire(b"Content-Length: 1\r\n" + cast_wire(v))
        ),
    ),
]


def cast_wire(v: StoredResponse) -> bytes:
    assert isinstance(v.headers, HeaderBlock)
    return v.headers.wire


@pytest.mark.parametrize("forge", [c[1] for c in FORGED], ids=[c[0] for c in FORGED])
def test_a_record_that_would_break_the_head_is_corrupt_though_its_checksum_holds(
    forge: Callable[[StoredResponse], StoredResponse], resource: Callable[..., CachedResource]
) -> None:
    original = resource()
    forged = dataclasses.replace(original, variants=(forge(original.variants[0]),))
    data = encode(forged)  # encode writes what it is given, with a valid checksum
    with pytest.raises(CodecError):
        decode(data)
    with pytest.raises(CodecError):
        codec.DecodeMemo().decode(forged.key, data)


def test_ordinary_statuses_reasons_and_fields_still_decode(resource: Callable[..., CachedResource]) -> None:
    for status, reason in ((200, "OK"), (299, ""), (599, "Custom\tReason ünï"), (999, "x")):
        r = resource(status=status, reason=reason, headers=(("X-Content-Length", "5"), ("Content-Type", "a")))
        assert decode(encode(r)) == r
