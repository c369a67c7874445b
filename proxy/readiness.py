"""Readiness: whether this node can do its job now, beside liveness (it runs and answers).

What must live here: the checks behind `/readyz` (admin listener) and
`/.well-known/minicdn/ready` (public port): its origin can be reached, and
every check the layer above adds (an edge of a cluster adds Redis).

A node becomes ready when every check has passed once since it started, so a
node that cannot reach its origin from the start (a wrong origin URL, a
missing route) never takes traffic, and a rolling deploy of it stalls. After
that, a check that fails makes the node *degraded*, still ready (200): an
origin or Redis outage is seen by every edge at once, and failing readiness
then would make a load balancer pull every edge together, the whole cache,
just when it is the only thing still serving (stale-if-error, stored copies).
`server.readiness_strict: true` fails readiness whenever a check fails (each
node then judges for itself, e.g. behind a load balancer that fails open).

Liveness (`/healthz`, `/.well-known/minicdn/health`) stays "ok" whatever the
origin does: an orchestrator should not restart a node for that, and peer
edges keep asking it for what it owns (it may serve from cache).

The origin check opens a TCP connection to the origin's host and port (the
same error table as requests: refused, name does not resolve, timed out, ...)
and closes it. Results are kept for CACHE_SECONDS, and callers that ask
meanwhile share one round of checks, so a busy prober never becomes load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from proxy.config import OriginConfig
from proxy.origin.errors import connect_failure

# A check returns None when all is well, else what is wrong (one line).
Check = Callable[[], Awaitable[str | None]]

CACHE_SECONDS = 1.0
CHECK_TIMEOUT = 2.0  # at most, for each check (the origin's own connect_timeout when shorter)


class Readiness:
    """The node's readiness checks: the origin's, and those `add` brings."""

    def __init__(
        self, origin: OriginConfig, strict: bool = False, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.origin = origin
        self.strict = strict
        self.monotonic = monotonic  # for CACHE_SECONDS (tests set a fake one)
        self.checks: dict[str, Check] = {"origin": self._origin_reachable}
        # What each check reaches (its gate is kept per target: a reload that points the node at
        # another origin is judged anew).
        self.targets: dict[str, str] = {"origin": origin.url}
        # "name target" of each check that has passed once since the node (its box) started. In a
        # box of workers this is the box's set (proxy/worker.py), so a worker started during an
        # outage (a reload, a restart) is degraded like its elders, not "not ready".
        self.passed: set[str] = set()
        self.on_first_pass: Callable[[list[str]], None] | None = None  # told of new entries
        self._report: dict[str, Any] | None = None
        self._at = 0.0
        self._round: asyncio.Future[dict[str, Any]] | None = None

    def add(self, name: str, check: Check, target: str = "") -> None:
        """One more check (the edge layer adds "redis"), and what it reaches."""
        self.checks[name] = check
        self.targets[name] = target

    async def report(self) -> dict[str, Any]:
        """{"ready", "status", "checks": {name: {"ok", "ms", "error"?}}}, at most CACHE_SECONDS old.

        status is "ready", "degraded" (ready; a check that passed before fails now) or "not ready".
        """
        if self._report is not None and self.monotonic() - self._at < CACHE_SECONDS:
            return self._report
        if self._round is None:
            self._round = asyncio.ensure_future(self._run())
            self._round.add_done_callback(self._finished)
        return await asyncio.shield(self._round)

    def _finished(self, done: asyncio.Future[dict[str, Any]]) -> None:
        self._round = None
        if not done.cancelled() and done.exception() is None:
            self._report, self._at = done.result(), self.monotonic()

    async def _run(self) -> dict[str, Any]:
        names = list(self.checks)
        results = await asyncio.gather(*(self._one(self.checks[name]) for name in names))
        checks = dict(zip(names, results, strict=True))
        gates = {name: f"{name} {self.targets.get(name, '')}" for name in names}
        new = [gates[name] for name, c in checks.items() if c["ok"] and gates[name] not in self.passed]
        if new:
            self.passed.update(new)
            if self.on_first_pass is not None:
                self.on_first_pass(new)
        failing = [name for name, c in checks.items() if not c["ok"]]
        if not failing:
            return {"ready": True, "status": "ready", "checks": checks}
        if self.strict or not self.passed.issuperset(gates[name] for name in failing):
            return {"ready": False, "status": "not ready", "checks": checks}
        return {"ready": True, "status": "degraded", "degraded": failing, "checks": checks}

    async def _one(self, check: Check) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                error = await check()
        except TimeoutError:
            error = f"no answer in {CHECK_TIMEOUT:g} s"
        except Exception as exc:  # a check that breaks says so; readiness never raises
            error = f"{type(exc).__name__}: {exc}"
        out: dict[str, Any] = {"ok": error is None, "ms": round((time.perf_counter() - started) * 1000, 1)}
        if error is not None:
            out["error"] = error
        return out

    async def _origin_reachable(self) -> str | None:
        parts = urlsplit(self.origin.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            async with asyncio.timeout(min(self.origin.connect_timeout, CHECK_TIMEOUT)):
                _, writer = await asyncio.open_connection(host, port)
        except (TimeoutError, OSError) as exc:
            return f"{connect_failure(exc).reason} ({self.origin.url})"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None
