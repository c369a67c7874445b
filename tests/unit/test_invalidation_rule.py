"""`policy.invalidate_on_unsafe`: read from the file and the environment, refused with a clear
message when wrong, and applied by `policy.invalidates` (issue 12 row 19).

The config is read by one loader at start and at reload (`minicdn reload` / SIGHUP re-read the
file through `load_config`), so an error here is the error either of them reports.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import config, policy
from proxy.config import ConfigError, InvalidationConfig, load_config
from tests.unit.test_config import clean_env

__all__ = ["clean_env"]  # autouse here too: the developer's MINICDN_* variables stay out


def test_the_default_is_the_rfc_rule() -> None:
    # Issue 12 row 19: every unsafe method, from every client, as before the key existed.
    rule = load_config().policy.invalidate_on_unsafe
    assert rule == InvalidationConfig(("*",), ("0.0.0.0/0", "::/0"))
    for method in ("POST", "PUT", "DELETE", "PATCH", "PURGE", "MKCOL"):
        assert policy.invalidates(method, "203.0.113.9", rule)
        assert policy.invalidates(method, "2001:db8::1", rule)
    for method in ("GET", "HEAD", "OPTIONS", "TRACE"):
        assert not policy.invalidates(method, "203.0.113.9", rule)


def test_file_and_environment(tmp_path: Path) -> None:
    # Issue 12 row 19.
    path = tmp_path / "edge.yaml"
    path.write_text("policy:\n  invalidate_on_unsafe: {methods: [POST, PUT], networks: [10.0.0.0/8]}\n")
    assert load_config(path).policy.invalidate_on_unsafe == InvalidationConfig(
        ("POST", "PUT"), ("10.0.0.0/8",)
    )
    env = {
        "MINICDN_POLICY__INVALIDATE_ON_UNSAFE__METHODS": "POST,DELETE",
        "MINICDN_POLICY__INVALIDATE_ON_UNSAFE__NETWORKS": "192.168.0.0/16,fd00::/8",
    }
    rule = load_config(environ=env).policy.invalidate_on_unsafe
    assert rule == InvalidationConfig(("POST", "DELETE"), ("192.168.0.0/16", "fd00::/8"))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("{methods: [GET]}", "GET is a safe method", id="safe-method"),
        pytest.param("{methods: [post]}", "did you mean 'POST'?", id="lower-case"),
        pytest.param("{methods: ['PO ST']}", "is not a method name", id="not-a-token"),
        pytest.param("{methods: ['*', PURGE]}", "cannot be listed with other methods", id="star-and-more"),
        pytest.param("{methods: POST}", "must be a list of strings", id="not-a-list"),
        pytest.param("{networks: [intranet]}", "'intranet' is not a network like 10.0.0.0/8", id="network"),
        pytest.param("{from: [10.0.0.0/8]}", "unknown key (expected one of: methods, networks)", id="key"),
        pytest.param("[POST]", "must be a mapping", id="not-a-mapping"),
    ],
)
def test_errors_name_the_key_the_file_and_the_reason(tmp_path: Path, text: str, says: str) -> None:
    # Issue 12 row 19: a wrong value stops a start (exit 2) or a reload (the old workers go on).
    path = tmp_path / "edge.yaml"
    path.write_text(f"policy:\n  invalidate_on_unsafe: {text}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: policy.invalidate_on_unsafe"), message
    assert says in message, message


def test_an_environment_error_names_the_variable() -> None:
    # Issue 12 row 19.
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"MINICDN_POLICY__INVALIDATE_ON_UNSAFE__METHODS": "HEAD"})
    assert "MINICDN_POLICY__INVALIDATE_ON_UNSAFE__METHODS" in str(caught.value)
    assert "HEAD is a safe method" in str(caught.value)


def test_methods_and_networks_both_have_to_match() -> None:
    # Issue 12 row 19.
    rule = InvalidationConfig(("POST", "PUT", "DELETE", "PATCH"), ("10.0.0.0/8", "fd00::/8"))
    assert policy.invalidates("PUT", "10.1.2.3", rule)
    assert policy.invalidates("PUT", "::ffff:10.1.2.3", rule)  # an IPv4 client on a dual-stack socket
    assert policy.invalidates("DELETE", "fd00::1%eth0", rule)
    assert not policy.invalidates("PURGE", "10.1.2.3", rule)  # a method not listed
    assert not policy.invalidates("PUT", "192.0.2.1", rule)  # a network not listed
    assert not policy.invalidates("PUT", None, rule)  # no address known: in no network
    assert not policy.invalidates("PUT", "", rule)
    assert not policy.invalidates("PUT", "10.1.2.3", InvalidationConfig((), ("0.0.0.0/0",)))
    assert not policy.invalidates("PUT", "10.1.2.3", InvalidationConfig(("*",), ()))


def test_the_config_knows_the_safe_methods_of_the_policy() -> None:
    # The config cannot import proxy.policy (which imports it); the two lists must agree.
    assert config._SAFE_METHODS == policy.SAFE_METHODS
