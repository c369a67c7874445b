"""The container files for real (issue 16): the image built from the Dockerfile, `docker-compose.yml`
and then the shield overlay brought up under podman with podman-compose, checked through the
published ports, and brought down again (also when a check fails).

Needs podman and the local base images (`scripts/containers-prepare`, which .ci/run calls); skipped
with a message where they are absent. podman 4.3 ignores `depends_on: condition`, so readiness is
polled here: every edge healthy, knowing all three members and caught up with the purge stream.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "minicdn-test"
IMAGE = "minicdn"  # the compose files' image name (localhost/minicdn)
TOKEN = "test-token-" + os.urandom(6).hex()
EDGES = {"edge1": 8081, "edge2": 8082, "edge3": 8083}
ADMINS = {"edge1": 9081, "edge2": 9082, "edge3": 9083}
ORIGIN = "http://127.0.0.1:8080"
PORTS = [8080, *EDGES.values(), *ADMINS.values()]
BASE = ["docker-compose.yml"]
SHIELD = ["docker-compose.yml", "docker-compose.shield.yml"]


def _podman_compose() -> str | None:
    local = Path(sys.executable).parent / "podman-compose"
    return str(local) if local.exists() else shutil.which("podman-compose")


def _missing() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/containers-prepare installs it and the base images)"
    if _podman_compose() is None:
        return "podman-compose is not installed (pip install -e '.[test]')"
    for image in ("docker.io/library/python:3.11-slim", "docker.io/library/redis:7"):
        if subprocess.run(["podman", "image", "exists", image], capture_output=True).returncode != 0:
            return f"the local base image {image} is missing (run scripts/containers-prepare)"
    return None


pytestmark = [
    pytest.mark.skipif(_missing() is not None, reason=str(_missing())),
    pytest.mark.timeout(900),
]


def run(*cmd: str, check: bool = True, timeout: float = 300, stdin: str | None = None) -> str:
    done = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, input=stdin, env=compose_env()
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def compose_env(token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINICDN_")}
    if token is not None:
        env["MINICDN_ADMIN_TOKEN"] = token
    return env


def compose(files: list[str], *args: str, timeout: float = 300) -> str:
    cmd = [str(_podman_compose()), "-p", PROJECT]
    for f in files:
        cmd += ["-f", f]
    return run(*cmd, *args, timeout=timeout)


def down(files: list[str]) -> None:
    cmd = [str(_podman_compose()), "-p", PROJECT]
    for f in files:
        cmd += ["-f", f]
    run(*cmd, "down", "-v", "-t", "2", check=False)


def http(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: object = None
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def admin(edge: str, path: str, body: object = None) -> dict[str, object]:
    status, _, data = http(
        f"http://127.0.0.1:{ADMINS[edge]}{path}",
        method="POST" if body is not None else "GET",
        headers={"Authorization": f"Bearer {TOKEN}"},
        body=body,
    )
    assert status == 200, (edge, path, status, data)
    result: dict[str, object] = json.loads(data)
    return result


def hits(path: str) -> int:
    """Requests that reached the origin for this path (the stub counts by path, not query)."""
    _, _, data = http(f"{ORIGIN}/__hits?path={urllib.request.quote(path)}")
    return int(json.loads(data)["count"])


def eventually(check: object, what: str, timeout: float = 60) -> None:
    """Poll `check()` until it is true (readiness: podman 4.3 does not wait for health)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (OSError, ValueError, KeyError, AssertionError) as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout:.0f} s (last error: {last!r})")


def cluster_ready() -> bool:
    """Every edge answers, sees three available members and has caught up with the purge stream."""
    for edge in EDGES:
        stats = admin(edge, "/stats")["edge"]
        assert isinstance(stats, dict)
        members = stats["members"]
        if set(members) != set(EDGES) or not all(m["available"] for m in members.values()):
            return False
        if not stats["purge_stream"]["caught_up"]:
            return False
    return all(
        http(f"http://127.0.0.1:{port}/.well-known/minicdn/health")[0] == 200 for port in EDGES.values()
    )


def only_if_cached(edge: str, path: str) -> int:
    status, _, _ = http(f"http://127.0.0.1:{EDGES[edge]}{path}", headers={"Cache-Control": "only-if-cached"})
    return status


