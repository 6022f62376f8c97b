"""Broadcast histories (contract section 10): lean receivers, publishers, and the model they are checked against.

Jepsen's way: every client records what it did and saw, with times; every
publisher records what it published and when; afterwards
:func:`check_histories` checks the lot against the model of section 10:

* a session's membership of a channel runs from its ``subscribe`` to its
  ``unsubscribe`` (or its end); for ``@all``, from its handshake to its end.
  Each membership has a *sure* part (from the subscribe's answer to the
  sending of the unsubscribe) and an *unsure* edge on each side;
* a message is **required** at a session if its whole publish (from the call
  to Redis's answer) lies inside a sure part, the session lived to the end of
  the run, and no reported outage window excuses it (pub/sub mode);
* a message is **forbidden** at a session if no membership of that channel
  (edges included) overlaps the time from the start of its publish to its
  arrival;
* a session never gets a message twice, and gets the messages of one
  publisher in one channel in the order they were published.

Publishers stamp each message ``{"p": publisher, "s": seq}``; clients read
those back from the broadcast event (``{"ev":"broadcast","channel":C,"id":ID,"data":...}``).
"""

from __future__ import annotations

import asyncio
import json
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import conformance
from .leanclient import LeanClient

ALL = "@all"


@dataclass
class Membership:
    channel: str
    join_sent: float
    join_ack: float = 0.0  # 0: no answer (yet)
    leave_sent: float = float("inf")
    leave_ack: float = float("inf")
    #: the subscribe got no answer in time: the session may be a member from join_sent on (never required)
    unknown: bool = False


@dataclass
class Published:
    publisher: str
    seq: int
    channel: str
    start: float
    end: float = 0.0
    ok: bool = False
    msg_id: str | None = None


class BroadcastClient(LeanClient):
    """A lean client that records broadcasts cheaply (hundreds run in the harness process)."""

    def __init__(self, host: str, port: int, name: str = "") -> None:
        super().__init__(host, port, name)
        self.received: list[tuple[float, str, str, int, str | None]] = []  # (t, channel, publisher, seq, id)
        self.memberships: list[Membership] = []
        self.errors: list[str] = []
        self._ops: dict[int, str] = {}  # request id -> op, to judge each reply by its op's schema
        self.node = ""

    def sent(self, req_id: int, op: str) -> None:
        self._ops[req_id] = op

    def on_text(self, payload: bytes, now_ns: int) -> None:
        now = now_ns / 1e9
        try:
            msg = json.loads(payload)
        except ValueError:
            self.errors.append(f"not JSON: {payload[:80]!r}")
            return
        if not isinstance(msg, dict):
            self.errors.append(f"not a JSON object: {payload[:80]!r}")
            return
        if msg.get("ev") == "broadcast":
            conformance.observe_event(msg)
            data, channel = msg.get("data"), msg.get("channel")
            if isinstance(data, dict) and "p" in data and isinstance(channel, str):
                self.received.append((now, channel, data["p"], data.get("s", -1), msg.get("id")))
            else:
                self.errors.append(f"broadcast without a channel or a stamp: {payload[:80]!r}")
        elif "re" in msg:
            conformance.observe_reply(self._ops.pop(msg["re"], None) if isinstance(msg["re"], int) else None, msg)
            self.take_reply(msg)

    async def subscribe(self, channel: str, timeout: float = 10.0, **fields: Any) -> dict:
        m = Membership(channel, time.time())
        self.memberships.append(m)
        try:
            reply = await self.request("subscribe", timeout=timeout, channel=channel, **fields)
        except TimeoutError:
            m.unknown = True  # the server may still subscribe it: its messages are neither required nor forbidden
            raise
        except ConnectionError:
            m.leave_sent = m.leave_ack = m.join_sent  # the session is gone: never a member
            raise
        if reply.get("ok"):
            m.join_ack = time.time()
        else:
            m.leave_sent = m.leave_ack = m.join_sent  # never a member
        return reply

    async def unsubscribe(self, channel: str, timeout: float = 10.0) -> dict:
        m = next(m for m in reversed(self.memberships) if m.channel == channel and m.leave_sent == float("inf"))
        m.leave_sent = time.time()
        reply = await self.request("unsubscribe", timeout=timeout, channel=channel)
        m.leave_ack = time.time()
        return reply

    def member_of(self, channel: str) -> bool:
        return any(m.channel == channel and m.leave_sent == float("inf") and m.join_ack for m in self.memberships)


