"""`minicdn warm`: fill the cache before traffic arrives.

Reads what to warm from a list of URLs (a file, or `-` for stdin), a
sitemap.xml (a URL or a file; sitemap indexes are followed), or a file of
origin paths, and GETs each through an edge with bounded concurrency and a
progress bar. Each response's Cache-Status (the member the asked edge appended,
the last one) says what happened: stored, already fresh, not storable (the
edge forwarded it without storing: private, no-store, too large ...) or failed
(no answer, an error status, or no Cache-Status at all). A summary follows;
the exit status is 1 when anything failed (2: a usage or configuration error).

One edge is asked (`--edge`, default the config's `listen`) unless a `Router`
is given: the edge layer passes one that sends each URL to its key's owner
edge (edge/warm.py), so a cluster is warmed once per object. The proxy never
imports edge/.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TextIO
from xml.etree import ElementTree

import aiohttp
from http_sfv.list import List as SfList
from tqdm import tqdm
from yarl import URL

from proxy import __version__
from proxy.cliargs import count, positive_seconds
from proxy.config import FIELD_NAME, Config, ConfigError, check_base_url, load_config
from proxy.keys import UrlKeys
from proxy.routing import HEALTH_PATH

Outcome = Literal["stored", "fresh", "not storable", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("stored", "fresh", "not storable", "failed")
LABELS: dict[Outcome, str] = {
    "stored": "stored",
    "fresh": "already fresh",
    "not storable": "not storable",
    "failed": "failed",
}
MAX_SITEMAP_BYTES = 50 * 1024 * 1024  # sitemaps.org: at most 50 MB uncompressed
MAX_SITEMAPS = 1000  # files read through sitemap indexes, at most
SHOWN = 20  # failed / not storable URLs listed in the summary, at most
USER_AGENT = f"minicdn-warm/{__version__}"


class WarmError(Exception):
    """What to warm could not be read (a missing file, a sitemap that does not parse)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One URL to warm: what was asked, the path and query to send, and the Host to send it with."""

    url: str
    path: str
    host: str | None = None  # None: the edge's own authority


class Router(Protocol):
    """Chooses the edge each target is sent to (the edge layer: the key's owner)."""

    description: str  # for the plan line, e.g. "3 edges (each key's owner)"

    def edge_for(self, target: Target) -> str:
        """The base URL of the edge to ask; raises WarmError when there is none."""
        ...


RouterFactory = Callable[[Config, argparse.Namespace], Awaitable[Router | None]]


@dataclass(slots=True)
class Result:
    target: Target
    outcome: Outcome
    reason: str = ""
    edge: str = ""


@dataclass(slots=True)
class Summary:
    counts: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    results: list[Result] = field(default_factory=list)

    def add(self, result: Result) -> None:
        self.counts[result.outcome] += 1
        self.results.append(result)


# --------------------------------------------------------------------------- the command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("what to warm (one or more, each may repeat)")
    source.add_argument(
        "--urls",
        action="append",
        default=[],
        metavar="FILE",
        help="URLs (or /paths), one a line; - for stdin",
    )
    source.add_argument(
        "--sitemap", action="append", default=[], metavar="URL|FILE", help="a sitemap.xml or sitemap index"
    )
    source.add_argument(
        "--paths", action="append", default=[], metavar="FILE", help="origin paths, one a line; - for stdin"
    )
    parser.add_argument("--edge", metavar="URL", help="the edge to warm through (default: http:// + listen)")
    parser.add_argument("--host", help="Host header for paths (default: the edge's; URLs carry their own)")
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header, e.g. 'Accept-Encoding: gzip' to warm that variant (repeatable)",
    )
    parser.add_argument(
        "--concurrency", type=count(1, 1000), default=8, help="requests at once, 1-1000 (default 8)"
    )
    parser.add_argument(
        "--timeout", type=positive_seconds, default=30.0, help="seconds for each response (default 30)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--config", help="config file (default: $MINICDN_CONFIG, else the defaults): listen, cluster"
    )


