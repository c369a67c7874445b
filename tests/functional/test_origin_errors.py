"""Origin errors say their cause through the proxy: in the 502 body, the Cache-Status detail and the log.

Each client's mapping onto the one table (proxy/origin/errors.py), reason and cause, is checked by
the contract suite (tests/functional/test_origin_contract.py) for both clients.
"""

from __future__ import annotations

import logging
import socket

import pytest

from tests.functional.conftest import ProxyFactory, free_port


@pytest.fixture
def unresolvable() -> str:
    """A name that does not resolve (RFC 6761's .invalid); skipped where the resolver cannot say so."""
    name = "no-such-origin.invalid"
    try:
        socket.getaddrinfo(name, 80)
    except socket.gaierror:
        return name
    pytest.skip(f"{name} resolves here")


async def test_the_proxy_tells_refused_from_dns(
    start_proxy: ProxyFactory, unresolvable: str, caplog: pytest.LogCaptureFixture
) -> None:
    refused = await start_proxy(origin_url=f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, logger="proxy.origin"):
        for _ in range(3):
            resp, body = await refused.get("/max-age/60")
    assert (resp.status, body) == (502, b"origin refused the connection\n")
    assert 'detail="origin refused the connection"' in resp.headers["Cache-Status"]
    # The log says the cause, once for a burst of the same failure (not once per request).
    [warning] = [r.getMessage() for r in caplog.records if r.name == "proxy.origin"]
    assert warning.endswith("/max-age/60: origin refused the connection [refused]"), warning
    dns = await start_proxy(origin_url=f"http://{unresolvable}:8080")
    resp, body = await dns.get("/max-age/60")
    assert (resp.status, body) == (502, b"origin name does not resolve\n")
