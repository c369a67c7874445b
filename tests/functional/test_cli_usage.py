"""Every command line names itself in --help and usage errors, says its version, and reports a bad
environment variable as such (issue 16)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import COMMANDS, build_parser
from edge.cli import main as minicdn

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MINICDN_")}
    return subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("module", ["proxy", "edge", "origin_stub"])
def test_python_m_help_names_the_module(module: str) -> None:
    done = run("-m", module, "--help")
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: python -m {module} "), done.stdout


@pytest.mark.parametrize("module", ["proxy", "edge"])
def test_python_m_usage_errors_name_the_module(module: str) -> None:
    done = run("-m", module, "--workers", "-1")
    assert done.returncode == 2
    assert f"python -m {module}: error: argument --workers: must be from 0 to 256, not -1" in done.stderr


SUBCOMMANDS = ["serve", "up", "origin", "purge", "inspect", "stats", "reload", "top", *COMMANDS]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_minicdn_subcommand_help_names_the_subcommand(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert minicdn([command, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: minicdn {command} ")


def test_every_subcommand_is_checked() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices or ()) == set(SUBCOMMANDS)  # type: ignore[attr-defined]


def test_minicdn_origin_usage_error_names_minicdn_origin() -> None:
    done = run("-c", "from edge.cli import main; raise SystemExit(main())", "origin", "--listen", "abc")
    assert done.returncode == 2
    assert "minicdn origin: error: listen address must be HOST:PORT" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "from edge.cli import main; raise SystemExit(main())", "--version"],
        ["-m", "proxy", "--version"],
        ["-m", "edge", "--version"],
    ],
    ids=["minicdn", "python-m-proxy", "python-m-edge"],
)
def test_version(argv: list[str]) -> None:
    done = run(*argv)
    assert done.returncode == 0
    assert done.stdout.strip() == f"minicdn {importlib.metadata.version('minicdn')}"


def test_a_bad_environment_variable_is_an_environment_error_not_a_usage_error() -> None:
    done = run("-m", "proxy", env={"MINICDN_LISTEN": "abc"})
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "minicdn: config error: environment: MINICDN_LISTEN (listen): 'abc' is not HOST:PORT"
    )


@pytest.mark.parametrize("value", ["true", "1"])
def test_python_m_edge_with_the_cluster_enabled_by_its_rule_name(value: str) -> None:
    """`python -m edge` turns the cluster on itself, without clashing with MINICDN_CLUSTER__ENABLED."""
    done = run("-m", "edge", env={"MINICDN_CLUSTER__ENABLED": value, "MINICDN_LISTEN": "abc"})
    assert done.returncode == 2
    assert "environment: MINICDN_LISTEN (listen)" in done.stderr and "both set" not in done.stderr