def run(args: argparse.Namespace, router_factory: RouterFactory | None = None) -> int:
    """`minicdn warm`: 0 when nothing failed, 1 when something did, 2 for a usage or config error."""
    if not (args.urls or args.sitemap or args.paths):
        print(
            "minicdn warm: say what to warm: --urls FILE, --sitemap URL|FILE or --paths FILE", file=sys.stderr
        )
        return 2
    try:
        headers = parse_headers(args.header)
        cfg = load_config(args.config)
        edge = check_edge(args.edge) if args.edge else edge_url(cfg.listen)
    except (ValueError, ConfigError) as exc:
        print(f"minicdn warm: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, cfg, edge, headers, router_factory))
    except WarmError as exc:
        print(f"minicdn warm: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"minicdn warm: config error: {exc}", file=sys.stderr)
        return 2


async def _run(
    args: argparse.Namespace,
    cfg: Config,
    edge: str,
    headers: dict[str, str],
    router_factory: RouterFactory | None,
) -> int:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(args.timeout, 10.0), sock_read=args.timeout)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=connector, auto_decompress=False, headers={"User-Agent": USER_AGENT}
    ) as session:
        targets = await collect(args, session)
        if not targets:
            raise WarmError("nothing to warm: the sources hold no URLs")
        router = await router_factory(cfg, args) if router_factory is not None and not args.edge else None
        if router is None:
            await _check_reachable(session, edge)
        through = router.description if router is not None else edge
        print(
            f"warming {_plural(len(targets), 'URL')} through {through}, {args.concurrency} at a time",
            flush=True,
        )
        started = time.monotonic()
        # On a terminal only (disable=None), unless --no-progress; the summary goes to stdout.
        with tqdm(
            total=len(targets), unit="url", disable=True if args.no_progress else None, file=sys.stderr
        ) as bar:
            failed = 0

            def progress(result: Result) -> None:
                nonlocal failed
                bar.update(1)
                if result.outcome == "failed":
                    failed += 1
                    bar.set_postfix(failed=failed, refresh=False)

            summary = await warm(
                session,
                targets,
                router.edge_for if router is not None else (lambda _t: edge),
                headers,
                args.concurrency,
                progress,
            )
    print_summary(summary, time.monotonic() - started, sys.stdout)
    return 1 if summary.counts["failed"] else 0


async def _check_reachable(session: aiohttp.ClientSession, edge: str) -> None:
    """One edge that does not answer at all is one error, not one failure per URL."""
    try:
        async with session.get(edge + HEALTH_PATH) as resp:
            await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise WarmError(f"cannot reach the edge at {edge}: {exc or type(exc).__name__}") from None


def cache_key(keys: UrlKeys, target: Target, scheme: str = "http") -> str:
    """The primary cache key an edge keying URLs with `keys` computes for this target (Fetcher.key_for:
    keys.* as its per-route rules change them; proxy.node.url_keys_of makes it from a config)."""
    path, _, query = target.path.partition("?")
    return keys.key(scheme, target.host or "", path, query)


