"""Benchmark: minicdn against nginx proxy_cache and Varnish, in one run, with wrk.

Starts one origin, then the edge (`python -m proxy`), nginx (`proxy_cache`) and Varnish (malloc
storage) in front of it, all on loopback, warms every cache, checks with one request per key that
each server really hits (or really revalidates, or really passes through, or really stores), and
measures each scenario with `wrk --latency` in alternating rounds (proxy, nginx, varnish, proxy,
...). Each cell is the median over the rounds. Prints a table per scenario and writes JSON.

Multi-key scenarios (the headline; traffic that looks like an edge's: every request names one of
many objects, browser-like request heads, a quarter of them with a Cookie):
  mk-l1-hit-1k-uniform  2,000 fresh 1 KiB objects, every key equally often (shuffled round-robin)
  mk-l1-hit-1k-zipf     the same keys, Zipf popularity (s = 1: the top key gets 12 % of requests)
  mk-l1-hit-100k        200 fresh 100 KiB objects, uniform
  mk-l2-hit-1k          2,000 keys, uniform, the edge with L1 off (disk tier); the peers as L1
  mk-miss-1k            2,000 no-store keys, uniform: every request goes to the origin
  mk-reval-1k           2,000 max-age=0 + ETag keys, uniform: every request revalidated (304)
  mk-c1-miss-1k         mk-miss-1k at concurrency 1 (wrk -t1 -c1), and the origin asked directly:
  mk-c1-reval-1k        mk-reval-1k likewise; what each cache adds to the origin's latency
  mk-fill-1k            cold fill: every request a new key (a counter in the query), a cacheable
                        1 KiB object fetched and stored; judged against the edge's own mk-miss-1k
                        rate, and the edge's admin /stats say how many responses L2 kept

One-URL scenarios (wrk's own request head, the same for every request):
  l1-hit-1k/100k/1m   a fresh cached object (the edge answers from its memory tier, L1)
  l2-hit-1k/100k/1m   the same, the edge with L1 disabled (disk tier, L2); the peers as above
  miss-1k             an uncacheable (no-store) object: every request goes to the origin
  reval-1k            a stale object with an ETag (max-age=0), 1024 keys round-robin: every
                      request is revalidated with a conditional request the origin answers 304
  reval-1k-hot        the same on one key: concurrent revalidations may be collapsed

The origin is nginx serving generated static files (the stub origin when nginx is missing), so
that the origin is not the bottleneck on the miss and revalidation paths. By default each server
is pinned to the first CPU, and wrk and the origin to the second one.

    python bench/compare.py                            # 5 rounds of 5 s per cell (about 27 min)
    python bench/compare.py --short                    # 1 round of 2 s per cell: a quick check
    python bench/compare.py --scenarios multi-key      # the headline rows only (or one-url, or mk-l1-*)
    python bench/compare.py --baseline-root ../main    # adds "proxy-before", run from that checkout
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# bench/ is on sys.path when this file runs as a script (the tests put it there too)
import compare_workload as workload
from compare_report import (
    BASELINE,
    ORIGIN,
    SERVERS,
    Cell,
    fill_notes,
    final_summary,
    latency_adds,
    median,
    ratios,
    scenario_table,
)

ROOT = Path(__file__).resolve().parent.parent
KIB = 1024
MIB = 1024 * 1024
RUN_OVERHEAD_S = 0.6  # per wrk run: origin counter reads, settling, process start of wrk
PROXIES = ("proxy", BASELINE)  # the servers that are `python -m proxy` (from --proxy-root / --baseline-root)


# --- scenarios ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "hit", "miss", "reval", or "fill" (every request a new key, fetched and stored)
    tier: str  # which edge instance: "l1" (memory tier on) or "l2" (memory tier off)
    size: int  # body bytes
    title: str
    keys: int = 1  # > 1: this many URLs (?k=0, ?k=1, ...)
    # with keys > 1: "round-robin" (in order, wrk's own request head), "uniform" (shuffled
    # round-robin) or "zipf" (s = 1), both with browser-like heads (compare_workload.py); fill
    # rows: "new" (every request a new key, browser-like heads too)
    popularity: str = "round-robin"
    multi_key: bool = False  # a headline row (edge-like traffic: many keys, browser-like heads)
    concurrency: int = 0  # 0: --connections and --threads; 1: wrk -t1 -c1 and the origin asked directly
    target: float = 0.0  # c=1 rows: proxy adds <= target x nginx adds; fill: rps >= target x own miss rps
    against: str = ""  # fill rows: the row whose proxy rps the fill rate is judged against

    @property
    def browser(self) -> bool:
        return self.popularity in ("uniform", "zipf") or self.kind == "fill"


MK_KEYS = 2000  # 1 KiB objects in the multi-key rows
MK_KEYS_100K = 200
_MK = {"multi_key": True, "popularity": "uniform"}

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "mk-l1-hit-1k-uniform", "hit", "l1", KIB,
        f"L1 hit, 1 KiB, {MK_KEYS} keys uniform (shuffled round-robin), browser-like heads",
        keys=MK_KEYS, **_MK,
    ),
    Scenario(
        "mk-l1-hit-1k-zipf", "hit", "l1", KIB,
        f"L1 hit, 1 KiB, {MK_KEYS} keys Zipf (s = 1), browser-like heads",
        keys=MK_KEYS, multi_key=True, popularity="zipf",
    ),
    Scenario(
        "mk-l1-hit-100k", "hit", "l1", 100 * KIB,
        f"L1 hit, 100 KiB, {MK_KEYS_100K} keys uniform, browser-like heads",
        keys=MK_KEYS_100K, **_MK,
    ),
    Scenario(
        "mk-l2-hit-1k", "hit", "l2", KIB,
        f"L2 hit, 1 KiB, {MK_KEYS} keys uniform (edge with L1 off: disk tier; peers as L1)",
        keys=MK_KEYS, **_MK,
    ),
    Scenario(
        "mk-miss-1k", "miss", "l1", KIB,
        f"miss path, 1 KiB no-store, {MK_KEYS} keys uniform: every request to the origin",
        keys=MK_KEYS, **_MK,
    ),
    Scenario(
        "mk-reval-1k", "reval", "l1", KIB,
        f"revalidation, 1 KiB max-age=0 + ETag, {MK_KEYS} keys uniform: every request gets a 304",
        keys=MK_KEYS, **_MK,
    ),
    Scenario(
        "mk-c1-miss-1k", "miss", "l1", KIB,
        f"miss path at concurrency 1 (wrk -t1 -c1), {MK_KEYS} keys: what each cache adds to the origin",
        keys=MK_KEYS, concurrency=1, target=2.0, **_MK,
    ),
    Scenario(
        "mk-c1-reval-1k", "reval", "l1", KIB,
        f"revalidation at concurrency 1 (wrk -t1 -c1), {MK_KEYS} keys: what each cache adds to the origin",
        keys=MK_KEYS, concurrency=1, target=3.0, **_MK,
    ),
    Scenario("l1-hit-1k", "hit", "l1", KIB, "L1 hit, 1 KiB (edge memory tier)"),
    Scenario("l1-hit-100k", "hit", "l1", 100 * KIB, "L1 hit, 100 KiB (edge memory tier)"),
    Scenario("l1-hit-1m", "hit", "l1", MIB, "L1 hit, 1 MiB (edge memory tier)"),
    Scenario("l2-hit-1k", "hit", "l2", KIB, "L2 hit, 1 KiB (edge with L1 off: disk tier; peers as L1)"),
    Scenario("l2-hit-100k", "hit", "l2", 100 * KIB, "L2 hit, 100 KiB (edge disk tier; peers as L1)"),
    Scenario("l2-hit-1m", "hit", "l2", MIB, "L2 hit, 1 MiB (edge disk tier; peers as L1)"),
    Scenario("miss-1k", "miss", "l1", KIB, "miss path, 1 KiB no-store: every request to the origin"),
    Scenario(
        "reval-1k",
        "reval",
        "l1",
        KIB,
        "revalidation, 1 KiB max-age=0 + ETag, 1024 keys round-robin: every request gets a 304",
        keys=1024,
    ),
    Scenario(
        "reval-1k-hot",
        "reval",
        "l1",
        KIB,
        "revalidation, 1 KiB max-age=0 + ETag, one key: concurrent revalidations may be collapsed",
    ),
    # Last: it fills the caches with objects that may push out what the rows above measure
    # (Varnish's 256 MiB in particular).
    Scenario(
        "mk-fill-1k", "fill", "l1", KIB,
        "cold fill, 1 KiB: every request a new key (a counter in the query), fetched and stored",
        multi_key=True, popularity="new", target=0.8, against="mk-miss-1k",
    ),
)  # fmt: skip
GROUPS = {
    "multi-key": [s.name for s in SCENARIOS if s.multi_key],
    "one-url": [s.name for s in SCENARIOS if not s.multi_key],
}
FILL_CHECK_KEYS = 20  # fill rows: keys checked before the run (each a stored miss, then a hit)


def select_scenarios(spec: str) -> list[Scenario]:
    """The scenarios named by ``spec`` (comma-separated names, globs such as mk-l1-*, or the groups
    multi-key and one-url), in the order of SCENARIOS; all of them for an empty spec."""
    wanted: set[str] = set()
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        if item in GROUPS:
            wanted.update(GROUPS[item])
            continue
        matched = [s.name for s in SCENARIOS if fnmatch.fnmatchcase(s.name, item)]
        if not matched:
            raise ValueError(f"unknown scenario {item!r}")
        wanted.update(matched)
    return [s for s in SCENARIOS if not wanted or s.name in wanted]


def size_label(n: int) -> str:
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB}m"
    if n >= KIB and n % KIB == 0:
        return f"{n // KIB}k"
    return str(n)


def scenario_path(sc: Scenario, origin_kind: str) -> str:
    """The URL path requested for ``sc`` (the same on every server), given the origin's kind."""
    label = size_label(sc.size)
    if origin_kind == "nginx":
        return {"hit": "/static/", "fill": "/static/", "miss": "/nostore/", "reval": "/reval/"}[
            sc.kind
        ] + label
    # the stub origin (python -m origin_stub): see origin_stub/behaviours.py
    if sc.kind in ("hit", "fill"):
        return f"/bytes/{sc.size}?max_age=86400"
    if sc.kind == "reval":
        return f"/bytes/{sc.size}?max_age=0"
    return "/respond?h=Cache-Control:no-store&body=" + "x" * sc.size


