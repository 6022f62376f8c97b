"""Redis pub/sub broadcast in each uvicorn worker (contract section 10, mode ``pubsub``).

Every worker holds one ``PSUBSCRIBE prefix*`` subscription and delivers each message to
its own sessions of that channel (``@all``: every established session it holds), so a
message reaches every session of the server once: through the one worker that owns it.
The rules (subscribe after the subscription is confirmed, the unsubscribe barrier, rejected
payloads, outages) are ``targets/pubsub.py``, shared with the single-process target. Here:
membership is local to the worker; writes go through the session's outbox
(``session.py``), which closes a session whose outbox passes ``broadcast_buffer_bytes``
with 4429; publishing uses the worker's Redis connection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..pubsub import PubSubNode

if TYPE_CHECKING:
    from .node import Node
    from .session import Session

log = logging.getLogger("uvs.broadcast")


class Broadcast(PubSubNode):
    def __init__(self, node: Node) -> None:
        super().__init__(node.settings.redis_url, node.settings.broadcast_prefix, node.counters, log, node.name)
        self.node = node

    async def start(self) -> None:
        self.start_reader()

    async def stop(self) -> None:
        await self.stop_reader()

    def everyone(self) -> Iterable[Session]:
        return (s for s in self.node.sessions.values() if s.established)

    def write(self, members: list[Any], frame: str) -> None:
        node = self.node
        for session in members:
            if node.write(session, frame):
                node.counters["bc_deliveries"] += 1

    async def publish_raw(self, key: str, data: str) -> None:
        await self.node.redis.publish(key, data)
