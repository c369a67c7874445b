"""A lean HTTP/1.1 front in front of aiohttp: plain GET and HEAD requests end to end.

Each connection starts here. A request whose head is simple (GET or HEAD, no
body, one valid Host, nothing this file is unsure of) is answered here:

- a plain fresh hit (`Engine.fast_hit`, L1 or a small L2 value) is written at
  once from the stored response's pre-built header bytes and body: no await,
  no request or response objects, no header serialisation per hit;
- anything else (a miss, a revalidation, a conditional, a range, a pass) runs
  through the whole engine (`proxy.respond`), and the reply is framed by
  `proxy.h1` and written here, streaming with flow control. Later pipelined
  requests wait, unread, until it is written.

The first request that is not simple (a POST, PURGE, a body, an upgrade, a
malformed or unusual head, the health path) hands the connection, with every
byte not yet answered, to aiohttp's own protocol, which parses it fully; the
connection stays with aiohttp from then on. So every error answer for bad
input is aiohttp's, and every caching rule the engine's; this file only
saves aiohttp's per-request work on the requests a cache mostly sees.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Config
from proxy.engine import Engine, Reply
from proxy.fetcher import ClientRequest
from proxy.h1 import LAST_CHUNK, Framing, HeaderInjection, chunk, reply_head
from proxy.headers import VALID_HOST
from proxy.respond import log_access, own_member, respond
from proxy.upstream_error import UpstreamError

log = logging.getLogger("proxy.app")

MAX_HEAD = 16 * 1024  # longer heads go to aiohttp, which enforces its own limits (431/400)
_COPY_LIMIT = 16 * 1024  # smaller bodies are joined to the head: one buffer, one send
IDLE_TIMEOUT = 75.0  # seconds a keep-alive connection may sit idle (aiohttp's default)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[!-~]*")  # origin-form, visible ASCII only
# Fields that mean "not a plain request": a body, an upgrade, or something to negotiate.
_NOT_PLAIN = ("content-length", "transfer-encoding", "upgrade", "expect", "http2-settings")
_INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Cache-Control: no-store\r\nContent-Length: 15\r\nConnection: close\r\n\r\ninternal error\n"
)


# Heads parsed per connection and kept for reuse. A client on a keep-alive
# connection often repeats its request head byte for byte (polling, a page's
# assets share most fields, load generators); parsing is a pure function of
# those bytes (and of the connection's peer address, fixed per connection).
_PARSED_HEADS = 8


@dataclass(slots=True)
class _Parsed:
    """A plain request read by this front: a pure function of its head bytes and the peer."""

    request: ClientRequest
    http10: bool
    keep_alive: bool
    started: float = 0.0  # perf_counter() when its head was read, for the access log


@dataclass(frozen=True, slots=True)
class FastContext:
    """What every connection shares."""

    engine: Engine
    cfg: Config
    aiohttp_protocol: Callable[[], asyncio.Protocol]
    health_path: bytes
    name: bytes
    access_log: bool
    # Every open connection still with this front (for shutdown).
    connections: set[FastPathProtocol] = field(default_factory=set)

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections now; give those mid-request up to timeout seconds to finish."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            busy = [c.task for c in self.connections if c.task is not None and not c.task.done()]
            for conn in list(self.connections):
                if (conn.task is None or conn.task.done()) and conn.transport is not None:
                    conn.transport.close()
            if not busy or loop.time() >= deadline:
                break
            await asyncio.wait(busy, timeout=deadline - loop.time())
        for conn in list(self.connections):
            if conn.task is not None:
                conn.task.cancel()
            if conn.transport is not None:
                conn.transport.abort()


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
        self.task: asyncio.Task[None] | None = None  # the request being answered by the engine
        self.parsed_heads: dict[bytes, _Parsed] = {}
        self.writing_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if peer else ""
        self.last_activity = self.loop.time()
        self.idle_timer = self.loop.call_later(IDLE_TIMEOUT, self._check_idle)
        self.ctx.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self.transport = None
        self.ctx.connections.discard(self)
        self._wake_writer()
        if self.task is not None:
            self.task.cancel()  # nobody to answer any more (a shared fetch goes on: see Engine._fetch)

    def pause_writing(self) -> None:
        # The client reads slower than we answer: stop reading requests until it catches up.
        self.writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()
        if self.transport is not None and self.task is None:
            self.transport.resume_reading()

    def _wake_writer(self) -> None:
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_idle(self) -> None:
        transport = self.transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        idle_for = loop.time() - self.last_activity
        if idle_for >= IDLE_TIMEOUT and not self.buffer and self.task is None:
            transport.close()
            return
        self.idle_timer = loop.call_later(max(IDLE_TIMEOUT - idle_for, 1.0), self._check_idle)

    def _stop_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    # ---------------------------------------------------------------- requests

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.last_activity = self.loop.time()
        buf = self.buffer + data if self.buffer else data
        if self.task is not None:
            # A request is being answered: pipelined bytes wait their turn (reading is paused).
            self.buffer = buf
            return
        self._process(buf)

    def _process(self, buf: bytes) -> None:
        """Answer the complete requests in buf in order; keep an incomplete one for later."""
        transport = self.transport
        while buf and transport is not None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD or b"\n\n" in buf:  # too long, or bare-LF line ends
                    self._hand_off(buf)
                else:
                    self.buffer = buf
                return
            head = buf[:end]
            parsed = self.parsed_heads.get(head)
            if parsed is None:
                parsed = self._parse(head)
                if parsed is None:
                    self._hand_off(buf)
                    return
                if len(self.parsed_heads) >= _PARSED_HEADS:
                    self.parsed_heads.clear()
                self.parsed_heads[head] = parsed
            if self.ctx.access_log:
                parsed.started = time.perf_counter()
            buf = buf[end + 4 :]
            answered = self._hit(parsed)
            if not isinstance(answered, tuple):
                # Not a plain fresh hit: the whole engine answers it, asynchronously.
                # Later requests on this connection wait until it is written.
                self.buffer = buf
                transport.pause_reading()
                task = self.task = self.loop.create_task(self._answer(parsed, known_miss=answered))
                task.add_done_callback(self._answered)
                return
            response, body = answered
            if body:
                # Large bodies go out with the head in one writev, without copying them.
                transport.writelines((response, body))
            else:
                transport.write(response)
            if not parsed.keep_alive:
                self.buffer = b""
                transport.close()
                return
        self.buffer = b""

    def _parse(self, head: bytes) -> _Parsed | None:
        """The request, if its head is plain (see the module docstring); else None."""
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
        http10 = version == b"HTTP/1.0"
        if len(hosts) > 1 or (not http10 and not hosts):
            return None
        host = hosts[0] if hosts else ""
        if not VALID_HOST.fullmatch(host):  # the rule proxy/app.py applies before the engine
            return None
        path, _, query = target.partition(b"?")
        if path == self.ctx.health_path:
            return None
        connection = headers.get("Connection", "").lower()
        # RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
        keep_alive = "keep-alive" in connection if http10 else "close" not in connection
        request = ClientRequest(
            method=method.decode(),
            scheme="http",
            host=host,
            path=path.decode("ascii"),
            query=query.decode("ascii"),
            headers=CIMultiDictProxy(headers),  # read-only: the request may be reused (parsed_heads)
            remote=self.remote,
        )
        return _Parsed(request, http10, keep_alive)

    def _hit(self, parsed: _Parsed) -> tuple[bytes, bytes] | bool:
        """(head, body to send after it or b"") for a plain fresh hit; else Engine.fast_hit's verdict."""
        request = parsed.request
        hit = self.ctx.engine.fast_hit(request)
        if not isinstance(hit, tuple):
            return hit
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
        if not parsed.keep_alive:
            tail += b"Connection: close\r\n"
        elif parsed.http10:
            tail += b"Connection: keep-alive\r\n"
        body = entry.body if request.method == "GET" else b""
        if len(body) <= _COPY_LIMIT:
            response, body = b"".join((entry.wire_head, tail, b"\r\n", body)), b""
        else:
            response = b"".join((entry.wire_head, tail, b"\r\n"))
        if self.ctx.access_log:
            self._log(parsed, entry.status, f"{self.ctx.cfg.name};hit;ttl={int(ttl)};detail={tier}")
        return response, body

    def _answered(self, task: asyncio.Task[None]) -> None:
        # _answer clears self.task itself; a task cancelled before it ever ran cannot.
        if self.task is task:
            self.task = None

    async def _answer(self, parsed: _Parsed, known_miss: bool) -> None:
        """Answer one request through the engine, write it, then go on with the connection."""
        ctx = self.ctx
        try:
            reply = await respond(ctx.engine, ctx.cfg, parsed.request, known_miss=known_miss)
            keep_alive = await self._write_reply(reply, parsed)
        except asyncio.CancelledError:
            raise  # the client went away or the server is shutting down (_answered clears self.task)
        except Exception:
            log.exception("error writing %s %s", parsed.request.method, parsed.request.path_qs)
            keep_alive = False
        self.task = None
        transport = self.transport
        if transport is None:
            return
        if not keep_alive:
            self.buffer = b""
            transport.close()
            return
        self.last_activity = self.loop.time()
        if not self.writing_paused:
            transport.resume_reading()
        buf, self.buffer = self.buffer, b""
        if buf:
            self._process(buf)

    async def _write_reply(self, reply: Reply, parsed: _Parsed) -> bool:
        """Write reply; whether the connection may carry another request."""
        transport = self.transport
        if transport is None:
            return False
        method = parsed.request.method
        try:
            head, framing, keep_alive = reply_head(reply, method, parsed.http10, parsed.keep_alive)
        except HeaderInjection:
            log.error("refusing a reply to %s %s: CR or LF in a header", method, parsed.request.path_qs)
            transport.write(_INTERNAL_ERROR)
            return False
        body = reply.body
        if self.ctx.access_log:
            self._log(parsed, reply.status, own_member(reply))
        if isinstance(body, bytes):
            if framing is not Framing.LENGTH or not body:
                transport.write(head)
            elif len(body) <= _COPY_LIMIT:
                transport.write(head + body)
            else:
                transport.writelines((head, body))
            return keep_alive
        transport.write(head)
        try:
            async for data in body:
                if not data or framing is Framing.NONE:
                    continue
                transport.write(chunk(data) if framing is Framing.CHUNKED else data)
                if self.writing_paused:
                    await self._drain()
        except UpstreamError as exc:
            # The origin broke off mid-body: the client must see a broken response,
            # not a short one that looks complete.
            log.warning("origin body broke off for %s %s: %s", method, parsed.request.path_qs, exc.reason)
            transport.abort()
            return False
        if framing is Framing.CHUNKED:
            transport.write(LAST_CHUNK)
        return keep_alive

    async def _drain(self) -> None:
        """Wait until the client has read enough of what was written (flow control)."""
        if not self.writing_paused or self.transport is None:
            return
        waiter = self.loop.create_future()
        self.drain_waiter = waiter
        await waiter

    def _log(self, parsed: _Parsed, status: int, cache_status: str) -> None:
        request = parsed.request
        seconds = time.perf_counter() - parsed.started
        log_access(self.ctx.cfg, self.remote, request.method, request.path_qs, status, cache_status, seconds)

    def _hand_off(self, unanswered: bytes) -> None:
        """Give the connection, and every byte not yet answered, to aiohttp for good."""
        transport = self.transport
        self._stop_timer()
        self.ctx.connections.discard(self)
        self.buffer = b""
        self.transport = None
        if transport is None or transport.is_closing():
            return
        protocol = self.ctx.aiohttp_protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if unanswered:
            protocol.data_received(unanswered)
