"""The `cluster:` section of config.yaml, validated (the proxy hands it over unread).

Its keys follow the proxy's environment rule (MINICDN_CLUSTER__REDIS_URL for
cluster.redis_url; the proxy hands the variables' text over with the section),
and the short aliases MINICDN_CLUSTER=1, MINICDN_REDIS_URL, MINICDN_SELF_URL and
MINICDN_PEERS ("edge-1=http://h1:8080,edge-2=http://h2:8080") work too.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from redis.asyncio.connection import parse_url

from proxy.config import (
    Config,
    ConfigError,
    check_base_url,
    env_value,
    printable_problem,
    seconds_problem,
)


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
    outbox_limit: int = 10_000  # purges waiting for Redis per worker; beyond: one purge of everything
    member_prefix: str = "minicdn:node:"


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
_USERINFO = re.compile(r"//[^/@]*@")  # user:password@ of a URL, left out of messages
_PEER_KEYS = frozenset(f.name for f in fields(Peer))


def settings() -> Iterator[tuple[str, Any]]:
    """The keys of the cluster section, dotted, with their types (as proxy.config.settings)."""
    hints = typing.get_type_hints(ClusterConfig)
    for f in fields(ClusterConfig):
        yield f"cluster.{f.name}", hints[f.name]


def cluster_config(cfg: Config) -> ClusterConfig:
    """Validate cfg.cluster (the file's section, the environment over it); errors name the key and
    the file, or the variable."""
    raw: dict[str, Any] = dict(cfg.cluster)
    allowed = set(ClusterConfig.__dataclass_fields__)

    def where(key: str) -> str:
        return cfg.where(f"cluster.{key}")

    for k in raw:
        if k not in allowed:
            raise ConfigError(f"{where(k)}: unknown key (expected one of: {', '.join(sorted(allowed))})")
    hints = dict(settings())
    for k, v in list(raw.items()):
        var = cfg.env.get(f"cluster.{k}")
        if var and isinstance(v, str):  # a variable's text: read it as the file's value would be
            raw[k] = _peers_from_env(v, var) if k == "peers" else env_value(var, v, hints[f"cluster.{k}"])
    d = ClusterConfig()

    def err(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{where(key)}: {problem}")

    def boolean(key: str, default: bool) -> bool:
        v = raw.get(key, default)
        if not isinstance(v, bool):
            raise err(key, "must be true or false")
        return v

    def number(key: str, default: float, *, positive: bool = True) -> float:
        v = raw.get(key, default)
        # Finite: a NaN weight makes every rendezvous score NaN (owners no longer agree across edges).
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or not math.isfinite(v)
            or (positive and v <= 0)
        ):
            raise err(key, "must be a finite number greater than 0")
        return float(v)

    def seconds(key: str, default: float) -> float:
        """The proxy's rule for seconds: heartbeat_seconds 1e15 made every heartbeat's expiry one
        Redis refuses (the edge never registered)."""
        v = number(key, default)
        if problem := seconds_problem(v):
            raise err(key, problem)
        return v

    def count(key: str, default: int) -> int:
        # Whole: 0.5 truncated to 0 would trim the purge stream to nothing (stream_maxlen).
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise err(key, "must be a whole number of 1 or more")
        return v

    def text(key: str, default: str | None) -> str | None:
        v = raw.get(key, default)
        if v is not None and not isinstance(v, str):
            raise err(key, "must be a string")
        return v

    def name(key: str, default: str) -> str:
        """A Redis key name (or its prefix): printable, as it is also written in log lines."""
        v = text(key, default) or default
        if problem := printable_problem(v):
            raise err(key, problem)
        return v

    enabled = boolean("enabled", d.enabled)
    host, port = cfg.listen_host_port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    self_url = text("self_url", None) or f"http://{host}:{port}"
    check_base_url(self_url, where("self_url"))
    redis_url = text("redis_url", d.redis_url)
    if redis_url is not None and (problem := redis_url_problem(redis_url)):
        raise err("redis_url", problem)
    peers = _peers(raw.get("peers", []), where("peers"))
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
        breaker_seconds=seconds("breaker_seconds", d.breaker_seconds),
        peer_timeout=seconds("peer_timeout", d.peer_timeout),
        health_interval=seconds("health_interval", d.health_interval),
        heartbeat_seconds=seconds("heartbeat_seconds", d.heartbeat_seconds),
        purge_stream=name("purge_stream", d.purge_stream),
        stream_maxlen=count("stream_maxlen", d.stream_maxlen),
        outbox_limit=count("outbox_limit", d.outbox_limit),
        member_prefix=name("member_prefix", d.member_prefix),
    )


def redis_url_problem(url: str) -> str | None:
    """Why the Redis client cannot use `url`, or None; the message never repeats a password.

    Parsed as the client will (no connection made): a port past 65535 or a bad query option
    passed here and was a ValueError traceback in every worker at start (restarted forever).
    """
    shown = _USERINFO.sub("//***@", url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return f"{shown!r} must be a redis://, rediss:// or unix:// URL"
    if printable_problem(url):
        return f"{shown!r} has a control or separator character"
    try:
        parse_url(url)
    except ValueError as exc:
        return f"{shown!r} is not a Redis URL: {_USERINFO.sub('//***@', str(exc))}"
    return None


def _peers(raw: object, section: str) -> tuple[Peer, ...]:
    """`section` names the list for messages ("FILE: cluster.peers" or "environment: VAR (...)")."""
    if not isinstance(raw, list):
        raise ConfigError(f"{section}: must be a list of {{name, url, weight}}")
    out: list[Peer] = []
    for i, item in enumerate(raw):
        where = f"{section}[{i}]"
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("name"), str)
            or not isinstance(item.get("url"), str)
        ):
            raise ConfigError(f"{where}: needs a name and a url")
        for key in item:
            if key not in _PEER_KEYS:  # a typo (`wieght: 2`) silently left the default
                raise ConfigError(f"{where}.{key}: unknown key (expected one of: name, url, weight)")
        if not _NAME.fullmatch(item["name"]):
            raise ConfigError(f"{where}.name: {item['name']!r} is not a valid node name")
        if any(p.name == item["name"] for p in out):
            # Members are keyed by name: the later one silently replaced the earlier one's URL.
            raise ConfigError(f"{where}.name: {item['name']!r} is named twice; a name is one edge")
        check_base_url(item["url"], f"{where}.url")
        weight = item.get("weight", 1.0)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise ConfigError(f"{where}.weight: must be a finite number greater than 0")
        out.append(Peer(item["name"], item["url"].rstrip("/"), float(weight)))
    return tuple(out)


def _peers_from_env(value: str, var: str) -> list[dict[str, str]]:
    """ "edge-1=http://h1:8080,edge-2=http://h2:8080" as the file's list of {name, url}."""
    out: list[dict[str, str]] = []
    for part in value.split(","):
        if not part.strip():
            continue
        name, sep, url = part.strip().partition("=")
        if not sep or not _NAME.fullmatch(name):
            raise ConfigError(f"environment: {var}: {part.strip()!r} is not name=url")
        check_base_url(url, f"environment: {var}")
        out.append({"name": name, "url": url})
    return out
