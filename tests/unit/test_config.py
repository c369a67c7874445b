"""proxy.config: built-in defaults equal to config.yaml's, and every error names its key and its file."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from proxy.config import (
    DEFAULTS_SOURCE,
    CacheConfig,
    Config,
    ConfigError,
    TierConfig,
    config_from_mapping,
    load_config,
    parse_size,
    settings,
)

CONFIG_YAML = Path(__file__).resolve().parents[2] / "config.yaml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The developer's or CI's MINICDN_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("MINICDN_"):
            monkeypatch.delenv(name)
    yield


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_project_config_yaml_holds_the_built_in_defaults() -> None:
    """config.yaml documents the defaults; the code carries them (an installed edge has no file)."""
    cfg = load_config(CONFIG_YAML)
    assert cfg.source == str(CONFIG_YAML)
    # The cluster section is the edge layer's (checked in tests/edge/test_edge_config.py).
    assert replace(cfg, source=Config().source, cluster={}) == Config()


def test_config_yaml_documents_every_key() -> None:
    """Each key of the dataclasses is in config.yaml: set, or shown commented out (`# token:`)."""
    text = CONFIG_YAML.read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    for key, _ in settings():
        *sections, last = key.split(".")
        node = doc
        for part in sections:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            assert re.search(rf"^\s*# {last}:", text, re.MULTILINE), f"{key} is not in config.yaml"


def test_no_file_gives_the_built_in_defaults() -> None:
    cfg = load_config()
    assert cfg == Config() and cfg.source == DEFAULTS_SOURCE


def test_minicdn_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "name: from-file\n")
    monkeypatch.setenv("MINICDN_CONFIG", str(path))
    assert load_config().name == "from-file"
    assert load_config(CONFIG_YAML).name == "edge-1"  # --config wins over the variable
    monkeypatch.setenv("MINICDN_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_config()


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert replace(load_config(path), source=Config().source) == Config()


def test_values_are_loaded(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
name: edge-7
listen: "[::1]:9000"
origin: {url: "https://origin.example/", host_header: client, idle_timeout: 0.5}
cache: {max_object_size: 1MiB, l1: {budget: 64MiB, eviction: random}, l2: {budget: 2GB, eviction: lfu}}
keys: {namespace: v2, sort_query: true, ignore_query_params: [utm_*, fbclid]}
policy:
  default_ttl: {200: 60, 404: 10}
  targeted_fields: [Edge-Cache-Control, CDN-Cache-Control]
  strip_targeted_fields: [Edge-Cache-Control, "{name}-Tier-Control"]
  accept_encodings: [GZIP]
  honour_request_directives: false
""",
    )
    cfg = load_config(path)
    assert cfg.name == "edge-7"
    assert cfg.listen_host_port == ("::1", 9000)
    assert cfg.origin.url == "https://origin.example"
    assert cfg.origin.host_header == "client"
    assert cfg.origin.idle_timeout == 0.5
    assert cfg.cache == CacheConfig(
        max_object_size=1024**2,
        l1=TierConfig(budget=64 * 1024**2, eviction="random"),
        l2=TierConfig(budget=2 * 1000**3, eviction="lfu"),
    )
    assert (cfg.keys.namespace, cfg.keys.sort_query, cfg.keys.ignore_query_params) == (
        "v2",
        True,
        ("utm_*", "fbclid"),
    )
    assert cfg.policy.default_ttl == {200: 60.0, 404: 10.0}
    assert cfg.policy.targeted_fields == ("Edge-Cache-Control", "CDN-Cache-Control")
    assert cfg.policy.strip_targeted_fields == ("Edge-Cache-Control", "{name}-Tier-Control")
    assert cfg.policy.stripped_targeted_fields(cfg.name) == ("Edge-Cache-Control", "edge-7-Tier-Control")
    assert cfg.policy.accept_encodings == ("gzip",)
    assert cfg.policy.honour_request_directives is False


