"""What any process of the uvicorn target can do to any session: push, close, read.

A session lives in exactly one worker (uvicorn cannot move connections).
``owner`` in Redis maps each live session id to that worker's bus name; a
request for a session goes to its owner as a bus call, and the owner answers
with the contract's code (only it knows whether the session is closing).
:class:`~.node.Node` (a worker) adds the shortcut for its own sessions; the
admin API in the supervisor uses this class as it is.

Counting (contract 3.4): the process that asked counts the outcome:
``pushes``, or ``push_failed`` and, for 1004/1005, ``dead_session_pushes``.
A dead session is logged once, never once per push.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import redis.asyncio as aioredis

from .. import kit
from .bus import Bus, Unreachable
from .outage import RETRY_ON, async_retry
from .settings import Settings

log = logging.getLogger("uvs.cluster")

#: Redis connections per process: one is the bus subscription, the others carry commands. The
#: pool is bounded and opened in full at start, so that a burst (many sessions connecting at
#: once) waits for a connection instead of opening more, and the process's fds do not drift with
#: its load. Small on purpose: every connection costs the Redis server too.
POOL_SIZE = 6


def redis_client(url: str, size: int = POOL_SIZE) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=size, timeout=10.0, socket_connect_timeout=2.0, decode_responses=True,
        retry=async_retry(), retry_on_error=RETRY_ON,
    )
    return aioredis.Redis(connection_pool=pool)


async def open_pool(client: aioredis.Redis) -> None:
    """Open every connection of the client's pool now (and check that Redis answers)."""
    pool = client.connection_pool
    conns = [await pool.get_connection() for _ in range(pool.max_connections)]
    for conn in conns:
        await pool.release(conn)
    await client.ping()

CODE_NAMES = {1004: "SESSION_CLOSED", 1005: "SESSION_NOT_EXIST", 8503: "NOT_ESTABLISHED"}
#: What :meth:`Cluster.local_push` and :meth:`Cluster.local_close` answer for a session held elsewhere.
ELSEWHERE = -1


class Cluster:
    def __init__(self, settings: Settings, pool_size: int = POOL_SIZE) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.redis = redis_client(settings.redis_url, pool_size)
        self.name = ""
        self.bus: Bus | None = None
        self.counters: Counter = Counter({name: 0 for name in kit.STANDARD_COUNTERS})
        self.owner_cache: dict[int, str] = {}
        self.warned_dead: dict[int, None] = {}

    async def join_bus(self, name: str, handlers: dict[str, Any]) -> Bus:
        await open_pool(self.redis)
        self.name = name
        self.bus = Bus(self.redis, self.keys.bus, name)
        for op, handler in handlers.items():
            self.bus.handle(op, handler)
        await self.bus.start()
        return self.bus

    async def leave(self) -> None:
        if self.bus is not None:
            await self.bus.stop()
        await self.redis.aclose()

    # -- where a session lives ------------------------------------------------------------

    async def owner_of(self, sid: int) -> str | None:
        owner = self.owner_cache.get(sid)
        if owner is None:
            owner = await self.redis.hget(self.keys.owner, str(sid))
            if owner is not None:  # sessions never change worker here: the answer stays true
                if len(self.owner_cache) > 100_000:
                    self.owner_cache.clear()
                self.owner_cache[sid] = owner
        return owner

    async def call_owner(self, sid: int, op: str, **args: Any) -> Any:
        """Call ``op`` on the session's worker; 1005 if it has none (or its worker is gone)."""
        owner = await self.owner_of(sid)
        if owner is None or owner == self.name or self.bus is None:
            return 1005
        try:
            return await self.bus.call(owner, op, sid=sid, **args)
        except Unreachable:
            return 1005  # its worker is gone, and the session with it

    # -- the requests -----------------------------------------------------------------------

    def local_push(self, sid: int, text: str) -> int | None:
        return ELSEWHERE

    def local_close(self, sid: int, code: int, reason: str, last_message: str | None = None) -> int | None:
        return ELSEWHERE

    async def push(self, to: int, text: str) -> int | None:
        """Push a text frame to any session: None on success, else 1004, 1005 or 8503."""
        code = self.local_push(to, text)
        if code == ELSEWHERE:
            code = await self.call_owner(to, "push", text=text)
        if code is None:
            self.counters["pushes"] += 1
            return None
        self.counters["push_failed"] += 1
        if code in (1004, 1005):
            self.counters["dead_session_pushes"] += 1
            if to not in self.warned_dead:  # one line per dead session, never a storm
                if len(self.warned_dead) > 10_000:
                    self.warned_dead.clear()
                self.warned_dead[to] = None
                log.warning("push to dead session %d refused (%s); further pushes to it are only counted", to, CODE_NAMES[code])
        return code

    async def close(self, sid: int, code: int, reason: str) -> int | None:
        result = self.local_close(sid, code, reason)
        if result == ELSEWHERE:
            result = await self.call_owner(sid, "close", code=code, reason=reason)
        return result

    async def record(self, sid: int) -> dict[str, Any] | None:
        result = await self.call_owner(sid, "record")
        return None if result == 1005 else result
