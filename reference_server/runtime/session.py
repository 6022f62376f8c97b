"""One WebSocket session in its owner worker: asyncio I/O around websockets' Sans-I/O core.

The protocol state machine (handshake, framing, masking, ping/pong, the close
handshake, size limits, protocol errors) is ``websockets.server.ServerProtocol``.
This class only moves bytes between it and the socket, assembles fragmented
messages, keeps the session's registry record current, and tells the worker
what happened (open, message, close) through a :class:`SessionHost`.

Close causes (logged with the close code on ``session.close``):
``client`` (the client sent a close frame), ``server`` (``close()`` was
called; the reason says who), ``reset`` (the TCP connection ended without a
close handshake), ``protocol_error``, ``handshake_failed``,
``handshake_timeout``, ``close_timeout`` (the client did not answer our close
frame in time).

Per-message deflate is not negotiated: its state could not move with a
migrated socket (see the contract).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Protocol as TypingProtocol

from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

_QUIET = logging.getLogger("reference_server.websockets")
_QUIET.setLevel(logging.ERROR)
_QUIET.propagate = False


class SessionHost(TypingProtocol):
    """What a session needs from its worker."""

    def session_opened(self, session: Session, request: Request) -> None: ...
    def session_message(self, session: Session, data: str | bytes) -> None: ...
    def session_closing(self, session: Session) -> None: ...
    def session_lost(self, session: Session) -> None: ...
    def session_activity(self, session: Session, now: float) -> None: ...


class Session(asyncio.Protocol):
    def __init__(
        self,
        sid: int,
        host: SessionHost,
        *,
        max_message_size: int,
        close_timeout: float,
        handshake_timeout: float,
    ) -> None:
        self.sid = sid
        self.host = host
        self.proto = ServerProtocol(max_size=max_message_size, logger=_QUIET)
        self.transport: asyncio.Transport | None = None
        self.close_timeout = close_timeout
        self.established = False
        self.closing = False
        self.lost = False
        self.close_cause = ""
        self.close_code: int | None = None
        self.close_reason = ""
        self.last_recv = time.monotonic()
        self.ping_payload: bytes | None = None
        self.ping_sent_at = 0.0
        self._fragments: list[bytes] | None = None
        self._fragment_opcode: Opcode | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handshake_timeout = handshake_timeout

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._handshake_timeout, self._on_handshake_timeout)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.last_recv = now
        self.host.session_activity(self, time.time())
        self.proto.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        self.proto.receive_eof()
        self._process()
        return False  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.lost:
            return
        self.lost = True
        if not self.close_cause:
            self.close_cause = "reset" if self.established else "handshake_failed"
        if self.close_code is None:
            if self.proto.close_rcvd is not None:
                self.close_code = self.proto.close_rcvd.code
                self.close_reason = self.proto.close_rcvd.reason
            else:
                self.close_code = 1006
        if not self.closing:
            self.closing = True
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
            self._begin_closing("client")
        if self.proto.parser_exc is not None and not self.close_cause:
            self.close_cause = "protocol_error"

    def _on_request(self, request: Request) -> None:
        response = self.proto.accept(request)
        self.proto.send_response(response)
        if response.status_code == 101:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.established = True
            self._flush()  # the 101 goes out before anything on_open pushes
            self.host.session_opened(self, request)
        else:
            self.close_cause = "handshake_failed"

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
                self.close_cause = "protocol_error"
                self.proto.fail(1007, f"invalid UTF-8 at position {exc.start}")
                self._flush()
                return
            self.host.session_message(self, text)
        else:
            self.host.session_message(self, bytes(data))

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for chunk in self.proto.data_to_send():
            if chunk:
                if not transport.is_closing():
                    transport.write(chunk)
            else:
                transport.close()  # SEND_EOF: the server ends the TCP connection
        if self.proto.close_expected() and self._timer is None and not self.lost:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.close_timeout, self._on_close_timeout)

    def _begin_closing(self, cause: str) -> None:
        self.closing = True
        if not self.close_cause:
            self.close_cause = cause
        self.host.session_closing(self)

    def _on_handshake_timeout(self) -> None:
        self._timer = None
        if not self.established and self.transport is not None:
            self.close_cause = "handshake_timeout"
            self.transport.abort()

    def _on_close_timeout(self) -> None:
        self._timer = None
        if self.transport is not None and not self.lost:
            if not self.close_cause:
                self.close_cause = "close_timeout"
            self.transport.abort()

    # -- what the worker calls -------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.established and not self.closing and self.proto.state is State.OPEN

    def send(self, data: str | bytes) -> bool:
        """Queue one message; False if the session is not open."""
        if not self.is_open:
            return False
        if isinstance(data, str):
            self.proto.send_text(data.encode("utf-8"))
        else:
            self.proto.send_binary(data)
        self._flush()
        return True

    def ping(self, payload: bytes) -> bool:
        if not self.is_open:
            return False
        self.ping_payload = payload
        self.ping_sent_at = time.monotonic()
        self.proto.send_ping(payload)
        self._flush()
        return True

    def close(self, code: int, reason: str, cause: str = "server") -> bool:
        """Start the closing handshake; everything queued before goes out first."""
        if self.closing or self.lost:
            return False
        self.close_code = code
        self.close_reason = reason
        self._begin_closing(cause)
        if self.established and self.proto.state is State.OPEN:
            self.proto.send_close(code, reason)
            self._flush()
        elif self.transport is not None:
            self.transport.close()
        return True

    def abort(self, cause: str) -> None:
        if self.transport is not None and not self.lost:
            self.close_cause = self.close_cause or cause
            self.transport.abort()
