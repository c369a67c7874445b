"""The on-disk tier (L2): codec-encoded resources in a diskcache.Cache.

diskcache keeps small values inline in SQLite and larger ones (>= 32 KiB by
default) as separate files, and is thread- and process-safe, so several worker
processes may share one directory. This class therefore keeps no in-process
state about the contents: only per-process counters.

Budget accounting uses diskcache's volume(), which is the SQLite file's size
(page-granular, about 32 KiB when empty) plus the sizes of the value files; it
does not count the SQLite WAL file (up to a few MiB between checkpoints).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, Literal

import diskcache
from diskcache.core import DBNAME, MODE_BINARY, MODE_PICKLE, MODE_RAW

from proxy import codec
from proxy.entry import CachedResource
from proxy.storage.base import EVICTION_POLICIES, EvictionPolicy, TierStats
from proxy.storage.open_files import OpenFiles
from proxy.warn import RateLimitedWarning

log = logging.getLogger("proxy.storage")

_DISKCACHE_POLICY: Final[dict[str, str]] = {
    "lru": "least-recently-used",
    "lfu": "least-frequently-used",
    "fifo": "least-recently-stored",
    "noeviction": "none",
}

# diskcache's own row lookup (Cache.get), minus its transaction: a read-only
# connection reads the row, and the access it would record is batched instead.
# Our keys are str, which diskcache stores raw (raw = 1).
_SELECT_ROW: Final = (
    "SELECT rowid, mode, filename, value, size FROM Cache"
    " WHERE key = ? AND raw = 1 AND (expire_time IS NULL OR expire_time > ?)"
)
# How each policy records an access, applied in one transaction per batch.
_RECORD_ACCESS: Final[dict[str, str]] = {
    "lru": "UPDATE Cache SET access_time = max(access_time, ?) WHERE rowid = ?",
    "lfu": "UPDATE Cache SET access_count = access_count + ? WHERE rowid = ?",
}
# A reader never waits long for a lock on the event loop: it gives up and the
# caller reads on the I/O pool instead, where diskcache's own timeout applies.
_LOOP_BUSY_TIMEOUT = 0.02


# Bumped in every forked child: a reader connection opened before a fork must
# not be used after it (SQLite connections do not survive fork). Comparing this
# per read is cheaper than os.getpid(), which is a system call.
_fork_generation = 0


def _forked() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_forked)

# SQLite's primary result codes for "not a database" and "malformed": the file, not the place.
_CORRUPT_CODES: Final = frozenset((sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT))
_NO_SPACE_ERRNOS: Final = frozenset((errno.ENOSPC, errno.EDQUOT))

# Why a write failed: no room on the disk (SQLITE_FULL, ENOSPC), a corrupt database, a lock
# held too long by another process, anything else (an I/O error).
WriteFailure = Literal["no_space", "corrupt", "timeout", "error"]


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def is_corrupt(exc: BaseException) -> bool:
    """Is this the error of a file that is not (or no longer) an SQLite database?"""
    return isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorcode", None) in _CORRUPT_CODES


def failure_of(exc: BaseException) -> WriteFailure:
    """What kind of failure a write's exception (or what caused it) is."""
    for cause in _causes(exc):
        if is_corrupt(cause):
            return "corrupt"
        if (
            isinstance(cause, sqlite3.Error)
            and getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        ):
            return "no_space"
        if isinstance(cause, OSError) and cause.errno in _NO_SPACE_ERRNOS:
            return "no_space"
        if isinstance(cause, diskcache.Timeout):
            return "timeout"
        if isinstance(cause, sqlite3.OperationalError) and getattr(cause, "sqlite_errorcode", None) in (
            sqlite3.SQLITE_BUSY,
            sqlite3.SQLITE_LOCKED,
        ):  # plain SQLite (the catalogue): a lock held past the busy timeout
            return "timeout"
    return "error"


# Distinguishes "no row" from a stored value in diskcache.get().
_MISSING: Final = object()
# Stands in for a key diskcache would have to unpickle (never written by us).
_FOREIGN_KEY: Final = object()


