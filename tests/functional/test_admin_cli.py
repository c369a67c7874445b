"""`minicdn purge | inspect | stats` against a running proxy's admin API, and the admin listener of
`python -m proxy`.

The CLI is synchronous (urllib): it runs in a thread (`asyncio.to_thread`) so that the test's event
loop keeps serving the in-process proxy and admin API meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.admin import create_admin_app
from proxy.cli import main
from proxy.config import AdminConfig
from proxy.node import Node as ProxyNode
from proxy.purge import PurgeRequest
from tests.functional.conftest import (
    FakeClock,
    Origin,
    Proxy,
    ProxyFactory,
    StartScripted,
    cache_status,
    free_port,
    make_config,
)
from tests.functional.test_cli import EXIT_TIMEOUT, Process, wait_listening

TOKEN = "cli-t0ken"
HOST = {"Host": "cdn.example"}


class Node:
    def __init__(self, proxy: Proxy, admin_url: str) -> None:
        self.proxy = proxy
        self.admin_url = admin_url

    def args(self, *extra: str, token: str | None = TOKEN) -> list[str]:
        out = [*extra, "--admin", self.admin_url]
        if token is not None:
            out += ["--token", token]
        return out


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NAME", "LISTEN", "ORIGIN", "CACHE_DIR", "ADMIN_TOKEN", "ADMIN_LISTEN"):
        monkeypatch.delenv(f"MINICDN_{name}", raising=False)


@pytest.fixture
async def node(aiohttp_server: Any, start_proxy: ProxyFactory) -> Node:
    proxy = await start_proxy(admin=AdminConfig(token=TOKEN))
    admin = await aiohttp_server(create_admin_app(proxy.server.node))
    return Node(proxy, str(admin.make_url("")).rstrip("/"))


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


async def get(proxy: Proxy, path: str) -> str:
    resp, body = await proxy.get(path, headers=HOST)
    assert resp.status == 200, body
    return cache_status(resp)


def is_hit(member: str) -> bool:
    return "hit" in member.split(";")


# --------------------------------------------------------------------------- purge


async def test_purge_by_url_prints_the_count_and_epoch(
    node: Node, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    await get(node.proxy, "/max-age/600")
    await get(node.proxy, "/max-age/300")
    code, out, err = await run(capsys, *node.args("purge", "--url", "/max-age/600", "/not-stored"))
    assert code == 0, err
    assert out == "purged 1 entry (epoch 1)\n"
    assert "fwd=uri-miss" in await get(node.proxy, "/max-age/600")
    assert is_hit(await get(node.proxy, "/max-age/300"))
    assert await origin.hits("/max-age/600") == 2


async def test_purge_prints_that_the_purge_was_not_passed_on(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    """A purge the node could not pass on (an edge whose Redis refuses writes: its fan-out, a purger
    listener, says why; tests/edge/test_fanout_faults.py runs the real one) printed the same line
    as one every edge applied. The warning of the answer goes to stderr; the purge did happen here."""

    async def fanout_refused(request: PurgeRequest) -> str | None:
        return "not published to the other edges yet (Redis: OutOfMemoryError)"

    node.proxy.server.node.purger.listeners.append(fanout_refused)
    await get(node.proxy, "/max-age/600")
    code, out, err = await run(capsys, *node.args("purge", "--url", "/max-age/600"))
    assert code == 0 and out == "purged 1 entry (epoch 1)\n"
    assert err == "minicdn purge: warning: not published to the other edges yet (Redis: OutOfMemoryError)\n"


async def test_purge_by_tag_prefix_and_all(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    for path in ("/tags?keys=a,b", "/tags?keys=a", "/tags?keys=ab", "/max-age/1", "/max-age/2"):
        await get(node.proxy, path)
    code, out, _ = await run(capsys, *node.args("purge", "--tag", "a"))
    assert (code, out) == (0, "purged 2 entries (epoch 1)\n")
    assert is_hit(await get(node.proxy, "/tags?keys=ab"))
    code, out, _ = await run(capsys, *node.args("purge", "--prefix", "/max-age/", "--soft"))
    assert (code, out) == (0, "soft-purged (marked stale) 2 entries (epoch 2)\n")
    code, out, _ = await run(capsys, *node.args("purge", "--all"))
    assert (code, out) == (0, "purged everything (epoch 3)\n")
    assert not is_hit(await get(node.proxy, "/tags?keys=ab"))


USAGE_ERRORS: dict[str, tuple[list[str], str]] = {
    "no-kind": (["purge"], "one of the arguments --url --prefix --tag --all is required"),
    "two-kinds": (["purge", "--url", "/a", "--tag", "x"], "not allowed with"),
    "bad-url": (["purge", "--url", "a b"], "whitespace"),
    "relative-url": (["purge", "--url", "api/x"], "start with /"),
    "bad-limit": (["inspect", "--limit", "0"], "--limit"),
    "limit-text": (["inspect", "--limit", "x"], "argument --limit: 'x' is not a whole number"),
    "bad-timeout": (["stats", "--timeout", "0"], "argument --timeout: must be greater than 0"),
    # The config file's rule for seconds (config.seconds_problem): inf, or past what
    # socket.settimeout / time.sleep take, was an OverflowError traceback.
    "inf-timeout": (["stats", "--timeout", "inf"], "argument --timeout: must be a finite number, not inf"),
    "huge-timeout": (
        ["purge", "--all", "--timeout", "1e10"],
        "argument --timeout: must be at most 2147483648 seconds (68 years), not 1e+10",
    ),
    "huge-interval": (["top", "--count", "2", "--interval", "1e10"], "argument --interval: must be at most"),
    "bad-admin-url": (["stats", "--admin", "localhost"], "--admin"),
    # The origin URL's rule (config.check_base_url): each route is appended to it, so a query
    # took it in ("/?v=1/stats") and the call failed as unreachable or a 404, exit 1.
    "admin-url-with-query": (
        ["stats", "--admin", "http://127.0.0.1:9/?v=1"],
        "minicdn stats: --admin: 'http://127.0.0.1:9/?v=1': a base URL has no query",
    ),
    "no-command": ([], "required"),
}


@pytest.mark.parametrize(("argv", "message"), USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
async def test_usage_errors_exit_2(
    node: Node, origin: Origin, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    if argv and "--admin" not in argv:
        argv = node.args(*argv)
    code, out, err = await run(capsys, *argv)
    assert code == 2, (out, err)
    assert message in err
    assert out == ""
    assert await origin.hits() == 0


async def test_wrong_token_exits_1(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run(capsys, *node.args("purge", "--all", token="wrong"))
    assert code == 1
    assert out == ""
    assert "admin API refused the token (401)" in err
    code, _, err = await run(capsys, *node.args("stats", token=None))
    assert code == 1
    assert "admin API refused the token (401)" in err
    assert "no token was given" in err


@pytest.mark.parametrize("token", [TOKEN + "\n", TOKEN + " ", "p\u00e4ss" + TOKEN])
async def test_a_token_no_header_can_carry_is_refused_without_printing_it(
    node: Node, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    """A token read from a file or a secret keeps its trailing newline: urllib refused the header
    with an error that printed the token ("Invalid header value b'Bearer ...'")."""
    code, out, err = await run(capsys, *node.args("stats", token=token))
    assert code == 2, err
    assert "the admin token (--token or MINICDN_ADMIN_TOKEN) has a space, control or non-ASCII" in err
    assert TOKEN not in out + err
    monkeypatch.setenv("MINICDN_ADMIN_TOKEN", token)
    code, out, err = await run(capsys, *node.args("purge", "--all", token=None))
    assert code == 2, err
    assert TOKEN not in out + err


async def test_unreachable_admin_api_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run(capsys, "purge", "--all", "--admin", url, "--token", "x")
    assert code == 1
    assert out == ""
    assert f"cannot connect to the admin API at {url}" in err


async def test_server_side_error_exits_1_with_its_message(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await run(capsys, "stats", "--admin", node.admin_url + "/nope", "--token", TOKEN)
    assert code == 1
    assert "404" in err and "no admin route" in err


# --------------------------------------------------------------------------- inspect


async def test_inspect_prints_an_aligned_table(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    for path in ("/tags?keys=a,b", "/max-age/600"):
        await get(node.proxy, path)
    code, out, err = await run(capsys, *node.args("inspect"))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["URL", "TIER", "VARIANTS", "SIZE", "AGE", "TTL", "TAGS"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert set(rows) == {"http://cdn.example/tags?keys=a,b", "http://cdn.example/max-age/600"}
    tagged = rows["http://cdn.example/tags?keys=a,b"].split()
    assert tagged[1:3] == ["l1", "1"]
    assert tagged[-3:] == ["0s", "60s", "a,b"]
    assert rows["http://cdn.example/max-age/600"].split()[-3:] == ["0s", "600s", "-"]
    # Columns line up: every row has its tier where the header has TIER.
    column = lines[0].index("TIER")
    assert all(line[column : column + 2] == "l1" for line in lines[1:-1])
    assert lines[-1] == "2 entries"

    code, out, _ = await run(capsys, *node.args("inspect", "--tag", "b"))
    assert code == 0
    assert "tags?keys=a,b" in out and "max-age" not in out
    code, out, _ = await run(capsys, *node.args("inspect", "--prefix", "/nothing/"))
    assert (code, out) == (0, "no entries\n")
    code, out, _ = await run(capsys, *node.args("inspect", "--limit", "1"))
    assert out.splitlines()[-1] == "1 entry (the limit; --limit shows more)"


async def test_inspect_json(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    await get(node.proxy, "/tags?keys=x")
    code, out, _ = await run(capsys, *node.args("inspect", "--json"))
    assert code == 0
    (entry,) = json.loads(out)
    assert entry["url"] == "http://cdn.example/tags?keys=x"
    assert entry["variants"][0]["tags"] == ["x"]


# --------------------------------------------------------------------------- stats


async def test_stats_prints_grouped_counters(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    await get(node.proxy, "/max-age/600")
    await get(node.proxy, "/max-age/600")
    code, out, err = await run(capsys, *node.args("stats"))
    assert code == 0, err
    groups = {line.split()[0]: line for line in out.splitlines()}
    assert set(groups) == {
        "node", "workers", "engine", "l1", "l2", "storage", "purge", "slices", "catalog", "health",
        "worker", "uptime", "answers", "statuses", "latency", "origin", "hot",
    }  # fmt: skip
    assert "answers 0" in groups["slices"], groups["slices"]
    assert groups["health"].startswith("health   l2 ok ")
    assert groups["answers"].startswith("answers  hit 1 (l1 1, l2 0)  stale 0 (")
    assert "miss 1" in groups["answers"] and "2xx 2" in groups["statuses"]
    assert groups["latency"].startswith("latency  p50 ") and "ok 1" in groups["origin"]
    assert groups["hot"] == "hot      http://cdn.example/max-age/600 (2)"
    assert groups["workers"].startswith("workers  1 ")
    assert groups["node"].split() == ["node", "edge-test"]
    engine = groups["engine"]
    assert "requests 2" in engine and "hits 1" in engine and "misses 1" in engine
    assert "hit_ratio 50.0%" in engine
    assert "catalog  entries 1" in out

    code, out, _ = await run(capsys, *node.args("stats", "--json"))
    assert code == 0
    data = json.loads(out)
    assert data["engine"]["hits"] == 1


async def test_stats_prints_sections_of_the_layer_above(
    aiohttp_server: Any, origin: Origin, clock: FakeClock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with ProxyNode(make_config(origin.url, tmp_path / "l2"), clock) as proxy_node:
        proxy_node.extra_stats.append(
            lambda: {"edge": {"members": {"edge-2": {"healthy": True}}, "errors": 0}}
        )
        admin = await aiohttp_server(create_admin_app(proxy_node))
        code, out, err = await run(capsys, "stats", "--admin", str(admin.make_url("")), "--token", "")
    assert code == 0, err
    assert "edge     members.edge-2.healthy True  errors 0" in out.splitlines()


async def test_admin_url_and_token_come_from_the_config(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    listen = node.admin_url.removeprefix("http://")
    config = tmp_path / "edge.yaml"
    config.write_text(f"admin:\n  listen: {listen}\n  token: {TOKEN}\n")
    code, out, err = await run(capsys, "stats", "--config", str(config))
    assert code == 0, err
    assert out.startswith("node     edge-test")
    # The environment's token wins over the file's.
    monkeypatch.setenv("MINICDN_ADMIN_TOKEN", "wrong")
    code, _, err = await run(capsys, "stats", "--config", str(config))
    assert code == 1
    assert "401" in err
    config.write_text("admin:\n  bogus: 1\n")
    code, _, err = await run(capsys, "stats", "--config", str(config))
    assert code == 2
    assert "admin.bogus" in err and str(config) in err


# --------------------------------------------------------------------------- python -m proxy


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(timeout=EXIT_TIMEOUT)


async def test_python_m_proxy_starts_the_admin_listener(
    processes: list[Process], tmp_path: Path, origin: Origin, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy_port = free_port()
    while (admin_port := free_port()) == proxy_port:
        pass
    args = [
        sys.executable,
        "-m",
        "proxy",
        "--listen",
        f"127.0.0.1:{proxy_port}",
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
        "--origin",
        origin.url,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--workers",
        "1",  # the admin API runs in worker 0 and reports that worker's counters
    ]
    proc = Process(args, tmp_path, "proxy")
    processes.append(proc)
    await wait_listening(proc, admin_port)
    await wait_listening(proc, proxy_port)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{admin_port}/healthz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"name": "edge-1", "status": "ok"}
        async with http.get(f"http://127.0.0.1:{proxy_port}/healthz") as resp:
            await resp.read()
    assert await origin.requests("/healthz"), "the public port forwards /healthz to the origin"
    # No token configured: on loopback the CLI needs none.
    code, out, err = await run(capsys, "stats", "--admin", f"http://127.0.0.1:{admin_port}")
    assert code == 0, err
    assert "engine   requests 1" in out
    assert f"admin API on http://127.0.0.1:{admin_port}" in proc.output()

    proc.popen.terminate()
    assert await asyncio.to_thread(proc.popen.wait, EXIT_TIMEOUT) == 0, proc.output()
    assert "Traceback" not in proc.output()


async def test_inspect_shows_bidi_characters_escaped(
    aiohttp_server: Any,
    start_proxy: ProxyFactory,
    scripted_origin: StartScripted,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An origin's Surrogate-Key in UTF-8 with a right-to-left override (U+202E) and an isolate
    (U+2066): `minicdn inspect` printed the tag raw (table and --json), and the terminal reordered
    the rest of the line (the TAGS column comes last, but --json's lines go on). Now the table and
    --json read \u202e; --json still decodes to the same tag."""
    tag = "gift\u202etxt.exe\u2066"
    answer = (
        b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nSurrogate-Key: plain "
        + tag.encode()
        + b"\r\nContent-Length: 4\r\n\r\npage"
    )
    upstream = await scripted_origin([answer])
    proxy = await start_proxy(origin_url=upstream.url, admin=AdminConfig(token=TOKEN))
    admin = await aiohttp_server(create_admin_app(proxy.server.node))
    node = Node(proxy, str(admin.make_url("")).rstrip("/"))
    await get(proxy, "/bidi")
    code, out, err = await run(capsys, *node.args("inspect"))
    assert code == 0, err
    assert "\u202e" not in out and "\u2066" not in out
    assert "gift\\u202etxt.exe\\u2066" in out, out
    code, out, err = await run(capsys, *node.args("inspect", "--json"))
    assert code == 0, err
    assert "\u202e" not in out and "\u2066" not in out
    (entry,) = json.loads(out)
    assert entry["variants"][0]["tags"] == ["plain", tag]
