"""Write-through: `policy.write_through` stores an unsafe request's answer for later GETs.

RFC 9110 §8.7: a 2xx answer to a state-changing request whose Content-Location is the target URI
carries the resource's new representation. §9.3.3 lets a cache reuse such a POST answer (with
explicit freshness) for a later GET; RFC 5789 §2 the same for PATCH; §9.3.4 calls PUT answers not
cacheable, so nothing is stored unless the operator lists the method. The invalidation of RFC 9111
§4.4 comes first; the stored entry is newer than it. Everything RFC 9111 §3 refuses for a GET's
answer is refused here too.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from proxy.config import (
    CacheConfig,
    ConfigError,
    InvalidationConfig,
    PolicyConfig,
    TierConfig,
    config_from_mapping,
)
from tests.functional.conftest import (
    Origin,
    Proxy,
    ProxyFactory,
    ScriptedOrigin,
    StartScripted,
    cache_status,
)

HOST = {"Host": "cdn.example"}
ITEM = "/api/items/1"


def writing(*methods: str, **policy: Any) -> PolicyConfig:
    return replace(PolicyConfig(), write_through=methods, **policy)


async def send(proxy: Proxy, method: str, path: str, **kwargs: Any) -> tuple[int, str, bytes]:
    headers = {**HOST, **kwargs.pop("headers", {})}
    async with proxy.request(method, path, headers=headers, **kwargs) as resp:
        return resp.status, cache_status(resp), await resp.read()


def is_hit(status: str) -> bool:
    return status.startswith("edge-test;hit")


# ------------------------------------------------------------------ with the stub origin's API


async def test_rfc9110_s8_7_a_put_answer_naming_its_uri_is_the_next_gets_hit(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    proxy = await start_proxy(policy=writing("PUT"))
    _, status, old = await send(proxy, "GET", ITEM)
    assert "stored" in status
    code, status, written = await send(proxy, "PUT", ITEM, json={"value": "changed"})
    assert code == 200 and "fwd=bypass" in status and "stored" in status, status
    assert b'"changed"' in written and b'"version": 2' in written
    code, status, body = await send(proxy, "GET", ITEM)
    assert code == 200 and is_hit(status), status
    assert body == written != old
    assert [r["method"] for r in await origin.requests(ITEM)] == ["GET", "PUT"]  # no GET after the PUT


async def test_write_through_is_off_by_default(proxy: Proxy, origin: Origin) -> None:
    await send(proxy, "GET", ITEM)
    _, status, written = await send(proxy, "PUT", ITEM, json={"value": "changed"})
    assert "stored" not in status
    _, status, body = await send(proxy, "GET", ITEM)  # invalidated (§4.4), fetched again
    assert not is_hit(status) and body == written
    assert [r["method"] for r in await origin.requests(ITEM)] == ["GET", "PUT", "GET"]


async def test_rfc9110_s9_3_3_a_post_whose_content_location_is_another_uri_is_not_stored(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    # POST /api/items creates /api/items/N and names it in Content-Location: a claim about another
    # resource, which HTTP cannot verify (§8.7), so neither URI gets the answer.
    proxy = await start_proxy(policy=writing("POST", "PUT"))
    code, status, created = await send(proxy, "POST", "/api/items", json={"value": "new"})
    assert code == 201 and "stored" not in status
    item = created.split(b'"id": "')[1].split(b'"')[0].decode()
    _, status, _ = await send(proxy, "GET", f"/api/items/{item}")
    assert not is_hit(status)


async def test_only_the_listed_methods_write_through(start_proxy: ProxyFactory, origin: Origin) -> None:
    proxy = await start_proxy(policy=writing("PATCH"))
    _, status, _ = await send(proxy, "PUT", ITEM, json={"value": "changed"})
    assert "stored" not in status
    _, status, _ = await send(proxy, "GET", ITEM)
    assert not is_hit(status)


async def test_a_request_not_allowed_to_invalidate_does_not_write_through(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    # invalidate_on_unsafe narrowed to another network: the PUT may not evict, so it may not store.
    narrowed = InvalidationConfig(("*",), ("10.0.0.0/8",))
    proxy = await start_proxy(policy=writing("PUT", invalidate_on_unsafe=narrowed))
    _, status, old = await send(proxy, "GET", ITEM)
    _, status, _ = await send(proxy, "PUT", ITEM, json={"value": "changed"})
    assert "stored" not in status
    _, status, body = await send(proxy, "GET", ITEM)
    assert is_hit(status) and body == old  # the old entry stands, as without write-through


async def test_a_rule_that_bypasses_the_uri_keeps_its_writes_out_too(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    rules = config_from_mapping(
        {"rules": [{"name": "no-api-cache", "match": {"path": "/api/**"}, "bypass": True}]},
        "test",
        environ={},
    ).rules
    proxy = await start_proxy(policy=writing("PUT"), rules=rules)
    _, status, _ = await send(proxy, "PUT", ITEM, json={"value": "changed"})
    assert "stored" not in status
    _, status, _ = await send(proxy, "GET", ITEM)
    assert not is_hit(status)


# ------------------------------------------------------------------ with a scripted origin


def answer(fields: str, body: bytes = b"new representation", status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\n{fields}Content-Length: {len(body)}\r\n\r\n".encode() + body


FROM_GET = answer("Cache-Control: max-age=60\r\n", b"from a GET")
FRESH = "Cache-Control: max-age=60\r\n"
WRITTEN = "Content-Location: /doc\r\n" + FRESH


async def put_then_get(
    start_proxy: ProxyFactory,
    scripted_origin: StartScripted,
    put_answer: bytes,
    put_headers: dict[str, str] | None = None,
    get_headers: dict[str, str] | None = None,
    **config: Any,
) -> tuple[str, str, bytes, ScriptedOrigin]:
    """PUT /doc (answered `put_answer`), then GET /doc: the PUT's and GET's Cache-Status, the GET's body."""
    upstream = await scripted_origin([put_answer, FROM_GET])
    proxy = await start_proxy(origin_url=upstream.url, policy=writing("PUT", "POST"), **config)
    code, put_status, _ = await send(proxy, "PUT", "/doc", headers=put_headers or {})
    assert 200 <= code < 300
    _, get_status, body = await send(proxy, "GET", "/doc", headers=get_headers or {})
    return put_status, get_status, body, upstream


