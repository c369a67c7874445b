"""Typed configuration: frozen dataclasses, loaded from YAML and the environment, validated once.

The dataclasses' defaults are the built-in configuration: an edge needs no
file (`config.yaml` documents every key with exactly these values, and a test
keeps the two equal). `--config` or MINICDN_CONFIG picks a file; then every
key can be set from the environment by one rule, derived from the dataclasses:
MINICDN_ + the key's path in capitals with "__" between levels
(`cache.l1.budget` is MINICDN_CACHE__L1__BUDGET), lists comma separated,
mappings as `k=v,k=v`; a few short aliases are kept (ENV_ALIASES). The
environment is validated like the file, and an error names the variable
(or the key and the file). The configuration object is passed explicitly to
whoever needs it; there is no module-level global.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import ipaddress
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import yaml

from proxy.networks import ip_of
from proxy.storage.base import EVICTION_POLICIES, EvictionPolicy

# Where settings come from when no file is given (no file: the dataclasses' defaults).
DEFAULTS_SOURCE = "built-in defaults"

ENV_PREFIX = "MINICDN_"
ENV_SEPARATOR = "__"  # between the levels of a key's path: MINICDN_CACHE__L1__BUDGET
ENV_CONFIG_FILE = "MINICDN_CONFIG"  # the config file to read, like --config
# Short names kept from before the rule (the rule's own name works too, and agreeing
# values of both are fine). MINICDN_NAME, MINICDN_LISTEN and MINICDN_WORKERS follow the rule.
ENV_ALIASES: Mapping[str, str] = {
    "MINICDN_ORIGIN": "origin.url",
    "MINICDN_CACHE_DIR": "cache.dir",
    "MINICDN_ADMIN_TOKEN": "admin.token",
    "MINICDN_ADMIN_LISTEN": "admin.listen",
    "MINICDN_CLUSTER": "cluster.enabled",
    "MINICDN_SELF_URL": "cluster.self_url",
    "MINICDN_PEERS": "cluster.peers",
    "MINICDN_REDIS_URL": "cluster.redis_url",
}
# Sections validated elsewhere: `cluster` by the edge layer (edge/config.py, which the proxy never
# imports), `origin_stub` by the stub origin. Their variables are handed over as text.
OPAQUE_SECTIONS = ("cluster", "origin_stub")

# Request headers that would change a response without being part of the key
# (classic cache-poisoning vectors); never forwarded to the origin.
DEFAULT_UNKEYED_REQUEST_HEADERS: tuple[str, ...] = (
    "X-Forwarded-Host",
    "X-Forwarded-Server",
    "X-Forwarded-Scheme",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    # The scheme as Rack (X-Forwarded-Ssl: on, read before X-Forwarded-Proto), Rack's and
    # Werkzeug's X-Url-Scheme, IIS / OWA (Front-End-Https) and a few others take it.
    "X-Forwarded-Ssl",
    "X-Forwarded-Protocol",
    "X-Url-Scheme",
    "Front-End-Https",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Original-Host",
    "X-Host",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "Forwarded",
)


# The smallest slice (cache.slice_size): every slice is one entry, and a catalogue row.
MIN_SLICE_SIZE = 16 * 1024
# The longest lifetime or stale window a rule or policy.default_ttl may set: the cap RFC 9111 §1.2.2
# puts on delta-seconds (68 years). Beyond it a remaining lifetime no longer fits Cache-Status's
# ttl (an RFC 8941 Integer, 15 digits), and every hit on such an entry would fail.
MAX_TTL = 2**31
# The most seconds any setting or command-line option holds (the same 68 years): past about 9.2e9,
# socket.settimeout and time.sleep raise OverflowError (`minicdn stats --timeout 1e10` was a
# traceback), and Redis refuses the expiry of a heartbeat (cluster.heartbeat_seconds * 3).
MAX_SECONDS = MAX_TTL

# Placeholder for this node's name in policy.strip_targeted_fields.
NODE_NAME = "{name}"
# RFC 9110 §5.1: a field name is a token.
FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # also a method name (RFC 9110 §9.1)
# RFC 9110 §9.2.1 (proxy.policy.SAFE_METHODS, which this module cannot import).
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# A media type or a glob of one: text/html, text/*, application/*+json (RFC 9110 §8.3.1).
_MEDIA_GLOB = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+/[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A rule's name: what Cache-Status and the error messages call it.
_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A host name as DNS (and docker's service names, with "_") spell it: what a Host field can carry.
_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# RFC 6265 §4.1.1: a cookie name is a token.
_COOKIE_NAME = FIELD_NAME


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and the file."""


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """How the primary cache key is built (RFC 9111 §2)."""

    namespace: str = ""  # prefix of every key; change it to bust everything at once
    sort_query: bool = False
    ignore_query_params: tuple[str, ...] = ()  # fnmatch patterns, e.g. "utm_*"
    keep_query_params: tuple[str, ...] = ()  # fnmatch patterns; when any, only matching parameters stay


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """When a rule applies (proxy/rules.py): every condition given must hold; none given matches all.

    `path` is a glob over the request's path as received (percent-encoded, no query):
    `*` any run of characters but "/", `**` any run, `?` one character but "/". `path_regex`
    is a Python regular expression searched in that path. `headers` maps a request field to
    True (present), False (absent) or the value it must equal. `status` and `content_type`
    (media-type globs such as "text/*") are response conditions.
    """

    path: str | None = None
    path_regex: str | None = None
    methods: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()  # globs, lower case, matched against Host without its port
    headers: tuple[tuple[str, str | bool], ...] = ()
    status: tuple[int, ...] = ()
    content_type: tuple[str, ...] = ()

    @property
    def on_response(self) -> bool:
        """Whether the rule can only be decided once the response is known."""
        return bool(self.status or self.content_type)

    @property
    def on_url_only(self) -> bool:
        """Whether only the URL (host and path) decides it: what a rule that changes the key needs."""
        return not (self.methods or self.headers or self.on_response)


