"""The catalogue of stored keys: URL, tags and size per key, plus the purge log.

It answers "which keys does this purge cover?" (exact URL or path, URL or
path prefix, exact tags, everything) without scanning the tiers, and lets the
workers of one node that share an L2 directory learn of each other's purges
(the log, read from the last epoch a worker applied). It lives in SQLite next
to the L2 so it is shared by those workers and survives restarts; with no L2
it is an in-memory database.

Rows can outlive their entry when a tier evicts it; `prune` removes rows whose
key no tier holds any more, and every purge forgets the keys it covered, so
the index stays bounded by what is stored.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CATALOG_FILE = "catalog.sqlite3"
# Purge log records kept; a worker further behind clears its whole L1 instead.
PURGE_LOG_KEEP = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    stored_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_url ON entries(url);
CREATE INDEX IF NOT EXISTS entries_path ON entries(path);
CREATE TABLE IF NOT EXISTS tags (
    tag TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (tag, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_key ON tags(key);
CREATE TABLE IF NOT EXISTS purges (
    epoch INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    soft INTEGER NOT NULL,
    everything INTEGER NOT NULL,
    keys TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class PurgeRecord:
    """One purge in the log: the keys it covered (or everything), hard or soft, and when."""

    epoch: int
    at: float
    soft: bool
    everything: bool
    keys: tuple[str, ...]


def split_key(key: str) -> tuple[str, str]:
    """(url, path) of a primary key "<namespace>|<scheme>://<host><path?query>"."""
    _, _, url = key.partition("|")
    _, _, rest = url.partition("://")
    slash = rest.find("/")
    path = rest[slash:] if slash >= 0 else "/"
    return url, path


def _prefix_bounds(prefix: str) -> tuple[str, str]:
    """[low, high) of the strings starting with prefix, for an indexed range scan."""
    return prefix, prefix + "\U0010ffff"


class Catalog:
    """SQLite-backed index of keys, tags and purges; safe to call from any thread."""

    def __init__(self, directory: str | Path | None) -> None:
        target = ":memory:" if directory is None else str(Path(directory) / CATALOG_FILE)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None, timeout=10.0)
        # Workers sharing the directory start together; switching to WAL can answer
        # "database is locked" at once, without waiting on the busy timeout. Retry.
        deadline = time.monotonic() + 15.0
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                break
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ----------------------------------------------------------------- entries

    def record(self, key: str, tags: Iterable[str], size: int, stored_at: float) -> None:
        """Remember key (replacing what was known of it) with its tags."""
        url, path = split_key(key)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO entries(key, url, path, size, stored_at) VALUES (?, ?, ?, ?, ?)",
                (key, url, path, size, stored_at),
            )
            db.execute("DELETE FROM tags WHERE key = ?", (key,))
            db.executemany("INSERT OR IGNORE INTO tags(tag, key) VALUES (?, ?)", ((t, key) for t in tags))

    def forget(self, keys: Iterable[str]) -> None:
        batch = [(k,) for k in keys]
        with self._tx() as db:
            db.executemany("DELETE FROM entries WHERE key = ?", batch)
            db.executemany("DELETE FROM tags WHERE key = ?", batch)

    def forget_all(self) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM entries")
            db.execute("DELETE FROM tags")

    def _select(self, sql: str, args: tuple[object, ...]) -> list[str]:
        with self._lock:
            return [row[0] for row in self._db.execute(sql, args)]

    def keys_for_url(self, url_or_path: str) -> list[str]:
        """Keys of one URL (absolute: exact; "/path?query": on any host)."""
        column = "path" if url_or_path.startswith("/") else "url"
        return self._select(f"SELECT key FROM entries WHERE {column} = ?", (url_or_path,))

    def keys_for_prefix(self, prefix: str) -> list[str]:
        """Keys whose URL (absolute prefix) or path ("/..." prefix) starts with prefix."""
        column = "path" if prefix.startswith("/") else "url"
        low, high = _prefix_bounds(prefix)
        return self._select(f"SELECT key FROM entries WHERE {column} >= ? AND {column} < ?", (low, high))

    def keys_for_tags(self, tags: Iterable[str]) -> list[str]:
        """Keys carrying any of the tags (exact match: "a" never matches "ab")."""
        wanted = list(dict.fromkeys(tags))
        if not wanted:
            return []
        marks = ",".join("?" * len(wanted))
        return self._select(f"SELECT DISTINCT key FROM tags WHERE tag IN ({marks})", tuple(wanted))

    def all_keys(self) -> list[str]:
        return self._select("SELECT key FROM entries", ())

    def count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()
        return int(n)

    def prune(self, exists: Callable[[str], bool], batch: int = 1000) -> int:
        """Forget rows whose key no tier holds (`exists` says); returns how many."""
        gone: list[str] = [k for k in self.all_keys() if not exists(k)]
        for i in range(0, len(gone), batch):
            self.forget(gone[i : i + batch])
        return len(gone)

    # --------------------------------------------------------------- purge log

    def append_purge(self, keys: Iterable[str] | None, soft: bool, at: float) -> int:
        """Log a purge (keys, or None for everything); returns its epoch."""
        everything = keys is None
        payload = json.dumps([] if keys is None else list(keys))
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO purges(at, soft, everything, keys) VALUES (?, ?, ?, ?)",
                (at, int(soft), int(everything), payload),
            )
            epoch = int(cur.lastrowid or 0)
            db.execute("DELETE FROM purges WHERE epoch <= ?", (epoch - PURGE_LOG_KEEP,))
        return epoch

    def last_epoch(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COALESCE(MAX(epoch), 0) FROM purges").fetchone()
        return int(n)

    def purges_since(self, epoch: int) -> list[PurgeRecord] | None:
        """Purges after `epoch`, oldest first; None if the log no longer reaches back that far."""
        with self._lock:
            (oldest,) = self._db.execute("SELECT MIN(epoch) FROM purges").fetchone()
            rows = self._db.execute(
                "SELECT epoch, at, soft, everything, keys FROM purges WHERE epoch > ? ORDER BY epoch",
                (epoch,),
            ).fetchall()
        if oldest is not None and epoch > 0 and oldest > epoch + 1 and rows:
            return None
        return [
            PurgeRecord(int(e), float(a), bool(s), bool(ev), tuple(json.loads(k))) for e, a, s, ev, k in rows
        ]

    def recent_purges(self, since: float) -> list[PurgeRecord]:
        """Purges logged at or after `since` (clock time), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT epoch, at, soft, everything, keys FROM purges WHERE at >= ? ORDER BY epoch", (since,)
            ).fetchall()
        return [
            PurgeRecord(int(e), float(a), bool(s), bool(ev), tuple(json.loads(k))) for e, a, s, ev, k in rows
        ]

    # ------------------------------------------------------------------- meta

    def get_meta(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, name: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)", (name, value))
