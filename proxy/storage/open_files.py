"""Open value files of the disk tier, kept for reuse by the read path on the event loop.

Opening a file costs a path lookup and two system calls; a hot L2 object is
read many times a second. diskcache names every value file afresh when it is
written and never rewrites one in place, so a file name always means the same
bytes, and an open descriptor stays valid (and unchanged) even after the file
is deleted. Reads use pread, so descriptors carry no position.

At most `capacity` descriptors stay open (least recently used closed first);
a deleted file's space is freed when its descriptor is closed.
"""

from __future__ import annotations

import os


class OpenFiles:
    """A bounded LRU of read-only descriptors by path (one thread: the event loop's)."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._fds: dict[str, int] = {}

    def read(self, path: str, offset: int, n: int) -> bytes:
        """Up to n bytes of path from offset (fewer at the end of the file)."""
        fds = self._fds
        fd = fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            if len(fds) >= self.capacity:
                os.close(fds.pop(next(iter(fds))))
        fds[path] = fd  # (re)inserted last: the most recently used
        try:
            data = os.pread(fd, n, offset)
            while 0 < len(data) < n:
                more = os.pread(fd, n - len(data), offset + len(data))
                if not more:
                    break
                data += more
        except OSError:
            self.forget(path)
            raise
        return data

    def forget(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __len__(self) -> int:
        return len(self._fds)