def key_prefix(sc: Scenario, origin_kind: str) -> str:
    """The paths of a many-key scenario are this prefix followed by 0, 1, ... keys-1 (fill rows:
    by a run tag and a counter)."""
    base = scenario_path(sc, origin_kind)
    return base + ("&" if "?" in base else "?") + "k="


def scenario_paths(sc: Scenario, origin_kind: str) -> list[str]:
    """The paths the warm-up fills and checks (fill rows: a few keys of their own)."""
    prefix = key_prefix(sc, origin_kind)
    if sc.kind == "fill":
        return [f"{prefix}check.{i}" for i in range(FILL_CHECK_KEYS)]
    if sc.keys <= 1:
        return [scenario_path(sc, origin_kind)]
    return [f"{prefix}{i}" for i in range(sc.keys)]


def wrk_script(sc: Scenario, origin_kind: str) -> str | None:
    """The wrk Lua script of ``sc`` (None: one URL, wrk's own request)."""
    prefix = key_prefix(sc, origin_kind)
    if sc.kind == "fill":
        return workload.fill_script(sc.name, prefix)
    if sc.popularity in ("uniform", "zipf"):
        return workload.multi_key_script(sc.name, prefix, sc.keys, sc.popularity)
    if sc.keys > 1:
        return workload.round_robin_script(sc.name, prefix, sc.keys)
    return None


def request_heads(sc: Scenario) -> list[dict[str, str]]:
    """The header fields the warm-up sends for each path of ``sc`` (besides Host): what wrk sends,
    so the check covers them; browser-like rows are checked without and then with the Cookie."""
    if not sc.browser:
        return [{}]
    return [dict(workload.browser_fields(cookie)) for cookie in (False, True)]


def origin_files() -> dict[str, int]:
    """Files the nginx origin serves (relative path -> size), one per scenario path."""
    files: dict[str, int] = {}
    for sc in SCENARIOS:
        files[scenario_path(sc, "nginx").lstrip("/")] = sc.size
    return files


