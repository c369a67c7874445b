"""`minicdn cluster`: the stub origin, a Redis server and N edges (and optionally a shield) on this machine.

Each process gets a generated config file in the cluster directory (readable,
and the same shape a deployment would use), edges listen on consecutive
ports (their admin APIs too), and Ctrl-C (or SIGTERM) stops everything that was
started. A temporary cluster directory is removed on exit; one given with
--dir is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import redis_url_problem
from proxy.cliargs import count, port
from proxy.routing import HEALTH_PATH


@dataclass
class Member:
    name: str
    url: str
    admin: str
    proc: subprocess.Popen[bytes] | None = None


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edges", type=count(1, 32), default=3, help="number of edges, 1-32 (default 3)")
    parser.add_argument("--shield", action="store_true", help="put a shield between the edges and the origin")
    parser.add_argument("--host", default="127.0.0.1", help="address every process listens on")
    parser.add_argument(
        "--port", type=port, default=8082, help="first edge port (default 8082; edges are consecutive)"
    )
    parser.add_argument(
        "--admin-port",
        type=port,
        help="first admin API port (default --port + 1000; consecutive, the shield's after the edges')",
    )
    parser.add_argument("--origin-port", type=port, default=8081, help="stub origin port (default 8081)")
    parser.add_argument(
        "--shield-port", type=port, help="shield port (default: the port after the last edge's)"
    )
    parser.add_argument("--redis-url", help="use this Redis instead of starting redis-server")
    parser.add_argument("--redis-port", type=port, default=6390, help="port for the started redis-server")
    parser.add_argument(
        "--dir", help="cluster directory (configs, caches, logs), kept; default a temporary one, removed"
    )


@dataclass(frozen=True)
class Ports:
    """Every port a cluster listens on."""

    origin: int
    edges: list[int]
    admins: list[int]
    shield: int | None
    shield_admin: int | None
    redis: int | None

    def all(self) -> list[int]:
        extra = [p for p in (self.shield, self.shield_admin, self.redis) if p is not None]
        return [self.origin, *self.edges, *self.admins, *extra]


def plan_ports(args: argparse.Namespace) -> Ports:
    """The ports of `args`; ValueError when they overlap or run past 65535."""
    n = args.edges
    admin = args.admin_port if args.admin_port is not None else args.port + 1000
    shield = (args.shield_port if args.shield_port is not None else args.port + n) if args.shield else None
    ports = Ports(
        origin=args.origin_port,
        edges=[args.port + i for i in range(n)],
        admins=[admin + i for i in range(n)],
        shield=shield,
        shield_admin=admin + n if args.shield else None,
        redis=None if args.redis_url else args.redis_port,
    )
    every = ports.all()
    if max(every) > 65535:
        raise ValueError(f"port {max(every)} is past 65535 (choose lower ones with --port / --admin-port)")
    clashes = sorted({p for p in every if every.count(p) > 1})
    if clashes:
        raise ValueError(f"port(s) {clashes} would be used twice (see --port, --admin-port, --shield-port)")
    return ports


def _port_free(host: str, port: int) -> bool:
    """Whether a listener could bind the port: as the edges, the stub origin and redis-server bind
    (SO_REUSEADDR), so a port whose last connections wait in TIME_WAIT (a cluster stopped a minute
    ago) is free, and one with a listener is not."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _wait_http(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=0.5) as resp:
            if resp.status == 200:
                return True
        time.sleep(0.05)
    return False


def _node_config(
    name: str,
    listen: str,
    admin: str,
    origin: str,
    cache: Path,
    cluster: dict[str, Any] | None,
    strip_tags: bool = True,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "listen": listen,
        # One process per node: N edges already share this machine's cores, and one
        # process per edge keeps each key's fetches in one coalescing map.
        "workers": 1,
        "origin": {"url": origin},
        "cache": {"dir": str(cache)},
        "admin": {"listen": admin},
        "policy": {"strip_tag_fields": strip_tags},
        "log": {"access_log": False},
    }
    if cluster is not None:
        cfg["cluster"] = cluster
    return cfg


def _bad_arguments(args: argparse.Namespace) -> str | None:
    """Why the processes could not start as asked, found before any of them does."""
    if args.redis_url and (problem := redis_url_problem(args.redis_url)):
        return f"--redis-url {problem}"  # the rule of cluster.redis_url (edge/config.py)
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as s:
        try:
            s.bind((args.host, 0))
        except (OSError, UnicodeError) as exc:
            return f"cannot listen on --host {args.host}: {exc}"
    return None


