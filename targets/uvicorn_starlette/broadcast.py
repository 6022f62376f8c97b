"""Redis pub/sub broadcast in each uvicorn worker (contract section 10, mode ``pubsub``).

Every worker holds one ``PSUBSCRIBE prefix*`` subscription and delivers each
message to its own sessions of that channel (``@all``: every established
session it holds), so a message reaches every session of the server once:
through the one worker that owns it.

* Membership is local to the worker. ``subscribe`` answers once the worker's
  ``PSUBSCRIBE`` is confirmed (at most 2 s, else 5005): from then on the
  worker hears every channel.
* ``unsubscribe`` sends a PING on the subscription and waits for its PONG
  before the session leaves: Redis answers it after every message it queued
  before, so what was published before the request still arrives.
* A payload that is not JSON is dropped and counted (``bc_rejected``),
  logged once per channel.
* Writes go through the session's outbox (``session.py``): a session whose
  outbox passes ``broadcast_buffer_bytes`` is closed with 4429.
* When Redis goes away the reader reconnects with doubling delays (50 ms to
  500 ms) and records the outage: from the last time Redis was heard to the
  confirmed re-subscription.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .. import kit
from ..kit import ContractError

if TYPE_CHECKING:
    from .node import Node
    from .session import Session

log = logging.getLogger("uvs.broadcast")


class Broadcast:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.url = node.settings.redis_url
        self.prefix = node.settings.broadcast_prefix
        self.members: dict[str, set[Session]] = {}
        self.connected = False
        self.subscribed = asyncio.Event()
        self.outages: list[dict[str, Any]] = []
        self.last_heard = time.time()
        self.pubsub: Any = None
        self.barriers: dict[str, asyncio.Future] = {}
        self.tokens = itertools.count(1)
        self.rejected_logged: set[str] = set()
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.read_forever(), name="broadcast")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def read_forever(self) -> None:
        delay, attempts = 0.05, 0
        while True:
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1.0, health_check_interval=1)
            self.pubsub = client.pubsub()
            try:
                await self.pubsub.psubscribe(self.prefix + "*")
                while True:
                    msg = await self.pubsub.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    self.last_heard = time.time()
                    kind = msg["type"]
                    if kind == "psubscribe":
                        self.connected = True
                        self.subscribed.set()
                        if self.outages and self.outages[-1]["end"] is None:
                            last = self.outages[-1]
                            last["end"] = time.time()
                            last["ms"] = round((last["end"] - last["start"]) * 1000, 1)
                            last["attempts"] = attempts
                        delay, attempts = 0.05, 0
                    elif kind == "pmessage":
                        self.deliver(msg["channel"].decode()[len(self.prefix) :], msg["data"].decode(errors="replace"))
                    elif kind == "pong":
                        waiter = self.barriers.pop(msg["data"].decode(errors="replace"), None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(None)
            except asyncio.CancelledError:
                await self._drop(client)
                raise
            except (RedisError, OSError) as exc:
                if self.connected or not self.outages or self.outages[-1]["end"] is not None:
                    self.outages.append({"start": self.last_heard, "end": None, "ms": None, "error": repr(exc)[:200], "attempts": 0})
                    del self.outages[:-50]
                    log.warning("%s: redis subscription lost: %r", self.node.name, exc)
                self.connected = False
                self.subscribed.clear()
                attempts += 1
                for waiter in self.barriers.values():
                    if not waiter.done():
                        waiter.set_exception(ContractError("BROKER_UNAVAILABLE", f"Redis lost: {exc!r}"))
                self.barriers.clear()
                await self._drop(client)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 0.5)

    async def _drop(self, client: Any) -> None:
        try:
            await self.pubsub.aclose()
            await client.aclose()
        except (RedisError, OSError):
            pass

    def deliver(self, channel: str, payload: str) -> None:
        node = self.node
        node.counters["bc_received"] += 1
        frame = kit.broadcast_frame(channel, payload)
        if frame is None:
            node.counters["bc_rejected"] += 1
            if channel not in self.rejected_logged:
                self.rejected_logged.add(channel)
                log.warning("dropped a payload that is not JSON on channel %r (logged once per channel)", channel)
            return
        if channel == kit.ALL:
            members = [s for s in node.sessions.values() if s.established and not s.closing]
        else:
            members = [s for s in self.members.get(channel, ()) if not s.closing]
        for session in members:
            if node.write(session, frame):
                node.counters["bc_deliveries"] += 1

    # -- ops ------------------------------------------------------------------------------

    async def subscribe(self, s: Session, msg: dict) -> dict:
        channel = kit.channel_name(msg.get("channel"))
        if msg.get("since") is not None:
            raise ContractError("HISTORY_UNAVAILABLE", "pub/sub mode keeps no history ('since' needs durable mode)")
        if not self.subscribed.is_set():
            try:
                await asyncio.wait_for(self.subscribed.wait(), 2.0)
            except TimeoutError:
                raise ContractError("BROKER_UNAVAILABLE", "not subscribed to Redis (it cannot be reached)") from None
        if not s.closing:
            self.members.setdefault(channel, set()).add(s)
            s.channels.add(channel)
        return {"channel": channel, "history": 0, "complete": True, "id": None}

    async def unsubscribe(self, s: Session, msg: dict) -> dict:
        channel = kit.channel_name(msg.get("channel"))
        was = channel in s.channels
        if was:
            await self.barrier()
            self.leave(s, channel)
        return {"channel": channel, "was_member": was}

    async def barrier(self) -> None:
        """Wait until Redis has sent this worker everything it queued before now (PING, then its PONG)."""
        if not self.connected or self.pubsub is None:
            return  # nothing can be in flight from a Redis we do not hear
        token = f"barrier-{next(self.tokens)}"
        waiter = asyncio.get_running_loop().create_future()
        self.barriers[token] = waiter
        try:
            await self.pubsub.ping(token)
            await asyncio.wait_for(waiter, 2.0)
        except (RedisError, OSError, TimeoutError) as exc:
            self.barriers.pop(token, None)
            raise ContractError("BROKER_UNAVAILABLE", f"Redis did not answer the barrier: {exc!r}") from None

    def leave(self, s: Session, channel: str) -> None:
        s.channels.discard(channel)
        members = self.members.get(channel)
        if members is not None:
            members.discard(s)
            if not members:
                del self.members[channel]

    def leave_all(self, s: Session) -> None:
        for channel in list(s.channels):
            self.leave(s, channel)

    async def publish(self, msg: dict) -> dict:
        channel = kit.channel_name(msg.get("channel"), allow_all=True)
        if "data" not in msg:
            raise ContractError("BAD_REQUEST", "'data' is required")
        try:
            await self.node.redis.publish(self.prefix + channel, json.dumps(msg["data"]))
        except (RedisError, OSError) as exc:
            raise ContractError("BROKER_UNAVAILABLE", f"publish to {channel!r} failed: {exc!r}") from None
        return {"channel": channel, "msg_id": None}

    def status(self) -> dict[str, Any]:
        return {"mode": "pubsub", "connected": self.connected, "outages": list(self.outages)}
