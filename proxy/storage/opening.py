"""Opening the on-disk parts at start, whatever state the cache directory is in (issue 12 row 7).

What must live here: what a node does when its cache directory cannot be used
as it is. A corrupt SQLite file (the disk tier's `cache.db`, the catalogue) is
moved aside, next to where it was, and a fresh one started; a directory that
cannot be written (read-only, missing permissions) means no disk tier, with
the catalogue and the purge epoch in a directory of the temp dir that every
worker of the box finds alike, so that purges still reach all of them. Each
case is logged as an error and reported in /stats (`health`). Nothing here
raises: a node always starts.

Several workers may open one directory at once: moving a corrupt file aside
happens under an exclusive lock, after opening it again, so that only one
worker moves it and the others open the fresh one.

A disk tier found corrupt while it runs (DiskStorage.on_corrupt) is not moved
aside then: the other workers of the box have the file open and keep using
their handles on it (a file renamed under them stays theirs, while their next
new connection would open a fresh file: two caches where the box expects
one). The worker marks its health failed and leaves a marker file
(CORRUPT_MARK) next to the database; the next start moves the database aside
as it moves a file that will not open, whatever worker starts first. A worker
restarted on its own while others still run moves it too, as a start always
has: those others have found the file corrupt or will (they stop using it).

Corruption is what SQLite calls it (NOTADB, CORRUPT), or an error diskcache
raises while reading its Settings table when that table holds what it never
writes (a key that is not text, a value of another type than its default's):
other errors, such as missing permissions, are not corruption and never move
a cache aside.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import diskcache
from diskcache.core import DBNAME

from proxy.storage.base import EvictionPolicy
from proxy.storage.catalog import CATALOG_FILE, Catalog
from proxy.storage.disk import DiskStorage, is_corrupt
from proxy.storage.epoch import EpochCounter

log = logging.getLogger("proxy.storage")

LOCK_FILE = ".minicdn-open.lock"
# Left next to cache.db by a worker that found it corrupt at run time: moved aside at the next start.
CORRUPT_MARK = ".minicdn-corrupt"

# diskcache's value files live in folders named by two hex digits.
_VALUE_DIR = re.compile(r"[0-9a-f]{2}")

_T = TypeVar("_T")


@dataclass(slots=True)
class StorageHealth:
    """How the on-disk parts opened; /stats shows it as `health`."""

    l2: str = "ok"  # "ok", "disabled" (by the config) or "failed" (running without it)
    l2_error: str | None = None
    catalog: str = "shared"  # "shared" (next to L2), "fallback" (temp dir), "memory" (this worker only)
    catalog_dir: str | None = None
    catalog_error: str | None = None
    moved_aside: list[str] = field(default_factory=list)  # corrupt files renamed at start


__all__ = ["CORRUPT_MARK", "StorageHealth", "fallback_dir", "is_corrupt", "open_catalog", "open_disk"]


def open_disk(
    directory: str | Path, budget: int, eviction: EvictionPolicy, health: StorageHealth
) -> DiskStorage | None:
    """The disk tier in `directory`, a fresh one if its database was corrupt, or None if it cannot be used."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        disk = _open_or_recover(path, DBNAME, lambda: DiskStorage(path, budget, eviction), health)
    except Exception as exc:
        health.l2, health.l2_error = "failed", f"{type(exc).__name__}: {exc}"
        log.error(
            "disk cache %s cannot be used (%s); running without the disk tier (L2)", path, health.l2_error
        )
        return None
    disk.on_corrupt = functools.partial(_corrupt_at_run_time, path, health)
    return disk


def _corrupt_at_run_time(directory: Path, health: StorageHealth, why: str) -> None:
    """DiskStorage.on_corrupt: health says so, and the next start moves the database aside (any thread)."""
    health.l2, health.l2_error = (
        "failed",
        f"failed while running ({why}); moved aside at the next start",
    )
    try:
        with open(directory / CORRUPT_MARK, "w") as mark:
            mark.write(why + "\n")
    except OSError as exc:
        log.error("disk cache %s: cannot leave the corruption marker (%r)", directory, exc)