def run_cluster(args: argparse.Namespace) -> int:
    host = args.host
    try:
        ports = plan_ports(args)
    except ValueError as exc:
        print(f"minicdn cluster: {exc}", file=sys.stderr)
        return 2
    why = _bad_arguments(args)
    if why is not None:
        print(f"minicdn cluster: {why}", file=sys.stderr)
        return 2
    if args.dir:
        try:
            Path(args.dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"minicdn cluster: cannot use --dir {args.dir}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    busy = [p for p in ports.all() if not _port_free(host, p)]
    if busy:
        print(
            f"minicdn cluster: ports already in use: {busy} (choose others with --port etc.)", file=sys.stderr
        )
        return 1
    redis_binary = shutil.which("redis-server")
    if not args.redis_url and redis_binary is None:
        print("minicdn cluster: redis-server not found; install it or pass --redis-url", file=sys.stderr)
        return 1

    temporary = not args.dir
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="minicdn-cluster-"))
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = (workdir / log_name).open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        origin_url = f"http://{host}:{args.origin_port}"
        start([sys.executable, "-m", "origin_stub", "--listen", f"{host}:{args.origin_port}"], "origin.log")
        redis_url = args.redis_url
        if not redis_url:
            assert redis_binary is not None
            start(
                [
                    redis_binary,
                    "--port",
                    str(args.redis_port),
                    "--bind",
                    host,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                "redis.log",
            )
            redis_url = f"redis://{host}:{args.redis_port}/0"
        deadline = time.monotonic() + 20
        if not _wait_http(origin_url + "/__hits", deadline):
            raise RuntimeError(f"the stub origin did not start:\n{_tail(workdir / 'origin.log')}")

        upstream = origin_url
        members: list[Member] = []
        if ports.shield is not None:
            shield = Member("shield", f"http://{host}:{ports.shield}", f"{host}:{ports.shield_admin}")
            conf = workdir / "shield.json"
            # The shield hands tags on to the edges (they purge by them), and follows the purge
            # stream so a purge reaches it too; it owns no keys (its own membership prefix, so the
            # edges never route to it as a peer).
            shield_cluster = {
                "enabled": True,
                "redis_url": redis_url,
                "owner_routing": False,
                "member_prefix": "minicdn:shield:",
                "peers": [],
            }
            shield_conf = _node_config(
                "shield",
                f"{host}:{ports.shield}",
                shield.admin,
                origin_url,
                workdir / "cache-shield",
                shield_cluster,
                strip_tags=False,
            )
            conf.write_text(json.dumps(shield_conf, indent=2))
            shield.proc = start([sys.executable, "-m", "edge", "--config", str(conf)], "shield.log")
            members.append(shield)
            upstream = shield.url
        edges = [
            Member(f"edge-{i + 1}", f"http://{host}:{p}", f"{host}:{a}")
            for i, (p, a) in enumerate(zip(ports.edges, ports.admins, strict=True))
        ]
        peers = [{"name": e.name, "url": e.url} for e in edges]
        for edge in edges:
            conf = workdir / f"{edge.name}.json"
            listen = edge.url.removeprefix("http://")
            cluster = {"enabled": True, "redis_url": redis_url, "peers": peers}
            conf.write_text(
                json.dumps(
                    _node_config(
                        edge.name, listen, edge.admin, upstream, workdir / f"cache-{edge.name}", cluster
                    ),
                    indent=2,
                )
            )
            edge.proc = start([sys.executable, "-m", "edge", "--config", str(conf)], f"{edge.name}.log")
            members.append(edge)
        for member in members:
            if not _wait_http(member.url + HEALTH_PATH, deadline):
                raise RuntimeError(f"{member.name} did not start:\n{_tail(workdir / (member.name + '.log'))}")

        removed = " (temporary: removed on exit; --dir keeps one)" if temporary else ""
        print(f"cluster directory: {workdir} (configs, caches, logs){removed}")
        print(f"origin stub   {origin_url}")
        print(f"redis         {redis_url}")
        for member in members:
            print(f"{member.name:<13} {member.url}   admin http://{member.admin}")
        print("Ctrl-C stops them all.", flush=True)
        # An edge that dies is reported, not fatal: the others keep serving (that is the point).
        reported: set[int] = set()
        names = {m.proc.pid: m.name for m in members if m.proc is not None}
        while not stopping:
            for proc in procs:
                if proc.poll() is not None and proc.pid not in reported:
                    reported.add(proc.pid)
                    what = names.get(proc.pid, f"process {proc.pid}")
                    print(
                        f"minicdn cluster: {what} exited ({proc.returncode}); the rest keep running",
                        flush=True,
                    )
            time.sleep(0.2)
        return 0
    except RuntimeError as exc:
        print(f"minicdn cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
        print("cluster stopped", flush=True)


def _tail(log: Path, lines: int = 15) -> str:
    """The end of a process's log (it is about to be removed with a temporary directory)."""
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"  (no log: {exc})"
    return "\n".join(f"  {line}" for line in text) or "  (empty log)"
