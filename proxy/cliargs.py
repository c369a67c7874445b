"""Argument types and checks shared by the command lines (minicdn, python -m proxy / edge).

Counts and ports are checked when parsed, so `--workers -1` is a usage error
(exit 2) naming the option, not a surprise later.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from proxy import __version__
from proxy.config import seconds_problem

VERSION = f"minicdn {__version__}"


def count(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from low to high."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {value}")
        return value

    return parse


port = count(1, 65535)  # an argparse type: a TCP port to listen on (0, "any", is no use to print)


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds greater than 0, by the config file's rule
    (config.seconds_problem): `--timeout inf` or `1e10` overflowed socket.settimeout."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if problem := seconds_problem(value):
        raise argparse.ArgumentTypeError(problem)
    return value


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=VERSION)


def check_usage(
    prog: str, add_arguments: Callable[[argparse.ArgumentParser], None], argv: Sequence[str]
) -> int | None:
    """Parse argv as `prog` would: its --help, --version and usage errors under its own name.

    Returns the exit code when argparse finished the run (help, version: 0; a usage error: 2),
    None when the arguments are fine.
    """
    parser = argparse.ArgumentParser(prog=prog, description="Run one edge node in front of the origin.")
    add_arguments(parser)
    add_version(parser)
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return None
