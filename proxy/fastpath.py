"""A lean HTTP/1.1 front for plain cache hits, in front of aiohttp.

Each connection starts here. A request whose head is simple (GET or HEAD, no
body, one valid Host, nothing this file is unsure of) and that the engine
answers as a plain fresh L1 hit (`Engine.fast_hit`) is written back at once
from the stored response's pre-built header bytes and body: no aiohttp
request or response objects, no header serialisation per hit. The first
request that is anything else — a miss, a conditional, a range, a POST, a
malformed line — hands the connection, with every byte not yet answered, to
aiohttp's own protocol, which parses it fully and runs the whole engine; the
connection stays with aiohttp from then on. So every RFC rule and every error
answer remains aiohttp's and the engine's; this file only saves work on hits.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from multidict import CIMultiDict

from proxy.config import Config
from proxy.engine import Engine
from proxy.fetcher import ClientRequest
from proxy.headers import VALID_HOST

access_log = logging.getLogger("proxy.access")

MAX_HEAD = 16 * 1024  # longer heads go to aiohttp, which enforces its own limits (431/400)
_COPY_LIMIT = 16 * 1024  # smaller bodies are joined to the head: one buffer, one send
IDLE_TIMEOUT = 75.0  # seconds a keep-alive connection may sit idle (aiohttp's default)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[!-~]*")  # origin-form, visible ASCII only
# Fields that mean "not a plain request": a body, an upgrade, or something to negotiate.
_NOT_PLAIN = ("content-length", "transfer-encoding", "upgrade", "expect", "http2-settings")


@dataclass(frozen=True, slots=True)
class FastContext:
    """What every connection shares."""

    engine: Engine
    cfg: Config
    aiohttp_protocol: Callable[[], asyncio.Protocol]
    health_path: bytes
    name: bytes
    access_log: bool


class FastPathProtocol(asyncio.Protocol):
    """One client connection: hits answered here, everything else handed to aiohttp."""

    def __init__(self, ctx: FastContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.remote = ""
        self.last_activity = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()  # protocols are built by the loop's server

    # ------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if peer else ""
        self.last_activity = self.loop.time()
        self.idle_timer = self.loop.call_later(IDLE_TIMEOUT, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self.transport = None

    def pause_writing(self) -> None:
        # The client reads slower than we answer: stop reading requests until it catches up.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def _check_idle(self) -> None:
        transport = self.transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        idle_for = loop.time() - self.last_activity
        if idle_for >= IDLE_TIMEOUT and not self.buffer:
            transport.close()
            return
        self.idle_timer = loop.call_later(max(IDLE_TIMEOUT - idle_for, 1.0), self._check_idle)

    def _stop_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    # ---------------------------------------------------------------- requests

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        self.last_activity = self.loop.time()
        buf = self.buffer + data if self.buffer else data
        while buf:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD or b"\n\n" in buf:  # too long, or bare-LF line ends
                    self._hand_off(buf)
                else:
                    self.buffer = buf
                return
            answered = self._answer(buf[:end])
            if answered is None:
                self._hand_off(buf)
                return
            response, body, keep_alive = answered
            if body:
                # Large bodies go out with the head in one writev, without copying them.
                transport.writelines((response, body))
            else:
                transport.write(response)
            if not keep_alive:
                self.buffer = b""
                transport.close()
                return
            buf = buf[end + 4 :]
        self.buffer = b""

    def _answer(self, head: bytes) -> tuple[bytes, bytes, bool] | None:
        """(head, body to send after it or b"", keep the connection?) for a plain hit; else None."""
        started = time.perf_counter()
        if b"\r\n" not in head:
            request_line, field_block = head, b""
        else:
            request_line, field_block = head.split(b"\r\n", 1)
        parts = request_line.split(b" ")
        if len(parts) != 3:
            return None
        method, target, version = parts
        if method not in (b"GET", b"HEAD") or version not in (b"HTTP/1.1", b"HTTP/1.0"):
            return None
        if not _TARGET.fullmatch(target):
            return None
        bare = field_block.replace(b"\r\n", b"")
        if b"\r" in bare or b"\n" in bare:
            return None  # a bare CR or LF: let the strict parser judge it
        headers: CIMultiDict[str] = CIMultiDict()
        if field_block:
            for line in field_block.split(b"\r\n"):
                name, sep, value = line.partition(b":")
                if not sep or not _TOKEN.fullmatch(name) or b"\x00" in value:
                    return None  # obs-fold, whitespace before the colon, NUL: not plain
                headers.add(name.decode("ascii"), value.strip(b" \t").decode("utf-8", "surrogateescape"))
        for name_ in _NOT_PLAIN:
            if name_ in headers:
                return None
        hosts = headers.getall("Host", [])
        if len(hosts) > 1 or (version == b"HTTP/1.1" and not hosts):
            return None
        host = hosts[0] if hosts else ""
        if not VALID_HOST.fullmatch(host):  # the rule proxy/app.py applies before the engine
            return None
        path, _, query = target.partition(b"?")
        if path == self.ctx.health_path:
            return None
        connection = headers.get("Connection", "").lower()
        # RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
        keep_alive = "close" not in connection if version == b"HTTP/1.1" else "keep-alive" in connection
        request = ClientRequest(
            method=method.decode(),
            scheme="http",
            host=host,
            path=path.decode("ascii"),
            query=query.decode("ascii"),
            headers=headers,
            remote=self.remote,
        )
        hit = self.ctx.engine.fast_hit(request)
        if hit is None:
            return None
        entry, age, ttl, tier = hit
        name = self.ctx.name
        tail = b'Age: %d\r\nCache-Status: %s%s;hit;ttl=%d;detail="%s"\r\nVia: 1.1 %s\r\n' % (
            int(age),
            entry.cache_status_prefix,
            name,
            int(ttl),
            tier.encode(),
            name,
        )
        if not keep_alive:
            tail += b"Connection: close\r\n"
        elif version == b"HTTP/1.0":
            tail += b"Connection: keep-alive\r\n"
        body = entry.body if method == b"GET" else b""
        if len(body) <= _COPY_LIMIT:
            response, body = b"".join((entry.wire_head, tail, b"\r\n", body)), b""
        else:
            response = b"".join((entry.wire_head, tail, b"\r\n"))
        if self.ctx.access_log:
            access_log.info(
                '%s "%s %s" %d "%s;hit;ttl=%d;detail=%s" %.1fms',
                self.remote,
                request.method,
                target.decode("ascii"),
                entry.status,
                self.ctx.cfg.name,
                int(ttl),
                tier,
                (time.perf_counter() - started) * 1000,
            )
        return response, body, keep_alive

    def _hand_off(self, unanswered: bytes) -> None:
        """Give the connection, and every byte not yet answered, to aiohttp for good."""
        transport = self.transport
        self._stop_timer()
        self.buffer = b""
        self.transport = None
        if transport is None or transport.is_closing():
            return
        protocol = self.ctx.aiohttp_protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if unanswered:
            protocol.data_received(unanswered)
