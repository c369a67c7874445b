"""HTTP/1.1 bytes for responses served from cache: the header block built once per stored response.

Pure functions of header values; no I/O. A hit then costs one concatenation:
the stored head, the per-response Age / Cache-Status / Via lines, and the body.
Field values are written back as the bytes they were read as (UTF-8 with
surrogate escapes, the way aiohttp decodes them), so nothing is re-encoded.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

from multidict import CIMultiDict


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def status_line(status: int, reason: str) -> bytes:
    if not reason:
        try:
            reason = HTTPStatus(status).phrase  # RFC 9110 §15's phrases
        except ValueError:
            reason = ""
    return _b(f"HTTP/1.1 {status} {reason}\r\n")


def hit_head(
    status: int, reason: str, headers: Iterable[tuple[str, str]], body_length: int
) -> tuple[bytes, bytes]:
    """(status line + stored fields + Accept-Ranges + Content-Length, prior Cache-Status members + ", ")."""
    lines = [status_line(status, reason)]
    prior: list[str] = []
    has_accept_ranges = False
    for name, value in headers:
        lower = name.lower()
        if lower == "cache-status":
            prior.append(value)
            continue
        if lower == "accept-ranges":
            has_accept_ranges = True
        lines.append(_b(f"{name}: {value}\r\n"))
    if status == 200 and not has_accept_ranges:
        lines.append(b"Accept-Ranges: bytes\r\n")
    if status not in (204, 304):
        lines.append(b"Content-Length: %d\r\n" % body_length)
    prefix = _b(", ".join(prior) + ", ") if prior else b""
    return b"".join(lines), prefix


def response_head(status: int, reason: str, headers: CIMultiDict[str], body_length: int | None) -> bytes:
    """A whole header block for a generated response (304, 206, errors), ending in the blank line."""
    lines = [status_line(status, reason)]
    lines.extend(_b(f"{name}: {value}\r\n") for name, value in headers.items())
    if body_length is not None and "content-length" not in headers:
        lines.append(b"Content-Length: %d\r\n" % body_length)
    lines.append(b"\r\n")
    return b"".join(lines)
