"""A lean WebSocket client: one asyncio Protocol, frames cut by hand, a few µs per message.

The harness's full client (``client.py``, on python-websockets) records everything and costs
about 90 µs of CPU per message; with hundreds of clients in one process it, not the server,
would saturate. This one does only what every many-client user needs, and its subclasses add
what they record:

* the opening handshake (``rawclient.upgrade_request``), then server frames cut by
  ``rawclient.cut_server_frames``;
* each text frame goes to :meth:`LeanClient.on_text` with its arrival time; a reply
  (``{"re": id}``) that a subclass does not take is kept for :meth:`LeanClient.request`;
* a close frame's code is kept (``close_code``); the end of the connection sets ``closed_at``
  and wakes every request waiting for an answer.

Used by the broadcast scenarios (``broadcast.BroadcastClient``) and the benchmarks
(``loadtests/tickclient.TickClient``, ``loadtests/bcastclient.Receiver``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, TypeVar

from .rawclient import cut_server_frames, text_frame, upgrade_request

C = TypeVar("C", bound="LeanClient")

TEXT, CLOSE = 1, 8


class LeanClient(asyncio.Protocol):
    """One WebSocket connection to ``host:port``; see the module docstring."""

    def __init__(self, host: str, port: int, name: str = "") -> None:
        self.host, self.port, self.name = host, port, name
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.opened: asyncio.Future = asyncio.get_running_loop().create_future()
        self.opened_at = 0.0
        self.closed_at = 0.0
        self.aborted_at = 0.0  # the client cut the connection (no close handshake)
        self.close_code: int | None = None
        self.replies: dict[Any, dict] = {}
        self._reply_event = asyncio.Event()
        self._ids = 0

    @classmethod
    async def connect(cls: type[C], host: str, port: int, name: str = "", *, timeout: float = 10.0) -> C:
        """Connect and complete the handshake within ``timeout`` seconds, the TCP connect included
        (a server that no longer accepts fills its backlog, and a connect then waits for the
        kernel's SYN retries: about two minutes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        _, client = await asyncio.wait_for(loop.create_connection(lambda: cls(host, port, name), host, port), timeout)
        await asyncio.wait_for(client.opened, max(0.0, deadline - loop.time()))
        return client

    # -- protocol ------------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(upgrade_request(self.host, self.port))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        now_ns = time.time_ns()
        if not self.opened_at:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(bytes(buf[:80]).decode(errors="replace")))
                return
            del buf[: end + 4]
            self.opened_at = now_ns / 1e9
            self.opened.set_result(None)
        frames, used = cut_server_frames(buf)
        del buf[:used]
        for opcode, payload in frames:
            if opcode == TEXT:
                self.on_text(payload, now_ns)
            elif opcode == CLOSE:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005

    def on_text(self, payload: bytes, now_ns: int) -> None:
        """A text frame; by default a reply is kept and anything else dropped."""
        msg = json.loads(payload)
        if isinstance(msg, dict) and "re" in msg:
            self.take_reply(msg)

    def take_reply(self, msg: dict) -> None:
        self.replies[msg["re"]] = msg
        self._reply_event.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = self.closed_at or time.time()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the handshake"))
        self._reply_event.set()

    # -- requests ------------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return bool(self.closed_at)

    def sent(self, req_id: int, op: str) -> None:
        """Request ``req_id`` (``op``) was sent; subclasses note what they need."""

    async def request(self, op: str, timeout: float = 10.0, **fields: Any) -> dict:
        """Send ``{"op": op, "id": n, ...}`` and wait for its reply; ConnectionError, TimeoutError."""
        self._ids += 1
        req_id = self._ids
        self.sent(req_id, op)
        assert self.transport is not None
        self.transport.write(text_frame(json.dumps({"op": op, "id": req_id, **fields})))
        deadline = time.monotonic() + timeout
        while req_id not in self.replies:
            if self.is_closed:
                raise ConnectionError(f"{self.name or 'client'} closed while waiting for {op}")
            self._reply_event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name or 'client'}: no answer to {op} in {timeout} s")
            await asyncio.wait_for(self._reply_event.wait(), left)
        return self.replies.pop(req_id)

    def abort(self) -> None:
        """Cut the connection without a close handshake."""
        if self.transport is not None and not self.is_closed:
            self.aborted_at = time.time()
            self.transport.abort()
