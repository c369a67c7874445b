"""The `cluster:` section of config.yaml, validated (the proxy hands it over unread).

Environment overrides for containers: MINICDN_CLUSTER=1, MINICDN_REDIS_URL,
MINICDN_SELF_URL, MINICDN_PEERS ("edge-1=http://h1:8080,edge-2=http://h2:8080").
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yarl import URL

from proxy.config import Config, ConfigError


@dataclass(frozen=True, slots=True)
class Peer:
    """A member of the cluster: its name (Cache-Status member), public URL and weight."""

    name: str
    url: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    enabled: bool = False
    self_url: str = ""  # how peers reach this edge; default http://<listen>
    weight: float = 1.0
    peers: tuple[Peer, ...] = ()  # static members (this edge is added if missing)
    redis_url: str | None = None  # enables heartbeat membership and purge fan-out
    owner_routing: bool = True
    breaker_seconds: float = 5.0  # a failed owner is skipped for this long
    peer_timeout: float = 2.0  # connect / read timeout towards an owner edge (then: the origin)
    health_interval: float = 1.0  # seconds between health checks of each peer
    heartbeat_seconds: float = 2.0  # Redis registration refresh; it expires after 3 of these
    purge_stream: str = "minicdn:purges"
    stream_maxlen: int = 100_000
    member_prefix: str = "minicdn:node:"


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")


def cluster_config(cfg: Config) -> ClusterConfig:
    """Validate cfg.cluster (plus environment overrides); errors name the key and the file."""
    raw: Mapping[str, Any] = dict(cfg.cluster)
    source = cfg.source
    allowed = set(ClusterConfig.__dataclass_fields__)
    for k in raw:
        if k not in allowed:
            raise ConfigError(
                f"{source}: cluster.{k}: unknown key (expected one of: {', '.join(sorted(allowed))})"
            )
    d = ClusterConfig()

    def err(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{source}: cluster.{key}: {problem}")

    def boolean(key: str, default: bool) -> bool:
        v = raw.get(key, default)
        if not isinstance(v, bool):
            raise err(key, "must be true or false")
        return v

    def number(key: str, default: float, *, positive: bool = True) -> float:
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or (positive and v <= 0):
            raise err(key, "must be a number greater than 0")
        return float(v)

    def text(key: str, default: str | None) -> str | None:
        v = raw.get(key, default)
        if v is not None and not isinstance(v, str):
            raise err(key, "must be a string")
        return v

    enabled = boolean("enabled", d.enabled) or os.environ.get("MINICDN_CLUSTER", "") in ("1", "true", "yes")
    host, port = cfg.listen_host_port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    self_url = os.environ.get("MINICDN_SELF_URL") or text("self_url", None) or f"http://{host}:{port}"
    _check_url(self_url, "self_url", source)
    redis_url = os.environ.get("MINICDN_REDIS_URL") or text("redis_url", d.redis_url)
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise err("redis_url", f"{redis_url!r} must be a redis:// URL")
    peers = _peers(raw.get("peers", []), source)
    env_peers = os.environ.get("MINICDN_PEERS")
    if env_peers:
        peers = _peers_from_env(env_peers)
    weight = number("weight", d.weight)
    if cfg.name not in {p.name for p in peers}:
        peers = (*peers, Peer(cfg.name, self_url.rstrip("/"), weight))
    return ClusterConfig(
        enabled=enabled,
        self_url=self_url.rstrip("/"),
        weight=weight,
        peers=peers,
        redis_url=redis_url,
        owner_routing=boolean("owner_routing", d.owner_routing),
        breaker_seconds=number("breaker_seconds", d.breaker_seconds),
        peer_timeout=number("peer_timeout", d.peer_timeout),
        health_interval=number("health_interval", d.health_interval),
        heartbeat_seconds=number("heartbeat_seconds", d.heartbeat_seconds),
        purge_stream=text("purge_stream", d.purge_stream) or d.purge_stream,
        stream_maxlen=int(number("stream_maxlen", d.stream_maxlen)),
        member_prefix=text("member_prefix", d.member_prefix) or d.member_prefix,
    )


def _check_url(value: str, key: str, source: str) -> None:
    try:
        url = URL(value)
    except ValueError:
        raise ConfigError(f"{source}: cluster.{key}: {value!r} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{source}: cluster.{key}: {value!r} must be an http:// URL")


def _peers(raw: object, source: str) -> tuple[Peer, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: cluster.peers: must be a list of {{name, url, weight}}")
    out: list[Peer] = []
    for i, item in enumerate(raw):
        where = f"{source}: cluster.peers[{i}]"
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("name"), str)
            or not isinstance(item.get("url"), str)
        ):
            raise ConfigError(f"{where}: needs a name and a url")
        if not _NAME.fullmatch(item["name"]):
            raise ConfigError(f"{where}.name: {item['name']!r} is not a valid node name")
        _check_url(item["url"], f"peers[{i}].url", source)
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
            raise ConfigError(f"{where}.weight: must be a number greater than 0")
        out.append(Peer(item["name"], item["url"].rstrip("/"), float(weight)))
    return tuple(out)


def _peers_from_env(value: str) -> tuple[Peer, ...]:
    out: list[Peer] = []
    for part in value.split(","):
        name, sep, url = part.strip().partition("=")
        if not sep or not _NAME.fullmatch(name):
            raise ConfigError(f"environment: MINICDN_PEERS: {part!r} is not name=url")
        _check_url(url, "MINICDN_PEERS", "environment")
        out.append(Peer(name, url.rstrip("/")))
    return tuple(out)
