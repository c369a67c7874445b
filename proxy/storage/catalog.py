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

Rows are written in batches (`write_rows`, one transaction for many rows) by
each worker's background writer, never on a request's path. A purge resolves
its keys and logs itself in one transaction (`log_purge`), and a batch reads
the purges logged since its worker last looked in the same transaction as it
writes its rows: whichever commits first, the other sees it, so a row is
never written for a copy that a purge missed. A purge log record carries what
the purge named (tags, URLs, prefixes), not only the keys it found, so every
worker can screen copies the catalogue did not list yet.

A row the catalogue cannot have written (a key that is not UTF-8 text, NULL
or a BLOB, longer than any request could make; a purge record whose fields
have the wrong type or are not JSON) is damage: a read skips it with a
warning (a key's rows are removed, so it does not come back), and the rest of
the batch is read as usual. A purge record is kept (the log ages it out) and a
worker that has to apply it clears its L1 instead (`purges_since` says None).

Schema: version 2 added the purge log's `tags`, `urls`, `prefixes` and
`ban_epoch` columns; an older file is migrated in place when it is opened (its records
read as naming keys only).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from proxy.bans import split_key
from proxy.warn import RateLimitedWarning

__all__ = ["Catalog", "CatalogRow", "PurgeMatch", "PurgeRecord", "RowScreen", "split_key"]

log = logging.getLogger("proxy.storage.catalog")

CATALOG_FILE = "catalog.sqlite3"
# No request makes a longer key (the front refuses a head over 64 KiB): a longer one is damage.
MAX_KEY_CHARS = 256 * 1024
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
    keys TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT '[]',
    urls TEXT NOT NULL DEFAULT '[]',
    prefixes TEXT NOT NULL DEFAULT '[]',
    ban_epoch INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SCHEMA_VERSION = 2
# Columns added to the purge log after version 1, with their definitions (see _migrate).
_PURGE_COLUMNS_V2 = {
    "tags": "TEXT NOT NULL DEFAULT '[]'",
    "urls": "TEXT NOT NULL DEFAULT '[]'",
    "prefixes": "TEXT NOT NULL DEFAULT '[]'",
    "ban_epoch": "INTEGER NOT NULL DEFAULT 0",
}
_PURGE_COLUMNS = "epoch, at, soft, everything, keys, tags, urls, prefixes, ban_epoch"


@dataclass(frozen=True, slots=True)
class PurgeMatch:
    """What a purge names, besides keys: exact tags, exact URLs and URL prefixes.

    URLs and prefixes are spelled as the catalogue's columns: "/..." is a path
    (on any host), anything else an absolute URL.
    """

    tags: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PurgeRecord:
    """One purge in the log: the keys it covered (or everything), what it named, hard or soft, and when.

    `ban_epoch`, when set, is the epoch before which a copy is covered (a purge of
    late copies covers what an earlier purge covered, not what was fetched since);
    0 means the record's own epoch.
    """

    epoch: int
    at: float
    soft: bool
    everything: bool
    keys: tuple[str, ...]
    tags: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    ban_epoch: int = 0

    @property
    def match(self) -> PurgeMatch:
        return PurgeMatch(self.tags, self.urls, self.prefixes)


@dataclass(frozen=True, slots=True)
class CatalogRow:
    """One stored resource as the catalogue lists it, and what a purge screen needs of it.

    `variants` holds each variant's (fetch epoch, tags): a purge logged after
    a variant was fetched does not cover it.
    """

    key: str
    tags: tuple[str, ...]
    size: int
    stored_at: float
    variants: tuple[tuple[int, tuple[str, ...]], ...] = ()


class RowVerdict(Protocol):
    """A row covered by a purge (proxy.bans.Ban): soft (write it; its copies are marked stale) or hard
    (do not; its copies must go), and the epoch before which copies are covered."""

    @property
    def soft(self) -> bool: ...
    @property
    def epoch(self) -> int: ...


# Given the purges logged since the writer last looked, judges a row: None (write it) or its verdict.
RowScreen = Callable[[list[PurgeRecord]], Callable[[CatalogRow], RowVerdict | None]]


# How a catalogue reports damaged rows (RateLimitedWarning: they are skipped on every read until removed).
Warn = Callable[..., object]


def _record(row: tuple[object, ...]) -> PurgeRecord | None:
    """A purge log row as a record; None when a field has the wrong type or is not JSON (damage)."""
    e, a, s, ev, k, t, u, p, b = row
    if not (isinstance(e, int) and isinstance(s, int) and isinstance(ev, int) and isinstance(b, int)):
        return None
    if not isinstance(a, int | float) or not math.isfinite(a):
        return None
    try:
        keys, tags, urls, prefixes = (_strings(v) for v in (k, t, u, p))
    except ValueError:
        return None
    return PurgeRecord(e, float(a), bool(s), bool(ev), keys, tags, urls, prefixes, b)


def _strings(value: object) -> tuple[str, ...]:
    """A JSON list of strings (a purge record's keys, tags, URLs or prefixes); ValueError if not one."""
    if not isinstance(value, str):
        raise ValueError("not text")
    items = json.loads(value)
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError("not a list of strings")
    return tuple(items)


def _records(rows: Iterable[tuple[object, ...]], warn: Warn) -> tuple[list[PurgeRecord], list[object]]:
    """The purge log rows that read as records, and the epochs of those that do not (warned of)."""
    good: list[PurgeRecord] = []
    bad: list[object] = []
    for row in rows:
        record = _record(row)
        if record is None:
            bad.append(row[0])
        else:
            good.append(record)
    if bad:
        warn("catalogue: purge log records %s are damaged; skipped", _shown(bad))
    return good, bad


def _text(raw: bytes) -> str | bytes:
    """SQLite TEXT as str; text that is not UTF-8 (the catalogue never writes it) stays bytes, so a
    read can skip its row instead of failing with every other row of the batch."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _shown(values: list[object], most: int = 5) -> str:
    """Damaged values for a log line: escaped (repr, ASCII) and cut short."""
    shown = ", ".join(ascii(v)[:80] for v in values[:most])
    return shown + (f" (+{len(values) - most} more)" if len(values) > most else "")


def _prefix_bounds(prefix: str) -> tuple[str, str]:
    """[low, high) of the strings starting with prefix, for an indexed range scan."""
    return prefix, prefix + "\U0010ffff"


class Catalog:
    """SQLite-backed index of keys, tags and purges; safe to call from any thread."""

    def __init__(self, directory: str | Path | None) -> None:
        target = ":memory:" if directory is None else str(Path(directory) / CATALOG_FILE)
        self._lock = threading.Lock()
        self._warn = RateLimitedWarning(log)
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.text_factory = _text
        # Workers sharing the directory start together; switching to WAL can answer
        # "database is locked" at once, without waiting on the busy timeout. Retry.
        deadline = time.monotonic() + 15.0
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                self._migrate()
                break
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _migrate(self) -> None:
        """Bring a catalogue written by an older version up to SCHEMA_VERSION (idempotent, race-safe)."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version >= SCHEMA_VERSION:
            return
        self._db.execute("BEGIN IMMEDIATE")  # one worker migrates; the others then see it done
        try:
            have = {row[1] for row in self._db.execute("PRAGMA table_info(purges)")}
            for name, definition in _PURGE_COLUMNS_V2.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE purges ADD COLUMN {name} {definition}")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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

    def write_rows(
        self, rows: list[CatalogRow], forget: Iterable[str], since: int, screen: RowScreen
    ) -> tuple[list[PurgeRecord], dict[str, RowVerdict]]:
        """Write a batch of rows and forget keys, in one transaction, screened against new purges.

        Reads the purges logged after epoch `since` in the same transaction, and
        writes no row that `screen` judges covered by a hard one. Returns those
        purges and the covered keys with their verdicts.
        """
        covered: dict[str, RowVerdict] = {}
        with self._tx() as db:
            records = _records(db.execute(_SELECT_SINCE, (since,)), self._warn)[0] if rows else []
            kept: list[CatalogRow] = []
            judge = screen(records) if records else None
            for row in rows:
                verdict = judge(row) if judge is not None else None
                if verdict is not None:
                    covered[row.key] = verdict
                if verdict is None or verdict.soft:
                    kept.append(row)
            gone = [(k,) for k in forget]
            db.executemany("DELETE FROM entries WHERE key = ?", gone)
            db.executemany("DELETE FROM tags WHERE key = ?", gone + [(row.key,) for row in kept])
            db.executemany(
                "INSERT OR REPLACE INTO entries(key, url, path, size, stored_at) VALUES (?, ?, ?, ?, ?)",
                [(row.key, *split_key(row.key), row.size, row.stored_at) for row in kept],
            )
            db.executemany(
                "INSERT OR IGNORE INTO tags(tag, key) VALUES (?, ?)",
                [(tag, row.key) for row in kept for tag in row.tags],
            )
        return records, covered

    def forget(self, keys: Iterable[str]) -> None:
        batch = [(k,) for k in keys]
        with self._tx() as db:
            db.executemany("DELETE FROM entries WHERE key = ?", batch)
            db.executemany("DELETE FROM tags WHERE key = ?", batch)

    def forget_all(self) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM entries")
            db.execute("DELETE FROM tags")

    def keys_for_url(self, url_or_path: str) -> list[str]:
        """Keys of one URL (absolute: exact; "/path?query": on any host)."""
        with self._lock:
            return _keys_for_url(self._db, self._warn, url_or_path)

    def keys_for_prefix(self, prefix: str) -> list[str]:
        """Keys whose URL (absolute prefix) or path ("/..." prefix) starts with prefix."""
        with self._lock:
            return _keys_for_prefix(self._db, self._warn, prefix)

    def keys_for_tags(self, tags: Iterable[str]) -> list[str]:
        """Keys carrying any of the tags (exact match: "a" never matches "ab")."""
        with self._lock:
            return _keys_for_tags(self._db, self._warn, tags)

    def all_keys(self) -> list[str]:
        with self._lock:
            return _keys(self._db, self._warn, "SELECT key FROM entries", ())

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
        """Log a purge of keys (or None: everything); returns its epoch."""
        epoch, _ = self.log_purge(None if keys is None else list(keys), None, soft, at)
        return epoch

    def log_purge(
        self, keys: list[str] | None, match: PurgeMatch | None, soft: bool, at: float, ban_epoch: int = 0
    ) -> tuple[int, list[str]]:
        """Resolve `match` to keys and log the purge, in one transaction: (epoch, keys covered).

        keys=None is a purge of everything. The keys found for `match` are
        added to `keys`; the record keeps `match` too (see the module docstring).
        """
        everything = keys is None
        found: dict[str, None] = dict.fromkeys(keys or ())
        match = match or PurgeMatch()
        with self._tx() as db:
            if not everything:
                found.update(dict.fromkeys(_keys_for_tags(db, self._warn, match.tags)))
                for url in match.urls:
                    found.update(dict.fromkeys(_keys_for_url(db, self._warn, url)))
                for prefix in match.prefixes:
                    found.update(dict.fromkeys(_keys_for_prefix(db, self._warn, prefix)))
            cur = db.execute(
                "INSERT INTO purges(at, soft, everything, keys, tags, urls, prefixes, ban_epoch)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    at,
                    int(soft),
                    int(everything),
                    json.dumps(list(found)),
                    json.dumps(list(match.tags)),
                    json.dumps(list(match.urls)),
                    json.dumps(list(match.prefixes)),
                    ban_epoch,
                ),
            )
            epoch = int(cur.lastrowid or 0)
            db.execute("DELETE FROM purges WHERE epoch <= ?", (epoch - PURGE_LOG_KEEP,))
        return epoch, list(found)

    def last_epoch(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COALESCE(MAX(epoch), 0) FROM purges").fetchone()
        return int(n)

    def purges_since(self, epoch: int) -> list[PurgeRecord] | None:
        """Purges after `epoch`, oldest first; None if the log no longer reaches back that far, or
        one of them cannot be read (either way, what they covered is not known)."""
        with self._lock:
            (oldest,) = self._db.execute("SELECT MIN(epoch) FROM purges").fetchone()
            rows = self._db.execute(_SELECT_SINCE, (epoch,)).fetchall()
        if oldest is not None and epoch > 0 and oldest > epoch + 1 and rows:
            return None
        records, bad = _records(rows, self._warn)
        return None if bad else records

    def recent_purges(self, since: float) -> list[PurgeRecord]:
        """Purges logged at or after `since` (clock time), oldest first (damaged ones skipped)."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_PURGE_COLUMNS} FROM purges WHERE at >= ? ORDER BY epoch", (since,)
            ).fetchall()
        return _records(rows, self._warn)[0]

    # ------------------------------------------------------------------- meta

    def get_meta(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row is not None and isinstance(row[0], str) else None  # not text: damage, absent

    def set_meta(self, name: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)", (name, value))

    def meta_named(self, prefix: str) -> dict[str, str]:
        """Every meta row whose name starts with prefix (a plain prefix: no LIKE wildcards)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, value FROM meta WHERE substr(name, 1, ?) = ?", (len(prefix), prefix)
            ).fetchall()
        return {name: value for name, value in rows if isinstance(name, str) and isinstance(value, str)}


