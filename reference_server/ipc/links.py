"""Inter-process links: thin I/O around :mod:`reference_server.core.framing`.

Two kinds of channel (see ``docs/architecture.md``):

* **ctl**: one ``SOCK_SEQPACKET`` socketpair between the master and each child,
  made before the fork. It carries connection hand-overs (the socket travels
  with ``SCM_RIGHTS``), readiness, session releases and stop orders. Its EOF
  tells a child that the master is gone.
* **peer**: every child listens on an abstract-namespace Unix stream socket
  named after the server's token and its pid. Any process sends to any other
  through a lazily opened :class:`PeerLinks` connection: pushes, closes,
  tasks, results, pipe messages, RPCs, and migrating sessions, whose socket
  rides with its message (``SCM_RIGHTS`` on the same stream, so it keeps its
  place in the order). Messages from one process to another arrive in the
  order they were sent. The inbox refuses peers of another uid.
"""

from __future__ import annotations

import array
import asyncio
import collections
import errno
import os
import pickle
import select
import socket
import struct
from collections.abc import Callable
from typing import Any

from ..core.framing import Decoder, encode

READ_SIZE = 256 * 1024
_INT = array.array("i")
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


class FdsTruncated(OSError):
    """A ctl message came whole, but the descriptors it carried did not: this process is at its
    open-file limit (the kernel dropped them). ``message`` is the message, to be refused or ignored."""

    def __init__(self, message: Any) -> None:
        super().__init__(errno.EMFILE, "ctl message arrived without its descriptors (open-file limit)")
        self.message = message


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
        raise FdsTruncated(pickle.loads(data))
    return pickle.loads(data), fds


_FDS = "+fds"  # envelope of a message that carries file descriptors
MAX_FDS = 64  # per message: a batch of sessions handed over at once (session/mover.py BATCH_MAX)


class _InboxConn:
    """One incoming link: frames in, and the fds that ride with some of them."""

    __slots__ = ("decoder", "fds", "pid", "sock")

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self.decoder = Decoder()
        self.fds: collections.deque[int] = collections.deque()

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popleft())
        self.sock.close()


