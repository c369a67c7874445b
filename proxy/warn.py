"""Rate-limited warnings for failures that repeat (a full disk fails every write, a bad client
sends malformed requests in a loop).

One line per `interval` seconds per kind of failure, saying how many were not
logged since the last one; the counters that count the failures themselves
live with the tiers (TierStats) and the purger (PurgeStats).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

WARN_INTERVAL = 10.0


class RateLimitedWarning:
    """logger.warning at most once per `interval` seconds; the rest are counted and reported next time."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = WARN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.level = level
        self._next = float("-inf")
        self.suppressed = 0

    def __call__(self, msg: str, *args: object) -> bool:
        """Log (returns True) unless one was logged less than `interval` ago (counted instead)."""
        now = self.clock()
        if now < self._next:
            self.suppressed += 1
            return False
        self._next = now + self.interval
        if self.suppressed:
            msg += " (and %d more like it not logged)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self.logger.log(self.level, msg, *args)
        return True
