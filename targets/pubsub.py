"""Redis pub/sub broadcast for one node of a Python target (contract section 10, mode ``pubsub``).

Shared by the single-process target (``websockets_single/pubsub.py``) and each uvicorn
worker (``uvicorn_starlette/broadcast.py``); a subclass says who the sessions are, how a
frame is written to them, and how it publishes.

* One ``PSUBSCRIBE prefix*`` connection, read by one task. Each message is checked (a
  payload that is not JSON is dropped and counted in ``bc_rejected``, logged once per
  channel), turned into one broadcast frame (``kit.broadcast_frame``), and written to the
  channel's members (``@all``: every established session of the node).
* ``subscribe`` waits until the node's ``PSUBSCRIBE`` is confirmed (at most 2 s, else 5005),
  then takes effect locally at once: the node hears every channel, so whatever Redis sends
  after the reply reaches the session.
* ``unsubscribe`` first sends a PING on the subscription and waits for its PONG: Redis
  answers it after every message it queued before, so a message published before the
  request is delivered before the session leaves.
* When Redis goes away, the reader reconnects with doubling delays (50 ms to 500 ms, with
  jitter) and records the outage window, from the last time Redis was heard to the
  confirmed re-subscription (at most 50 windows are kept).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from collections.abc import Iterable
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import kit
from .kit import ContractError

#: Reconnect delays after a lost subscription: first, and the bound it doubles up to.
FIRST_DELAY, MAX_DELAY = 0.05, 0.5
#: How long ``subscribe`` waits for a confirmed subscription, and an unsubscribe barrier for its PONG.
SUBSCRIBE_WAIT = BARRIER_WAIT = 2.0
MAX_OUTAGES = 50


class Member(Protocol):
    """A session as the broadcast sees it."""

    channels: set[str]

    @property
    def closing(self) -> bool: ...


class PubSubNode:
    """The broadcast state of one node; subclasses implement :meth:`everyone`, :meth:`write`, :meth:`publish_raw`."""

    OPS = frozenset({"subscribe", "unsubscribe", "channels", "publish"})

    def __init__(self, url: str, prefix: str, counters: Any, log: logging.Logger, name: str = "") -> None:
        self.url = url
        self.prefix = prefix
        self.counters = counters
        self.log = log
        self.name = name
        self.members: dict[str, set[Any]] = {}
        self.connected = False
        self.subscribed = asyncio.Event()  # set while PSUBSCRIBE is confirmed
        self.outages: list[dict[str, Any]] = []
        self.last_heard = time.time()
        self.pubsub: Any = None
        self.barriers: dict[str, asyncio.Future] = {}
        self.tokens = itertools.count(1)
        self.rejected_logged: set[str] = set()
        self.task: asyncio.Task | None = None

    # -- what a node provides -------------------------------------------------------------------

    def everyone(self) -> Iterable[Any]:
        """The members of ``@all``: every established session of the node."""
        raise NotImplementedError

    def write(self, members: list[Any], frame: str) -> None:
        """Write ``frame`` to ``members`` (none is closing), counting deliveries and slow consumers."""
        raise NotImplementedError

    async def publish_raw(self, key: str, data: str) -> None:
        """PUBLISH ``data`` to the Redis channel ``key``."""
        raise NotImplementedError

    # -- the reader -------------------------------------------------------------------------------

    def start_reader(self) -> None:
        self.task = asyncio.ensure_future(self.read_forever())

    async def stop_reader(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def read_forever(self) -> None:
        delay, attempts = FIRST_DELAY, 0
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
                        self._confirmed(attempts)
                        delay, attempts = FIRST_DELAY, 0
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
                self._lost(exc)
                attempts += 1
                await self._drop(client)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, MAX_DELAY)

    def _confirmed(self, attempts: int) -> None:
        """The subscription is confirmed: the outage under way, if any, ends now."""
        self.connected = True
        self.subscribed.set()
        if self.outages and self.outages[-1]["end"] is None:
            last = self.outages[-1]
            last["end"] = time.time()
            last["ms"] = round((last["end"] - last["start"]) * 1000, 1)
            last["attempts"] = attempts

    def _lost(self, exc: BaseException) -> None:
        """The subscription failed: an outage starts (at the last time Redis was heard), or goes on."""
        if self.connected or not self.outages or self.outages[-1]["end"] is not None:
            self.outages.append({"start": self.last_heard, "end": None, "ms": None, "error": repr(exc)[:200], "attempts": 0})
            del self.outages[:-MAX_OUTAGES]
            self.log.warning("%sredis subscription lost: %r", f"{self.name}: " if self.name else "", exc)
        self.connected = False
        self.subscribed.clear()
        for waiter in self.barriers.values():
            if not waiter.done():
                waiter.set_exception(ContractError("BROKER_UNAVAILABLE", f"Redis lost: {exc!r}"))
        self.barriers.clear()

    async def _drop(self, client: Any) -> None:
        try:
            await self.pubsub.aclose()
            await client.aclose()
        except (RedisError, OSError):
            pass

    def deliver(self, channel: str, payload: str) -> None:
        self.counters["bc_received"] += 1
        frame = kit.broadcast_frame(channel, payload)
        if frame is None:
            self.counters["bc_rejected"] += 1
            if channel not in self.rejected_logged:
                self.rejected_logged.add(channel)
                self.log.warning("dropped a payload that is not JSON on channel %r (logged once per channel)", channel)
            return
        source = self.everyone() if channel == kit.ALL else self.members.get(channel, ())
        members = [s for s in source if not s.closing]
        if members:
            self.write(members, frame)

    # -- ops --------------------------------------------------------------------------------------

    async def subscribe(self, s: Any, msg: dict) -> dict:
        channel = kit.channel_name(msg.get("channel"))
        if msg.get("since") is not None:
            raise ContractError("HISTORY_UNAVAILABLE", "pub/sub mode keeps no history ('since' needs durable mode)")
        if not self.subscribed.is_set():  # e.g. just started: what Redis sends before PSUBSCRIBE is lost
            try:
                await asyncio.wait_for(self.subscribed.wait(), SUBSCRIBE_WAIT)
            except TimeoutError:
                raise ContractError("BROKER_UNAVAILABLE", "not subscribed to Redis (it cannot be reached)") from None
        if not s.closing:  # a session that closed while it waited joins nothing
            self.members.setdefault(channel, set()).add(s)
            s.channels.add(channel)
        return {"channel": channel, "history": 0, "complete": True, "id": None}

    async def unsubscribe(self, s: Any, msg: dict) -> dict:
        channel = kit.channel_name(msg.get("channel"))
        was = channel in s.channels
        if was:
            await self.barrier()
            self.leave(s, channel)
        return {"channel": channel, "was_member": was}

    async def barrier(self) -> None:
        """Wait until Redis has sent this node everything it queued before now (PING, then its PONG)."""
        if not self.connected or self.pubsub is None:
            return  # nothing can be in flight from a Redis we do not hear
        token = f"barrier-{next(self.tokens)}"
        waiter = asyncio.get_running_loop().create_future()
        self.barriers[token] = waiter
        try:
            await self.pubsub.ping(token)
            await asyncio.wait_for(waiter, BARRIER_WAIT)
        except (RedisError, OSError, TimeoutError) as exc:
            self.barriers.pop(token, None)
            raise ContractError("BROKER_UNAVAILABLE", f"Redis did not answer the barrier: {exc!r}") from None

    def leave(self, s: Any, channel: str) -> None:
        s.channels.discard(channel)
        members = self.members.get(channel)
        if members is not None:
            members.discard(s)
            if not members:
                del self.members[channel]

    def leave_all(self, s: Any) -> None:
        for channel in list(s.channels):
            self.leave(s, channel)

    async def publish(self, msg: dict) -> dict:
        channel = kit.channel_name(msg.get("channel"), allow_all=True)
        if "data" not in msg:
            raise ContractError("BAD_REQUEST", "'data' is required")
        try:
            await self.publish_raw(self.prefix + channel, json.dumps(msg["data"]))
        except (RedisError, OSError) as exc:
            raise ContractError("BROKER_UNAVAILABLE", f"publish to {channel!r} failed: {exc!r}") from None
        return {"channel": channel, "msg_id": None}

    def status(self) -> dict[str, Any]:
        return {"mode": "pubsub", "connected": self.connected, "outages": list(self.outages)}
