"""Every config key can be set from the environment by one rule, validated like the file."""

from __future__ import annotations

import json
import operator
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from proxy.config import (
    ENV_ALIASES,
    Config,
    ConfigError,
    config_from_mapping,
    env_name,
    load_config,
    settings,
)

# Values other than the defaults, for the keys a generic change cannot make valid.
EXAMPLES: dict[str, object] = {
    "name": "edge-9",
    "listen": "127.0.0.1:9999",
    "origin.url": "http://origin.example:81",
    "origin.host_header": "client",
    "cache.dir": "/var/cache/minicdn",
    "cache.l1.eviction": "lfu",
    "cache.l2.eviction": "fifo",
    "keys.namespace": "v2",
    "keys.ignore_query_params": ["utm_*", "fbclid"],
    "policy.default_ttl": {200: 60, 404: 10},
    "policy.accept_encodings": ["gzip"],
    "policy.invalidate_on_unsafe.methods": ["POST", "PUT"],
    "policy.invalidate_on_unsafe.networks": ["10.0.0.0/8", "fd00::/8"],
    "policy.write_through": ["PUT", "PATCH"],
    "admin.listen": "127.0.0.1:9998",
    "admin.token": "s3cret",
    "admin.purge_networks": ["10.0.0.0/8", "192.168.0.0/16"],
    "log.level": "DEBUG",
    "log.format": "json",
    "compression.types": ["text/html", "application/*+json"],
    "rules": [
        {"name": "api", "match": {"path": "/api/**", "status": [200, 404]}, "ttl": 60, "tags": ["api"]},
        {"name": "me", "match": {"path": "/api/me", "headers": {"X-Debug": True}}, "bypass": True},
    ],
}


def default_of(key: str) -> Any:
    return operator.attrgetter(key)(Config())


def other_value(key: str) -> object:
    """A valid value of `key` that is not its default."""
    if key in EXAMPLES:
        return EXAMPLES[key]
    value = default_of(key)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if isinstance(value, tuple):
        return [*value, "X-Extra"]
    raise AssertionError(f"add an example for {key} ({value!r})")


