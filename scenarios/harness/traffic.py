"""Traffic that keeps flowing while sessions move, the record of the moves, and the checks.

* :class:`Streamer` drives one client: numbered ``echo`` requests, pipelined,
  of sizes from empty to well above a socket buffer, some sent as fragmented
  messages, with WebSocket pings in between.
* :class:`MoveLog` records every move a scenario asked for: when it was asked,
  when the answer came, from where to where, and the outcome.
* The checks read the client histories against that record: every echo
  exactly once and in order with its data intact; ticks and admin pushes
  numbered without gap or repeat; every reply names a worker that owned the
  session at some instant between the request and the reply.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed

from .admin import AdminClient
from .client import Event, ScenarioClient
from .waiting import settle

#: (size of the echoed data, weight): empty, small, a few KB, above one socket buffer.
SIZES = [(0, 3), (24, 5), (3_000, 3), (90_000, 1), (300_000, 1)]
WINDOW = 4  # echo requests in flight per client


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class Sent:
    seq: int
    t: float
    size: int
    digest: str
    fragments: int


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


@dataclass
class Move:
    session: int
    t_start: float
    t_end: float
    dst: int
    via: str
    ok: bool
    src: int | None = None
    code: int | None = None
    name: str = ""


@dataclass
class MoveLog:
    """What the scenario asked for, and what came of it."""

    initial: dict[int, int]  # session -> worker when the scenario began
    moves: list[Move] = field(default_factory=list)

    async def via_admin(self, admin: AdminClient, session: int, dst: int) -> Move:
        t0 = time.time()
        status, body = await admin.request("POST", f"/v1/sessions/{session}/migrate", {"worker": dst})
        t1 = time.time()
        if status == 200:
            move = Move(session, t0, t1, dst, "admin", True, src=body.get("from"))
        else:
            err = body.get("error", {}) if isinstance(body, dict) else {}
            move = Move(session, t0, t1, dst, "admin", False, code=err.get("code"), name=err.get("name", str(body)))
        self.moves.append(move)
        return move

    async def via_app(self, client: ScenarioClient, dst: int) -> Move:
        assert client.session is not None
        t0 = time.time()
        reply = await client.request("migrate", worker=dst)
        t1 = time.time()
        if reply.get("ok"):
            move = Move(client.session, t0, t1, dst, "app", True, src=reply.get("from"))
        else:
            err = reply.get("error", {})
            move = Move(client.session, t0, t1, dst, "app", False, code=err.get("code"), name=err.get("name", ""))
        self.moves.append(move)
        return move

    def record_report(self, report: dict[str, Any], t0: float, t1: float, via: str) -> None:
        """Moves made by affinity or rebalance (each within the call's window)."""
        for m in report.get("moved", []):
            self.moves.append(Move(m["session"], t0, t1, m["to"], via, True, src=m.get("from")))

    def successful(self, session: int) -> list[Move]:
        return sorted((m for m in self.moves if m.ok and m.session == session), key=lambda m: m.t_start)

    def owners_between(self, session: int, t0: float, t1: float) -> set[int]:
        """Every worker that may have owned ``session`` at some instant in [t0, t1]."""
        owner = self.initial[session]
        owners: set[int] = set()
        for m in self.successful(session):
            if m.t_end < t0:
                owner = m.dst
                continue
            if m.t_start > t1:
                break
            owners.update({owner, m.dst})  # a move overlaps the window: either side
            owner = m.dst
        if not owners:
            owners.add(owner)
        return owners

    def final_owner(self, session: int) -> int:
        moves = self.successful(session)
        return moves[-1].dst if moves else self.initial[session]


# -- checks ------------------------------------------------------------------------


def echo_problems(streamer: Streamer, log: MoveLog) -> list[dict[str, Any]]:
    """Each echo exactly once, in order, data intact, from a worker that owned the session then."""
    c = streamer.client
    problems: list[dict[str, Any]] = []
    order = [int(rid[1:]) for rid in c.reply_order if isinstance(rid, str) and rid.startswith("e")]
    expected = list(range(1, streamer.seq + 1))
    if order != expected:
        missing = sorted(set(expected) - set(order))
        dup = sorted(s for s, n in collections.Counter(order).items() if n > 1)
        out_of_order = [(a, b) for a, b in itertools.pairwise(order) if b != a + 1][:5]
        problems.append({"client": c.name, "problem": "order", "missing": missing[:10], "duplicates": dup[:10], "jumps": out_of_order, "replies": len(order), "sent": streamer.seq})
    for seq, sent in streamer.sent.items():
        reply = c.replies.get(f"e{seq}")
        if reply is None:
            continue
        data = reply.get("data")
        if not isinstance(data, str) or len(data) != sent.size or _digest(data) != sent.digest:
            problems.append({"client": c.name, "problem": "data", "seq": seq, "size": sent.size, "got": len(data) if isinstance(data, str) else data})
            continue
        assert c.session is not None
        owners = log.owners_between(c.session, sent.t, reply["_t"])
        if reply.get("worker") not in owners:
            problems.append({"client": c.name, "problem": "worker", "seq": seq, "reply_worker": reply.get("worker"), "owners_then": sorted(owners)})
    return problems


def numbered(events: list[dict[str, Any]], key: str) -> list[int]:
    return [e[key] for e in events if isinstance(e.get(key), int)]


def gap_or_repeat(seqs: list[int], expected_last: int | None = None) -> dict[str, Any] | None:
    """None if ``seqs`` is exactly 1..n (and n == expected_last when given)."""
    n = expected_last if expected_last is not None else (seqs[-1] if seqs else 0)
    if seqs == list(range(1, n + 1)):
        return None
    return {
        "count": len(seqs),
        "expected_last": n,
        "missing": sorted(set(range(1, n + 1)) - set(seqs))[:10],
        "repeated": sorted(s for s, n in collections.Counter(seqs).items() if n > 1)[:10],
        "first_jumps": [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1][:5],
    }