class _UnreadableEntry(Exception):
    """A row whose value cannot be read, or would need unpickling.

    Deliberately not an OSError: diskcache.get() swallows OSError from the
    value file and returns the default, which would hide a broken entry.
    """


class _SafeDisk(diskcache.Disk):  # type: ignore[misc]
    """diskcache's Disk, minus pickle on the read path and with visible read errors.

    This tier only ever writes str keys and bytes values, which diskcache
    stores raw. A pickled key or value in the directory was not written by us;
    loading it could execute code, so it is refused instead.

    It also notes the value files a batch writes (see DiskStorage._write_batch):
    diskcache writes a value file before its row, and a transaction rolled
    back would otherwise leave the files behind.
    """

    def __init__(self, directory: str, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self._written = threading.local()

    def track(self) -> list[str]:
        """Start noting the value files this thread writes; returns the list they go to."""
        files: list[str] = []
        self._written.files = files
        return files

    def untrack(self) -> None:
        self._written.files = None

    def filename(self, key: Any = diskcache.core.UNKNOWN, value: Any = diskcache.core.UNKNOWN) -> Any:
        # Every value file is named here first, so a file left half-written by a full disk is noted too.
        name, full_path = super().filename(key, value)
        files = getattr(self._written, "files", None)
        if files is not None:
            files.append(name)
        return name, full_path

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            return _FOREIGN_KEY
        return super().get(key, raw)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == MODE_PICKLE:
            raise _UnreadableEntry("pickled value refused")
        try:
            return super().fetch(mode, filename, value, read)
        except OSError as exc:
            raise _UnreadableEntry(f"value file unreadable: {exc!r}") from exc


class DiskStorage:
    """A byte-budgeted storage tier on diskcache; values are codec.encode() bytes.

    Policies map onto diskcache's: lru → least-recently-used, lfu →
    least-frequently-used, fifo → least-recently-stored, noeviction → none
    (plus refusing a set whose estimated new total exceeds the budget).
    "random" is not supported by diskcache and raises ValueError here;
    configuration validation rejects it for L2 as well.

    Eviction: diskcache's own per-set culling is disabled (cull_limit=0) so
    every eviction goes through Cache.cull() after a set and is counted.
    cull() removes up to 10 rows per round, so the tier can evict up to 9
    more entries than strictly needed: keep the budget well above 10 times the
    largest object. With lru/lfu every hit is a small SQLite write (diskcache
    records the access); fifo hits are read-only.

    read_now() is the read path of the engine: a plain SELECT on a read-only
    connection of its own, so a hit needs no write transaction and, for small
    values, no thread hop. The access an lru/lfu hit records (which diskcache's
    get() writes at once) is batched in memory and written by flush_access():
    before every eviction and about once a second, so eviction order lags by at
    most that much.

    The budget holds for volume() (see the module docstring) once it exceeds
    the ~32 KiB of an empty SQLite file. noeviction's check is an estimate
    (the encoded length against volume()), so it can overshoot by SQLite page
    rounding.

    Any failure to read or decode an entry (a missing or truncated value
    file, an SQLite error, garbage bytes, a pickled value, which this tier
    never writes and will not load) is a miss: the entry is removed,
    stats.corrupt counted and a warning logged. A lock timeout on read is a
    plain miss. A failed write makes set() return False. Neither raises.

    A corrupt database found at run time (SQLite says "malformed" or "not a
    database" on any operation) marks the tier failed for this process
    (`failure`): reads are misses and writes are refused without touching it,
    deletes are still tried (other processes sharing the file may still read
    it), and `on_corrupt` is told once (proxy/storage/opening.py notes it in
    the node's health and has the file moved aside at the next start). A
    database file removed from under the tier is reported the same way by
    refresh_stats() (without the marking: nothing is left to move).

    Stats are per process; stats.entries/bytes are refreshed after writes by
    this process, and on demand by refresh_stats(). Neither refresh_stats(),
    delete(), delete_many() nor clear() raises.
    """

    def __init__(
        self,
        directory: str | Path,
        budget_bytes: int,
        policy: EvictionPolicy = "lru",
        *,
        name: str = "l2",
        timeout: float = 5.0,
    ) -> None:
        if policy == "random":
            raise ValueError(
                "eviction policy 'random' is not supported by the disk tier (diskcache has none)"
            )
        if policy not in EVICTION_POLICIES:
            raise ValueError(f"unknown eviction policy {policy!r}; expected one of {EVICTION_POLICIES}")
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.name = name
        self.stats = TierStats()
        self.budget_bytes = budget_bytes
        self.policy: EvictionPolicy = policy
        self.directory = Path(directory)
        # timeout: seconds SQLite waits for a lock before diskcache raises
        # Timeout (diskcache's default, 60 s, would park an I/O thread far too
        # long; a timed-out get is a miss and a timed-out set is refused).
        self._cache: Any = diskcache.Cache(
            str(self.directory),
            timeout=timeout,
            size_limit=budget_bytes,
            cull_limit=0,
            eviction_policy=_DISKCACHE_POLICY[policy],
            disk=_SafeDisk,
        )
        self._db_path = self.directory.resolve() / DBNAME
        # (fork generation, connection): see _fork_generation.
        self._reader: tuple[int, sqlite3.Connection | None] | None = None
        self._record_access = _RECORD_ACCESS.get(policy)
        self._accessed: dict[int, int] = {}  # rowid -> hits not yet written
        self._accessed_lock = threading.Lock()
        self._in_read_txn = False
        # Metadata of records read on the loop, reused while their bytes stay the same.
        self._decoded = codec.DecodeMemo()
        self._open_files = OpenFiles()
        self._warn_write = RateLimitedWarning(log)
        self._warn_read = RateLimitedWarning(log)
        self._last_failure: WriteFailure | None = None
        self.last_failures: list[WriteFailure | None] = []  # see set_many
        # Set once, when the database is found corrupt (or gone) at run time: see the class docstring.
        self.failure: str | None = None
        self.on_corrupt: Callable[[str], None] | None = None
        self._failure_lock = threading.Lock()
        self._note_outdated = RateLimitedWarning(log, level=logging.INFO)
        # Unguarded, unlike refresh_stats(): a database found corrupt here is one to move aside
        # before the tier is used at all (proxy/storage/opening.py).
        self.stats.entries = len(self._cache)
        self.stats.bytes = int(self._cache.volume())

    # -- reads -----------------------------------------------------------------

    def get(self, key: str) -> CachedResource | None:
        """The resource under key, or None; never raises (bad entries are removed)."""
        if self.failure is not None:
            self.stats.misses += 1
            return None
        try:
            value = self._read(key)
        except diskcache.Timeout:
            self._warn_read("disk cache %s: lock timeout reading %r; treated as a miss", self.directory, key)
            self.stats.misses += 1
            return None
        except sqlite3.OperationalError as exc:
            # Not the entry's fault: a full disk (lru/lfu record the access in the same
            # transaction), an I/O error. A miss; the entry stays.
            self._corrupt(exc)
            self._warn_read(
                "disk cache %s: reading %r failed: %r; treated as a miss", self.directory, key, exc
            )
            self.stats.misses += 1
            return None
        except Exception as exc:  # any read failure must be a miss, never a 500
            if self._corrupt(exc):  # the database, not the entry
                self.stats.misses += 1
                return None
            self._drop_corrupt(key, f"reading it failed: {exc!r}")
            return None
        if value is _MISSING:
            self.stats.misses += 1
            return None
        try:
            if type(value) is not bytes:
                raise codec.CodecError(f"stored value is {type(value).__name__}, not bytes")
            resource = codec.decode(value)
            if resource.key != key:
                raise codec.CodecError(f"stored key {resource.key!r} does not match")
        except codec.CodecVersionError:
            self._drop_outdated(key)
            return None
        except codec.CodecError as exc:
            self._drop_corrupt(key, str(exc))
            return None
        self.stats.hits += 1
        return resource

    def read_now(
        self, key: str, max_bytes: int, *, count_miss: bool = True
    ) -> tuple[bool, CachedResource | None]:
        """Look key up without a write transaction: (answered, resource).

        (True, resource) is a hit, (True, None) a miss. (False, None) means
        "not answered here, use get()": the value is a file larger than
        max_bytes, a lock is held, or the entry looks broken (get() then
        retries or drops it, as it always has). Nothing here raises.
        count_miss=False leaves a miss uncounted, for a caller that will ask again.
        """
        if self.failure is not None:
            if count_miss:
                self.stats.misses += 1
            return True, None
        con = self._reader_connection()
        if con is None:
            return False, None
        try:
            if not self._in_read_txn:
                self._begin_read_txn(con)
            rows = con.execute(_SELECT_ROW, (key, time.time())).fetchall()
        except sqlite3.Error:  # busy, locked, or a directory diskcache has not set up
            return False, None
        if not rows:
            if count_miss:
                self.stats.misses += 1
            return True, None
        ((rowid, mode, filename, value, size),) = rows
        if filename is not None and size > max_bytes:
            return False, None  # a big value file: read it on the pool, off the loop
        try:
            if mode == MODE_RAW and type(value) is bytes:
                resource: CachedResource | None = self._decoded.decode(key, value)
            elif mode == MODE_BINARY and filename is not None:
                resource = self._read_value_file(key, filename, size)
            else:
                return False, None  # text or pickle: never written by this tier, get() drops it
        except Exception:  # a vanished or short file, garbage: get() judges it
            return False, None
        if resource is None or resource.key != key:
            return False, None
        if self._record_access is not None:
            with self._accessed_lock:
                self._accessed[rowid] = self._accessed.get(rowid, 0) + 1
        self.stats.hits += 1
        return True, resource

    def _read_value_file(self, key: str, filename: str, size: int) -> CachedResource | None:
        """The record in a value file; None if the file is not `size` bytes long."""
        path = os.path.join(self._cache.directory, filename)
        files = self._open_files
        body_start = self._decoded.known_source(key, filename)
        if body_start is not None:
            # The file read last time (value files are never rewritten): only the body is
            # read again, into a bytes object of its own.
            found = self._decoded.reuse(key, filename, files.read(path, body_start, size - body_start))
        else:
            data = files.read(path, 0, size + 1)  # one more: a longer file is broken too
            found = self._decoded.decode(key, data, source=filename) if len(data) == size else None
        if found is None:
            files.forget(path)
        return found

    def _begin_read_txn(self, con: sqlite3.Connection) -> None:
        """One read transaction for all the reads of this event-loop iteration.

        Each SQLite read transaction takes and drops WAL locks (system calls);
        a loop iteration answers many requests, so they share one, ended by
        the next iteration's first callback. What another connection commits
        meanwhile is seen one iteration later. That never serves a deleted or
        replaced entry: TieredStorage keeps keys with a delete or write in
        flight off this path, and a write's completion reaches the loop only
        after this transaction has ended (it is queued later).
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (tools, tests): each read is its own transaction
        con.execute("BEGIN")
        self._in_read_txn = True
        loop.call_soon(self._end_read_txn, con)

    def _end_read_txn(self, con: sqlite3.Connection) -> None:
        self._in_read_txn = False
        try:
            con.execute("COMMIT")
        except sqlite3.Error as exc:  # a read transaction has nothing to lose
            log.debug("disk cache %s: ending a read transaction: %r", self.directory, exc)

    def access_pending(self) -> bool:
        """Are there hits whose access flush_access() has not written yet?"""
        return bool(self._accessed)

    def flush_access(self) -> None:
        """Write the batched accesses of read_now() hits (lru: the time, lfu: the count)."""
        with self._accessed_lock:
            accessed, self._accessed = self._accessed, {}
        if not accessed or self._record_access is None:
            return
        if self.policy == "lru":
            now = time.time()
            rows = [(now, rowid) for rowid in accessed]
        else:
            rows = [(count, rowid) for rowid, count in accessed.items()]
        try:
            with self._cache.transact():
                # A row deleted meanwhile matches nothing; a reused rowid gets a
                # stray access, which only nudges eviction order.
                self._cache._con.executemany(self._record_access, rows)
        except Exception as exc:  # eviction order is a hint: never fail a caller over it
            self._corrupt(exc)
            self._warn_write(
                "disk cache %s: recording %d accesses failed: %r", self.directory, len(rows), exc
            )

    def _reader_connection(self) -> sqlite3.Connection | None:
        """This process's read-only connection (None if it cannot be opened)."""
        reader = self._reader
        if reader is not None and reader[0] == _fork_generation:
            return reader[1]
        con: sqlite3.Connection | None
        try:
            # check_same_thread=False: opened on whichever thread asks first;
            # only the event loop's thread uses it afterwards.
            con = sqlite3.connect(
                self._db_path.as_uri() + "?mode=ro",
                uri=True,
                timeout=_LOOP_BUSY_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
            )
            con.execute("PRAGMA mmap_size = 67108864")  # diskcache's own setting: reads from the page cache
        except sqlite3.Error as exc:
            log.warning("disk cache %s: no read-only connection: %r", self.directory, exc)
            con = None
        self._reader = (_fork_generation, con)
        return con

    def _read(self, key: str) -> Any:
        try:
            return self._cache.get(key, default=_MISSING)
        except _UnreadableEntry:
            # Another process may have replaced or deleted the entry between
            # diskcache reading its row and opening its file: ask once more.
            # A second failure propagates and marks the entry corrupt.
            return self._cache.get(key, default=_MISSING)

    def _drop_corrupt(self, key: str, why: str) -> None:
        self.stats.corrupt += 1
        self.stats.misses += 1
        self._warn_read("disk cache %s: dropping corrupt entry %r: %s", self.directory, key, why)
        self._delete_unreadable(key)

    def _drop_outdated(self, key: str) -> None:
        """A record of an older codec version (written before an upgrade): a miss, removed."""
        self.stats.outdated += 1
        self.stats.misses += 1
        self._note_outdated(
            "disk cache %s: removing entries of an older format (e.g. %r)", self.directory, key
        )
        self._delete_unreadable(key)

    def _delete_unreadable(self, key: str) -> None:
        try:
            self._cache.delete(key)
        except Exception as exc:  # best effort: the read is already a miss
            self._warn_read("disk cache %s: could not delete entry %r: %r", self.directory, key, exc)

    # -- writes ----------------------------------------------------------------

    def set(self, resource: CachedResource) -> bool:
        """Store resource; False when refused (too big, noeviction and full, or an I/O error)."""
        return self.set_many([resource])[0] is True

    def set_many(self, resources: list[CachedResource]) -> list[bool | None]:
        """Store several resources in one SQLite transaction, checking the budget once.

        Per resource: True stored, False refused (too big, noeviction and full,
        or culled at once), None failed (an I/O error: a full disk, a lock
        timeout). A refused or failed key's older value is removed (best
        effort) so that it cannot be served instead. Never raises.
        `last_failures` then says why each failed write failed (None for the others); a
        caller that writes under a lock of its own (TieredStorage) reads it under that lock.
        """
        stats = self.stats
        budget = self.budget_bytes
        results: list[bool | None] = [False] * len(resources)
        items: list[tuple[int, str, bytes]] = []
        refused: list[str] = []
        for i, resource in enumerate(resources):
            key = resource.key
            try:
                data = codec.encode(resource)
            except codec.CodecError as exc:
                log.warning("disk cache %s: cannot encode %r: %s", self.directory, key, exc)
                refused.append(key)
                continue
            # Either measure over the budget refuses, so that "too big" means the
            # same thing as in the memory tier.
            if len(data) > budget or resource.size() > budget:
                refused.append(key)
                continue
            items.append((i, key, data))
        why: list[WriteFailure | None] = [None] * len(resources)
        if items and self.failure is not None:
            for i, _, _ in items:
                results[i], why[i] = None, "corrupt"
        elif items:
            outcome = self._write_batch(items)
            failure = self._last_failure
            if outcome is None and len(items) > 1 and failure not in ("timeout", "corrupt"):
                # One bad entry must not sink the others: each alone (not after a lock
                # timeout, which each would wait out again, nor in a corrupt database).
                outcome = []
                for item in items:
                    alone = self._write_batch([item])
                    outcome += alone or [None]
                    why[item[0]] = None if alone is not None else self._last_failure
            else:
                for i, _, _ in items:
                    why[i] = None if outcome is not None else failure
            for (i, _, _), ok in zip(items, outcome or [None] * len(items), strict=True):
                results[i] = ok
        for result in results:
            if result is True:
                stats.sets += 1
            elif result is False:
                stats.rejected += 1
            else:
                stats.failed += 1
        refused += [resources[i].key for i, ok in enumerate(results) if ok is not True]
        if refused:
            self._drop_older(refused)
        self.last_failures = why
        return results

    def _write_batch(self, items: list[tuple[int, str, bytes]]) -> list[bool | None] | None:
        """One transaction for items; per item True / False (noeviction, culled), None if it failed."""
        cache = self._cache
        disk: _SafeDisk = cache._disk
        written = disk.track()
        results: list[bool | None] = []
        self._last_failure = None
        try:
            with cache.transact():
                volume = cache.volume() if self.policy == "noeviction" else 0
                for _, key, data in items:
                    if self.policy == "noeviction":
                        if not self._fits(key, len(data), volume):
                            results.append(False)
                            continue
                        volume += len(data)
                    cache.set(key, data)
                    results.append(True)
        except Exception as exc:  # disk full, SQLite errors, lock timeouts: nothing of the batch is stored
            self._last_failure = failure_of(exc)
            if self._last_failure == "corrupt":
                self._corrupt(exc)
            for filename in written:
                disk.remove(filename)  # value files of rows that were rolled back
            keys = ", ".join(repr(key) for _, key, _ in items[:3])
            self._warn_write(
                "disk cache %s: storing %d entries (%s%s) failed: %r",
                self.directory,
                len(items),
                keys,
                ", ..." if len(items) > 3 else "",
                exc,
            )
            return None
        finally:
            disk.untrack()
        try:
            volume = cache.volume()
            if volume > self.budget_bytes:
                self.flush_access()  # evict by what was really read, not by what was last written
                culled = cache.cull()
                self.stats.evictions += culled
                volume = cache.volume()
                if culled:
                    # cull() works in batches and can take new entries too.
                    for n, (_, key, _) in enumerate(items):
                        if results[n] and key not in cache:
                            results[n] = False
            self._refresh(volume)
        except Exception as exc:  # the entries are stored; only the budget check failed
            self._corrupt(exc)
            self._warn_write("disk cache %s: keeping the budget failed: %r", self.directory, exc)
        return results

    def _drop_older(self, keys: list[str]) -> None:
        """Remove the older values of keys whose new value was not stored (best effort)."""
        try:
            with self._cache.transact():
                for key in keys:
                    self._cache.delete(key)
        except Exception as exc:
            self._corrupt(exc)
            self._warn_write(
                "disk cache %s: removing %d older values failed: %r", self.directory, len(keys), exc
            )

    def _fits(self, key: str, new_len: int, volume: int) -> bool:
        """noeviction: would volume stay within the budget with this value stored?"""
        cache = self._cache
        if volume + new_len <= self.budget_bytes:
            return True
        # Only now is it worth reading the old value to credit its length.
        try:
            old = cache.get(key, default=None)
        except _UnreadableEntry:
            old = None
        old_len = len(old) if isinstance(old, bytes) else 0
        return volume - old_len + new_len <= self.budget_bytes

    def delete(self, key: str) -> bool:
        """Remove key; True when it was present. I/O errors are logged and give False."""
        try:
            removed = bool(self._cache.delete(key))
            if removed:
                self._refresh()
            return removed
        except Exception as exc:  # a purge must not crash the caller
            self._corrupt(exc)
            self._warn_write("disk cache %s: deleting %r failed: %r", self.directory, key, exc)
            return False

    def delete_many(self, keys: list[str]) -> list[str]:
        """Remove several keys in one SQLite transaction (purge by tag or prefix); the removed ones.

        One commit instead of one per key: a 10,000-key purge costs one fsync.
        If the batch fails it is tried key by key, except after a lock timeout
        (each key would wait it out again: a purge would take (N + 1) times the
        timeout) or in a corrupt database: then nothing is removed here, and the
        purge's bans keep screening the copies left (proxy/purger.py). Never raises.
        """
        removed: list[str] = []
        try:
            with self._cache.transact():
                for key in keys:
                    if self._cache.delete(key):
                        removed.append(key)
        except Exception as exc:  # never crash a purge
            failure = failure_of(exc)
            if failure == "corrupt":
                self._corrupt(exc)
            if failure in ("timeout", "corrupt") or len(keys) < 2:
                self._warn_write(
                    "disk cache %s: deleting %d keys failed (%r); left to the purge's bans",
                    self.directory,
                    len(keys),
                    exc,
                )
                return []
            self._warn_write(
                "disk cache %s: batch delete failed (%r); deleting one by one", self.directory, exc
            )
            removed = [k for k in keys if self.delete(k)]
        if removed:
            self._refresh()
        return removed

    # -- whole-cache operations --------------------------------------------------

    def keys(self) -> Iterator[str]:
        """A snapshot list of the stored keys (foreign non-str keys are skipped)."""
        return iter([k for k in self._cache if type(k) is str])

    def clear(self) -> None:
        """Remove every entry (also those written by other processes); failures are logged, not raised."""
        try:
            self._cache.clear()
        except Exception as exc:  # a purge of everything must not crash
            self._corrupt(exc)
            log.error("disk cache %s: removing every entry failed: %r", self.directory, exc)
        self._refresh()

    def close(self) -> None:
        """Close this thread's SQLite connection.

        diskcache connections are per thread; those opened in worker threads
        close when the threads exit (TieredStorage shuts its pool down first).
        The tier reopens lazily if used again. Batched accesses are written
        first, so a restart keeps the eviction order.
        """
        self.flush_access()
        reader, self._reader = self._reader, None
        if reader is not None and reader[1] is not None and reader[0] == _fork_generation:
            reader[1].close()  # ends a read transaction still open
        self._in_read_txn = False
        self._open_files.close()
        self._cache.close()

    # -- stats -------------------------------------------------------------------

    def volume(self) -> int:
        """diskcache's estimate of bytes on disk (SQLite file + value files)."""
        return int(self._cache.volume())

    def refresh_stats(self) -> TierStats:
        """Update stats.entries/bytes from the shared cache (two cheap SQLite reads); never raises.

        Also notices a database file removed from under the tier (an open
        connection keeps working on the unlinked file, silently).
        """
        if self.failure is None and not self._db_path.exists():
            self._report(f"{self._db_path} was removed while in use")
        self._refresh()
        return self.stats

    def _refresh(self, volume: int | None = None) -> None:
        if self.failure is not None:
            return  # the last figures stay
        cache = self._cache
        try:
            self.stats.entries = len(cache)
            self.stats.bytes = int(cache.volume()) if volume is None else volume
        except Exception as exc:  # the figures are a report: never fail the caller over them
            if not self._corrupt(exc):
                self._warn_write("disk cache %s: reading its size failed: %r", self.directory, exc)

    # -- failure -------------------------------------------------------------------

    def _corrupt(self, exc: BaseException) -> bool:
        """If exc says the database is corrupt, mark the tier failed (once); whether it did say so."""
        if failure_of(exc) != "corrupt":
            return False
        self._report(f"corrupt database: {exc!r}")
        return True

    def _report(self, why: str) -> None:
        """Mark the tier failed and tell on_corrupt (once)."""
        if self._fail(why):
            callback = self.on_corrupt
            if callback is not None:
                try:
                    callback(why)
                except Exception:
                    log.exception("disk cache %s: reporting its failure failed", self.directory)

    def _fail(self, why: str) -> bool:
        """Mark the tier failed for this process; False if it already was."""
        with self._failure_lock:
            if self.failure is not None:
                return False
            self.failure = why
        log.error(
            "disk cache %s: %s; this process stops reading and writing it (L1 keeps working)",
            self.directory,
            why,
        )
        return True

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        return bool(key in self._cache)
