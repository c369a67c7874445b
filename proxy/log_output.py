"""Where log lines go and what they look like: text or JSON on stderr, written in batches.

Python's StreamHandler flushes after every record, and sys.stderr is line
buffered: one system call per access-log line, on the event loop, for every
request. Here records go into a 64 KiB buffer that is flushed when a record is
a warning or worse, when the last flush is `interval` seconds old, on every
tick of the event loop's flush timer (`flush_periodically`), and at exit
(logging.shutdown). The timestamp is formatted once per second, not per line.
A line therefore reaches stderr at most `interval` seconds after it was logged.
The buffer is written to fd 2 by a thread (BackgroundWriter), so a stderr that
nobody reads stops the log, not the requests.

Two formats (`log.format`), for every record alike (access lines, purges,
warnings, errors, tracebacks):

- text: `2026-11-30 08:00:00,123 INFO proxy.access <message>`; every free-text
  value of an access line is quoted, with `"`, `\\` and control characters
  escaped (`\\"`, `\\\\`, `\\xNN`; U+2028 / U+2029 and the bidi controls as
  `\\uNNNN`), so a line splits, and reads on screen, the same way whatever a client sent;
- json: one JSON object per line, with `timestamp` (ISO 8601, UTC), `level`,
  `logger`, `worker` (the worker's index in its box; null for the supervisor
  or a lone process), `pid` and `message`; `exception` with the traceback;
  access lines add their fields (`access_fields`).

Access lines skip `logging`'s records under the command line's setup: a
LogRecord costs more than a cache hit.
"""

from __future__ import annotations

import asyncio
import atexit
import io
import itertools
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp.http_exceptions import BadHttpMessage

from proxy.observe import OUTCOMES

if TYPE_CHECKING:
    from proxy.config import Config
    from proxy.messages import ClientRequest

access_log = logging.getLogger("proxy.access")

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
INTERVAL = 0.2
# Log output waiting for a slow or stuck stderr, at most (then dropped); and how long an exiting
# process waits for it to be written.
WRITER_LIMIT = 4 * 1024 * 1024
EXIT_DRAIN_SECONDS = 2.0
# Every access line's fields in JSON, in order (the README documents them).
ACCESS_FIELDS = (
    "remote",
    "method",
    "host",
    "target",
    "status",
    "bytes",
    "cache",
    "result",
    "tier",
    "total_ms",
    "origin_ms",
    "user_agent",
    "request_id",
)
REQUEST_ID_MAX = 128  # characters of a client's X-Request-Id that are kept

# Who is writing: set by install() (a worker passes its index).
_worker: int | None = None
_pid = os.getpid()
# Request ids this process makes up: a random prefix per process, then a counter.
_id_prefix = os.urandom(4).hex() + "-"
_ids = itertools.count(1)


class CachedTimeFormatter(logging.Formatter):
    """logging.Formatter with `asctime` rendered once per second (the milliseconds per record)."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return f"{self._text},{int((created - second) * 1000):03d}"


class JsonFormatter(CachedTimeFormatter):
    """One JSON object per record (see the module docstring); never more than one line."""

    def stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._text}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": self.stamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "worker": _worker,
            "pid": _pid,
            "message": record.getMessage(),
        }
        fields = getattr(record, "access_fields", None)
        if isinstance(fields, dict):
            out.update(fields)
            for name in _CLIENT_TEXT_FIELDS:
                value = out.get(name)
                if isinstance(value, str) and not value.isascii():
                    out[name] = _unpaired_escaped(value)
        if not out["message"].isascii():
            out["message"] = _unpaired_escaped(out["message"])
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=True, default=str)


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler over a block-buffered stream that flushes in batches (see the module docstring)."""

    def __init__(self, stream: io.TextIOBase, interval: float = INTERVAL) -> None:
        super().__init__(stream)
        self.interval = interval
        self._flushed = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            now = time.time()
            if record.levelno >= logging.WARNING or now - self._flushed >= self.interval:
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self._flushed = time.time()
        super().flush()

    def write_info(self, name: str, message: str) -> None:
        """An INFO line as format() would render it, without a LogRecord (the access log's hot path)."""
        now = time.time()
        formatter = self.formatter
        assert isinstance(formatter, CachedTimeFormatter)
        if isinstance(formatter, JsonFormatter):
            line = (
                f'{{"timestamp": "{formatter.stamp(now)}", "level": "INFO", "logger": "{name}", '
                f'"worker": {_json(_worker)}, "pid": {_pid}, "message": {_json(message)}}}'
            )
        else:
            line = f"{formatter.stamp(now)} INFO {name} {message}"
        self.write_line(line, now)

    def write_json(self, name: str, message: str, fields: str, now: float) -> None:
        """A JSON line with `fields` (`"key": value, ...` already encoded) after the common ones."""
        formatter = self.formatter
        assert isinstance(formatter, JsonFormatter)
        self.write_line(
            f'{{"timestamp": "{formatter.stamp(now)}", "level": "INFO", "logger": "{name}", '
            f'"worker": {_json(_worker)}, "pid": {_pid}, "message": {_json(message)}, {fields}}}',
            now,
        )

    def write_line(self, line: str, now: float) -> None:
        try:
            self.stream.write(line + self.terminator)
            if now - self._flushed >= self.interval:
                self.flush()
        except Exception:  # like logging: a broken stderr must not break requests
            pass


