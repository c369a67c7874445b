"""The front's flow control towards a client that pipelines and does not read (issue 12 row 4).

Row 4: "10 connections pipeline ~300 KB of GETs for a 16 KB cached object and
never read -> RSS 63 -> 631 MB". What the front must do instead: stop writing
once the transport's buffer is above its high-water mark (pause_writing), stop
reading once a bounded number of parsed requests waits, and, once the client
reads again, answer every request in order.

Real sockets, with the proxy in the test's event loop, so the test sees the
server side of each connection. The client socket is raw and non-blocking:
nothing is read from it until the test reads, unlike a StreamReader, which
reads ahead on its own. Small kernel buffers (both ends) make "how many answers
can be in flight" a number the test can compute.
"""

from __future__ import annotations

import asyncio
import re
import socket

from proxy.front import FEED_SLICE, Connection
from tests.functional.conftest import Proxy

SIZE = 16 * 1024  # the row's 16 KB object
OTHER = 16_000  # every tenth request asks for this one, so the order of the answers shows
REQUESTS = 1_500  # ~69 KB of request heads per connection: several parser slices, one read
CONNECTIONS = 3
KERNEL_BUFFER = 16 * 1024  # SO_RCVBUF of the client, SO_SNDBUF of the server's socket
CONTENT_LENGTH = re.compile(rb"\r\nContent-Length: (\d+)")


def request(i: int) -> bytes:
    n = OTHER if i % 10 == 9 else SIZE
    return b"GET /bytes/%d HTTP/1.1\r\nHost: cdn.example\r\n\r\n" % n


async def connect(proxy: Proxy) -> tuple[socket.socket, Connection]:
    """A raw client socket with a small receive buffer, and the front's Connection for it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, KERNEL_BUFFER)  # before connect: the window
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", proxy.server.port))
    name = sock.getsockname()
    front = proxy.server.listener.front
    for _ in range(200):
        for conn in front.connections:
            if conn.transport is not None and conn.transport.get_extra_info("peername") == name:
                server_sock = conn.transport.get_extra_info("socket")
                server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_BUFFER)
                return sock, conn
        await asyncio.sleep(0.01)
    raise AssertionError("the front never saw the connection")


async def settled(proxy: Proxy) -> int:
    """The number of requests looked up, once it has stopped growing for a while."""
    engine = proxy.server.node.engine
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    last, still = -1, 0
    while still < 6 and loop.time() < deadline:
        await asyncio.sleep(0.05)
        now = engine.stats.requests
        still = still + 1 if now == last else 0
        last = now
    return last


async def read_lengths(sock: socket.socket, count: int) -> list[int]:
    """Read `count` whole responses (200s with a Content-Length) off sock: their lengths, in order."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    pos = 0
    out: list[int] = []
    while len(out) < count:
        end = data.find(b"\r\n\r\n", pos)
        if end >= 0:
            head = bytes(data[pos:end])
            assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head[:80]
            length = int(CONTENT_LENGTH.findall(head)[0])
            if end + 4 + length <= len(data):
                out.append(length)
                pos = end + 4 + length
                continue
        if pos > 1 << 20:
            del data[:pos]  # what is parsed need not stay
            pos = 0
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
        except TimeoutError:
            raise AssertionError(f"no more answers for 5 s after {len(out)} of {count}") from None
        assert chunk, f"the proxy closed the connection after {len(out)} answers"
        data += chunk
    assert pos == len(data), "bytes after the last answer"
    return out


async def test_a_client_that_pipelines_and_never_reads_holds_a_bounded_amount(proxy: Proxy) -> None:
    # Issue 12 row 4.
    loop = asyncio.get_running_loop()
    for n in (SIZE, OTHER):
        resp, body = await proxy.get(f"/bytes/{n}", headers={"Host": "cdn.example"})
        assert resp.status == 200 and len(body) == n
    before = proxy.server.node.engine.stats.requests
    pipelined = b"".join(request(i) for i in range(REQUESTS))
    assert len(pipelined) > 4 * FEED_SLICE  # more than the parser takes at once

    clients = [await connect(proxy) for _ in range(CONNECTIONS)]
    senders = [asyncio.ensure_future(loop.sock_sendall(sock, pipelined)) for sock, _ in clients]
    try:
        answered = await settled(proxy) - before

        # What can be in flight per connection: the two kernel buffers, the transport's buffer up to
        # its high-water mark, and the one answer whose write crossed it.
        in_flight = 0
        for sock, conn in clients:
            transport = conn.transport
            assert transport is not None
            high = transport.get_write_buffer_limits()[1]
            server_sock = transport.get_extra_info("socket")
            kernel = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) + server_sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF
            )
            buffered = transport.get_write_buffer_size()
            assert buffered <= high + SIZE + 1024, (buffered, high)  # writing stopped at the mark
            assert not transport.is_reading()  # and so did reading
            # Parsed and waiting: at most what one parser slice holds (then parsing stops).
            assert len(conn.queue) <= FEED_SLICE // len(request(0)) + 1, len(conn.queue)
            in_flight += (kernel + high) // OTHER + 2
        assert answered <= in_flight, (answered, in_flight)
        assert answered < CONNECTIONS * REQUESTS // 10  # far from all of them

        # Once the client reads, every answer arrives, whole and in order.
        expected = [OTHER if i % 10 == 9 else SIZE for i in range(REQUESTS)]
        for sock, _ in clients:
            assert await read_lengths(sock, REQUESTS) == expected
        await asyncio.gather(*senders)
    finally:
        for task in senders:
            task.cancel()
        for sock, _ in clients:
            sock.close()