async def test_the_stored_answer_keeps_its_validators_and_freshness(
    start_proxy: ProxyFactory, scripted_origin: StartScripted
) -> None:
    put_status, get_status, body, upstream = await put_then_get(
        start_proxy, scripted_origin, answer(WRITTEN + 'ETag: "v2"\r\n', status="203 Non-Authoritative")
    )
    assert "stored" in put_status and "fwd-status=203" in put_status
    assert is_hit(get_status) and ";ttl=60" in get_status and body == b"new representation"
    assert len(upstream.requests) == 1


REFUSED = [
    (answer("Cache-Control: max-age=60\r\n"), {}, "no Content-Location"),
    (answer("Content-Location: /other\r\nCache-Control: max-age=60\r\n"), {}, "another URI"),
    (
        answer("Content-Location: http://elsewhere.example/doc\r\nCache-Control: max-age=60\r\n"),
        {},
        "another host",
    ),
    (answer("Content-Location: /doc?v=2\r\nCache-Control: max-age=60\r\n"), {}, "another query"),
    (answer("Content-Location: https://cdn.example/doc\r\n" + FRESH), {}, "another scheme"),
    (answer("Content-Location: /doc\r\nContent-Location: /other\r\n" + FRESH), {}, "two values"),
    (answer('Content-Location: /doc\r\nETag: "v2"\r\n'), {}, "no explicit freshness (§9.3.3)"),
    (
        answer("Content-Location: /doc\r\nCache-Control: no-store, max-age=60\r\n"),
        {},
        "response no-store",
    ),
    (answer("Content-Location: /doc\r\nCache-Control: private, max-age=60\r\n"), {}, "private"),
    (answer(WRITTEN + "Set-Cookie: s=1\r\n"), {}, "Set-Cookie"),
    (answer(WRITTEN), {"Authorization": "Bearer x"}, "Authorization without public (§3.5)"),
    (answer(WRITTEN), {"Cache-Control": "no-store"}, "request no-store"),
    (answer(WRITTEN), {}, None),  # a 200: stored (the control case)
    (answer(WRITTEN, status="201 Created"), {}, "201: later GETs would be told Created"),
    (answer(WRITTEN, status="202 Accepted"), {}, "202: a report on the processing"),
    (answer(WRITTEN, b"", status="204 No Content"), {}, "204: no representation"),
    (answer(WRITTEN, b"x" * 2048), {}, "larger than max_object_size"),
]


