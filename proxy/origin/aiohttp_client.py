"""The origin client for what the lean client does not do: requests with a body, and https origins.

One pooled aiohttp ClientSession; every aiohttp or asyncio failure is
translated once, here, into an `UpstreamError` from `proxy.origin.errors`.
It follows the rules in `proxy.origin.rules` as the lean client does (one
contract, tests/functional/test_origin_contract.py); where aiohttp's own
behaviour differs, this module brings it in line:

- aiohttp's keep-alive retry (any idempotent request whose connection failed
  before the head, fresh or reused, whatever arrived) is off; a request is
  retried here only in the keep-alive race, which `_Handler` recognises.
- a connection reset that ends a close-delimited body makes it incomplete
  (aiohttp takes it for the body's end), and a reset is "closed", not "failed".
- a 101 or a status outside 200..599, a head over the size limits, control
  characters in a field value, a body in a transfer coding other than chunked
  alone: an invalid response (aiohttp returns them).
- an answer the origin sent before it reset the connection on a request body still being
  written (an early 413) is read off the socket before it closes: aiohttp's loop drops the
  connection, reading included, at the write that meets the reset.
- a request with Expect: 100-continue waits CONTINUE_WAIT for the origin's 100, then sends its
  body anyway (aiohttp waits for ever, and an origin that ignores the expectation waits for the
  body).
- a connection that carried a HEAD response is kept only when no body can
  follow it (`rules.reusable_after_head`; aiohttp keeps any).
- the pool limit is per origin, and waiting for a free connection counts
  against the connect timeout; no Accept field is added, repeated fields
  spelled differently are all sent.
- an idle connection is closed when its idle time runs out (aiohttp sweeps
  once per idle time, which leaves some open for up to twice as long).
- a request body counts as sent once the origin has taken it, not once it is
  in the socket's buffers: an origin that takes none of it for `send_timeout`
  is a timeout (aiohttp has none while it writes), and the read timeout starts
  when the origin has taken the last byte (aiohttp starts it as the last byte
  is handed to the kernel, so a slow but steady reader of a large body timed out).

What it cannot do (aiohttp's parser is lenient for responses outside dev mode,
and its header writer encodes str): reject a bare LF, an obs-fold or a space
after a chunk size; keep a response whose Content-Length is followed by more
bytes in the same read (the whole read fails); send header bytes that are not
UTF-8. The contract tests mark these as expected failures.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import helpers
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_parser import RawResponseMessage
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.origin.errors import (
    CLIENT_BODY,
    CLOSED,
    CONNECT_TIMED_OUT,
    DURING_BODY,
    FAILED,
    INCOMPLETE,
    INVALID,
    REQUEST_FAILED,
    RESET,
    TIMED_OUT,
    UpstreamError,
    caused_by_the_request_body,
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
from proxy.send_queue import peer_window, unsent

log = logging.getLogger("proxy.origin")

READ_CHUNK = 64 * 1024
# Seconds a request with Expect: 100-continue waits for the origin's 100 before its body goes
# anyway (RFC 9110 §10.1.1); curl waits as long.
CONTINUE_WAIT = 1.0
# At most this much is read off a broken connection's receive buffer (_Handler._read_what_was_sent).
_LEFT_LIMIT = 1024 * 1024
# aiohttp 3.10+ tells a connect timeout from a read timeout; older ones raise ServerTimeoutError for both.
_CONNECT_TIMEOUT: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(aiohttp, "ConnectionTimeoutError", None),) if isinstance(t, type)
)

# What an aborted connection or a write to a closed one looks like: the origin closed the
# connection (as the lean client says), not a failure of ours. A reset is told apart (RESET).
_CLOSED_ERRNOS = frozenset({errno.EPIPE, errno.ECONNABORTED})
# Control characters other than HTAB in a field value (RFC 9110 §5.5): llhttp's strict mode,
# which the lean client uses, rejects them; aiohttp's lenient response parser passes them on.
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def translate(exc: BaseException) -> UpstreamError:
    """Map an aiohttp / asyncio client failure onto UpstreamError (the one place this happens)."""
    if isinstance(exc, UpstreamError):
        return exc
    if caused_by_the_request_body(exc):
        return failure(CLIENT_BODY)
    if isinstance(exc, _CONNECT_TIMEOUT):
        return failure(CONNECT_TIMED_OUT)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return failure(TIMED_OUT)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # The OSError of the connect (gaierror, ConnectionRefusedError, ...), as the lean client sees it.
        return connect_failure(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return failure(CLOSED)
    if isinstance(exc, ConnectionResetError) or (
        isinstance(exc, aiohttp.ClientOSError) and exc.errno == errno.ECONNRESET
    ):
        return failure(RESET)  # a reset says so (the lean client too)
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno in _CLOSED_ERRNOS:
        return failure(CLOSED)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return failure(INCOMPLETE)
    if isinstance(exc, aiohttp.ClientResponseError):
        return failure(INVALID)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return failure(FAILED)
    # Anything else is a bug of ours or aiohttp's; the client still gets a 502, never a traceback.
    log.error("unexpected error talking to the origin", exc_info=exc)
    return failure(REQUEST_FAILED)


class _Handler(ResponseHandler):
    """aiohttp's connection protocol, with what the rules need to know about one connection.

    `exchanges` and `answered` tell the keep-alive race (a reused connection closed
    before any byte of a response) from a failure; a reset while a body is still
    being read makes it incomplete, also when the body is delimited by the close; a
    body that does not parse is invalid, rather than a read that never returns.
    `chunked` is how the parser framed the final response's body, which its header
    fields, stripped by aiohttp, cannot tell ("chunked\t" is read as another coding).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.exchanges = 0  # requests sent on this connection, this one included
        self.answered = False  # a byte of a response to the current request arrived
        self.head = False  # the current request is a HEAD
        self.chunked = False  # the current final response's body is framed as chunked
        self.uploading = False  # the current request's body is not all taken by the origin yet
        self.final = False  # the current request's final response has arrived (its head)
        self.interim = False  # a 1xx was parsed in the read being handled

    def set_response_params(self, **kwargs: Any) -> None:
        # Called for each request, in the requesting task, before the request is written.
        self.exchanges += 1
        self.answered = False
        self.head = bool(kwargs.get("skip_payload"))  # aiohttp skips the body of a HEAD response only
        self.chunked = False
        exchange = _exchange.get()
        self.uploading = exchange is not None and exchange.upload is not None
        self.final = False
        if exchange is not None:
            exchange.handler = self
        super().set_response_params(**kwargs)

    def start_timeout(self) -> None:
        # aiohttp calls this once it has handed the last byte of a body to the socket; the origin
        # may take minutes to read what the socket's buffers hold. _UploadWatch calls body_taken.
        if not self.uploading:
            super().start_timeout()

    def body_taken(self) -> None:
        """The origin has taken the whole request body: the wait for its response starts now."""
        if self.uploading:
            self.uploading = False
            super().start_timeout()

    def origin_reading(self) -> None:
        """The origin is still reading the body out of its receive buffer: the wait starts again."""
        if not self.final:
            super().start_timeout()

    def _on_read_timeout(self) -> None:
        # Set again by any byte that arrives, a 1xx's too: while the body is still on its way,
        # _UploadWatch's send_timeout bounds the wait, not this.
        if not self.uploading:
            super()._on_read_timeout()

    def body_stalled(self, seconds: float) -> None:
        """The origin has taken none of the request body for `seconds`: the exchange times out and
        the connection goes (closing it would wait for the buffered body to be sent: never)."""
        self.uploading = False
        self.set_exception(aiohttp.ServerTimeoutError(f"the origin took no request body for {seconds:g} s"))
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if data:
            self.answered = True
        payload = self._payload
        super().data_received(data)
        if self.interim:
            # aiohttp drops its read timer once a message without a body is parsed, a 1xx's too:
            # the final response is still to come, and read_timeout bounds the wait for it.
            self.interim = False
            if not self.final and self.exception() is None:
                self.start_timeout()
        if (
            payload is not None
            and self.exception() is not None
            and payload.exception() is None
            and not payload.is_eof()
        ):
            # The parser failed in the body (a malformed chunk): aiohttp sets the error on
            # the connection alone, and the body's reader would wait for ever.
            payload.set_exception(failure(INVALID))

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        # Each message the parser completes is queued here for the response to read.
        message = data[0]
        if message.code < 200:
            self.interim = True
        else:  # the final response (1xx ones are read past)
            self.final = True
            self.uploading = False  # answered before the whole body was taken: its own timeouts
            self.chunked = message.chunked
            if self.head and not reusable_after_head(message.code, message.headers.get("Content-Length")):
                # Before the response is read, so before the connection goes back to the pool:
                # aiohttp closes a connection that should close when it is released.
                self.force_close()
        super().feed_data(data, size)

    def set_exception(self, exc: BaseException, exc_cause: BaseException = helpers._EXC_SENTINEL) -> None:
        transport = self.transport
        if (
            self.uploading
            and isinstance(exc.__cause__, aiohttp.ClientConnectionResetError)
            and not self._connection_lost_called
            and transport is not None
            and transport.is_closing()
        ):
            # The request body's writer found the connection going down (a write the origin
            # reset): the loop has yet to call connection_lost, which reads what the origin sent
            # before (an early answer, RFC 9112 §9.6) and says why it went. This error, which
            # says neither ("cannot write to closing transport"), waits behind it.
            self._loop.call_soon(self._set_exception_after_loss, exc, exc_cause)
            return
        super().set_exception(exc, exc_cause)

    def _set_exception_after_loss(self, exc: BaseException, exc_cause: BaseException) -> None:
        if self.exception() is None:  # connection_lost had no reason of its own
            super().set_exception(exc, exc_cause)

    def connection_lost(self, exc: BaseException | None) -> None:
        transport = self.transport
        if exc is not None and transport is not None:
            self._read_what_was_sent(transport)
        payload = self._payload
        if exc is not None and payload is not None and not payload.is_eof():
            # RFC 9112 §8: a body cut by a connection error is incomplete, whatever its framing
            # (aiohttp's parser ends a close-delimited body at any close).
            payload.set_exception(aiohttp.ClientPayloadError(f"connection lost: {exc!r}"))
        super().connection_lost(exc)

    def _read_what_was_sent(self, transport: asyncio.BaseTransport) -> None:
        """Parse what the origin sent before the connection broke and the loop did not read.

        A write that meets a reset (the origin answered early, 413 or 401, and closed on the rest
        of a request body) makes the loop drop the connection at once, its reading with it; the
        answer, complete in the socket's receive buffer, would be lost and the client get a 502.
        The socket is open until connection_lost returns (asyncio and uvloop alike). Not over TLS:
        the socket's bytes are records the TLS layer, gone with the connection, would decrypt."""
        if transport.get_extra_info("ssl_object") is not None:
            return
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        taken = 0
        while fd >= 0 and taken < _LEFT_LIMIT:
            try:
                data = os.read(fd, READ_CHUNK)  # non-blocking, as the loop set it
            except OSError:  # nothing more to read (EAGAIN), or the reset itself
                return
            if not data:
                return
            taken += len(data)
            self.data_received(data)


