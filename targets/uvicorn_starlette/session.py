"""One WebSocket session of a uvicorn worker, and its ordered output.

ASGI gives the application ``send`` and nothing else: no write buffer to
look at, no socket. So each session has an outbox (a deque of text frames)
and one sender task that hands them to uvicorn one after the other. Every
write of the session goes through it: replies, pushes, ticks, broadcasts,
task results and, last, the close frame. That keeps their order, and a slow
client only ever blocks its own sender (uvicorn's ``send`` waits while the
socket's buffer is full).

Edge cases:

* ``write`` on a closing session is refused (returns False): nothing is
  written once its close is known.
* When the outbox passes ``bound`` bytes the session is a slow consumer:
  what it had queued is dropped and it is closed with 4429. The close frame
  follows the frame uvicorn is sending at that moment, so it follows whole
  frames.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket

from ..kit import Timer

log = logging.getLogger("uvs.session")


@dataclass(eq=False)  # hashed by identity: sessions are members of channel sets
class Session:
    id: int
    ws: WebSocket
    worker: int
    connect_time: float
    established: bool = False
    last_recv: float = field(default_factory=time.time)
    uid: int = 0
    protected: bool = False
    closing: bool = False
    timers: dict[int, Timer] = field(default_factory=dict)
    next_timer: int = 1
    tasks_out: int = 0  # tasks submitted whose result has not come back
    channels: set[str] = field(default_factory=set)
    outbox: deque[str] = field(default_factory=deque)
    out_bytes: int = 0
    close_with: tuple[int, str] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sender: asyncio.Task | None = None

    def record(self, pid: int) -> dict[str, Any]:
        client = self.ws.client
        server = self.ws.scope.get("server") or ("", 0)
        return {
            "session": self.id, "state": "established" if self.established else "connecting",
            "established": self.established, "worker": self.worker, "pid": pid,
            "remote_addr": client.host if client else "", "remote_port": client.port if client else 0,
            "local_port": server[1], "connect_time": self.connect_time, "last_recv_time": self.last_recv,
            "uid": self.uid, "protected": self.protected,
        }

    def write(self, text: str) -> bool:
        """Queue one text frame; False if the session is closing."""
        if self.closing:
            return False
        self.outbox.append(text)
        self.out_bytes += len(text)
        self.wake.set()
        return True

    def over(self, bound: int) -> bool:
        return self.out_bytes > bound

    def shut(self, code: int, reason: str, *, drop_queued: bool = False) -> bool:
        """Mark the session closing and queue its close frame; False if it already was."""
        if self.closing:
            return False
        if drop_queued:
            self.outbox.clear()
            self.out_bytes = 0
        self.closing = True
        self.close_with = (code, reason)
        self.wake.set()
        return True

    async def send_forever(self) -> None:
        """The sender task: frames in order, then the close frame, then it ends."""
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.outbox:
                    text = self.outbox.popleft()
                    self.out_bytes -= len(text)
                    await self.ws.send_text(text)
                    # uvicorn's send does not suspend while the socket takes data: yield, so that
                    # other sessions run and a connection lost under a long outbox is seen at once
                    # (asyncio warns at every write to a lost transport).
                    await asyncio.sleep(0)
                if self.close_with is not None:
                    code, reason = self.close_with
                    await self.ws.close(code, reason)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the client went away under us: the receive loop sees it too
            log.debug("session %d: send failed: %r", self.id, exc)