SIZES = [
    pytest.param(0, 0, id="zero"),
    pytest.param(1024, 1024, id="int"),
    pytest.param("100", 100, id="digits"),
    pytest.param("100B", 100, id="bytes"),
    pytest.param("64MiB", 64 * 1024**2, id="MiB"),
    pytest.param("64mib", 64 * 1024**2, id="case-insensitive"),
    pytest.param("10MB", 10 * 1000**2, id="MB"),
    pytest.param("10 MB", 10 * 1000**2, id="space"),
    pytest.param("512k", 512_000, id="k"),
    pytest.param("512KiB", 512 * 1024, id="KiB"),
    pytest.param("1GiB", 1024**3, id="GiB"),
    pytest.param("1.5GiB", 3 * 1024**3 // 2, id="fraction"),
    pytest.param("2T", 2 * 1000**4, id="T"),
]


@pytest.mark.parametrize(("value", "expected"), SIZES)
def test_sizes(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "value", [-1, "-1", True, 1.5, "lots", "64 MiBs", "64PB", "", None, [1], "9" * 400, "9" * 400 + "MiB"]
)
def test_bad_sizes(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


ERRORS = [
    # (YAML text, text the message must contain besides the file name)
    pytest.param("colour: red\n", "colour", id="unknown-top-level-key"),
    pytest.param("policy: {honour_everything: true}\n", "policy.honour_everything", id="unknown-nested-key"),
    pytest.param("cache: {l1: {size: 1}}\n", "cache.l1.size", id="unknown-tier-key"),
    pytest.param("policy: {honour_immutable: 'yes'}\n", "policy.honour_immutable", id="wrong-type-boolean"),
    pytest.param("origin: {read_timeout: soon}\n", "origin.read_timeout", id="wrong-type-number"),
    pytest.param("origin: {connect_timeout: 0}\n", "origin.connect_timeout", id="not-positive"),
    pytest.param("origin: {idle_timeout: 0}\n", "origin.idle_timeout", id="idle-timeout-not-positive"),
    pytest.param("keys: {ignore_query_params: utm_*}\n", "keys.ignore_query_params", id="wrong-type-list"),
    # Patterns match parameter names, which have no "=": in a keep list, "id=*" dropped every
    # parameter from the key, and /item?id=1 and /item?id=2 were one stored object.
    pytest.param(
        "keys: {keep_query_params: ['id=*']}\n",
        "keys.keep_query_params: 'id=*': a pattern matches parameter names, which have no '=' or '&';"
        " did you mean 'id'?",
        id="keep-param-with-value",
    ),
    pytest.param("keys: {ignore_query_params: ['']}\n", "keys.ignore_query_params", id="empty-param-pattern"),
    pytest.param(
        "policy: {heuristic_fraction: 2}\n", "policy.heuristic_fraction", id="fraction-out-of-range"
    ),
    pytest.param("cache: 5\n", "cache", id="section-not-a-mapping"),
    # "" is the current directory: the cache files went wherever the edge was started.
    pytest.param("cache: {dir: ''}\n", "cache.dir: is empty", id="cache-dir-empty"),
    pytest.param("cache: {max_object_size: lots}\n", "cache.max_object_size", id="bad-size"),
    pytest.param("cache: {l1: {budget: -5}}\n", "cache.l1.budget", id="negative-size"),
    pytest.param("cache: {slice_size: 1KiB}\n", "cache.slice_size", id="slice-too-small"),
    pytest.param("cache: {max_object_size: 512KiB}\n", "cache.slice_size", id="slice-larger-than-an-object"),
    pytest.param("cache: {slice_threshold: 512KiB}\n", "cache.slice_threshold", id="slice-threshold"),
    pytest.param("cache: {l2: {eviction: random}}\n", "cache.l2.eviction", id="random-eviction-on-disk-tier"),
    pytest.param("cache: {l1: {eviction: mru}}\n", "cache.l1.eviction", id="unknown-eviction"),
    pytest.param("listen: localhost\n", "listen", id="listen-without-port"),
    pytest.param("listen: '127.0.0.1:70000'\n", "listen", id="listen-port-out-of-range"),
    pytest.param("listen: ':8080'\n", "listen", id="listen-without-host"),
    pytest.param("origin: {url: 'ftp://origin.example'}\n", "origin.url", id="origin-url-scheme"),
    pytest.param("origin: {url: 'not a url'}\n", "origin.url", id="origin-url-not-a-url"),
    pytest.param("origin: {url: 'http://'}\n", "origin.url", id="origin-url-without-host"),
    # Every request's path and query are appended to the origin URL as text: a query took them in
    # ("/?v=1/page" on https; the http client's ValueError in every worker at start), userinfo went
    # nowhere (and into Host), a space or a newline ended the request line.
    pytest.param("origin: {url: 'https://o.example/?v=1'}\n", "origin.url", id="origin-url-query"),
    pytest.param("origin: {url: 'http://o.example/#top'}\n", "origin.url", id="origin-url-fragment"),
    pytest.param("origin: {url: 'http://u:pw@o.example'}\n", "origin.url", id="origin-url-userinfo"),
    pytest.param("origin: {url: 'http://@o.example'}\n", "origin.url", id="origin-url-empty-userinfo"),
    pytest.param("origin: {url: 'http://o.example/a b'}\n", "origin.url", id="origin-url-space"),
    pytest.param('origin: {url: "http://o.example\\n:81"}\n', "origin.url", id="origin-url-newline"),
    pytest.param("origin: {url: 'http://o%0d%0a.example'}\n", "origin.url", id="origin-url-encoded-host"),
    pytest.param("origin: {host_header: proxy}\n", "origin.host_header", id="bad-choice"),
    pytest.param(
        "policy: {default_ttl: {abc: 5}}\n", "policy.default_ttl.abc", id="default-ttl-status-not-int"
    ),
    pytest.param(
        "policy: {default_ttl: {700: 5}}\n", "policy.default_ttl.700", id="default-ttl-status-range"
    ),
    pytest.param("policy: {default_ttl: {200: -1}}\n", "policy.default_ttl.200", id="default-ttl-negative"),
    pytest.param(  # two YAML keys, one status: one value silently replaced the other
        "policy: {default_ttl: {200: 60, '200': 5}}\n",
        "status 200 is given twice",
        id="default-ttl-status-twice",
    ),
    pytest.param(
        "policy: {default_ttl: {200: forever}}\n", "policy.default_ttl.200", id="default-ttl-not-number"
    ),
    pytest.param(
        "policy: {accept_encodings: [identity]}\n", "policy.accept_encodings", id="accept-encoding-name"
    ),
    pytest.param(
        "policy: {strip_targeted_fields: true}\n", "policy.strip_targeted_fields", id="strip-was-a-switch"
    ),
    pytest.param(
        "policy: {strip_targeted_fields: [Edge Control]}\n",
        "policy.strip_targeted_fields",
        id="strip-not-a-name",
    ),
    # RFC 9110 §5.1: a field name is a token. A name with a space, a colon or ";" in it matches no
    # field: the list silently did nothing (an unkeyed header forwarded, a targeted field ignored).
    pytest.param(
        "origin: {unkeyed_request_headers: ['X-Forwarded-Host:']}\n",
        "origin.unkeyed_request_headers: 'X-Forwarded-Host:' is not a field name",
        id="unkeyed-header-not-a-name",
    ),
    pytest.param(
        "policy: {targeted_fields: [CDN Cache-Control]}\n",
        "policy.targeted_fields: 'CDN Cache-Control' is not a field name",
        id="targeted-field-not-a-name",
    ),
    pytest.param(
        "policy: {tag_fields: ['Surrogate-Key, Cache-Tag']}\n",
        "policy.tag_fields: 'Surrogate-Key, Cache-Tag' is not a field name",
        id="tag-field-not-a-name",
    ),
    pytest.param("policy: {targeted_fields: ['']}\n", "policy.targeted_fields", id="empty-field-name"),
    # A namespace goes into every key: an invisible character keyed everything apart from a
    # neighbour's "v2" with nothing on screen to say why.
    pytest.param(
        "keys:\n  namespace: |\n    v2\n",
        "keys.namespace: 'v2\\n' has a control or separator character",
        id="namespace-trailing-newline",
    ),
    pytest.param('keys: {namespace: "v2\\u200b"}\n', "keys.namespace", id="namespace-zero-width-space"),
    pytest.param("name: '1 edge'\n", "name", id="bad-name"),
    pytest.param("log: {level: LOUD}\n", "log.level", id="bad-log-level"),
    pytest.param("name: [unclosed\n", "not valid YAML", id="invalid-yaml"),
    # Numbers that are not finite, and counts that are not whole: refused, not a traceback
    # (int(inf)) nor accepted to misbehave (NaN timeouts; 0.5 connections truncated to 0).
    pytest.param("origin: {connect_timeout: .nan}\n", "origin.connect_timeout", id="nan-timeout"),
    pytest.param("drain_timeout: .inf\n", "drain_timeout", id="inf-seconds"),
    pytest.param(
        "origin: {read_timeout: 1.0e+10}\n", "origin.read_timeout: must be at most", id="seconds-past-2**31"
    ),
    pytest.param("server: {max_connections: .inf}\n", "server.max_connections", id="inf-count"),
    pytest.param("origin: {max_connections: .nan}\n", "origin.max_connections", id="nan-count"),
    pytest.param("server: {max_connections: 0.5}\n", "server.max_connections", id="count-truncated-to-0"),
    pytest.param("cache: {l2_write_batch: 0.5}\n", "cache.l2_write_batch", id="batch-truncated-to-0"),
    pytest.param("policy: {default_ttl: {200: .inf}}\n", "policy.default_ttl.200", id="default-ttl-inf"),
    pytest.param(
        "policy: {default_ttl: {200: 1.0e+20}}\n", "policy.default_ttl.200", id="default-ttl-past-2**31"
    ),
    pytest.param("cache: {max_object_size: '" + "9" * 400 + "'}\n", "cache.max_object_size", id="size-inf"),
]


@pytest.mark.parametrize(("text", "key"), ERRORS)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert key in message


@pytest.mark.timeout(5)  # without the bound, building the message runs for minutes
@pytest.mark.parametrize("key", ["log: {level: *x}", "cache: {max_object_size: *x}"])
def test_a_value_of_yaml_aliases_nested_a_billion_strings_deep_is_named_at_once(
    tmp_path: Path, key: str
) -> None:
    """A few lines of aliases expand to 10**9 strings: the error's repr() of them never finished."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = "origin_stub:\n" + "".join(f"  {line}\n" for line in lines) + key.replace("*x", "*a8") + "\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert len(str(caught.value)) < len(str(path)) + 300


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    """A Latin-1 file was a UnicodeDecodeError traceback at start, and a reload that never answered."""
    path = tmp_path / "edge.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: not UTF-8 text (byte 0xe9 at offset 9)"


def test_a_key_given_twice_is_named_not_silently_replaced(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: a second `cache:` section replaced the first whole
    (its budget gone without a word). Keys are unique in YAML; the second is an error."""
    path = tmp_path / "edge.yaml"
    path.write_text("cache:\n  l1: {budget: 1MiB}\nname: a\ncache:\n  dir: /tmp/x\n")
    with pytest.raises(ConfigError, match=r"the key 'cache' is given twice \(also at line 1\)"):
        load_config(path, {})
    path.write_text("origin:\n  url: http://a:1\n  url: http://b:1\n")
    with pytest.raises(ConfigError, match="the key 'url' is given twice"):
        load_config(path, {})
    with pytest.raises(ConfigError, match="the key 'name' is given twice"):
        load_config(None, {"MINICDN_RULES": "[{name: a, name: b, match: {path: /x}, ttl: 1}]"})
    # A merge key (<<) may be overridden: not a duplicate.
    path.write_text(
        "rules:\n  - &api {name: api, match: {path: /api/*}, ttl: 60}\n  - <<: *api\n    name: api2\n"
    )
    assert [r.name for r in load_config(path, {}).rules] == ["api", "api2"]


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match=r"nowhere\.yaml"):
        load_config(path)


def test_l1_accepts_random_eviction() -> None:
    cfg = config_from_mapping({"cache": {"l1": {"eviction": "random"}}})
    assert cfg.cache.l1.eviction == "random"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINICDN_NAME", "edge-9")
    monkeypatch.setenv("MINICDN_LISTEN", "0.0.0.0:9999")
    monkeypatch.setenv("MINICDN_ORIGIN", "http://origin.example:81/")
    monkeypatch.setenv("MINICDN_CACHE_DIR", "/tmp/c")
    cfg = config_from_mapping({})
    assert (cfg.name, cfg.listen, cfg.origin.url, cfg.cache.dir) == (
        "edge-9",
        "0.0.0.0:9999",
        "http://origin.example:81",
        "/tmp/c",
    )


def test_slicing_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINICDN_CACHE__SLICE_SIZE", "4MiB")
    monkeypatch.setenv("MINICDN_CACHE__SLICE_THRESHOLD", "64MiB")
    cfg = config_from_mapping({"cache": {"max_object_size": "16MiB"}})
    assert (cfg.cache.slice_size, cfg.cache.slice_threshold) == (4 * 1024**2, 64 * 1024**2)
    monkeypatch.setenv("MINICDN_CACHE__SLICE_SIZE", "0")
    assert config_from_mapping({"cache": {"max_object_size": "512KiB"}}).cache.slice_size == 0  # off
    monkeypatch.setenv("MINICDN_CACHE__SLICE_SIZE", "32MiB")
    with pytest.raises(ConfigError, match="MINICDN_CACHE__SLICE_SIZE"):
        config_from_mapping({})  # above max_object_size


@pytest.mark.parametrize("value", ["1edge", "edge 1", "\u00e9dge", "edge;hit"])
def test_environment_name_is_validated(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """The name becomes the Cache-Status member: an env override must pass the file's check."""
    monkeypatch.setenv("MINICDN_NAME", value)
    with pytest.raises(ConfigError, match="MINICDN_NAME"):
        config_from_mapping({})


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"listen": "nope"}, "--listen"),
        ({"origin": "gopher://x"}, "--origin"),
        ({"origin": "http://o.example/?v=1"}, "--origin"),
        ({"cache_dir": ""}, "--cache-dir: is empty"),  # `--cache-dir "$UNSET"`
    ],
    ids=["listen", "origin", "origin-with-query", "cache-dir-empty"],
)
def test_command_line_overrides_are_validated(overrides: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Config().with_overrides(**overrides)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"admin_listen": "0.0.0.0:9090"}, "command line: --admin-listen: '0.0.0.0:9090' is not a loopback"),
        (
            {"listen": "127.0.0.1:9090", "admin_listen": "127.0.0.1:9090"},
            "command line: --admin-listen: '127.0.0.1:9090' is the public listen address",
        ),
    ],
    ids=["no-token", "public-port"],
)
def test_an_admin_listen_from_the_command_line_is_blamed_on_it(overrides: dict[str, str], says: str) -> None:
    """README: a bad value names the key and where it was set; `--admin-listen 0.0.0.0:...` was
    reported as "built-in defaults: admin.listen" (or the config file's, which did not set it)."""
    with pytest.raises(ConfigError) as error:
        Config().with_overrides(**overrides)
    assert str(error.value).startswith(says), error.value


@pytest.mark.parametrize("source", ["file", "override"])
def test_origin_url_trailing_slash_removed(source: str) -> None:
    """Upstream appends the request path to the origin URL: a kept "/" would send "//path"."""
    if source == "file":
        cfg = config_from_mapping({"origin": {"url": "http://origin.example:81/"}})
    else:
        cfg = Config().with_overrides(origin="http://origin.example:81/")
    assert cfg.origin.url == "http://origin.example:81"


def test_an_origin_url_with_a_path_prefixes_every_request() -> None:
    """A path is kept (the origin clients put it before each request's target); only its last "/" goes."""
    cfg = config_from_mapping({"origin": {"url": "http://[::1]:81/base/"}}, "f", {})
    assert cfg.origin.url == "http://[::1]:81/base"
