"""A flood of connections that never become sessions: bare TCP connects and half-open handshakes.

Each connection is a plain non-blocking socket (no WebSocket client), so the harness can open
thousands. :func:`flood` opens them, ``concurrency`` at a time, each connect bounded by
``connect_timeout``; :func:`classify` then looks, without blocking, at what the target did with
each one that connected: closed it (``shed``: EOF or reset) or still holds it open (``held``).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from dataclasses import dataclass, field

HALF_OPEN_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"  # never finished


@dataclass
class Flood:
    """What happened to the connections of a flood."""

    attempted: int = 0
    connected: int = 0  # the TCP handshake completed (the kernel's backlog may have done it)
    refused: int = 0  # connect refused or reset
    timed_out: int = 0  # connect not done within its bound (a full backlog drops the SYN)
    errors: dict[str, int] = field(default_factory=dict)  # other connect errors, by errno name
    sockets: list[socket.socket] = field(default_factory=list)

    def classify(self) -> dict[str, int]:
        """Of the connected sockets: how many the target closed (shed) and how many are still open (held)."""
        shed = held = 0
        for sock in self.sockets:
            try:
                data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                if data == b"":
                    shed += 1
                else:
                    held += 1  # something came (a 503 answer, say): it is still open until we read the end
            except BlockingIOError:
                held += 1
            except OSError:
                shed += 1
        return {"shed": shed, "held": held}

    def release(self) -> None:
        """Close every socket of the flood (the harness's side)."""
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


async def _one(flood: Flood, host: str, port: int, payload: bytes, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    flood.attempted += 1
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        if payload:
            sock.send(payload)
    except TimeoutError:
        flood.timed_out += 1
        sock.close()
        return
    except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
        flood.refused += 1
        sock.close()
        return
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, repr(exc))
        flood.errors[name] = flood.errors.get(name, 0) + 1
        sock.close()
        return
    flood.connected += 1
    flood.sockets.append(sock)


async def flood(
    host: str, port: int, n: int, *, half_open: bool = False, connect_timeout: float = 2.0, concurrency: int = 128
) -> Flood:
    """Open ``n`` connections (bare, or sending an unfinished upgrade request); keep those that connect."""
    result = Flood()
    payload = HALF_OPEN_REQUEST if half_open else b""
    gate = asyncio.Semaphore(concurrency)

    async def gated() -> None:
        async with gate:
            await _one(result, host, port, payload, connect_timeout)

    await asyncio.gather(*(gated() for _ in range(n)))
    return result
