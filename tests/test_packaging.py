"""What ships (issue 16): a wheel that carries its types and runs an edge with no config file at all,
from a directory that has none; a LICENSE matching pyproject; a CHANGELOG for this version; a
pre-commit configuration running the same checks as tests/test_static_checks.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from proxy import __version__
from tests.functional.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("minicdn-*.whl")
    return found


def test_wheel_carries_the_packages_and_their_types(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"proxy/py.typed", "edge/py.typed", "origin_stub/py.typed", "proxy/warm.py"} <= names
    assert "proxy/dashboard/index.html" in names  # the admin API's /dashboard
    assert not any(n.endswith("config.yaml") for n in names)  # the defaults are in the code
    assert wheel.name.startswith(f"minicdn-{__version__}-")


@pytest.fixture
def installed(wheel: Path, tmp_path: Path) -> Path:
    """The wheel installed into a directory of its own (not editable, no checkout beside it)."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def wait_http(url: str, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer")


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_installed_wheel_runs_an_edge_without_a_config_file(
    installed: Path, tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    elsewhere = tmp_path / "elsewhere"  # no config.yaml here, nor beside the installed packages
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINICDN_", "PYTHON"))}
    env["PYTHONPATH"] = str(installed)  # before the checkout's editable install
    where = subprocess.run(
        [sys.executable, "-c", "import proxy, edge; print(proxy.__file__, edge.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert all(path.startswith(str(installed)) for path in where.stdout.split())

    origin_port, edge_port, admin_port = free_port(), free_port(), free_port()
    log = (tmp_path / "edge.log").open("wb")
    started.append(
        subprocess.Popen(
            [sys.executable, "-m", "origin_stub", "--listen", f"127.0.0.1:{origin_port}"],
            cwd=elsewhere, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    )  # fmt: skip
    # The installed console script, configured from the environment only.
    env |= {
        "MINICDN_LISTEN": f"127.0.0.1:{edge_port}",
        "MINICDN_ORIGIN": f"http://127.0.0.1:{origin_port}",
        "MINICDN_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "MINICDN_CACHE__DIR": str(tmp_path / "cache"),
        "MINICDN_WORKERS": "1",
    }
    edge = subprocess.Popen(
        [str(installed / "bin" / "minicdn"), "serve"], cwd=elsewhere, env=env, stdout=log, stderr=log
    )
    started.append(edge)
    deadline = time.monotonic() + 30
    try:
        wait_http(f"http://127.0.0.1:{origin_port}/__hits", started[0], deadline)
        wait_http(f"http://127.0.0.1:{edge_port}/.well-known/minicdn/health", edge, deadline)
    except AssertionError:
        raise AssertionError((tmp_path / "edge.log").read_text()) from None
    statuses = []
    for _ in range(2):
        with urllib.request.urlopen(f"http://127.0.0.1:{edge_port}/max-age/60", timeout=5) as resp:
            statuses.append(resp.headers["Cache-Status"])
    assert statuses[0].endswith(";fwd=uri-miss;fwd-status=200;stored") and ";hit" in statuses[1], statuses


def test_license_matches_pyproject() -> None:
    assert PYPROJECT["project"]["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text


def test_changelog_has_this_version() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in text and f"## [{__version__}]" in text


def test_pre_commit_runs_the_static_checks() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    entries = [hook["entry"] for repo in config["repos"] for hook in repo["hooks"]]
    assert any(e.startswith("ruff check") for e in entries)
    assert any(e.startswith("ruff format --check") for e in entries)
    assert "mypy --strict proxy edge" in entries
