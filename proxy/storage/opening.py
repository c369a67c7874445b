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

from diskcache.core import DBNAME

from proxy.storage.base import EvictionPolicy
from proxy.storage.catalog import CATALOG_FILE, Catalog
from proxy.storage.disk import DiskStorage
from proxy.storage.epoch import EpochCounter

log = logging.getLogger("proxy.storage")

LOCK_FILE = ".minicdn-open.lock"
# SQLite's primary result codes for "not a database" and "malformed": the file, not the place.
_CORRUPT_CODES = {sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT}

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


def is_corrupt(exc: BaseException) -> bool:
    """Is this the error of a file that is not (or no longer) an SQLite database?"""
    return isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorcode", None) in _CORRUPT_CODES


def open_disk(
    directory: str | Path, budget: int, eviction: EvictionPolicy, health: StorageHealth
) -> DiskStorage | None:
    """The disk tier in `directory`, a fresh one if its database was corrupt, or None if it cannot be used."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        return _open_or_recover(path, DBNAME, lambda: DiskStorage(path, budget, eviction), health)
    except Exception as exc:
        health.l2, health.l2_error = "failed", f"{type(exc).__name__}: {exc}"
        log.error(
            "disk cache %s cannot be used (%s); running without the disk tier (L2)", path, health.l2_error
        )
        return None


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
    try:
        return opener()
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        first = exc
    with _exclusive(directory):
        try:
            return opener()  # another worker may have moved it aside meanwhile
        except sqlite3.DatabaseError as exc:
            if not is_corrupt(exc):
                raise
        aside = directory / f"corrupt-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        aside.mkdir(exist_ok=True)
        moving = [directory / f"{name}{suffix}" for suffix in ("", "-wal", "-shm")]
        if name == DBNAME:
            moving += [p for p in directory.iterdir() if p.is_dir() and _VALUE_DIR.fullmatch(p.name)]
        for source in moving:
            if source.exists():
                source.rename(aside / source.name)
        health.moved_aside.append(str(aside))
        log.error(
            "%s in %s is corrupt (%s): moved aside to %s, starting afresh", name, directory, first, aside
        )
        return opener()


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
