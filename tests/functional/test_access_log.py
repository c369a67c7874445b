"""One access-log line per request, whichever front answered it (lean hit, lean engine, aiohttp)."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from proxy.config import LogConfig
from tests.functional.conftest import ProxyFactory, raw_exchange, raw_status


async def test_every_request_logs_one_line_with_its_cache_status(
    start_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(log=replace(LogConfig(), access_log=True))
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        await proxy.get("/max-age/60")  # a miss: the lean front runs the engine
        await proxy.get("/max-age/60")  # a plain hit: answered from the stored bytes
        async with proxy.request("POST", "/echo", data=b"x") as resp:  # a body, forwarded
            await resp.read()
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.access"]
    assert len(lines) == 3, lines
    assert '"GET /max-age/60"' in lines[0] and "fwd=uri-miss" in lines[0] and " 200 " in lines[0]
    assert " miss origin " in lines[0]
    # The access log carries the very member the response carried (its quotes escaped).
    assert '"GET /max-age/60"' in lines[1] and ';hit;ttl=60;detail=\\"l1\\""' in lines[1]
    assert " hit l1 " in lines[1] and " origin=- " in lines[1]
    assert '"POST /echo"' in lines[2] and "fwd=bypass" in lines[2] and " pass origin " in lines[2]


async def test_json_access_lines_for_hits_misses_and_passes(
    start_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    proxy = await start_proxy(log=replace(LogConfig(), access_log=True, format="json"))
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        await proxy.get("/max-age/61")
        await proxy.get("/max-age/61")
        async with proxy.request("POST", "/echo", data=b"x") as resp:
            await resp.read()
    # Without the command line's JSON handler, records carry the fields (the handler writes them).
    lines = [json.loads(json.dumps(r.access_fields)) for r in caplog.records if r.name == "proxy.access"]
    assert [(line["method"], line["target"], line["status"], line["result"]) for line in lines] == [
        ("GET", "/max-age/61", 200, "miss"),
        ("GET", "/max-age/61", 200, "hit"),
        ("POST", "/echo", 200, "pass"),
    ]
    assert ";hit;" in lines[1]["cache"] and all(line["remote"] == "127.0.0.1" for line in lines)
    assert lines[0]["origin_ms"] > 0 and lines[1]["origin_ms"] is None and lines[1]["tier"] == "l1"
    assert all(line["bytes"] > 0 and line["total_ms"] > 0 and line["request_id"] for line in lines)


async def test_a_client_cannot_break_a_text_line_with_unicode_line_separators_or_bidi_controls(
    start_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """U+2028 / U+2029 end a line for str.splitlines and in a browser; U+202E (and the other bidi
    controls) reorder the rest of a line on screen. httptools lets them through in a field value
    (they are UTF-8, not controls): a User-Agent wrote what read as a second line of its own choice."""
    proxy = await start_proxy(log=replace(LogConfig(), access_log=True))
    forged = "2026-11-30 08:00:02,310 WARNING proxy.origin GET http://o/a: origin refused the connection"
    head = (
        "GET /max-age/60 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
        f"User-Agent: curl\u2028{forged}\u2029x\r\nX-Request-Id: r\u202egnp.exe\u2066\r\n\r\n"
    )
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        response = await raw_exchange(proxy.server.host, proxy.server.port, head.encode())
    assert raw_status(response) == 200
    [line] = [r.getMessage() for r in caplog.records if r.name == "proxy.access"]
    assert len(line.splitlines()) == 1, line.splitlines()
    assert f'ua="curl\\u2028{forged}\\u2029x"' in line, line
    assert 'id="r\\u202egnp.exe\\u2066"' in line, line
