"""docker-compose.yml describes the cluster topology with commands and variables the CLI accepts (issue:
edges); tests/containers/test_compose.py runs it for real."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.cli import build_parser
from edge.config import ClusterConfig, cluster_config
from proxy.config import load_config
from proxy.routing import READY_PATH

ROOT = Path(__file__).resolve().parents[2]


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
        if name.startswith(("edge", "shield")):
            # Readiness (origin and Redis reachable), not liveness.
            assert READY_PATH in " ".join(spec["healthcheck"]["test"]), name
        command = spec.get("command")
        if name == "redis":
            continue
        assert command and command[0] == "minicdn", name
        parser.parse_args(command[1:])  # exits (fails the test) on anything the CLI rejects


@pytest.mark.parametrize(
    "files", [("docker-compose.yml",), ("docker-compose.yml", "docker-compose.shield.yml")]
)
def test_environments_give_valid_configs(files: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MINICDN_* variable of the compose files is one the config accepts (no file in the image)."""
    services = compose(*files)
    ports = []
    for name, spec in services.items():
        if spec.get("command", [None, None])[:2] != ["minicdn", "serve"]:
            continue
        for key in list(os.environ):
            if key.startswith("MINICDN_"):
                monkeypatch.delenv(key)
        for key, value in spec["environment"].items():
            monkeypatch.setenv(key, re.sub(r"\$\{MINICDN_ADMIN_TOKEN:\?[^}]*\}", "a-token", str(value)))
        cfg = load_config().with_overrides(listen="0.0.0.0:8080", admin_listen="0.0.0.0:9080")
        cluster = cluster_config(cfg)
        assert cfg.name == name and cluster.enabled and cluster.redis_url == "redis://redis:6379/0"
        if name == "shield":
            assert not cluster.owner_routing and cluster.member_prefix != ClusterConfig().member_prefix
            assert not cfg.admin.enabled and not cfg.policy.strip_tag_fields
            continue
        assert cfg.admin.token == "a-token"
        assert {p.name for p in cluster.peers} == {"edge1", "edge2", "edge3"}
        assert cluster.self_url == f"http://{name}:8080"
        ports += services[name]["ports"]
        # Admin APIs are published on the host's loopback only.
        assert next(p for p in services[name]["ports"] if p.endswith(":9080")).startswith("127.0.0.1:")
    assert len(ports) == len(set(ports))


def test_the_admin_token_is_required() -> None:
    """No default token: compose refuses to start without MINICDN_ADMIN_TOKEN (${VAR:?message})."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert re.search(r"MINICDN_ADMIN_TOKEN: \$\{MINICDN_ADMIN_TOKEN:\?.+\}", text)
    assert "change-me" not in text


def test_the_image_health_check_is_readiness() -> None:
    """The Dockerfile's HEALTHCHECK probes the readiness path (origin and Redis reachable)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    [check] = re.findall(r"^HEALTHCHECK (?:.*\\\n)*.*", dockerfile, re.MULTILINE)
    assert READY_PATH in check and "/health" not in check
