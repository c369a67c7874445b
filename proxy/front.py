"""The public HTTP/1.1 front: every client connection, every request, one way through.

What must live here: reading requests off the wire and writing answers back
(framing, pipelining, flow control, timeouts, limits). Nothing here decides
anything about caching: each request goes

    admission.admit  ->  engine.lookup  ->  a Delivery at once (the hit writer, proxy.h1)
                                        ->  or: await engine.complete(lookup) -> Delivery | Reply

Request heads are parsed by httptools (llhttp, in C). The header fields stay
the bytes they arrived as; the few a lookup reads are picked out in one pass
(proxy.messages.ClientRequest.read), and the multidict of all of them is built only
when something needs it. A lookup that delivers a stored response is written
at once, without a task or an await; anything else runs as one task per
connection, and later pipelined requests wait (parsed, bounded) behind it.

Bodies: a request body is handed to the engine as a stream with flow control
(reading pauses while the body waits to be forwarded); the body of a GET or
HEAD is read and dropped, and so are its framing fields. Responses stream
with flow control too (writing waits while the client reads slower).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from email.utils import formatdate
from time import perf_counter
from typing import cast

import httptools
from multidict import CIMultiDictProxy

from proxy import admission
from proxy.cache_status import CacheStatus
from proxy.config import Config
from proxy.h1 import (
    LAST_CHUNK,
    Framing,
    HeaderInjection,
    chunk,
    delivery_head,
    interim_head,
    reply_head,
    via_line,
)
from proxy.log_output import log_access
from proxy.messages import Answer, ClientRequest, Delivery, Reply, error_reply
from proxy.node import Node
from proxy.observe import OriginTimer, Recorder, origin_timer
from proxy.origin import InterimSink, RequestBodyBroken, UpstreamError
from proxy.send_queue import unsent
from proxy.warn import RateLimitedWarning

log = logging.getLogger("proxy.front")

# Limits on a request head, whatever the TCP split (nginx's large_client_header_buffers,
# aiohttp's max_field_size / max_headers): a longer head or field, or more fields, is a 431.
MAX_HEAD = 64 * 1024
MAX_FIELD = 16 * 1024
MAX_FIELDS = 128
# Bytes fed to the parser at once: between two slices the front can stop parsing when the
# queue of parsed, unanswered requests is long, so a pipelining client cannot queue more
# than about a slice's worth of requests.
FEED_SLICE = 16 * 1024
# After an error answer, what the client still sends is read and dropped this long before closing.
LINGER_SECONDS = 2.0
MAX_QUEUED = 32  # parsed requests waiting behind the one being answered; then reading pauses
BODY_HIGH_WATER = 256 * 1024  # request body bytes buffered before reading pauses
_COPY_LIMIT = 16 * 1024  # smaller bodies are joined to the head: one buffer, one send

_INTERNAL_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Cache-Control: no-store\r\nContent-Length: 15\r\nConnection: close\r\n\r\ninternal error\n"
)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Cache-Control: no-store\r\nRetry-After: 1\r\nContent-Length: 21\r\nConnection: close\r\n\r\n"
    b"too many connections\n"
)
# httptools raises HttpParserUpgrade (not an HttpParserError) after the head of an upgrade request.
_PARSE_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)
_ABSOLUTE = (b"http://", b"https://")
_KIND_STATUS = {"not-modified": 304, "partial": 206, "unsatisfiable": 416}
_REFUSED = CacheStatus(detail="internal error")
_REFUSED_CONNECTION = CacheStatus(detail="too many connections")


@dataclass(slots=True)
class FrontContext:
    """What every connection of one listener shares."""

    node: Node
    cfg: Config
    via: bytes
    access_log: bool
    # Every open connection (for shutdown), and whether the listener is draining:
    # a draining connection closes after the answer in progress.
    connections: set[Connection] = field(default_factory=set)
    draining: bool = False
    per_ip: dict[str, int] = field(default_factory=dict)  # open connections per client address
    recorder: Recorder = field(init=False)  # the node's traffic counters (proxy/observe.py)
    # Malformed requests: one concise line now and then, however many arrive (issue 12 row 14).
    warn_bad_request: RateLimitedWarning = field(init=False)

    def __post_init__(self) -> None:
        self.recorder = self.node.recorder
        self.warn_bad_request = RateLimitedWarning(log)

    def admit(self, conn: Connection) -> bool:
        """Count a new connection in; False when a limit (server.max_connections*) refuses it."""
        server = self.cfg.server
        if len(self.connections) >= server.max_connections:
            return False
        if server.max_connections_per_ip and self.per_ip.get(conn.remote, 0) >= server.max_connections_per_ip:
            return False
        self.connections.add(conn)
        self.per_ip[conn.remote] = self.per_ip.get(conn.remote, 0) + 1
        return True

    def release(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            left = self.per_ip.get(conn.remote, 1) - 1
            if left > 0:
                self.per_ip[conn.remote] = left
            else:
                self.per_ip.pop(conn.remote, None)

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections now; give those mid-request up to timeout seconds to finish."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            busy = [c.task for c in self.connections if c.task is not None and not c.task.done()]
            for conn in list(self.connections):
                if not conn.busy() and conn.transport is not None:
                    conn.transport.close()
            if not busy or loop.time() >= deadline:
                break
            await asyncio.wait(busy, timeout=deadline - loop.time())
        for conn in list(self.connections):
            if conn.task is not None:
                conn.task.cancel()
            if conn.transport is not None:
                conn.transport.abort()


class _BadRequest(Exception):
    """A request the front answers with an error and then closes the connection for."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestBody:
    """A request body from the parser to the engine, with flow control on the connection."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_limit",
        "_size",
        "_waiter",
        "expect_continue",
        "owner",
        "received",
    )

    def __init__(self, conn: Connection, owner: ClientRequest) -> None:
        self._conn = conn
        self.owner = owner  # the request it is the body of
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.expect_continue = owner.expect_continue
        self.received = 0
        self._limit = conn.ctx.cfg.server.max_body_size

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self._limit and self.received > self._limit:
            # A chunked body grown past server.max_body_size (a Content-Length over it was
            # refused at the head): raised in the parser's callback, which stops it.
            raise _BadRequest(413, "request body too large")
        self._chunks.append(data)
        self._size += len(data)
        if self._size > BODY_HIGH_WATER:
            self._conn.pause_for_body()
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def abort(self, error: BaseException) -> None:
        self._error = error
        self._wake()

    def drop(self) -> None:
        """Nobody will read the rest (its request was answered without it): free what is held."""
        self._chunks.clear()
        self._size = 0
        self.abort(RequestBodyBroken("request answered without its body"))

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.expect_continue:
            self.expect_continue = False
            self._conn.write_continue()
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._size -= len(data)
                if self._size <= BODY_HIGH_WATER // 2:
                    self._conn.resume_for_body()
                yield data
                continue
            if self._error is not None:
                raise self._error
            if self._done:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter


class _Trailers(list[tuple[bytes, bytes]]):
    """Where on_header puts the trailer fields of a chunked body (RFC 9112 §7.1.2): dropped, never
    merged into the request's header section (RFC 9110 §6.5.2), bounded by the head's size limit.
    A list, so on_header stays one append for the head's fields (the hit path)."""

    size = 0

    def append(self, field: tuple[bytes, bytes]) -> None:
        self.size += len(field[0]) + len(field[1])
        if self.size > MAX_HEAD:
            raise _BadRequest(431, "request trailer section too large")