class _Connector(aiohttp.TCPConnector):
    """A TCPConnector whose connections are `_Handler`s, and whose idle ones close on time."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        handler: Callable[..., ResponseHandler] = _Handler
        self._factory = functools.partial(handler, loop=self._loop)

    def _cleanup(self) -> None:
        # aiohttp's one sweep timer: it closes the connections idle for keepalive_timeout, then
        # waits a whole keepalive_timeout again, so one that went idle just after a sweep stays
        # open for up to twice that. Set it for when the oldest idle connection's time runs out.
        super()._cleanup()
        timeout = self._keepalive_timeout
        if self._cleanup_handle is None or timeout is None:
            return  # nothing idle is left (it is set again when a connection is released)
        oldest = min((used for conns in self._conns.values() for _, used in conns), default=None)
        if oldest is None:
            return
        # aiohttp's idle times are time.monotonic(); 1 ms at least, as a timer never set is
        # never run (weakref_handle sets none for 0).
        delay = max(oldest + timeout - time.monotonic(), 0.001)
        self._cleanup_handle.cancel()
        self._cleanup_handle = helpers.weakref_handle(
            self, "_cleanup", delay, self._loop, timeout_ceil_threshold=self._timeout_ceil_threshold
        )


@dataclass(slots=True)
class _Exchange:
    """The request being sent in this task (aiohttp has no per-request hooks for these)."""

    sink: InterimSink | None
    handler: _Handler | None = None  # the connection of the latest attempt
    upload: _Upload | None = None  # the request's body, if it has one


@dataclass(slots=True)
class _Upload:
    """A request body on its way to the origin: how many of its bytes were handed to the connection."""

    handed: int = 0
    done: bool = False  # all of it


async def _counted(body: AsyncIterator[bytes], upload: _Upload) -> AsyncIterator[bytes]:
    """`body`, counting into `upload` what aiohttp takes of it (it writes each chunk as it gets it)."""
    async for chunk in body:
        upload.handed += len(chunk)
        yield chunk
    upload.done = True


class _UploadWatch:
    """Follows the origin's progress in taking a request body, from the request's start to its head.

    Progress is the bytes handed over less those not yet taken (`proxy.send_queue.unsent`: the
    transport's buffer and the kernel's send queue); nothing unsent is no stall (the client is the
    slow one then). `send_timeout` without progress: the exchange times out (nginx:
    proxy_send_timeout). Once the whole body is handed over and taken, the read timeout starts;
    while the origin's advertised window still grows after that (it is reading the body out of its
    receive buffer: `peer_window`), it starts again. Looked at every TICK of the shorter timeout,
    so a stall is seen within 1.25 times `send_timeout`.
    """

    TICK = 0.25

    def __init__(
        self, exchange: _Exchange, upload: _Upload, send_timeout: float, read_timeout: float
    ) -> None:
        self.exchange = exchange
        self.upload = upload
        self.send_timeout = send_timeout
        self.tick = min(send_timeout, read_timeout) * self.TICK
        self.loop = asyncio.get_running_loop()
        self.handler: _Handler | None = None  # the connection looked at last
        self.taken = 0
        self.window: int | None = None
        self.progress_at = self.loop.time()
        self.timer: asyncio.TimerHandle | None = self.loop.call_later(self.tick, self._look)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _look(self) -> None:
        self.timer = None
        now = self.loop.time()
        handler = self.exchange.handler
        transport = handler.transport if handler is not None else None
        if handler is None or transport is None:
            self.progress_at = now  # not connected yet: the connect timeout's time
        elif handler.final:
            return  # the response has come: the read timeout's time
        elif handler.uploading:
            left = unsent(transport)
            taken = self.upload.handed - left
            if handler is not self.handler or taken > self.taken or left == 0:
                self.handler = handler  # a first look, or a retry on another connection
                self.taken = taken
                self.progress_at = now
            if left == 0 and self.upload.done:
                handler.body_taken()
                self.window = peer_window(transport)
            elif now - self.progress_at >= self.send_timeout:
                handler.body_stalled(self.send_timeout)
                return
        else:
            window = peer_window(transport)
            if window is None:
                return  # nothing more to see
            if self.window is not None and window > self.window:
                handler.origin_reading()
            self.window = window
        self.timer = self.loop.call_later(self.tick, self._look)


_exchange: ContextVar[_Exchange | None] = ContextVar("origin_exchange", default=None)


class _ReportingResponse(aiohttp.ClientResponse):
    """aiohttp's response, telling the request's InterimSink of each 1xx it skips (RFC 9110 §15.2),
    and not waiting for ever for the origin's 100 (Continue) to send a body.

    ClientResponse.start reads messages off the connection's protocol until a final
    one; while it runs, the protocol's read is wrapped to report the interim ones.
    """

    async def start(self, connection: Any) -> aiohttp.ClientResponse:
        waiting = self._continue
        if waiting is None:
            return await self._start(connection)
        # A request with Expect: 100-continue: aiohttp sends its body once the origin's 100 comes.
        # An origin that ignores the expectation (as an HTTP/1.0 one must) waits for the body
        # instead, and neither would go on. RFC 9110 §10.1.1: a client need not wait for the 100.
        timer = asyncio.get_running_loop().call_later(CONTINUE_WAIT, _go_on, waiting)
        try:
            return await self._start(connection)
        finally:
            timer.cancel()

    async def _start(self, connection: Any) -> aiohttp.ClientResponse:
        exchange = _exchange.get()
        sink = exchange.sink if exchange is not None else None
        protocol = connection.protocol
        if sink is None or protocol is None:
            return await super().start(connection)
        read = protocol.read

        async def read_reporting() -> Any:
            message, payload = await read()
            if 100 <= message.code < 200 and message.code != 101:
                report(sink, message.code, message.reason or "", message.headers)
            return message, payload

        protocol.read = read_reporting
        try:
            return await super().start(connection)
        finally:
            del protocol.read  # the class's own again, for the connection's next request


def _go_on(waiting: asyncio.Future[bool]) -> None:
    if not waiting.done():
        waiting.set_result(True)  # as the origin's 100 would: the body goes


@dataclass(slots=True)
class AiohttpResponse:
    """OriginResponse over aiohttp's client response."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    content_length: int | None
    _raw: aiohttp.ClientResponse

    async def read_up_to(self, limit: int) -> tuple[bytes, bool]:
        """Read at most `limit` bytes; returns (data, complete). Raises UpstreamError on a broken body."""
        buf = bytearray()
        try:
            while len(buf) <= limit:
                chunk = await self._raw.content.read(READ_CHUNK)
                if not chunk:
                    return bytes(buf), True
                buf += chunk
        except UpstreamError:
            self.close()
            raise
        except BaseException as exc:  # a cancelled read too: the connection's state is unknown
            self.close()
            if isinstance(exc, Exception):
                raise translate(exc) from exc
            raise
        return bytes(buf), False

    async def iter_rest(self) -> AsyncIterator[bytes]:
        """The remaining body in chunks; raises UpstreamError if it breaks off."""
        try:
            while True:
                chunk = await self._raw.content.read(READ_CHUNK)
                if not chunk:
                    break
                yield chunk
        except UpstreamError:
            self.close()
            raise
        except BaseException as exc:  # includes GeneratorExit: the consumer stopped early
            self.close()
            if isinstance(exc, Exception):
                raise translate(exc) from exc
            raise
        self._raw.release()

    def close(self) -> None:
        """Drop the connection (used when the body is not read to the end)."""
        self._raw.close()

    def release(self) -> None:
        self._raw.release()


