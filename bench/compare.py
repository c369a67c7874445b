"""Benchmark: minicdn against nginx proxy_cache and Varnish, in one run, with wrk.

Starts one origin, then the edge (`python -m proxy`), nginx (`proxy_cache`) and Varnish (malloc
storage) in front of it, all on loopback, warms every cache, checks with one request that each
server really hits (or really revalidates, or really passes through), and measures each scenario
with `wrk --latency` in alternating rounds (proxy, nginx, varnish, proxy, ...). Each cell is the
median over the rounds. Prints a table per scenario and writes JSON.

Scenarios:
  l1-hit-1k/100k/1m   a fresh cached object (the edge answers from its memory tier, L1)
  l2-hit-1k/100k/1m   the same, the edge with L1 disabled (disk tier, L2); the peers as above
  miss-1k             an uncacheable (no-store) object: every request goes to the origin
  reval-1k            a stale object with an ETag (max-age=0), 1024 keys round-robin: every
                      request is revalidated with a conditional request the origin answers 304
  reval-1k-hot        the same on one key: concurrent revalidations may be collapsed

The origin is nginx serving generated static files (the stub origin when nginx is missing), so
that the origin is not the bottleneck on the miss and revalidation paths. By default each server
is pinned to the first CPU, and wrk and the origin to the second one.

    python bench/compare.py            # 5 rounds of 5 s per cell (about 13 min)
    python bench/compare.py --short    # 1 round of 2 s per cell (about 1 min): a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KIB = 1024
MIB = 1024 * 1024
SERVERS = ("proxy", "nginx", "varnish")
RUN_OVERHEAD_S = 0.6  # per wrk run: origin counter reads, settling, process start of wrk


# --- scenarios ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "hit", "miss" or "reval"
    tier: str  # which edge instance: "l1" (memory tier on) or "l2" (memory tier off)
    size: int  # body bytes
    title: str
    keys: int = 1  # > 1: wrk requests this many URLs (?k=0, ?k=1, ...) round-robin


SCENARIOS: tuple[Scenario, ...] = (
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
)


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
        return {"hit": "/static/", "miss": "/nostore/", "reval": "/reval/"}[sc.kind] + label
    # the stub origin (python -m origin_stub): see origin_stub/behaviours.py
    if sc.kind == "hit":
        return f"/bytes/{sc.size}?max_age=86400"
    if sc.kind == "reval":
        return f"/bytes/{sc.size}?max_age=0"
    return "/respond?h=Cache-Control:no-store&body=" + "x" * sc.size


def key_prefix(sc: Scenario, origin_kind: str) -> str:
    """The paths of a many-key scenario are this prefix followed by 0, 1, ... keys-1."""
    base = scenario_path(sc, origin_kind)
    return base + ("&" if "?" in base else "?") + "k="


def scenario_paths(sc: Scenario, origin_kind: str) -> list[str]:
    if sc.keys <= 1:
        return [scenario_path(sc, origin_kind)]
    prefix = key_prefix(sc, origin_kind)
    return [f"{prefix}{i}" for i in range(sc.keys)]


def wrk_script(sc: Scenario, origin_kind: str) -> str:
    """A wrk Lua script that requests the keys of ``sc`` round-robin."""
    return f"""-- generated by bench/compare.py: {sc.name}, {sc.keys} keys round-robin
local prefix, keys, n = "{key_prefix(sc, origin_kind)}", {sc.keys}, 0
request = function()
    n = n + 1
    return wrk.format(nil, prefix .. (n % keys))
end
"""


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
    """Varnish's built-in VCL, except that an already stale response with a validator is kept
    (beresp.keep) so that the next request revalidates it with a conditional fetch."""
    return f"""vcl 4.1;

