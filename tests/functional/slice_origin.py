"""An origin for one large representation that honours single byte ranges (RFC 9110 §14), for slice tests.

Its bytes are random (seeded per version), so a byte taken from the wrong
offset or the wrong version never compares equal. It records the Range and
If-None-Match of every request, can be told to change its representation
(another version: other bytes, another ETag), to ignore Range (a 200 whatever
is asked), and to send no ETag, a weak one, or no Accept-Ranges.
"""

from __future__ import annotations

import asyncio
import random
import re
from dataclasses import dataclass


@dataclass
class Seen:
    method: str
    range: str | None
    if_none_match: str | None


class SliceOrigin:
    def __init__(
        self,
        length: int,
        *,
        cache_control: str = "max-age=60",
        ranges: bool = True,
        etag: str | None = "strong",  # "strong", "weak" or None
        accept_ranges: bool = True,
        extra_headers: str = "",
    ) -> None:
        self.length = length
        self.cache_control = cache_control
        self.ranges = ranges
        self.etag_kind = etag
        self.accept_ranges = accept_ranges
        self.extra_headers = extra_headers
        # A broken origin: a 304 to any If-None-Match, naming its current ETag whatever was asked.
        self.not_modified_to_any = False
        self.version = 0
        self.body = b""
        self.set_version(1)
        self.seen: list[Seen] = []
        self.server: asyncio.Server | None = None
        self.url = ""
        self.tasks: set[asyncio.Task[None]] = set()

    def set_version(self, version: int, length: int | None = None) -> None:
        """Change the representation: other bytes (and length), another ETag."""
        self.version = version
        if length is not None:
            self.length = length
        self.body = random.Random(version).randbytes(self.length)

    @property
    def etag(self) -> str | None:
        if self.etag_kind is None:
            return None
        tag = f'"v{self.version}"'
        return "W/" + tag if self.etag_kind == "weak" else tag

    def ranges_seen(self) -> list[str | None]:
        return [s.range for s in self.seen]

    async def start(self) -> SliceOrigin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while True:
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                head_out, first, last = self._answer(head)
                writer.write(head_out)
                view = memoryview(self.body)
                at = first
                while at <= last:  # in pieces, with flow control: a dropped connection stops it
                    end = min(at + 256 * 1024, last + 1)
                    writer.write(view[at:end])
                    at = end
                    await writer.drain()
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self.tasks.discard(task)
            writer.close()

    def _answer(self, head: str) -> tuple[bytes, int, int]:
        method = head.split(" ", 1)[0]
        fields = {
            line.split(":", 1)[0].strip().lower(): line.split(":", 1)[1].strip()
            for line in head.split("\r\n")[1:]
            if ":" in line
        }
        wanted, inm = fields.get("range"), fields.get("if-none-match")
        self.seen.append(Seen(method, wanted, inm))
        common = f"Cache-Control: {self.cache_control}\r\nContent-Type: video/mp4\r\n{self.extra_headers}"
        etag = self.etag
        if etag is not None:
            common += f"ETag: {etag}\r\n"
        if self.accept_ranges:
            common += "Accept-Ranges: bytes\r\n"
        if inm is not None and etag is not None and (inm.strip() == etag or self.not_modified_to_any):
            return f"HTTP/1.1 304 Not Modified\r\n{common}\r\n".encode(), 0, -1
        length = self.length
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted or "") if self.ranges else None
        if m is None:
            status, extra, first, last = "200 OK", "", 0, length - 1
        else:
            first_text, last_text = m.groups()
            if not first_text:
                first, last = max(0, length - int(last_text)), length - 1
            else:
                first = int(first_text)
                last = min(int(last_text), length - 1) if last_text else length - 1
            if first >= length:
                head_out = (
                    f"HTTP/1.1 416 Range Not Satisfiable\r\n{common}Content-Range: bytes */{length}\r\n"
                )
                return (head_out + "Content-Length: 0\r\n\r\n").encode(), 0, -1
            status, extra = "206 Partial Content", f"Content-Range: bytes {first}-{last}/{length}\r\n"
        size = last - first + 1
        head_out = f"HTTP/1.1 {status}\r\n{common}{extra}Content-Length: {size}\r\n\r\n".encode()
        if method == "HEAD":
            return head_out, 0, -1
        return head_out, first, last
