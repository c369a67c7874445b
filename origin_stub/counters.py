"""Test support: per-path hit counters, the request log and the ``/__`` routes that expose them."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from origin_stub.api import ITEMS_KEY
from origin_stub.faults import FAULTS_KEY

REQUEST_LOG_SIZE = 200


class HitCounter:
    """How many requests reached each path (query excluded), and in total."""

    def __init__(self) -> None:
        self.total = 0
        self.paths: Counter[str] = Counter()

    def hit(self, path: str) -> int:
        """Count one request to ``path``; return the path's count after it."""
        self.total += 1
        self.paths[path] += 1
        return self.paths[path]

    def count(self, path: str) -> int:
        return self.paths.get(path, 0)

    def reset(self) -> None:
        self.total = 0
        self.paths.clear()

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total, "paths": dict(self.paths)}


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the origin saw it."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body_length: int
    hit: int
    time: float

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": [list(pair) for pair in self.headers],
            "body_length": self.body_length,
            "hit": self.hit,
            "time": self.time,
        }


class RequestLog:
    """The most recent requests, oldest first."""

    def __init__(self, size: int = REQUEST_LOG_SIZE) -> None:
        self.records: deque[RequestRecord] = deque(maxlen=size)

    def append(self, record: RequestRecord) -> None:
        self.records.append(record)

    def reset(self) -> None:
        self.records.clear()

    def select(self, path: str | None = None) -> list[RequestRecord]:
        return [r for r in self.records if path is None or r.path == path]


HITS_KEY = web.AppKey("origin_stub.hits", HitCounter)
LOG_KEY = web.AppKey("origin_stub.request_log", RequestLog)


async def get_hits(request: web.Request) -> web.Response:
    counter = request.app[HITS_KEY]
    path = request.query.get("path")
    if path is not None:
        return web.json_response({"path": path, "count": counter.count(path)})
    return web.json_response(counter.as_json())


async def reset(request: web.Request) -> web.Response:
    request.app[HITS_KEY].reset()
    request.app[LOG_KEY].reset()
    request.app[ITEMS_KEY].reset()
    request.app[FAULTS_KEY].clear()
    return web.json_response({"reset": True})


async def get_requests(request: web.Request) -> web.Response:
    records = request.app[LOG_KEY].select(request.query.get("path"))
    return web.json_response([r.as_json() for r in records])


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/__hits", get_hits)
    router.add_delete("/__hits", reset)
    router.add_post("/__reset", reset)
    router.add_get("/__requests", get_requests)
