"""A tiny JSON API (``/api/items``) for testing how unsafe methods invalidate cached responses."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import hdrs, web
from multidict import CIMultiDict

from origin_stub.common import optional_int
from origin_stub.conditional import make_etag, respond

MAX_AGE = "max-age=60"


@dataclass(slots=True)
class Item:
    id: str
    value: Any
    version: int

    @property
    def etag(self) -> str:
        return make_etag(f"{self.id}-v{self.version}")


class ItemStore:
    """In-memory items, pre-seeded with "1" and "2".

    Versions never repeat for an id, even across delete and re-create, so an ETag always
    identifies one representation.
    """

    def __init__(self) -> None:
        self.items: dict[str, Item] = {}
        self.generation = 0
        self._versions: dict[str, int] = {}
        self._next_id = 1
        self.reset()

    def reset(self) -> None:
        self.items = {"1": Item("1", "one", 1), "2": Item("2", "two", 1)}
        self._versions = {"1": 1, "2": 1}
        self._next_id = 3
        self.generation += 1

    def get(self, item_id: str) -> Item | None:
        return self.items.get(item_id)

    def put(self, item_id: str, value: Any) -> tuple[Item, bool]:
        """Create or update; return the item and whether it was created."""
        created = item_id not in self.items
        version = self._versions.get(item_id, 0) + 1
        self._versions[item_id] = version
        item = Item(item_id, value, version)
        self.items[item_id] = item
        self.generation += 1
        return item, created

    def create(self, value: Any) -> Item:
        while str(self._next_id) in self.items or str(self._next_id) in self._versions:
            self._next_id += 1
        item, _ = self.put(str(self._next_id), value)
        return item

    def delete(self, item_id: str) -> bool:
        if self.items.pop(item_id, None) is None:
            return False
        self.generation += 1
        return True


ITEMS_KEY = web.AppKey("origin_stub.items", ItemStore)


def _headers(**extra: str) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict({hdrs.CACHE_CONTROL: MAX_AGE})
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return headers


def _json(data: Any) -> str:
    return json.dumps(data, sort_keys=True)


def _forced(request: web.Request) -> web.Response | None:
    """``?status=N`` on an unsafe method: answer N and change nothing."""
    status = optional_int(request, "status")
    if status is None:
        return None
    if not 100 <= status <= 599:
        raise web.HTTPBadRequest(text="status must be 100..599\n")
    text = None if status in (204, 304) or status < 200 else f"forced status {status}\n"
    return web.Response(status=status, text=text)


async def _read_value(request: web.Request) -> Any:
    try:
        data = json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="invalid JSON body\n") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text='body must be a JSON object like {"value": ...}\n')
    return data.get("value")


def _not_found(item_id: str) -> web.Response:
    body = _json({"error": "not found", "id": item_id})
    return web.Response(status=404, headers=_headers(), text=body, content_type="application/json")


async def get_item(request: web.Request) -> web.Response:
    item_id = request.match_info["id"]
    item = request.app[ITEMS_KEY].get(item_id)
    if item is None:
        return _not_found(item_id)
    headers = _headers(ETag=item.etag, Content_Type="application/json")
    return respond(request, headers, _json(asdict(item)), etag=item.etag)


async def put_item(request: web.Request) -> web.Response:
    if (forced := _forced(request)) is not None:
        return forced
    item_id = request.match_info["id"]
    item, created = request.app[ITEMS_KEY].put(item_id, await _read_value(request))
    headers = _headers(ETag=item.etag, Content_Type="application/json")
    # RFC 9110 §8.7: the content is the item's new representation (what a GET now returns),
    # not a report about the action, so a cache may store it for GET (policy.write_through).
    headers[hdrs.CONTENT_LOCATION] = f"/api/items/{item_id}"
    if created:
        headers[hdrs.LOCATION] = f"/api/items/{item_id}"
    return web.Response(status=201 if created else 200, headers=headers, text=_json(asdict(item)))


async def delete_item(request: web.Request) -> web.Response:
    if (forced := _forced(request)) is not None:
        return forced
    item_id = request.match_info["id"]
    if not request.app[ITEMS_KEY].delete(item_id):
        return _not_found(item_id)
    return web.Response(status=204)


async def list_items(request: web.Request) -> web.Response:
    store = request.app[ITEMS_KEY]
    etag = make_etag(f"items-g{store.generation}")
    items = [asdict(store.items[k]) for k in sorted(store.items, key=lambda k: (len(k), k))]
    headers = _headers(ETag=etag, Content_Type="application/json")
    return respond(request, headers, _json(items), etag=etag)


async def post_item(request: web.Request) -> web.Response:
    if (forced := _forced(request)) is not None:
        return forced
    item = request.app[ITEMS_KEY].create(await _read_value(request))
    location = f"/api/items/{item.id}"
    headers = _headers(ETag=item.etag, Content_Type="application/json", Location=location)
    headers[hdrs.CONTENT_LOCATION] = location
    return web.Response(status=201, headers=headers, text=_json(asdict(item)))


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/api/items", list_items)
    router.add_post("/api/items", post_item)
    router.add_get("/api/items/{id}", get_item)
    router.add_put("/api/items/{id}", put_item)
    router.add_delete("/api/items/{id}", delete_item)