@dataclass(frozen=True, slots=True)
class RuleKey:
    """How a rule changes the cache key of the URLs it matches."""

    drop_query: tuple[str, ...] = ()  # fnmatch patterns, in addition to keys.ignore_query_params
    keep_query: tuple[str, ...] = ()  # fnmatch patterns: only these parameters are kept
    sort_query: bool | None = None  # None: keys.sort_query
    headers: tuple[str, ...] = ()  # request fields whose values are part of the (secondary) key
    cookies: tuple[str, ...] = ()  # cookies whose values are part of the (secondary) key


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry of `rules`: a name, a match and the actions it takes (None: leaves it alone)."""

    name: str
    match: RuleMatch = RuleMatch()
    ttl: float | None = None  # freshness lifetime, whatever the origin says
    default_ttl: float | None = None  # freshness lifetime when the origin gives none
    bypass: bool | None = None  # never looked up nor stored
    cache_private: bool | None = None  # true: store responses marked `private` all the same
    stale_while_revalidate: float | None = None
    stale_if_error: float | None = None
    key: RuleKey | None = None
    tags: tuple[str, ...] = ()  # purge tags added to what it stores
    strip_headers: tuple[str, ...] = ()  # response fields removed before storing


# Response fields a rule may not strip: the body would no longer be what they describe.
UNSTRIPPABLE_FIELDS = frozenset({"content-encoding", "content-range", "content-length", "transfer-encoding"})


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    """Compression at the edge: encoded variants stored beside the identity one (proxy/compression.py)."""

    enabled: bool = True
    # Media types (globs) worth compressing.
    types: tuple[str, ...] = (
        "text/*",
        "application/json",
        "application/*+json",
        "application/javascript",
        "application/ecmascript",
        "application/xml",
        "application/*+xml",
        "application/wasm",
        "image/svg+xml",
        "image/x-icon",
        "font/ttf",
        "font/otf",
    )
    min_size: int = 1024  # smaller bodies fit one packet anyway
    gzip_level: int = 6
    brotli_quality: int = 5
    off_loop_min: int = 4096  # bodies at least this long are compressed on a worker thread


# policy.invalidate_on_unsafe.methods: every method that is not safe (RFC 9110 §9.2.1).
EVERY_UNSAFE_METHOD = "*"
# The methods whose response may be stored for a GET of their target (policy.write_through).
WRITE_THROUGH_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True, slots=True)
class InvalidationConfig:
    """Which requests with an unsafe method invalidate what is stored for their URI (RFC 9111 §4.4).

    The RFC: a non-error response to any unsafe method invalidates the target URI and its
    same-host Location / Content-Location. That lets anyone who can send `PURGE /x` (or any
    extension method the origin accepts) through the public port evict `/x`; an operator
    narrows it to some methods, from some client networks (the TCP peer's address). A request
    left out is still forwarded: only the invalidation is skipped.
    """

    methods: tuple[str, ...] = (EVERY_UNSAFE_METHOD,)  # "*": every unsafe method (the RFC's rule)
    networks: tuple[str, ...] = ("0.0.0.0/0", "::/0")  # client networks; the default: every client


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Knobs of the pure caching policy (RFC 9111, RFC 5861, RFC 9213)."""

    honour_request_directives: bool = True  # §5.2.1; CDNs often turn this off
    honour_immutable: bool = True  # RFC 8246
    store_set_cookie: bool = False  # store (without the cookie) responses that set one
    heuristic_fraction: float = 0.1  # §4.2.2: at most 10% of Date - Last-Modified
    heuristic_max: float = 86400.0  # cap on a heuristic lifetime, seconds
    default_ttl: Mapping[int, float] = field(default_factory=dict)  # status -> seconds
    targeted_fields: tuple[str, ...] = ("CDN-Cache-Control", "Surrogate-Control")
    # Fields aimed at this cache alone, removed before delivery; "{name}" is this node's name.
    # CDN-Cache-Control targets every CDN of a chain and is forwarded (RFC 9213 §1).
    strip_targeted_fields: tuple[str, ...] = ("Surrogate-Control", "{name}-Cache-Control")
    accept_encodings: tuple[str, ...] = ("br", "gzip")  # Accept-Encoding normalisation order
    # §4.2.4: serve stale even when no-cache / must-revalidate / s-maxage forbid it.
    serve_stale_despite_prohibitions: bool = False
    default_stale_if_error: float = 0.0  # operator default window when the origin sends none
    default_stale_while_revalidate: float = 0.0
    # §4.2.4: seconds past expiry a stored response may answer when the origin cannot be
    # reached, closes the connection or times out (not for its 5xx answers); 0: never.
    stale_on_disconnect: float = 300.0
    max_variants: int = 16  # per URL; the oldest variant goes first
    # Response fields carrying purge tags (Surrogate-Key: space separated; Cache-Tag: comma separated).
    tag_fields: tuple[str, ...] = ("Surrogate-Key", "Cache-Tag")
    strip_tag_fields: bool = True  # remove them before delivery to clients
    invalidate_on_unsafe: InvalidationConfig = InvalidationConfig()
    # Write-through: a 200 (or 203) response to one of these methods whose Content-Location is its own
    # target URI and that has explicit freshness is stored as the response to a GET of that URI
    # (RFC 9110 §8.7; §9.3.3 allows it for POST, RFC 5789 §2 for PATCH; §9.3.4 calls PUT
    # responses not cacheable, so PUT here is the operator's choice). Empty: never.
    write_through: tuple[str, ...] = ()

    def stripped_targeted_fields(self, node_name: str) -> tuple[str, ...]:
        """strip_targeted_fields with "{name}" replaced by this node's name."""
        return tuple(f.replace(NODE_NAME, node_name) for f in self.strip_targeted_fields)


@dataclass(frozen=True, slots=True)
class TierConfig:
    """One storage tier's byte budget and eviction policy."""

    enabled: bool = True
    budget: int = 64 * 1024 * 1024
    eviction: EvictionPolicy = "lru"


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Storage: the L1 memory tier, the L2 disk tier and the per-object limit."""

    dir: str = ".minicdn-cache"
    max_object_size: int = 10 * 1024 * 1024
    # A body above this size (or of unknown length and longer) is streamed to the client as it
    # arrives and spooled to a file beside L2, then stored whole: memory per fetch stays bounded.
    stream_above: int = 1024 * 1024
    l1: TierConfig = TierConfig()
    l2: TierConfig = TierConfig(budget=1024 * 1024 * 1024)
    # L2 values up to this size are read on the event loop (microseconds from
    # the page cache); larger ones on the I/O threads. 0: every read on a thread
    # (for a disk slow enough that a small read could stall the loop).
    l2_read_on_loop_max: int = 256 * 1024
    # L2 writes happen behind the response: at most this many bytes of values wait
    # for the disk (a store beyond it is dropped and counted; an empty queue takes a
    # value of any size), written up to l2_write_batch entries per disk transaction.
    l2_write_queue: int = 64 * 1024 * 1024
    l2_write_batch: int = 256
    # Objects longer than slice_threshold are fetched (by Range) and stored in slices of
    # slice_size bytes, each its own entry (proxy/slices.py); 0 turns slicing off.
    slice_size: int = 1024 * 1024
    slice_threshold: int = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class OriginConfig:
    """The origin this edge fronts, and how requests are forwarded to it."""

    url: str = "http://127.0.0.1:8081"
    host_header: str = "origin"  # "origin": the origin's host; "client": the client's Host
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    # Seconds the origin may take none of a request body being sent to it (nginx: proxy_send_timeout).
    send_timeout: float = 30.0
    max_connections: int = 256
    # Seconds a pooled connection to the origin stays open without a request, then it is closed
    # (proxy.origin.rules.IDLE_TIMEOUT, the clients' own default, is the same 15).
    idle_timeout: float = 15.0
    unkeyed_request_headers: tuple[str, ...] = DEFAULT_UNKEYED_REQUEST_HEADERS
    # Forward request fields whose name has "_" (nginx: underscores_in_headers). Off: CGI and WSGI
    # origins map X_Forwarded_Host onto X-Forwarded-Host, an unkeyed input.
    underscores_in_headers: bool = False


@dataclass(frozen=True, slots=True)
class FetchConfig:
    """Origin fetches beyond one request: coalescing, hit-for-pass, background refresh."""

    coalesce: bool = True  # one origin fetch per key for concurrent misses / revalidations
    coalesce_timeout: float = 10.0  # a waiter gives up after this and fetches on its own
    hit_for_pass_ttl: float = 30.0  # a key whose response could not be shared is not coalesced
    refresh_ahead_fraction: float = 0.1  # refresh hit keys in the last 10% of their lifetime; 0: off
    refresh_ahead_max_concurrent: int = 8  # refresh-ahead fetches running at once (extra are skipped)
    # A range miss is answered from the range asked of the origin; then the whole object (within
    # cache.max_object_size) is fetched behind it. False: store only the ranges clients ask for.
    complete_ranges: bool = True
    # Preload prefetching (proxy/prefetch.py): at most this many same-host `Link: <...>; rel=preload`
    # targets of a stored response are fetched into the cache behind it; 0: off.
    prefetch_preload: int = 0
    prefetch_max_concurrent: int = 4  # prefetches running at once (extra targets are skipped)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin API (purge, inspect, stats) on its own listener."""

    enabled: bool = True
    listen: str = "127.0.0.1:8090"
    # Bearer token; MINICDN_ADMIN_TOKEN overrides. With none, the API only starts on loopback.
    token: str | None = None
    # Accept `PURGE <url>` on the public listener, from these networks only.
    purge_method: bool = False
    purge_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The public front: connection limits and timeouts towards clients."""

    max_connections: int = 10_000  # open client connections per worker; more are refused (503)
    max_connections_per_ip: int = 0  # per client address and worker; 0: no limit
    header_timeout: float = 60.0  # seconds to send a request head once begun (408 after)
    keepalive_timeout: float = 75.0  # seconds an idle keep-alive connection stays open
    body_timeout: float = 60.0  # seconds between two reads of a request body (408 after)
    send_timeout: float = 60.0  # seconds a client may leave an answer unread (then closed)
    # Request body bytes at most (more: 413, as nginx's client_max_body_size); 0: no limit.
    max_body_size: int = 0
    # Readiness fails whenever the origin (or Redis) cannot be reached, not only until it first
    # could (proxy/readiness.py: by default a later outage makes the node "degraded", still ready).
    readiness_strict: bool = False


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Access and error logging."""

    level: str = "INFO"
    format: str = "text"  # "text" or "json"
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration of one edge node."""

    name: str = "edge-1"  # this node's name: its Cache-Status member and Via pseudonym
    listen: str = "127.0.0.1:8080"
    workers: int = 0  # worker processes sharing the listen port and one box-wide cache; 0: one per core
    # Seconds a worker that is told to stop (shutdown, reload) lets requests in progress finish.
    drain_timeout: float = 10.0
    origin: OriginConfig = OriginConfig()
    cache: CacheConfig = CacheConfig()
    keys: KeyConfig = KeyConfig()
    policy: PolicyConfig = PolicyConfig()
    fetch: FetchConfig = FetchConfig()
    admin: AdminConfig = AdminConfig()
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
    compression: CompressionConfig = CompressionConfig()
    # Per-route rules, in order; every rule that matches applies, a later one's action over an
    # earlier one's (proxy/rules.py).
    rules: tuple[Rule, ...] = ()
    # The `cluster:` section, validated by the edge layer (edge/config.py), which the proxy never imports.
    cluster: Mapping[str, Any] = field(default_factory=dict)
    source: str = DEFAULTS_SOURCE  # the file this came from, for messages
    # Keys set from the environment ("cache.l1.budget" -> "MINICDN_CACHE__L1__BUDGET") or the command
    # line ("admin.listen" -> "--admin-listen"), for messages; for the opaque sections, the values of
    # these keys are still the variables' text.
    env: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def where(self, key: str) -> str:
        """Where `key` was set, for a message: 'environment: VAR (key)', 'command line: --OPTION' or
        'FILE: key'."""
        var = self.env.get(key)
        if var and var.startswith("--"):
            return f"command line: {var}"
        return f"environment: {var} ({key})" if var else f"{self.source}: {key}"

    def with_overrides(
        self,
        *,
        listen: str | None = None,
        origin: str | None = None,
        cache_dir: str | None = None,
        admin_listen: str | None = None,
    ) -> Config:
        """A copy with command-line overrides applied (validated like the file)."""
        cfg = self
        env = dict(self.env)
        if listen is not None:
            parse_listen(listen, "command line: --listen")
            cfg = replace(cfg, listen=listen)
            env["listen"] = "--listen"
        if admin_listen is not None:
            parse_listen(admin_listen, "command line: --admin-listen")
            cfg = replace(cfg, admin=replace(cfg.admin, listen=admin_listen))
            env["admin.listen"] = "--admin-listen"
        if origin is not None:
            # The normalised URL (no trailing "/"): Upstream appends the request path to it.
            url = check_base_url(origin, "command line: --origin")
            cfg = replace(cfg, origin=replace(cfg.origin, url=url))
            env["origin.url"] = "--origin"
        if cache_dir is not None:
            _check_cache_dir(cache_dir, "command line: --cache-dir")
            cfg = replace(cfg, cache=replace(cfg.cache, dir=cache_dir))
            env["cache.dir"] = "--cache-dir"
        cfg = replace(cfg, env=env)
        check_admin(cfg)
        return cfg

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen, self.where("listen"))


# --------------------------------------------------------------------------- loading

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "ti": 1024**4,
}


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration: a YAML file (`path`, else $MINICDN_CONFIG, else none: the built-in
    defaults) with the environment's MINICDN_* variables over it, validated."""
    env = os.environ if environ is None else environ
    if path is None and env.get(ENV_CONFIG_FILE):
        path = env[ENV_CONFIG_FILE]
    if path is None:
        return config_from_mapping({}, DEFAULTS_SOURCE, env)
    file = Path(path)
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read config file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:  # a ValueError, not a ConfigError: it was a traceback
        raise ConfigError(
            f"{source}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        ) from None
    try:
        raw = yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    return config_from_mapping(raw, source, env)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping.

    YAML says keys are unique; PyYAML keeps the last one silently, so a second `cache:` section
    (a paste, a merge) replaced the first whole and its settings vanished without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges, and may be overridden: not a duplicate
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"the key {_shown(key)} is given twice (also at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def yaml_load(text: str) -> Any:
    """The config's YAML (yaml.safe_load, but a key given twice in a mapping is an error)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects


def config_from_mapping(
    raw: object, source: str = "<mapping>", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate a parsed mapping (the YAML document), with the environment over it, into a Config."""
    overlay, env_keys = env_overlay(os.environ if environ is None else environ)
    if overlay:
        if raw is None:
            raw = {}
        if isinstance(raw, dict):  # else the file's own error is reported
            raw = copy.deepcopy(raw)
            for key, value in overlay.items():
                _set_path(raw, key.split("."), value)
    r = _Reader(source, env_keys)
    top = r.mapping(raw, "")
    r.only(
        top,
        "",
        {
            "name",
            "listen",
            "workers",
            "drain_timeout",
            "origin",
            "cache",
            "keys",
            "policy",
            "fetch",
            "admin",
            "server",
            "log",
            "compression",
            "rules",
            "cluster",
            "origin_stub",
        },
    )
    d = Config()
    name = r.string(top, "name", d.name)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name):
        raise r.error("name", "must start with a letter and use only letters, digits, '.', '_' and '-'")
    listen = r.string(top, "listen", d.listen)
    parse_listen(listen, r.where("listen"))
    workers = top.get("workers", d.workers)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= 256:
        raise r.error("workers", "must be a whole number from 0 (one per core) to 256")
    drain_timeout = r.non_negative(top, "drain_timeout", d.drain_timeout)

    o = r.mapping(top.get("origin", {}), "origin")
    r.only(o, "origin", set(OriginConfig.__dataclass_fields__))
    od = OriginConfig()
    origin = OriginConfig(
        url=check_base_url(r.string(o, "url", od.url, "origin"), r.where("origin.url")),
        host_header=r.choice(o, "host_header", od.host_header, ("origin", "client"), "origin"),
        connect_timeout=r.positive(o, "connect_timeout", od.connect_timeout, "origin"),
        read_timeout=r.positive(o, "read_timeout", od.read_timeout, "origin"),
        send_timeout=r.positive(o, "send_timeout", od.send_timeout, "origin"),
        max_connections=r.whole(o, "max_connections", od.max_connections, 1, None, "origin"),
        idle_timeout=r.positive(o, "idle_timeout", od.idle_timeout, "origin"),
        unkeyed_request_headers=r.field_names(
            o, "unkeyed_request_headers", od.unkeyed_request_headers, "origin"
        ),
        underscores_in_headers=r.boolean(o, "underscores_in_headers", od.underscores_in_headers, "origin"),
    )

    c = r.mapping(top.get("cache", {}), "cache")
    r.only(c, "cache", set(CacheConfig.__dataclass_fields__))
    cd = CacheConfig()
    cache = CacheConfig(
        dir=_check_cache_dir(r.string(c, "dir", cd.dir, "cache"), r.where("cache.dir")),
        max_object_size=r.size(c, "max_object_size", cd.max_object_size, "cache"),
        stream_above=r.size(c, "stream_above", cd.stream_above, "cache"),
        l1=_tier(r, c.get("l1", {}), "cache.l1", cd.l1, allow_random=True),
        l2=_tier(r, c.get("l2", {}), "cache.l2", cd.l2, allow_random=False),
        l2_read_on_loop_max=r.size(c, "l2_read_on_loop_max", cd.l2_read_on_loop_max, "cache"),
        l2_write_queue=r.size(c, "l2_write_queue", cd.l2_write_queue, "cache"),
        l2_write_batch=r.whole(c, "l2_write_batch", cd.l2_write_batch, 1, None, "cache"),
        slice_size=r.size(c, "slice_size", cd.slice_size, "cache"),
        slice_threshold=r.size(c, "slice_threshold", cd.slice_threshold, "cache"),
    )
    if cache.l2_write_queue < 1:
        raise r.error("cache.l2_write_queue", "must be at least 1 byte")
    if cache.slice_size and not MIN_SLICE_SIZE <= cache.slice_size <= cache.max_object_size:
        raise r.error(
            "cache.slice_size",
            f"must be 0 (no slicing) or from {MIN_SLICE_SIZE // 1024}KiB to cache.max_object_size"
            f" ({cache.max_object_size} bytes): each slice is stored as one object",
        )
    if cache.slice_size and cache.slice_threshold < cache.slice_size:
        raise r.error("cache.slice_threshold", "must be at least cache.slice_size (2 slices or more)")

    k = r.mapping(top.get("keys", {}), "keys")
    r.only(k, "keys", set(KeyConfig.__dataclass_fields__))
    kd = KeyConfig()
    keys = KeyConfig(
        namespace=r.printable(k, "namespace", kd.namespace, "keys"),
        sort_query=r.boolean(k, "sort_query", kd.sort_query, "keys"),
        ignore_query_params=r.param_patterns(k, "ignore_query_params", kd.ignore_query_params, "keys"),
        keep_query_params=r.param_patterns(k, "keep_query_params", kd.keep_query_params, "keys"),
    )

    p = r.mapping(top.get("policy", {}), "policy")
    r.only(p, "policy", set(PolicyConfig.__dataclass_fields__))
    pd = PolicyConfig()
    encodings = r.strings(p, "accept_encodings", pd.accept_encodings, "policy")
    for enc in encodings:
        if enc.lower() in ("identity", "*") or not re.fullmatch(r"[A-Za-z0-9._-]+", enc):
            raise r.error("policy.accept_encodings", f"{enc!r} is not a content-coding name")
    policy = PolicyConfig(
        honour_request_directives=r.boolean(
            p, "honour_request_directives", pd.honour_request_directives, "policy"
        ),
        honour_immutable=r.boolean(p, "honour_immutable", pd.honour_immutable, "policy"),
        store_set_cookie=r.boolean(p, "store_set_cookie", pd.store_set_cookie, "policy"),
        heuristic_fraction=r.fraction(p, "heuristic_fraction", pd.heuristic_fraction, "policy"),
        heuristic_max=r.non_negative(p, "heuristic_max", pd.heuristic_max, "policy"),
        default_ttl=_default_ttl(r, p.get("default_ttl", {})),
        targeted_fields=r.field_names(p, "targeted_fields", pd.targeted_fields, "policy"),
        strip_targeted_fields=_strip_targeted_fields(r, p, pd.strip_targeted_fields),
        accept_encodings=tuple(e.lower() for e in encodings),
        serve_stale_despite_prohibitions=r.boolean(
            p, "serve_stale_despite_prohibitions", pd.serve_stale_despite_prohibitions, "policy"
        ),
        default_stale_if_error=r.non_negative(
            p, "default_stale_if_error", pd.default_stale_if_error, "policy"
        ),
        default_stale_while_revalidate=r.non_negative(
            p, "default_stale_while_revalidate", pd.default_stale_while_revalidate, "policy"
        ),
        stale_on_disconnect=r.non_negative(p, "stale_on_disconnect", pd.stale_on_disconnect, "policy"),
        max_variants=r.whole(p, "max_variants", pd.max_variants, 1, None, "policy"),
        tag_fields=r.field_names(p, "tag_fields", pd.tag_fields, "policy"),
        strip_tag_fields=r.boolean(p, "strip_tag_fields", pd.strip_tag_fields, "policy"),
        invalidate_on_unsafe=_invalidation(r, p.get("invalidate_on_unsafe", {}), pd.invalidate_on_unsafe),
        write_through=_write_through(r, p, pd.write_through),
    )

    f = r.mapping(top.get("fetch", {}), "fetch")
    r.only(f, "fetch", set(FetchConfig.__dataclass_fields__))
    fd = FetchConfig()
    fetch = FetchConfig(
        coalesce=r.boolean(f, "coalesce", fd.coalesce, "fetch"),
        coalesce_timeout=r.positive(f, "coalesce_timeout", fd.coalesce_timeout, "fetch"),
        hit_for_pass_ttl=r.non_negative(f, "hit_for_pass_ttl", fd.hit_for_pass_ttl, "fetch"),
        refresh_ahead_fraction=r.fraction(f, "refresh_ahead_fraction", fd.refresh_ahead_fraction, "fetch"),
        refresh_ahead_max_concurrent=r.whole(
            f, "refresh_ahead_max_concurrent", fd.refresh_ahead_max_concurrent, 1, None, "fetch"
        ),
        complete_ranges=r.boolean(f, "complete_ranges", fd.complete_ranges, "fetch"),
        prefetch_preload=r.whole(f, "prefetch_preload", fd.prefetch_preload, 0, 64, "fetch"),
        prefetch_max_concurrent=r.whole(
            f, "prefetch_max_concurrent", fd.prefetch_max_concurrent, 1, 1024, "fetch"
        ),
    )

    a = r.mapping(top.get("admin", {}), "admin")
    r.only(a, "admin", set(AdminConfig.__dataclass_fields__))
    ad = AdminConfig()
    token = a.get("token", ad.token)
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise r.error("admin.token", "must be a non-empty string (or leave it out)")
    if token is not None and (problem := token_problem(token)):
        raise r.error("admin.token", problem)
    networks = _networks(r, a, "purge_networks", ad.purge_networks, "admin")
    admin = AdminConfig(
        enabled=r.boolean(a, "enabled", ad.enabled, "admin"),
        listen=r.string(a, "listen", ad.listen, "admin"),
        token=token,
        purge_method=r.boolean(a, "purge_method", ad.purge_method, "admin"),
        purge_networks=networks,
    )
    parse_listen(admin.listen, r.where("admin.listen"))

    sv = r.mapping(top.get("server", {}), "server")
    r.only(sv, "server", set(ServerConfig.__dataclass_fields__))
    sd = ServerConfig()
    server = ServerConfig(
        max_connections=r.whole(sv, "max_connections", sd.max_connections, 1, None, "server"),
        max_connections_per_ip=r.whole(
            sv, "max_connections_per_ip", sd.max_connections_per_ip, 0, None, "server"
        ),
        header_timeout=r.positive(sv, "header_timeout", sd.header_timeout, "server"),
        keepalive_timeout=r.positive(sv, "keepalive_timeout", sd.keepalive_timeout, "server"),
        body_timeout=r.positive(sv, "body_timeout", sd.body_timeout, "server"),
        send_timeout=r.positive(sv, "send_timeout", sd.send_timeout, "server"),
        max_body_size=r.size(sv, "max_body_size", sd.max_body_size, "server"),
        readiness_strict=r.boolean(sv, "readiness_strict", sd.readiness_strict, "server"),
    )

    lg = r.mapping(top.get("log", {}), "log")
    r.only(lg, "log", set(LogConfig.__dataclass_fields__))
    ld = LogConfig()
    log = LogConfig(
        level=r.choice(lg, "level", ld.level, ("DEBUG", "INFO", "WARNING", "ERROR"), "log", upper=True),
        format=r.choice(lg, "format", ld.format, ("text", "json"), "log"),
        access_log=r.boolean(lg, "access_log", ld.access_log, "log"),
    )
    z = r.mapping(top.get("compression", {}), "compression")
    r.only(z, "compression", set(CompressionConfig.__dataclass_fields__))
    zd = CompressionConfig()
    types = r.strings(z, "types", zd.types, "compression")
    for pattern in types:
        if not _MEDIA_GLOB.fullmatch(pattern):
            raise r.error("compression.types", f"{pattern!r} is not a media type such as text/html or text/*")
    compression = CompressionConfig(
        enabled=r.boolean(z, "enabled", zd.enabled, "compression"),
        types=tuple(t.lower() for t in types),
        min_size=r.size(z, "min_size", zd.min_size, "compression"),
        gzip_level=r.whole(z, "gzip_level", zd.gzip_level, 1, 9, "compression"),
        brotli_quality=r.whole(z, "brotli_quality", zd.brotli_quality, 0, 11, "compression"),
        off_loop_min=r.size(z, "off_loop_min", zd.off_loop_min, "compression"),
    )

    cfg = Config(
        name=name,
        listen=listen,
        workers=workers,
        drain_timeout=drain_timeout,
        origin=origin,
        cache=cache,
        keys=keys,
        policy=policy,
        fetch=fetch,
        admin=admin,
        server=server,
        log=log,
        compression=compression,
        rules=_rules(r, top.get("rules", [])),
        cluster=r.mapping(top.get("cluster", {}), "cluster"),
        source=source,
        env=env_keys,
    )
    check_admin(cfg)
    return cfg


# --------------------------------------------------------------------------- the environment


def env_name(key: str) -> str:
    """The variable of a dotted key: "cache.l1.budget" -> "MINICDN_CACHE__L1__BUDGET"."""
    return ENV_PREFIX + ENV_SEPARATOR.join(part.upper() for part in key.split("."))


def settings(cls: type[Any] = Config, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every key of the configuration dataclasses, dotted, with its type (sections recursed).

    The opaque sections (`cluster`, `origin_stub`) are not included: their owners list theirs.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in ("source", "env") or f.name in OPAQUE_SECTIONS:
            continue
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            yield from settings(hint, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hint


def env_value(var: str, text: str, hint: Any) -> object:
    """A variable's text as the value a YAML file would give for a key of type `hint`.

    Numbers stay text when they do not parse (then the file's check reports it,
    naming the variable); lists are comma separated; mappings are `k=v,k=v`.
    """
    origin = typing.get_origin(hint)
    if hint is bool:
        word = text.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"environment: {var}: {text!r} must be true or false (or 1 / 0)")
    if hint is int or hint is float:
        return _number(text)
    if hint is str or origin is typing.Literal:
        return text
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) == 1:
            return env_value(var, text, options[0])
    if origin is tuple:
        (item, *_) = typing.get_args(hint)
        if dataclasses.is_dataclass(item):
            # A list of mappings (`rules`) has no comma form: the variable holds the YAML (or JSON)
            # the file would, e.g. MINICDN_RULES='[{name: api, match: {path: /api/*}, ttl: 60}]'.
            try:
                return yaml_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"environment: {var}: not valid YAML: {exc}") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    if origin in (Mapping, dict):
        out: dict[str, object] = {}
        for part in text.split(","):
            if not part.strip():
                continue
            k, sep, v = part.partition("=")
            if not sep or not k.strip():
                raise ConfigError(f"environment: {var}: {part.strip()!r} is not key=value")
            if k.strip() in out:  # as a key given twice in the file: the first one silently lost
                raise ConfigError(f"environment: {var}: {k.strip()!r} is given twice")
            out[k.strip()] = _number(v.strip())
        return out
    raise TypeError(f"{var}: no environment form for a key of type {hint!r}")