def as_text(value: object) -> str:
    """How a person writes the value in a variable: lists comma separated, mappings k=v."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return json.dumps(value)  # a list of mappings (rules): YAML or JSON text
    if isinstance(value, list):
        return ",".join(value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def nested(key: str, value: object) -> dict[str, Any]:
    *sections, last = key.split(".")
    out: dict[str, Any] = {last: value}
    for part in reversed(sections):
        out = {part: out}
    return out


ALL_KEYS = [key for key, _ in settings()]


def test_the_rule_covers_every_key_of_the_dataclasses() -> None:
    assert "cache.l1.budget" in ALL_KEYS and "policy.targeted_fields" in ALL_KEYS
    assert env_name("cache.l1.budget") == "MINICDN_CACHE__L1__BUDGET"
    assert env_name("policy.targeted_fields") == "MINICDN_POLICY__TARGETED_FIELDS"
    assert env_name("listen") == "MINICDN_LISTEN"
    assert len(ALL_KEYS) == len(set(map(env_name, ALL_KEYS)))


@pytest.mark.parametrize("key", ALL_KEYS)
def test_every_key_set_from_the_environment_equals_the_file(key: str) -> None:
    value = other_value(key)
    from_env = load_config(environ={env_name(key): as_text(value)})
    from_file = config_from_mapping(nested(key, value), "f.yaml", environ={})
    assert operator.attrgetter(key)(from_env) != default_of(key)
    assert operator.attrgetter(key)(from_env) == operator.attrgetter(key)(from_file)
    assert from_env.env == {key: env_name(key)}


def test_the_examples_of_the_readme() -> None:
    cfg = load_config(
        environ={"MINICDN_CACHE__L1__BUDGET": "128MiB", "MINICDN_POLICY__TARGETED_FIELDS": "a,b"}
    )
    assert cfg.cache.l1.budget == 128 * 1024**2
    assert cfg.policy.targeted_fields == ("a", "b")


@pytest.mark.parametrize(
    ("var", "value", "says"),
    [
        ("MINICDN_LISTEN", "abc", "is not HOST:PORT"),
        ("MINICDN_ADMIN_LISTEN", "abc", "is not HOST:PORT"),
        ("MINICDN_ORIGIN", "gopher://x", "must be an http:// or https:// URL"),
        ("MINICDN_WORKERS", "many", "must be a whole number"),
        ("MINICDN_WORKERS", "-1", "must be a whole number"),
        ("MINICDN_CACHE__L1__BUDGET", "lots", "is not a size"),
        ("MINICDN_CACHE__L2__EVICTION", "random", "is not one of"),
        ("MINICDN_POLICY__STORE_SET_COOKIE", "maybe", "must be true or false"),
        ("MINICDN_POLICY__DEFAULT_TTL", "200", "is not key=value"),
        ("MINICDN_POLICY__DEFAULT_TTL", "700=5", "status codes"),
        # As a key given twice in the file: the first value was silently lost.
        ("MINICDN_POLICY__DEFAULT_TTL", "200=60,404=10,200=5", "'200' is given twice"),
        ("MINICDN_POLICY__HEURISTIC_FRACTION", "2", "between 0 and 1"),
        ("MINICDN_ADMIN__PURGE_NETWORKS", "10.0.0.0/8,nowhere", "is not a network"),
        ("MINICDN_NAME", "1edge", "must start with a letter"),
        # ";" is not the list separator: one name that matched no field, X-Forwarded-Host forwarded.
        (
            "MINICDN_ORIGIN__UNKEYED_REQUEST_HEADERS",
            "X-Forwarded-Host; X-Host",
            "'X-Forwarded-Host; X-Host' is not a field name",
        ),
        ("MINICDN_ORIGIN__READ_TIMEOUT", "nan", "must be a finite number"),
        ("MINICDN_SERVER__MAX_CONNECTIONS", "inf", "must be a whole number"),
        ("MINICDN_POLICY__DEFAULT_TTL", "200=inf", "from 0 to 2147483648"),
    ],
)
def test_an_environment_error_names_the_variable(var: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={var: value})
    message = str(caught.value)
    assert message.startswith(f"environment: {var}"), message
    assert says in message and "command line" not in message


def test_an_error_in_a_file_still_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("cache: {l1: {budget: lots}}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: cache\.l1\.budget: "):
        load_config(path, environ={"MINICDN_CACHE__L2__BUDGET": "1GiB"})


def test_unknown_variables_are_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean MINICDN_CACHE__L1__BUDGET"):
        load_config(environ={"MINICDN_CACHE__L1__BUGDET": "1MiB"})
    with pytest.raises(ConfigError, match="MINICDN_COLOUR: not a setting"):
        load_config(environ={"MINICDN_COLOUR": "red"})
    # Not ours: ignored.
    assert load_config(environ={"MINICDNX": "1", "OTHER_MINICDN_X": "1"}) == Config()


def test_empty_variables_count_as_unset() -> None:
    assert load_config(environ={"MINICDN_LISTEN": "", "MINICDN_ADMIN_TOKEN": ""}) == Config()


def test_environment_over_the_file_and_the_command_line_over_both(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("listen: 127.0.0.1:7000\ncache: {dir: /from/file, l1: {budget: 1MiB}}\n")
    cfg = load_config(path, environ={"MINICDN_LISTEN": "127.0.0.1:7001", "MINICDN_CACHE__DIR": "/env"})
    assert (cfg.listen, cfg.cache.dir, cfg.cache.l1.budget) == ("127.0.0.1:7001", "/env", 1024**2)
    cfg = cfg.with_overrides(listen="127.0.0.1:7002")
    assert cfg.listen == "127.0.0.1:7002" and cfg.where("listen") == "command line: --listen"


@pytest.mark.parametrize(
    "alias", sorted(a for a, key in ENV_ALIASES.items() if not key.startswith("cluster."))
)
def test_aliases_set_the_same_key_as_the_rule(alias: str) -> None:
    key = ENV_ALIASES[alias]
    text = as_text(other_value(key))
    assert load_config(environ={alias: text}) == load_config(environ={env_name(key): text})
    assert load_config(environ={alias: text, env_name(key): text}) == load_config(environ={alias: text})
    with pytest.raises(ConfigError, match=f"{alias} and {env_name(key)}|{env_name(key)} and {alias}"):
        load_config(environ={alias: text, env_name(key): text + "0"})


@pytest.mark.parametrize("token", ["s3cret\n", " s3cret", "s3 cret", "s3cr\u00e9t"])
def test_an_admin_token_no_header_can_carry_is_refused_without_repeating_it(token: str) -> None:
    """Accepted, such a token made every admin call a 401: a header value loses its trailing newline."""
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"MINICDN_ADMIN_TOKEN": token})
    message = str(caught.value)
    assert message.startswith("environment: MINICDN_ADMIN_TOKEN (admin.token): has a space, control or")
    assert "s3" not in message


def test_admin_check_names_the_variable() -> None:
    """A non-loopback admin listener without a token: the message says which variable set it."""
    with pytest.raises(ConfigError, match=r"^environment: MINICDN_ADMIN_LISTEN \(admin\.listen\): "):
        load_config(environ={"MINICDN_ADMIN_LISTEN": "0.0.0.0:9090"})
    cfg = load_config(environ={"MINICDN_ADMIN_LISTEN": "0.0.0.0:9090", "MINICDN_ADMIN_TOKEN": "t"})
    assert cfg.admin.listen == "0.0.0.0:9090"


@pytest.fixture(autouse=True)
def _no_leaks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """These tests pass environ explicitly; MINICDN_CONFIG must not pick a file behind their back."""
    monkeypatch.delenv("MINICDN_CONFIG", raising=False)
    yield
