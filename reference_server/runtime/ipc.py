"""Inter-process links: thin I/O around :mod:`reference_server.core.framing`.

Two kinds of channel (see ``docs/architecture.md``):

* **ctl**: one ``SOCK_SEQPACKET`` socketpair between the master and each child,
  made before the fork. It carries connection hand-overs (the socket travels
  with ``SCM_RIGHTS``), readiness, session releases and stop orders. Its EOF
  tells a child that the master is gone.
* **peer**: every child listens on an abstract-namespace Unix stream socket
  named after the server's token and its pid. Any process sends to any other
  through a lazily opened :class:`PeerLinks` connection: pushes, closes,
  tasks, results, pipe messages and RPCs. Messages from one process to another
  arrive in the order they were sent. The inbox refuses peers of another uid.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any

from ..core.framing import Decoder, encode

CTL_MAX = 60 * 1024  # a ctl message must fit one SEQPACKET datagram
_PEERCRED = struct.Struct("3i")


def peer_address(token: str, pid: int) -> str:
    return f"\0refsrv.{token}.{pid}"


def ctl_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.set_inheritable(False)
    return a, b


def ctl_encode(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > CTL_MAX:
        raise ValueError(f"ctl message of {len(data)} bytes exceeds {CTL_MAX}")
    return data


def ctl_recv(sock: socket.socket) -> tuple[Any, list[int]] | None:
    """Receive one ctl message and any fds with it; None on EOF.

    Received fds are made non-inheritable here (``recv_fds`` ignores its
    flags on Python 3.11, CPython gh-107898).
    """
    data, fds, flags, _ = socket.recv_fds(sock, CTL_MAX, 16)
    for fd in fds:
        os.set_inheritable(fd, False)
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise OSError(errno.EMSGSIZE, "ctl message arrived with truncated fds")
    return pickle.loads(data), fds


class _InboxProtocol(asyncio.Protocol):
    def __init__(self, handler: Callable[[Any], None], on_error: Callable[[str, Exception], None]) -> None:
        self._handler = handler
        self._on_error = on_error
        self._decoder = Decoder()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid != os.getuid():
            self._on_error("ipc.peer_refused", PermissionError(f"peer pid {pid} runs as uid {uid}"))
            transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except Exception as exc:  # a corrupt stream: drop this link only
            self._on_error("ipc.bad_frame", exc)
            assert self._transport is not None
            self._transport.abort()
            return
        for message in messages:
            try:
                self._handler(message)
            except Exception as exc:
                self._on_error("ipc.handler_failed", exc)


async def start_inbox(
    token: str,
    handler: Callable[[Any], None],
    on_error: Callable[[str, Exception], None],
) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(
        lambda: _InboxProtocol(handler, on_error), path=peer_address(token, os.getpid())
    )


class _Link:
    """One outgoing connection with a write buffer; never reads."""

    __slots__ = ("buf", "sock", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.writing = False


class PeerLinks:
    """Synchronous ``send(pid, message)`` to any process of the server.

    ``send`` never blocks: what the kernel does not take at once is buffered
    and written when the socket becomes writable. It returns False when the
    destination cannot be reached (it is gone, or its inbox is not up yet).
    """

    def __init__(self, token: str, loop: asyncio.AbstractEventLoop) -> None:
        self._token = token
        self._loop = loop
        self._links: dict[int, _Link] = {}

    def send(self, pid: int, message: Any) -> bool:
        return self.send_raw(pid, encode(message))

    def send_raw(self, pid: int, frame: bytes) -> bool:
        link = self._links.get(pid)
        if link is None:
            link = self._open(pid)
            if link is None:
                return False
        if link.buf:
            link.buf += frame
            return True
        try:
            sent = link.sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(pid)
            return False
        if sent < len(frame):
            link.buf += frame[sent:]
            self._want_write(pid, link)
        return True

    def _open(self, pid: int) -> _Link | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(1.0)  # a Unix connect completes at once or fails
            sock.connect(peer_address(self._token, pid))
            sock.setblocking(False)
        except OSError:
            sock.close()
            return None
        link = _Link(sock)
        self._links[pid] = link
        return link

    def _want_write(self, pid: int, link: _Link) -> None:
        if not link.writing:
            link.writing = True
            self._loop.add_writer(link.sock.fileno(), self._flush, pid)

    def _flush(self, pid: int) -> None:
        link = self._links.get(pid)
        if link is None:
            return
        try:
            sent = link.sock.send(link.buf)
        except BlockingIOError:
            return
        except OSError:
            self._drop(pid)
            return
        del link.buf[:sent]
        if not link.buf:
            self._loop.remove_writer(link.sock.fileno())
            link.writing = False

    def pending_bytes(self) -> int:
        return sum(len(link.buf) for link in self._links.values())

    def _drop(self, pid: int) -> None:
        link = self._links.pop(pid, None)
        if link is not None:
            if link.writing:
                self._loop.remove_writer(link.sock.fileno())
            link.sock.close()

    def forget(self, pid: int) -> None:
        """Close the link to a process that exited."""
        self._drop(pid)

    def close(self) -> None:
        for pid in list(self._links):
            self._drop(pid)
