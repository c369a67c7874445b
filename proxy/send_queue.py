"""How much of what was written to a peer it has not taken yet: the measure of a peer's progress.

A socket turns writable again only once a third of its send buffer is free, so a slow reader's
progress shows in the kernel's send queue long before it shows in the transport's buffer. Both the
front (a client reading an answer: `server.send_timeout`) and the origin client (an origin taking a
request body: `origin.send_timeout`) count a timeout as time without progress, read from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios

# ioctl for the bytes in a socket's send queue (SIOCOUTQ is TIOCOUTQ on Linux); None elsewhere.
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None)


def unsent(transport: asyncio.Transport) -> int:
    """Bytes written to the transport and not yet taken by the peer: the transport's buffer and the
    kernel's send queue (Linux SIOCOUTQ; the transport's buffer alone elsewhere)."""
    size = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None and _OUTQ is not None:
        with contextlib.suppress(OSError, ValueError):
            size += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
    return size


# struct tcp_info's tcpi_snd_wnd (Linux 6.2+): the receive window the peer last advertised.
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
_SND_WND = struct.Struct("=I")
_SND_WND_OFFSET = 228


def peer_window(transport: asyncio.Transport) -> int | None:
    """The receive window the peer last advertised, or None where the kernel does not say.

    Once a whole request body is in the origin's receive buffer, nothing is unsent any more, but
    the origin may still be reading it out; its window grows as it does (it advertises the room
    it made), the one sign of that progress this side of the connection can see."""
    sock = transport.get_extra_info("socket")
    if sock is None or _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _SND_WND_OFFSET + _SND_WND.size)
    except (OSError, ValueError):
        return None
    if len(info) < _SND_WND_OFFSET + _SND_WND.size:
        return None  # an older kernel's shorter tcp_info
    window: int = _SND_WND.unpack_from(info, _SND_WND_OFFSET)[0]
    return window