def parse_headers(values: Sequence[str]) -> dict[str, str]:
    """--header 'Name: value' options. The name is a token and the value has no control character
    (RFC 9110 §5.1, §5.5): "X(Y): v" was sent, and every URL failed with the edge's 400."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not FIELD_NAME.fullmatch(name.strip()):
            raise ValueError(f"--header {value!r} is not 'Name: value' (a name is a token, no spaces)")
        text = text.strip()
        if any((c < " " and c != "\t") or c == "\x7f" for c in text):
            raise ValueError(f"--header {value!r} has a control character in its value")
        out[name.strip()] = text
    return out


def check_edge(value: str) -> str:
    """The edge's base URL, by the origin URL's rule (each target's path is appended to it)."""
    return check_base_url(value, "--edge")


def edge_url(listen: str) -> str:
    """http:// + a listen address, a wildcard host replaced by loopback."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# --------------------------------------------------------------------------- sources


async def collect(args: argparse.Namespace, session: aiohttp.ClientSession) -> list[Target]:
    """Every target of every source, in order, each (Host, path) once."""
    targets: list[Target] = []
    for name in args.urls:
        targets += targets_from_lines(_read_lines(name), name, host=args.host, paths_only=False)
    for name in args.paths:
        targets += targets_from_lines(_read_lines(name), name, host=args.host, paths_only=True)
    for source in args.sitemap:
        targets += [target_from_url(u) for u in await sitemap_urls(source, session)]
    seen: set[tuple[str | None, str]] = set()
    unique = []
    for t in targets:
        if (t.host, t.path) not in seen:
            seen.add((t.host, t.path))
            unique.append(t)
    return unique


def _read_lines(name: str) -> list[str]:
    if name == "-":
        return sys.stdin.read().splitlines()
    try:
        return Path(name).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise WarmError(f"{name}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def targets_from_lines(
    lines: Iterable[str], source: str, *, host: str | None, paths_only: bool
) -> list[Target]:
    """URL or path lines (blank lines and # comments skipped) as targets; a bad line is an error."""
    out = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if any(c.isspace() for c in line):
            raise WarmError(f"{source}:{number}: {line!r} has white space (one URL a line)")
        if paths_only or line.startswith("/"):
            path = line if line.startswith("/") else "/" + line
            out.append(Target(path, path, host))
        elif line.startswith(("http://", "https://")):
            try:
                out.append(target_from_url(line))
            except ValueError as exc:
                raise WarmError(f"{source}:{number}: {line!r}: {exc}") from None
        else:
            raise WarmError(f"{source}:{number}: {line!r} is neither an http(s):// URL nor a /path")
    return out


def target_from_url(text: str) -> Target:
    url = URL(text, encoded=True)
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise ValueError("not an http(s):// URL with a host")
    return Target(text, url.raw_path_qs or "/", url.raw_authority)


async def sitemap_urls(source: str, session: aiohttp.ClientSession) -> list[str]:
    """The page URLs of a sitemap (a URL or a file), following sitemap indexes (gzip or not)."""
    pending = [source]
    seen = {source}  # an index naming itself (or a cycle of them) is read once, not MAX_SITEMAPS times
    read = 0
    pages: list[str] = []
    while pending:
        name = pending.pop(0)
        read += 1
        if read > MAX_SITEMAPS:
            raise WarmError(f"{source}: more than {MAX_SITEMAPS} sitemaps through its indexes")
        data = await _fetch_sitemap(name, session)
        urls, nested = parse_sitemap(data, name)
        pages += urls
        for loc in nested:
            if loc not in seen:
                seen.add(loc)
                pending.append(loc)
    return pages


async def _fetch_sitemap(name: str, session: aiohttp.ClientSession) -> bytes:
    if not name.startswith(("http://", "https://")):
        try:
            # At most one byte past the limit (parse_sitemap refuses it): a FIFO or /dev/zero
            # given by mistake was read until memory ran out.
            with Path(name).open("rb") as file:
                return file.read(MAX_SITEMAP_BYTES + 1)
        except OSError as exc:
            raise WarmError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        async with session.get(name, headers={"Accept-Encoding": "gzip"}) as resp:
            if resp.status != 200:
                raise WarmError(f"{name}: HTTP {resp.status}")
            body = await resp.content.read(MAX_SITEMAP_BYTES + 1)
            if resp.headers.get("Content-Encoding", "").lower() == "gzip":
                return _gunzip(body, name)
            return body
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise WarmError(f"{name}: {exc or type(exc).__name__}") from None


def _gunzip(data: bytes, name: str) -> bytes:
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflate.decompress(data, MAX_SITEMAP_BYTES + 1)
    except zlib.error as exc:
        raise WarmError(f"{name}: not valid gzip: {exc}") from None
    return out


def parse_sitemap(data: bytes, name: str) -> tuple[list[str], list[str]]:
    """(page URLs, nested sitemap URLs) of a <urlset> or a <sitemapindex> (sitemaps.org)."""
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, name)
    if len(data) > MAX_SITEMAP_BYTES:
        raise WarmError(f"{name}: larger than {MAX_SITEMAP_BYTES // 2**20} MiB")
    try:
        root = ElementTree.fromstring(data)  # expat refuses entity expansion bombs
    except ElementTree.ParseError as exc:
        raise WarmError(f"{name}: not a sitemap: {exc}") from None
    kind = _local(root.tag)
    if kind not in ("urlset", "sitemapindex"):
        raise WarmError(f"{name}: not a sitemap (<{kind}>, expected <urlset> or <sitemapindex>)")
    entry = "url" if kind == "urlset" else "sitemap"
    locs = []
    for element in root:
        if _local(element.tag) != entry:
            continue
        for child in element:
            if _local(child.tag) == "loc" and child.text and child.text.strip():
                locs.append(child.text.strip())
    for loc in locs:
        # Checked as a target is made from it (a host, a parseable authority): a <loc> such as
        # "http://[::1" or "http:///a" passed a prefix check and was a ValueError traceback later.
        try:
            target_from_url(loc)
        except ValueError:
            raise WarmError(f"{name}: <loc> {loc!r} is not an http(s):// URL with a host") from None
    return (locs, []) if kind == "urlset" else ([], locs)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


# --------------------------------------------------------------------------- warming


async def warm(
    session: aiohttp.ClientSession,
    targets: Sequence[Target],
    edge_for: Callable[[Target], str],
    headers: dict[str, str],
    concurrency: int,
    on_result: Callable[[Result], None] = lambda _r: None,
) -> Summary:
    """GET every target through its edge, `concurrency` at a time; the summary of what happened."""
    summary = Summary()
    queue = iter(targets)

    async def worker() -> None:
        for target in queue:  # shared iterator: each target is taken by one worker
            result = await warm_one(session, target, edge_for, headers)
            summary.add(result)
            on_result(result)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(targets)))))
    return summary


