"""A WebSocket client that records its history (what was sent, received, and how it ended).

Every event has a wall-clock timestamp (``time.time()``, comparable with the
timestamps a local target reports). Replies to requests are matched by id;
everything the server sends on its own (``"ev"`` messages) stays in
:attr:`ScenarioClient.events` for the checks.

How the connection ended is recorded exactly: whether a close *frame* was
received (and its code and reason), or the TCP connection just ended (1006).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from . import conformance
from .waiting import until

#: Messages a client reads before it lets the rest of the event loop run (see ``_read``).
READ_TURN = 64


@dataclass
class Event:
    t: float
    direction: str  # "send" | "recv" | "close" | "abort"
    data: Any

    def as_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 6), "dir": self.direction, "data": self.data}


class ScenarioClient:
    def __init__(self, name: str, ws: ClientConnection) -> None:
        self.name = name
        self.ws = ws
        self.history: list[Event] = []
        self.events: list[dict[str, Any]] = []
        self.replies: dict[Any, dict[str, Any]] = {}
        self.reply_order: list[Any] = []  # reply ids in arrival order
        self.session: int | None = None
        self.worker: int | None = None
        self.close_frame: tuple[int, str] | None = None  # received close frame, if any
        self.closed_at: float | None = None
        #: When this client began to end the connection (its close frame or its RST), if it did.
        self.leaving_at: float | None = None
        self.aborted = False
        self.non_json: list[str] = []
        self._ops: dict[Any, str] = {}  # request id -> op, to judge each reply by its op's schema
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, name: str, *, timeout: float = 10.0) -> ScenarioClient:
        ws = await asyncio.wait_for(
            connect(url, compression=None, max_size=None, ping_interval=None, close_timeout=2, open_timeout=timeout),
            timeout,
        )
        client = cls(name, ws)
        client.history.append(Event(time.time(), "open", None))
        return client

    async def _read(self) -> None:
        # A message already received is handed over without a turn of the event loop: a client
        # behind its socket would drain its whole backlog at once, and with 200 of them one turn
        # lasted tens of seconds (every timer of the harness late by as much). Every
        # READ_TURN messages it lets the others run.
        count = 0
        try:
            async for message in self.ws:
                count += 1
                if count % READ_TURN == 0:
                    await asyncio.sleep(0)
                now = time.time()
                self.history.append(Event(now, "recv", message))
                try:
                    parsed = json.loads(message)
                except (ValueError, TypeError):
                    self.non_json.append(str(message)[:200])
                    continue
                if not isinstance(parsed, dict):
                    continue
                parsed["_t"] = now
                # "ev" marks what the server sends on its own (a task_result names its request in "re").
                if "ev" not in parsed and parsed.get("re") is not None:
                    conformance.observe_reply(self._ops.get(_key(parsed["re"])), parsed)
                    self.replies[parsed["re"]] = parsed
                    self.reply_order.append(parsed["re"])
                else:
                    if "ev" in parsed:
                        conformance.observe_event(parsed)
                    elif "re" in parsed and "ok" in parsed:  # a reply whose id could not be read
                        conformance.observe_reply(None, parsed)
                    self.events.append(parsed)
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            if rcvd is not None:
                self.close_frame = (rcvd.code, rcvd.reason)
            self.closed_at = time.time()
            self.history.append(
                Event(self.closed_at, "close", {"frame": list(self.close_frame) if self.close_frame else None})
            )

    @property
    def is_closed(self) -> bool:
        return self.closed_at is not None

    # -- requests -------------------------------------------------------------------

    async def send(self, payload: dict[str, Any]) -> bool:
        """Send one request; False (recorded in the history) if the connection is gone."""
        text = json.dumps(payload)
        if isinstance(payload.get("op"), str) and "id" in payload:
            self._ops[_key(payload["id"])] = payload["op"]
        self.history.append(Event(time.time(), "send", text))
        try:
            await self.ws.send(text)
        except ConnectionClosed:
            self.history.append(Event(time.time(), "send_failed", "connection closed"))
            return False
        return True

    async def request(self, op: str, *, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send ``{"op": op, "id": n, **fields}`` and return the reply (ok or not)."""
        req_id = next(self._ids)
        await self.send({"op": op, "id": req_id, **fields})
        return await until(
            lambda: self.replies.get(req_id) or (self.is_closed and {"ok": False, "closed": True}),
            timeout=timeout,
            what=f"{self.name}: reply to {op!r} #{req_id}",
            interval=0.002,
        )

    async def whoami(self) -> dict[str, Any]:
        reply = await self.request("whoami")
        if not reply.get("ok"):
            raise AssertionError(f"{self.name}: whoami failed: {reply}")
        self.session, self.worker = reply["session"], reply["worker"]
        return reply

    # -- ending ---------------------------------------------------------------------------

    @property
    def closing_since(self) -> float | None:
        """From when the server may count this session closing: the client's close frame or RST,
        else the end of the connection (its close reply can come much later than the frame)."""
        return self.leaving_at if self.leaving_at is not None else self.closed_at

    async def close(self, code: int = 1000, reason: str = "") -> None:
        now = time.time()
        self.leaving_at = self.leaving_at or now
        self.history.append(Event(now, "send", {"close": code}))
        await self.ws.close(code, reason)
        await self.wait_closed()

    def abort(self) -> None:
        """End the TCP connection with a RST, no close frame (an abrupt client)."""
        self.aborted = True
        now = time.time()
        self.leaving_at = self.leaving_at or now
        self.history.append(Event(now, "abort", None))
        transport = self.ws.transport
        sock = transport.get_extra_info("socket")
        # The server may have closed the connection a moment ago (a sweep, a heartbeat): then the
        # socket is gone (fd -1) and there is nothing left to reset.
        if sock is not None and sock.fileno() != -1 and not transport.is_closing():
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:  # closed between the check and the call
                pass
        transport.abort()

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)

    async def dispose(self) -> None:
        if not self.is_closed:
            self.abort()
        try:
            await asyncio.wait_for(self._reader, 5)
        except (TimeoutError, asyncio.CancelledError):
            self._reader.cancel()

    # -- views for checks --------------------------------------------------------------

    def evs(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("ev") == kind]

    def excerpt(self, last: int = 12) -> list[dict[str, Any]]:
        return [e.as_dict() for e in self.history[-last:]]


def _key(req_id: Any) -> Any:
    """A request id as a dict key (ids may be any JSON value, lists and objects included)."""
    return req_id if isinstance(req_id, (str, int, float, bool, type(None))) else json.dumps(req_id, sort_keys=True)


async def connect_many(url: str, prefix: str, n: int, *, whoami: bool = True) -> list[ScenarioClient]:
    clients = await asyncio.gather(*(ScenarioClient.connect(url, f"{prefix}{i}") for i in range(n)))
    if whoami:
        await asyncio.gather(*(c.whoami() for c in clients))
    return list(clients)


async def dispose_all(clients: list[ScenarioClient]) -> None:
    await asyncio.gather(*(c.dispose() for c in clients), return_exceptions=True)
