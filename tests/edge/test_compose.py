"""docker-compose.yml describes the cluster topology with commands the CLI accepts (issue: edges)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.cli import build_parser
from edge.config import cluster_config
from proxy.config import load_config

ROOT = Path(__file__).resolve().parents[2]
KNOWN_ENV = {
    "MINICDN_NAME",
    "MINICDN_LISTEN",
    "MINICDN_ORIGIN",
    "MINICDN_CACHE_DIR",
    "MINICDN_ADMIN_TOKEN",
    "MINICDN_ADMIN_LISTEN",
    "MINICDN_CLUSTER",
    "MINICDN_REDIS_URL",
    "MINICDN_SELF_URL",
    "MINICDN_PEERS",
}


def compose(*names: str) -> dict[str, Any]:
    """The files merged the way `docker compose -f a -f b` merges services (mappings deep-merged)."""
    merged: dict[str, Any] = {}
    for name in names:
        doc = yaml.safe_load((ROOT / name).read_text())
        for service, spec in doc.get("services", {}).items():
            base = merged.setdefault(service, {})
            for field, value in spec.items():
                if isinstance(value, dict) and isinstance(base.get(field), dict):
                    base[field] = {**base[field], **value}
                else:
                    base[field] = value
    return merged


@pytest.mark.parametrize(
    "files", [("docker-compose.yml",), ("docker-compose.yml", "docker-compose.shield.yml")]
)
def test_every_service_has_an_accepted_command_and_a_healthcheck(files: tuple[str, ...]) -> None:
    services = compose(*files)
    assert {"origin", "redis", "edge1", "edge2", "edge3"} <= set(services)
    if len(files) > 1:
        assert "shield" in services
        assert all(
            services[f"edge{i}"]["environment"]["MINICDN_ORIGIN"] == "http://shield:8080" for i in (1, 2, 3)
        )
    parser = build_parser()
    for name, spec in services.items():
        assert "healthcheck" in spec, name
        command = spec.get("command")
        if name == "redis":
            continue
        assert command and command[0] == "minicdn", name
        parser.parse_args(command[1:])  # exits (fails the test) on anything the CLI rejects


def test_edge_environments_give_valid_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose("docker-compose.yml")
    ports = []
    for name in ("edge1", "edge2", "edge3"):
        env = services[name]["environment"]
        assert set(env) <= KNOWN_ENV, set(env) - KNOWN_ENV
        for key in list(os.environ):
            if key.startswith("MINICDN_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value).replace("${MINICDN_ADMIN_TOKEN:-change-me}", "change-me"))
        cfg = load_config().with_overrides(listen="0.0.0.0:8080", admin_listen="0.0.0.0:9080")
        cluster = cluster_config(cfg)
        assert cfg.name == name and cluster.enabled and cluster.redis_url == "redis://redis:6379/0"
        assert {p.name for p in cluster.peers} == {"edge1", "edge2", "edge3"}
        assert cluster.self_url == f"http://{name}:8080"
        ports += services[name]["ports"]
    assert len(ports) == len(set(ports))