# The handler install() put on the root logger, which access lines may reach without a
# LogRecord (see log_access); None when logging is set up some other way.
direct: BatchedStreamHandler | None = None


def install(level: str, fmt: str = "text", worker: int | None = None) -> None:
    """Log to stderr through a batched handler, as text or JSON; access lines may then skip LogRecords."""
    global direct, _worker, _pid
    _worker, _pid = worker, os.getpid()
    handler = stderr_handler(fmt)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)  # Python's warnings become records too (one format for every line)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorsAsWarnings) for f in server_log.filters):
        server_log.addFilter(ClientErrorsAsWarnings())
    direct = handler


class ClientErrorsAsWarnings(logging.Filter):
    """aiohttp's server logs a request it could not parse (a line too long, a bad method: the
    client's doing, answered 400) at ERROR with a traceback. Here it is a WARNING without one, at
    most one per `interval` seconds with a count of the others (a client may send them in a loop)."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._next = float("-inf")
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, BadHttpMessage):
            return True
        now = self.clock()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.interval
        reason = str(exc.message).splitlines()[0] if exc.message else type(exc).__name__
        more = f" (and {self.suppressed} more like it not logged)" if self.suppressed else ""
        self.suppressed = 0
        record.msg, record.args = f"{record.getMessage()}: bad request: {reason}{more}", ()
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True


def direct_writer(logger: logging.Logger) -> BatchedStreamHandler | None:
    """The batched handler, if `logger` would reach only it at INFO (no handlers or filters of its own)."""
    handler = direct
    if handler is None or logger.handlers or logger.filters or not logger.propagate:
        return None
    if not logger.isEnabledFor(logging.INFO) or logging.getLogger().handlers != [handler]:
        return None
    return handler


class BackgroundWriter(io.RawIOBase):
    """The log's bytes, written to a file descriptor by a thread of their own.

    A stderr nobody reads (a pipe whose reader stopped, a stuck terminal, a log
    collector that fell behind) blocks that thread, never the event loop: with a
    plain write the first full pipe stopped every request of the worker. What
    waits to be written is bounded by `limit` bytes; beyond it, log output is
    dropped (and counted in `dropped`) rather than held.
    """

    def __init__(self, fd: int, limit: int = WRITER_LIMIT) -> None:
        super().__init__()
        self.fd = fd
        self.limit = limit
        self.dropped = 0  # bytes of log output dropped while the reader was not keeping up
        self._chunks: list[bytes] = []
        self._waiting = 0  # bytes queued or being written
        self._cond = threading.Condition()
        threading.Thread(target=self._run, name="log-writer", daemon=True).start()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        with self._cond:
            if self._waiting + len(chunk) > self.limit:
                self.dropped += len(chunk)
            else:
                self._chunks.append(chunk)
                self._waiting += len(chunk)
                self._cond.notify_all()
        return len(chunk)  # taken (written or dropped): the buffer above never waits

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._chunks:
                    self._cond.wait()
                data = b"".join(self._chunks)
                self._chunks.clear()
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError:
                pass  # stderr closed or broken: like logging, a lost line never breaks a request
            with self._cond:
                self._waiting -= len(data)
                self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait (at exit) up to `timeout` seconds for what is queued to be written."""
        with self._cond:
            return self._cond.wait_for(lambda: self._waiting == 0, timeout)