class Inbox:
    """A process's peer inbox: ``handler(message, fds)`` for every message, in order per sender.

    Messages sent with descriptors (``PeerLinks.send(..., fds=[...])``) reach
    the handler with those descriptors, made non-inheritable, which it then
    owns. A link that sends garbage is dropped (the others go on); peers of
    another uid are refused.
    """

    def __init__(
        self,
        token: str,
        loop: asyncio.AbstractEventLoop,
        handler: Callable[[Any, list[int]], None],
        on_error: Callable[[str, Exception], None],
    ) -> None:
        self._loop = loop
        self._handler = handler
        self._on_error = on_error
        self._conns: dict[int, _InboxConn] = {}
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.set_inheritable(False)
        self._listener.bind(peer_address(token, os.getpid()))
        self._listener.listen(128)
        self._listener.setblocking(False)
        loop.add_reader(self._listener.fileno(), self._on_accept)

    def _on_accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._on_error("ipc.accept_failed", exc)
                return
            sock.setblocking(False)
            pid, uid, _gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
            if uid != os.getuid():
                self._on_error("ipc.peer_refused", PermissionError(f"peer pid {pid} runs as uid {uid}"))
                sock.close()
                continue
            conn = _InboxConn(sock, pid)
            self._conns[sock.fileno()] = conn
            self._loop.add_reader(sock.fileno(), self._on_readable, conn)

    def _on_readable(self, conn: _InboxConn) -> None:
        try:
            data, ancdata, flags, _ = conn.sock.recvmsg(
                READ_SIZE, socket.CMSG_SPACE(MAX_FDS * _INT.itemsize), socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._on_error("ipc.recv_failed", exc)
            self._drop(conn)
            return
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                passed = array.array("i")
                passed.frombytes(payload[: len(payload) - len(payload) % passed.itemsize])
                for fd in passed:
                    os.set_inheritable(fd, False)
                    conn.fds.append(fd)
        if flags & socket.MSG_CTRUNC:
            self._on_error("ipc.fds_truncated", OSError(errno.EMSGSIZE, "descriptors were cut off"))
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
            return
        try:
            messages = conn.decoder.feed(data)
        except Exception as exc:  # a corrupt stream: drop this link only
            self._on_error("ipc.bad_frame", exc)
            self._drop(conn)
            return
        for message in messages:
            fds: list[int] = []
            if type(message) is tuple and message and message[0] == _FDS:
                _, count, message = message
                if len(conn.fds) < count:
                    self._on_error("ipc.fds_missing", OSError(errno.EBADMSG, f"{count} descriptors announced"))
                    self._drop(conn)
                    return
                fds = [conn.fds.popleft() for _ in range(count)]
            try:
                self._handler(message, fds)
            except Exception as exc:
                self._on_error("ipc.handler_failed", exc)

    def drain_from(self, pid: int) -> None:
        """Read and handle, now, everything process ``pid`` (which has exited) sent us.

        Its data is all in the kernel's buffers: after this, every message it
        ever sent has been handled.
        """
        self._on_accept()
        for conn in [c for c in self._conns.values() if c.pid == pid]:
            while self._conns.get(conn.sock.fileno()) is conn:
                readable, _, _ = select.select([conn.sock], [], [], 0)
                if not readable:
                    break
                self._on_readable(conn)

    def _drop(self, conn: _InboxConn) -> None:
        if self._conns.pop(conn.sock.fileno(), None) is not None:
            self._loop.remove_reader(conn.sock.fileno())
        conn.close()

    def close(self) -> None:
        self._loop.remove_reader(self._listener.fileno())
        self._listener.close()
        for conn in list(self._conns.values()):
            self._drop(conn)


class _Link:
    """One outgoing connection with a write queue.

    The peer never writes on it, so it becomes readable only when the peer
    has gone (EOF): the link is then closed at once, so that links to the
    processes a reload retired do not accumulate.

    The queue holds ``[bytes, fds]`` entries: descriptors go out with the
    first byte of their frame, so the receiver sees them no later than the
    frame itself.
    """

    __slots__ = ("out", "sock", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out: collections.deque[list] = collections.deque()
        self.writing = False


class PeerLinks:
    """Synchronous ``send(pid, message)`` to any process of the server.

    ``send`` never blocks: what the kernel does not take at once is queued
    and written when the socket becomes writable. It returns False when the
    destination cannot be reached (it is gone, or its inbox is not up yet).
    Descriptors passed in ``fds`` must stay open until the receiver has
    them; the receiver gets its own copies.
    """

    def __init__(
        self, token: str, loop: asyncio.AbstractEventLoop, on_gone: Callable[[int], None] | None = None
    ) -> None:
        self._token = token
        self._loop = loop
        self._links: dict[int, _Link] = {}
        self._on_gone = on_gone  # called with a pid whose process has gone (its link hung up)

    def send(self, pid: int, message: Any, fds: list[int] | tuple[int, ...] = ()) -> bool:
        if fds:
            if len(fds) > MAX_FDS:
                raise ValueError(f"at most {MAX_FDS} descriptors per message")
            return self._send(pid, encode((_FDS, len(fds), message)), list(fds))
        return self._send(pid, encode(message), None)

    def _send(self, pid: int, frame: bytes, fds: list[int] | None) -> bool:
        link = self._links.get(pid)
        if link is None:
            link = self._open(pid)
            if link is None:
                return False
        if link.out:
            link.out.append([frame, fds])
            return True
        try:
            sent = self._write(link.sock, frame, fds)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(pid)
            return False
        if sent < len(frame):
            link.out.append([memoryview(frame)[sent:] if sent else frame, fds if not sent else None])
            self._want_write(pid, link)
        return True

    @staticmethod
    def _write(sock: socket.socket, data: bytes, fds: list[int] | None) -> int:
        if fds:
            return sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        return sock.send(data)

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
        self._loop.add_reader(sock.fileno(), self._on_hangup, pid, link)
        return link

    def _on_hangup(self, pid: int, link: _Link) -> None:
        try:
            data = link.sock.recv(1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data and self._links.get(pid) is link:
            self._drop(pid)
            if self._on_gone is not None:
                self._on_gone(pid)

    def _want_write(self, pid: int, link: _Link) -> None:
        if not link.writing:
            link.writing = True
            self._loop.add_writer(link.sock.fileno(), self._flush, pid)

    def _flush(self, pid: int) -> None:
        link = self._links.get(pid)
        if link is None:
            return
        out = link.out
        while out:
            entry = out[0]
            try:
                sent = self._write(link.sock, entry[0], entry[1])
            except BlockingIOError:
                return
            except OSError:
                self._drop(pid)
                return
            if sent < len(entry[0]):
                entry[0] = memoryview(entry[0])[sent:]
                if sent:
                    entry[1] = None
                return
            out.popleft()
        self._loop.remove_writer(link.sock.fileno())
        link.writing = False

    async def drain(self, timeout: float) -> bool:
        """Wait (bounded) until every queued message has been handed to the kernel."""
        deadline = self._loop.time() + timeout
        while any(link.out for link in self._links.values()):
            if self._loop.time() >= deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    def pending_bytes(self) -> int:
        return sum(len(e[0]) for link in self._links.values() for e in link.out)

    def _drop(self, pid: int) -> None:
        link = self._links.pop(pid, None)
        if link is not None:
            if link.writing:
                self._loop.remove_writer(link.sock.fileno())
            self._loop.remove_reader(link.sock.fileno())
            link.sock.close()

    def forget(self, pid: int) -> None:
        """Close the link to a process that exited."""
        self._drop(pid)

    def close(self) -> None:
        for pid in list(self._links):
            self._drop(pid)