_SELECT_SINCE = f"SELECT {_PURGE_COLUMNS} FROM purges WHERE epoch > ? ORDER BY epoch"


def _keys(db: sqlite3.Connection, warn: Warn, sql: str, args: tuple[object, ...]) -> list[str]:
    """The keys a query finds; a damaged one (see the module docstring) is skipped and its rows removed."""
    keys: list[str] = []
    damaged: list[object] = []
    for (key,) in db.execute(sql, args).fetchall():
        if isinstance(key, str) and len(key) <= MAX_KEY_CHARS:
            keys.append(key)
        else:
            damaged.append(key)
    if damaged:
        _remove_damaged(db, warn, damaged)
    return keys


def _remove_damaged(db: sqlite3.Connection, warn: Warn, damaged: list[object]) -> None:
    """Remove the rows of keys no request could have (best effort: a read-only file keeps them)."""
    where: str
    args: tuple[object, ...]
    try:
        for key in damaged:
            if key is None:
                where, args = "key IS NULL", ()
            elif isinstance(key, str):  # too long
                where, args = "key = ?", (key,)
            else:  # text that is not UTF-8, or a BLOB: compared byte for byte
                where, args = "CAST(key AS BLOB) = ?", (key,)
            db.execute(f"DELETE FROM entries WHERE {where}", args)
            db.execute(f"DELETE FROM tags WHERE {where}", args)
    except sqlite3.Error as exc:
        warn("catalogue: damaged keys %s skipped; removing them failed (%r)", _shown(damaged), exc)
        return
    warn("catalogue: damaged keys %s skipped and removed", _shown(damaged))


def _keys_for_url(db: sqlite3.Connection, warn: Warn, url_or_path: str) -> list[str]:
    column = "path" if url_or_path.startswith("/") else "url"
    return _keys(db, warn, f"SELECT key FROM entries WHERE {column} = ?", (url_or_path,))


def _keys_for_prefix(db: sqlite3.Connection, warn: Warn, prefix: str) -> list[str]:
    column = "path" if prefix.startswith("/") else "url"
    low, high = _prefix_bounds(prefix)
    return _keys(db, warn, f"SELECT key FROM entries WHERE {column} >= ? AND {column} < ?", (low, high))


def _keys_for_tags(db: sqlite3.Connection, warn: Warn, tags: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(tags))
    if not wanted:
        return []
    marks = ",".join("?" * len(wanted))
    return _keys(db, warn, f"SELECT DISTINCT key FROM tags WHERE tag IN ({marks})", tuple(wanted))
