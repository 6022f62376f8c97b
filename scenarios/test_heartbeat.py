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
"""

from __future__ import annotations

import asyncio
import time

import pytest

from scenarios.harness.admin import AdminClient
from scenarios.harness.client import Event, ScenarioClient, connect_many, dispose_all
from scenarios.harness.common import counter_delta
from scenarios.harness.waiting import settle

IDLE_MS = 600
CHECK_MS = 100
SLACK_MS = 400
IDLE_CODE = 4408
N = 4
PING_EVERY_S = 0.15  # chatty and ping-only clients: well inside any idle time


def settings(granularity_ms: int) -> tuple[int, int]:
    """The idle and check times for a target whose settings move in steps of ``granularity_ms``."""
    step = max(1, granularity_ms)
    return -(-IDLE_MS // step) * step, -(-CHECK_MS // step) * step


async def scenario(target, evidence, idle_ms: int, check_ms: int) -> None:
    latest_ms = idle_ms + check_ms + SLACK_MS
    window_s = latest_ms / 1000 + 0.6  # the survivors must outlive the latest allowed idle close
    evidence.fact("settings", {"idle_ms": idle_ms, "check_ms": check_ms, "latest_close_ms": latest_ms})
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
            while time.monotonic() - started < window_s and not client.is_closed:
                await client.request("echo", seq=0, data="still here")
                await asyncio.sleep(PING_EVERY_S)  # the client's own pace, not a synchronisation

        async def keep_pinging(client: ScenarioClient) -> None:
            while time.monotonic() - started < window_s and not client.is_closed:
                client.history.append(Event(time.time(), "ping", None))
                await client.ws.ping()
                await asyncio.sleep(PING_EVERY_S)  # the client's own pace

        talkers = [keep_talking(c) for c in chatty] + [keep_pinging(c) for c in pingers]
        await asyncio.gather(
            *talkers,
            settle(lambda: all(c.is_closed for c in idle + pushed), timeout=window_s + 2),
        )
        stats_after = await admin.stats()
        # Before the clients are disposed of: which push-only sessions the server left open.
        kept_open = [{"client": c.name, "tail": c.excerpt(3)} for c in pushed if not c.is_closed or c.aborted]
        survivors_closed = [
            {"client": c.name, "close_frame": c.close_frame, "tail": c.excerpt(3)}
            for c in chatty + protected + pingers
            if c.is_closed
        ]
    finally:
        await dispose_all(everyone)

    pings = {c.name: [round(e.t, 3) for e in c.history if e.direction == "ping"] for c in pingers}
    evidence.fact("pings_sent", {name: {"count": len(ts), "first": ts[:1], "last": ts[-1:]} for name, ts in pings.items()})
    early_late, wrong_code, timings = [], [], {}
    for c in idle + pushed:
        if c.close_frame is None or c.close_frame[0] != IDLE_CODE:
            wrong_code.append({"client": c.name, "close_frame": c.close_frame, "closed": c.is_closed})
        # Judged on when the session ended, however it ended: a close without a frame is no excuse.
        ended = c.closed_at if c.closed_at is not None and not c.aborted else None
        elapsed_ms = None if ended is None else round((ended - last_sent[c.name]) * 1000)
        timings[c.name] = elapsed_ms
        if elapsed_ms is None or not idle_ms <= elapsed_ms <= latest_ms:
            early_late.append({"client": c.name, "closed_after_ms": elapsed_ms})
    evidence.fact("idle_close_after_ms", timings)
    evidence.check(
        f"idle clients are closed with a {IDLE_CODE} close frame",
        not wrong_code,
        expected=f"a close frame with code {IDLE_CODE} for every idle and push-only client",
        observed=wrong_code or f"all {IDLE_CODE}",
    )
    # Whether pushes count as activity is judged on whether the session ended, however it
    # ended: a missing close frame is the check above, not this one.
    evidence.check(
        "server pushes do not count as activity: push-only clients are closed as idle",
        not kept_open and bool(pushed),
        expected="every push-only client's session ended by the server",
        observed=kept_open or f"all {len(pushed)} ended",
    )
    evidence.check(
        "idle sessions close within the tolerance of the idle time",
        not early_late and len(timings) == len(idle) + len(pushed),
        expected=f"every idle client ended {idle_ms}..{latest_ms} ms after its last message",
        observed=early_late or f"all {len(timings)} within",
    )
    evidence.check(
        "ping-only clients did ping through the whole window",
        all(len(ts) >= window_s / PING_EVERY_S / 2 for ts in pings.values()),
        expected=f">= {int(window_s / PING_EVERY_S / 2)} pings each",
        observed={name: len(ts) for name, ts in pings.items()},
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
def test_heartbeat(scenario_run, target_factory, evidence, run_async):
    idle_ms, check_ms = settings(scenario_run.manifest.heartbeat_granularity_ms)
    target = target_factory({"heartbeat_idle_ms": idle_ms, "heartbeat_check_ms": check_ms}, "heartbeat")
    run_async(scenario(target, evidence, idle_ms, check_ms))
    evidence.verdict()