def _invalid_head(raw: aiohttp.ClientResponse, handler: _Handler | None) -> str | None:
    """Why a response aiohttp accepted breaks a rule the lean client's parser enforces, if it does."""
    if not final_status_ok(raw.status):
        return f"status {raw.status}"
    version = raw.version
    if version is not None and not http1(version.major):
        return f"HTTP/{version.major}.{version.minor} on an HTTP/1.1 connection"
    codings = raw.headers.getall("Transfer-Encoding", ())
    if codings and raw.version == (1, 0) and has_body(raw.status, raw.method == "HEAD"):
        return HTTP10_TRANSFER_ENCODING
    # aiohttp strips field values, so "chunked\t", another coding to its parser, would look
    # like chunked here: the framing the parser read the body by must be chunked too.
    if (
        codings
        and has_body(raw.status, raw.method == "HEAD")
        and not (chunked_alone(codings) and handler is not None and handler.chunked)
    ):
        return "a transfer coding other than chunked alone"
    fields = list(raw.headers.items())
    if section_size(fields) > MAX_HEADER_BYTES:
        return "header section too large"
    for _, value in fields:
        if _CTL.search(value) is not None:
            return "a control character in a field value"
    return None


def _outgoing(method: str, path_qs: str, headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """The fields to hand to aiohttp, checked as the lean client checks them (ValueError).

    aiohttp keeps a repeated field only when each repetition is spelled as the first
    (its merge is case-sensitive over a case-insensitive dict), so later ones take
    the first spelling; field names are case-insensitive (RFC 9110 §5.1).
    """
    line = f"{method} {path_qs} HTTP/1.1\r\n"
    check_request_line(line)
    text = line + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    check_lines(text, len(headers) + 1)
    spelling: dict[str, str] = {}
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        out.add(spelling.setdefault(name.lower(), name), value)
    return out


class AiohttpOrigin:
    """One pooled aiohttp session towards the origin (and peer edges)."""

    def __init__(
        self,
        base_url: str,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        send_timeout: float | None = None,
    ) -> None:
        check_pool(max_connections, idle_timeout)
        self.base_url = base_url
        # How long the origin may take none of a request body (the read timeout unless told).
        self.send_timeout = read_timeout if send_timeout is None else send_timeout
        # As the lean client: at most max_connections to each origin (a slow peer edge must
        # not take the origin's), idle ones kept idle_timeout.
        connector = _Connector(
            limit=0, limit_per_host=max_connections, keepalive_timeout=idle_timeout, ttl_dns_cache=60
        )
        self._timeout = _timeouts(connect_timeout, read_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,  # bodies pass through byte for byte
            # Only the caller's fields (and Host) go out, as from the lean client.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),  # never keep one user's cookies for another
            raise_for_status=False,
            response_class=_ReportingResponse,
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
            max_headers=MAX_HEADER_FIELDS,
        )
        # aiohttp retries any idempotent request once when its connection fails before the
        # head; the rule here is narrower (proxy.origin.rules.IDEMPOTENT), applied in send().
        self._session._retry_connection = False

    async def close(self) -> None:
        await self._session.close()

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: AsyncIterator[bytes] | bytes | None = None,
        *,
        origin: str | None = None,
        timeout: float | None = None,
        interim: InterimSink | None = None,
    ) -> AiohttpResponse:
        """Send a request; returns once the response header section has arrived.

        Raises ValueError for CR, LF or NUL in a field or the request line (nothing is
        sent), UpstreamError when the origin gives no usable response. `interim` is told
        of each 1xx response that arrives before it (RFC 9110 §15.2)."""
        out = _outgoing(method, path_qs, headers)
        if self._session.closed:
            raise failure(FAILED)
        # encoded=True: forward the request-target byte for byte, never re-quoted.
        url = URL((origin or self.base_url) + path_qs, encoded=True)
        client_timeout = self._timeout
        send_timeout = self.send_timeout
        if timeout is not None:  # a peer edge: tighter than the origin's timeouts
            client_timeout = _timeouts(timeout, timeout)
            send_timeout = timeout
        exchange = _Exchange(interim)
        watch: _UploadWatch | None = None
        if body is not None:
            exchange.upload = upload = _Upload()
            if isinstance(body, bytes):
                upload.handed, upload.done = len(body), True
            else:
                body = _counted(body, upload)
            watch = _UploadWatch(exchange, upload, send_timeout, client_timeout.sock_read or send_timeout)
        token = _exchange.set(exchange)
        try:
            try:
                raw = await self._request(method, url, out, body, client_timeout)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                handler = exchange.handler
                if (
                    method not in IDEMPOTENT
                    or not (body is None or isinstance(body, bytes))  # a stream is sent once
                    or handler is None
                    or handler.exchanges < 2
                    or handler.answered
                ):
                    raise
                # The keep-alive race: the origin closed a reused connection as we wrote to it.
                exchange.handler = None
                raw = await self._request(method, url, out, body, client_timeout)
        except Exception as exc:
            error = translate(exc)
            sent = exchange.upload
            if sent is not None and not sent.done and error.reason in DURING_BODY:
                # The body was still being handed over: say so, and not "failed", which is all a
                # write of the body that met the reset could tell. (A small body all written when
                # a reused connection turns out closed is the keep-alive race: the plain reason.)
                error = failure(DURING_BODY[error.reason])
            raise error from exc
        finally:
            _exchange.reset(token)
            if watch is not None:
                watch.stop()
        why = _invalid_head(raw, exchange.handler)
        if why is not None:
            log.debug("invalid response from the origin: %s", why)
            raw.close()
            if exchange.handler is not None:
                # A response whose body had arrived with its head went back to the pool as
                # start() returned: the connection goes, not only the response.
                exchange.handler.close()
            raise failure(INVALID)
        return AiohttpResponse(
            status=raw.status,
            reason=raw.reason or "",
            headers=raw.headers,
            content_length=raw.content_length,
            _raw=raw,
        )

    async def _request(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: AsyncIterator[bytes] | bytes | None,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        return await self._session.request(
            method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            compress=None,
            chunked=None,
            timeout=timeout,
        )


def _timeouts(connect: float, read: float) -> aiohttp.ClientTimeout:
    """As the lean client: `connect` bounds waiting for a free connection and opening one
    (`sock_connect` alone leaves the wait for a pool slot unbounded), `read` each wait for
    bytes of the response; nothing bounds the whole exchange."""
    return aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=read)