SHIELD_PROBE = """
import sys, urllib.error, urllib.request
url = "http://127.0.0.1:8080" + sys.argv[1]
request = urllib.request.Request(url, headers={"Cache-Control": "only-if-cached"})
try:
    print(urllib.request.urlopen(request, timeout=5).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


def shield_only_if_cached(path: str) -> int:
    """The shield's answer from its own tiers; its port is not published, so asked from inside.

    Asked three times, as either of its two workers may take a connection: 504 only when all do.
    """
    answers = {
        int(run("podman", "exec", container("shield"), "python", "-c", SHIELD_PROBE, path).strip())
        for _ in range(3)
    }
    return 504 if answers == {504} else max(answers)


@pytest.fixture(scope="module")
def image() -> Iterator[None]:
    busy = []
    for port in PORTS:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    if busy:
        pytest.fail(f"ports {busy} are in use: the compose files publish fixed ports")
    for files in (SHIELD, BASE):  # whatever an interrupted run left
        down(files)
    started = time.monotonic()
    # The docker image format keeps the HEALTHCHECK (podman's default, OCI, drops it).
    run("podman", "build", "--format", "docker", "-q", "-t", IMAGE, ".", timeout=600)
    print(f"image built in {time.monotonic() - started:.1f} s")
    inspect = json.loads(run("podman", "image", "inspect", IMAGE))[0]
    assert inspect["Config"]["User"] == "minicdn"
    assert "/.well-known/minicdn/ready" in " ".join(inspect["Healthcheck"]["Test"])  # readiness
    yield


def container(service: str) -> str:
    return f"{PROJECT}_{service}_1"


def healthy(service: str) -> bool:
    """The container's health check, run now (without systemd, podman 4.3 runs none by itself)."""
    done = subprocess.run(
        ["podman", "healthcheck", "run", container(service)], capture_output=True, timeout=30
    )
    return done.returncode == 0


def test_compose_refuses_to_start_without_an_admin_token() -> None:
    cmd = [str(_podman_compose()), "-p", PROJECT, "-f", "docker-compose.yml", "config"]
    done = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env=compose_env(token=None), timeout=60
    )
    assert done.returncode != 0
    assert "MINICDN_ADMIN_TOKEN" in done.stdout + done.stderr


def test_three_edges(image: None) -> None:
    try:
        compose(BASE, "up", "-d", "--no-build")
        eventually(cluster_ready, "the three edges ready")

        # Not root, healthy by the image's own check, the admin ports on loopback only.
        assert run("podman", "exec", container("edge1"), "id", "-u").strip() != "0"
        assert healthy("edge1")
        ports = run("podman", "port", container("edge1"))
        assert "9080/tcp -> 127.0.0.1:9081" in ports and "8080/tcp -> 0.0.0.0:8081" in ports, ports

        # One request through each edge; one object asked of all three: one origin fetch.
        path = "/max-age/601"
        for edge, port in EDGES.items():
            status, headers, _ = http(f"http://127.0.0.1:{port}{path}")
            assert status == 200 and headers["Cache-Status"].rsplit(", ", 1)[-1].startswith(edge), headers
        assert hits(path) == 1
        assert all(only_if_cached(edge, path) == 200 for edge in EDGES)

        # A purge at one edge reaches the others (through the Redis stream).
        assert admin("edge2", "/purge", {"url": path})["purged"] == 1
        eventually(lambda: all(only_if_cached(e, path) == 504 for e in EDGES), "the purge on every edge", 15)
        status, headers, _ = http(f"http://127.0.0.1:{EDGES['edge3']}{path}")
        assert status == 200 and hits(path) == 2

        # minicdn warm inside the cluster's network: each URL through its owner, stored once.
        paths = [f"/max-age/{700 + i}" for i in range(6)]
        out = run(
            "podman",
            "exec",
            "-i",
            container("edge1"),
            "minicdn",
            "warm",
            "--paths",
            "-",
            stdin="\n".join(paths),
        )
        assert "through 3 edges" in out and re.search(r"^  stored +6$", out, re.MULTILINE), out
        for p in paths:
            assert sum(only_if_cached(edge, p) == 200 for edge in EDGES) == 1  # at its owner only
            assert hits(p) == 1
    except BaseException:
        print(run("podman", "logs", "--tail", "30", container("edge1"), check=False))
        raise
    finally:
        down(BASE)


def test_shield_overlay(image: None) -> None:
    try:
        compose(SHIELD, "up", "-d", "--no-build")
        eventually(cluster_ready, "the three edges ready")
        eventually(lambda: healthy("shield"), "the shield healthy (its health check)")

        path = "/tags?keys=product-7"
        for port in EDGES.values():
            status, headers, _ = http(f"http://127.0.0.1:{port}{path}")
            assert status == 200
            # The shield is the edges' origin: its member comes first.
            assert headers["Cache-Status"].startswith("shield;"), headers
        assert hits("/tags") == 1

        # A purge by tag at an edge reaches the shield too: the next fetch goes to the origin again.
        assert admin("edge1", "/purge", {"tags": ["product-7"]})["purged"] >= 1
        eventually(lambda: all(only_if_cached(e, path) == 504 for e in EDGES), "the purge on every edge", 15)
        # The shield follows the stream on its own: until it has applied the purge, an edge would
        # be answered with its old copy (the fan-out is asynchronous; nothing orders the two).
        eventually(lambda: shield_only_if_cached(path) == 504, "the purge on the shield", 15)
        status, headers, _ = http(f"http://127.0.0.1:{EDGES['edge2']}{path}")
        assert status == 200 and headers["Cache-Status"].startswith("shield;fwd=uri-miss"), headers
        assert hits("/tags") == 2
    except BaseException:
        print(run("podman", "logs", "--tail", "30", container("shield"), check=False))
        raise
    finally:
        down(SHIELD)
