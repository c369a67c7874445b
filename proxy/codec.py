"""Versioned binary codec between CachedResource and bytes, for out-of-process tiers.

The disk tier (and later a Redis tier) store these bytes. No pickle: data read
back from disk is only ever parsed, never executed, so a tampered or corrupt
cache directory can at worst cause a miss.

Layout (all integers big-endian)::

    b"MCDN"  magic
    u8       format version (5: a checksum; 4: stored parts of incomplete (206) responses;
             3: header fields as wire bytes)
    u32      length N of the metadata block
    u64      xxh3_64 of everything after this field (metadata, header blocks, bodies)
    N bytes  JSON metadata, ASCII (ensure_ascii keeps lone surrogates intact)
    ...      per variant, in order: its header block, then its body

The metadata is a positional JSON array ``[key, [variant, ...]]`` where each
variant is an array in ``_VARIANT_FIELDS`` order; "headers" and "body" hold the
lengths of the bytes that follow. Header fields are kept as the wire bytes the
hit path sends (wire.HeaderBlock), so decoding only checks their shape: no
per-field strings to build, which makes a disk hit several microseconds
cheaper. Records of older versions read as CodecVersionError (a miss): the
cache refills after an upgrade.

The checksum covers the metadata, the header fields and every body, so bytes
changed on disk (a flipped bit, a file overwritten in place) read as a miss,
never as a hit with the wrong content. xxh3 reads gigabytes per second: a
1 MiB body costs tens of microseconds.

Any inconsistency raises CodecError; callers treat it as a miss.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any, cast

from xxhash import xxh3_64, xxh3_64_intdigest

from proxy.entry import CachedResource, StoredResponse
from proxy.wire import HeaderBlock

MAGIC = b"MCDN"
VERSION = 5
_PREFIX = MAGIC + bytes((VERSION,))
_LEN = struct.Struct(">I")
_SUM = struct.Struct(">Q")
_SUM_AT = len(_PREFIX) + _LEN.size
_HEADER_LEN = _SUM_AT + _SUM.size

# Order of the positional fields of one variant in the metadata. "headers" and
# "body" are the lengths of the header block and the body, which follow the
# metadata. A test checks this covers every StoredResponse field.
_VARIANT_FIELDS = (
    "status",
    "reason",
    "headers",
    "body",
    "request_time",
    "response_time",
    "corrected_initial_age",
    "freshness_lifetime",
    "vary_names",
    "vary_values",
    "no_cache",
    "must_revalidate",
    "immutable",
    "stale_while_revalidate",
    "stale_if_error",
    "etag",
    "last_modified",
    "date",
    "tags",
    "fetch_epoch",
    "parts",
    "complete_length",
)
_N_FIELDS = len(_VARIANT_FIELDS)

_STR = frozenset((str,))
_STR_OR_NONE = frozenset((str, type(None)))
_NUMBER = (int, float)

# What a stored record may not carry, though its checksum holds (a record forged by something that
# can write the cache directory, or a bug on the write side): the hit path writes the status, the
# reason and the header block as they are. A final status has three digits (the counters index
# by status // 100); a reason phrase is HTAB, SP, VCHAR and obs-text (RFC 9112 §4), so no CR or
# LF can split the head; the framing fields are the hit writer's own (Content-Length, chunked),
# never stored (proxy/policy.py, proxy/headers.py HOP_BY_HOP).
_MIN_STATUS, _MAX_STATUS = 200, 999
_BAD_REASON = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_FRAMING_FIELD = re.compile(rb"(?:^|\r\n)(?:content-length|transfer-encoding)[ \t]*:", re.IGNORECASE)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
# Writers only ever emit ASCII, so decoding it directly skips json.loads'
# encoding detection; non-ASCII metadata is corrupt by definition.
_loads = json.JSONDecoder().decode


class CodecError(ValueError):
    """The bytes are not a valid encoded CachedResource (corrupt, truncated or foreign)."""


class CodecVersionError(CodecError):
    """The bytes are a record of an older format version (written before an upgrade)."""


def encode(resource: CachedResource) -> bytes:
    """Serialise resource; raises CodecError if a field cannot be represented."""
    meta_variants: list[list[Any]] = []
    bodies: list[bytes] = []
    for v in resource.variants:
        # StoredResponse made its headers a HeaderBlock at construction.
        block = cast(HeaderBlock, v.headers).wire
        meta_variants.append(
            [
                v.status,
                v.reason,
                len(block),
                len(v.body),
                v.request_time,
                v.response_time,
                v.corrected_initial_age,
                v.freshness_lifetime,
                v.vary_names,
                v.vary_values,
                v.no_cache,
                v.must_revalidate,
                v.immutable,
                v.stale_while_revalidate,
                v.stale_if_error,
                v.etag,
                v.last_modified,
                v.date,
                v.tags,
                v.fetch_epoch,
                v.parts,
                v.complete_length,
            ]
        )
        bodies += (block, v.body)
    try:
        meta = _dumps([resource.key, meta_variants]).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise CodecError(f"cannot encode resource {resource.key!r}: {exc}") from exc
    digest = xxh3_64(meta)
    for part in bodies:
        digest.update(part)
    return b"".join((_PREFIX, _LEN.pack(len(meta)), _SUM.pack(digest.intdigest()), meta, *bodies))


def decode(data: bytes) -> CachedResource:
    """Parse bytes produced by encode; raises CodecError on anything unexpected."""
    if type(data) is not bytes:
        # memoryview/bytearray would make body slices the wrong type.
        data = bytes(data)
    if len(data) < _HEADER_LEN:
        raise CodecError(f"truncated: {len(data)} bytes is shorter than the header")
    if data[:4] != MAGIC:
        raise CodecError("bad magic")
    if data[4] != VERSION:
        if 0 < data[4] < VERSION:
            raise CodecVersionError(f"format version {data[4]} (written before an upgrade)")
        raise CodecError(f"unsupported format version {data[4]}")
    (meta_len,) = _LEN.unpack_from(data, len(_PREFIX))
    offset = _HEADER_LEN + meta_len
    if offset > len(data):
        raise CodecError("truncated metadata")
    (checksum,) = _SUM.unpack_from(data, _SUM_AT)
    if xxh3_64_intdigest(memoryview(data)[_HEADER_LEN:]) != checksum:
        raise CodecError("checksum mismatch: the record changed after it was written")
    try:
        meta = _loads(data[_HEADER_LEN:offset].decode("ascii"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CodecError(f"bad metadata: {exc}") from exc

    if type(meta) is not list or len(meta) != 2:
        raise CodecError("metadata is not [key, variants]")
    key, meta_variants = meta
    if type(key) is not str or type(meta_variants) is not list:
        raise CodecError("bad key or variant list")

    variants: list[StoredResponse] = []
    end = len(data)
    for mv in meta_variants:
        if type(mv) is not list or len(mv) != _N_FIELDS:
            raise CodecError("bad variant record")
        (
            status,
            reason,
            headers_len,
            body_len,
            request_time,
            response_time,
            corrected_initial_age,
            freshness_lifetime,
            vary_names,
            vary_values,
            no_cache,
            must_revalidate,
            immutable,
            stale_while_revalidate,
            stale_if_error,
            etag,
            last_modified,
            date,
            tags,
            fetch_epoch,
            parts,
            complete_length,
        ) = mv
        # bool is a subclass of int, hence the exact type checks.
        if type(status) is not int or type(reason) is not str or type(body_len) is not int:
            raise CodecError("bad status, reason or body length")
        if not _MIN_STATUS <= status <= _MAX_STATUS or _BAD_REASON.search(reason):
            raise CodecError("status out of range, or a control character in the reason phrase")
        if type(headers_len) is not int or headers_len < 0:
            raise CodecError("bad header block length")
        if (
            type(vary_names) is not list
            or type(vary_values) is not list
            or type(tags) is not list
            # Most responses have neither Vary nor tags: skip building empty sets.
            or (vary_names and not set(map(type, vary_names)) <= _STR)
            or (vary_values and not set(map(type, vary_values)) <= _STR_OR_NONE)
            or (tags and not set(map(type, tags)) <= _STR)
        ):
            raise CodecError("bad vary or tags")
        if (
            type(request_time) not in _NUMBER
            or type(response_time) not in _NUMBER
            or type(corrected_initial_age) not in _NUMBER
            or type(freshness_lifetime) not in _NUMBER
            or type(stale_while_revalidate) not in _NUMBER
            or type(stale_if_error) not in _NUMBER
        ):
            raise CodecError("bad time field")
        if type(fetch_epoch) is not int or fetch_epoch < 0:
            raise CodecError("bad fetch epoch")
        if type(no_cache) is not bool or type(must_revalidate) is not bool or type(immutable) is not bool:
            raise CodecError("bad flag")
        if (
            (etag is not None and type(etag) is not str)
            or (last_modified is not None and type(last_modified) is not str)
            or (date is not None and type(date) is not str)
        ):
            raise CodecError("bad validator")
        body_start = offset + headers_len
        body_end = body_start + body_len
        if body_len < 0 or body_end > end:
            raise CodecError("body lengths exceed the data (truncated?)")
        stored_parts = _parts(parts, complete_length, body_len) if parts else ()
        if type(complete_length) is not int or (not parts and complete_length != -1):
            raise CodecError("bad complete length")
        if bool(stored_parts) != (status == 206):
            raise CodecError("a 206 without parts, or parts of another status")
        try:
            headers = HeaderBlock.from_wire(data[offset:body_start])
        except ValueError as exc:
            raise CodecError("bad header block") from exc
        if _FRAMING_FIELD.search(headers.wire):
            raise CodecError("a framing field (Content-Length, Transfer-Encoding) in the header block")
        try:
            # Every value was type-checked above; from_checked skips __init__'s slow path.
            variant = StoredResponse.from_checked(
                (
                    status,
                    reason,
                    headers,
                    data[body_start:body_end],
                    float(request_time),
                    float(response_time),
                    float(corrected_initial_age),
                    float(freshness_lifetime),
                    tuple(vary_names),
                    tuple(vary_values),
                    no_cache,
                    must_revalidate,
                    immutable,
                    float(stale_while_revalidate),
                    float(stale_if_error),
                    etag,
                    last_modified,
                    date,
                    tuple(tags),
                    fetch_epoch,
                    stored_parts,
                    complete_length,
                )
            )
        except OverflowError as exc:  # an integer too large for a float
            raise CodecError("time field out of range") from exc
        variants.append(variant)
        offset = body_end
    if offset != end:
        raise CodecError(f"{end - offset} trailing bytes after the bodies")
    return CachedResource(key=key, variants=tuple(variants))


def _parts(parts: object, complete_length: object, body_len: int) -> tuple[tuple[int, int], ...]:
    """The stored parts of an incomplete response, checked as StoredResponse.parts describes them."""
    if type(parts) is not list or type(complete_length) is not int:
        raise CodecError("bad parts")
    out: list[tuple[int, int]] = []
    previous_last = -2
    total = 0
    for part in parts:
        if type(part) is not list or len(part) != 2 or type(part[0]) is not int or type(part[1]) is not int:
            raise CodecError("bad part")
        first, last = part
        if not previous_last + 1 < first <= last < complete_length:
            raise CodecError("parts out of order, overlapping or beyond the complete length")
        out.append((first, last))
        total += last - first + 1
        previous_last = last
    if total != body_len:
        raise CodecError("parts do not add up to the body")
    return tuple(out)


class DecodeMemo:
    """decode() for a disk tier's hit path, reusing the work of earlier reads of the same record.

    Keeps, per key, the decoded form of a one-variant record together with its
    bytes up to the body (magic, metadata and header block). A later read whose
    bytes start with exactly those bytes, followed by a body of the recorded
    length, decodes to the same values but its body: only the body is taken
    from the new bytes. Anything else is decoded in full. Bodies are never
    kept, so memory stays at about a kilobyte per key, for at most `capacity`
    keys (the oldest half is dropped when full).

    A record may also be named by its `source`, a name that always means the
    same bytes (diskcache's value files: a new write gets a new file name, a
    file is never rewritten in place); then only the body need be read again.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        # key -> (the record's bytes before the body, the body's length, the variant without
        # body, the source it was read from, the checksum hashed up to the body)
        self._records: dict[str, tuple[bytes, int, StoredResponse, str | None, Any]] = {}

    def decode(self, key: str, data: bytes, source: str | None = None) -> CachedResource:
        record = self._records.get(key)
        if record is not None:
            prefix, body_len, template, _, digest = record
            if len(data) == len(prefix) + body_len and data.startswith(prefix):
                body = data[len(prefix) :]
                if not _body_checks(prefix, digest, body):
                    raise CodecError("checksum mismatch: the body changed after it was written")
                return CachedResource(key, (template.with_body(body),))
        resource = decode(data)
        if len(resource.variants) == 1 and resource.key == key:
            variant = resource.variants[0]
            (meta_len,) = _LEN.unpack_from(data, len(_PREFIX))
            body_start = len(data) - len(variant.body)
            if body_start >= _HEADER_LEN + meta_len:
                if len(self._records) >= self.capacity:
                    for old in list(self._records)[: self.capacity // 2 + 1]:
                        del self._records[old]
                digest = xxh3_64(memoryview(data)[_HEADER_LEN:body_start])
                self._records[key] = (
                    data[:body_start],
                    len(variant.body),
                    variant.with_body(b""),
                    source,
                    digest,
                )
        return resource

    def known_source(self, key: str, source: str) -> int | None:
        """Where the body starts, if key's kept record was read from `source`."""
        record = self._records.get(key)
        return len(record[0]) if record is not None and record[3] == source else None

    def reuse(self, key: str, source: str, body: bytes) -> CachedResource | None:
        """The resource read from `source` again, with this body, if it has the recorded length
        and the record's checksum (None otherwise: a damaged body is never served)."""
        record = self._records.get(key)
        if record is None or record[3] != source or len(body) != record[1]:
            return None
        if not _body_checks(record[0], record[4], body):
            del self._records[key]
            return None
        return CachedResource(key, (record[2].with_body(body),))


def _body_checks(prefix: bytes, digest: Any, body: bytes) -> bool:
    """Does the record's checksum (in `prefix`) hold for this body, given the hash of what precedes it?"""
    rest = digest.copy()
    rest.update(body)
    return bool(rest.intdigest() == _SUM.unpack_from(prefix, _SUM_AT)[0])