backend origin {{
    .host = "127.0.0.1";
    .port = "{origin_port}";
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
    """The edge's config file (written as JSON, which is YAML)."""
    return {
        "name": "bench",
        "log": {"level": "WARNING", "access_log": False},
        "admin": {"enabled": False},  # its fixed port would clash between the two edges
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
    url: str, seconds: float, connections: int, threads: int, script: Path | None = None
) -> list[str]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    return [*cmd, url]


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

    def start(self, name: str, cmd: list[str], log: Path, cpus: set[int] | None) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_pinner(cpus),  # this script starts no threads
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

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request("GET", path)
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


def git_version() -> str:
    """The commit of the code under test, "+dirty" when proxy/ has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "proxy"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return "?"
    if head.returncode != 0:
        return "?"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def proxy_supports_workers() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    return "--workers" in out.stdout


# --- checks ------------------------------------------------------------------------------------


def check_response(server: str, kind: str, headers: dict[str, str]) -> str | None:
    """Why this response does not show a hit / a revalidation / a pass-through; None if it does."""
    if server == "proxy":
        cs = headers.get("cache-status", "").lower()
        ok = {
            "hit": ";hit" in cs and "fwd=" not in cs,
            "reval": "fwd-status=304" in cs,
            "miss": "fwd=" in cs and "fwd-status=200" in cs and "stored" not in cs,
        }[kind]
        return None if ok else f"Cache-Status: {cs or '(none)'}"
    if server == "nginx":
        xc = headers.get("x-cache", "")
        want = {"hit": "HIT", "reval": "REVALIDATED", "miss": ""}[kind]
        return None if xc == want else f"X-Cache: {xc or '(none)'}, want {want or '(none)'}"
    ids = headers.get("x-varnish", "").split()
    if kind == "hit":
        return None if len(ids) == 2 else f"X-Varnish: {' '.join(ids)} (a hit has two ids)"
    if kind == "reval":
        ok = len(ids) == 1 and headers.get("x-was-304") == "true"
        return None if ok else f"X-Varnish: {' '.join(ids)}, X-Was-304: {headers.get('x-was-304')}"
    return None if len(ids) == 1 else f"X-Varnish: {' '.join(ids)} (a pass has one id)"


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


def warm_and_check(sc: Scenario, server: str, port: int, origin: Origin, origin_kind: str) -> None:
    """Fill the cache for every key of ``sc`` and check the next answer: a hit (or a revalidation,
    or a pass-through), and on the nginx origin that the origin really answered 304 (or 200)."""
    client = Client(port)
    try:
        for path in scenario_paths(sc, origin_kind):
            problem: str | None = "not tried"
            for attempt in range(20):
                status, headers, body = client.get(path)
                if status != 200 or len(body) != sc.size:
                    problem = f"status {status}, {len(body)} bytes"
                elif attempt == 0 and sc.kind != "miss":
                    continue  # the first request fills the cache
                else:
                    problem = check_response(server, sc.kind, headers)
                if problem is None:
                    break
                time.sleep(0.1)  # an L2 write may still be on its way
            if problem is not None:
                raise RuntimeError(f"{sc.name}: {server} does not behave as expected on {path}: {problem}")
        if sc.kind in ("miss", "reval") and origin_kind == "nginx":
            before = len(origin.statuses())
            paths = scenario_paths(sc, origin_kind)
            for i in range(3):
                client.get(paths[i % len(paths)])
            time.sleep(0.05)
            got = origin.statuses()[before:]
            want = "304" if sc.kind == "reval" else "200"
            if got != [want] * 3:
                raise RuntimeError(
                    f"{sc.name}: {server}: 3 requests, the origin answered {got or 'nothing'}, "
                    f"want 3 x {want}"
                )
    finally:
        client.close()


@dataclass
class Cell:
    rounds: list[dict[str, float]] = field(default_factory=list)
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rss_mib: float = 0.0
    errors: int = 0
    origin_per_request: float = 0.0
    other_cpu_pct: float = 0.0  # median share of the CPUs used by processes this run did not start


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def scenario_table(sc: Scenario, cells: dict[str, Cell], notes: dict[str, str]) -> str:
    head = (
        f"{'server':<10}{'rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'RSS MiB':>9}{'origin/req':>11}{'errors':>8}"
        f"{'other %':>9}"
    )
    lines = [f"{sc.name}: {sc.title}", head, "-" * len(head)]
    for name, c in cells.items():
        lines.append(
            f"{name:<10}{c.rps:>10.0f}{c.p50_ms:>9.2f}{c.p99_ms:>9.2f}{c.rss_mib:>9.1f}"
            f"{c.origin_per_request:>11.2f}{c.errors:>8}{c.other_cpu_pct:>9.0f}"
            f"  {notes.get(name, '')}".rstrip()
        )
    p = cells.get("proxy")
    if p is not None:
        for peer in ("nginx", "varnish"):
            if peer in cells:
                q = cells[peer]
                lines.append(
                    f"proxy/{peer}: rps x{fmt_ratio(p.rps, q.rps)}, p99 x{fmt_ratio(p.p99_ms, q.p99_ms)}"
                )
    return "\n".join(lines)


def summary_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per scenario; medians per server (proxy / nginx / varnish) and ratios."""
    head = (
        "| scenario | rps proxy / nginx / varnish | proxy/nginx rps | proxy/varnish rps "
        "| p50 ms | p99 ms | proxy/nginx p99 | proxy/varnish p99 | RSS MiB | origin/req | other load % |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in results:
        s = r["servers"]

        def three(key: str, fmt: str, s: dict[str, Any] = s) -> str:
            return " / ".join(format(s[n][key], fmt) if n in s else "-" for n in SERVERS)

        ratios = r["ratios"]
        other = max((v.get("other_cpu_pct", 0.0) for v in s.values()), default=0.0)
        lines.append(
            f"| {r['name']} | {three('rps', '.0f')} | {ratios.get('proxy/nginx rps', '-')} "
            f"| {ratios.get('proxy/varnish rps', '-')} | {three('p50_ms', '.2f')} | {three('p99_ms', '.1f')} "
            f"| {ratios.get('proxy/nginx p99', '-')} | {ratios.get('proxy/varnish p99', '-')} "
            f"| {three('rss_mib', '.0f')} | {three('origin_per_request', '.2f')} | {other:.0f} |"
        )
    return "\n".join(lines)


def ratios(cells: dict[str, Cell]) -> dict[str, str]:
    out: dict[str, str] = {}
    p = cells.get("proxy")
    if p is None:
        return out
    for peer in ("nginx", "varnish"):
        if peer in cells:
            out[f"proxy/{peer} rps"] = fmt_ratio(p.rps, cells[peer].rps)
            out[f"proxy/{peer} p99"] = fmt_ratio(p.p99_ms, cells[peer].p99_ms)
    return out


def estimate_seconds(n_scenarios: int, n_servers: int, rounds: int, duration: float) -> float:
    startup_and_warm = 15.0
    return startup_and_warm + n_scenarios * n_servers * rounds * (duration + RUN_OVERHEAD_S)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/compare.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--short", action="store_true", help="a quick check: 1 round of 2 s per cell")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per cell (default 5)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--workers",
        default="1",
        help="processes of the edge (only if `python -m proxy --help` has --workers; else 1) "
        "and worker_processes of nginx, always the same number; a list such as 1,2 runs the "
        "whole comparison once per number, one after the other (JSON: one file per number)",
    )
    parser.add_argument(
        "--scenarios", default="", help=f"comma-separated subset of: {', '.join(s.name for s in SCENARIOS)}"
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of servers")
    parser.add_argument("--origin", choices=("auto", "nginx", "stub"), default="auto", help="origin server")
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

    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(chosen) - {s.name for s in SCENARIOS}
    if unknown:
        print(f"unknown scenarios: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    scenarios = [s for s in SCENARIOS if not chosen or s.name in chosen]

    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk): nothing can be measured", file=sys.stderr)
        return 1
    have_nginx = shutil.which("nginx") is not None
    have_varnish = shutil.which("varnishd") is not None
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if "nginx" in servers and not have_nginx:
        print("nginx is not installed (apt-get install nginx): skipping the nginx peer", flush=True)
        servers.remove("nginx")
    if "varnish" in servers and not have_varnish:
        print("varnishd is not installed (apt-get install varnish): skipping the Varnish peer", flush=True)
        servers.remove("varnish")
    origin_kind = args.origin if args.origin != "auto" else ("nginx" if have_nginx else "stub")
    if origin_kind == "nginx" and not have_nginx:
        print("--origin nginx needs nginx", file=sys.stderr)
        return 1

    workers = max(1, args.workers)
    proxy_workers = proxy_supports_workers() if "proxy" in servers else False
    if not proxy_workers and workers != 1:
        print("python -m proxy has no --workers option: 1 process for the edge and for nginx", flush=True)
        workers = 1

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and len(cpus) >= 2 and workers == 1
    if workers > 1 and not args.no_pin:
        print(f"{workers} workers: servers and wrk are not pinned to CPUs", flush=True)
    server_cpus = {cpus[0]} if pin else None
    client_cpus = set(cpus[1:]) if pin else None
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0

    code_version = git_version()
    total = estimate_seconds(len(scenarios), len(servers), args.rounds, args.duration)
    print(
        f"{len(scenarios)} scenarios x {len(servers)} servers ({', '.join(servers)}) x {args.rounds} rounds "
        f"x {args.duration:g} s (wrk -t{args.threads} -c{args.connections}); origin: {origin_kind}; "
        f"about {total:.0f} s ({total / 60:.1f} min) in all",
        flush=True,
    )
    if pin:
        print(f"servers pinned to CPU {cpus[0]}, wrk and the origin to CPU(s) {cpus[1:]}", flush=True)

    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="minicdn-compare-"))
    tmp.chmod(0o755)  # the Varnish child runs as its own user
    started = time.monotonic()
    try:
        results = run(
            args, scenarios, servers, origin_kind, workers, proxy_workers, procs, tmp,
            server_cpus, client_cpus, as_root,
        )  # fmt: skip
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
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "rounds": args.rounds,
        "duration_s": args.duration,
        "wrk": f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency",
        "origin": origin_kind,
        "pinned": pin,
        "workers": {
            "proxy": f"{workers} process" + ("" if proxy_workers else " (no --workers option)"),
            "nginx": f"worker_processes {workers}",
            "varnish": "default thread pools",
        },
        "versions": {
            "python": platform.python_version(),
            "nginx": tool_version(["nginx", "-v"]) if have_nginx else None,
            "varnish": tool_version(["varnishd", "-V"]) if have_varnish else None,
            "wrk": tool_version(["wrk", "-v"]),
        },
        "proxy_code": code_version,
        "elapsed_s": round(elapsed),
    }
    print(
        f"\nmedians of {args.rounds} round(s) of {args.duration:g} s; {meta['wrk']}; origin: {origin_kind}; "
        f"proxy code {code_version}"
    )
    print(
        f"proxy: {meta['workers']['proxy']}; nginx: {meta['workers']['nginx']}; "
        f"varnish: {meta['workers']['varnish']}"
        + ("; servers pinned to 1 CPU, wrk to the other" if pin else "")
    )
    print()
    print(summary_table(results))
    if summaries is not None:
        who = f"proxy: {meta['workers']['proxy']}; nginx: {meta['workers']['nginx']}"
        summaries.append(f"{workers} worker process(es) ({who})\n\n{summary_table(results)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "scenarios": results}, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    print(f"done in {elapsed:.0f} s")
    return 0


def run(
    args: argparse.Namespace,
    scenarios: list[Scenario],
    servers: list[str],
    origin_kind: str,
    workers: int,
    proxy_workers: bool,
    procs: Processes,
    tmp: Path,
    server_cpus: set[int] | None,
    client_cpus: set[int] | None,
    as_root: bool,
) -> list[dict[str, Any]]:
    # the origin
    origin_port = free_port()
    if origin_kind == "nginx":
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
    proc = procs.start("origin", cmd, log, client_cpus)
    ready_path = "/__status" if origin_kind == "nginx" else "/__hits"  # never cached
    wait_http("origin", origin_port, proc, log, ready_path)
    origin = Origin(origin_kind, origin_port, tmp)
    print(f"origin ({origin_kind}) on 127.0.0.1:{origin_port}", flush=True)

    # the servers: name -> (port, pid); the edge has one instance per tier
    instances: dict[str, tuple[int, int]] = {}
    notes: dict[str, str] = {}
    origin_url = f"http://127.0.0.1:{origin_port}"
    if "proxy" in servers:
        for tier in sorted({s.tier for s in scenarios}):
            port = free_port()
            cfg = tmp / f"proxy-{tier}.yaml"
            cfg.write_text(json.dumps(proxy_config(l1=tier == "l1"), indent=2))
            cmd = [
                sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{port}", "--origin", origin_url,
                "--cache-dir", str(tmp / f"proxy-{tier}-cache"), "--config", str(cfg),
            ]  # fmt: skip
            if proxy_workers:
                cmd += ["--workers", str(workers)]
            log = tmp / f"proxy-{tier}.log"
            proc = procs.start(f"proxy-{tier}", cmd, log, server_cpus)
            wait_http(f"proxy ({tier})", port, proc, log, ready_path)
            instances[f"proxy-{tier}"] = (port, proc.pid)
        notes["proxy"] = f"{workers} process(es)"
    if "nginx" in servers:
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_peer_conf(tmp, port, origin_port, workers=workers, as_root=as_root))
        cmd = ["nginx", "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf)]
        log = tmp / "nginx.log"
        proc = procs.start("nginx", cmd, log, server_cpus)
        wait_http("nginx", port, proc, log, ready_path)
        instances["nginx"] = (port, proc.pid)
        notes["nginx"] = f"worker_processes {workers}"
    if "varnish" in servers:
        port = free_port()
        vcl = tmp / "bench.vcl"
        vcl.write_text(varnish_vcl(origin_port))
        vcl.chmod(0o644)
        cmd = [
            "varnishd", "-F", "-a", f"127.0.0.1:{port}", "-f", str(vcl), "-s", "malloc,256m",
            "-n", str(tmp / "varnish"), "-T", "none",
        ]  # fmt: skip
        log = tmp / "varnish.log"
        proc = procs.start("varnish", cmd, log, server_cpus)
        wait_http("varnish", port, proc, log, ready_path)
        instances["varnish"] = (port, proc.pid)
        notes["varnish"] = "default threads"
    print("started: " + ", ".join(f"{k} on 127.0.0.1:{p}" for k, (p, _) in instances.items()), flush=True)

    def instance(server: str, sc: Scenario) -> tuple[int, int]:
        return instances[f"proxy-{sc.tier}" if server == "proxy" else server]

    # warm every cache and check each server with one request per key
    for sc in scenarios:
        for server in servers:
            warm_and_check(sc, server, instance(server, sc)[0], origin, origin_kind)
        print(f"warm and checked: {sc.name}", flush=True)

    results: list[dict[str, Any]] = []
    runs_total = len(scenarios) * len(servers) * args.rounds
    run_no = 0
    for sc in scenarios:
        path = scenario_path(sc, origin_kind)
        script: Path | None = None
        if sc.keys > 1:
            script = tmp / f"{sc.name}.lua"
            script.write_text(wrk_script(sc, origin_kind))
        cells = {server: Cell() for server in servers}
        for rnd in range(1, args.rounds + 1):
            for server in servers:
                run_no += 1
                port, _ = instance(server, sc)
                url = f"http://127.0.0.1:{port}{path}"
                before = origin.requests()
                load = OtherLoad([proc.pid for _name, proc, _log in procs.procs])
                cmd = wrk_command(url, args.duration, args.connections, args.threads, script)
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
                    f"[{run_no}/{runs_total}] {sc.name} round {rnd}/{args.rounds} {server:<8}"
                    f"{res.rps:>10.0f} rps  p50 {res.p50_ms:7.2f} ms  p99 {res.p99_ms:7.2f} ms"
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
            c.rss_mib = rss_bytes(instance(server, sc)[1]) / MIB
        print()
        print(scenario_table(sc, cells, notes))
        print(flush=True)
        results.append(
            {
                "name": sc.name,
                "title": sc.title,
                "path": path,
                "servers": {k: asdict(v) for k, v in cells.items()},
                "ratios": ratios(cells),
            }
        )
    return results


if __name__ == "__main__":
    raise SystemExit(main())
