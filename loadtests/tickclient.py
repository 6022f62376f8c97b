"""The benchmarks' tick client: a lean WebSocket client (``scenarios/harness/leanclient.py``)
that keeps only what a tick benchmark needs (arrival time, timer sequence number, generation),
for a few µs per message. ``bcastclient.Receiver`` reads broadcasts on the same base.
"""

from __future__ import annotations

import json

from scenarios.harness.leanclient import LeanClient


class TickClient(LeanClient):
    def __init__(self, host: str, port: int, name: str = "") -> None:
        super().__init__(host, port, name)
        self.ticks: list[tuple[float, int, int]] = []  # (arrival, seq, generation)

    @property
    def closed(self) -> bool:
        """The connection ended, or the server's close frame arrived."""
        return self.is_closed or self.close_code is not None

    def on_text(self, payload: bytes, now_ns: int) -> None:
        if payload.startswith(b'{"ev":"broadcast"') and self.on_broadcast(payload, now_ns):
            return
        msg = json.loads(payload)
        ev = msg.get("ev")
        if ev == "tick":
            self.ticks.append((now_ns / 1e9, msg["seq"], msg.get("gen", 0)))
        elif ev is not None:
            self.on_event(msg, now_ns)
        elif "re" in msg:
            self.take_reply(msg)

    def on_broadcast(self, payload: bytes, now_ns: int) -> bool:
        """A broadcast frame, raw; True if handled (then it is not parsed as JSON)."""
        return False

    def on_event(self, msg: dict, now_ns: int) -> None:
        """An event other than a tick (``ev`` set); subclasses record what they need."""
