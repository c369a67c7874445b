"""Preload prefetching: a stored page's `Link: <...>; rel=preload` targets, fetched into the cache behind it.

A page that names its stylesheets, scripts and fonts with rel=preload (W3C Preload) is
followed by requests for exactly those; fetching them while the page goes out makes
those requests hits, and the origin sees them once per edge, not once per first visitor
of each. Only after the engine stored a response (a fill or a refresh), only for
targets on the page's own host (proxy/links.py), as plain GETs: the client's Cookie or
Authorization never go with them (nothing of one user's goes into a shared fetch); the
Accept-Encoding goes, so the variant the same browser will ask for is the one fetched.
`Sec-Purpose: prefetch` tells the origin what they are (as browsers say it). A target
already stored is a hit and costs a lookup. At most `fetch.prefetch_preload` targets per
response and `fetch.prefetch_max_concurrent` prefetches at once (more are skipped and
counted); a prefetched response's own preload links are not followed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from proxy.entry import StoredResponse
from proxy.links import preload_targets, same_host_target
from proxy.messages import Answer, ClientRequest, Reply

__all__ = ["PrefetchStats", "Prefetcher"]

log = logging.getLogger("proxy.prefetch")

PURPOSE = (b"Sec-Purpose", b"prefetch")
# What a request-target may hold as sent (RFC 9112 §3.2: visible ASCII; a reference with anything
# else is left alone rather than re-encoded, which could name another resource).
_SENDABLE = re.compile(r"[!-~]+")


@dataclass(slots=True)
class PrefetchStats:
    """What preload prefetching did (engine stats: each counted once)."""

    started: int = 0  # prefetches sent through the engine (a hit among them costs a lookup)
    skipped: int = 0  # targets left out: too many at once, or that target already in flight
    failed: int = 0  # prefetches that raised (the page's own answer is never affected)


class Prefetcher:
    """Runs the preload targets of stored responses through `serve` (lookup, then fetch), bounded."""

    def __init__(
        self,
        serve: Callable[[ClientRequest], Awaitable[Answer]],
        per_response: int,
        at_once: int,
        stats: PrefetchStats,
    ) -> None:
        self.serve = serve
        self.per_response = per_response
        self.at_once = at_once
        self.stats = stats
        self._tasks: set[asyncio.Task[None]] = set()
        self._targets: set[tuple[str, str, str]] = set()  # (host, path, query) in flight
        self._mine: set[int] = set()  # ids of the prefetch requests being served (no chains)

    def stored(self, client: ClientRequest, entry: StoredResponse) -> None:
        """`entry` was just stored for `client`'s request: prefetch its preload targets."""
        if id(client) in self._mine:
            return  # a prefetched response: its own links are not followed
        lines = [value for name, value in entry.headers if name.lower() == "link"]
        if not lines:
            return
        for reference in preload_targets(lines, self.per_response):
            target = same_host_target(client.scheme, client.host, client.path, reference)
            if target is None or not _SENDABLE.fullmatch(target.raw_path_qs):
                continue  # another origin; or a space, a control or a non-ASCII byte: no request-target
            wanted = (client.host, target.raw_path, target.raw_query_string)
            if wanted in self._targets or len(self._tasks) >= self.at_once:
                self.stats.skipped += 1
                continue
            self._start(client, wanted)

    def _start(self, client: ClientRequest, wanted: tuple[str, str, str]) -> None:
        host, path, query = wanted
        fields = [(b"Host", host.encode("utf-8", "surrogateescape")), PURPOSE]
        if client.accept_encoding is not None:
            fields.append((b"Accept-Encoding", client.accept_encoding.encode("utf-8", "surrogateescape")))
        req = ClientRequest.read("GET", path, query, fields, None, False)
        req.scheme = client.scheme
        self.stats.started += 1
        self._targets.add(wanted)
        task = asyncio.get_running_loop().create_task(self._prefetch(req, wanted))
        self._tasks.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self._tasks.discard)

    async def _prefetch(self, req: ClientRequest, wanted: tuple[str, str, str]) -> None:
        self._mine.add(id(req))
        try:
            answer = await self.serve(req)
            if isinstance(answer, Reply) and not isinstance(answer.body, bytes):
                if answer.cache_status.stored:
                    async for _ in answer.body:  # stored as it streams: let it finish
                        pass
                else:
                    await answer.drop_body()
        except Exception as exc:
            self.stats.failed += 1
            log.warning("prefetch of %s failed: %r", req.path, exc)
        finally:
            self._mine.discard(id(req))
            self._targets.discard(wanted)

    async def settled(self) -> None:
        """Wait for the prefetches in flight (and those they lead to) to finish."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Stop the prefetches in flight (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