def open_catalog(directory: str | Path | None, health: StorageHealth) -> tuple[Catalog, EpochCounter]:
    """The catalogue and the purge epoch: next to L2, else in a fallback directory, else in memory."""
    candidates: list[tuple[str, Path | None]] = []
    if directory is not None:
        if health.l2 == "failed":
            candidates.append(("fallback", fallback_dir(directory)))
        else:
            candidates.append(("shared", Path(directory)))
    candidates.append(("memory", None))
    for kind, where in candidates:
        try:
            if where is None:
                catalog, epoch = Catalog(None), EpochCounter(None)
            else:
                where.mkdir(parents=True, exist_ok=True)
                catalog = _open_or_recover(where, CATALOG_FILE, functools.partial(Catalog, where), health)
                epoch = EpochCounter(where)
        except Exception as exc:
            health.catalog_error = f"{type(exc).__name__}: {exc}"
            log.error("catalogue in %s cannot be used (%s)", where, health.catalog_error)
            continue
        health.catalog, health.catalog_dir = kind, None if where is None else str(where)
        if kind == "fallback":
            log.error("catalogue and purge log in %s instead (the cache directory cannot be used)", where)
        elif kind == "memory" and directory is not None:
            log.error("catalogue and purge log in memory: purges reach only the worker that takes them")
        return catalog, epoch
    raise AssertionError("an in-memory catalogue always opens")


def fallback_dir(directory: str | Path) -> Path:
    """A directory in the temp dir, the same for every worker given the same cache directory."""
    digest = hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"minicdn-catalog-{digest}"


def _open_or_recover(directory: Path, name: str, opener: Callable[[], _T], health: StorageHealth) -> _T:
    """opener(); if `name` in directory is corrupt, move it aside and open again.

    Moved: the file, its -wal and -shm, and for the disk tier (cache.db) its
    value files too (diskcache keeps them in two-hex-digit folders), which no
    fresh database would ever find: all into one folder "corrupt-<name>-<time>-<pid>".
    """
    mark = directory / CORRUPT_MARK if name == DBNAME else None
    first: BaseException | str
    if mark is None or not mark.exists():
        try:
            return opener()
        except Exception as exc:
            if not _corrupt(exc, directory / name):
                raise
            first = exc
    with _exclusive(directory):
        marked = _read_mark(mark)
        if marked is not None:
            first = f"found corrupt while running: {marked}"
        else:
            try:
                return opener()  # another worker may have moved it aside meanwhile
            except Exception as exc:
                if not _corrupt(exc, directory / name):
                    raise
                first = exc
        aside = directory / f"corrupt-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        aside.mkdir(exist_ok=True)
        moving = [directory / f"{name}{suffix}" for suffix in ("", "-wal", "-shm")]
        if name == DBNAME:
            moving += [p for p in directory.iterdir() if p.is_dir() and _VALUE_DIR.fullmatch(p.name)]
        for source in moving:
            if source.exists():
                source.rename(aside / source.name)
        if marked is not None and mark is not None:
            mark.unlink(missing_ok=True)  # after the move: a crash in between moves a fresh file, no more
        health.moved_aside.append(str(aside))
        log.error(
            "%s in %s is corrupt (%s): moved aside to %s, starting afresh", name, directory, first, aside
        )
        return opener()


def _read_mark(mark: Path | None) -> str | None:
    """What the corruption marker says (None: there is none)."""
    if mark is None:
        return None
    try:
        return mark.read_text(errors="replace").strip() or "(no detail)"
    except FileNotFoundError:
        return None


def _corrupt(exc: BaseException, database: Path) -> bool:
    """Does opening `database` fail because the file is corrupt (not because of where it is)?"""
    if isinstance(exc, sqlite3.DatabaseError):
        return is_corrupt(exc)
    if isinstance(exc, OSError | diskcache.Timeout) or database.name != DBNAME:
        return False  # permissions, a full disk, a lock: the place, not the file
    return _settings_damaged(database) is not None


def _settings_damaged(database: Path) -> str | None:
    """What in diskcache's Settings table diskcache never writes, if anything (read-only; None: nothing).

    diskcache reads the table when it opens the cache and trusts its types: a
    key stored as a blob, say, raises TypeError there.
    """
    defaults = {**diskcache.DEFAULT_SETTINGS, **diskcache.core.METADATA}
    try:
        con = sqlite3.connect(database.resolve().as_uri() + "?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        rows = con.execute("SELECT key, value FROM Settings").fetchall()
    except sqlite3.Error as exc:
        return f"Settings unreadable: {exc!r}" if is_corrupt(exc) else None
    finally:
        con.close()
    for key, value in rows:
        if type(key) is not str:
            return f"a Settings key of type {type(key).__name__}: {key!r}"
        default = defaults.get(key)
        if default is None:
            continue  # a setting of a newer diskcache
        numbers = (int, float)
        same = isinstance(value, numbers) if isinstance(default, numbers) else type(value) is type(default)
        if not same:
            return f"Settings {key!r} is {type(value).__name__}: {value!r}"
    return None


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """An exclusive lock shared by the processes opening `directory` (none if it cannot be created)."""
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
