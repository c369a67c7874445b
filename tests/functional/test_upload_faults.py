"""Uploads that go wrong: an early answer then a reset, a reset mid-body, a body over the limit.

The proxy forwards a request body as it arrives (proxy/front.py, proxy/origin/aiohttp_client.py).
An origin may answer before it has read the body (a 413 or a 401) and close on the rest, which
resets the connection (RFC 9112 §9.6; nginx passes such an answer on). The origin here is a
blocking socket in a thread, not a server in the test's event loop: the loss is a race between
the loop's poll and a write of the body, which an origin in the same loop, writing only between
two of the loop's iterations, never makes the proxy lose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from proxy.config import ServerConfig
from tests.functional.conftest import Origin, Proxy, ProxyFactory

TOO_LARGE = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large"
UPLOAD = 8_000_000  # far more than the sockets' buffers hold: the client is still sending


class ResettingOrigin:
    """Each connection: read the request head and `read_first` bytes of its body, send `answer`
    (nothing, if empty), then close with the rest of the body unread: a TCP reset. `half_close`:
    end its side with a FIN instead, and read the rest of the body to its end."""

    def __init__(self, answer: bytes, read_first: int, *, half_close: bool = False) -> None:
        self.answer = answer
        self.read_first = read_first
        self.half_close = half_close
        self.heads: list[bytes] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # the listener was shut down: the test is over
                return
            with conn, contextlib.suppress(OSError):
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            data = conn.recv(65536)
            if not data:
                return
            received += data
        head, body = received.split(b"\r\n\r\n", 1)
        self.heads.append(head)
        got = len(body)
        while got < self.read_first:
            data = conn.recv(65536)
            if not data:
                return
            got += len(data)
        conn.sendall(self.answer)
        if self.half_close:
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):
                pass
        else:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        self.listener.close()
        self.thread.join(5.0)


@pytest.fixture
def resetting_origin() -> Iterator[type[ResettingOrigin]]:
    made: list[ResettingOrigin] = []

    class Made(ResettingOrigin):
        def __init__(self, answer: bytes, read_first: int, *, half_close: bool = False) -> None:
            super().__init__(answer, read_first, half_close=half_close)
            made.append(self)

    yield Made
    for origin in made:
        origin.close()


async def upload(proxy: Proxy) -> bytes:
    """POST UPLOAD bytes through the proxy as fast as it takes them; what comes back, to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: cdn.example\r\nContent-Length: %d\r\n\r\n" % UPLOAD)
    with contextlib.suppress(ConnectionError):
        for _ in range(UPLOAD // 16_000):
            writer.write(b"u" * 16_000)
            await writer.drain()
    answer = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), 5.0):
            answer += chunk
    writer.close()
    return answer


ROUNDS = 5  # each round loses the answer most of the time without the fix; all five, nearly never


@pytest.mark.parametrize("read_first", [0, 300_000], ids=["at-the-head", "mid-body"])
async def test_rfc9112_s9_6_an_early_answer_then_a_reset_reaches_the_client_and_the_connection_closes(
    start_proxy: ProxyFactory, resetting_origin: type[ResettingOrigin], read_first: int
) -> None:
    """The origin answers 413 and resets the connection on the rest of the body. Before: the
    proxy's next write of the body met the reset, the loop dropped the connection with the
    complete answer unread in its socket, and the client got a 502 "origin connection failed"
    (most times; a reset met first by a read was fine)."""
    origin = resetting_origin(TOO_LARGE, read_first)
    proxy = await start_proxy(origin_url=origin.url)
    for _ in range(ROUNDS):
        answer = await upload(proxy)  # to the close: the proxy closes after the answer
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b"\r\nConnection: close" in head
        assert body == b"too large"
    recorder = proxy.server.node.recorder
    assert recorder.origin.get(("origin", "ok")) == ROUNDS
    assert len(origin.heads) == ROUNDS


async def test_a_reset_during_the_request_body_is_a_502_that_says_so_and_is_counted_as_a_reset(
    start_proxy: ProxyFactory, resetting_origin: type[ResettingOrigin], caplog: pytest.LogCaptureFixture
) -> None:
    """The origin reads part of the body and resets the connection without an answer. Before: a
    502 "origin connection failed", counted and logged as the catch-all cause `failed` (what
    aiohttp's write of the body said, "cannot write to closing transport", was all that was
    known); at times "origin reset the connection", which did not say that a body was on its way."""
    origin = resetting_origin(b"", 300_000)
    proxy = await start_proxy(origin_url=origin.url)
    with caplog.at_level(logging.WARNING, logger="proxy.origin"):
        for _ in range(ROUNDS):
            answer = await upload(proxy)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 502 "), answer[:200]
            assert body == b"origin reset the connection during the request body\n"
    recorder = proxy.server.node.recorder
    assert recorder.origin.get(("origin", "reset")) == ROUNDS
    assert recorder.origin.get(("origin", "failed")) is None
    warning = next(r.getMessage() for r in caplog.records if r.name == "proxy.origin")
    assert warning.endswith("/upload: origin reset the connection during the request body [reset]"), warning


async def test_an_origin_that_closes_during_the_request_body_is_a_502_that_says_so(
    start_proxy: ProxyFactory, resetting_origin: type[ResettingOrigin]
) -> None:
    """The origin reads part of the body, ends its side of the connection without an answer, and
    reads the rest. The 502 says the origin closed the connection while the body was on its way."""
    origin = resetting_origin(b"", 300_000, half_close=True)
    proxy = await start_proxy(origin_url=origin.url)
    answer = await upload(proxy)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 502 "), answer[:200]
    assert body == b"origin closed the connection during the request body\n"
    assert proxy.server.node.recorder.origin.get(("origin", "closed")) == 1


async def test_rfc9110_s15_5_14_a_content_length_over_max_body_size_is_a_413_before_the_origin_is_asked(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    """server.max_body_size (nginx: client_max_body_size). Before: no limit could be set; every
    upload, however large, was streamed to the origin."""
    proxy = await start_proxy(server=ServerConfig(max_body_size=1_000_000))
    answer = await upload(proxy)  # 8 MB declared: refused at the head, the rest read and dropped
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"\r\nConnection: close" in head and body == b"request body too large\n"
    assert await origin.requests("/upload") == []
    async with proxy.request("POST", "/echo", data=b"x" * 1_000_000) as resp:  # at the limit: taken
        assert resp.status == 200
    [posted] = await origin.requests("/echo")
    assert posted["body_length"] == 1_000_000


async def test_a_chunked_body_growing_over_max_body_size_is_a_413(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    """A chunked body says no length up front: it is counted as it arrives, and refused once over."""
    proxy = await start_proxy(server=ServerConfig(max_body_size=100_000))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.server.port)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: cdn.example\r\nTransfer-Encoding: chunked\r\n\r\n")
    with contextlib.suppress(ConnectionError):
        for _ in range(50):
            writer.write(b"4000\r\n" + b"c" * 0x4000 + b"\r\n")  # 16 KiB chunks: 800 KiB in all
            await writer.drain()
        writer.write(b"0\r\n\r\n")
    answer = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), 5.0):
            answer += chunk
    writer.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert answer.endswith(b"request body too large\n")
    assert await origin.requests("/echo") == []  # its request was cut: never a whole body
