"""A purge epoch shared by the worker processes of one node: 8 bytes in a memory-mapped file.

Each request compares it with the epoch its worker last applied; reading it
costs a memory load, so the hit path can afford it. Only `advance_to` writes,
under an exclusive file lock, and it never moves the counter backwards.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from pathlib import Path
from typing import Final

EPOCH_FILE = "purge.epoch"
# One unsigned 64-bit integer in native byte order (the file is shared only by processes on
# this machine), read and written through a memoryview cast to it.
_CELL: Final = "Q"
_SIZE = struct.calcsize(_CELL)


class EpochCounter:
    """A monotonic 64-bit counter, shared through a file (or private when directory is None)."""

    def __init__(self, directory: str | Path | None) -> None:
        self._value = 0
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        # The counter as one unsigned 64-bit cell of the map: indexing it is one C call,
        # a third of what struct.unpack_from costs (the hit path reads it every request).
        self._cell: memoryview | None = None
        if directory is None:
            return
        path = Path(directory) / EPOCH_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)
            fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, _SIZE)
            self._cell = memoryview(self._map).cast(_CELL)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def read(self) -> int:
        cell = self._cell
        if cell is None:
            return self._value
        return cell[0]

    def advance_to(self, epoch: int) -> None:
        """Set the counter to max(counter, epoch)."""
        cell = self._cell
        if cell is None or self._fd is None:
            self._value = max(self._value, epoch)
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if epoch > cell[0]:
                cell[0] = epoch
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._cell is not None:
            self._cell.release()  # a map with a view exported cannot be closed
            self._cell = None
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