class StuckClient(asyncio.Protocol):
    """A TCP client that sends half a handshake and never the rest: it must receive nothing."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.bytes_received = 0
        self.first_bytes = b""
        self.closed = False

    @classmethod
    async def connect(cls, host: str, port: int) -> StuckClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(cls, host, port)
        return client

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")

    def data_received(self, data: bytes) -> None:
        if not self.first_bytes:
            self.first_bytes = data[:80]
        self.bytes_received += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Publisher:
    """Publishes stamped messages straight to Redis (PUBLISH, or XADD field ``data`` in durable mode)."""

    def __init__(self, name: str, redis_url: str, prefix: str, mode: str) -> None:
        import redis.asyncio as aioredis

        self.name = name
        self.prefix = prefix
        self.mode = mode
        self.client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=2.0)
        self.seq = 0
        self.log: list[Published] = []

    async def publish(self, channel: str, extra: dict[str, Any] | None = None) -> Published:
        self.seq += 1
        rec = Published(self.name, self.seq, channel, time.time())
        self.log.append(rec)
        payload = json.dumps({"p": self.name, "s": self.seq, **(extra or {})}, separators=(",", ":"))
        try:
            if self.mode == "durable":
                entry = await self.client.xadd(self.prefix + channel, {"data": payload})
                rec.msg_id = entry.decode() if isinstance(entry, bytes) else str(entry)
            else:
                await self.client.publish(self.prefix + channel, payload)
            rec.ok = True
        except Exception:  # Redis down: not published (a publisher retries or gives up; we record it)
            rec.ok = False
        rec.end = time.time()
        return rec

    async def close(self) -> None:
        await self.client.aclose()


class OpPublisher:
    """Publishes stamped messages through a target's ``publish`` op (from one of its sessions)."""

    GIVE_UP_AFTER = 2  # consecutive failures: the target is not answering, stop waiting on it

    def __init__(self, name: str, client: BroadcastClient, timeout: float = 5.0) -> None:
        self.name = name
        self.client = client
        self.timeout = timeout
        self.seq = 0
        self.log: list[Published] = []
        self.failures = 0

    @property
    def gave_up(self) -> bool:
        return self.failures >= self.GIVE_UP_AFTER

    async def publish(self, channel: str) -> Published:
        self.seq += 1
        rec = Published(self.name, self.seq, channel, time.time())
        self.log.append(rec)
        try:
            reply = await self.client.request(
                "publish", timeout=self.timeout, channel=channel, data={"p": self.name, "s": self.seq}
            )
            rec.ok = bool(reply.get("ok"))
            rec.msg_id = reply.get("msg_id")
        except (ConnectionError, TimeoutError):
            rec.ok = False
        self.failures = 0 if rec.ok else self.failures + 1
        rec.end = time.time()
        return rec


# -- the model ------------------------------------------------------------------------------------


@dataclass
class Violations:
    duplicates: list[dict] = field(default_factory=list)
    out_of_order: list[dict] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)
    forbidden: list[dict] = field(default_factory=list)
    excused: int = 0  # required but for an outage window
    required: int = 0
    received: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "required": self.required,
            "received": self.received,
            "excused_by_outage": self.excused,
            "duplicates": len(self.duplicates),
            "out_of_order": len(self.out_of_order),
            "missing": len(self.missing),
            "forbidden": len(self.forbidden),
        }


def _intervals(client: BroadcastClient, channel: str, end: float, *, sure: bool = True) -> list[Membership]:
    """The client's memberships of ``channel``: answered ones, and (``sure`` False) those whose
    subscribe got no answer in time too (they may have begun at their request)."""
    if channel == ALL:
        return [Membership(ALL, client.opened_at, client.opened_at)] if client.opened_at else []
    return [m for m in client.memberships if m.channel == channel and (m.join_ack or (m.unknown and not sure))]


