"""`minicdn warm` as a real process against a real edge and the origin stub (issue 16): what it
stores, what it finds already fresh, what cannot be stored, what fails, and its exit status."""

from __future__ import annotations

import asyncio
import gzip
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

import proxy.warm as warm_module
from edge.cli import main as minicdn
from proxy.config import config_from_mapping
from proxy.node import url_keys_of
from proxy.warm import Target, WarmError, cache_key, classify, parse_sitemap, targets_from_lines
from tests.functional.conftest import Origin, Proxy, cache_status

ROOT = Path(__file__).resolve().parents[2]
MINICDN = [sys.executable, "-c", "from edge.cli import main; raise SystemExit(main())"]


async def warm(*argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run `minicdn warm ARGV` (no MINICDN_* variables, no progress bar); (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINICDN_")}
    proc = await asyncio.create_subprocess_exec(
        *MINICDN, "warm", "--no-progress", *argv,
        cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin or b""), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def counts(out: str) -> dict[str, int]:
    """The summary's counts: {"stored": 3, "already fresh": 0, ...}."""
    found = {}
    for label in ("stored", "already fresh", "not storable", "failed"):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"  {label} "))
        found[label] = int(line.split()[-1])
    return found


async def test_url_list_stores_then_finds_fresh_and_reports_the_rest(
    proxy: Proxy, origin: Origin, tmp_path: Path
) -> None:
    urls = tmp_path / "urls.txt"
    good = [f"/max-age/600?i={i}" for i in range(5)]
    urls.write_text(
        "# a comment, then a blank line\n\n"
        + "".join(f"{proxy.url}{p}\n" for p in good)
        + f"{proxy.url}/private\n/no-store\n/fail?status=503\n"
    )
    code, out, err = await warm("--urls", str(urls), "--edge", proxy.url, "--concurrency", "3")
    assert code == 1, (out, err)  # something failed
    assert counts(out) == {"stored": 5, "already fresh": 0, "not storable": 2, "failed": 1}, out
    assert "/fail?status=503  HTTP 503" in out
    assert "/private  " in out and "/no-store  " in out
    assert await origin.hits() == 8
    for path in good:  # really in the cache now: answered without the origin
        resp, _ = await proxy.get(path, headers={"Cache-Control": "only-if-cached"})
        assert resp.status == 200 and ";hit" in cache_status(resp)

    urls.write_text("".join(f"{proxy.url}{p}\n" for p in good))
    code, out, err = await warm("--urls", str(urls), "--edge", proxy.url)
    assert code == 0, (out, err)
    assert counts(out) == {"stored": 0, "already fresh": 5, "not storable": 0, "failed": 0}, out
    assert out.startswith(f"warming 5 URLs through {proxy.url}, 8 at a time\n")
    assert await origin.hits() == 8  # nothing fetched again


async def test_paths_from_stdin_and_a_file(proxy: Proxy, origin: Origin, tmp_path: Path) -> None:
    code, out, _ = await warm("--paths", "-", "--edge", proxy.url, stdin=b"max-age/60?a\n/max-age/60?b\n")
    assert code == 0 and counts(out)["stored"] == 2
    paths = tmp_path / "paths.txt"
    paths.write_text("max-age/60?a\nmax-age/60?c\nmax-age/60?c\n")  # duplicates are asked once
    code, out, _ = await warm("--paths", str(paths), "--edge", proxy.url)
    assert code == 0
    assert counts(out) == {"stored": 1, "already fresh": 1, "not storable": 0, "failed": 0}
    assert await origin.hits() == 3


SITEMAP = """<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
{}
</urlset>"""
INDEX = """<?xml version="1.0" encoding="UTF-8"?>
<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
{}
</sitemapindex>"""


def urlset(urls: list[str]) -> str:
    return SITEMAP.format(
        "\n".join(f"  <url><loc>{u}</loc><lastmod>2026-01-01</lastmod></url>" for u in urls)
    )


@pytest.fixture
async def site(aiohttp_server: Any) -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    """A web server holding sitemaps (path -> bytes), gzipped ones with Content-Encoding: gzip."""
    files: dict[str, bytes] = {}

    async def handle(request: web.Request) -> web.Response:
        body = files.get(request.path)
        if body is None:
            return web.Response(status=404)
        headers = {"Content-Encoding": "gzip"} if request.path.endswith(".gz") else {}
        return web.Response(body=body, headers=headers, content_type="application/xml")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    server = await aiohttp_server(app)
    yield str(server.make_url("")).rstrip("/"), files


