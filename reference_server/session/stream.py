"""A non-blocking TCP socket on the event loop that can be let go of.

asyncio's transports own their socket and their write buffer; neither can be
taken out intact. A migrated session needs exactly that: stop reading, take
the unsent bytes and the socket, and leave the process without closing
anything (closing is what would send the client a FIN). :class:`SocketStream`
is the smallest byte pipe that allows it:

* reading: ``loop.add_reader``, ``recv`` into the receiver's ``on_data``;
  an empty read is ``on_eof``;
* writing: ``send`` at once, the rest queued and written when writable,
  several queued chunks per system call (``sendmsg``), so frames that pile up
  behind a slow socket leave in few writes;
* ``discard_queued()``: drop what is queued (a slow consumer being closed),
  keeping only the rest of a half-written chunk, so a close frame can follow;
* ``close()``: shut down after the queue drains; ``abort()``: at once;
  either way ``on_lost`` is called exactly once;
* ``detach()``: unregister from the loop and return the socket and the
  unsent bytes; the stream is then inert and ``on_lost`` is never called.

A stream built with ``pending`` (the unsent bytes a previous owner carried
over) writes them before anything else.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import socket
from typing import Protocol

READ_SIZE = 256 * 1024
WRITEV_MAX = 64  # chunks per sendmsg (well under IOV_MAX)


class StreamReceiver(Protocol):
    def on_data(self, data: bytes) -> None: ...
    def on_eof(self) -> None: ...
    def on_lost(self, exc: Exception | None) -> None: ...


class SocketStream:
    __slots__ = (
        "_closing",
        "_done",
        "_fd",
        "_head_partial",
        "_loop",
        "_out",
        "_out_size",
        "_reading",
        "_receiver",
        "_writing",
        "sock",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        receiver: StreamReceiver,
        pending: list[bytes] | None = None,
    ) -> None:
        self._loop = loop
        self.sock = sock
        self._fd = sock.fileno()
        self._receiver = receiver
        self._out: collections.deque[bytes] = collections.deque(pending or ())
        self._out_size = sum(len(b) for b in self._out)
        self._head_partial = False  # the first queued chunk is the rest of a half-sent write
        self._reading = False
        self._writing = False
        self._closing = False
        self._done = False

    # -- state ------------------------------------------------------------------

    @property
    def is_closing(self) -> bool:
        return self._closing or self._done

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet taken by the kernel."""
        return self._out_size

    # -- reading ----------------------------------------------------------------

    def start(self) -> None:
        """Begin reading (and writing what was carried over)."""
        if self._done:
            return
        self._reading = True
        self._loop.add_reader(self._fd, self._on_readable)
        if self._out:
            self._want_write()

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(exc)
            return
        if data:
            self._receiver.on_data(data)
        else:
            self.pause_reading()
            self._receiver.on_eof()

    # -- writing ----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._closing or self._done or not data:
            return
        if not self._out:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._finish(exc)
                return
            if sent == len(data):
                return
            if sent:
                self._head_partial = True
            data = data[sent:]
        self._out.append(data)
        self._out_size += len(data)
        self._want_write()

    def _want_write(self) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        """Write what is queued, up to :data:`WRITEV_MAX` chunks per system call (``sendmsg``)."""
        out = self._out
        while out:
            chunks = list(itertools.islice(out, WRITEV_MAX)) if len(out) > 1 else [out[0]]
            try:
                sent = self.sock.sendmsg(chunks) if len(chunks) > 1 else self.sock.send(chunks[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._finish(exc)
                return
            self._out_size -= sent
            for chunk in chunks:
                if sent >= len(chunk):
                    sent -= len(chunk)
                    out.popleft()
                    self._head_partial = False
                    continue
                if sent:
                    out[0] = chunk[sent:]
                    self._head_partial = True
                return  # the kernel took less than offered: wait for the next writable event
        self._writing = False
        self._loop.remove_writer(self._fd)
        if self._closing:
            self._finish(None)

    def discard_queued(self) -> int:
        """Drop the queued bytes, except the rest of a chunk already half written; return how many.

        Queued chunks hold whole frames, so what is left ends on a frame boundary
        and a close frame can follow it.
        """
        out = self._out
        keep = out[0] if out and self._head_partial else None
        dropped = self._out_size - (len(keep) if keep is not None else 0)
        out.clear()
        if keep is not None:
            out.append(keep)
        self._out_size -= dropped
        return dropped

    # -- ending -------------------------------------------------------------------

    def close(self) -> None:
        """Close once everything queued is written (the FIN follows the data)."""
        if self._closing or self._done:
            return
        self._closing = True
        self.pause_reading()
        if not self._out:
            self._finish(None)

    def abort(self) -> None:
        """Close now, dropping what is queued."""
        if not self._done:
            self._finish(None)

    def _finish(self, exc: Exception | None) -> None:
        if self._done:
            return
        self._unregister()
        self._done = True
        self._out.clear()
        self._out_size = 0
        self.sock.close()
        self._loop.call_soon(self._receiver.on_lost, exc)

    def _unregister(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    def detach(self) -> tuple[socket.socket, list[bytes]]:
        """Let go of the socket without closing it; return it and the unsent bytes."""
        if self._done:
            raise RuntimeError("the stream is closed")
        self._unregister()
        self._done = True
        out = list(self._out)
        self._out.clear()
        self._out_size = 0
        return self.sock, out
