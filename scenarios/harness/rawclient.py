"""A WebSocket client that writes exactly the bytes it is told to, when it is told to.

Scenarios about migration need a client that can stop in the middle of a
frame (even in the middle of its header), or between the fragments of one
message, and go on later. :class:`RawClient` does the opening handshake with
websockets' Sans-I/O ``ClientProtocol``, then sends hand-built frames in
arbitrary slices, and parses what the server sends with the same protocol
object. Everything received is recorded with a timestamp.

Pongs the protocol owes the server are written only between whole frames of
ours, never inside one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from . import conformance
from .waiting import until


def frame_bytes(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    """One client frame (masked, as the protocol requires)."""
    return Frame(opcode, payload, fin).serialize(mask=True, extensions=[])


def text_frame(payload: str | bytes, fin: bool = True, *, continuation: bool = False) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return frame_bytes(Opcode.CONT if continuation else Opcode.TEXT, data, fin)


def ping_frame(payload: bytes) -> bytes:
    return frame_bytes(Opcode.PING, payload)


def upgrade_request(host: str, port: int) -> bytes:
    """The HTTP request that opens a WebSocket on ``/`` (a fresh random key)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def cut_server_frames(buf: bytes | bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """The whole server frames at the start of ``buf`` as ``(opcode, payload)``, and the bytes they take.

    Server frames are unmasked, so cutting them is a few slices; the lean
    clients of the harness and the load tests use this instead of a parser.
    A frame not yet complete is left for the next call.
    """
    frames: list[tuple[int, bytes]] = []
    pos, size = 0, len(buf)
    while size - pos >= 2:
        opcode, n, off = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, pos + 2
        if n == 126:
            if size - pos < 4:
                break
            n, off = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
        elif n == 127:
            if size - pos < 10:
                break
            n, off = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
        if size < off + n:
            break
        frames.append((opcode, bytes(buf[off : off + n])))
        pos = off + n
    return frames, pos


class RawClient:
    def __init__(self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proto: ClientProtocol) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer
        self.proto = proto
        self.messages: list[tuple[float, Any]] = []  # (time, parsed JSON or raw text)
        self.pongs: list[bytes] = []
        self.close_frame: Close | None = None
        self.eof_at: float | None = None
        self.close_frame_at: float | None = None
        #: Write nothing the protocol owes the server (its close reply above all): a client that
        #: keeps the server's close handshake waiting, as a slow or hostile one does.
        self.withhold = False
        self._mid_frame = False
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, name: str, *, timeout: float = 10.0) -> RawClient:
        uri = parse_uri(url)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(uri.host, uri.port), timeout)
        proto = ClientProtocol(uri, max_size=None)
        proto.send_request(proto.connect())
        for chunk in proto.data_to_send():
            writer.write(chunk)
        await writer.drain()
        deadline = time.monotonic() + timeout
        while proto.state is State.CONNECTING:
            data = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
            if not data:
                raise ConnectionError(f"{name}: connection closed during the handshake")
            proto.receive_data(data)
        if proto.state is not State.OPEN:
            raise ConnectionError(f"{name}: handshake failed: {proto.handshake_exc!r}")
        proto.events_received()  # the response
        return cls(name, reader, writer, proto)

    async def _read(self) -> None:
        try:
            while True:
                data = await self._reader.read(262144)
                if not data:
                    self.proto.receive_eof()
                    self.eof_at = time.time()
                    break
                self.proto.receive_data(data)
                now = time.time()
                for event in self.proto.events_received():
                    if not isinstance(event, Frame):
                        continue  # the handshake's request and response: only frames follow it
                    if event.opcode is Opcode.TEXT:
                        text = bytes(event.data).decode()
                        try:
                            message = json.loads(text)
                        except ValueError:
                            self.messages.append((now, text))
                            continue
                        self.messages.append((now, message))
                        if isinstance(message, dict) and "ev" in message:
                            conformance.observe_event(message)
                        elif isinstance(message, dict) and "re" in message and "ok" in message:
                            conformance.observe_reply(None, message)
                    elif event.opcode is Opcode.PONG:
                        self.pongs.append(bytes(event.data))
                    elif event.opcode is Opcode.CLOSE:
                        self.close_frame = self.proto.close_rcvd
                        self.close_frame_at = now
                if not self._mid_frame:
                    self._flush_owed()
        except (ConnectionError, OSError):
            self.eof_at = self.eof_at or time.time()

    def _flush_owed(self) -> None:
        if self.withhold:
            return
        for chunk in self.proto.data_to_send():
            if chunk and not self._writer.is_closing():
                self._writer.write(chunk)

    # -- sending ------------------------------------------------------------------

    async def write(self, data: bytes, *, ends_frame: bool = True) -> None:
        """Write raw bytes; say whether they end on a frame boundary of ours."""
        if not self._mid_frame:
            self._flush_owed()
        self._writer.write(data)
        self._mid_frame = not ends_frame
        await self._writer.drain()

    async def ping_and_wait(self, *, prefix: bytes = b"", suffix: bytes = b"", timeout: float = 10.0) -> None:
        """Write ``prefix + PING + suffix`` in one write, and wait for the pong.

        The pong proves the server read that write (a loopback write this
        small arrives in one piece), including ``suffix``, however incomplete.
        """
        token = os.urandom(6)
        await self.write(prefix + ping_frame(token) + suffix, ends_frame=not suffix)
        await until(lambda: token in self.pongs, timeout=timeout, what=f"{self.name}: pong {token.hex()}")

    def replies(self) -> list[dict[str, Any]]:
        return [m for _, m in self.messages if isinstance(m, dict) and "re" in m]

    async def wait_reply(self, req_id: Any, timeout: float = 10.0) -> dict[str, Any]:
        return await until(
            lambda: next((m for m in self.replies() if m.get("re") == req_id), None) or (self.eof_at and {"closed": True}),
            timeout=timeout,
            what=f"{self.name}: reply {req_id!r}",
        )

    async def request(self, op: str, req_id: Any, **fields: Any) -> dict[str, Any]:
        await self.write(text_frame(json.dumps({"op": op, "id": req_id, **fields})))
        return await self.wait_reply(req_id)

    @property
    def is_closed(self) -> bool:
        return self.eof_at is not None or self.close_frame is not None

    def abort(self) -> None:
        """End the connection with a RST (no close frame, no FIN)."""
        sock = self._writer.get_extra_info("socket")
        if sock is not None and sock.fileno() != -1:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:  # already closed
                pass
        self._writer.transport.abort()

    async def dispose(self) -> None:
        self._writer.close()
        try:
            await asyncio.wait_for(self._task, 5)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
