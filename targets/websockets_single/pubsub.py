"""Redis pub/sub broadcast for the single-process server (contract section 10, mode ``pubsub``).

The rules (one subscription, subscribe after it is confirmed, the unsubscribe barrier,
outages) are ``targets/pubsub.py``, shared with the uvicorn target. Here: a frame goes to
the channel's members with ``websockets.broadcast`` (one write per member), and a member
whose write buffer passes ``broadcast_buffer_bytes`` is closed with 4429. The node
publishes on a Redis connection of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from websockets.asyncio.server import broadcast

from .. import kit
from ..pubsub import PubSubNode

if TYPE_CHECKING:
    from .server import Session, SingleServer

log = logging.getLogger("wssingle.pubsub")


class PubSub(PubSubNode):
    def __init__(self, server: SingleServer, url: str, prefix: str) -> None:
        super().__init__(url, prefix, server.counters, log)
        self.server = server
        self.publisher = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)

    def start(self) -> None:
        self.start_reader()

    async def stop(self) -> None:
        await self.stop_reader()
        await self.publisher.aclose()

    def everyone(self) -> Iterable[Session]:
        return self.server.sessions.values()

    def write(self, members: list[Any], frame: str) -> None:
        server = self.server
        broadcast([s.conn for s in members], frame)
        server.counters["bc_deliveries"] += len(members)
        bound = server.opts.broadcast_buffer_bytes
        for s in members:
            transport = s.conn.transport
            if transport is not None and transport.get_write_buffer_size() > bound:
                if server.close(s, kit.SLOW_CONSUMER, "slow consumer"):
                    server.counters["bc_slow_closed"] += 1

    async def publish_raw(self, key: str, data: str) -> None:
        await self.publisher.publish(key, data)