@pytest.mark.parametrize(
    ("put_answer", "put_headers", "why"), REFUSED, ids=[why or "control: stored" for _, _, why in REFUSED]
)
async def test_write_through_refuses_what_rfc9111_s3_refuses(
    start_proxy: ProxyFactory,
    scripted_origin: StartScripted,
    tmp_path: Path,
    put_answer: bytes,
    put_headers: dict[str, str],
    why: str | None,
) -> None:
    small = TierConfig(budget=1024 * 1024)
    cache = CacheConfig(dir=str(tmp_path / "l2"), max_object_size=1024, slice_size=0, l1=small, l2=small)
    put_status, get_status, body, _ = await put_then_get(
        start_proxy, scripted_origin, put_answer, put_headers, cache=cache
    )
    if why is None:
        assert "stored" in put_status and is_hit(get_status)
        return
    assert "stored" not in put_status, why
    assert not is_hit(get_status) and body == b"from a GET", why


async def test_the_stored_answer_is_keyed_on_the_fields_its_vary_names(
    start_proxy: ProxyFactory, scripted_origin: StartScripted
) -> None:
    put_status, get_status, _, upstream = await put_then_get(
        start_proxy,
        scripted_origin,
        answer(WRITTEN + "Vary: Accept-Language\r\n"),
        put_headers={"Accept-Language": "fr"},
        get_headers={"Accept-Language": "de"},
    )
    assert "stored" in put_status
    assert not is_hit(get_status)  # another language: the PUT's answer does not match (§4.1)
    assert len(upstream.requests) == 2


async def test_the_client_gets_the_origins_answer_as_on_any_pass(
    start_proxy: ProxyFactory, scripted_origin: StartScripted
) -> None:
    upstream = await scripted_origin([answer(WRITTEN + "Set-Cookie: s=1\r\nX-Extra: 1\r\n")])
    proxy = await start_proxy(origin_url=upstream.url, policy=writing("PUT", store_set_cookie=True))
    async with proxy.request("PUT", "/doc", headers=HOST) as resp:
        assert resp.status == 200
        assert resp.headers["Set-Cookie"] == "s=1"  # the writer's own cookie
        assert resp.headers["X-Extra"] == "1" and await resp.read() == b"new representation"
        assert "stored" in cache_status(resp)
    async with proxy.request("GET", "/doc", headers=HOST) as resp:
        assert is_hit(cache_status(resp)) and "Set-Cookie" not in resp.headers  # never shared


@pytest.mark.parametrize(
    ("value", "message"),
    [(["GET"], "only POST, PUT and PATCH"), (["put"], "did you mean 'PUT'"), (["DELETE"], "only POST")],
)
def test_write_through_config_names_what_is_wrong(value: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_mapping({"policy": {"write_through": value}}, "test", environ={})
    assert "policy.write_through" in str(raised.value) and message in str(raised.value)
    ok = config_from_mapping({"policy": {"write_through": ["PUT", "PATCH"]}}, "test", environ={})
    assert ok.policy.write_through == ("PUT", "PATCH")
