"""What a stored response is: the values the cache keeps per variant and per URL.

Everything the hit path needs is computed once, when the response is stored
(freshness lifetime, corrected initial age, the directives that govern serving
stale), so that serving a hit never re-parses stored headers.

Reference: RFC 9111 §3 (storing), §4.1 (Vary), §4.2.3 (age calculation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from operator import attrgetter

from proxy import wire

# A header list in wire order; names keep the origin's spelling. Stored as a
# wire.HeaderBlock (one bytes object); any sequence of pairs may be passed in.
HeaderList = Sequence[tuple[str, str]]

# Rough per-entry bookkeeping cost, so that a budget of many tiny objects is honest.
ENTRY_OVERHEAD_BYTES = 256


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One stored variant of a URL (RFC 9111 §3), immutable once built."""

    status: int
    reason: str
    # Header fields to send to clients: hop-by-hop, Content-Length, Age and
    # the fields the policy drops (Set-Cookie, private="x") already removed.
    headers: HeaderList
    body: bytes
    # RFC 9111 §4.2.3: when the request was sent and the response received,
    # in seconds since the epoch on the proxy's clock.
    request_time: float
    response_time: float
    # RFC 9111 §4.2.3: corrected_initial_age, computed at store time.
    corrected_initial_age: float
    # RFC 9111 §4.2.1: the freshness lifetime chosen at store time.
    freshness_lifetime: float
    # RFC 9111 §4.1: lower-cased names nominated by Vary ("*" for Vary: *),
    # and the normalised request values they had (None = field absent).
    vary_names: tuple[str, ...] = ()
    vary_values: tuple[str | None, ...] = ()
    # Directives that govern reuse, from the field this cache obeyed
    # (a targeted field per RFC 9213, else Cache-Control).
    no_cache: bool = False  # §5.2.2.4: always revalidate
    must_revalidate: bool = False  # §5.2.2.2 / §5.2.2.8 / s-maxage: never serve stale
    immutable: bool = False  # RFC 8246
    stale_while_revalidate: float = 0.0  # RFC 5861 §3
    stale_if_error: float = 0.0  # RFC 5861 §4
    # Validators, kept separately so conditional requests need no header scan.
    etag: str | None = None
    last_modified: str | None = None
    date: str | None = None
    # Surrogate keys / cache tags, for purge by tag.
    tags: tuple[str, ...] = ()
    # The purge epoch current when the request for this response was sent: a
    # purge with a later epoch covering this key makes it invalid, whatever
    # tier or worker holds a copy (see proxy/purge.py).
    fetch_epoch: int = 0
    # RFC 9111 §3.3: a stored 206 is an incomplete response. `parts` are the byte ranges of
    # the representation it holds (inclusive, ascending, never overlapping nor adjacent),
    # `body` their bytes in that order, and `complete_length` the representation's length.
    # A complete response has no parts (and complete_length -1).
    parts: tuple[tuple[int, int], ...] = ()
    complete_length: int = -1
    # Derived at construction, never stored by the codec: the header block as
    # sent on a plain hit (minus Age, Cache-Status and Via, which change per
    # response), the Cache-Status members of the tiers below to which this
    # node appends its own, and whether Accept-Ranges must be added. The hit
    # writer (proxy.h1.delivery_head) sends these bytes as they are instead of
    # serialising headers per request.
    hit_fields: bytes = field(default=b"", init=False, compare=False, repr=False)
    cache_status_prefix: bytes = field(default=b"", init=False, compare=False, repr=False)
    add_accept_ranges: bool = field(default=False, init=False, compare=False, repr=False)
    # Derived on first use, by the hit writer (proxy.h1.delivery_head): the field lines a 304
    # generated from this response carries (policy.not_modified_header_list). None until then,
    # and again whenever the headers change (__post_init__).
    not_modified_lines: bytes | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        headers = self.headers
        # An exact type check: HeaderBlock is a Sequence (an ABC), and isinstance() of a tuple
        # against it is a Python-level __instancecheck__ call.
        if type(headers) is not wire.HeaderBlock:
            headers = wire.HeaderBlock(headers)
            object.__setattr__(self, "headers", headers)
        fields, prefix, accept_ranges = wire.hit_parts(self.status, headers)
        object.__setattr__(self, "hit_fields", fields)
        object.__setattr__(self, "cache_status_prefix", prefix)
        object.__setattr__(self, "add_accept_ranges", accept_ranges)
        object.__setattr__(self, "not_modified_lines", None)

    @classmethod
    def from_checked(cls, values: tuple[object, ...]) -> StoredResponse:
        """Build from field values in STORED_FIELDS order that are already of the right types.

        For the codec's read path: the same object __init__ makes, about twice
        as fast. A frozen dataclass sets each field through object.__setattr__;
        this sets the slots through their descriptors.
        """
        self = object.__new__(cls)
        for set_slot, value in zip(_SLOT_SETTERS, values, strict=True):
            set_slot(self, value)
        self.__post_init__()
        return self

    def with_body(self, body: bytes) -> StoredResponse:
        """This response with another body (a copy; the derived fields do not depend on the body)."""
        return self.evolve(body=body)

    def evolve(self, **changes: object) -> StoredResponse:
        """A copy with `changes` (stored fields by name): dataclasses.replace without its cost.

        replace() runs the frozen __init__ (every field through object.__setattr__) and
        derives the hit bytes again; a 304's freshening and every store make two or three
        copies each. This copies the slots and derives again only when status or headers
        change, the only inputs of the derived fields.
        """
        other = object.__new__(StoredResponse)
        # Every slot read by one C call (attrgetter), then set through its descriptor.
        for set_slot, value in zip(_ALL_SLOT_SETTERS, _ALL_SLOT_VALUES(self), strict=True):
            set_slot(other, value)
        for name, value in changes.items():
            setter = _STORED_SLOT_SETTERS.get(name)
            if setter is None:
                raise TypeError(f"StoredResponse has no stored field {name!r}")
            setter(other, value)
        if "headers" in changes or "status" in changes:
            other.__post_init__()
        return other

    @property
    def length(self) -> int:
        """The length of the whole representation (RFC 9110 §14.4: the complete-length)."""
        return self.complete_length if self.parts else len(self.body)

    def holds(self, first: int, last: int) -> bool:
        """Whether the bytes first..last (inclusive) of the representation are stored."""
        if not self.parts:
            return 0 <= first <= last < len(self.body)
        return any(a <= first and last <= b for a, b in self.parts)

    def bytes_of(self, first: int, last: int) -> bytes:
        """The bytes first..last of the representation; they must be stored (`holds`)."""
        if not self.parts:
            return self.body[first : last + 1]
        offset = 0
        for a, b in self.parts:
            if a <= first and last <= b:
                start = offset + first - a
                return self.body[start : start + last - first + 1]
            offset += b - a + 1
        raise ValueError(f"bytes {first}-{last} are not stored")

    def size(self) -> int:
        """Approximate bytes this variant occupies (body + headers + overhead)."""
        # __post_init__ made headers a HeaderBlock: its bytes are the stored fields.
        # (typing.cast is a Python call: this runs for every variant on every store.)
        return len(self.body) + len(self.headers.wire) + ENTRY_OVERHEAD_BYTES  # type: ignore[attr-defined]


# The fields a StoredResponse is built from (the derived ones excluded), in order.
STORED_FIELDS = tuple(f.name for f in fields(StoredResponse) if f.init)
_SLOT_SETTERS = tuple(getattr(StoredResponse, name).__set__ for name in STORED_FIELDS)
_ALL_SLOT_NAMES = tuple(f.name for f in fields(StoredResponse))
_ALL_SLOT_SETTERS = tuple(getattr(StoredResponse, name).__set__ for name in _ALL_SLOT_NAMES)
_ALL_SLOT_VALUES = attrgetter(*_ALL_SLOT_NAMES)
_STORED_SLOT_SETTERS = dict(zip(STORED_FIELDS, _SLOT_SETTERS, strict=True))


@dataclass(frozen=True, slots=True)
class CachedResource:
    """Every stored variant of one primary cache key (RFC 9111 §4.1).

    One storage record per URL keeps purge by URL a single delete and lets the
    selection of a variant happen without a second lookup.
    """

    key: str
    variants: tuple[StoredResponse, ...] = field(default_factory=tuple)

    def size(self) -> int:
        """Approximate bytes of all variants plus the key."""
        return len(self.key) + sum(v.size() for v in self.variants)
