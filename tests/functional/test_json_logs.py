"""`log.format: json`: every line a run writes is one JSON object (a real box of two workers).

The run has access lines of every kind (miss, hit, pass, an origin failure), a purge, an admin
request with a wrong token, and the supervisor's own lines (the banner, draining at the end).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.log_output import ACCESS_FIELDS
from tests.functional.conftest import Origin, free_port
from tests.functional.test_cli import Spawn, spawn, wait_listening

__all__ = ["spawn"]

TOKEN = "s3cret-t0ken"


async def admin_call(admin: int, method: str, path: str, token: str, **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"http://127.0.0.1:{admin}{path}", headers=headers, **kwargs) as r,
    ):
        return r.status, await r.json()


async def test_every_line_of_a_run_is_a_json_object(spawn: Spawn, origin: Origin, tmp_path: Path) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text(f"log:\n  format: json\nadmin:\n  token: {TOKEN}\n")
    port, admin = free_port(), free_port()
    args = [
        sys.executable, "-m", "proxy", "--config", str(config), "--workers", "2",
        "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
        "--origin", origin.url, "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    proc = spawn(args, "json-logs")
    await wait_listening(proc, port)
    deadline = time.monotonic() + 20
    while (await admin_call(admin, "GET", "/stats", TOKEN))[1].get("workers") != 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)

    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(3):
            async with s.get(base + "/max-age/600", headers={"User-Agent": 'probe "1"'}) as r:
                assert r.status == 200
        async with s.post(base + "/echo", data=b"x", headers={"X-Request-Id": "abc-123"}) as r:
            assert r.status == 200
        async with s.get(base + "/fail?status=503") as r:
            assert r.status == 503
    status, _ = await admin_call(admin, "POST", "/purge", TOKEN, json={"tag": "nothing-here"})
    assert status == 200
    status, _ = await admin_call(admin, "GET", "/stats", "not-the-token")
    assert status == 401
    for _ in range(2):  # a request line aiohttp cannot take: was an ERROR with a traceback each
        reader, writer = await asyncio.open_connection("127.0.0.1", admin)
        writer.write(b"GET /entries?prefix=/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 400 " in await reader.readline()
        writer.close()
    assert proc.stop(timeout=15) == 0

    lines = proc.output().splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    for record in records:
        assert isinstance(record, dict)
        assert {"timestamp", "level", "logger", "worker", "pid", "message"} <= set(record), record
    workers = {r["worker"] for r in records}
    assert None in workers and workers - {None} <= {0, 1}  # the supervisor, and the workers by index

    access = [r for r in records if r["logger"] == "proxy.access"]
    assert len(access) == 5, access
    for record in access:
        assert set(ACCESS_FIELDS) <= set(record)
        assert record["worker"] in (0, 1) and record["remote"] == "127.0.0.1"
        assert record["host"] == f"127.0.0.1:{port}" and record["bytes"] > 0 and record["total_ms"] > 0
    # Two workers write their lines in batches (proxy/log_output.py flushes every 0.2 s), so the
    # lines of different workers need not come out in the order of the requests: each is told
    # by what it is.
    results = sorted((r["method"], r["target"], r["status"], r["result"], r["tier"]) for r in access)
    assert [r for r in results if r[1] == "/max-age/600" and r[3] == "miss"] == [
        ("GET", "/max-age/600", 200, "miss", "origin")
    ]
    assert [r[3] for r in results if r[1] == "/max-age/600" and r[3] != "miss"] == ["hit", "hit"]
    assert ("POST", "/echo", 200, "pass", "origin") in results
    assert ("GET", "/fail?status=503", 503, "miss", "origin") in results
    miss = next(r for r in access if r["target"] == "/max-age/600" and r["result"] == "miss")
    hits = [r for r in access if r["target"] == "/max-age/600" and r["result"] == "hit"]
    echo = next(r for r in access if r["target"] == "/echo")
    assert miss["user_agent"] == 'probe "1"' and miss["origin_ms"] > 0
    assert all(hit["origin_ms"] is None for hit in hits)
    assert echo["request_id"] == "abc-123" and miss["request_id"] != hits[0]["request_id"]

    messages = [r["message"] for r in records]
    assert any(m.startswith("edge edge-1 listening on") for m in messages)  # the banner, as JSON
    assert any(m.startswith("purge hard tag nothing-here by admin API 127.0.0.1") for m in messages)
    assert [r["level"] for r in records if r["level"] not in ("INFO", "WARNING", "DEBUG")] == []
    bad = [r for r in records if r["logger"] == "aiohttp.server"]
    assert 1 <= len(bad) <= 2, bad  # at most one per worker in 10 s: either worker may take each
    assert all(r["level"] == "WARNING" and "bad request" in r["message"] for r in bad), bad
    refused = [r for r in records if "admin API refused" in r["message"]]
    assert len(refused) == 1 and refused[0]["level"] == "WARNING"
    assert "GET /stats from 127.0.0.1: the token is not valid" in refused[0]["message"]
    assert TOKEN not in "\n".join(lines) and "not-the-token" not in "\n".join(lines)
