"""The cluster section: defaults documented in config.yaml, errors that name key and file, env overrides."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import pytest

from edge.config import ClusterConfig, Peer, cluster_config, settings
from proxy.config import Config, ConfigError, env_name, load_config

CONFIG_YAML = Path(__file__).resolve().parents[2] / "config.yaml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MINICDN_"):
            monkeypatch.delenv(name)


def test_config_yaml_documents_the_defaults() -> None:
    got = cluster_config(load_config(CONFIG_YAML))
    expected = replace(
        ClusterConfig(), self_url="http://127.0.0.1:8080", peers=(Peer("edge-1", "http://127.0.0.1:8080"),)
    )
    assert got == expected
    assert cluster_config(Config()) == expected  # the built-in defaults (no file at all)
    text = CONFIG_YAML.read_text()
    for key, _ in settings():
        name = key.split(".")[1]
        assert re.search(rf"^  #? ?{name}:", text, re.MULTILINE), f"{key} is not in config.yaml"


# A value other than the default for each key of the cluster section, as a variable's text.
CLUSTER_EXAMPLES = {
    "enabled": ("true", True),
    "self_url": ("http://me.example:8080", "http://me.example:8080"),
    "weight": ("2.5", 2.5),
    "peers": ("a=http://a:1", (Peer("a", "http://a:1"), Peer("edge-1", "http://127.0.0.1:8080"))),
    "redis_url": ("redis://r:6379/1", "redis://r:6379/1"),
    "owner_routing": ("0", False),
    "breaker_seconds": ("7", 7.0),
    "peer_timeout": ("0.5", 0.5),
    "health_interval": ("3", 3.0),
    "heartbeat_seconds": ("4", 4.0),
    "purge_stream": ("s", "s"),
    "stream_maxlen": ("99", 99),
    "outbox_limit": ("5", 5),
    "member_prefix": ("p:", "p:"),
}


@pytest.mark.parametrize("key", [key for key, _ in settings()])
def test_every_cluster_key_follows_the_environment_rule(key: str) -> None:
    name = key.split(".")[1]
    text, expected = CLUSTER_EXAMPLES[name]
    got = cluster_config(load_config(environ={env_name(key): text}))
    assert getattr(got, name) == expected != getattr(ClusterConfig(), name)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MINICDN_CLUSTER__PEER_TIMEOUT", "soon"),
        ("MINICDN_CLUSTER__BREAKER_SECONDS", "0"),
        ("MINICDN_CLUSTER__OWNER_ROUTING", "perhaps"),
        ("MINICDN_CLUSTER__REDIS_URL", "http://x"),
        ("MINICDN_CLUSTER__SELF_URL", "ftp://x"),
        ("MINICDN_CLUSTER__PEERS", "a=ftp://x"),
        ("MINICDN_CLUSTER__BOGUS", "1"),
        ("MINICDN_REDIS_URL", "http://x"),
        ("MINICDN_CLUSTER", "perhaps"),
    ],
)
def test_cluster_environment_errors_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^environment: {var}"):
        cluster_config(load_config(environ={var: value}))


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
        # Accepted before: NaN / inf numbers (int(inf) a traceback), counts truncated to 0, a peer
        # key's typo ignored, a name given twice (the later URL silently won).
        ("cluster: {weight: .nan}", "cluster.weight"),
        ("cluster: {peer_timeout: .inf}", "cluster.peer_timeout"),
        # Three of these are each heartbeat's expiry: past 2**31 seconds Redis refused every one.
        ("cluster: {heartbeat_seconds: 1.0e+15}", "cluster.heartbeat_seconds: must be at most"),
        ("cluster: {stream_maxlen: .inf}", "cluster.stream_maxlen"),
        ("cluster: {stream_maxlen: 0.5}", "cluster.stream_maxlen"),
        ("cluster: {outbox_limit: 0.5}", "cluster.outbox_limit"),
        ("cluster: {peers: [{name: a, url: 'http://a:1', weight: .nan}]}", "cluster.peers[0].weight"),
        ("cluster: {peers: [{name: a, url: 'http://a:1', wieght: 2}]}", "cluster.peers[0].wieght"),
        # A peer's URL has each request's target appended, as the origin's: no query, no userinfo.
        ("cluster: {peers: [{name: a, url: 'http://a:1/?x=1'}]}", "cluster.peers[0].url"),
        ("cluster: {self_url: 'http://u:p@me:1'}", "cluster.self_url"),
        # Parsed as the Redis client will: each was a ValueError traceback in every worker at start.
        ("cluster: {redis_url: 'redis://127.0.0.1:99999/0'}", "cluster.redis_url"),
        ("cluster: {redis_url: 'redis://r:6379/0?socket_timeout=soon'}", "cluster.redis_url"),
        # Redis key names: "minicdn:purges\n" is another stream than the other edges', invisibly.
        ('cluster: {purge_stream: "minicdn:purges\\n"}', "cluster.purge_stream"),
        ('cluster: {member_prefix: "minicdn:\\tnode:"}', "cluster.member_prefix"),
        (
            "cluster: {peers: [{name: a, url: 'http://a:1'}, {name: a, url: 'http://b:1'}]}",
            "cluster.peers[1].name",
        ),
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


def test_a_redis_url_in_a_message_has_no_password() -> None:
    """The message names the URL (it was a worker's traceback, password and all): not its password."""
    environ = {"MINICDN_CLUSTER": "1", "MINICDN_REDIS_URL": "redis://:s3cret@r:99999/0"}
    with pytest.raises(ConfigError) as err:
        cluster_config(load_config(environ=environ))
    message = str(err.value)
    assert message.startswith("environment: MINICDN_REDIS_URL (cluster.redis_url): 'redis://***@r:99999/0'")
    assert "s3cret" not in message
