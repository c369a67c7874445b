"""`minicdn warm` in a cluster (issue 16): each URL goes to its key's owner edge, so every object is
stored once, at its owner, the origin is asked once per object, and every other edge then gets it
from the owner. Real edges, a real redis-server, the origin stub; warm as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from edge.hashing import owner
from tests.edge.conftest import StartEdges
from tests.edge.test_cluster import key_for, members
from tests.functional.conftest import Origin, cache_status

ROOT = Path(__file__).resolve().parents[2]


async def test_warm_goes_through_each_keys_owner(
    start_edges: StartEdges, origin: Origin, redis_url: str, tmp_path: Path
) -> None:
    edges = await start_edges(3, redis_url=redis_url)
    # The key holds the origin's port, so which edge owns a path changes from run to run: pick
    # four paths per edge from a larger pool so that the sample always spreads over every edge.
    ring = members(edges[0])
    per_edge: dict[str, list[str]] = {}
    for i in range(400):
        candidate = f"/max-age/600?warm={i}"
        picked = per_edge.setdefault(owner(key_for(edges[0], candidate), ring), [])
        if len(picked) < 4:
            picked.append(candidate)
    assert sorted(per_edge) == ["edge-1", "edge-2", "edge-3"]
    assert all(len(picked) == 4 for picked in per_edge.values())
    paths = sorted(p for picked in per_edge.values() for p in picked)
    owners = {p: owner(key_for(edges[0], p), ring) for p in paths}

    # The configuration of one of the edges (as `minicdn cluster` writes them), static peers only:
    # the others are found through Redis.
    cfg = edges[0].cfg
    conf = tmp_path / "edge-1.json"
    conf.write_text(
        json.dumps(
            {
                "name": cfg.name,
                "listen": cfg.listen,
                "origin": {"url": cfg.origin.url},
                "cluster": {"enabled": True, "redis_url": redis_url},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINICDN_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from edge.cli import main; raise SystemExit(main())",
        "warm", "--paths", "-", "--config", str(conf), "--no-progress",
        cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate("\n".join(paths).encode()), 60)
    assert proc.returncode == 0, (out, err)
    assert b"through 3 edges (each key's owner: edge-1, edge-2, edge-3)" in out
    assert b"  stored              12" in out
    assert await origin.hits() == len(paths)

    for path in paths:
        for edge in edges:
            # Stored at the owner only (only-if-cached: answered from this edge's own tiers).
            resp, _ = await edge.get(path, headers={"Cache-Control": "only-if-cached"})
            assert (resp.status == 200) == (edge.cfg.name == owners[path]), (path, edge.cfg.name)
            # Any edge now gets it from the owner, never from the origin.
            resp, _ = await edge.get(path)
            assert resp.status == 200
            assert resp.headers["Cache-Status"].startswith(f"{owners[path]};hit"), resp.headers[
                "Cache-Status"
            ]
            assert cache_status(resp).startswith(edge.cfg.name)
    assert await origin.hits() == len(paths)