_Queued = ClientRequest | _BadRequest


class _UpgradeBodyRead(Exception):
    """Raised from on_message_complete at the end of an upgrade request's body: llhttp stops there,
    and the front reads nothing after it (what would follow is the other protocol)."""


# Connection.upgrade: reading the body of a request with Upgrade (RFC 9110 §7.8), which httptools
# tells llhttp to skip (its on_headers_complete returns 1 for an upgrade), ending the message at
# the head. Not an upgrade (0, nearly always); its head parsed, its body not yet; the body's
# framing being fed to a fresh parser; its body being read by that parser.
_UPGRADE_HEAD, _UPGRADE_FRAMING, _UPGRADE_BODY = 1, 2, 3


class Connection(asyncio.Protocol):
    """One client connection: requests parsed, looked up and answered in order."""

    # CPython 3.11 keeps an object's attributes inline (and its attribute reads fast) up to 29
    # of them; a 30th gives every instance a plain dict, and every `self.x` on the hit path
    # slows: +2.7 % instructions per hit (bench/instructions.py) when the upgrade state added
    # two. tests/functional/test_front.py holds __init__ to this many.
    MAX_ATTRIBUTES = 29
    # Set only while an upgrade request's body waits to be read (_request, _read_upgrade_body),
    # so as not to be one more attribute of every connection.
    upgrade_framing: bytes

    def __init__(self, ctx: FrontContext) -> None:
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.remote = ""
        # The request head being parsed.
        self.url = b""
        # The head's fields as on_header gets them; after the head, `trailers`, which drops them.
        self.raw: list[tuple[bytes, bytes]] = []
        self.trailers = _Trailers()
        self.head_bytes = 0  # bytes received since the current head began (None-free: 0 = none)
        self.head_started = 0.0  # loop time the current head began; 0.0 between requests
        self.body: RequestBody | None = None  # the body being received, when it is forwarded
        self.discard_body = False  # the body being received belongs to a GET / HEAD: dropped
        # Parsed requests not answered yet, and the one being answered asynchronously.
        self.queue: deque[_Queued] = deque()
        self.task: asyncio.Task[None] | None = None
        self.unparsed = b""  # bytes received while parsing was stopped (see FEED_SLICE)
        self.stopped = False  # no more requests are read on this connection (error, upgrade)
        self.reading_paused = False
        self.body_paused = False
        self.writing_paused = False
        # While writing is paused: since when the client has taken nothing (send_timeout counts
        # from it), and what the transport held then (less later means the client read some).
        self.write_paused_at = 0.0
        self.write_buffered = 0
        # A request whose body broke off (malformed, or too slow): answered with this error.
        self.body_failed: tuple[ClientRequest, _BadRequest] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.last_activity = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.started = 0.0  # perf_counter() of the request being answered (latency, access log)
        # The time the request being answered in a task waits for the origin (observe.origin_timer).
        self.origin_wait: OriginTimer | None = None
        # The request being answered whose final head is not written yet: the origin's 1xx
        # responses to its fetch go out ahead of it (RFC 9110 §15.2).
        self.interim_open: ClientRequest | None = None
        # An upgrade request's body, which llhttp skips (see _UPGRADE_HEAD): the state (its
        # framing, a head with its Content-Length or Transfer-Encoding, is `upgrade_framing`).
        self.upgrade = 0
        # No more attributes here: see MAX_ATTRIBUTES.

    # ------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if peer else ""
        if not self.ctx.admit(self):
            # RFC 9110 §15.6.4: overloaded; as nginx's limit_conn answers.
            self.stopped = True
            self.transport.write(_TOO_MANY)
            self.ctx.recorder.answered(_REFUSED_CONNECTION, 503, len(_TOO_MANY), 0.0)  # no request: 0 s
            self.transport.close()
            self.transport = None
            return
        self.last_activity = self.loop.time()
        server = self.ctx.cfg.server
        self.timer = self.loop.call_later(
            min(server.keepalive_timeout, server.header_timeout), self._check_timeouts
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None
        self.ctx.release(self)
        self._wake_writer()
        if self.body is not None:
            self.body.abort(RequestBodyBroken("client closed the connection"))
        if self.task is not None:
            self.task.cancel()  # nobody to answer any more (a shared fetch goes on: see Engine._fetch)

    def busy(self) -> bool:
        return bool(self.task is not None or self.queue or self.head_started)

    def pause_writing(self) -> None:
        # The client reads slower than we answer: stop answering (and so reading) until it catches up.
        self.writing_paused = True
        self.write_paused_at = self.loop.time()
        transport = self.transport
        self.write_buffered = unsent(transport) if transport is not None else 0
        self._check_within(self.ctx.cfg.server.send_timeout)

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()
        if self.task is None:
            self._answer_queued()

    def _wake_writer(self) -> None:
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_timeouts(self) -> None:
        transport = self.transport
        if transport is None:
            return
        now = self.loop.time()
        server = self.ctx.cfg.server
        if self.writing_paused:
            buffered = unsent(transport)
            if buffered < self.write_buffered:
                # The client took some since the last look (nothing is written while paused):
                # slow, not stalled. send_timeout bounds a time without progress.
                self.write_paused_at = now
                self.write_buffered = buffered
            paused_for = now - self.write_paused_at
            if paused_for >= server.send_timeout:
                # The client stopped reading what it asked for (nginx: send_timeout): drop the
                # connection and what waits for it, the origin response it was reading included.
                self.ctx.warn_bad_request(
                    "client %s stopped reading for %.0f s: closed", self.remote, paused_for
                )
                transport.abort()
                return
        if self.head_started and now - self.head_started >= server.header_timeout and self.task is None:
            # RFC 9110 §15.5.9: the client took too long to send its request head.
            self._write_final(error_reply(408, "request head timeout"))
            return
        idle_for = now - self.last_activity
        receiving = (self.body is not None or self.discard_body) and not self.body_paused
        if receiving and idle_for >= server.body_timeout:
            # RFC 9110 §15.5.9: the body stopped arriving (nginx: client_body_timeout); its
            # request (forwarding it, perhaps) is answered 408 and the connection closes.
            self._stop(_BadRequest(408, "request body timeout"))
            return
        if idle_for >= server.keepalive_timeout and not self.busy() and not self.writing_paused:
            transport.close()
            return
        wait = server.header_timeout  # a head may begin at any time
        if not self.busy():
            wait = min(wait, server.keepalive_timeout - idle_for)
        if receiving:
            wait = min(wait, server.body_timeout - idle_for)
        if self.writing_paused:
            wait = min(wait, server.send_timeout - (now - self.write_paused_at))
        self.timer = self.loop.call_later(max(wait, 0.05), self._check_timeouts)

    def _check_within(self, seconds: float) -> None:
        """Have _check_timeouts run within `seconds` (a body or a paused write began: its timeout
        may be shorter than the wait the timer was set for)."""
        timer = self.timer
        if timer is None or self.stopped or timer.when() <= self.loop.time() + seconds:
            return
        timer.cancel()
        self.timer = self.loop.call_later(seconds, self._check_timeouts)

    # ---------------------------------------------------------------- reading

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.stopped:
            return
        if self.unparsed or self.reading_paused:
            self.unparsed += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse data, a slice at a time, while the queue of unanswered requests is short."""
        if len(data) <= FEED_SLICE and not self.head_started and not self.body_paused and not self.queue:
            # The common case, a read of whole request heads: one call, no slicing.
            try:
                self.parser.feed_data(data)
            except _PARSE_ERRORS as exc:
                rest = self._parse_failed(exc, data, b"")
            else:
                if not self.stopped:
                    self._answer_queued()
                return
            if rest is not None:
                self._feed(rest)  # out of the except: an error in it must not chain onto this one
            return
        view = memoryview(data) if len(data) > FEED_SLICE else None
        offset = 0
        while offset < len(data):
            if len(self.queue) >= MAX_QUEUED or self.body_paused:
                self.unparsed = bytes(data[offset:])
                self._pause_reading()
                # Still answer what is queued (issue 12 row 4): returning here left a read of
                # more than a slice of pipelined requests parsed, unanswered and unread for good.
                # Answering drains the queue, and _answer_queued resumes reading behind it.
                break
            piece = view[offset : offset + FEED_SLICE] if view is not None else data
            offset += len(piece)
            if self.head_started:
                self.head_bytes += len(piece)
                if self.head_bytes > MAX_HEAD:
                    self._stop(_BadRequest(431, "request header section too large"))
                    return
            try:
                self.parser.feed_data(piece)
            except _PARSE_ERRORS as exc:
                rest = self._parse_failed(exc, piece, data[offset:])
            else:
                if self.stopped:
                    return
                continue
            if rest is not None:
                self._feed(rest)
            return
        self._answer_queued()

    def _parse_failed(self, exc: Exception, fed: bytes | memoryview, unfed: bytes) -> bytes | None:
        """The parser stopped on `fed` (`unfed`: what was received after it, not given to it yet).

        Returns what the caller parses next (with a new parser: _read_upgrade_body), or None."""
        if isinstance(exc, httptools.HttpParserInvalidMethodError):
            method = _unknown_method(bytes(fed))
            if method is not None:
                # RFC 9110 §9.1: a method the server does not recognise is a 501, not a malformed
                # request. (llhttp knows a fixed list of methods and stops at any other.)
                self._stop(_BadRequest(501, f"method {method} not implemented"))
                return None
        if isinstance(exc, httptools.HttpParserUpgrade):
            # RFC 9110 §7.8: the upgrade is ignored; the request is answered as it is and
            # the connection closed, since what follows its head (and body) is another protocol.
            if self.upgrade == _UPGRADE_HEAD and not self.stopped:
                self._read_upgrade_body()
                return bytes(fed[int(exc.args[0]) :]) + unfed
            self.upgrade = 0
            self._stop(None)
            return None
        if isinstance(exc.__context__, _UpgradeBodyRead):
            self._stop(None)  # an upgrade request's body is read: answer it, then close
            return None
        error = exc.__context__ if isinstance(exc.__context__, _BadRequest) else None
        self._stop(error or _BadRequest(400, f"malformed request ({_parser_reason(exc)})"))
        return None

    def _read_upgrade_body(self) -> None:
        """Have the body of an upgrade request, which follows, read as any other body.

        httptools has llhttp skip it and end the message at the head, so the request would go
        on with its Content-Length and none of its bytes: the origin would take the start of
        the next request sent on that pooled connection as the rest of this one's body (one
        client's bytes in another's request), or, chunked, get an empty body. Clients send such
        requests (`Upgrade: h2c` from curl --http2 or Java's HttpClient, with their POST's body:
        RFC 7540 §3.2 sends it whole before any HTTP/2 frame). A fresh parser is given the
        body's framing as the head of a request whose callbacks are ignored, then the bytes
        after the head (the caller feeds them): the body reaches the request it belongs to,
        framed by llhttp as always.
        """
        framing, self.upgrade_framing = self.upgrade_framing, b""
        self.upgrade = _UPGRADE_FRAMING
        self.parser = httptools.HttpRequestParser(self)
        self.parser.feed_data(framing)  # on_headers_complete moves on to _UPGRADE_BODY

    def _stop(self, error: _BadRequest | None) -> None:
        """Read no more requests; answer what is queued (then the error, if any) and close."""
        self.stopped = True
        self.unparsed = b""
        body = self.body
        if body is not None:
            # Its request is answered with the error, not with what the origin makes of a
            # body that broke off (a 502 would blame the origin for the client's bytes).
            if error is not None:
                self.body_failed = (body.owner, error)
            body.abort(RequestBodyBroken("request body was malformed or too slow"))
            self.body = None
        if error is not None:
            self.queue.append(error)
        self._answer_queued()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and not self.body_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.unparsed and not self.body_paused and len(self.queue) < MAX_QUEUED:
            data, self.unparsed = self.unparsed, b""
            self.last_activity = self.loop.time()  # taken in now: a head in it starts its clock now
            self._feed(data)

    def pause_for_body(self) -> None:
        self.body_paused = True
        self._pause_reading()

    def resume_for_body(self) -> None:
        if self.body_paused:
            self.body_paused = False
            self._resume_reading()

    def write_continue(self) -> None:
        if self.transport is not None:
            self.transport.write(_CONTINUE)

    # ------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.raw = []
        self.head_bytes = 0
        # The time of the read that brought it (data_received, or _resume_reading for data read
        # earlier): one clock read per read rather than per request.
        self.head_started = self.last_activity

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_started = 0.0
        if self.upgrade:  # the framing head of an upgrade request's body: no request of its own
            self.upgrade = _UPGRADE_BODY
            self.raw = self.trailers
            return
        request = self._request()  # raises _BadRequest: httptools stops and reports it
        self.raw = self.trailers  # the request keeps the list of its fields; trailers go elsewhere
        self.queue.append(request)
        if len(self.queue) == 1 and self.task is None and request.body is not None:
            self._answer_queued()  # start forwarding a body as it arrives

    def on_body(self, data: bytes) -> None:
        if self.body is not None:
            self.body.feed(data)

    def on_message_complete(self) -> None:
        upgrade = self.upgrade
        if upgrade == _UPGRADE_HEAD:
            return  # llhttp ends an upgrade request at its head: its body is read next
        if self.trailers.size:
            self.trailers.size = 0  # the limit is per request
        if self.body is not None:
            self.body.finish()
            self.body = None
        self.discard_body = False
        if upgrade:
            self.upgrade = 0
            raise _UpgradeBodyRead  # llhttp stops here; _parse_failed answers and closes

    def _request(self) -> ClientRequest:
        """The ClientRequest for the head just parsed; _BadRequest when it is not one we serve."""
        parser = self.parser
        version = parser.get_http_version()
        if version == "1.1":
            http10 = False
        elif version == "1.0":
            http10 = True
        elif version == "0.9":
            # A request line without a version (HTTP/0.9's simple request): not an HTTP/1.x
            # request line at all, so malformed (RFC 9112 §3), not a version we refuse.
            raise _BadRequest(400, "malformed request line (no HTTP version)")
        else:
            raise _BadRequest(505, f"HTTP/{version} is not supported")
        raw = self.raw
        if len(raw) > MAX_FIELDS:
            raise _BadRequest(431, "too many header fields")
        if self.head_bytes:  # a head longer than one read: its fields may be too
            for name, value in raw:
                if len(name) + len(value) > MAX_FIELD:
                    raise _BadRequest(431, "header field too large")
        url = self.url
        if url[:1] == b"/":
            if not url.isascii() or b"#" in url:
                raise _BadRequest(400, "invalid request target")
            path, _, query = url.decode("ascii").partition("?")
            absolute = None
        elif url.startswith(_ABSOLUTE):
            absolute = _absolute_target(url)
            path, query = absolute[2], absolute[3]
        else:
            raise _BadRequest(400, "invalid request target")
        request = ClientRequest.read(
            parser.get_method().decode("ascii"), path, query, raw, self.remote, http10
        )
        if request.hosts > 1:
            raise _BadRequest(400, "more than one Host header")
        if absolute is not None:
            # RFC 9112 §3.2.2: an absolute-form target's authority replaces Host. Its scheme does
            # not replace the connection's: "https://" sent over plain HTTP is no TLS, and would
            # otherwise reach the origin as X-Forwarded-Proto: https.
            request.host = absolute[1]
        self.body = None
        if request.body_follows:
            limit = self.ctx.cfg.server.max_body_size
            if limit and _declared_length(raw) > limit:
                # RFC 9110 §15.5.14: refused before a byte of it is read, the origin not asked.
                raise _BadRequest(413, "request body too large")
            self._check_within(self.ctx.cfg.server.body_timeout)
            for name, value in raw:
                if name.lower() == b"transfer-encoding":
                    if value.strip(b" \t").lower() != b"chunked":
                        # RFC 9112 §6.1: llhttp takes "gzip, chunked", but no coding but chunked is
                        # understood here; forwarding it as plain chunked would lose the gzip.
                        raise _BadRequest(501, "transfer coding not implemented")
                    if http10:
                        # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
                        # framing; the connection MUST close after the answer (a 1.0 peer may have
                        # meant the bytes otherwise, whatever keep-alive it asked for).
                        request.keep_alive = False
            if request.method in ("GET", "HEAD"):
                self.discard_body = True  # read and dropped, with its framing fields (see Fetcher)
                if request.expect_continue:
                    # No 100 (Continue) is sent for a body nobody reads, so the client may not send
                    # it after the answer (RFC 9110 §10.1.1): the connection closes after the
                    # answer, or the next request's first bytes would be dropped as that body.
                    request.keep_alive = False
            else:
                body = self.body = RequestBody(self, request)
                request.body = body.chunks()
            if parser.should_upgrade():
                framing = _body_framing(raw)
                if framing:  # (Content-Length: 0 has no body to skip)
                    self.upgrade, self.upgrade_framing = _UPGRADE_HEAD, framing
        return request

    # -------------------------------------------------------------- answering

    def _answer_queued(self) -> None:
        """Answer queued requests in order while nothing is in flight and the client keeps up."""
        queue = self.queue
        while queue and self.task is None and not self.writing_paused and self.transport is not None:
            item = queue.popleft()
            if isinstance(item, _BadRequest):
                self.ctx.warn_bad_request("bad request from %s: %d %s", self.remote, item.status, item.reason)
                self._write_final(error_reply(item.status, item.reason))
                return
            if not self._answer(item):
                if self.task is not None and self.body is not None and len(queue) < MAX_QUEUED:
                    # A body still arriving while a task runs (the running request's own,
                    # perhaps): reading goes on, or that request waits for bytes nobody reads.
                    self._resume_reading()
                return
        if self.transport is None:
            return
        if self.stopped and not queue and self.task is None and not self.discard_body:
            # (Dropping an unread body, the answer's writer began lingering instead: a close with
            # the client's bytes unread resets, and a reset loses what the client has not read.)
            self.transport.close()
        elif len(queue) < MAX_QUEUED and self.task is None:
            self._resume_reading()

    def _answer(self, req: ClientRequest) -> bool:
        """Answer req now if it can be (a delivery, the node's own answer); else start its task.

        False when the connection cannot go on at once (a task runs, or it closed).
        """
        ctx = self.ctx
        self.started = perf_counter()
        try:
            own = admission.admit(req, ctx.cfg)
            if own is not None:
                self._drop_unread_body(req)
                return self._write_answer(req, own)
            later = admission.deferred(req, ctx.cfg, ctx.node)
            if later is not None:
                self._start(req, later)
                return False
            engine = ctx.node.engine
            lookup = engine.lookup(req)
        except Exception:
            log.exception("error answering %s %s", req.method, req.path_qs)
            return self._write_answer(req, error_reply(500, "internal error"))
        if lookup.answer is not None:
            return self._write_answer(req, lookup.answer)
        self.interim_open = req
        self._start(req, engine.complete(lookup, self._interim_sink(req)))
        return False

    def _interim_sink(self, req: ClientRequest) -> InterimSink | None:
        """Where the origin's 1xx responses for req go: this connection; never HTTP/1.0 (RFC 9110 §15.2)."""
        if req.http10:
            return None

        def forward(status: int, reason: str, headers: CIMultiDictProxy[str]) -> None:
            self._write_interim(req, status, reason, headers)

        return forward

    def _write_interim(
        self, req: ClientRequest, status: int, reason: str, headers: CIMultiDictProxy[str]
    ) -> None:
        transport = self.transport
        if transport is None or self.interim_open is not req:
            return  # the final head went out already, or the client is gone
        if status == 100 and req.expect_continue:
            return  # the front answers Expect: 100-continue itself (RequestBody)
        try:
            transport.write(interim_head(status, reason, headers, self.ctx.via))
        except HeaderInjection:
            log.warning("dropping a %d interim response with CR or LF in a field", status)

    def _start(self, req: ClientRequest, work: Awaitable[Answer]) -> None:
        context = None
        if self.ctx.access_log:
            # The task's context holds a timer of its own: the origin client adds its waits to
            # it, for the access line. Without the log nothing reads it, and none is set.
            context = contextvars.copy_context()
            wait = self.origin_wait = OriginTimer()
            context.run(origin_timer.set, wait)
        task = self.task = self.loop.create_task(self._complete(req, work), context=context)
        task.add_done_callback(self._completed)

    async def _complete(self, req: ClientRequest, work: Awaitable[Answer]) -> None:
        try:
            try:
                answer = await work
            except UpstreamError as exc:
                answer = error_reply(exc.status_hint, exc.reason)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("error answering %s %s", req.method, req.path_qs)
                answer = error_reply(500, "internal error")
            failed = self.body_failed
            if failed is not None and failed[0] is req:
                # Its body broke off (malformed, or too slow): the client's error, then close.
                if isinstance(answer, Reply):
                    await answer.drop_body()  # the origin's answer nobody will read
                self._write_final(error_reply(failed[1].status, failed[1].reason))
                return
            self._drop_unread_body(req)
            if isinstance(answer, Delivery):
                self._write_answer(req, answer)
            else:
                await self._write_reply(req, answer)
        finally:
            self.task = None
            self.interim_open = None
            self.origin_wait = None  # a later hit on this connection waited for nothing
        if self.transport is not None:
            self.last_activity = self.loop.time()
            self._answer_queued()

    def _completed(self, task: asyncio.Task[None]) -> None:
        # _complete clears self.task itself; a task cancelled before it ever ran cannot.
        if self.task is task:
            self.task = None

    def _drop_unread_body(self, req: ClientRequest) -> None:
        """req is answered while its body is still arriving, unread (the node answered it itself,
        or the origin could not be asked): the rest is dropped as it comes and the connection
        closes after the answer, which would otherwise wait for a body nobody reads."""
        body = self.body
        if body is None or body.owner is not req:
            return
        body.drop()
        self.body = None
        self.discard_body = True
        self.stopped = True  # no keep-alive: the rest of the body is not worth reading through
        # Nothing more is parsed (the answer must go out first); closing lingers, reading and
        # dropping what the client still sends (_close_after_answer).
        self.body_paused = False
        self.unparsed = b""

    def _write_answer(self, req: ClientRequest, answer: Answer) -> bool:
        """Write a delivery or a complete reply at once; whether the connection goes on."""
        self.interim_open = None
        transport = self.transport
        if transport is None:
            return False
        ctx = self.ctx
        keep_alive = req.keep_alive and not ctx.draining and (not self.stopped or self._error_follows())
        if isinstance(answer, Delivery):
            member = ctx.node.members.of(answer.cache_status)
            head, body = delivery_head(answer, member, ctx.via, req.method, req.http10, keep_alive)
            if len(body) > _COPY_LIMIT:
                transport.writelines((head, body))  # one writev, no copy of a large body
            else:
                transport.write(head + body if body else head)
            kind = answer.kind
            status = answer.entry.status if kind == "whole" else _KIND_STATUS[kind]
            written = len(head) + len(body)
        else:
            if not isinstance(answer.body, bytes):
                raise TypeError("a streamed reply is written by _write_reply")
            member = ctx.node.members.of(answer.cache_status)
            try:
                head, framing, keep_alive = reply_head(
                    answer, member, ctx.via, req.method, req.http10, keep_alive, date_line()
                )
            except HeaderInjection:
                return self._refuse(req)
            body = answer.body if framing is Framing.LENGTH else b""
            transport.write(head + body if len(body) <= _COPY_LIMIT else head)
            if len(body) > _COPY_LIMIT:
                transport.write(body)
            status = answer.status
            written = len(head) + len(body)
        # _finished, inline: this is the hit path.
        seconds = perf_counter() - self.started
        outcome = ctx.recorder.answered(answer.cache_status, status, written, seconds)
        if ctx.access_log:
            self._log(req, status, member, outcome, written, seconds)
        if not keep_alive:
            self._close_after_answer(transport)
            return False
        return True

    async def _write_reply(self, req: ClientRequest, reply: Reply) -> None:
        """Write a reply whose body may be a stream, with flow control."""
        if isinstance(reply.body, bytes):
            self._write_answer(req, reply)
            return
        self.interim_open = None
        transport = self.transport
        if transport is None:
            return
        ctx = self.ctx
        keep_alive = req.keep_alive and not ctx.draining and (not self.stopped or self._error_follows())
        member = ctx.node.members.of(reply.cache_status)
        try:
            head, framing, keep_alive = reply_head(
                reply, member, ctx.via, req.method, req.http10, keep_alive, date_line()
            )
        except HeaderInjection:
            self._refuse(req)
            return
        transport.write(head)
        written = len(head)
        try:
            async for data in reply.body:
                if not data or framing is Framing.NONE:
                    continue
                if self.transport is None:
                    break
                transport.write(chunk(data) if framing is Framing.CHUNKED else data)
                written += len(data)
                if self.writing_paused:
                    await self._drain()
        except UpstreamError as exc:
            # The origin broke off mid-body: the client must see a broken response,
            # not a short one that looks complete.
            log.warning("origin body broke off for %s %s: %s", req.method, req.path_qs, exc.reason)
            transport.abort()
            return
        finally:
            # Counted (and logged) once the body is over, however it ended.
            self._finished(req, reply.status, reply.cache_status, member, written)
        if framing is Framing.CHUNKED and self.transport is not None:
            transport.write(LAST_CHUNK)
        if not keep_alive and self.transport is not None:
            self._close_after_answer(transport)

    def _error_follows(self) -> bool:
        """Whether a stopped connection still has an error answer queued behind this one (a
        malformed request pipelined after good ones): the answers before it keep the connection
        open for it, or it would be cleared unwritten and the client never learn why it closed."""
        queue = self.queue
        return bool(queue) and isinstance(queue[-1], _BadRequest)

    def _close_after_answer(self, transport: asyncio.Transport) -> None:
        self.stopped = True
        self.queue.clear()
        if self.discard_body:
            self._linger(transport)  # the client may still be sending the body: no reset
        else:
            transport.close()

    def _write_final(self, reply: Reply) -> None:
        """An error answer after which the connection closes (malformed input, timeouts)."""
        transport = self.transport
        if transport is None:
            return
        member = self.ctx.node.members.of(reply.cache_status)
        head, _, _ = reply_head(reply, member, self.ctx.via, "GET", False, False, date_line())
        assert isinstance(reply.body, bytes)
        transport.write(head + reply.body)
        # No request to time (a malformed head, a head that never ended): counted with 0 s.
        self.ctx.recorder.answered(reply.cache_status, reply.status, len(head) + len(reply.body), 0.0)
        self.stopped = True
        self.queue.clear()
        self._linger(transport)

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close after an error answer without losing it (nginx's lingering_close).

        A client still sending (the rest of an oversized head, a pipelined request)
        would get a reset from a plain close, and a reset discards the answer unread
        in its receive buffer. So: end our side, read on and drop what comes for up
        to LINGER_SECONDS, then close.
        """
        if not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()  # after what is buffered: the answer goes out, then our FIN
        except OSError:
            transport.close()
            return
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(LINGER_SECONDS, transport.close)

    def _refuse(self, req: ClientRequest) -> bool:
        log.error("refusing a reply to %s %s: CR or LF in a header", req.method, req.path_qs)
        if self.transport is not None:
            self.transport.write(_INTERNAL_ERROR)
            self.transport.close()
        self._finished(req, 500, _REFUSED, b"", len(_INTERNAL_ERROR))
        self.stopped = True
        return False

    async def _drain(self) -> None:
        """Wait until the client has read enough of what was written (flow control)."""
        if not self.writing_paused or self.transport is None:
            return
        waiter = self.loop.create_future()
        self.drain_waiter = waiter
        await waiter

    def _finished(
        self, req: ClientRequest, status: int, cache_status: CacheStatus, member: bytes, written: int
    ) -> None:
        """An answer is written: count it (proxy/observe.py) and log it (one access line)."""
        ctx = self.ctx
        seconds = perf_counter() - self.started
        outcome = ctx.recorder.answered(cache_status, status, written, seconds)
        if ctx.access_log:
            self._log(req, status, member, outcome, written, seconds)

    def _log(
        self, req: ClientRequest, status: int, member: bytes, outcome: int, written: int, seconds: float
    ) -> None:
        wait = self.origin_wait
        waited = wait.seconds if wait is not None and wait.seconds else None  # None: never asked the origin
        log_access(self.ctx.cfg, req, status, member, outcome, written, seconds, waited)


_date_cache: tuple[int, str] = (0, "")


def date_line() -> str:
    """RFC 9110 §6.6.1: the Date a reply without one gets (formatted once per second)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, f"Date: {formatdate(now, usegmt=True)}\r\n")
    return _date_cache[1]


def _absolute_target(url: bytes) -> tuple[str, str, str, str]:
    """(scheme, authority, path, query) of an absolute-form request target (RFC 9112 §3.2.2)."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        raise _BadRequest(400, "invalid request target") from None
    if parsed.fragment:
        raise _BadRequest(400, "invalid request target")  # no fragment in a target (RFC 9112 §3.2)
    scheme = (parsed.schema or b"http").decode("ascii").lower()
    authority = parsed.host or b""
    if b":" in authority:
        authority = b"[" + authority + b"]"  # an IPv6 literal, given back its brackets (RFC 3986 §3.2.2)
    if parsed.port is not None:
        authority += b":%d" % parsed.port
    target = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
    if not target.isascii() or b"#" in target:
        raise _BadRequest(400, "invalid request target")
    path, _, query = target.decode("ascii").partition("?")
    return scheme, authority.decode("ascii", "replace"), path, query


# A request line whose method is a token (RFC 9110 §9.1, §5.6.2); the target is not checked.
_REQUEST_LINE = re.compile(rb"(?:^|\n)([!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}) [^ \r\n]+ HTTP/1\.[01]\r?\n")


def _unknown_method(fed: bytes) -> str | None:
    """The method of the request line in `fed` that llhttp refused (a token it does not know), or
    None when there is none (bytes that are not HTTP: a 400). Earlier requests in `fed` that were
    parsed have methods it knows."""
    unknown = [m for m in _REQUEST_LINE.findall(fed) if not _llhttp_knows(m)]
    return unknown[-1].decode("ascii") if unknown else None


@functools.lru_cache(maxsize=64)
def _llhttp_knows(method: bytes) -> bool:
    try:
        httptools.HttpRequestParser(None).feed_data(method + b" / HTTP/1.1\r\n\r\n")
    except httptools.HttpParserInvalidMethodError:
        return False
    except httptools.HttpParserError:
        pass
    return True


def _declared_length(raw: list[tuple[bytes, bytes]]) -> int:
    """The Content-Length of a request head (llhttp checked it is one number), else 0 (chunked)."""
    for name, value in raw:
        if name.lower() == b"content-length":
            return int(value)
    return 0


def _body_framing(raw: list[tuple[bytes, bytes]]) -> bytes:
    """A request head with the body framing of these fields (llhttp checked them: one
    Content-Length of digits, or Transfer-Encoding: chunked), b"" when the body is empty."""
    for name, value in raw:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            return b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        if lowered == b"content-length":
            length = int(value)
            return b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % length if length else b""
    return b""


def _parser_reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:80]


@dataclass
class PublicServer:
    """A running public listener; `close()` stops taking connections and drains the open ones."""

    server: asyncio.Server
    front: FrontContext

    @property
    def port(self) -> int:
        sock = self.server.sockets[0]
        return int(sock.getsockname()[1])

    async def close(self, drain_timeout: float = 10.0) -> None:
        self.server.close()
        await self.front.shutdown(drain_timeout)
        await self.server.wait_closed()


async def serve_public(
    node: Node,
    host: str | None = None,
    port: int = 0,
    *,
    sock: socket.socket | None = None,
    reuse_port: bool = False,
) -> PublicServer:
    """Listen for clients on host:port (or on an already bound socket) and answer them from node."""
    cfg = node.cfg
    ctx = FrontContext(node=node, cfg=cfg, via=via_line(cfg.name), access_log=cfg.log.access_log)
    loop = asyncio.get_running_loop()
    if sock is not None:
        server = await loop.create_server(lambda: Connection(ctx), sock=sock, backlog=1024)
    else:
        server = await loop.create_server(
            lambda: Connection(ctx),
            (host or "").strip("[]") or None,
            port,
            reuse_address=True,
            reuse_port=reuse_port,
            backlog=1024,
            family=socket.AF_UNSPEC,
        )
    return PublicServer(server, ctx)
