"""Stopping the edge's background loops for sure.

A library can swallow a task's cancellation (redis-py's asyncio client has been
seen to: an edge's heartbeat loop then ran on for minutes after stop(), and a
test's teardown hit its 120 s timeout). So the loops check, after every round,
whether they were asked to stop, and `stop` cancels again until the task ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("edge.tasks")


def stop_requested() -> bool:
    """Whether the running task was cancelled, even if the CancelledError was swallowed since."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def stop(task: asyncio.Task[None], *, grace: float = 1.0, attempts: int = 10) -> None:
    """Cancel task and wait for it, cancelling again every `grace` seconds while it runs on."""
    for _ in range(attempts):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=grace)
        if done:
            break
    else:
        log.error("task %s did not stop after %d cancellations", task.get_name(), attempts)
        return
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