def stderr_handler(fmt: str = "text") -> BatchedStreamHandler:
    """A batched handler on file descriptor 2, with its own 64 KiB buffer, written by a thread."""
    raw = BackgroundWriter(sys.stderr.fileno())
    stream = io.TextIOWrapper(io.BufferedWriter(raw, 64 * 1024), encoding="utf-8", errors="backslashreplace")
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else CachedTimeFormatter(FORMAT))

    def at_exit() -> None:
        # Before logging.shutdown (atexit runs the later registration first): the last lines
        # out of the buffer, then a bounded wait for the thread to write them.
        handler.flush()
        raw.drain(EXIT_DRAIN_SECONDS)

    atexit.register(at_exit)
    return handler


def is_json() -> bool:
    """Whether the command line's logging writes JSON (then a line for people is a record too)."""
    return direct is not None and isinstance(direct.formatter, JsonFormatter)


def announce(logger: logging.Logger, text: str, *, error: bool = False) -> None:
    """A line for the person who started the node (a banner, why it could not start).

    Printed as it is (stdout, or stderr for an error); with JSON logging it is a
    record like any other, so that every line of a run is JSON.
    """
    if is_json():
        (logger.error if error else logger.info)("%s", text)
        if direct is not None:
            direct.flush()
    else:
        print(text, file=sys.stderr if error else sys.stdout, flush=True)


async def flush_periodically(interval: float = INTERVAL) -> None:
    """Flush every root handler every `interval` seconds (run as a task for the life of the server)."""
    while True:
        await asyncio.sleep(interval)
        for handler in logging.getLogger().handlers:
            handler.flush()


# --------------------------------------------------------------------------- access lines


def log_access(
    cfg: Config,
    req: ClientRequest,
    status: int,
    member: bytes,
    outcome: int,
    nbytes: int,
    seconds: float,
    origin_seconds: float | None,
) -> None:
    """One access line (cfg.log.format: text or json); `member` is this node's Cache-Status member.

    `outcome` is the answer's proxy.observe outcome code (result and tier), `nbytes`
    what was written to the client, `origin_seconds` how long the request waited for
    the origin's response heads (None: it never went to the origin).

    Under the command line's own logging setup the line goes straight to the
    batched stderr writer, in the handler's format but without a LogRecord. Any
    other setup (tests, an embedding application) gets ordinary records: the text
    line as the message, the fields as `record.access_fields`.
    """
    result, tier = OUTCOMES[outcome]
    user_agent, request_id = _picked(req)
    cache = _member_text(member)
    total_ms = round(seconds * 1000, 3)
    origin_ms = None if origin_seconds is None else round(origin_seconds * 1000, 3)
    target = req.path_qs
    writer = direct_writer(access_log)
    if writer is not None and cfg.log.format == "json" and isinstance(writer.formatter, JsonFormatter):
        enc = _json
        fields = (
            f'"remote": {enc(req.remote)}, "method": {enc(req.method)}, "host": {enc(req.host)}, '
            f'"target": {enc(target)}, "status": {status}, "bytes": {nbytes}, "cache": {enc(cache)}, '
            f'"result": "{result}", "tier": "{tier}", "total_ms": {total_ms}, '
            f'"origin_ms": {enc(origin_ms)}, "user_agent": {enc(user_agent)}, "request_id": {enc(request_id)}'
        )
        writer.write_json("proxy.access", f"{req.method} {target} {status}", fields, time.time())
        return
    line = (
        f'{req.remote or "-"} "{_quoted(req.method)} {_quoted(target)}" {status} {nbytes} {result} {tier} '
        f"{total_ms:.3f}ms origin={'-' if origin_ms is None else f'{origin_ms:.3f}ms'} "
        f'"{cache_quoted(cache)}" host="{_quoted(req.host)}" ua="{_quoted(user_agent or "")}" '
        f'id="{_quoted(request_id)}"'
    )
    if writer is not None:
        writer.write_info("proxy.access", line)
        return
    values = (req.remote, req.method, req.host, target, status, nbytes, cache, result, tier)
    record_fields = dict(
        zip(ACCESS_FIELDS, (*values, total_ms, origin_ms, user_agent, request_id), strict=True)
    )
    access_log.info("%s", line, extra={"access_fields": record_fields})


