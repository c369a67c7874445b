"""Where log lines go: stderr, written in batches so that access logging stays cheap.

Python's StreamHandler flushes after every record, and sys.stderr is line
buffered: one system call per access-log line, on the event loop, for every
request. Here records go into a 64 KiB buffer that is flushed when a record is
a warning or worse, when the last flush is `interval` seconds old, on every
tick of the event loop's flush timer (`flush_periodically`), and at exit
(logging.shutdown). The timestamp is formatted once per second, not per line.
A line therefore reaches stderr at most `interval` seconds after it was logged.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.config import Config

access_log = logging.getLogger("proxy.access")

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
INTERVAL = 0.2


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
        try:
            self.stream.write(f"{formatter.stamp(now)} INFO {name} {message}{self.terminator}")
            if now - self._flushed >= self.interval:
                self.flush()
        except Exception:  # like logging: a broken stderr must not break requests
            pass


# The handler install() put on the root logger, which access lines may reach without a
# LogRecord (see proxy.respond.log_access); None when logging is set up some other way.
direct: BatchedStreamHandler | None = None


def install(level: str) -> None:
    """Log to stderr through a batched handler; access lines may then skip LogRecords."""
    global direct
    handler = stderr_handler()
    logging.basicConfig(level=level, handlers=[handler], force=True)
    direct = handler


def direct_writer(logger: logging.Logger) -> BatchedStreamHandler | None:
    """The batched handler, if `logger` would reach only it at INFO (no handlers or filters of its own)."""
    handler = direct
    if handler is None or logger.handlers or logger.filters or not logger.propagate:
        return None
    if not logger.isEnabledFor(logging.INFO) or logging.getLogger().handlers != [handler]:
        return None
    return handler


def stderr_handler() -> BatchedStreamHandler:
    """A batched handler on file descriptor 2, with its own 64 KiB buffer."""
    raw = io.FileIO(sys.stderr.fileno(), "w", closefd=False)
    stream = io.TextIOWrapper(io.BufferedWriter(raw, 64 * 1024), encoding="utf-8", errors="backslashreplace")
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(CachedTimeFormatter(FORMAT))
    return handler


async def flush_periodically(interval: float = INTERVAL) -> None:
    """Flush every root handler every `interval` seconds (run as a task for the life of the server)."""
    while True:
        await asyncio.sleep(interval)
        for handler in logging.getLogger().handlers:
            handler.flush()


def log_access(
    cfg: Config, remote: str | None, method: str, url: str, status: int, cache: str, seconds: float
) -> None:
    """One access-log line (cfg.log.format: text or json); `cache` is this node's Cache-Status member.

    Under the command line's own logging setup the line goes straight to the
    batched stderr writer, in logging's format but without a LogRecord: a
    record costs more than a cache hit. Any other setup (tests, an embedding
    application) gets ordinary records.
    """
    if cfg.log.format == "json":
        line = json.dumps(
            {
                "method": method,
                "url": url,
                "status": status,
                "cache": cache,
                "ms": round(seconds * 1000, 2),
                "remote": remote,
            }
        )
    else:
        line = f'{remote} "{method} {url}" {status} "{cache}" {seconds * 1000:.1f}ms'
    writer = direct_writer(access_log)
    if writer is not None:
        writer.write_info("proxy.access", line)
    else:
        access_log.info("%s", line)
