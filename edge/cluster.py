"""`minicdn cluster`: the stub origin, a Redis server and N edges (and optionally a shield) on this machine.

Each process gets a generated config file in the cluster directory (readable,
and the same shape a deployment would use), edges listen on consecutive
ports, and Ctrl-C (or SIGTERM) stops everything that was started.
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

from proxy.routing import HEALTH_PATH


@dataclass
class Member:
    name: str
    url: str
    admin: str
    proc: subprocess.Popen[bytes] | None = None


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edges", type=int, default=3, help="number of edges (default 3)")
    parser.add_argument("--shield", action="store_true", help="put a shield between the edges and the origin")
    parser.add_argument("--host", default="127.0.0.1", help="address every process listens on")
    parser.add_argument(
        "--port", type=int, default=8082, help="first edge port (default 8082; edges are consecutive)"
    )
    parser.add_argument("--origin-port", type=int, default=8081, help="stub origin port (default 8081)")
    parser.add_argument("--shield-port", type=int, default=8090, help="shield port (default 8090)")
    parser.add_argument("--redis-url", help="use this Redis instead of starting redis-server")
    parser.add_argument("--redis-port", type=int, default=6390, help="port for the started redis-server")
    parser.add_argument("--dir", help="cluster directory (configs, caches, logs); default a temporary one")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
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


def run_cluster(args: argparse.Namespace) -> int:
    if not 1 <= args.edges <= 32:
        print("minicdn cluster: --edges must be between 1 and 32", file=sys.stderr)
        return 2
    host = args.host
    edge_ports = [args.port + i for i in range(args.edges)]
    wanted = [args.origin_port, *edge_ports, *(p + 1000 for p in edge_ports)]
    if args.shield:
        wanted += [args.shield_port, args.shield_port + 1000]
    if not args.redis_url:
        wanted.append(args.redis_port)
    busy = [p for p in wanted if not _port_free(host, p)]
    if busy:
        print(
            f"minicdn cluster: ports already in use: {busy} (choose others with --port etc.)", file=sys.stderr
        )
        return 1
    redis_binary = shutil.which("redis-server")
    if not args.redis_url and redis_binary is None:
        print("minicdn cluster: redis-server not found; install it or pass --redis-url", file=sys.stderr)
        return 1

    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="minicdn-cluster-"))
    workdir.mkdir(parents=True, exist_ok=True)
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
            raise RuntimeError("the stub origin did not start (see origin.log)")

        upstream = origin_url
        members: list[Member] = []
        if args.shield:
            shield = Member(
                "shield", f"http://{host}:{args.shield_port}", f"{host}:{args.shield_port + 1000}"
            )
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
                f"{host}:{args.shield_port}",
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
            Member(f"edge-{i + 1}", f"http://{host}:{p}", f"{host}:{p + 1000}")
            for i, p in enumerate(edge_ports)
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
                raise RuntimeError(f"{member.name} did not start (see {workdir / (member.name + '.log')})")

        print(f"cluster directory: {workdir} (configs, caches, logs)")
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
        print("cluster stopped", flush=True)
