"""The cluster section: defaults documented in config.yaml, errors that name key and file, env overrides."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edge.config import ClusterConfig, Peer, cluster_config
from proxy.config import ConfigError, load_config


def test_config_yaml_documents_the_defaults() -> None:
    cfg = load_config()
    got = cluster_config(cfg)
    expected = replace(
        ClusterConfig(), self_url="http://127.0.0.1:8080", peers=(Peer("edge-1", "http://127.0.0.1:8080"),)
    )
    assert got == expected


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("cluster: {bogus: 1}", "cluster.bogus"),
        ("cluster: {enabled: 3}", "cluster.enabled"),
        ("cluster: {redis_url: http://x}", "cluster.redis_url"),
        ("cluster: {peers: [{name: a}]}", "cluster.peers[0]"),
        ("cluster: {peers: [{name: '1a', url: 'http://x'}]}", "cluster.peers[0].name"),
        ("cluster: {breaker_seconds: 0}", "cluster.breaker_seconds"),
        ("cluster: {self_url: 'ftp://x'}", "cluster.self_url"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, section: str, key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(section + "\n")
    with pytest.raises(ConfigError) as err:
        cluster_config(load_config(path))
    assert key in str(err.value) and str(path) in str(err.value)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINICDN_CLUSTER", "1")
    monkeypatch.setenv("MINICDN_REDIS_URL", "redis://r:6379/0")
    monkeypatch.setenv("MINICDN_SELF_URL", "http://me:8080")
    monkeypatch.setenv("MINICDN_PEERS", "edge-1=http://me:8080,edge-2=http://other:8080")
    got = cluster_config(load_config())
    assert got.enabled and got.redis_url == "redis://r:6379/0" and got.self_url == "http://me:8080"
    assert [p.name for p in got.peers] == ["edge-1", "edge-2"]
    monkeypatch.setenv("MINICDN_PEERS", "nonsense")
    with pytest.raises(ConfigError, match="MINICDN_PEERS"):
        cluster_config(load_config())
