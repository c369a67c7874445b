"""Who is in the cluster and who is healthy.

Members come from the static list in config, and, with Redis, from heartbeat
keys that expire (an edge that stops refreshing its key leaves the cluster
without a restart of the others). Each peer is health-checked over HTTP; a
peer that fails a check or a forwarded fetch is skipped until its breaker
closes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from edge import tasks
from edge.config import ClusterConfig, Peer
from proxy.routing import HEALTH_PATH

# What a Redis glob reads as more than itself (https://redis.io/docs/latest/commands/keys/).
_GLOB_SPECIAL = re.compile(r"[*?\[\]\\]")

log = logging.getLogger("edge.membership")


@dataclass(slots=True)
class PeerState:
    peer: Peer
    healthy: bool = True
    broken_until: float = 0.0  # monotonic time until which the breaker is open
    failures: int = 0
    failed_checks: int = 0


class Membership:
    """The current members and their health, kept up to date by background tasks."""

    def __init__(self, cfg: ClusterConfig, name: str, redis: Any) -> None:
        self.cfg = cfg
        self.name = name
        self.redis = redis
        self.states: dict[str, PeerState] = {p.name: PeerState(p) for p in cfg.peers}
        self.static = {p.name for p in cfg.peers}
        self.redis_errors = 0
        self._ignored: set[object] = set()  # keys of member records that are not valid
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    # ----------------------------------------------------------- queries

    def members(self) -> list[tuple[str, float]]:
        """(name, weight) of every member, healthy or not (ownership must not flap)."""
        return [(s.peer.name, s.peer.weight) for s in self.states.values()]

    def available(self, name: str) -> bool:
        state = self.states.get(name)
        return state is not None and state.healthy and time.monotonic() >= state.broken_until

    def url_of(self, name: str) -> str | None:
        state = self.states.get(name)
        return state.peer.url if state is not None else None

    def trip(self, name: str) -> None:
        """A fetch from this peer failed: skip it for breaker_seconds."""
        state = self.states.get(name)
        if state is not None:
            state.failures += 1
            state.broken_until = time.monotonic() + self.cfg.breaker_seconds

    def reset(self, name: str) -> None:
        state = self.states.get(name)
        if state is not None:
            state.failures = 0

    # ---------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5))
        if self.redis is not None:
            await self._heartbeat_once()
            await self._refresh_from_redis()
            self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="edge heartbeat"))
        self._tasks.append(asyncio.create_task(self._health_loop(), name="edge health checks"))

    async def stop(self) -> None:
        await asyncio.gather(*(tasks.stop(task) for task in self._tasks))
        self._tasks.clear()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.delete(self.cfg.member_prefix + self.name)
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------- Redis membership

    async def refresh(self) -> None:
        """Read the members registered in Redis now (no heartbeat of our own): `minicdn warm`."""
        if self.redis is not None:
            await self._refresh_from_redis()

    async def _heartbeat_once(self) -> None:
        me = self.states[self.name].peer
        value = json.dumps({"name": me.name, "url": me.url, "weight": me.weight})
        ttl = max(1, int(self.cfg.heartbeat_seconds * 3))
        try:
            await self.redis.set(self.cfg.member_prefix + self.name, value, ex=ttl)
        except Exception as exc:
            self.redis_errors += 1
            log.warning("heartbeat to Redis failed: %s", exc)

    async def _refresh_from_redis(self) -> None:
        try:
            match = glob_escaped(self.cfg.member_prefix) + "*"
            names = [k async for k in self.redis.scan_iter(match=match, count=100)]
            values = await self.redis.mget(names) if names else []
        except Exception as exc:
            self.redis_errors += 1
            log.warning("reading members from Redis failed: %s", exc)
            return
        seen = set(self.static)
        ignored = set()
        for key, raw in zip(names, values, strict=True):
            if raw is None:
                continue
            try:
                if isinstance(raw, str):
                    # Lone surrogates stand for bytes that are not UTF-8 (the client decodes with
                    # errors="surrogateescape", edge/node.py): a UnicodeEncodeError, a ValueError.
                    raw.encode("utf-8")
                data = json.loads(raw)
                peer = Peer(str(data["name"]), str(data["url"]).rstrip("/"), float(data.get("weight", 1.0)))
                peer.name.encode("utf-8")
                peer.url.encode("utf-8")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                ignored.add(key)
                if key not in self._ignored:
                    log.warning("ignoring member record %r in Redis: %s", key, exc)
                continue
            seen.add(peer.name)
            state = self.states.get(peer.name)
            if state is None or state.peer != peer:
                log.info("member %s joined at %s", peer.name, peer.url)
                self.states[peer.name] = PeerState(peer)
        self._ignored = ignored  # warned about once while they stay
        for name in list(self.states):
            if name not in seen:
                log.info("member %s left (heartbeat expired)", name)
                del self.states[name]

    async def _heartbeat_loop(self) -> None:
        while not tasks.stop_requested():
            await asyncio.sleep(self.cfg.heartbeat_seconds)
            await self._heartbeat_once()
            await self._refresh_from_redis()

    # ----------------------------------------------------------- health checks

    async def _health_loop(self) -> None:
        while not tasks.stop_requested():
            await asyncio.gather(
                *(self._check(s) for s in list(self.states.values()) if s.peer.name != self.name)
            )
            await asyncio.sleep(self.cfg.health_interval)

    async def _check(self, state: PeerState) -> None:
        assert self._session is not None
        ok = False
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with self._session.get(state.peer.url + HEALTH_PATH) as resp:
                ok = resp.status == 200
        # Two failed checks in a row mark a peer down (one lost probe, or a peer still
        # starting, is not an outage; a failed fetch trips the breaker at once anyway).
        state.failed_checks = 0 if ok else state.failed_checks + 1
        healthy = ok or state.failed_checks < 2
        if healthy != state.healthy:
            log.info("peer %s is %s", state.peer.name, "healthy" if healthy else "unhealthy")
        state.healthy = healthy


def glob_escaped(text: str) -> str:
    """`text` as a Redis glob (SCAN MATCH) that matches it literally: a member_prefix such as
    "minicdn:[eu]:" was a character class, matched none of the keys written under it, and the
    edge saw no member registered in Redis."""
    return _GLOB_SPECIAL.sub(r"\\\g<0>", text)