def pattern(n: int) -> bytes:
    block = bytes(range(32, 127)) + b"\n"  # 96 printable bytes
    return (block * (n // len(block) + 1))[:n]


# --- configuration of the servers --------------------------------------------------------------


def _nginx_common(tmp: Path, name: str, workers: int, as_root: bool) -> str:
    user = "user root;\n" if as_root else ""
    return f"""{user}worker_processes {workers};
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 4096; }}
"""


def _nginx_http_common(tmp: Path, name: str) -> str:
    return f"""    access_log off;
    client_body_temp_path {tmp}/{name}-tmp-body;
    proxy_temp_path {tmp}/{name}-tmp-proxy;
    fastcgi_temp_path {tmp}/{name}-tmp-fastcgi;
    uwsgi_temp_path {tmp}/{name}-tmp-uwsgi;
    scgi_temp_path {tmp}/{name}-tmp-scgi;
    default_type application/octet-stream;
    sendfile on;  # no tcp_nopush: with it, 100 KiB answers stall 40 ms on loopback (delayed ACK)
    keepalive_timeout 120s;
    keepalive_requests 10000000;
"""


def nginx_origin_conf(tmp: Path, port: int, *, as_root: bool = False) -> str:
    """nginx as the origin: static files; fresh for a day, no-store, or stale at once (+ ETag).

    X-Accel-Expires "@1" (an absolute expiry in 1970) is there for the nginx peer only: nginx
    does not store a max-age=0 response, so it is told to store it already expired, which makes it
    revalidate each time as the edge and Varnish do; the others ignore that header.
    """
    return (
        _nginx_common(tmp, "origin", 1, as_root)
        + "http {\n"
        + _nginx_http_common(tmp, "origin")
        + f"""    log_format st '$status';
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
        etag on;
        location /static/ {{ add_header Cache-Control "max-age=86400"; }}
        location /nostore/ {{
            add_header Cache-Control "no-store";
            access_log {tmp}/origin-access.log st;
        }}
        location /reval/ {{
            add_header X-Accel-Expires "@1";  # before Cache-Control, or nginx does not store
            add_header Cache-Control "max-age=0";
            access_log {tmp}/origin-access.log st;
        }}
        location = /__status {{ stub_status; }}
    }}
}}
"""
    )


def nginx_peer_conf(
    tmp: Path, port: int, origin_port: int, *, workers: int = 1, as_root: bool = False
) -> str:
    """nginx proxy_cache in front of the origin: origin headers decide (no proxy_cache_valid)."""
    return (
        _nginx_common(tmp, "nginx", workers, as_root)
        + "http {\n"
        + _nginx_http_common(tmp, "nginx")
        + f"""    proxy_cache_path {tmp}/nginx-cache levels=1:2 keys_zone=bench:32m max_size=2g inactive=1d
                     use_temp_path=off;
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location / {{
            proxy_pass http://origin;
            proxy_cache bench;
            proxy_cache_revalidate on;
            add_header X-Cache $upstream_cache_status always;
        }}
        location /nostore/ {{
            proxy_pass http://origin;
        }}
    }}
}}
"""
    )


def varnish_vcl(origin_port: int) -> str:
    """Varnish's built-in VCL with two rules: requests for the benchmark's objects lose their
    Cookie (the built-in VCL passes every request with one; a CDN in front of static objects drops
    it), and an already stale response with a validator is kept (beresp.keep) so that the next
    request revalidates it with a conditional fetch."""
    return f"""vcl 4.1;

backend origin {{
    .host = "127.0.0.1";
    .port = "{origin_port}";
}}

sub vcl_recv {{
    if (req.url ~ "^/(static|nostore|reval|bytes|respond)[/?]") {{
        unset req.http.Cookie;  # static objects: cookies are not part of the response
    }}
}}

sub vcl_backend_response {{
    set beresp.http.X-Was-304 = beresp.was_304;
    if (beresp.ttl <= 0s && (beresp.http.ETag || beresp.http.Last-Modified)
        && beresp.http.Cache-Control !~ "(?i)no-store|no-cache|private") {{
        # a lookup skips objects whose ttl is <= 0, so stale after a microsecond instead
        set beresp.ttl = 0.001ms;
        set beresp.grace = 0s;
        set beresp.keep = 1h;
        return (deliver);
    }}
}}
"""


def proxy_config(*, l1: bool) -> dict[str, Any]:
    """The edge's config file (written as JSON, which is YAML). The admin API is on, at the
    address given by --admin-listen (a free port per instance): the fill rows read its /stats."""
    return {
        "name": "bench",
        "log": {"level": "WARNING", "access_log": False},
        "admin": {"enabled": True},
        "cache": {
            "max_object_size": "10MiB",
            "l1": {"enabled": l1, "budget": "512MiB"},
            "l2": {"enabled": True, "budget": "2GiB"},
        },
    }


# --- wrk ---------------------------------------------------------------------------------------

_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION_RE = re.compile(r"^\s*([0-9.]+)\s*(us|ms|s|m|h)\s*$")


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors (connect, read, write, timeout) + non-2xx/3xx responses


def duration_ms(text: str) -> float:
    """A wrk duration ("633.00us", "1.20ms", "2.00s") in milliseconds."""
    m = _DURATION_RE.match(text)
    if m is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Requests/sec, p50, p99 and errors from `wrk --latency` output."""
    rps = re.search(r"^Requests/sec:\s*([0-9.]+)", output, re.M)
    if rps is None:
        raise ValueError("no Requests/sec line in wrk output")
    percentiles: dict[str, float] = {}
    for m in re.finditer(r"^\s*(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", output, re.M):
        percentiles[m.group(1)] = duration_ms(m.group(2))
    if "50" not in percentiles or "99" not in percentiles:
        raise ValueError("no latency distribution in wrk output (run it with --latency)")
    total = re.search(r"^\s*(\d+) requests in", output, re.M)
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output, re.M)
    if sock is not None:
        errors += sum(int(g) for g in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx is not None:
        errors += int(non2xx.group(1))
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        requests=int(total.group(1)) if total else 0,
        errors=errors,
    )


def wrk_command(
    url: str,
    seconds: float,
    connections: int,
    threads: int,
    script: Path | None = None,
    script_args: list[str] | None = None,
) -> list[str]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    if script_args:
        cmd += ["--", *script_args]
    return cmd


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pinner(cpus: set[int] | None) -> Callable[[], None] | None:
    if not cpus:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


class Processes:
    """Every process this run starts, each in its own process group, stopped in reverse order."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(
        self,
        name: str,
        cmd: list[str],
        log: Path,
        cpus: set[int] | None,
        *,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_pinner(cpus),  # no thread of this script runs meanwhile (see run)
            )
        self.procs.append((name, proc, log))
        return proc

    def stop_all(self) -> None:
        for _name, proc, _log in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for _name, proc, _log in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            # whatever is left in the group (nginx workers, the varnish child) goes too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def machine_busy_ticks() -> int:
    """CPU ticks the whole machine spent busy (user, nice, system, irq, softirq), from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return v[0] + v[1] + v[2] + v[5] + v[6]


def tree_cpu_ticks(pids: list[int]) -> int:
    """utime + stime of these processes and their descendants (all their threads)."""
    total = 0
    for root in pids:
        for p in descendants(root):
            try:
                stat = Path(f"/proc/{p}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total


class OtherLoad:
    """How busy the machine was with processes this run did not start (other users: noise)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.hz = os.sysconf("SC_CLK_TCK")
        self.cpus = os.cpu_count() or 1
        self.start = self._sample()

    def _sample(self) -> tuple[float, int, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once waited for
        ours = tree_cpu_ticks(self.pids) + (children.ru_utime + children.ru_stime) * self.hz
        return time.monotonic(), machine_busy_ticks(), ours

    def percent(self) -> float:
        """The share (%) of all CPUs that others used since this object was made."""
        t0, busy0, ours0 = self.start
        t1, busy1, ours1 = self._sample()
        capacity = (t1 - t0) * self.hz * self.cpus
        return max(0.0, 100.0 * ((busy1 - busy0) - (ours1 - ours0)) / capacity) if capacity > 0 else 0.0


def rss_bytes(pid: int) -> int:
    """VmRSS summed over ``pid`` and its descendants (nginx workers, the varnish child)."""
    total = 0
    for p in descendants(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        if m:
            total += int(m.group(1)) * 1024
    return total


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    client = Client(port, timeout)
    try:
        return client.get(path)
    finally:
        client.close()


class Client:
    """GET requests over one kept-alive connection (reopened when the server closes it)."""

    def __init__(self, port: int, timeout: float = 10.0, stop: threading.Event | None = None) -> None:
        self.port = port
        self.timeout = timeout
        self.stop = stop  # once set, every request raises (a warm-up thread told to give up)
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        if self.stop is not None and self.stop.is_set():
            raise RuntimeError("stopped")
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request("GET", path, headers=headers or {})
                resp = self.conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
                continue
            if resp.will_close:
                self.close()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def wait_http(name: str, port: int, proc: subprocess.Popen[bytes], log: Path, path: str = "/") -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            http_get(port, path, timeout=2)
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not answer on port {port} within 30 s:\n{tail(log)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


def git_version(root: Path = ROOT) -> str:
    """The commit of the code under test in ``root``, "+dirty" when its proxy/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "proxy"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return "?"
    if head.returncode != 0:
        return "?"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def proxy_env(root: Path) -> dict[str, str]:
    """The environment of a `python -m proxy` from ``root``: its checkout first on the path, and no
    MINICDN_* variables (they would override the benchmark's config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINICDN_")}
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def proxy_supports_workers(root: Path = ROOT) -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "--help"],
        cwd=root,
        env=proxy_env(root),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "--workers" in out.stdout


def proxy_stats(admin_port: int) -> dict[str, int | None]:
    """L2 entries and dropped L2 writes from the edge's admin ``GET /stats`` (None: not found)."""
    status, _, body = http_get(admin_port, "/stats")
    if status != 200:
        raise RuntimeError(f"admin /stats on port {admin_port} answered {status}")
    stats = json.loads(body)
    l2 = (stats.get("tiers") or {}).get("l2") or {}
    storage = stats.get("storage") or {}
    entries, dropped = l2.get("entries"), storage.get("write_dropped")
    return {
        "l2_entries": entries if isinstance(entries, int) else None,
        "write_dropped": dropped if isinstance(dropped, int) else None,
    }


def settled_proxy_stats(admin_port: int, timeout: float = 30.0) -> dict[str, int | None]:
    """proxy_stats once L2's entry count has stopped growing (the write-behind queue drained)."""
    last = proxy_stats(admin_port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = proxy_stats(admin_port)
        if now["l2_entries"] == last["l2_entries"]:
            return now
        last = now
    return last


# --- checks ------------------------------------------------------------------------------------


def check_response(server: str, kind: str, headers: dict[str, str]) -> str | None:
    """Why this response does not show a hit / a revalidation / a pass-through / a fetch that was
    stored (kind "fill"); None if it does. Both proxies (proxy, proxy-before) say it the same way."""
    if server in PROXIES:
        cs = headers.get("cache-status", "").lower()
        ok = {
            "hit": ";hit" in cs and "fwd=" not in cs,
            "reval": "fwd-status=304" in cs,
            "miss": "fwd=" in cs and "fwd-status=200" in cs and "stored" not in cs,
            "fill": "fwd=" in cs and "fwd-status=200" in cs and "stored" in cs,
        }[kind]
        return None if ok else f"Cache-Status: {cs or '(none)'}"
    if server == "nginx":
        xc = headers.get("x-cache", "")
        want = {"hit": "HIT", "reval": "REVALIDATED", "miss": "", "fill": "MISS"}[kind]
        return None if xc == want else f"X-Cache: {xc or '(none)'}, want {want or '(none)'}"
    ids = headers.get("x-varnish", "").split()
    if kind == "hit":
        return None if len(ids) == 2 else f"X-Varnish: {' '.join(ids)} (a hit has two ids)"
    if kind == "reval":
        ok = len(ids) == 1 and headers.get("x-was-304") == "true"
        return None if ok else f"X-Varnish: {' '.join(ids)}, X-Was-304: {headers.get('x-was-304')}"
    return None if len(ids) == 1 else f"X-Varnish: {' '.join(ids)} (a pass or a miss has one id)"


class Origin:
    """The origin: nginx with static files, or the stub. Counts the requests that reach it."""

    def __init__(self, kind: str, port: int, tmp: Path) -> None:
        self.kind = kind
        self.port = port
        self.tmp = tmp

    def requests(self) -> int:
        if self.kind == "nginx":
            _, _, body = http_get(self.port, "/__status")
            m = re.search(r"^\s*\d+\s+\d+\s+(\d+)\s*$", body.decode(), re.M)
            if m is None:
                raise RuntimeError(f"unexpected stub_status answer: {body[:200]!r}")
            return int(m.group(1)) - 1  # that status request counts itself
        _, _, body = http_get(self.port, "/__hits")
        return int(json.loads(body)["total"])

    def statuses(self) -> list[str]:
        """Statuses logged by the nginx origin on /nostore/ and /reval/, oldest first."""
        log = self.tmp / "origin-access.log"
        return log.read_text().split() if log.exists() else []


# --- the run -----------------------------------------------------------------------------------


def warm_and_check(
    sc: Scenario,
    server: str,
    port: int,
    origin: Origin,
    origin_kind: str,
    stop: threading.Event | None = None,
) -> None:
    """Fill the cache for every key of ``sc``, then check the next answer for each key: a hit (or a
    revalidation, or a pass-through; check_origin_answers then reads the origin's log). Browser-like
    rows are checked with the heads wrk sends: every key without the Cookie, every fourth key with
    it too. Fill rows: a few new keys, each first fetched and stored, then a hit."""
    paths = scenario_paths(sc, origin_kind)
    heads = request_heads(sc)
    client = Client(port, stop=stop)
    try:
        if sc.kind == "fill":
            for path in paths:
                _expect(client, sc, server, path, heads[0], "fill", attempts=1)
                _expect(client, sc, server, path, heads[-1], "hit")
            return
        if sc.kind != "miss":
            for path in paths:  # every key first fetched, so that disk-tier writes land meanwhile
                status, _, body = client.get(path, heads[0])
                if status != 200 or len(body) != sc.size:
                    raise RuntimeError(f"{sc.name}: {server} on {path}: status {status}, {len(body)} bytes")
        for i, head in enumerate(heads):
            # the head with the Cookie on a quarter of the keys (wrk sends it on a quarter of requests)
            for path in paths if i == 0 else paths[:: workload.COOKIE_EVERY]:
                _expect(client, sc, server, path, head, sc.kind)
    finally:
        client.close()


def check_origin_answers(sc: Scenario, server: str, port: int, origin: Origin, origin_kind: str) -> None:
    """On the miss and revalidation paths, three requests must reach the nginx origin and be
    answered 200 (304): read from its access log, so only while no other server is asked."""
    if sc.kind not in ("miss", "reval") or origin_kind != "nginx":
        return
    paths = scenario_paths(sc, origin_kind)
    client = Client(port)
    try:
        before = len(origin.statuses())
        for i in range(3):
            client.get(paths[i % len(paths)], request_heads(sc)[-1])
        time.sleep(0.05)
        got = origin.statuses()[before:]
    finally:
        client.close()
    want = "304" if sc.kind == "reval" else "200"
    if got != [want] * 3:
        raise RuntimeError(
            f"{sc.name}: {server}: 3 requests, the origin answered {got or 'nothing'}, want 3 x {want}"
        )


def _expect(
    client: Client, sc: Scenario, server: str, path: str, head: dict[str, str], kind: str, attempts: int = 20
) -> None:
    """One request for ``path`` must show ``kind`` (retried: an L2 write may still be on its way)."""
    problem = "not tried"
    for attempt in range(attempts):
        if attempt:
            time.sleep(0.1)
        status, headers, body = client.get(path, head)
        if status != 200 or len(body) != sc.size:
            problem = f"status {status}, {len(body)} bytes"
            continue
        found = check_response(server, kind, headers)
        if found is None:
            return
        problem = found
    cookie = " (with a Cookie)" if "Cookie" in head else ""
    raise RuntimeError(f"{sc.name}: {server} does not behave as expected on {path}{cookie}: {problem}")


def servers_of(sc: Scenario, servers: list[str]) -> list[str]:
    """The servers measured in ``sc``, in round order: the latency rows ask the origin directly too."""
    return [ORIGIN, *servers] if sc.concurrency == 1 else list(servers)


def estimate_seconds(scenarios: list[Scenario], servers: list[str], rounds: int, duration: float) -> float:
    startup = 15.0
    warm = sum(len(servers) * (2.0 if s.keys > 100 else 0.2) for s in scenarios)  # http.client, 2,000 keys
    cells = sum(len(servers_of(s, servers)) for s in scenarios)
    return startup + warm + cells * rounds * (duration + RUN_OVERHEAD_S)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/compare.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--short", action="store_true", help="a quick check: 1 round of 2 s per cell")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per cell (default 5)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument(
        "--connections", type=int, default=64, help="wrk connections (default 64; the c1 rows use 1)"
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1; the c1 rows use 1)")
    parser.add_argument(
        "--workers",
        default="1",
        help="processes of the edge (only if `python -m proxy --help` has --workers; else 1) "
        "and worker_processes of nginx, always the same number; a list such as 1,2 runs the "
        "whole comparison once per number, one after the other (JSON: one file per number)",
    )
    parser.add_argument(
        "--scenarios",
        default="",
        help="comma-separated names, globs (mk-l1-*) or groups (multi-key, one-url) of: "
        + ", ".join(s.name for s in SCENARIOS),
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated subset of {', '.join(SERVERS)} (--baseline-root adds {BASELINE})",
    )
    parser.add_argument("--origin", choices=("auto", "nginx", "stub"), default="auto", help="origin server")
    parser.add_argument(
        "--proxy-root",
        type=Path,
        default=ROOT,
        metavar="DIR",
        help="the checkout whose `python -m proxy` is measured (run with cwd=DIR, PYTHONPATH=DIR "
        "and this interpreter; default: the repository this script is in)",
    )
    parser.add_argument(
        "--baseline-root",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"another checkout, measured as a fourth server, {BASELINE!r}, in the same alternating "
        "rounds (a before/after comparison from one run)",
    )
    parser.add_argument(
        "--label", default="", help="a name for this run, kept in the JSON (default: the proxy's commit)"
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the servers to the first CPU and wrk and the origin to the others "
        "(never pinned with --workers > 1)",
    )
    parser.add_argument(
        "--json",
        default=None,
        help="JSON output (default bench/compare.json; with --short none unless given)",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    parser.add_argument(
        "--proxy-rules",
        type=int,
        default=0,
        metavar="N",
        help="configure N per-route rules that no benchmark URL matches in `proxy` (not in the "
        "baseline): what rules cost the requests they do not concern",
    )
    return parser


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        counts = [int(n) for n in str(args.workers).split(",") if n.strip()]
    except ValueError:
        print(f"--workers takes numbers, e.g. 1 or 1,2; not {args.workers!r}", file=sys.stderr)
        return 2
    if len(counts) <= 1:
        args.workers = counts[0] if counts else 1
        return compare(args)
    summaries: list[str] = []
    for n in counts:
        one = argparse.Namespace(**vars(args))
        one.workers = n
        if args.json:
            base = Path(args.json)
            one.json = str(base.with_name(f"{base.stem}-{n}w{base.suffix}"))
        elif not args.short:
            one.json = str(ROOT / "bench" / f"compare-{n}w.json")
        print(f"\n=== {n} worker process(es) ===", flush=True)
        code = compare(one, summaries)
        if code:
            return code
    print("\n" + "\n\n".join(summaries))
    return 0


def compare(args: argparse.Namespace, summaries: list[str] | None = None) -> int:
    """One whole comparison at args.workers processes; its summary is also appended to summaries."""
    if args.short:
        args.rounds, args.duration = 1, 2.0
    if args.json is None and not args.short:
        args.json = str(ROOT / "bench" / "compare.json")

    try:
        scenarios = select_scenarios(args.scenarios)
    except ValueError as exc:
        print(f"{exc}; the scenarios: {', '.join(s.name for s in SCENARIOS)}", file=sys.stderr)
        return 2

    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk): nothing can be measured", file=sys.stderr)
        return 1
    have_nginx = shutil.which("nginx") is not None
    have_varnish = shutil.which("varnishd") is not None
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(SERVERS)
    if unknown:
        print(f"unknown servers: {', '.join(sorted(unknown))} (of {', '.join(SERVERS)})", file=sys.stderr)
        return 2
    if "nginx" in servers and not have_nginx:
        print("nginx is not installed (apt-get install nginx): skipping the nginx peer", flush=True)
        servers.remove("nginx")
    if "varnish" in servers and not have_varnish:
        print("varnishd is not installed (apt-get install varnish): skipping the Varnish peer", flush=True)
        servers.remove("varnish")
    roots = {"proxy": args.proxy_root.resolve()}
    if args.baseline_root is not None:
        roots[BASELINE] = args.baseline_root.resolve()
        servers.append(BASELINE)
    roots = {name: root for name, root in roots.items() if name in servers}
    for name, root in roots.items():
        if not (root / "proxy" / "__main__.py").is_file():
            print(f"{name}: {root} has no proxy/__main__.py (not a minicdn checkout)", file=sys.stderr)
            return 2
    origin_kind = args.origin if args.origin != "auto" else ("nginx" if have_nginx else "stub")
    if origin_kind == "nginx" and not have_nginx:
        print("--origin nginx needs nginx", file=sys.stderr)
        return 1

    workers = max(1, args.workers)
    proxy_workers = {name: proxy_supports_workers(root) for name, root in roots.items()}
    if workers != 1 and not all(proxy_workers.values()):
        print("a python -m proxy has no --workers option: 1 process for the edges and for nginx", flush=True)
        workers = 1

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and len(cpus) >= 2 and workers == 1
    if workers > 1 and not args.no_pin:
        print(f"{workers} workers: servers and wrk are not pinned to CPUs", flush=True)
    server_cpus = {cpus[0]} if pin else None
    client_cpus = set(cpus[1:]) if pin else None
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0

    versions = {name: git_version(root) for name, root in roots.items()}
    label = args.label or versions.get("proxy", "")
    total = estimate_seconds(scenarios, servers, args.rounds, args.duration)
    print(
        f"{len(scenarios)} scenarios x {len(servers)} servers ({', '.join(servers)}) x {args.rounds} rounds "
        f"x {args.duration:g} s (wrk -t{args.threads} -c{args.connections}); origin: {origin_kind}; "
        f"about {total:.0f} s ({total / 60:.1f} min) in all",
        flush=True,
    )
    for name, root in roots.items():
        print(f"{name}: python -m proxy from {root} ({versions[name]})", flush=True)
    if pin:
        print(f"servers pinned to CPU {cpus[0]}, wrk and the origin to CPU(s) {cpus[1:]}", flush=True)

    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="minicdn-compare-"))
    tmp.chmod(0o755)  # the Varnish child runs as its own user
    started = time.monotonic()
    try:
        setup = Setup(
            servers, origin_kind, workers, roots, proxy_workers, versions, procs, tmp,
            server_cpus, client_cpus, as_root, args.proxy_rules,
        )  # fmt: skip
        results = run(args, scenarios, setup)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        if args.keep_tmp:
            print(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)

    elapsed = time.monotonic() - started
    proxy_desc = {
        name: f"{workers} process" + ("" if proxy_workers[name] else " (no --workers option)")
        for name in roots
    }
    meta = {
        "label": label,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "command": " ".join(["python", "bench/compare.py", *sys.argv[1:]]),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "wrk": f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency",
        "origin": origin_kind,
        "pinned": pin,
        "workers": {
            **proxy_desc,
            "nginx": f"worker_processes {workers}",
            "varnish": "default thread pools",
        },
        "versions": {
            "python": platform.python_version(),
            "nginx": tool_version(["nginx", "-v"]) if have_nginx else None,
            "varnish": tool_version(["varnishd", "-V"]) if have_varnish else None,
            "wrk": tool_version(["wrk", "-v"]),
        },
        "proxy_root": str(roots["proxy"]) if "proxy" in roots else None,
        "proxy_code": versions.get("proxy"),
        "proxy_rules": args.proxy_rules,
        "baseline_root": str(roots[BASELINE]) if BASELINE in roots else None,
        "baseline_code": versions.get(BASELINE),
        "elapsed_s": round(elapsed),
    }
    code = ", ".join(f"{name} code {v}" for name, v in versions.items())
    print(
        f"\n{label + ': ' if label else ''}medians of {args.rounds} round(s) of {args.duration:g} s; "
        f"{meta['wrk']}; origin: {origin_kind}; {code}"
    )
    print(
        "; ".join(f"{name}: {desc}" for name, desc in proxy_desc.items())
        + f"; nginx: worker_processes {workers}; varnish: default thread pools"
        + ("; servers pinned to 1 CPU, wrk to the other" if pin else "")
    )
    print()
    final = final_summary(results)
    print(final)
    if summaries is not None:
        who = "; ".join(f"{name}: {desc}" for name, desc in proxy_desc.items())
        summaries.append(
            f"{workers} worker process(es) ({who}; nginx: worker_processes {workers})\n\n{final}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "scenarios": results}, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    print(f"done in {elapsed:.0f} s")
    return 0


@dataclass
class Setup:
    """What one comparison runs against, decided before anything starts."""

    servers: list[str]
    origin_kind: str
    workers: int
    roots: dict[str, Path]  # proxy (and proxy-before) -> its checkout
    proxy_workers: dict[str, bool]  # whether that checkout's python -m proxy has --workers
    versions: dict[str, str]
    procs: Processes
    tmp: Path
    server_cpus: set[int] | None
    client_cpus: set[int] | None
    as_root: bool
    proxy_rules: int = 0  # per-route rules in the config of `proxy` (not of the baseline)


@dataclass(frozen=True)
class Instance:
    port: int
    pid: int
    admin_port: int | None = None  # the edges' admin API


def start_servers(setup: Setup, tiers: set[str]) -> tuple[Origin, dict[str, Instance], dict[str, str]]:
    """The origin, then every server (the edges: one instance per tier); instances are named
    origin, proxy-l1, proxy-l2, proxy-before-l1, ..., nginx, varnish."""
    procs, tmp, as_root = setup.procs, setup.tmp, setup.as_root
    origin_port = free_port()
    if setup.origin_kind == "nginx":
        for rel, size in origin_files().items():
            f = tmp / "www" / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(pattern(size))
        conf = tmp / "origin.conf"
        conf.write_text(nginx_origin_conf(tmp, origin_port, as_root=as_root))
        cmd = ["nginx", "-p", str(tmp), "-e", str(tmp / "origin-error.log"), "-c", str(conf)]
    else:
        cmd = [sys.executable, "-m", "origin_stub", "--listen", f"127.0.0.1:{origin_port}"]
    log = tmp / "origin.log"
    proc = procs.start("origin", cmd, log, setup.client_cpus)
    ready_path = "/__status" if setup.origin_kind == "nginx" else "/__hits"  # never cached
    wait_http("origin", origin_port, proc, log, ready_path)
    origin = Origin(setup.origin_kind, origin_port, tmp)
    print(f"origin ({setup.origin_kind}) on 127.0.0.1:{origin_port}", flush=True)

    instances: dict[str, Instance] = {ORIGIN: Instance(origin_port, proc.pid)}
    notes: dict[str, str] = {}
    origin_url = f"http://127.0.0.1:{origin_port}"
    for server, root in setup.roots.items():
        for tier in sorted(tiers):
            name = f"{server}-{tier}"
            port, admin_port = free_port(), free_port()
            cfg = tmp / f"{name}.yaml"
            config = proxy_config(l1=tier == "l1")
            if server == "proxy" and setup.proxy_rules:
                config["rules"] = workload.bench_rules(setup.proxy_rules)
            cfg.write_text(json.dumps(config, indent=2))
            cmd = [
                sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{port}", "--origin", origin_url,
                "--cache-dir", str(tmp / f"{name}-cache"), "--config", str(cfg),
                "--admin-listen", f"127.0.0.1:{admin_port}",
            ]  # fmt: skip
            if setup.proxy_workers[server]:
                cmd += ["--workers", str(setup.workers)]
            log = tmp / f"{name}.log"
            proc = procs.start(name, cmd, log, setup.server_cpus, cwd=root, env=proxy_env(root))
            wait_http(f"{server} ({tier})", port, proc, log, ready_path)
            wait_http(f"{server} ({tier}) admin API", admin_port, proc, log, "/stats")
            instances[name] = Instance(port, proc.pid, admin_port)
        notes[server] = f"{setup.workers} process(es), {setup.versions[server]}"
    if "nginx" in setup.servers:
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_peer_conf(tmp, port, origin_port, workers=setup.workers, as_root=as_root))
        cmd = ["nginx", "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)]
        log = tmp / "nginx.log"
        proc = procs.start("nginx", cmd, log, setup.server_cpus)
        wait_http("nginx", port, proc, log, ready_path)
        instances["nginx"] = Instance(port, proc.pid)
        notes["nginx"] = f"worker_processes {setup.workers}"
    if "varnish" in setup.servers:
        port = free_port()
        vcl = tmp / "bench.vcl"
        vcl.write_text(varnish_vcl(origin_port))
        vcl.chmod(0o644)
        cmd = [
            "varnishd", "-F", "-a", f"127.0.0.1:{port}", "-f", str(vcl), "-s", "malloc,256m",
            "-n", str(tmp / "varnish"), "-T", "none",
        ]  # fmt: skip
        log = tmp / "varnish.log"
        proc = procs.start("varnish", cmd, log, setup.server_cpus)
        wait_http("varnish", port, proc, log, ready_path)
        instances["varnish"] = Instance(port, proc.pid)
        notes["varnish"] = "default threads"
    notes[ORIGIN] = "asked directly"
    print(
        "started: " + ", ".join(f"{k} on 127.0.0.1:{i.port}" for k, i in instances.items() if k != ORIGIN),
        flush=True,
    )
    return origin, instances, notes


def run(args: argparse.Namespace, scenarios: list[Scenario], setup: Setup) -> list[dict[str, Any]]:
    origin, instances, notes = start_servers(setup, {s.tier for s in scenarios})
    origin_kind, tmp, client_cpus = setup.origin_kind, setup.tmp, setup.client_cpus

    def instance(server: str, sc: Scenario) -> Instance:
        return instances[f"{server}-{sc.tier}" if server in PROXIES else server]

    # warm every cache and check each server with one request per key (and head); rows that share
    # their keys and behaviour (mk-miss-1k and mk-c1-miss-1k) are checked once
    # (the servers of a row in parallel threads, all joined before wrk starts)
    checked: set[tuple[Any, ...]] = set()
    for sc in scenarios:
        todo = []
        for server in servers_of(sc, setup.servers):
            what = (instance(server, sc), sc.kind, key_prefix(sc, origin_kind), sc.keys, sc.browser)
            if server == ORIGIN or (sc.kind != "fill" and what in checked):
                continue
            todo.append(server)
            checked.add(what)
        stop = threading.Event()  # set on Ctrl-C / SIGTERM: the threads give up at their next request
        pool = ThreadPoolExecutor(max_workers=max(1, len(todo)))
        try:
            futures = [
                pool.submit(warm_and_check, sc, server, instance(server, sc).port, origin, origin_kind, stop)
                for server in todo
            ]
            for future in futures:
                future.result()
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for server in todo:
            check_origin_answers(sc, server, instance(server, sc).port, origin, origin_kind)
        print(f"warm and checked: {sc.name}", flush=True)

    results: list[dict[str, Any]] = []
    runs_total = sum(len(servers_of(sc, setup.servers)) for sc in scenarios) * args.rounds
    run_no = 0
    for sc in scenarios:
        servers = servers_of(sc, setup.servers)
        path = scenario_path(sc, origin_kind)
        script: Path | None = None
        text = wrk_script(sc, origin_kind)
        if text is not None:
            script = tmp / f"{sc.name}.lua"
            script.write_text(text)
        connections, threads = (1, 1) if sc.concurrency == 1 else (args.connections, args.threads)
        fill_before: dict[str, dict[str, int | None]] = {}
        if sc.kind == "fill":
            fill_before = {s: proxy_stats(_admin(instance(s, sc))) for s in servers if s in PROXIES}
        cells = {server: Cell() for server in servers}
        for rnd in range(1, args.rounds + 1):
            for server in servers:
                run_no += 1
                inst = instance(server, sc)
                url = f"http://127.0.0.1:{inst.port}{path}"
                before = origin.requests()
                load = OtherLoad([proc.pid for _name, proc, _log in setup.procs.procs])
                tag = [f"r{rnd}"] if sc.kind == "fill" else None  # new keys in every run
                cmd = wrk_command(url, args.duration, connections, threads, script, tag)
                out = subprocess.run(
                    cmd,
                    capture_output=True,
                    text=True,
                    timeout=args.duration + 60,
                    preexec_fn=_pinner(client_cpus),
                )
                if out.returncode != 0:
                    raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout}")
                res = parse_wrk(out.stdout)
                other = load.percent()
                time.sleep(0.1)
                origin_reqs = origin.requests() - before
                per_req = origin_reqs / res.requests if res.requests else 0.0
                cells[server].rounds.append(
                    {
                        "rps": res.rps,
                        "p50_ms": res.p50_ms,
                        "p99_ms": res.p99_ms,
                        "requests": res.requests,
                        "errors": res.errors,
                        "origin_requests": origin_reqs,
                        "other_cpu_pct": round(other, 1),
                    }
                )
                print(
                    f"[{run_no}/{runs_total}] {sc.name} round {rnd}/{args.rounds} {server:<12}"
                    f"{res.rps:>10.0f} rps  p50 {res.p50_ms:7.3f} ms  p99 {res.p99_ms:7.3f} ms"
                    f"  origin/req {per_req:.2f}  other load {other:3.0f}%"
                    + (f"  errors {res.errors}" if res.errors else ""),
                    flush=True,
                )
                time.sleep(0.2)
        for server, c in cells.items():
            c.rps = median([r["rps"] for r in c.rounds])
            c.p50_ms = median([r["p50_ms"] for r in c.rounds])
            c.p99_ms = median([r["p99_ms"] for r in c.rounds])
            c.errors = int(sum(r["errors"] for r in c.rounds))
            c.other_cpu_pct = median([r["other_cpu_pct"] for r in c.rounds])
            reqs = sum(r["requests"] for r in c.rounds)
            c.origin_per_request = sum(r["origin_requests"] for r in c.rounds) / reqs if reqs else 0.0
            c.rss_mib = rss_bytes(instance(server, sc).pid) / MIB
        result: dict[str, Any] = {
            "name": sc.name,
            "title": sc.title,
            "group": "multi-key" if sc.multi_key else "one-url",
            "kind": sc.kind,
            "keys": sc.keys,
            "popularity": sc.popularity,
            "concurrency": sc.concurrency or connections,
            "path": path,
            "servers": {k: asdict(v) for k, v in cells.items()},
            "ratios": ratios(cells),
        }
        if sc.target:
            result["target"] = sc.target
        if sc.against:
            result["against"] = sc.against
        if sc.concurrency == 1:
            result["adds"] = latency_adds(cells)
        if fill_before:
            result["fill"] = {
                server: fill_stored(before, settled_proxy_stats(_admin(instance(server, sc))), cells[server])
                for server, before in fill_before.items()
            }
        print()
        print(scenario_table(sc.name, sc.title, cells, notes))
        for line in scenario_notes(result, results):
            print(line)
        print(flush=True)
        results.append(result)
    return results


def _admin(inst: Instance) -> int:
    if inst.admin_port is None:
        raise RuntimeError("an edge without an admin port")
    return inst.admin_port


def fill_stored(before: dict[str, int | None], after: dict[str, int | None], cell: Cell) -> dict[str, Any]:
    """What L2 kept of a cold fill: entries added and writes dropped between the two /stats reads,
    against the responses the edge fetched from the origin in its rounds."""

    def delta(key: str) -> int | None:
        a, b = after.get(key), before.get(key)
        return a - b if a is not None and b is not None else None

    return {
        "l2_stored": delta("l2_entries"),
        "write_dropped": delta("write_dropped"),
        "origin_fetches": int(sum(r["origin_requests"] for r in cell.rounds)),
        "before": before,
        "after": after,
    }


def scenario_notes(result: dict[str, Any], earlier: list[dict[str, Any]]) -> list[str]:
    """Lines under a scenario's table: what each cache adds (c=1 rows); the cold-fill judgement."""
    lines: list[str] = []
    for server, adds in result.get("adds", {}).items():
        lines.append(
            f"{server} adds p50 {adds['p50_ms'] * 1000:.0f} µs, p99 {adds['p99_ms'] * 1000:.0f} µs "
            "to the origin's own latency"
        )
    if result.get("kind") == "fill":
        lines += fill_notes([*earlier, result])
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
