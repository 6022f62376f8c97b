"""Redis pub/sub broadcast for the single-process server (contract section 10, mode ``pubsub``).

One ``PSUBSCRIBE prefix*`` connection, read by one task. Each message is
checked (a payload that is not JSON is dropped and counted), turned into one
broadcast frame, and written to the channel's members (``@all``: every
session) with ``websockets.broadcast``. A member whose write buffer passes the
bound is closed with 4429.

* ``subscribe`` waits until the node's ``PSUBSCRIBE`` is confirmed (at most
  2 s, else 5005), then takes effect locally at once: the node hears every
  channel, so whatever Redis sends after the reply reaches the session.
* ``unsubscribe`` first sends a PING on the subscription and waits for its
  PONG: Redis answers it after every message it queued before, so a message
  published before the request is delivered before the session leaves.
* When Redis goes away, the reader reconnects with doubling delays (50 ms to
  500 ms) and records the outage window, from the last time Redis was heard
  to the confirmed re-subscription.
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
from websockets.asyncio.server import broadcast

from .. import kit
from ..kit import ContractError

if TYPE_CHECKING:
    from .server import Session, SingleServer

log = logging.getLogger("wssingle.pubsub")


class PubSub:
    OPS = frozenset({"subscribe", "unsubscribe", "channels", "publish"})

    def __init__(self, server: SingleServer, url: str, prefix: str) -> None:
        self.server = server
        self.url = url
        self.prefix = prefix
        self.members: dict[str, set[Session]] = {}
        self.connected = False
        self.subscribed = asyncio.Event()  # set while PSUBSCRIBE is confirmed
        self.outages: list[dict[str, Any]] = []
        self.last_heard = time.time()
        self.pubsub: Any = None
        self.publisher = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        self.barriers: dict[str, asyncio.Future] = {}
        self.tokens = itertools.count(1)
        self.rejected_logged: set[str] = set()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.read_forever())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.publisher.aclose()

    # -- the reader ---------------------------------------------------------------------

    async def read_forever(self) -> None:
        delay = 0.05
        attempts = 0
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
                            end = self.outages[-1]
                            end["end"] = time.time()
                            end["ms"] = round((end["end"] - end["start"]) * 1000, 1)
                            end["attempts"] = attempts
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
                    log.warning("redis subscription lost: %r", exc)
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
        server = self.server
        server.counters["bc_received"] += 1
        frame = kit.broadcast_frame(channel, payload)
        if frame is None:
            server.counters["bc_rejected"] += 1
            if channel not in self.rejected_logged:
                self.rejected_logged.add(channel)
                log.warning("dropped a payload that is not JSON on channel %r (logged once per channel)", channel)
            return
        if channel == kit.ALL:
            members = [s for s in server.sessions.values() if not s.closing]
        else:
            members = [s for s in self.members.get(channel, ()) if not s.closing]
        if not members:
            return
        broadcast([s.conn for s in members], frame)
        server.counters["bc_deliveries"] += len(members)
        bound = server.opts.broadcast_buffer_bytes
        for s in members:
            transport = s.conn.transport
            if transport is not None and transport.get_write_buffer_size() > bound:
                if server.close(s, kit.SLOW_CONSUMER, "slow consumer"):
                    server.counters["bc_slow_closed"] += 1

    # -- ops ------------------------------------------------------------------------------

    async def subscribe(self, s: Session, msg: dict) -> dict:
        channel = kit.channel_name(msg.get("channel"))
        if msg.get("since") is not None:
            raise ContractError("HISTORY_UNAVAILABLE", "pub/sub mode keeps no history ('since' needs durable mode)")
        if not self.subscribed.is_set():  # e.g. just started: what Redis sends before PSUBSCRIBE is lost
            try:
                await asyncio.wait_for(self.subscribed.wait(), 2.0)
            except TimeoutError:
                raise ContractError("BROKER_UNAVAILABLE", "not subscribed to Redis (it cannot be reached)") from None
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
        """Wait until Redis has sent everything it queued for us before now (PING, then its PONG)."""
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
            await self.publisher.publish(self.prefix + channel, json.dumps(msg["data"]))
        except (RedisError, OSError) as exc:
            raise ContractError("BROKER_UNAVAILABLE", f"publish to {channel!r} failed: {exc!r}") from None
        return {"channel": channel, "msg_id": None}

    def status(self) -> dict[str, Any]:
        return {"mode": "pubsub", "connected": self.connected, "outages": list(self.outages)}