def env_overlay(environ: Mapping[str, str]) -> tuple[dict[str, object], dict[str, str]]:
    """The MINICDN_* variables as {dotted key: value} and {dotted key: variable}.

    Empty variables are ignored (as if unset). An unknown variable, or an alias and
    its rule name disagreeing, is an error naming the variable.
    """
    known = dict(settings())
    values: dict[str, object] = {}
    names: dict[str, str] = {}
    for var in sorted(environ):
        text = environ[var]
        if not var.startswith(ENV_PREFIX) or var == ENV_CONFIG_FILE or text == "":
            continue
        key = ENV_ALIASES.get(var) or ".".join(
            part.lower() for part in var[len(ENV_PREFIX) :].split(ENV_SEPARATOR)
        )
        section = key.split(".", 1)[0]
        if key not in known and not (section in OPAQUE_SECTIONS and key.count(".") == 1):
            raise ConfigError(f"environment: {var}: {_unknown(var)}")
        value = env_value(var, text, known[key]) if key in known else text
        if key in values and values[key] != value:  # an alias and its rule name
            raise ConfigError(
                f"environment: {names[key]} and {var} both set {key}, to different values; keep one"
            )
        names[key] = var
        values[key] = value
    return values, names


def _unknown(var: str) -> str:
    candidates = [env_name(key) for key, _ in settings()] + [*ENV_ALIASES, ENV_CONFIG_FILE]
    close = difflib.get_close_matches(var, candidates, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return (
        f"not a setting{hint} (the rule: MINICDN_ + the key's path in capitals, "
        "'__' between levels, e.g. MINICDN_CACHE__L1__BUDGET for cache.l1.budget)"
    )


def _number(text: str) -> object:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _set_path(raw: dict[str, Any], path: list[str], value: object) -> None:
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            return  # the file's own error ("must be a mapping") is reported
        node = child
    node[path[-1]] = value


def check_admin(cfg: Config) -> None:
    """The admin API needs a token unless it listens on loopback, and a port of its own.

    Run on the final configuration (file, environment and command line applied), so a
    MINICDN_ADMIN_TOKEN from the environment counts as configured.
    """
    admin = cfg.admin
    if not admin.enabled:
        return
    where = cfg.where("admin.listen")
    host, port = parse_listen(admin.listen, where)
    if not admin.token and not is_loopback(host):
        raise ConfigError(
            f"{where}: {admin.listen!r} is not a loopback address and no admin.token "
            "is set; set admin.token (or MINICDN_ADMIN_TOKEN), or listen on 127.0.0.1"
        )
    if port != 0 and (host, port) == cfg.listen_host_port:
        raise ConfigError(
            f"{where}: {admin.listen!r} is the public listen address; the admin API needs a port of its own"
        )


def seconds_problem(value: float, *, zero: bool = False) -> str | None:
    """Why `value` cannot be a number of seconds (greater than 0, or from 0 when `zero`), or None.

    The one rule for the config file, the environment and the command lines' options.
    """
    if not math.isfinite(value):  # YAML's .inf / .nan, "inf" from the environment or a command line
        return f"must be a finite number, not {value}"
    if zero and value < 0:
        return "must be 0 or more"
    if not zero and value <= 0:
        return f"must be greater than 0, not {value:g}"
    if value > MAX_SECONDS:
        return f"must be at most {MAX_SECONDS} seconds (68 years), not {value:g}"
    return None


def param_pattern_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be a pattern of query parameter names (keys.keep_query_params and the
    like, fnmatch), or None. A name has no "=" or "&": "id=*" matched no parameter, and in a keep
    list that dropped every one from the key, so /item?id=1 and /item?id=2 were one object."""
    if not pattern:
        return "an empty pattern matches no parameter name"
    if "=" in pattern or "&" in pattern:
        name = pattern.split("=", 1)[0].split("&", 1)[0]
        hint = f"; did you mean {name!r}?" if name else ""
        return f"{pattern!r}: a pattern matches parameter names, which have no '=' or '&'{hint}"
    return None


def printable_problem(value: str) -> str | None:
    """Why `value` cannot be a name that goes into every key or a Redis key name, or None.

    A newline, a tab, a zero-width or another control character (a YAML `|` block's trailing
    newline, a value pasted from a file) is invisible where it is shown: a namespace "v2\n" keys
    every object apart from a neighbour's "v2" (and a purge stream apart from the other edges'),
    and nothing on screen says why. Such a name is always a mistake.
    """
    if value.isprintable():  # Python's rule: no Cc / Cf / Zl / Zp / Zs but " ", no surrogates
        return None
    bad = next(c for c in value if not c.isprintable())
    return f"{_shown(value)} has a control or separator character ({bad!r}); use printable text"


def token_problem(token: str) -> str | None:
    """Why `Authorization: Bearer <token>` cannot carry this admin token, or None.

    Visible ASCII only (RFC 6750's b64token is a subset): a header value loses its leading and
    trailing white space, so a token read from a file or a secret with its trailing newline
    could never match (every admin call a 401), and clients encode other characters differently
    (urllib as Latin-1, curl as the terminal's UTF-8). The message never repeats the token.
    """
    if all("!" <= c <= "~" for c in token):
        return None
    where = "at its end (a trailing newline?)" if token != token.rstrip() else "in it"
    return (
        f"has a space, control or non-ASCII character {where}; an Authorization header cannot "
        "carry it (use letters, digits and punctuation, e.g. `openssl rand -hex 16`)"
    )


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (also IPv4-mapped); a host name other than localhost is not."""
    host = host.strip("[]")
    if host.lower().rstrip(".") == "localhost":
        return True
    address = ip_of(host)
    return address is not None and address.is_loopback


def parse_size(value: object) -> int:
    """An int, or a string like "64MiB" / "10 MB" / "512k", as a byte count."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "").lower()
            size = float(m.group(1)) * _SIZE_UNITS[unit] if unit in _SIZE_UNITS else None
            if size is not None and math.isfinite(size):  # a run of digits past 1e308 is inf
                return int(size)
    raise ValueError(f"{_shown(value)} is not a size (use bytes, or e.g. '64MiB', '10MB')")


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 200
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict = 2, 4, 4


def _shown(value: object) -> str:
    """A value of any type for a message, bounded: YAML aliases can nest a list of 10**9 strings
    in a few lines, and its full repr() hung the start (and a reload) building the error."""
    return _SHOWN.repr(value)


def parse_listen(value: str, where: str) -> tuple[str, int]:
    """HOST:PORT; `where` names the key for the message ("FILE: listen", "command line: --listen")."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def check_base_url(value: str, where: str) -> str:
    """An HTTP server's base URL (the origin, a peer edge): http(s)://host[:port][/path], normalised
    without a trailing "/"; a ConfigError naming `where` otherwise.

    Every request's path and query are appended to it as text, so it has no query or fragment
    ("http://o/?v=1" sent "/?v=1/page" on https, and the http client refused it with a
    traceback in every worker), no user:password@ (it would be sent in no Authorization field,
    and the Host field would carry it), and only visible ASCII (a space or a newline would end
    the request line): a host in its xn-- form, a path percent-encoded.
    """
    from yarl import URL

    if not all("!" <= c <= "~" for c in value):
        raise ConfigError(
            f"{where}: {_shown(value)} has a space, control or non-ASCII character; write the host"
            " in its ASCII (xn--) form and percent-encode the path"
        )
    try:
        url = URL(value)
        url.port  # noqa: B018 - raises ValueError for a port past 65535
    except ValueError as exc:
        raise ConfigError(f"{where}: {_shown(value)} is not a URL") from exc
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise ConfigError(f"{where}: {_shown(value)} must be an http:// or https:// URL with a host")
    if "@" in value.partition("://")[2].partition("/")[0]:  # yarl drops an empty one ("http://@o")
        raise ConfigError(
            f"{where}: {_shown(value)}: a base URL has no user:password@ (nothing would send it)"
        )
    if "?" in value or "#" in value:
        raise ConfigError(
            f"{where}: {_shown(value)}: a base URL has no query or fragment (each request's own"
            " path and query are appended to it)"
        )
    if ip_of(url.raw_host) is None and not _HOST_NAME.fullmatch(url.raw_host):
        raise ConfigError(f"{where}: {_shown(value)}: {url.raw_host!r} is not a host name or address")
    return value.rstrip("/")


def _check_cache_dir(value: str, where: str) -> str:
    """The L2 directory: not empty. "" is the current directory (`--cache-dir "$UNSET"`): the
    cache database, its value folders and the spool files were written wherever the edge started."""
    if not value.strip():
        raise ConfigError(f"{where}: is empty; name the directory of the disk tier (e.g. /var/cache/minicdn)")
    return value


def _tier(r: _Reader, raw: object, key: str, d: TierConfig, *, allow_random: bool) -> TierConfig:
    t = r.mapping(raw, key)
    r.only(t, key, set(TierConfig.__dataclass_fields__))
    allowed = EVICTION_POLICIES if allow_random else tuple(p for p in EVICTION_POLICIES if p != "random")
    eviction = r.choice(t, "eviction", d.eviction, allowed, key)
    return TierConfig(
        enabled=r.boolean(t, "enabled", d.enabled, key),
        budget=r.size(t, "budget", d.budget, key),
        eviction=cast(EvictionPolicy, eviction),
    )


def _networks(
    r: _Reader, m: dict[str, Any], key: str, default: tuple[str, ...], section: str
) -> tuple[str, ...]:
    """A list of IP networks ("10.0.0.0/8", "::1/128"; a bare address is its own /32 or /128)."""
    networks = r.strings(m, key, default, section)
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise r.error(f"{section}.{key}", f"{net!r} is not a network like 10.0.0.0/8") from None
    return networks


def _invalidation(r: _Reader, raw: object, d: InvalidationConfig) -> InvalidationConfig:
    key = "policy.invalidate_on_unsafe"
    m = r.mapping(raw, key)
    r.only(m, key, set(InvalidationConfig.__dataclass_fields__))
    methods = r.strings(m, "methods", d.methods, key)
    for method in methods:
        if method == EVERY_UNSAFE_METHOD:
            if len(methods) > 1:
                raise r.error(
                    f"{key}.methods", '"*" (every unsafe method) cannot be listed with other methods'
                )
        elif not FIELD_NAME.fullmatch(method):
            raise r.error(f"{key}.methods", f"{method!r} is not a method name")
        elif method != method.upper():
            # RFC 9110 §9.1: methods are case-sensitive; "post" would never match a POST.
            raise r.error(
                f"{key}.methods", f"{method!r}: methods are case-sensitive; did you mean {method.upper()!r}?"
            )
        elif method in _SAFE_METHODS:
            raise r.error(
                f"{key}.methods", f"{method} is a safe method: its responses never invalidate (RFC 9111 §4.4)"
            )
    return InvalidationConfig(methods=methods, networks=_networks(r, m, "networks", d.networks, key))


def _write_through(r: _Reader, p: dict[str, Any], default: tuple[str, ...]) -> tuple[str, ...]:
    key = "policy.write_through"
    methods = r.strings(p, "write_through", default, "policy")
    for method in methods:
        if method.upper() in WRITE_THROUGH_METHODS and method != method.upper():
            raise r.error(key, f"{method!r}: methods are case-sensitive; did you mean {method.upper()!r}?")
        if method not in WRITE_THROUGH_METHODS:
            raise r.error(
                key,
                f"{method!r}: only POST, PUT and PATCH responses can carry the new representation"
                " of their target URI (RFC 9110 §8.7)",
            )
    return methods


def _strip_targeted_fields(r: _Reader, p: dict[str, Any], default: tuple[str, ...]) -> tuple[str, ...]:
    key = "policy.strip_targeted_fields"
    if isinstance(p.get("strip_targeted_fields"), bool):
        # It was a switch for every targeted field; CDN-Cache-Control is now forwarded (RFC 9213 §1).
        raise r.error(key, "is now a list of field names, e.g. [Surrogate-Control] ([] strips none)")
    fields = r.strings(p, "strip_targeted_fields", default, "policy")
    for name in fields:
        if not FIELD_NAME.fullmatch(name.replace(NODE_NAME, "n")):
            raise r.error(key, f'{name!r} is not a field name ("{NODE_NAME}" stands for this node\'s name)')
    return fields


def _default_ttl(r: _Reader, raw: object) -> dict[int, float]:
    m = r.mapping(raw, "policy.default_ttl")
    out: dict[int, float] = {}
    for status, ttl in m.items():
        try:
            code = int(status)
        except (TypeError, ValueError):
            raise r.error(f"policy.default_ttl.{status}", "keys must be HTTP status codes") from None
        if not 200 <= code <= 599:
            raise r.error(f"policy.default_ttl.{status}", "keys must be HTTP status codes (200-599)")
        if code in out:  # 200 and "200" (or "0200") in the file: one silently replaced the other
            raise r.error(f"policy.default_ttl.{status}", f"status {code} is given twice")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 <= ttl <= MAX_TTL:
            raise r.error(f"policy.default_ttl.{status}", f"must be a number of seconds from 0 to {MAX_TTL}")
        out[code] = float(ttl)
    return out


# ------------------------------------------------------------------------------- rules

_MATCH_KEYS = ("path", "path_regex", "methods", "hosts", "headers", "status", "content_type")
_KEY_KEYS = ("drop_query", "keep_query", "sort_query", "headers", "cookies")
_RULE_KEYS = (
    "name",
    "match",
    "ttl",
    "default_ttl",
    "bypass",
    "cache_private",
    "stale_while_revalidate",
    "stale_if_error",
    "key",
    "tags",
    "strip_headers",
)
# The actions that act on a response (and so may follow a match on its status or content type).
_RESPONSE_ACTIONS = (
    "ttl",
    "default_ttl",
    "cache_private",
    "stale_while_revalidate",
    "stale_if_error",
    "tags",
    "strip_headers",
)


class _RuleReader:
    """Reads one entry of `rules`; every error names the rule (index and name) and the field."""

    def __init__(self, r: _Reader, index: int, raw: object) -> None:
        self.r = r
        self.index = index
        self.name = ""
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            self.name = raw["name"]

    def error(self, field: str, problem: str) -> ConfigError:
        who = f"rules[{self.index}]" + (f" ({self.name})" if self.name else "")
        var = self.r.env.get("rules")
        where = f"environment: {var}: {who}" if var else f"{self.r.source}: {who}"
        return ConfigError(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")

    def mapping(self, raw: object, field: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.error(field, "must be a mapping")
        return raw

    def only(self, m: dict[str, Any], prefix: str, allowed: tuple[str, ...]) -> None:
        for k in m:
            if k not in allowed:
                raise self.error(f"{prefix}{k}", f"unknown key (expected one of: {', '.join(allowed)})")

    def strings(self, m: dict[str, Any], key: str, field: str) -> tuple[str, ...]:
        v = m.get(key, [])
        if isinstance(v, str):
            v = [v]  # one value needs no list
        if not isinstance(v, list) or not all(isinstance(s, str) and s.strip() for s in v):
            raise self.error(field, "must be a list of non-empty strings")
        return tuple(s.strip() for s in v)

    def seconds(self, m: dict[str, Any], key: str) -> float | None:
        if key not in m:
            return None
        v = m[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= MAX_TTL:
            raise self.error(key, f"must be a number of seconds from 0 to {MAX_TTL}")
        return float(v)

    def flag(self, m: dict[str, Any], key: str, field: str) -> bool | None:
        if key not in m:
            return None
        v = m[key]
        if not isinstance(v, bool):
            raise self.error(field, "must be true or false")
        return v

    def param_patterns(self, m: dict[str, Any], key: str, field: str) -> tuple[str, ...]:
        patterns = self.strings(m, key, field)
        for pattern in patterns:
            if problem := param_pattern_problem(pattern):
                raise self.error(field, problem)
        return patterns

    def field_names(self, m: dict[str, Any], key: str, field: str) -> tuple[str, ...]:
        names = self.strings(m, key, field)
        for name in names:
            if not FIELD_NAME.fullmatch(name):
                raise self.error(field, f"{name!r} is not a field name")
        return names


def _rules(r: _Reader, raw: object) -> tuple[Rule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise r.error("rules", "must be a list of rules (each a mapping with a name, a match and actions)")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        rule = _rule(_RuleReader(r, index, item), item)
        if rule.name in seen:
            raise _RuleReader(r, index, item).error("name", "another rule has this name; names are unique")
        seen.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _rule(rr: _RuleReader, raw: object) -> Rule:
    m = rr.mapping(raw, "")
    rr.only(m, "", _RULE_KEYS)
    name = m.get("name")
    if not isinstance(name, str) or not _RULE_NAME.fullmatch(name):
        raise rr.error("name", "required: letters, digits, '.', '_' and '-', starting with a letter or digit")
    match = _rule_match(rr, m.get("match", {}))
    key = _rule_key(rr, m["key"]) if "key" in m else None
    tags = rr.strings(m, "tags", "tags")
    for tag in tags:
        if any(c.isspace() or c == "," for c in tag):
            raise rr.error("tags", f"{tag!r}: a tag has no spaces or commas (they separate tags)")
        if not tag.isprintable():
            # A purge cannot name it (proxy/purge.py refuses one), and a lone surrogate ("\ud800" in
            # YAML) could not be written to the catalogue: its batch, neighbours too, was dropped.
            raise rr.error("tags", f"{tag!r}: a tag has no control characters and is valid text")
    strip = rr.field_names(m, "strip_headers", "strip_headers")
    for field_name in strip:
        if field_name.lower() in UNSTRIPPABLE_FIELDS:
            raise rr.error("strip_headers", f"{field_name!r} describes the body; it cannot be stripped")
    rule = Rule(
        name=name,
        match=match,
        ttl=rr.seconds(m, "ttl"),
        default_ttl=rr.seconds(m, "default_ttl"),
        bypass=rr.flag(m, "bypass", "bypass"),
        cache_private=rr.flag(m, "cache_private", "cache_private"),
        stale_while_revalidate=rr.seconds(m, "stale_while_revalidate"),
        stale_if_error=rr.seconds(m, "stale_if_error"),
        key=key,
        tags=tags,
        strip_headers=strip,
    )
    actions = [k for k in _RULE_KEYS if k not in ("name", "match") and k in m]
    if not actions:
        raise rr.error("", f"has no action (one or more of: {', '.join(_RULE_KEYS[2:])})")
    if match.on_response:
        for action in actions:
            if action not in _RESPONSE_ACTIONS:
                raise rr.error(
                    action,
                    "acts on the request, and this rule matches on the response (match.status / "
                    "match.content_type); put it in a rule of its own",
                )
    if key is not None and not match.on_url_only:
        raise rr.error(
            "key",
            "a rule that changes the key may match only on path, path_regex and hosts "
            "(the same URL must always have the same key)",
        )
    if rule.bypass and len(actions) > 1:
        others = ", ".join(a for a in actions if a != "bypass")
        raise rr.error("bypass", f"nothing is stored when bypassing, so {others} would have no effect")
    return rule


def _rule_match(rr: _RuleReader, raw: object) -> RuleMatch:
    m = rr.mapping(raw, "match")
    rr.only(m, "match.", _MATCH_KEYS)
    path = m.get("path")
    if path is not None and (not isinstance(path, str) or not path.startswith(("/", "*"))):
        raise rr.error("match.path", 'must be a glob starting with "/" (or "*"), e.g. /api/items/*')
    path_regex = m.get("path_regex")
    if path_regex is not None:
        if path is not None:
            raise rr.error("match.path_regex", "give path or path_regex, not both")
        if not isinstance(path_regex, str) or not path_regex:
            raise rr.error("match.path_regex", "must be a regular expression")
        try:
            re.compile(path_regex)
        except re.error as exc:
            raise rr.error("match.path_regex", f"not a regular expression: {exc}") from None
    methods = rr.strings(m, "methods", "match.methods")
    for method in methods:
        if not FIELD_NAME.fullmatch(method):
            raise rr.error("match.methods", f"{method!r} is not a method")
    hosts = rr.strings(m, "hosts", "match.hosts")
    for host in hosts:
        if not re.fullmatch(r"[A-Za-z0-9*?._\[\]:-]+", host):
            raise rr.error("match.hosts", f"{host!r} is not a host name or glob (e.g. *.example.com)")
    headers: list[tuple[str, str | bool]] = []
    for name, want in rr.mapping(m.get("headers", {}), "match.headers").items():
        if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
            raise rr.error("match.headers", f"{name!r} is not a field name")
        if isinstance(want, int | float) and not isinstance(want, bool):
            want = str(want)  # `X-Api-Version: 2` in YAML is a number
        if not isinstance(want, bool | str):
            raise rr.error(f"match.headers.{name}", "must be true (present), false (absent) or a value")
        if isinstance(want, str):
            # Compared with the field's value, which has no leading or trailing white space and no
            # control character but HTAB (RFC 9110 §5.5): a YAML `|` block's trailing newline made
            # a value that no request could match, and the rule silently never applied.
            want = want.strip(" \t\r\n")
            if any((c < " " and c != "\t") or c == "\x7f" for c in want):
                raise rr.error(
                    f"match.headers.{name}", f"{want!r} has a control character; no field value has one"
                )
        headers.append((name, want))
    statuses = m.get("status", [])
    if isinstance(statuses, int):
        statuses = [statuses]
    if not isinstance(statuses, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
    ):
        raise rr.error("match.status", "must be a list of status codes (100-599)")
    content_types = rr.strings(m, "content_type", "match.content_type")
    for pattern in content_types:
        if not _MEDIA_GLOB.fullmatch(pattern):
            raise rr.error("match.content_type", f"{pattern!r} is not a media type such as text/* ")
    return RuleMatch(
        path=path,
        path_regex=path_regex,
        methods=tuple(x.upper() for x in methods),
        hosts=tuple(h.lower() for h in hosts),
        headers=tuple(headers),
        status=tuple(statuses),
        content_type=tuple(c.lower() for c in content_types),
    )


def _rule_key(rr: _RuleReader, raw: object) -> RuleKey:
    m = rr.mapping(raw, "key")
    rr.only(m, "key.", _KEY_KEYS)
    if not m:
        raise rr.error("key", f"is empty (expected one or more of: {', '.join(_KEY_KEYS)})")
    cookies = rr.strings(m, "cookies", "key.cookies")
    for cookie in cookies:
        if not _COOKIE_NAME.fullmatch(cookie):
            raise rr.error("key.cookies", f"{cookie!r} is not a cookie name")
    return RuleKey(
        drop_query=rr.param_patterns(m, "drop_query", "key.drop_query"),
        keep_query=rr.param_patterns(m, "keep_query", "key.keep_query"),
        sort_query=rr.flag(m, "sort_query", "key.sort_query"),
        headers=rr.field_names(m, "headers", "key.headers"),
        cookies=cookies,
    )


class _Reader:
    """Typed access to a YAML mapping that reports errors as 'file: key: problem'."""

    def __init__(self, source: str, env: Mapping[str, str] | None = None) -> None:
        self.source = source
        self.env = env or {}

    def where(self, key: str) -> str:
        """'environment: VAR (key)' when the key (or the mapping holding it) came from a variable."""
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            var = self.env.get(".".join(parts[:n]))
            if var:
                return f"environment: {var} ({key})"
        return f"{self.source}: {key}"

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {problem}")

    def mapping(self, raw: object, key: str) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise self.error(key or "(top level)", "must be a mapping")
        return raw

    def only(self, m: dict[str, Any], key: str, allowed: set[str]) -> None:
        for k in m:
            if k not in allowed:
                where = f"{key}.{k}" if key else str(k)
                raise self.error(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    @staticmethod
    def _full(section: str, key: str) -> str:
        return f"{section}.{key}" if section else key

    def string(self, m: dict[str, Any], key: str, default: str, section: str = "") -> str:
        v = m.get(key, default)
        if not isinstance(v, str):
            raise self.error(self._full(section, key), "must be a string")
        return v

    def param_patterns(
        self, m: dict[str, Any], key: str, default: tuple[str, ...], section: str = ""
    ) -> tuple[str, ...]:
        """Patterns of query parameter names (param_pattern_problem)."""
        patterns = self.strings(m, key, default, section)
        for pattern in patterns:
            if problem := param_pattern_problem(pattern):
                raise self.error(self._full(section, key), problem)
        return patterns

    def printable(self, m: dict[str, Any], key: str, default: str, section: str = "") -> str:
        """A string of printable characters (config.printable_problem)."""
        v = self.string(m, key, default, section)
        if problem := printable_problem(v):
            raise self.error(self._full(section, key), problem)
        return v

    def strings(
        self, m: dict[str, Any], key: str, default: tuple[str, ...], section: str = ""
    ) -> tuple[str, ...]:
        v = m.get(key, list(default))
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise self.error(self._full(section, key), "must be a list of strings")
        return tuple(v)

    def field_names(
        self, m: dict[str, Any], key: str, default: tuple[str, ...], section: str = ""
    ) -> tuple[str, ...]:
        """A list of header field names. A name is a token (RFC 9110 §5.1): one with a space, a
        colon or a semicolon in it ("X-Forwarded-Host; X-Host") can match no field, and the list
        would silently do nothing (an unkeyed header forwarded, a targeted field ignored)."""
        names = self.strings(m, key, default, section)
        for name in names:
            if not FIELD_NAME.fullmatch(name):
                raise self.error(
                    self._full(section, key),
                    f"{_shown(name)} is not a field name (RFC 9110 §5.1: letters, digits and !#$%&'*+-.^_`|~,"
                    " no spaces; one name per list item)",
                )
        return names

    def boolean(self, m: dict[str, Any], key: str, default: bool, section: str = "") -> bool:
        v = m.get(key, default)
        if not isinstance(v, bool):
            raise self.error(self._full(section, key), "must be true or false")
        return v

    def _number(self, m: dict[str, Any], key: str, default: float, section: str) -> float:
        v = m.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.error(self._full(section, key), "must be a number")
        if not math.isfinite(v):  # YAML's .inf / .nan, or "inf" from the environment
            raise self.error(self._full(section, key), f"must be a finite number, not {v}")
        return float(v)

    def positive(self, m: dict[str, Any], key: str, default: float, section: str = "") -> float:
        """A number of seconds greater than 0 (seconds_problem)."""
        v = self._number(m, key, default, section)
        if problem := seconds_problem(v):
            raise self.error(self._full(section, key), problem)
        return v

    def non_negative(self, m: dict[str, Any], key: str, default: float, section: str = "") -> float:
        """A number of seconds from 0 (seconds_problem)."""
        v = self._number(m, key, default, section)
        if problem := seconds_problem(v, zero=True):
            raise self.error(self._full(section, key), problem)
        return v

    def whole(
        self, m: dict[str, Any], key: str, default: int, low: int, high: int | None, section: str = ""
    ) -> int:
        """A whole number from low to high (None: no upper bound). A count is never a float: 0.5
        connections must not become 0 (every connection refused) by truncation."""
        v = m.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
            span = f"from {low} to {high}" if high is not None else f"of {low} or more"
            raise self.error(self._full(section, key), f"must be a whole number {span}")
        return v

    def fraction(self, m: dict[str, Any], key: str, default: float, section: str = "") -> float:
        v = self._number(m, key, default, section)
        if not 0 <= v <= 1:
            raise self.error(self._full(section, key), "must be between 0 and 1")
        return v

    def size(self, m: dict[str, Any], key: str, default: int, section: str = "") -> int:
        try:
            return parse_size(m.get(key, default))
        except ValueError as exc:
            raise self.error(self._full(section, key), str(exc)) from None

    def choice(
        self,
        m: dict[str, Any],
        key: str,
        default: str,
        allowed: tuple[str, ...],
        section: str = "",
        *,
        upper: bool = False,
    ) -> str:
        v = m.get(key, default)
        if isinstance(v, str) and upper:
            v = v.upper()
        if v not in allowed:
            raise self.error(self._full(section, key), f"{_shown(v)} is not one of: {', '.join(allowed)}")
        return cast(str, v)
