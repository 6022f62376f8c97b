"""Scenario: the heartbeat closes idle sessions, and only those (seed: Swoole heartbeat).

A target started with ``heartbeat_idle_ms`` = 600 and a check every 100 ms,
each rounded up to the manifest's ``[heartbeat] granularity_ms`` (Swoole takes
whole seconds: 1000 and 1000), contract section 3.5:

* idle clients (silent after one request) are closed with a 4408 close frame
  no sooner than the idle time after their last message, and no later than
  idle + check interval + 400 ms of slack; every idle client is judged on its
  timing, whatever ended it (a close without a frame, too late or never, fails);
* clients that only *receive* pushes are idle too: server pushes never count;
* chatty clients (a message every 150 ms), clients that only send WebSocket
  pings, and protected clients (``protect``) stay open for the whole window;
* the stats count exactly the heartbeat closes.

Checked by ``scenarios/harness/checkers/heartbeat.py``.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from scenarios.harness.admin import AdminClient
from scenarios.harness.checkers.heartbeat import HeartbeatHistory, IdleClient, check, figure
from scenarios.harness.client import Event, ScenarioClient, connect_many, dispose_all
from scenarios.harness.common import counter_delta
from scenarios.harness.waiting import settle

IDLE_MS = 600
CHECK_MS = 100
SLACK_MS = 400
N = 4
PING_EVERY_S = 0.15  # chatty and ping-only clients: well inside any idle time


def settings(granularity_ms: int) -> tuple[int, int]:
    """The idle and check times for a target whose settings move in steps of ``granularity_ms``."""
    step = max(1, granularity_ms)
    return -(-IDLE_MS // step) * step, -(-CHECK_MS // step) * step


async def drive(target, idle_ms: int, check_ms: int) -> HeartbeatHistory:
    """Idle, push-only, chatty, ping-only and protected clients through one idle window; the history."""
    latest_ms = idle_ms + check_ms + SLACK_MS
    h = HeartbeatHistory(idle_ms, check_ms, latest_ms, window_s=latest_ms / 1000 + 0.6, ping_every_s=PING_EVERY_S)
    admin = AdminClient(target.admin_url, target.admin_token)
    stats_before = await admin.stats()
    url = target.ws_url
    idle, pushed, chatty, protected, pingers = await asyncio.gather(
        *(connect_many(url, name, N) for name in ("idle", "pushed", "chatty", "protected", "pinger"))
    )
    everyone = idle + pushed + chatty + protected + pingers
    last_sent: dict[str, float] = {}
    try:
        await asyncio.gather(*(c.request("protect", on=True) for c in protected))
        await asyncio.gather(*(c.request("timer_start", interval_ms=50) for c in pushed))
        for c in everyone:
            last_sent[c.name] = max(e.t for e in c.history if e.direction == "send")
        started = time.monotonic()

        async def keep_talking(client: ScenarioClient) -> None:
            while time.monotonic() - started < h.window_s and not client.is_closed:
                await client.request("echo", seq=0, data="still here")
                await asyncio.sleep(PING_EVERY_S)  # the client's own pace, not a synchronisation

        async def keep_pinging(client: ScenarioClient) -> None:
            while time.monotonic() - started < h.window_s and not client.is_closed:
                client.history.append(Event(time.time(), "ping", None))
                await client.ws.ping()
                await asyncio.sleep(PING_EVERY_S)  # the client's own pace

        talkers = [keep_talking(c) for c in chatty] + [keep_pinging(c) for c in pingers]
        await asyncio.gather(
            *talkers,
            settle(lambda: all(c.is_closed for c in idle + pushed), timeout=h.window_s + 2),
        )
        window_end = time.time()
        h.heartbeat_closes_counted = counter_delta(stats_before, await admin.stats(), "heartbeat_closes")
        # Before the clients are disposed of: which sessions the server left open, or closed.
        for group, into in ((idle, h.idle), (pushed, h.pushed)):
            for c in group:
                ended = c.closed_at if c.closed_at is not None and not c.aborted else None
                into.append(
                    IdleClient(
                        c.name,
                        c.close_frame,
                        c.is_closed,
                        None if ended is None else round((ended - last_sent[c.name]) * 1000),
                        kept_open=not c.is_closed or c.aborted,
                        tail=c.excerpt(3),
                    )
                )
        for group, clients in (("idle", idle), ("pushed", pushed), ("chatty", chatty), ("protected", protected),
                               ("pinger", pingers)):
            for c in clients:
                h.timelines[c.name] = {
                    "group": group, "last_sent": last_sent[c.name],
                    "sent": [e.t for e in c.history if e.direction == "send" and e.t > last_sent[c.name]],
                    "ping": [e.t for e in c.history if e.direction == "ping"],
                    "received": [e.t for e in c.history if e.direction == "recv"][-200:],
                    "ended": c.closed_at if c.is_closed and not c.aborted else None,
                    "code": c.close_frame[0] if c.close_frame else None,
                    "window_end": window_end,
                }
        h.survivors_closed = [
            {"client": c.name, "close_frame": c.close_frame, "tail": c.excerpt(3)}
            for c in chatty + protected + pingers
            if c.is_closed
        ]
    finally:
        await dispose_all(everyone)
    h.pings = {c.name: sum(1 for e in c.history if e.direction == "ping") for c in pingers}
    return h


@pytest.mark.scenario("heartbeat", seed="swoole: heartbeat_idle_time / heartbeat_check_interval")
@pytest.mark.requires("heartbeat")
def test_heartbeat(scenario_run, target_factory, evidence, run_async):
    idle_ms, check_ms = settings(scenario_run.manifest.heartbeat_granularity_ms)
    target = target_factory({"heartbeat_idle_ms": idle_ms, "heartbeat_check_ms": check_ms}, "heartbeat")
    history = run_async(drive(target, idle_ms, check_ms))
    evidence.fact("settings", {"idle_ms": idle_ms, "check_ms": check_ms, "latest_close_ms": history.latest_ms})
    evidence.fact("pings_sent", history.pings)
    evidence.fact("idle_close_after_ms", {c.name: c.ended_after_ms for c in history.idle + history.pushed})
    evidence.figure(figure(history))
    evidence.record(check(history))
    evidence.verdict()