def _picked(req: ClientRequest) -> tuple[str | None, str]:
    """The request's User-Agent, and its X-Request-Id (or one made up here)."""
    user_agent = request_id = None
    for name, value in req.raw_fields:
        size = len(name)
        if size == 10 and name.lower() == b"user-agent":
            user_agent = value.decode("utf-8", "surrogateescape")
        elif size == 12 and name.lower() == b"x-request-id":
            request_id = value.decode("utf-8", "surrogateescape").strip()[:REQUEST_ID_MAX]
    return user_agent, request_id or f"{_id_prefix}{next(_ids):x}"


_encode_str = json.encoder.encode_basestring_ascii  # the C encoder json.dumps uses for a str

# The access fields that carry a client's bytes as sent (decoded with surrogateescape).
_CLIENT_TEXT_FIELDS = ("user_agent", "request_id", "host", "target")
_UNPAIRED = re.compile("[\ud800-\udfff]")


def _unpaired_escaped(text: str) -> str:
    """`text` with its lone surrogates (bytes that were not UTF-8) written as the text lines
    write them (`\\xNN`): json.dumps would write "\\udcff", which is JSON but no Unicode, and
    strict parsers (serde_json, as in Vector) refuse the whole line, so a User-Agent with one
    byte 0xFF could keep its request out of a log pipeline."""
    return _UNPAIRED.sub(_escape, text) if _UNPAIRED.search(text) else text


def _json(value: object) -> str:
    """One JSON value (ASCII only: a line never depends on the stream's encoding)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return _encode_str(value)
    return json.dumps(value)


_members: dict[bytes, str] = {}


def _member_text(member: bytes) -> str:
    text = _members.get(member)
    if text is None:
        if len(_members) > 4096:
            _members.clear()
        text = _members[member] = member.decode("ascii", "replace")
    return text


# What text lines escape: the quote, the backslash, C0 and C1 controls, DEL, the lone
# surrogates that stand for bytes that were not UTF-8 (surrogateescape), and the few formatting
# characters that move text around: U+2028 / U+2029 end a line for str.splitlines and for a
# browser or a log viewer (one User-Agent wrote what read as a second, forged line), and the bidi
# controls (U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+2069) reorder what follows on screen.
_UNSAFE = re.compile('["\\\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]')


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in '"\\':
        return "\\" + char
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# What the CLI's tables escape: the same but the quote (a table has no quotes to close).
_UNPRINTABLE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
# What JSON printed for a person escapes beyond json.dumps(ensure_ascii=False): it escapes C0 only.
_UNPRINTABLE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` for a terminal (a URL or a tag in `minicdn inspect`): controls, the bidi controls
    and the line separators as `\\xNN` / `\\uNNNN` (they reorder or split the line), a backslash doubled."""
    return _UNPRINTABLE.sub(_escape, text) if _UNPRINTABLE.search(text) else text


def printable_json(text: str) -> str:
    """JSON text (json.dumps(..., ensure_ascii=False)) with the characters `printable` escapes
    written as JSON escapes: the same JSON value, nothing reordered on a terminal."""
    return _UNPRINTABLE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _quoted(text: str) -> str:
    """`text` safe inside double quotes: `"` and `\\` escaped, controls as \\xNN (others: \\uNNNN)."""
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


_quoted_members: dict[str, str] = {}


def cache_quoted(member: str) -> str:
    """A Cache-Status member inside quotes (its sf-strings carry quotes of their own), memoised."""
    quoted = _quoted_members.get(member)
    if quoted is None:
        if len(_quoted_members) > 4096:
            _quoted_members.clear()
        quoted = _quoted_members[member] = _quoted(member)
    return quoted