DETAILED_MISSING = 100  # missing records that list the receipts around them (the rest are counted the same)


def check_histories(
    clients: list[BroadcastClient],
    published: list[Published],
    *,
    end: float,
    outages: Sequence[tuple[float, float]] = (),
    until_missing: bool = False,
) -> Violations:
    """Check every client's receipts against the model (module docstring). ``end``: when receipts stopped counting.

    ``until_missing``: only look for a missing message, and stop at the first (a settle loop asks
    only that; duplicates, order and forbidden receipts are then not checked, and counts are partial).
    """
    v = Violations()
    by_key = {(p.publisher, p.seq): p for p in published}
    by_channel: dict[str, list[Published]] = {}
    for p in published:
        if p.ok:
            by_channel.setdefault(p.channel, []).append(p)
    starts: dict[str, list[float]] = {}
    for channel, pubs in by_channel.items():
        pubs.sort(key=lambda p: p.start)
        starts[channel] = [p.start for p in pubs]
    for c in clients:
        lived_to_end = not c.aborted_at and (not c.closed_at or c.closed_at >= end)
        intervals: dict[str, list[Membership]] = {}
        seen: set[tuple[str, int]] = set()
        last: dict[tuple[str, str], int] = {}
        v.received += len(c.received)
        if until_missing:  # only whether a required message is missing: what arrived is enough
            seen = {(r[2], r[3]) for r in c.received}
        for t, channel, pub, seq, _id in () if until_missing else c.received:
            key = (pub, seq)
            if key in seen:
                v.duplicates.append({"client": c.name, "node": c.node, "channel": channel, "publisher": pub, "seq": seq})
                continue
            seen.add(key)
            prev = last.get((channel, pub), 0)
            if seq <= prev:
                v.out_of_order.append({"client": c.name, "channel": channel, "publisher": pub, "seq": seq, "after": prev})
            else:
                last[(channel, pub)] = seq
            ivs = intervals.get(channel)
            if ivs is None:
                ivs = intervals[channel] = _intervals(c, channel, end, sure=False)
            origin = by_key.get(key)
            ok = origin is not None and origin.channel == channel and any(
                m.join_sent <= t and origin.start <= m.leave_ack for m in ivs
            )
            if not ok:
                v.forbidden.append({"client": c.name, "node": c.node, "channel": channel, "publisher": pub, "seq": seq})
        if not lived_to_end or not c.opened_at:
            continue
        for channel in {m.channel for m in c.memberships} | {ALL}:
            in_channel = by_channel.get(channel)
            if not in_channel:
                continue
            for m in _intervals(c, channel, end):
                sure_from, sure_to = m.join_ack, min(m.leave_sent, end)
                # every p with sure_from <= p.start <= p.end <= sure_to; pubs is sorted by start
                for i in range(bisect_left(starts[channel], sure_from), len(in_channel)):
                    p = in_channel[i]
                    if p.start > sure_to:
                        break
                    if p.end > sure_to:
                        continue
                    key = (p.publisher, p.seq)
                    if outages and any(a <= p.end and p.start <= b for a, b in outages):
                        if key not in seen:
                            v.excused += 1
                        continue
                    v.required += 1
                    if key in seen:
                        continue
                    v.missing.append(
                        {
                            "client": c.name, "node": c.node, "channel": channel, "publisher": p.publisher,
                            "seq": p.seq, "published": [round(p.start, 4), round(p.end, 4)],
                            "member": [round(m.join_sent, 4), round(m.join_ack, 4), round(m.leave_sent, 4)],
                        }
                    )
                    if len(v.missing) <= DETAILED_MISSING:
                        v.missing[-1]["received_around"] = [
                            (round(r[0], 4), r[2], r[3]) for r in c.received if r[1] == channel and abs(r[0] - p.end) < 0.2
                        ][:6]
                    if until_missing:
                        return v
    return v
