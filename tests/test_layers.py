"""The import rules of ARCHITECTURE.md, checked on the source (so a new import cannot break them quietly).

1. The pure modules do no I/O: they import no event loop, socket, file, clock,
   thread, database or server module, and of the project only other pure
   modules (plus `proxy.config`, whose dataclasses they read).
2. `proxy` never imports `edge`; `edge` uses only what `proxy` exports to it.
3. The front decides nothing about caching: it imports no policy, storage or
   origin client module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PURE = {
    "proxy.bans",
    "proxy.cache_status",
    "proxy.codec",
    "proxy.compression",
    "proxy.delivery",
    "proxy.entry",
    "proxy.h1",
    "proxy.headers",
    "proxy.keys",
    "proxy.links",
    "proxy.messages",
    "proxy.networks",
    "proxy.policy",
    "proxy.purge",
    "proxy.ranges",
    "proxy.routing",
    "proxy.rules",
    "proxy.slices",
    "proxy.wire",
}
# Besides the pure modules, what a pure module may import from the project: the config's types.
PURE_MAY_ALSO_IMPORT = {"proxy.config", "proxy.storage.base"}
# Standard-library and third-party modules that do I/O, read a clock or run a loop.
IO_MODULES = {
    "aiohttp",
    "asyncio",
    "diskcache",
    "io",
    "logging",
    "os",
    "pathlib",
    "redis",
    "select",
    "shutil",
    "socket",
    "sqlite3",
    "subprocess",
    "sys",
    "threading",
    "time",
    "uvloop",
}
# What proxy exports to the edge layer.
PROXY_EXPORTS_TO_EDGE = {
    "proxy.box",
    "proxy.cli",
    "proxy.cliargs",  # argument types of the command lines (edge adds `cluster` and `python -m edge`)
    "proxy.config",
    "proxy.node",
    "proxy.purge",
    "proxy.purger",
    "proxy.routing",
    "proxy.warm",  # `minicdn warm` and its Router hook (edge sends each URL to the key's owner)
}
FRONT_MUST_NOT_IMPORT = {"proxy.policy", "proxy.keys", "proxy.storage", "proxy.fetcher", "proxy.origin.lean"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports: `from a.b import c` counts a.b and a.b.c (bare packages do not)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found - {"proxy", "edge"}


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def project_modules() -> set[str]:
    return {module_name(p) for pkg in ("proxy", "edge") for p in sources(pkg)}


def test_the_pure_modules_exist() -> None:
    assert project_modules() >= PURE  # a rename must update the list, not silently empty it


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_import_no_io(module: str) -> None:
    path = ROOT / (module.replace(".", "/") + ".py")
    known = project_modules()
    for name in imports_of(path):
        top = name.split(".")[0]
        assert top not in IO_MODULES, f"{module} imports {name}: pure modules do no I/O"
        if name in known:
            assert name in PURE or name in PURE_MAY_ALSO_IMPORT, f"{module} imports {name}, which is not pure"


def test_proxy_never_imports_edge() -> None:
    for path in sources("proxy"):
        bad = {name for name in imports_of(path) if name == "edge" or name.startswith("edge.")}
        assert not bad, f"{module_name(path)} imports {bad}"


def test_edge_uses_only_what_proxy_exports() -> None:
    known = project_modules()
    for path in sources("edge"):
        used = {name for name in imports_of(path) if name.startswith("proxy.") and name in known}
        assert used <= PROXY_EXPORTS_TO_EDGE, f"{module_name(path)} imports {used - PROXY_EXPORTS_TO_EDGE}"


def test_the_front_decides_nothing_about_caching() -> None:
    used = imports_of(ROOT / "proxy" / "front.py")
    bad = {n for n in used if any(n == m or n.startswith(m + ".") for m in FRONT_MUST_NOT_IMPORT)}
    assert not bad, f"proxy.front imports {bad}"
