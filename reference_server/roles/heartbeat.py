"""The heartbeat and the keepalive of a worker's sessions (contract section 5).

* **Heartbeat** (``heartbeat_idle_ms``, checked every ``heartbeat_check_interval_ms``): a
  session that has *received* nothing for longer than the idle bound is closed with 4408
  (``IDLE_TIMEOUT``) and counted in ``heartbeat_closes``. What the server sends does not
  count as activity (Swoole's ``heartbeat_idle_time`` pitfall), a protected session
  (``protect``) is exempt, and a session already closing is left to its close.
* **Keepalive** (``ping_interval_ms``, ``ping_timeout_ms``): every interval each session
  without a ping outstanding gets one; a session whose pong is later than the timeout is
  closed with 1011.

One loop per worker wakes at the shorter of the two periods; with neither configured it
returns at once. Changing either rule means changing :func:`heartbeat` only.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Protocol

from ..config import Config
from ..core.metrics import Counters
from ..core.registry import SessionTable
from ..errors import CloseCode
from ..session.session import CloseCause, Session


class HeartbeatHost(Protocol):
    """What the heartbeat reads of its worker."""

    @property
    def config(self) -> Config: ...
    @property
    def sessions(self) -> dict[int, Session]: ...
    @property
    def table(self) -> SessionTable: ...
    @property
    def counters(self) -> Counters: ...


async def heartbeat(host: HeartbeatHost) -> None:
    """Run the heartbeat and keepalive of ``host``'s sessions until cancelled."""
    cfg = host.config
    idle = cfg.heartbeat_idle_ms / 1000.0
    ping_every = cfg.ping_interval_ms / 1000.0
    ping_timeout = cfg.ping_timeout_ms / 1000.0
    periods = [p for p in (cfg.heartbeat_check_interval_ms / 1000.0 if idle else 0, ping_every) if p]
    if not periods:
        return
    period = min(periods)
    next_ping = time.monotonic() + ping_every if ping_every else float("inf")
    while True:
        await asyncio.sleep(period)
        now = time.monotonic()
        if idle:
            close_idle(host, now, idle)
        if ping_every:
            for sess in list(host.sessions.values()):
                if sess.ping_payload is not None and now - sess.ping_sent_at > ping_timeout:
                    sess.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout", cause=CloseCause.KEEPALIVE)
            if now >= next_ping:
                next_ping = now + ping_every
                for sess in list(host.sessions.values()):
                    if sess.ping_payload is None:
                        sess.ping(os.urandom(4))


def close_idle(host: HeartbeatHost, now: float, idle: float) -> int:
    """Close the sessions idle for more than ``idle`` seconds at ``now``; how many were closed."""
    closed = 0
    for sess in list(host.sessions.values()):
        if sess.closing or now - sess.last_recv <= idle:
            continue
        info = host.table.lookup(sess.sid)
        if info is not None and info.protected:
            continue
        host.counters["heartbeat_closes"] += 1
        sess.close(CloseCode.IDLE_TIMEOUT, "idle timeout", cause=CloseCause.HEARTBEAT)
        closed += 1
    return closed
