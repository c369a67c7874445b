"""What compiling the pure modules with mypyc would gain, in instructions per request (issue 15, item 4).

Copies this checkout's tracked files to a temporary directory, compiles the modules in `COMPILED`
there with mypyc (the compiled extension sits beside each .py and is imported first), runs the
unit tests against the copy (the compiled modules must behave as the Python ones do), then counts
instructions per request in both with bench/instructions.py: the same cases, the same harness, the
only difference the compiled modules.

    python bench/compiled.py                                    # the browser-head hit and the 304
    python bench/compiled.py --case "miss (no-store), 2000 keys" --case "revalidation (304), 2000 keys"
    python bench/compiled.py --keep /tmp/compiled               # leave the compiled copy there

Needs a C compiler, Python's headers (both present here) and valgrind. Compiling takes about a
minute; each case then takes what bench/instructions.py takes (2-4 minutes).

Left out of `COMPILED`, and why (mypyc 1.x):
- proxy/entry.py and proxy/messages.py build objects with object.__new__ (a copy without
  __init__'s per-field cost); mypyc's native classes refuse that ("not safe").
- proxy/wire.py: HeaderBlock.from_wire calls cls.__new__, on which mypyc stops with an internal
  error.
- proxy/slices.py has an async generator, which mypyc does not compile.
- proxy/codec.py, networks.py and purge.py are off the per-request path.
The rest of the request's way (front, engine, fetcher, origin client, storage) does I/O and is
not a candidate: mypyc compiles whole modules, and these lean on asyncio and callbacks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The pure modules on a request's way that mypyc compiles and whose unit tests then pass.
COMPILED = (
    "proxy/bans.py",
    "proxy/cache_status.py",
    "proxy/compression.py",
    "proxy/delivery.py",
    "proxy/h1.py",
    "proxy/headers.py",
    "proxy/keys.py",
    "proxy/policy.py",
    "proxy/ranges.py",
    "proxy/routing.py",
    "proxy/rules.py",
)
DEFAULT_CASES = ("hit, 2000 keys, browser heads", "304 to If-None-Match, 2000 keys")


def copy_checkout(source: Path, target: Path) -> None:
    """The tracked files of `source` (as they are in the work tree) under `target`."""
    listed = subprocess.run(
        ["git", "-C", str(source), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        src = source / name
        if src.is_file():
            dst = target / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def compile_modules(copy: Path) -> None:
    """mypyc on COMPILED, in place: each module's extension lands beside its .py."""
    done = subprocess.run(
        [sys.executable, "-m", "mypyc", *COMPILED], cwd=copy, capture_output=True, text=True, check=False
    )
    built = sorted(p.name for p in (copy / "proxy").glob("*.so"))
    if done.returncode != 0 or len(built) != len(COMPILED):
        raise SystemExit(f"mypyc failed ({len(built)} of {len(COMPILED)} built):\n{done.stdout[-3000:]}")


def unit_tests_pass(copy: Path) -> None:
    """The unit tests, run against the compiled copy: behaviour must not change."""
    env = {**os.environ, "PYTHONPATH": str(copy)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/unit"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the unit tests fail on the compiled copy:\n{done.stdout[-3000:]}")
    print("the unit tests pass on the compiled copy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/compiled.py", description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", help="a bench/instructions.py case (repeatable)")
    parser.add_argument("--keep", metavar="DIR", help="build the compiled copy in DIR and leave it there")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(args.keep or tmp) / "compiled"
        if copy.exists():
            shutil.rmtree(copy)
        copy.mkdir(parents=True)
        copy_checkout(ROOT, copy)
        compile_modules(copy)
        print(f"compiled with mypyc: {', '.join(Path(m).stem for m in COMPILED)}")
        unit_tests_pass(copy)
        command = [sys.executable, str(HERE / "instructions.py"), "--root", str(ROOT), "--root", str(copy)]
        for case in args.case or DEFAULT_CASES:
            command += ["--case", case]
        return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
