"""A lean HTTP/1.1 client for the origin: asyncio Protocols and httptools (llhttp), nothing else.

Why it exists: every cache miss pays for one origin request, and
`aiohttp.ClientSession.request` costs 100+ µs of Python per request (request and
response object trees, tracing hooks, cookie and redirect machinery, a
`StreamReader` per response). Here a request is one pre-joined `bytes` written
to a pooled keep-alive connection, and a response is its status, its headers
and a small reader over the connection's own buffer; timeouts are one
re-armed loop timer per connection instead of `wait_for` per read.

The surface matches `proxy.origin.OriginResponse` (`status`, `reason`,
`headers`, `content_length`, `read_up_to`, `iter_rest`, `close`, `release`)
and every failure is an `UpstreamError` from the table in
`proxy.origin.errors`, so the caller cannot tell the clients apart.

What it deliberately does not do (the caller keeps aiohttp for these):
no TLS (plain http:// only), no request bodies, no proxies, no redirects, no
decompression (bodies pass byte for byte), no cookies, no HTTP/2, no upgrades
(a 101 is an invalid response), no response trailers (parsed and dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Final, cast
from urllib.parse import urlsplit

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.origin.errors import (
    CLOSED,
    CONNECT_TIMED_OUT,
    FAILED,
    INCOMPLETE,
    INVALID,
    RESET,
    TIMED_OUT,
    UpstreamError,
    connect_failure,
    failure,
)
from proxy.origin.interim import InterimSink, report
from proxy.origin.rules import (
    HTTP10_TRANSFER_ENCODING,
    IDEMPOTENT,
    IDLE_TIMEOUT,
    MAX_HEADER_BYTES,
    MAX_HEADER_FIELDS,
    NO_BODY_STATUSES,
    check_lines,
    check_pool,
    check_request_line,
    chunked_alone,
    final_status_ok,
    has_body,
    http1,
    reusable_after_head,
    section_size,
)

__all__ = ["LeanOrigin", "LeanResponse"]

# Body bytes buffered before the socket stops being read: a slow consumer holds at most this
# (plus one socket read) per connection, however large the body.
HIGH_WATER: Final = 256 * 1024

_CI_TYPES: Final = (CIMultiDict, CIMultiDictProxy)

# Connection states. A BUSY connection belongs to one request (or is being handed to one).
_CONNECTING: Final = 0
_BUSY: Final = 1
_IDLE: Final = 2
_CLOSED: Final = 3


class _Invalid(Exception):
    """Raised inside a parser callback: the response breaks a rule llhttp does not check."""


class _Origin:
    """Where to connect and the constant parts of every request to one origin."""

    __slots__ = ("host", "host_line", "port", "prefix")

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http":
            raise ValueError(f"{base_url!r}: only plain http:// origins are supported")
        if not parts.hostname or parts.username is not None or parts.password is not None:
            raise ValueError(f"{base_url!r}: needs a host and no userinfo")
        if parts.query or parts.fragment:
            raise ValueError(f"{base_url!r}: a base URL has no query or fragment")
        port = parts.port or 80  # raises ValueError for a bad port
        self.host = parts.hostname
        self.port = port
        # As upstream.py's URL(base_url + path_qs): a path in the base URL prefixes every target.
        self.prefix = parts.path.rstrip("/")
        authority = f"[{self.host}]" if ":" in self.host else self.host
        if port != 80:
            authority = f"{authority}:{port}"
        self.host_line = f"Host: {authority}\r\n"
        check_lines(self.host_line, 1)


class _Pool:
    """Keep-alive connections to one origin: at most `limit` open, reused newest first, each
    closed once it has been idle for `idle_timeout` seconds."""

    __slots__ = ("closed", "idle", "idle_timeout", "limit", "loop", "open", "origin", "sweeper", "waiters")

    def __init__(
        self, origin: _Origin, limit: int, loop: asyncio.AbstractEventLoop, idle_timeout: float
    ) -> None:
        self.origin = origin
        self.limit = limit
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.open = 0  # connections holding a slot: connecting, busy or idle
        # LIFO: the most recently used is the likeliest alive. Appended as they go idle, so
        # also in the order they went idle: the first is the one whose time runs out first.
        self.idle: list[_Conn] = []
        # FIFO of requests waiting for a slot; resolved with an idle connection or None (a slot).
        self.waiters: deque[asyncio.Future[_Conn | None]] = deque()
        # The one timer that closes idle connections when their time runs out: set for the
        # first of them, re-armed by itself for the next. Per pool, not per request.
        self.sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    def pop_idle(self) -> _Conn | None:
        idle = self.idle
        if not idle:
            return None
        # The sweeper closes them on time; this covers a loop too busy to run it on time.
        oldest_ok = self.loop.time() - self.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.idle_since >= oldest_ok:
                conn.state = _BUSY
                return conn
            conn.close()  # too old: the origin may be closing it as we write
        return None

    async def acquire(self, timeout: float, *, fresh: bool = False) -> _Conn:
        """A connection for one request: an idle one (unless `fresh`), a new one, or wait."""
        if self.closed:
            raise failure(FAILED)
        if not fresh:
            conn = self.pop_idle()
            if conn is not None:
                return conn
        if self.open >= self.limit and fresh and self.idle:
            # A retry must not land on another connection the origin may have dropped too:
            # trade the oldest idle one's slot for a new connection.
            old = self.idle.pop(0)
            old.state = _CLOSED
            old.abort_transport()
            self.open -= 1
        loop = self.loop
        deadline = loop.time() + timeout
        while self.open >= self.limit:
            waiter: asyncio.Future[_Conn | None] = loop.create_future()
            self.waiters.append(waiter)
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                got = await waiter
            except BaseException:
                # Cancelled after being handed a connection or a slot: pass it on, never drop it.
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self.give_back(waiter.result())
                raise
            finally:
                timer.cancel()
            if got is None:
                break  # a slot, handed over as it was freed
            if got.state == _BUSY:
                return got
            # Handed a connection that closed before we ran (its slot went on): wait again.
        else:
            self.open += 1
        return await self._connect(max(deadline - loop.time(), 0.0))

    async def _connect(self, timeout: float) -> _Conn:
        """Open a connection in the slot the caller holds (freed again if this fails)."""
        conn = _Conn(self)
        origin = self.origin
        try:
            async with asyncio.timeout(timeout):
                await self.loop.create_connection(lambda: conn, origin.host, origin.port)
        except (TimeoutError, OSError) as exc:
            conn.close()
            raise connect_failure(exc) from None
        except BaseException:
            conn.close()
            raise
        if conn.state != _CONNECTING:  # reset between connection_made and here
            conn.close()
            raise failure(CLOSED)
        conn.state = _BUSY
        return conn

    def release(self, conn: _Conn) -> None:
        """A connection whose exchange ended cleanly: to the next waiter, else to the idle stack."""
        if self.closed:
            conn.close()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # stays BUSY: it is the waiter's now
                return
        now = self.loop.time()
        conn.state = _IDLE
        conn.idle_since = now
        self.idle.append(conn)
        if self.sweeper is None:  # else it is set for an older connection, and re-arms itself
            self.sweeper = self.loop.call_at(now + self.idle_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle for idle_timeout; set the timer again for the next one."""
        self.sweeper = None
        idle = self.idle
        # 1 ms early is on time: a loop with a coarse clock (uvloop's is in ms) may run the
        # timer that much early, and would otherwise set it again and again until it is not.
        expired = self.loop.time() - self.idle_timeout + 0.001
        while idle and idle[0].idle_since <= expired:
            conn = idle.pop(0)
            conn.close()  # frees its slot (for a waiter, if any)
        if idle and not self.closed:
            self.sweeper = self.loop.call_at(idle[0].idle_since + self.idle_timeout, self._sweep)

    def give_back(self, got: _Conn | None) -> None:
        if got is None:
            self.slot_freed()
        elif got.state == _BUSY:
            self.release(got)

    def slot_freed(self) -> None:
        """A slot was given up: the first live waiter gets it, else it is free."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.open -= 1

    def close(self) -> None:
        self.closed = True
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for conn in list(self.idle):
            conn.close()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(failure(FAILED))


def _lost(conn: _Conn) -> UpstreamError:
    """Why a connection was lost before any response byte: closed, or reset."""
    error = conn.error
    return failure(CLOSED) if error is None else UpstreamError(error.status_hint, error.reason, error.cause)


def _expire(waiter: asyncio.Future[_Conn | None]) -> None:
    if not waiter.done():
        # No connection within the connect timeout: every one busy (as aiohttp's pool says it).
        waiter.set_exception(failure(CONNECT_TIMED_OUT))


class _Conn(asyncio.Protocol):
    """One origin connection, its llhttp parser, and the response being read from it."""

    __slots__ = (
        "body",
        "buffered",
        "codings",
        "done",
        "error",
        "got_bytes",
        "hbytes",
        "hc",
        "hdrs",
        "head",
        "idle_since",
        "interim",
        "keep_alive",
        "loop",
        "on_interim",
        "parser",
        "parser_dirty",
        "paused",
        "pool",
        "reason",
        "retryable",
        "state",
        "status",
        "timeout",
        "timer",
        "timer_at",
        "transport",
        "uses",
        "wait_since",
        "waiter",
    )

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.state = _CONNECTING
        self.parser = HttpResponseParser(self)
        self.parser_dirty = False
        self.uses = 0
        self.idle_since = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.wait_since = 0.0
        self.timeout = 0.0
        self.on_interim: InterimSink | None = None
        self._reset(False)

    def _reset(self, head: bool) -> None:
        self.head = head
        self.hc = False  # the final (non-1xx) response's header section is complete
        self.done = False  # the final response is complete
        self.interim = False
        self.keep_alive = False
        self.got_bytes = False
        self.retryable = False
        self.error: UpstreamError | None = None
        self.hbytes = 0
        self.status = 0
        self.reason = b""
        self.hdrs: list[tuple[str, str]] = []
        self.codings: list[bytes] | None = None  # Transfer-Encoding values as llhttp read them
        self.body: list[bytes] = []
        self.buffered = 0
        self.paused = False

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.state != _BUSY or self.done:
            # Bytes nobody asked for (after the response, or on an idle connection): the
            # framing can no longer be trusted, so the connection is never reused.
            self.keep_alive = False
            self.close()
            return
        self.got_bytes = True
        if not self.hc:
            self.hbytes += len(data)
        try:
            self.parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade):
            if self.done and self.error is None:
                # RFC 9112 §6.3: the response ended where its Content-Length (or last chunk)
                # said; the bytes after it in the same read are no part of it. The response
                # stands, and the connection, whose framing is now in doubt, is never reused.
                self.keep_alive = False
                self.close()
                self._wake()
                return
            self.fail(failure(INVALID))
            return
        if not self.hc:
            if self.hbytes > MAX_HEADER_BYTES:
                self.fail(failure(INVALID))
            else:
                # Progress short of the final head (a 1xx, a part of the head): origin.read_timeout
                # bounds each read, not the whole head, so it counts again from here.
                self.wait_since = self.loop.time()
            return
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        state = self.state
        if state == _CLOSED:
            return
        if state == _BUSY and self.error is None and not self.done:
            # Before the body, a reset (RST) says so and a plain close is "closed"; a body cut
            # short either way is "incomplete" (proxy/origin/rules.py: both clients say the same).
            reset = isinstance(exc, ConnectionResetError)
            if not self.got_bytes:
                self.error = failure(RESET if reset else CLOSED)
                # Nothing of a response arrived: safe to send again if the connection had
                # served a request before (the origin closed it while we were reusing it).
                self.retryable = self.uses > 1
            elif not self.hc:
                self.error = failure(RESET if reset else CLOSED)
            elif exc is None and self._eof_delimited():
                self.done = True  # a close-delimited body ends here
            else:
                self.error = failure(INCOMPLETE)
        self.keep_alive = False
        self.close()
        self._wake()

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        if self.done:
            if self.head:
                self.keep_alive = False  # a body (or more) after a HEAD response: not reusable
                return
            raise _Invalid("bytes after the end of the response")
        self.reason = b""
        self.hdrs = []
        self.codings = None

    def on_status(self, status: bytes) -> None:
        self.reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.hc:  # trailer fields (after a chunked body) are dropped, as aiohttp does
            if len(name) == 17 and name.lower() == b"transfer-encoding":
                # Kept unstripped: llhttp reads "chunked\t" as another coding, and chunked_alone
                # must judge the bytes the parser framed the body by.
                if self.codings is None:
                    self.codings = []
                self.codings.append(value)
            # UTF-8 with surrogateescape, as aiohttp: any byte round-trips when encoded back.
            # llhttp strips leading whitespace only; aiohttp strips both ends.
            self.hdrs.append(
                (
                    name.decode("utf-8", "surrogateescape"),
                    value.decode("utf-8", "surrogateescape").rstrip(" \t"),
                )
            )

    def on_headers_complete(self) -> None:
        if self.done:
            if self.head:
                self.keep_alive = False
                return
            raise _Invalid("bytes after the end of the response")
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101 or status < 100:  # no upgrade was asked for; llhttp takes "099"
                raise _Invalid(f"status {status}")
            self.interim = True  # 100 Continue, 103 Early Hints: the real response follows
            sink = self.on_interim
            if sink is not None:
                # RFC 9110 §15.2: passed on as it arrives; its fields end here (on_message_begin
                # of the final response starts an empty list).
                reason = self.reason.decode("utf-8", "surrogateescape")
                report(sink, status, reason, CIMultiDictProxy(CIMultiDict(self.hdrs)))
            return
        if not final_status_ok(status):
            raise _Invalid(f"status {status}")
        version = parser.get_http_version()
        if not http1(int(version.partition(".")[0])):
            raise _Invalid(f"HTTP/{version} on an HTTP/1.1 connection")
        if len(self.hdrs) > MAX_HEADER_FIELDS:
            raise _Invalid("too many header fields")
        if self.hbytes > MAX_HEADER_BYTES and section_size(self.hdrs) > MAX_HEADER_BYTES:
            raise _Invalid("header section too large")
        codings = self.codings
        if codings is not None and has_body(status, self.head):
            if version == "1.0":
                raise _Invalid(HTTP10_TRANSFER_ENCODING)
            if not chunked_alone([value.decode("latin-1") for value in codings]):
                raise _Invalid("a transfer coding other than chunked alone")
        self.status = status
        self.hc = True
        if self.head:
            # httptools cannot tell llhttp that a HEAD response has no body (llhttp's own flag
            # is set only when on_headers_complete returns 1, which httptools never does
            # except for upgrades), so the response ends here and the parser, which may now
            # expect Content-Length body bytes, is replaced before the next request.
            self.done = True
            self.parser_dirty = True
            self.keep_alive = self._head_keep_alive()
        else:
            # Asked here: after the message, llhttp has reset the flags it is based on.
            self.keep_alive = parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.done:  # only after a HEAD response
            self.keep_alive = False
            return
        if self.interim:
            raise _Invalid("a body on an interim response")
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                self.paused = True
                transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.done = True

    # ------------------------------------------------------------------ helpers

    def _head_keep_alive(self) -> bool:
        """Whether the connection may carry another request after this response to a HEAD."""
        tokens: set[str] = set()
        length: str | None = None
        for name, value in self.hdrs:
            lowered = name.lower()
            if lowered == "connection":
                tokens.update(t.strip().lower() for t in value.split(","))
            elif lowered == "content-length":
                length = value
        if not reusable_after_head(self.status, length):
            return False  # a body may follow, now or later (proxy.origin.rules)
        version = self.parser.get_http_version()
        if version == "1.1":
            return "close" not in tokens
        return version == "1.0" and "keep-alive" in tokens and "close" not in tokens

    def _eof_delimited(self) -> bool:
        """Whether the final response's body is read until the connection closes (RFC 9112 §6.3)."""
        if self.head or self.status in NO_BODY_STATUSES:
            return False
        # A body-bearing response with Transfer-Encoding got here only as chunked alone
        # (chunked_alone in on_headers_complete): neither field leaves the body to the close.
        md = CIMultiDict(self.hdrs)
        return "Content-Length" not in md and "Transfer-Encoding" not in md

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def wait(self) -> asyncio.Future[None]:
        """A future resolved when something arrives (or fails); the read timeout runs meanwhile."""
        loop = self.loop
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiter = waiter
        now = loop.time()
        self.wait_since = now
        deadline = now + self.timeout
        # One timer per connection, re-armed only when it fires early: cheaper than
        # scheduling and cancelling a timer (or a wait_for) for every read.
        timer = self.timer
        if timer is None or self.timer_at > deadline:
            if timer is not None:
                timer.cancel()
            self.timer = loop.call_at(deadline, self._on_timer)
            self.timer_at = deadline
        return waiter

    def _on_timer(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done() or self.state == _CLOSED:
            return
        deadline = self.wait_since + self.timeout
        if self.loop.time() < deadline - 0.001:
            self.timer = self.loop.call_at(deadline, self._on_timer)
            self.timer_at = deadline
            return
        self.fail(failure(TIMED_OUT))

    def fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        self.keep_alive = False
        self.close()
        self._wake()

    def abort_transport(self) -> None:
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None
        transport = self.transport
        if transport is not None:
            transport.abort()

    def close(self) -> None:
        """Close the connection and give its pool slot up (once, whatever the state)."""
        state = self.state
        if state == _CLOSED:
            return
        self.state = _CLOSED
        self.abort_transport()
        pool = self.pool
        if state == _IDLE:
            with contextlib.suppress(ValueError):
                pool.idle.remove(self)
        pool.slot_freed()

    def take(self) -> bytes | None:
        """All buffered body bytes, or None if there are none yet. Raises the connection's error."""
        error = self.error
        if error is not None:
            raise UpstreamError(error.status_hint, error.reason, error.cause)
        body = self.body
        if not body:
            if self.state == _CLOSED and not self.done:  # closed without a recorded reason
                raise failure(INCOMPLETE)
            return None
        data = body[0] if len(body) == 1 else b"".join(body)
        self.body = []
        self.buffered = 0
        if self.paused:
            self.paused = False
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()
        return data

    def finish(self) -> None:
        """The response was read to its end: reuse the connection if its framing allows."""
        if self.state != _BUSY:
            return
        if self.done and self.keep_alive and self.error is None:
            self.pool.release(self)
        else:
            self.close()

    async def exchange(
        self, request: bytes, head: bool, timeout: float, interim: InterimSink | None = None
    ) -> LeanResponse | None:
        """Send one request and wait for its header section. None: the reused connection was
        found closed before any response byte, so the request may be sent again elsewhere.
        `interim` is told of each 1xx response that comes before it."""
        if self.state != _BUSY:  # lost while being handed over
            self.close()
            return None
        if self.parser_dirty:
            self.parser = HttpResponseParser(self)
            self.parser_dirty = False
        self._reset(head)
        self.on_interim = interim
        self.timeout = timeout
        self.uses += 1
        transport = self.transport
        assert transport is not None
        try:
            transport.write(request)
        except Exception:  # a transport found broken as we write: nothing was sent
            self.fail(failure(FAILED))
            self.retryable = self.uses > 1
        try:
            while not self.hc and self.error is None:
                await self.wait()
        except BaseException:
            self.close()  # cancelled mid-request: the connection's state is unknown
            raise
        finally:
            self.on_interim = None  # the final head is in (or the exchange failed)
        error = self.error
        if error is not None:
            if self.retryable:
                return None
            raise UpstreamError(error.status_hint, error.reason, error.cause)
        headers = CIMultiDict(self.hdrs)
        length = headers.get("Content-Length")  # llhttp has checked it is one decimal number
        resp = LeanResponse(
            self.status,
            self.reason.decode("utf-8", "surrogateescape"),
            CIMultiDictProxy(headers),
            None if length is None else int(length),
            self,
        )
        if self.done and not self.body:
            resp.release()  # no body (HEAD, 204, 304, empty): the connection is free already
        return resp


class LeanResponse:
    """An origin response whose header section has arrived; the body is read on demand.

    Like aiohttp's response, reading the body to its end gives the connection back by
    itself; `close()` or `release()` is needed only when the body is not read to the end.
    """

    __slots__ = ("_conn", "content_length", "headers", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content_length: int | None,
        conn: _Conn,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self._conn: _Conn | None = conn

    async def read_up_to(self, limit: int) -> tuple[bytes, bool]:
        """Read at most `limit` bytes (plus up to one buffered batch); returns (data, complete).

        Raises UpstreamError on a broken body (and the connection is closed)."""
        conn = self._conn
        if conn is None:
            return b"", True
        parts: list[bytes] = []
        size = 0
        try:
            while size <= limit:
                chunk = conn.take()
                if chunk is None:
                    if conn.done:
                        self._conn = None
                        conn.finish()
                        return b"".join(parts), True
                    await conn.wait()
                    continue
                parts.append(chunk)
                size += len(chunk)
        except BaseException:
            self.close()
            raise
        return b"".join(parts), False

    async def iter_rest(self) -> AsyncIterator[bytes]:
        """The remaining body in chunks; raises UpstreamError if it breaks off."""
        conn = self._conn
        if conn is None:
            return
        try:
            while True:
                chunk = conn.take()
                if chunk is None:
                    if conn.done:
                        break
                    await conn.wait()
                    continue
                yield chunk
        except BaseException:  # includes GeneratorExit: the consumer stopped early
            self.close()
            raise
        self._conn = None
        conn.finish()

    def close(self) -> None:
        """Drop the connection (used when the body is not read to the end)."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.close()

    def release(self) -> None:
        """Done with the response: the connection is reused if the body was read completely
        and the origin allows keep-alive, else closed."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            if conn.body:  # unread body bytes: not "read completely"
                conn.close()
            else:
                conn.finish()

    def __del__(self) -> None:
        # A response dropped without close()/release() (an exception between send and read)
        # must not keep its pool slot forever.
        conn = self._conn
        if conn is not None:
            self._conn = None
            with contextlib.suppress(Exception):
                conn.close()


class LeanOrigin:
    """Pooled HTTP/1.1 keep-alive connections to the origin (and to peer edges)."""

    def __init__(
        self,
        base_url: str,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        check_pool(max_connections, idle_timeout)
        self.base_url = base_url
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self._default = _Origin(base_url)
        self._pools: dict[str, _Pool] = {}
        self._closed = False

    def _pool(self, origin: str | None) -> _Pool:
        key = origin or self.base_url
        pool = self._pools.get(key)
        if pool is None:
            if self._closed:
                raise failure(FAILED)
            target = self._default if origin is None or origin == self.base_url else _Origin(origin)
            loop = asyncio.get_running_loop()
            pool = self._pools[key] = _Pool(target, self.max_connections, loop, self.idle_timeout)
        return pool

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: Mapping[str, str] | CIMultiDict[str] | CIMultiDictProxy[str],
        timeout: float | None = None,
        origin: str | None = None,
        interim: InterimSink | None = None,
    ) -> LeanResponse:
        """Send a request without a body; returns once the response header section has arrived.

        `interim` is told of each 1xx response that arrives before it (RFC 9110 §15.2)."""
        pool = self._pool(origin)
        target = pool.origin
        line = f"{method} {target.prefix}{path_qs} HTTP/1.1\r\n"
        check_request_line(line)
        fields = [f"{name}: {value}\r\n" for name, value in headers.items()]
        if isinstance(headers, _CI_TYPES):
            has_host = "Host" in headers
        else:
            has_host = any(name.lower() == "host" for name in headers)
        if not has_host:
            fields.append(target.host_line)
        text = f"{line}{''.join(fields)}\r\n"
        # Counting CRs and LFs once over the whole head is cheaper than checking each field.
        check_lines(text, len(fields) + 2)
        request = text.encode("utf-8", "surrogateescape")

        connect_timeout = self.connect_timeout if timeout is None else timeout
        read_timeout = self.read_timeout if timeout is None else timeout
        head = method == "HEAD"
        conn = pool.pop_idle()
        if conn is None:
            conn = await pool.acquire(connect_timeout)
        resp = await conn.exchange(request, head, read_timeout, interim)
        if resp is None:
            # The keep-alive race: the origin closed (or reset) a reused connection as we wrote to it.
            if method not in IDEMPOTENT:
                raise _lost(conn)
            conn = await pool.acquire(connect_timeout, fresh=True)
            resp = await conn.exchange(request, head, read_timeout, interim)
            if resp is None:
                raise _lost(conn)
        return resp

    async def close(self) -> None:
        """Close every pooled connection; busy ones close when their response is released."""
        self._closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
