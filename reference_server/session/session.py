"""One WebSocket session in its owner worker: thin I/O around websockets' Sans-I/O core.

The protocol state machine (handshake, framing, masking, ping/pong, the close
handshake, size limits, protocol errors) is ``websockets.server.ServerProtocol``.
This class only moves bytes between it and a :class:`SocketStream`, assembles
fragmented messages, and tells the worker what happened (open, message,
close) through a :class:`SessionHost`.

Everything that makes up the session besides the socket is plain data, so a
session can be *detached* (:meth:`Session.detach`, giving the socket and a
:class:`SessionSnapshot`) and *restored* in another process
(:meth:`Session.restore`), which is what migration does:

* bytes read but not parsed: the :class:`FrameSplitter` only hands whole
  frames to the parser, so they are exactly ``splitter.pending``;
* the parser's state between frames: ``current_size`` of an unfinished
  fragmented message;
* the fragments of that message received so far, and its opcode;
* bytes queued for the client and not yet written;
* the keepalive ping in flight, and when data was last received.

Only an established, open session whose output is not a half-sent frame can
be detached; the runtime checks :attr:`Session.movable` first.

Close causes (logged with the close code on ``session.close``):
``client`` (the client sent a close frame), ``server`` (``close()`` was
called; the reason says who), ``reset`` (the TCP connection ended without a
close handshake), ``protocol_error``, ``handshake_failed``,
``handshake_timeout``, ``close_timeout`` (the client did not answer our close
frame in time), ``refused`` (the handshake was answered with an HTTP 503 on
the master's word: the port was at its connection limit, or removed),
``slow_consumer`` (closed with 4429: more output waited to be written than
``output_buffer_bytes``, or more broadcast output than ``broadcast_buffer_bytes``;
what was queued is dropped and the close frame follows whole frames).

A session's broadcast channels (:attr:`Session.channels`: channel -> the
position of the last message it was given) are part of the snapshot too; the
worker's :class:`~.channels.Channels` owns what they mean.

A session serves the handler set of the port it came in through
(:attr:`Session.handler`, a number of ``Application.handler_table``); it is
part of the snapshot, so it stays the same across migrations and reloads.

Per-message deflate is never negotiated: its compression context could not
move with a migrated socket (contract section 6).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from typing import Protocol as TypingProtocol

from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..core.wsframes import FrameSplitter, Mode
from ..errors import CloseCode
from .stream import SocketStream

_QUIET = logging.getLogger("reference_server.websockets")
_QUIET.setLevel(logging.ERROR)
_QUIET.propagate = False


class CloseCause(StrEnum):
    """Why a session ended, as logs and counters name it (``Session.close_cause``)."""

    NONE = ""
    SERVER = "server"  # the application or the admin API closed it
    CLIENT = "client"  # the client sent its close frame first
    RESET = "reset"  # the TCP connection ended without a closing handshake
    HANDSHAKE_FAILED = "handshake_failed"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    CLOSE_TIMEOUT = "close_timeout"  # the client did not answer our close frame in time
    PROTOCOL_ERROR = "protocol_error"
    REFUSED = "refused"  # answered HTTP 503 (a port's limit, or no room)
    HEARTBEAT = "heartbeat"
    KEEPALIVE = "keepalive"
    SLOW_CONSUMER = "slow_consumer"
    SHUTDOWN = "shutdown"
    RETIRE = "retire"  # a reload retired its worker
    RETIRE_BUDGET = "retire budget"  # still open when the retiring worker's time ran out


class SessionPhase(enum.Enum):
    """Where a session is in its life (this process's view); the flags of :class:`Session` follow from it.

    ``CONNECTING`` -> ``OPEN`` (the 101 is sent) -> ``CLOSING`` (a close frame sent or
    received, or ``close()`` before the handshake) -> ``LOST`` (the connection is gone).
    Any of the first three may go to ``LOST`` at once. ``OPEN`` -> ``DETACHED`` while a move
    carries the socket away, and back to ``OPEN`` if the move fails.
    """

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    LOST = "lost"
    DETACHED = "detached"


class SessionHost(TypingProtocol):
    """What a session needs from its worker."""

    def session_opened(self, session: Session, request: Request) -> None: ...
    def session_message(self, session: Session, data: str | bytes) -> None: ...
    def session_closing(self, session: Session) -> None: ...
    def session_lost(self, session: Session) -> None: ...
    def session_activity(self, session: Session, now: float) -> None: ...


@dataclass
class SessionSnapshot:
    """A detached session's state: everything but the socket (picklable)."""

    sid: int
    rx_pending: bytes
    tx_pending: list[bytes]
    current_size: int | None
    fragments: list[bytes] | None
    fragment_opcode: int | None
    ping_payload: bytes | None
    ping_sent_at: float
    last_recv: float  # time.monotonic(), which is system-wide on Linux
    app_state: Any = None
    handler: int = 0  # the handler set it serves
    channels: dict[str, int] | None = None  # broadcast channel -> last position given


class Session:
    def __init__(
        self,
        sid: int,
        host: SessionHost,
        *,
        max_message_size: int,
        close_timeout: float,
        handshake_timeout: float,
        handler: int = 0,
        refuse: tuple[int, str, str] | None = None,
        max_output_bytes: int = 0,
    ) -> None:
        self.sid = sid
        #: More than this queued to be written (a client that does not read): closed with 4429. 0: no bound.
        self.max_output_bytes = max_output_bytes
        self.handler = handler
        self.refuse = refuse  # (code, name, message): answer the handshake 503 with it
        self.host = host
        self.max_message_size = max_message_size
        self.proto = ServerProtocol(max_size=max_message_size, logger=_QUIET)
        self.splitter = FrameSplitter(max_frame=max_message_size)
        self.stream: SocketStream | None = None
        self.close_timeout = close_timeout
        self.phase = SessionPhase.CONNECTING
        #: The WebSocket handshake completed (stays true once it did, closing or not).
        self.established = False
        self.close_cause = CloseCause.NONE
        self.close_code: int | None = None
        self.close_reason = ""
        self.last_recv = time.monotonic()
        self.ping_payload: bytes | None = None
        self.ping_sent_at = 0.0
        self._fragments: list[bytes] | None = None
        self._fragment_opcode: Opcode | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handshake_timeout = handshake_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self.channels: dict[str, int] = {}  # broadcast: channel -> last position given
        self.catching: set[str] = set()  # channels waiting for a catch-up answer

    # -- attaching ----------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        """Start serving a freshly accepted connection (the handshake comes first)."""
        self._loop = loop
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stream = SocketStream(loop, sock, self)
        self._timer = loop.call_later(self._handshake_timeout, self._on_handshake_timeout)
        self.stream.start()

    @classmethod
    def restore(
        cls,
        snap: SessionSnapshot,
        host: SessionHost,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        *,
        max_message_size: int,
        close_timeout: float,
        handshake_timeout: float,
        max_output_bytes: int = 0,
    ) -> Session:
        """Adopt a session another process detached; it resumes reading at once.

        Nothing is written or read until :meth:`resume`, so the caller can
        finish its bookkeeping first.
        """
        self = cls(
            snap.sid,
            host,
            max_message_size=max_message_size,
            close_timeout=close_timeout,
            handshake_timeout=handshake_timeout,
            handler=snap.handler,
            max_output_bytes=max_output_bytes,
        )
        self._loop = loop
        self.proto = ServerProtocol(state=State.OPEN, max_size=max_message_size, logger=_QUIET)
        self.proto.current_size = snap.current_size
        self.splitter = FrameSplitter(max_frame=max_message_size, mode=Mode.FRAMES, pending=snap.rx_pending)
        self.established = True
        self.phase = SessionPhase.OPEN
        self._fragments = list(snap.fragments) if snap.fragments is not None else None
        self._fragment_opcode = Opcode(snap.fragment_opcode) if snap.fragment_opcode is not None else None
        self.ping_payload = snap.ping_payload
        self.ping_sent_at = snap.ping_sent_at
        self.last_recv = snap.last_recv
        self.channels = dict(snap.channels or {})
        self.stream = SocketStream(loop, sock, self, pending=snap.tx_pending)
        return self

    def resume(self) -> None:
        """Start (or restart) reading and writing after :meth:`restore` or a failed move."""
        assert self.stream is not None
        self.phase = SessionPhase.OPEN
        self.stream.start()
        if self.splitter.pending:
            self.on_data(b"")  # a carried-over frame may already be complete (it never is today)

    @property
    def movable(self) -> bool:
        """True when :meth:`detach` would capture the whole session."""
        return self.is_open and self.stream is not None and not self.stream.is_closing and not self.proto.writes

    def detach(self) -> tuple[socket.socket, SessionSnapshot]:
        """Stop all I/O and hand over the socket and the state; see the module docstring."""
        assert self.stream is not None and self.movable
        sock, tx_pending = self.stream.detach()
        self.phase = SessionPhase.DETACHED
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        snap = SessionSnapshot(
            sid=self.sid,
            rx_pending=self.splitter.pending,
            tx_pending=tx_pending,
            current_size=self.proto.current_size,
            fragments=list(self._fragments) if self._fragments is not None else None,
            fragment_opcode=int(self._fragment_opcode) if self._fragment_opcode is not None else None,
            ping_payload=self.ping_payload,
            ping_sent_at=self.ping_sent_at,
            last_recv=self.last_recv,
            handler=self.handler,
            channels=dict(self.channels),
        )
        return sock, snap

    def reattach(self, sock: socket.socket, tx_pending: list[bytes]) -> None:
        """Take the socket back after a move that failed; I/O resumes where it stopped."""
        assert self._loop is not None
        self.stream = SocketStream(self._loop, sock, self, pending=tx_pending)
        self.resume()

    # -- stream events ------------------------------------------------------------

    def on_data(self, data: bytes) -> None:
        if data:
            self.last_recv = time.monotonic()
            self.host.session_activity(self, time.time())
        whole = self.splitter.feed(data)
        if whole:
            self.proto.receive_data(whole)
            self._process()

    def on_eof(self) -> None:
        if self.splitter.pending:
            # The client ended mid-frame: let the parser see the fragment it will never finish.
            self.proto.receive_data(self.splitter.pending)
            self.splitter = FrameSplitter(max_frame=self.max_message_size, mode=self.splitter.mode)
        self.proto.receive_eof()
        self._process()
        if self.stream is not None:
            self.stream.close()

    def on_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.lost or self.detached:
            return
        was_closing = self.closing
        self.phase = SessionPhase.LOST
        if not self.close_cause:
            self.close_cause = CloseCause.RESET if self.established else CloseCause.HANDSHAKE_FAILED
        if self.close_code is None:
            if self.proto.close_rcvd is not None:
                self.close_code = self.proto.close_rcvd.code
                self.close_reason = self.proto.close_rcvd.reason
            else:
                self.close_code = 1006
        if not was_closing:
            self.host.session_closing(self)
        self.host.session_lost(self)

    # -- driving the Sans-I/O protocol --------------------------------------

    def _process(self) -> None:
        for event in self.proto.events_received():
            if isinstance(event, Request):
                self._on_request(event)
            else:
                self._on_frame(event)
        self._flush()
        if self.proto.state is State.CLOSING and not self.closing:
            self._begin_closing(CloseCause.CLIENT)
        if self.proto.parser_exc is not None and not self.close_cause:
            self.close_cause = CloseCause.PROTOCOL_ERROR

    def _on_request(self, request: Request) -> None:
        if self.refuse is not None:
            code, name, message = self.refuse
            response = self.proto.reject(503, f"{name} ({code}): {message}\n")
            response.headers["X-Error-Code"] = str(code)
            response.headers["X-Error-Name"] = name
            self.close_cause = CloseCause.REFUSED
        else:
            response = self.proto.accept(request)
        self.proto.send_response(response)
        if response.status_code == 101:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.established = True
            if self.phase is SessionPhase.CONNECTING:  # a close() before the request stays a close
                self.phase = SessionPhase.OPEN
            self.splitter.handshake_done()
            self._flush()  # the 101 goes out before anything on_open pushes
            self.host.session_opened(self, request)
            if self.splitter.pending and self.stream is not None and not self.stream.is_closing:
                assert self._loop is not None
                self._loop.call_soon(self.on_data, b"")  # frames sent right behind the request
        elif not self.close_cause:
            self.close_cause = CloseCause.HANDSHAKE_FAILED

    def _on_frame(self, frame) -> None:  # websockets.frames.Frame
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._deliver(opcode, frame.data)
            else:
                self._fragment_opcode = opcode
                self._fragments = [frame.data]
        elif opcode is Opcode.CONT:
            assert self._fragments is not None and self._fragment_opcode is not None
            self._fragments.append(frame.data)
            if frame.fin:
                data = b"".join(self._fragments)
                opcode = self._fragment_opcode
                self._fragments = self._fragment_opcode = None
                self._deliver(opcode, data)
        elif opcode is Opcode.PONG:
            if self.ping_payload is not None and frame.data == self.ping_payload:
                self.ping_payload = None
        elif opcode is Opcode.CLOSE:
            if self.proto.close_rcvd is not None and self.close_code is None:
                self.close_code = self.proto.close_rcvd.code
                self.close_reason = self.proto.close_rcvd.reason

    def _deliver(self, opcode: Opcode, data: bytes) -> None:
        if self.closing:
            return
        if opcode is Opcode.TEXT:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.close_cause = CloseCause.PROTOCOL_ERROR
                self.proto.fail(1007, f"invalid UTF-8 at position {exc.start}")
                self._flush()
                return
            self.host.session_message(self, text)
        else:
            self.host.session_message(self, bytes(data))

    def _flush(self) -> None:
        stream = self.stream
        if stream is None or self.detached:
            return
        for chunk in self.proto.data_to_send():
            if chunk:
                stream.write(chunk)
            else:
                stream.close()  # SEND_EOF: the server ends the TCP connection
        if self.proto.close_expected() and self._timer is None and not self.lost:
            assert self._loop is not None
            self._timer = self._loop.call_later(self.close_timeout, self._on_close_timeout)

    def _begin_closing(self, cause: CloseCause) -> None:
        self.phase = SessionPhase.CLOSING
        if not self.close_cause:
            self.close_cause = cause
        self.host.session_closing(self)

    def _on_handshake_timeout(self) -> None:
        self._timer = None
        if not self.established and self.stream is not None:
            self.close_cause = CloseCause.HANDSHAKE_TIMEOUT
            self.stream.abort()

    def _on_close_timeout(self) -> None:
        self._timer = None
        if self.stream is not None and not self.lost:
            if not self.close_cause:
                self.close_cause = CloseCause.CLOSE_TIMEOUT
            self.stream.abort()

    # -- what the worker calls -------------------------------------------------

    @property
    def closing(self) -> bool:
        """The close is known (contract section 1): closing, or already lost."""
        return self.phase is SessionPhase.CLOSING or self.phase is SessionPhase.LOST

    @property
    def lost(self) -> bool:
        """The connection is gone."""
        return self.phase is SessionPhase.LOST

    @property
    def detached(self) -> bool:
        """A move has carried the socket away (for good, or until the move fails)."""
        return self.phase is SessionPhase.DETACHED

    @property
    def is_open(self) -> bool:
        return (
            self.established
            and not self.closing
            and not self.detached
            and self.proto.state is State.OPEN
        )

    def send(self, data: str | bytes) -> bool:
        """Queue one message; False if the session is not open."""
        if not self.is_open:
            return False
        if isinstance(data, str):
            self.proto.send_text(data.encode("utf-8"))
        else:
            self.proto.send_binary(data)
        self._flush()
        stream = self.stream
        if self.max_output_bytes and stream is not None and stream.buffered > self.max_output_bytes:
            self.close_slow()
        return True

    def close_slow(self) -> int:
        """Close a session that does not read what it is sent: drop what waits, close with 4429.

        Returns the bytes that were queued (0 if the session was already closing).
        """
        stream = self.stream
        if stream is None or self.closing or self.lost or self.detached:
            return 0
        queued = stream.buffered
        stream.discard_queued()
        self.close(CloseCode.SLOW_CONSUMER, f"slow consumer: {queued} bytes queued", cause=CloseCause.SLOW_CONSUMER)
        return queued

    def ping(self, payload: bytes) -> bool:
        if not self.is_open:
            return False
        self.ping_payload = payload
        self.ping_sent_at = time.monotonic()
        self.proto.send_ping(payload)
        self._flush()
        return True

    def close(self, code: int, reason: str, cause: CloseCause = CloseCause.SERVER) -> bool:
        """Start the closing handshake; everything queued before goes out first."""
        if self.closing or self.lost or self.detached:
            return False
        self.close_code = code
        self.close_reason = reason
        self._begin_closing(cause)
        if self.established and self.proto.state is State.OPEN:
            self.proto.send_close(code, reason)
            self._flush()
        elif self.stream is not None:
            self.stream.close()
        return True

    def abort(self, cause: CloseCause) -> None:
        if self.stream is not None and not self.lost and not self.detached:
            self.close_cause = self.close_cause or cause
            self.stream.abort()
