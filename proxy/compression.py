"""Compression at the edge: encoded variants of a stored response, built once beside the identity one.

A response the origin sent without a content coding, of a compressible media
type (`compression.types`) and at least `compression.min_size` long, is
encoded with every coding of `policy.accept_encodings` this cache can produce
(br with the `brotli` binding, gzip with zlib). The cache then keeps, under one
key, the identity variant and one variant per coding, all varying on
Accept-Encoding: requests are keyed by their Accept-Encoding reduced to one
coding (keys.normalise_accept_encoding: q-values honoured, this cache's order
breaking ties), so each finds its variant with the usual Vary match.

- `Vary: Accept-Encoding` is added to every one of them (the identity one too:
  the response now depends on it).
- RFC 9110 §8.8.3: an entity-tag belongs to one representation, and a content
  coding makes another; an encoded variant's tag is the identity one's with a
  suffix ("abc" -> "abc-gzip", W/"abc" -> W/"abc-gzip"), strong stays strong,
  as Apache's mod_deflate does. Content digests of the identity bytes are dropped.
- Never when the origin compressed the response itself (any Content-Encoding),
  when Cache-Control says no-transform (RFC 9110 §7.7), for a status other than
  200, for a stored part (206), or when an encoding is no smaller than the
  identity body.
- The request that fetched it must have asked for identity or a coding this
  cache produces; else (a coding only the origin might produce, e.g. zstd) the
  response is stored as it came.

Encoded variants are derived: they share the identity variant's receipt times
and validators, so revalidation asks the origin about the identity one
(`origin_view`) and a 304 that freshens it freshens them (`refresh_derived`).
Ranges are answered from the identity variant (the engine keys a GET with Range
as Accept-Encoding: identity, unless the client refuses identity:
keys.accept_encoding_for_range).

Pure: no I/O; `encode` is CPU work, which the fetcher runs on a worker thread
for bodies of `compression.off_loop_min` bytes or more.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import brotli

from proxy.config import Config
from proxy.entry import StoredResponse
from proxy.headers import parse_cache_control

__all__ = [
    "SUPPORTED",
    "Compression",
    "derived_etag",
    "encode",
    "in_coding",
    "is_derived",
    "origin_view",
    "refresh_derived",
]

# The codings this cache can produce.
SUPPORTED = ("br", "gzip")
ACCEPT_ENCODING = "accept-encoding"
# Fields about the identity bytes that an encoded body no longer fits.
_IDENTITY_ONLY = frozenset({"content-md5", "digest", "content-digest", "repr-digest", "etag"})


@dataclass(frozen=True, slots=True)
class Compression:
    """The compression settings a node applies, compiled once."""

    codings: tuple[str, ...]  # in this cache's preference order
    types: re.Pattern[str]
    min_size: int
    gzip_level: int
    brotli_quality: int
    off_loop_min: int

    @classmethod
    def of(cls, cfg: Config) -> Compression | None:
        """None when compression is off, or no coding of policy.accept_encodings can be produced."""
        z = cfg.compression
        codings = tuple(c for c in cfg.policy.accept_encodings if c in SUPPORTED)
        if not z.enabled or not codings:
            return None
        globs = ("".join(".*" if c == "*" else re.escape(c) for c in t) for t in z.types)
        return cls(
            codings=codings,
            types=re.compile("(?:" + "|".join(globs) + r")\Z"),
            min_size=z.min_size,
            gzip_level=z.gzip_level,
            brotli_quality=z.brotli_quality,
            off_loop_min=z.off_loop_min,
        )

    def codings_for(self, entry: StoredResponse, asked: str) -> tuple[str, ...]:
        """The codings to encode `entry` into, or () to store it as it came.

        `asked` is the Accept-Encoding the fetching request was keyed with (reduced).
        """
        if entry.parts or len(entry.body) < self.min_size:
            return ()
        if asked != "identity" and asked not in self.codings:
            return ()
        return self.codings if self.may_encode(entry.status, entry.headers) else ()

    def may_encode(self, status: int, headers: Iterable[tuple[str, str]]) -> bool:
        """Whether a response with this status and these fields is one this cache compresses
        (its size aside): also what a body streamed before it is stored must announce (Vary)."""
        if status != 200:
            return False
        content_type = None
        cache_control: list[str] = []
        for name, value in headers:
            lower = name.lower()
            if lower in ("content-encoding", "content-range"):
                return False  # the origin encoded it (even "identity": leave what it says alone)
            if lower == "vary" and ACCEPT_ENCODING in (v.strip().lower() for v in value.split(",")):
                # The origin chooses codings itself, and names them: a tag derived here ("v1-gzip")
                # may be the one it gives its own gzip bytes (Apache's mod_deflate does), and a
                # strong ETag must name one byte sequence (RFC 9110 §8.8.3).
                return False
            if lower == "content-type":
                content_type = value
            elif lower == "cache-control":
                cache_control.append(value)
        if "no-transform" in parse_cache_control(cache_control):
            return False  # RFC 9110 §7.7: a proxy must not change the content
        media = (content_type or "").split(";", 1)[0].strip().lower()
        return bool(media) and self.types.match(media) is not None

    def head_fields(
        self, status: int, fields: Sequence[tuple[str, str]], asked: str
    ) -> list[tuple[str, str]] | None:
        """A HEAD answer's fields, from the origin's answer to it, as this cache's answer to the GET
        would have them (RFC 9110 §9.3.2), or None when it would not encode that GET's answer.

        `asked` is the request's reduced Accept-Encoding. The answer varies on Accept-Encoding;
        in a coding this cache produces, it says that coding and its derived entity-tag and has no
        Content-Length (a value the encoding alone determines, §9.3.2). As nginx's gzip filter
        does for HEAD, this trusts the encoding to be smaller (a GET stores identity when not).
        """
        if not self.may_encode(status, fields):
            return None
        length = next((v for n, v in fields if n.lower() == "content-length"), None)
        if length is not None and (not length.strip().isdigit() or int(length) < self.min_size):
            return None
        out = list(fields)
        vary = [v.strip().lower() for n, v in out if n.lower() == "vary" for v in v.split(",")]
        if ACCEPT_ENCODING not in vary and "*" not in vary:
            out.append(("Vary", "Accept-Encoding"))
        if asked not in self.codings:
            return out
        etag = next((v for n, v in out if n.lower() == "etag"), None)
        out = [(n, v) for n, v in out if n.lower() not in _IDENTITY_ONLY and n.lower() != "content-length"]
        out.append(("Content-Encoding", asked))
        derived = derived_etag(etag, asked)
        if derived is not None:
            out.append(("ETag", derived))
        return out

    def encode(self, body: bytes, codings: Sequence[str]) -> dict[str, bytes]:
        return encode(body, codings, self.gzip_level, self.brotli_quality)


def encode(
    body: bytes, codings: Sequence[str], gzip_level: int = 6, brotli_quality: int = 5
) -> dict[str, bytes]:
    """The body in each coding (CPU-bound: run it off the event loop when it is large)."""
    out: dict[str, bytes] = {}
    for coding in codings:
        if coding == "gzip":
            # wbits 31: the gzip container (RFC 1952) with no file name and mtime 0, so the
            # same body always gives the same bytes.
            z = zlib.compressobj(gzip_level, zlib.DEFLATED, 31)
            out[coding] = z.compress(body) + z.flush()
        elif coding == "br":
            out[coding] = brotli.compress(body, quality=brotli_quality)
        else:
            raise ValueError(f"cannot produce the {coding!r} content coding")
    return out


def variants(entry: StoredResponse, encoded: Mapping[str, bytes]) -> tuple[StoredResponse, ...]:
    """The identity variant first, then one per coding; just (entry,) if any encoding is no smaller."""
    if not encoded or any(len(body) >= len(entry.body) for body in encoded.values()):
        return (entry,)
    identity = _for_encoding(entry, "identity")
    return (identity, *(encoded_variant(identity, coding, body) for coding, body in encoded.items()))


def encoded_variant(identity: StoredResponse, coding: str, body: bytes) -> StoredResponse:
    """The variant of `identity` (already varying on Accept-Encoding) in `coding`, with its encoded body."""
    fields = [(n, v) for n, v in identity.headers if n.lower() not in _IDENTITY_ONLY]
    fields.append(("Content-Encoding", coding))
    etag = derived_etag(identity.etag, coding)
    if etag is not None:
        fields.append(("ETag", etag))
    values = tuple(
        coding if name == ACCEPT_ENCODING else value
        for name, value in zip(identity.vary_names, identity.vary_values, strict=True)
    )
    return identity.evolve(headers=tuple(fields), body=body, vary_values=values, etag=etag)


def _for_encoding(entry: StoredResponse, value: str) -> StoredResponse:
    """`entry` varying on Accept-Encoding (Vary says so), keyed with the reduced value `value`."""
    fields = list(entry.headers)
    known = dict(zip(entry.vary_names, entry.vary_values, strict=True))
    if ACCEPT_ENCODING not in known:
        fields.append(("Vary", "Accept-Encoding"))
    known[ACCEPT_ENCODING] = value
    names = tuple(sorted(known))
    return entry.evolve(headers=tuple(fields), vary_names=names, vary_values=tuple(known[n] for n in names))


def derived_etag(etag: str | None, coding: str) -> str | None:
    """RFC 9110 §8.8.3: the entity-tag of the `coding` encoding of the representation tagged `etag`."""
    if etag is None:
        return None
    etag = etag.strip()
    if etag.endswith('"') and len(etag) >= 2:
        return f'{etag[:-1]}-{coding}"'
    return f"{etag}-{coding}"


def _encoding(variant: StoredResponse) -> str | None:
    """The reduced Accept-Encoding a variant is keyed with, if it varies on it."""
    for name, value in zip(variant.vary_names, variant.vary_values, strict=True):
        if name == ACCEPT_ENCODING:
            return value
    return None


def in_coding(variants: Sequence[StoredResponse], coding: str | None) -> StoredResponse | None:
    """The variant keyed with the reduced Accept-Encoding `coding`, if any.

    A 304 may name a representation other than the stale variant's (RFC 9111 §4.3.4: the stored
    responses with its validator are the ones updated): the request is answered from those, in its
    own coding when this cache holds that encoding of them, not in whichever came first.
    """
    return next((v for v in variants if _encoding(v) == coding), None)


def is_derived(variant: StoredResponse, identity: StoredResponse) -> bool:
    """Whether `variant` is an encoding this cache made of `identity` (so it goes with it)."""
    if variant is identity:
        return False
    coding = _encoding(variant)
    if coding not in SUPPORTED or _encoding(identity) != "identity":
        return False
    if variant.response_time != identity.response_time or variant.request_time != identity.request_time:
        return False
    if variant.etag != derived_etag(identity.etag, coding) or variant.vary_names != identity.vary_names:
        return False
    return all(
        a == b or name == ACCEPT_ENCODING
        for name, a, b in zip(variant.vary_names, variant.vary_values, identity.vary_values, strict=True)
    )


def origin_view(
    stale: StoredResponse, stored: Sequence[StoredResponse]
) -> tuple[StoredResponse, tuple[StoredResponse, ...]]:
    """What to ask the origin about when revalidating `stale`: its identity variant if this cache
    derived it, and the stored variants less the derived ones (whose validators the origin never made)."""
    if len(stored) == 1 and stored[0] is stale:
        return stale, (stale,)  # nothing derived from itself: the common case, without the scans
    originals = tuple(v for v in stored if not any(is_derived(v, other) for other in stored))
    base = next((v for v in stored if is_derived(stale, v)), stale)
    return base, originals


def refresh_derived(
    stored: Sequence[StoredResponse], updated: Mapping[int, StoredResponse]
) -> dict[int, StoredResponse]:
    """`updated` (id of a stored variant -> its freshened copy) with the encodings derived from a
    freshened identity variant rebuilt from it (their bodies kept)."""
    out = dict(updated)
    if len(stored) == 1:
        return out  # a variant is never derived from itself
    by_id = {id(v): v for v in stored}
    for old_id, new in updated.items():
        old = by_id.get(old_id)
        if old is None:
            continue
        for variant in stored:
            if id(variant) not in out and is_derived(variant, old):
                coding = _encoding(variant)
                assert coding is not None
                out[id(variant)] = encoded_variant(new, coding, variant.body)
    return out