async def test_sitemap_file_and_index_over_http(
    proxy: Proxy, origin: Origin, tmp_path: Path, site: tuple[str, dict[str, bytes]]
) -> None:
    base, files = site
    sitemap = tmp_path / "sitemap.xml"
    sitemap.write_text(urlset([f"{proxy.url}/max-age/600?page={i}" for i in range(3)]))
    code, out, _ = await warm("--sitemap", str(sitemap), "--edge", proxy.url)
    assert code == 0 and counts(out)["stored"] == 3

    files["/a.xml"] = urlset([f"{proxy.url}/max-age/600?page=0", f"{proxy.url}/max-age/600?page=9"]).encode()
    files["/b.xml.gz"] = gzip.compress(urlset([f"{proxy.url}/etag?v=1"]).encode())
    files["/index.xml"] = INDEX.format(
        f"<sitemap><loc>{base}/a.xml</loc></sitemap><sitemap><loc>{base}/b.xml.gz</loc></sitemap>"
    ).encode()
    code, out, err = await warm("--sitemap", f"{base}/index.xml", "--edge", proxy.url)
    assert code == 0, (out, err)
    assert counts(out) == {"stored": 2, "already fresh": 1, "not storable": 0, "failed": 0}
    assert await origin.hits() == 5

    # An index that names itself (a cycle) is read once: it was fetched 1000 times, then refused.
    files["/loop.xml"] = INDEX.format(
        f"<sitemap><loc>{base}/loop.xml</loc></sitemap><sitemap><loc>{base}/a.xml</loc></sitemap>"
    ).encode()
    code, out, err = await warm("--sitemap", f"{base}/loop.xml", "--edge", proxy.url)
    assert code == 0, (out, err)
    assert counts(out)["already fresh"] == 2

    code, out, err = await warm("--sitemap", f"{base}/missing.xml", "--edge", proxy.url)
    assert code == 1 and f"{base}/missing.xml: HTTP 404" in err


