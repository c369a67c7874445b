"""The `minicdn` command: the proxy's commands, with edges joining a cluster, plus `minicdn cluster`.

`serve` / `up` build a plain proxy, or an edge when the config's `cluster:`
section (or MINICDN_CLUSTER=1) enables it; `cluster` runs a local cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence

from edge.cluster import add_cluster_arguments, run_cluster
from edge.config import cluster_config
from edge.node import open_edge
from edge.warm import run as run_warm
from proxy import cli as proxy_cli
from proxy import cliargs, warm
from proxy.box import BoxClient
from proxy.config import Config
from proxy.node import Node

COMMANDS = {
    "cluster": proxy_cli.ExtraCommand(
        help="run the stub origin, Redis and N edges (optionally behind a shield) on this machine",
        add_arguments=add_cluster_arguments,
        run=run_cluster,
    ),
    "warm": proxy_cli.ExtraCommand(
        help="warm the cache from URLs, a sitemap or origin paths (in a cluster: through each key's owner)",
        add_arguments=warm.add_arguments,
        run=run_warm,
    ),
}


@contextlib.asynccontextmanager
async def edge_or_proxy_node(
    cfg: Config, clock: Callable[[], float] = time.time, box: BoxClient | None = None
) -> AsyncIterator[Node]:
    """An edge when the config enables the cluster, else a lone proxy."""
    if cluster_config(cfg).enabled:
        async with open_edge(cfg, clock, box) as node:
            yield node
    else:
        async with Node(cfg, clock, box=box) as node:
            yield node


def build_parser() -> argparse.ArgumentParser:
    return proxy_cli.build_parser(COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    return proxy_cli.main(argv, node_factory=edge_or_proxy_node, extra=COMMANDS)


def edge_main(argv: Sequence[str] | None = None) -> int:
    """`python -m edge [--listen ...]`: `minicdn serve` with the cluster enabled."""
    import os

    args = list(sys.argv[1:] if argv is None else argv)
    code = cliargs.check_usage("python -m edge", proxy_cli.serve_arguments, args)  # --help as itself
    if code is not None:
        return code
    if not os.environ.get("MINICDN_CLUSTER") and not os.environ.get("MINICDN_CLUSTER__ENABLED"):
        os.environ["MINICDN_CLUSTER"] = "1"
    return main(["serve", *args])
