"""Single flight per cache key: concurrent misses share one origin fetch (collapsed forwarding).

The fetch runs in a task owned by the coalescer, not by the request that
started it, so a leader whose client goes away does not cancel the fetch for
the others (the bug Souin fixed in #434 / #436). Callers await the task
through asyncio.shield, with their own timeout (the engine's waiters give up
after fetch.coalesce_timeout and fetch alone). The shared result must be an
immutable value; deciding whether it may be shared is the caller's business
(the engine never shares a private or Set-Cookie response).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """At most one running task per key; later callers await the same task."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def in_flight(self, key: str) -> bool:
        return key in self._flights

    def start(self, key: str, make: Callable[[], Coroutine[Any, Any, T]]) -> tuple[asyncio.Task[T], bool]:
        """The task for key, started from `make` if none runs; True when this call started it."""
        task = self._flights.get(key)
        if task is not None:
            return task, False
        task = asyncio.get_running_loop().create_task(make(), name=f"flight {key}")
        self._flights[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))
        return task, True

    def _finished(self, key: str, task: asyncio.Task[T]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        # Retrieve the exception so that a flight nobody awaited any more
        # (every client gone) does not log "exception was never retrieved".
        if not task.cancelled():
            task.exception()

    async def settle(self) -> None:
        """Wait until no flight is running (tests, graceful shutdown); never cancels."""
        while self._flights:
            await asyncio.gather(*list(self._flights.values()), return_exceptions=True)

    async def close(self) -> None:
        """Cancel every running flight (at shutdown) and wait for them to end."""
        tasks = list(self._flights.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
