"""Scenario: the heartbeat closes idle sessions, and only those (seed: Swoole heartbeat).

A target started with ``heartbeat_idle_ms`` = 600 and a check every 100 ms:

* idle clients (silent after one request) are closed with a 4408 close frame
  no sooner than the idle time after their last message, and no later than
  idle + check interval + 400 ms of slack;
* clients that only *receive* pushes are idle too: server pushes never count;
* chatty clients (a message every 150 ms), clients that only send WebSocket
  pings, and protected clients (``protect``) stay open for the whole window;
* the stats count exactly the heartbeat closes.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from scenarios.harness.admin import AdminClient
from scenarios.harness.client import ScenarioClient, connect_many, dispose_all
from scenarios.harness.common import counter_delta
from scenarios.harness.waiting import settle

IDLE_MS = 600
CHECK_MS = 100
SLACK_MS = 400
WINDOW_S = 2.2
IDLE_CODE = 4408
N = 4


async def scenario(target, evidence) -> None:
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
            while time.monotonic() - started < WINDOW_S and not client.is_closed:
                await client.request("echo", seq=0, data="still here")
                await asyncio.sleep(0.15)  # the client's own pace, not a synchronisation

        async def keep_pinging(client: ScenarioClient) -> None:
            while time.monotonic() - started < WINDOW_S and not client.is_closed:
                await client.ws.ping()
                await asyncio.sleep(0.15)  # the client's own pace

        talkers = [keep_talking(c) for c in chatty] + [keep_pinging(c) for c in pingers]
        await asyncio.gather(
            *talkers,
            settle(lambda: all(c.is_closed for c in idle + pushed), timeout=WINDOW_S + 2),
        )
        stats_after = await admin.stats()
        survivors_closed = [
            {"client": c.name, "close_frame": c.close_frame, "tail": c.excerpt(3)}
            for c in chatty + protected + pingers
            if c.is_closed
        ]
    finally:
        await dispose_all(everyone)

    early_late, wrong_code = [], []
    for c in idle + pushed:
        if c.close_frame is None or c.close_frame[0] != IDLE_CODE:
            wrong_code.append({"client": c.name, "close_frame": c.close_frame, "closed": c.is_closed})
            continue
        elapsed_ms = (c.closed_at - last_sent[c.name]) * 1000
        if not IDLE_MS <= elapsed_ms <= IDLE_MS + CHECK_MS + SLACK_MS:
            early_late.append({"client": c.name, "closed_after_ms": round(elapsed_ms)})
    evidence.check(
        f"idle clients are closed with a {IDLE_CODE} close frame",
        not [w for w in wrong_code if w["client"].startswith("idle")],
        expected=IDLE_CODE,
        observed=wrong_code or "all 4408",
    )
    evidence.check(
        "server pushes do not count as activity: push-only clients are closed as idle",
        not [w for w in wrong_code if w["client"].startswith("pushed")],
        expected=IDLE_CODE,
        observed=[w for w in wrong_code if w["client"].startswith("pushed")] or "all 4408",
    )
    evidence.check(
        "idle sessions close within the tolerance of the idle time",
        not early_late,
        expected=f"{IDLE_MS}..{IDLE_MS + CHECK_MS + SLACK_MS} ms after the last message",
        observed=early_late or "all within",
    )
    evidence.check(
        "chatty, ping-only and protected clients stay open",
        not survivors_closed,
        expected="open for the whole window",
        observed=survivors_closed or "all open",
    )
    counted = counter_delta(stats_before, stats_after, "heartbeat_closes")
    evidence.check(
        "stats count the heartbeat closes",
        counted == len(idle) + len(pushed),
        expected=len(idle) + len(pushed),
        observed=counted,
    )


@pytest.mark.scenario("heartbeat", seed="swoole: heartbeat_idle_time / heartbeat_check_interval")
@pytest.mark.requires("heartbeat")
def test_heartbeat(target_factory, evidence, run_async):
    target = target_factory({"heartbeat_idle_ms": IDLE_MS, "heartbeat_check_ms": CHECK_MS}, "heartbeat")
    run_async(scenario(target, evidence))
    evidence.verdict()