async def warm_one(
    session: aiohttp.ClientSession, target: Target, edge_for: Callable[[Target], str], headers: dict[str, str]
) -> Result:
    try:
        edge = edge_for(target)
    except WarmError as exc:
        return Result(target, "failed", str(exc))
    sent = dict(headers)
    if target.host is not None:
        sent["Host"] = target.host
    try:
        async with session.get(
            edge + target.path, headers=sent, allow_redirects=False, skip_auto_headers=("Accept-Encoding",)
        ) as resp:
            async for _ in resp.content.iter_chunked(256 * 1024):  # the whole body: the edge stores it
                pass
            outcome, reason = classify(resp.status, resp.headers.getall("Cache-Status", []))
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Result(target, "failed", f"{edge}: {exc or type(exc).__name__}", edge)
    return Result(target, outcome, reason, edge)


def classify(status: int, cache_status: Sequence[str]) -> tuple[Outcome, str]:
    """What the edge did, from its Cache-Status member (the last one) and the status code."""
    member = last_member(cache_status)
    if status >= 400:
        detail = f" ({member.get('detail')})" if member and member.get("detail") else ""
        return "failed", f"HTTP {status}{detail}"
    if member is None:
        return "failed", f"HTTP {status} without a Cache-Status (is this a minicdn edge?)"
    if member.get("stored"):
        return "stored", ""
    if member.get("hit"):
        return "fresh", ""
    if member.get("fwd") == "stale" and member.get("detail") == "stale-while-revalidate":
        return "stored", "stale, refreshed in the background"
    if member.get("fwd") is not None:
        why = member.get("detail") or f"forwarded ({member['fwd']}) without being stored"
        return "not storable", str(why)
    return "failed", f"HTTP {status}: Cache-Status {cache_status[-1]!r} says neither hit nor fwd"


def last_member(values: Sequence[str]) -> dict[str, object] | None:
    """The parameters of the last Cache-Status member (the cache closest to the client)."""
    if not values:
        return None
    parsed = SfList()
    try:
        parsed.parse(", ".join(values).encode("ascii", "replace"))
    except ValueError:
        return None
    if not parsed:
        return None
    last = parsed[-1]
    return {name: _plain(value) for name, value in last.params.items()}


def _plain(value: object) -> object:
    return str(value) if not isinstance(value, bool | int | float) else value


def print_summary(summary: Summary, seconds: float, out: TextIO) -> None:
    total = sum(summary.counts.values())
    print(f"warmed {_plural(total, 'URL')} in {seconds:.1f} s", file=out)
    for outcome in OUTCOMES:
        print(f"  {LABELS[outcome]:<14}{summary.counts[outcome]:>8}", file=out)
    for outcome in ("not storable", "failed"):
        shown = [r for r in summary.results if r.outcome == outcome]
        if not shown:
            continue
        print(f"{LABELS[outcome]}:", file=out)
        for r in shown[:SHOWN]:
            print(f"  {r.target.url}  {r.reason}", file=out)
        if len(shown) > SHOWN:
            print(f"  ... and {len(shown) - SHOWN} more", file=out)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
