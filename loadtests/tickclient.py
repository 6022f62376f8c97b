"""A lean WebSocket client for benchmarks: one asyncio Protocol, frames parsed by hand.

The scenario harness's client records everything and costs about 90 µs of
CPU per message here, so on a 2-core machine it, not the server, saturates
near 10k messages/s. This one keeps only what a tick benchmark needs
(arrival time, timer sequence number, generation) for a few µs per message.
Requests are sent as masked text frames (``scenarios.harness.rawclient``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from scenarios.harness.rawclient import cut_server_frames, text_frame, upgrade_request


class TickClient(asyncio.Protocol):
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.opened: asyncio.Future = asyncio.get_running_loop().create_future()
        self.handshaken = False
        self.closed = False
        self.ticks: list[tuple[float, int, int]] = []  # (arrival, seq, generation)
        self.replies: dict[Any, dict] = {}
        self.reply_arrived = asyncio.Event()
        self._ids = 0

    @classmethod
    async def connect(cls, host: str, port: int) -> TickClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: cls(host, port), host, port)
        await asyncio.wait_for(client.opened, 10)
        return client

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(upgrade_request(self.host, self.port))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(bytes(buf[:80]).decode(errors="replace")))
                return
            del buf[: end + 4]
            self.handshaken = True
            self.opened.set_result(None)
        now_ns = time.time_ns()
        now = now_ns / 1e9
        frames, used = cut_server_frames(buf)
        del buf[:used]
        for opcode, payload in frames:
            if opcode == 1:
                if payload.startswith(b'{"ev":"broadcast"') and self.on_broadcast(payload, now_ns):
                    continue
                msg = json.loads(payload)
                if "ev" in msg and msg["ev"] != "tick":
                    self.on_event(msg, now_ns)
                elif msg.get("ev") == "tick":
                    self.ticks.append((now, msg["seq"], msg.get("gen", 0)))
                elif "re" in msg:
                    self.replies[msg["re"]] = msg
                    self.reply_arrived.set()
            elif opcode == 8:
                self.closed = True

    def on_broadcast(self, payload: bytes, now_ns: int) -> bool:
        """A broadcast frame, raw; True if handled (then it is not parsed as JSON)."""
        return False

    def on_event(self, msg: dict, now_ns: int) -> None:
        """An event other than a tick (``ev`` set); subclasses record what they need."""

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the handshake"))

    async def request(self, op: str, **fields: Any) -> dict:
        self._ids += 1
        req_id = self._ids
        assert self.transport is not None
        self.transport.write(text_frame(json.dumps({"op": op, "id": req_id, **fields})))
        while req_id not in self.replies:
            self.reply_arrived.clear()
            await asyncio.wait_for(self.reply_arrived.wait(), 10)
        return self.replies.pop(req_id)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
