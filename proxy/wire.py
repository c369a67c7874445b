"""HTTP/1.1 bytes for responses served from cache: the header block built once per stored response.

Pure functions of header values; no I/O. A hit then costs one concatenation:
the stored head, the per-response Age / Cache-Status / Via lines, and the body.
Field values are written back as the bytes they were read as (UTF-8 with
surrogate escapes, the way aiohttp decodes them), so nothing is re-encoded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from http import HTTPStatus
from typing import overload


class HeaderBlock(Sequence[tuple[str, str]]):
    """Header fields kept as the bytes they go out as: b"Name: value\r\n" lines.

    A stored response's fields live here once, as one bytes object (a tuple of
    string pairs costs about four times the memory); iterating yields
    (name, value) pairs for the code that needs them, off the hit path.
    """

    __slots__ = ("wire",)

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        # One encode of the joined text: the same bytes as encoding each line (the joins are ASCII).
        self.wire = _b("".join([f"{name}: {value}\r\n" for name, value in pairs]))

    @classmethod
    def from_wire(cls, wire: bytes) -> HeaderBlock:
        """A block from bytes already in this form; ValueError unless each line is `Name: value` + CRLF."""
        if not _FIELD_LINES.fullmatch(wire):
            raise ValueError("not a header block")
        block = cls.__new__(cls)
        block.wire = wire
        return block

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs())

    def pairs(self) -> list[tuple[str, str]]:
        """The (name, value) pairs, decoded as aiohttp decodes fields (UTF-8, surrogateescape).

        One decode and a split per line in C: a generator cost a Python step per field, and a
        304's freshening walks a stored block three times. Decoding the whole block equals
        decoding each part, as the separators are ASCII.
        """
        lines = self.wire.decode("utf-8", "surrogateescape").split("\r\n")
        lines.pop()  # after the last CRLF
        pairs: list[tuple[str, str]] = [tuple(line.split(": ", 1)) for line in lines]  # type: ignore[misc]
        if sum(map(len, pairs)) != 2 * len(pairs):
            # A line without ": " (only in a block built from such pairs): its value is empty.
            pairs = [(name, value) for name, _, value in (line.partition(": ") for line in lines)]
        return pairs

    def __len__(self) -> int:
        return self.wire.count(b"\r\n")

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, str]]: ...
    def __getitem__(self, index: int | slice) -> tuple[str, str] | Sequence[tuple[str, str]]:
        return tuple(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HeaderBlock):
            return self.wire == other.wire
        if isinstance(other, tuple | list):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.wire)

    def __repr__(self) -> str:
        return f"HeaderBlock({tuple(self)!r})"


# What HeaderBlock writes: lines of a name, ": ", a value, CRLF; no CR, LF or NUL
# inside a line, so bytes read back from disk cannot split the header section.
_FIELD_LINES = re.compile(rb"(?:[^\r\n\x00:]+: [^\r\n\x00]*\r\n)*")


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def status_line(status: int, reason: str) -> bytes:
    if not reason:
        try:
            reason = HTTPStatus(status).phrase  # RFC 9110 §15's phrases
        except ValueError:
            reason = ""
    return _b(f"HTTP/1.1 {status} {reason}\r\n")


def hit_parts(status: int, headers: HeaderBlock) -> tuple[bytes, bytes, bool]:
    """What a hit writes besides the status line and Content-Length, derived once per stored response:
    (the stored field lines without Cache-Status, prior Cache-Status members + ", ", add Accept-Ranges?).

    The field lines are the HeaderBlock's own bytes (no copy) unless the origin
    sent Cache-Status, whose members this node's member is appended to instead.
    """
    block = headers.wire
    lower = block.lower()
    has_ranges = lower.startswith(b"accept-ranges:") or b"\naccept-ranges:" in lower
    add_accept_ranges = status == 200 and not has_ranges
    if not (lower.startswith(b"cache-status:") or b"\ncache-status:" in lower):
        return block, b"", add_accept_ranges
    prior = [value for name, value in headers if name.lower() == "cache-status"]
    kept = HeaderBlock((name, value) for name, value in headers if name.lower() != "cache-status")
    return kept.wire, _b(", ".join(prior) + ", "), add_accept_ranges


@functools.lru_cache(maxsize=256)
def cached_status_line(status: int, reason: str) -> bytes:
    return status_line(status, reason)
