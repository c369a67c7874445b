"""`minicdn cluster`'s command line: ports (admin ports configurable, a shield port of its own),
argument checks, and a temporary directory that is removed on exit (issue 16)."""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from bench.cluster import free_block, stop_cluster, wait_ready
from edge.cli import build_parser
from edge.cluster import _port_free, plan_ports
from tests.functional.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
MINICDN = [sys.executable, "-c", "from edge.cli import main; raise SystemExit(main())"]


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["cluster", *argv])


def test_default_ports_keep_clear_of_each_other_and_of_the_admin_default() -> None:
    ports = plan_ports(parse("--shield"))
    assert ports.edges == [8082, 8083, 8084] and ports.admins == [9082, 9083, 9084]
    assert (ports.shield, ports.shield_admin) == (8085, 9085)
    assert 8090 not in ports.all()  # admin.listen's default: a local edge started beside the cluster
    assert len(set(ports.all())) == len(ports.all())


def test_admin_ports_are_configurable() -> None:
    ports = plan_ports(parse("--edges", "2", "--admin-port", "7000", "--shield", "--shield-port", "7100"))
    assert ports.admins == [7000, 7001] and (ports.shield, ports.shield_admin) == (7100, 7002)


@pytest.mark.parametrize(
    "argv",
    [
        ("--port", "8081"),  # the first edge on the origin's port
        ("--admin-port", "8083"),  # admin ports over edge ports
        ("--shield", "--shield-port", "8083"),
        ("--port", "65534"),  # edges 65534..65536
    ],
)
def test_overlapping_or_impossible_ports_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        plan_ports(parse(*argv))


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["cluster", "--edges", "0"], "argument --edges: must be from 1 to 32, not 0"),
        (["cluster", "--port", "70000"], "argument --port: must be from 1 to 65535"),
        (["cluster", "--admin-port", "x"], "argument --admin-port: 'x' is not a whole number"),
        (["cluster", "--port", "8081"], "would be used twice"),
        (["serve", "--workers", "-1"], "argument --workers: must be from 0 to 256, not -1"),
        # Found by fuzzing: a traceback, "ports already in use", and a cluster half started.
        (["cluster", "--dir", "/proc/none/x"], "cannot use --dir /proc/none/x: No such file or directory"),
        (["cluster", "--host", "999.1.1.1"], "cannot listen on --host 999.1.1.1"),
        (["cluster", "--redis-url", "foo"], "--redis-url 'foo' must be a redis://"),
        (["cluster", "--redis-url", "redis://h:99999"], "--redis-url 'redis://h:99999' is not a Redis URL"),
    ],
)
def test_bad_counts_and_ports_are_usage_errors(argv: list[str], says: str) -> None:
    done = subprocess.run([*MINICDN, *argv], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and says in done.stderr, done.stderr


def run_cluster(extra: list[str], redis_url: str) -> tuple[str, subprocess.Popen[bytes], int]:
    base = free_block(1)
    cmd = [
        *MINICDN, "cluster", "--edges", "1", "--port", str(base), "--origin-port", str(free_port()),
        "--redis-url", redis_url, *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        out = wait_ready(proc)
    except BaseException:
        stop_cluster(proc)
        raise
    return out, proc, base


def test_temporary_directory_removed_on_exit_and_admin_port_used(redis_url: str) -> None:
    admin = free_port()
    out, proc, _ = run_cluster(["--admin-port", str(admin)], redis_url)
    try:
        found = re.search(r"cluster directory: (\S+) \(configs, caches, logs\) \(temporary", out)
        assert found, out
        workdir = Path(found.group(1))
        assert (workdir / "edge-1.json").exists()
        assert f"admin http://127.0.0.1:{admin}" in out
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as resp:
            assert resp.status == 200
    finally:
        stop_cluster(proc)
    assert proc.returncode == 0
    assert not workdir.exists()


def test_a_directory_given_with_dir_is_kept(tmp_path: Path, redis_url: str) -> None:
    workdir = tmp_path / "kept"
    out, proc, _ = run_cluster(["--dir", str(workdir)], redis_url)
    stop_cluster(proc)
    assert "temporary" not in out
    assert (workdir / "edge-1.json").exists() and (workdir / "edge-1.log").exists()


def test_a_port_left_in_time_wait_by_a_stopped_cluster_is_free() -> None:
    """Restarting `minicdn cluster` right after Ctrl-C (README: the cluster, then `--shield`) must not
    say "ports already in use" for ports whose served connections wait in TIME_WAIT: the processes
    bind with SO_REUSEADDR and would start. A port with a listener is still busy."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            served, _ = listener.accept()
            served.close()  # the server closes first: its side of the connection waits in TIME_WAIT
            client.recv(1)
        assert not _port_free("127.0.0.1", port)  # listening
    assert _port_free("127.0.0.1", port)