async def test_concurrency_is_bounded(aiohttp_server: Any, tmp_path: Path) -> None:
    """At most --concurrency requests at once (measured where they arrive)."""
    in_flight = peak = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)  # long enough for the client's other requests to overlap
        in_flight -= 1
        return web.Response(text="x", headers={"Cache-Status": "fake;fwd=uri-miss;fwd-status=200;stored"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    server = await aiohttp_server(app)
    edge = str(server.make_url("")).rstrip("/")
    paths = "".join(f"/p{i}\n" for i in range(30)).encode()
    code, out, _ = await warm("--paths", "-", "--edge", edge, "--concurrency", "3", stdin=paths)
    assert code == 0 and counts(out)["stored"] == 30
    assert peak == 3


def test_usage_and_source_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (no edge needed): nothing listens on port 9."""
    for name in list(os.environ):
        if name.startswith("MINICDN_"):
            monkeypatch.delenv(name)
    edge = ["--edge", "http://127.0.0.1:9", "--no-progress"]

    def run(*argv: str) -> tuple[int, str, str]:
        code = minicdn(["warm", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, _, err = run(*edge)
    assert code == 2 and "say what to warm" in err
    code, _, err = run("--paths", "x", "--concurrency", "0")
    assert code == 2 and "argument --concurrency: must be from 1 to 1000, not 0" in err
    code, _, err = run("--paths", "x", "--header", "no colon", *edge)
    assert code == 2 and "is not 'Name: value'" in err
    # RFC 9110 §5.1, §5.5: a name that is not a token, a value with CR LF; each was sent, and every
    # URL failed (the edge's 400, or aiohttp's "header injection") instead of one usage error.
    code, _, err = run("--paths", "x", "--header", "X(Y): v", *edge)
    assert code == 2 and "--header 'X(Y): v' is not 'Name: value'" in err, err
    code, _, err = run("--paths", "x", "--header", "X-A: v\r\nX-B: w", *edge)
    assert code == 2 and "has a control character in its value" in err, err
    # The origin URL's rule: each target's path is appended to the edge's URL.
    code, _, err = run("--paths", "x", "--edge", "http://127.0.0.1:9/?v=1")
    assert code == 2 and "--edge: 'http://127.0.0.1:9/?v=1': a base URL has no query" in err, err
    code, _, err = run("--urls", str(tmp_path / "none.txt"), *edge)
    assert code == 1 and "none.txt: cannot read" in err
    bad = tmp_path / "bad.txt"
    bad.write_text("/ok\nftp://x/y\n")
    code, _, err = run("--urls", str(bad), *edge)
    assert code == 1 and "bad.txt:2: 'ftp://x/y' is neither" in err
    for loc in ("http://[::1", "http:///a", "https://"):  # a traceback before
        sitemap = tmp_path / "sitemap.xml"
        sitemap.write_text(urlset(["http://s.example/a", loc]))
        code, out, err = run("--sitemap", str(sitemap), *edge)
        assert code == 1 and out == "", err
        assert err == f"minicdn warm: {sitemap}: <loc> {loc!r} is not an http(s):// URL with a host\n"
    good = tmp_path / "good.txt"
    good.write_text("/a\n")
    code, out, err = run("--urls", str(good), *edge)
    assert code == 1 and out == "" and "cannot reach the edge at http://127.0.0.1:9: " in err


# ----------------------------------------------------------------------------- pure parts


async def test_a_local_sitemap_is_read_only_up_to_its_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--sitemap /dev/zero` (or a FIFO) by mistake was read until memory ran out: a file is read
    one byte past MAX_SITEMAP_BYTES, which parse_sitemap refuses."""
    monkeypatch.setattr(warm_module, "MAX_SITEMAP_BYTES", 1000)
    big = tmp_path / "sitemap.xml"
    big.write_bytes(b" " * 5000)
    data = await warm_module._fetch_sitemap(str(big), cast(Any, None))  # a file: no session used
    assert len(data) == 1001
    with pytest.raises(WarmError, match="larger than"):
        parse_sitemap(data, str(big))


@pytest.mark.parametrize(
    ("status", "fields", "expected"),
    [
        (200, ["edge-1;fwd=uri-miss;fwd-status=200;stored"], ("stored", "")),
        (200, ["edge-1;hit;ttl=50;detail=l1"], ("fresh", "")),
        (
            200,
            ['origin;hit, edge-1;fwd=uri-miss;fwd-status=200;detail="private"'],
            ("not storable", "private"),
        ),
        (200, ["edge-1;hit", "edge-2;fwd=uri-miss;fwd-status=200;stored"], ("stored", "")),
        (
            200,
            ['edge-1;fwd=stale;ttl=-3;detail="stale-while-revalidate"'],
            ("stored", "stale, refreshed in the background"),
        ),
        (
            502,
            ['edge-1;fwd=uri-miss;detail="origin unreachable"'],
            ("failed", "HTTP 502 (origin unreachable)"),
        ),
        (404, ["edge-1;fwd=uri-miss;fwd-status=404"], ("failed", "HTTP 404")),
        (200, [], ("failed", "HTTP 200 without a Cache-Status (is this a minicdn edge?)")),
    ],
)
def test_classify(status: int, fields: list[str], expected: tuple[str, str]) -> None:
    assert classify(status, fields) == expected


def test_sitemap_parsing_ignores_other_elements_and_refuses_non_sitemaps() -> None:
    urls, nested = parse_sitemap(urlset(["https://s.example/a", "https://s.example/b?x=1"]).encode(), "m")
    assert (urls, nested) == (["https://s.example/a", "https://s.example/b?x=1"], [])
    with pytest.raises(WarmError, match="not a sitemap"):
        parse_sitemap(b"<html><body/></html>", "page.html")
    with pytest.raises(WarmError, match="not a sitemap"):
        parse_sitemap(b"{}", "x.json")


def test_url_lines_become_targets_with_their_host() -> None:
    targets = targets_from_lines(
        ["https://Shop.example:8443/a/b?q=1", "/c"], "f", host="cdn.example", paths_only=False
    )
    assert [(t.path, t.host) for t in targets] == [("/a/b?q=1", "Shop.example:8443"), ("/c", "cdn.example")]
    assert [t.path for t in targets_from_lines(["d/e", "/f"], "f", host=None, paths_only=True)] == [
        "/d/e",
        "/f",
    ]
    with pytest.raises(WarmError, match="f:1: 'd' is neither"):
        targets_from_lines(["d"], "f", host=None, paths_only=False)


def test_warm_keys_a_url_as_the_edges_do_with_the_rules_key_settings() -> None:
    # The cluster's warm sends each URL to the owner of its key (edge/warm.py): the key must be the
    # one the edges compute, per-route rules included, or URLs go to edges that do not own them.
    cfg = config_from_mapping(
        {"rules": [{"name": "utm", "match": {"path": "/max-age/*"}, "key": {"drop_query": ["utm_*"]}}]},
        "test",
        environ={},
    )
    keys = url_keys_of(cfg)
    campaign = Target(url="/max-age/60?utm_source=mail&b=1", path="/max-age/60?utm_source=mail&b=1")
    plain = Target(url="/max-age/60?b=1", path="/max-age/60?b=1")
    assert cache_key(keys, campaign) == cache_key(keys, plain)
    outside = Target(url="/other?utm_source=mail", path="/other?utm_source=mail")
    assert cache_key(keys, outside).endswith("/other?utm_source=mail")
