"""The test servers' ports: never one the kernel may hand to an outgoing connection meanwhile."""

from __future__ import annotations

import socket

from tests.functional.conftest import _ephemeral_ports, free_port


def test_free_ports_come_from_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    # A port from bind(0) is an ephemeral one: a connect() between the test's check and the
    # server's bind could take it as its local port, and the server then fails to start.
    low, _ = _ephemeral_ports()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= port < low for port in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # free when handed out
