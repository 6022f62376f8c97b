"""Traffic that keeps flowing while sessions move, and the moves themselves.

* :class:`Streamer` drives one client: numbered ``echo`` requests, pipelined,
  of sizes from empty to well above a socket buffer, some sent as fragmented
  messages, with WebSocket pings in between.
* :func:`move_via_admin` and :func:`move_via_app` ask for a move and record it,
  with when it was asked and answered, in the :class:`~.checkers.migration.MoveLog`.
* :func:`stream_of` turns what a client saw into the checker's
  :class:`~.checkers.migration.SessionStream`; the checks themselves are pure, in
  ``checkers/migration.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from typing import Any

from websockets.exceptions import ConnectionClosed

from .admin import AdminClient
from .checkers.migration import EchoReply, Move, MoveLog, Sent, SessionStream
from .client import Event, ScenarioClient
from .waiting import settle

#: (size of the echoed data, weight): empty, small, a few KB, above one socket buffer.
SIZES = [(0, 3), (24, 5), (3_000, 3), (90_000, 1), (300_000, 1)]
WINDOW = 4  # echo requests in flight per client


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class Streamer:
    """Numbered echo requests from one client, while anything else goes on."""

    def __init__(self, client: ScenarioClient, rng: random.Random) -> None:
        self.client = client
        self.rng = rng
        self.sent: dict[int, Sent] = {}
        self.seq = 0
        self.pings = 0
        self.pongs = 0

    def _echo_replies(self) -> int:
        return sum(1 for rid in self.client.reply_order if isinstance(rid, str) and rid.startswith("e"))

    async def run(self, stop: asyncio.Event) -> None:
        client, rng = self.client, self.rng
        sizes, weights = zip(*SIZES, strict=True)
        while not stop.is_set() and not client.is_closed:
            if not await settle(lambda: self._echo_replies() >= self.seq - WINDOW or client.is_closed, timeout=15):
                return  # the checks will report the missing replies
            self.seq += 1
            seq = self.seq
            size = rng.choices(sizes, weights)[0]
            block = "".join(rng.choice("abcdefgh") for _ in range(64))
            data = (f"{seq}:" + block * (size // 64 + 1))[:size]
            text = json.dumps({"op": "echo", "id": f"e{seq}", "seq": seq, "data": data})
            fragments = 1
            if size >= 1000 and rng.random() < 0.5:
                fragments = rng.randint(2, 5)
            self.sent[seq] = Sent(seq, time.time(), size, _digest(data), fragments)
            client.history.append(Event(time.time(), "send", f"echo e{seq} size={size} fragments={fragments}"))
            try:
                if fragments == 1:
                    await client.ws.send(text)
                else:
                    step = -(-len(text) // fragments)
                    await client.ws.send([text[i : i + step] for i in range(0, len(text), step)])
                if rng.random() < 0.2:
                    self.pings += 1
                    waiter = await client.ws.ping()
                    asyncio.ensure_future(waiter).add_done_callback(self._pong)
            except ConnectionClosed:
                return  # the checks report the closed session and what it missed
            if size < 1000:
                await asyncio.sleep(rng.uniform(0.001, 0.006))  # the client's own pace, not a synchronisation

    def _pong(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self.pongs += 1

    async def drain(self, timeout: float = 15.0) -> bool:
        return await settle(lambda: self._echo_replies() >= self.seq or self.client.is_closed, timeout=timeout)


async def move_via_admin(log: MoveLog, admin: AdminClient, session: int, dst: int) -> Move:
    """Ask the admin API to move ``session`` to ``dst``; record the request and its outcome in ``log``."""
    t0 = time.time()
    status, body = await admin.request("POST", f"/v1/sessions/{session}/migrate", {"worker": dst})
    t1 = time.time()
    if status == 200:
        move = Move(session, t0, t1, dst, "admin", True, src=body.get("from"))
    else:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        move = Move(session, t0, t1, dst, "admin", False, code=err.get("code"), name=err.get("name", str(body)))
    log.moves.append(move)
    return move


async def move_via_app(log: MoveLog, client: ScenarioClient, dst: int) -> Move:
    """Ask the session's own app (op ``migrate``) to move it to ``dst``; record it in ``log``."""
    assert client.session is not None
    t0 = time.time()
    reply = await client.request("migrate", worker=dst)
    t1 = time.time()
    if reply.get("ok"):
        move = Move(client.session, t0, t1, dst, "app", True, src=reply.get("from"))
    else:
        err = reply.get("error", {})
        move = Move(client.session, t0, t1, dst, "app", False, code=err.get("code"), name=err.get("name", ""))
    log.moves.append(move)
    return move


def numbered(events: list[dict[str, Any]], key: str) -> list[int]:
    return [e[key] for e in events if isinstance(e.get(key), int)]


def stream_of(streamer: Streamer, *, tick_total: int | None, pushes_sent: int) -> SessionStream:
    """What one client saw, as the checker's record (``checkers/migration.py``)."""
    c = streamer.client
    assert c.session is not None
    replies = {}
    for seq in streamer.sent:
        reply = c.replies.get(f"e{seq}")
        if reply is not None:
            data = reply.get("data")
            text = data if isinstance(data, str) else None
            replies[seq] = EchoReply(
                reply["_t"], reply.get("worker"), len(text) if text is not None else None, _digest(text) if text is not None else None
            )
    return SessionStream(
        name=c.name,
        session=c.session,
        sent=dict(streamer.sent),
        reply_order=[int(rid[1:]) for rid in c.reply_order if isinstance(rid, str) and rid.startswith("e")],
        replies=replies,
        pings=streamer.pings,
        pongs=streamer.pongs,
        tick_seqs=[e["seq"] for e in c.evs("tick") if e.get("to") == c.session],
        tick_times=[e["_t"] for e in c.evs("tick") if e.get("to") == c.session],
        tick_total=tick_total,
        push_seqs=numbered(c.evs("apush"), "n"),
        pushes_sent=pushes_sent,
        closed={"close_frame": c.close_frame, "tail": c.excerpt(5)} if c.is_closed else None,
    )
