"""Scenario: timers keep pushing to sessions that are gone (seed: Swoole "session does not exist").

Pusher clients start fast timers that push to victim sessions on every worker.
The victims leave, half with a close handshake and half with a TCP reset; the
timers keep pushing to their ids. New clients then connect, and are likely to
get the very OS fds the victims had.

Checked (contract sections 3.4 and 6; ``scenarios/harness/checkers/dead_push.py``):

* every failed push reports 1004 SESSION_CLOSED or 1005 SESSION_NOT_EXIST,
  and 1005 once the session is gone for good; a one-off push says 1005 too;
* the stats count at least every failure the clients observed;
* the log does not grow with the number of dead pushes (no warning storm);
* a new client never receives anything addressed to another session, even
  on a reused OS fd (with ``fd_reuse_info``, the reuse itself is shown);
* afterwards no session is left and no process holds more fds than before.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from scenarios.harness.checkers.dead_push import DeadPushHistory, check, figure
from scenarios.harness.client import ScenarioClient, connect_many, dispose_all
from scenarios.harness.common import counter_delta, warm_up
from scenarios.harness.spec import observe_leftovers
from scenarios.harness.waiting import settle, until

PUSHERS = 3
VICTIMS = 24
TICK_MS = 10
MIN_FAILS_PER_TIMER = 30


async def drive(target, admin) -> tuple[DeadPushHistory, dict[str, Any]]:
    """Timers push to victims that leave, newcomers take their fds; the history and its facts."""
    h = DeadPushHistory(VICTIMS, MIN_FAILS_PER_TIMER)
    facts: dict[str, Any] = {}
    baseline_fds = await warm_up(target, admin)
    stats_before = await admin.stats()
    url = target.ws_url
    pushers = await connect_many(url, "pusher", PUSHERS)
    victims = await connect_many(url, "victim", VICTIMS)
    newcomers: list[ScenarioClient] = []
    try:
        timers: dict[str, tuple[ScenarioClient, int, ScenarioClient]] = {}
        for i, victim in enumerate(victims):
            pusher = pushers[i % PUSHERS]
            reply = await pusher.request("timer_start", interval_ms=TICK_MS, to=victim.session)
            assert reply.get("ok"), reply
            timers[victim.name] = (pusher, reply["timer"], victim)
        await until(
            lambda: all(len(v.evs("tick")) >= 3 for v in victims),
            timeout=10,
            what="every victim receiving ticks",
        )
        info_before = {s["session"]: s for s in await admin.sessions()}
        victim_slots = {
            (info_before[v.session]["worker"], info_before[v.session].get("os_fd"))
            for v in victims
            if v.session in info_before and info_before[v.session].get("os_fd") is not None
        }

        log_mark = len(target.log_lines())
        h.moments["victims leave"] = time.time()
        for i, victim in enumerate(victims):
            if i % 2:
                victim.abort()
            else:
                await victim.close(1000, "leaving")
        victim_ids = {v.session for v in victims}

        def sample(failed: list[int]) -> None:
            h.samples.append((time.time(), sum(failed), len(target.log_lines()) - log_mark))

        h.victims_gone = await settle(lambda: _none_listed(admin, victim_ids), timeout=10, interval=0.05)

        async def enough_failures() -> bool:
            statuses = await asyncio.gather(*(p.request("timer_status", timer=t) for p, t, _ in timers.values()))
            sample([sum(s.get("failed", {}).values()) for s in statuses])
            return all(sum(s.get("failed", {}).values()) >= MIN_FAILS_PER_TIMER for s in statuses)

        await settle(enough_failures, timeout=15, interval=0.05)

        h.one_off = await pushers[0].request("push", to=victims[0].session, data="anyone there?")

        h.moments["newcomers connect"] = time.time()
        newcomers = await connect_many(url, "newcomer", VICTIMS)
        # Let the timers keep pushing to the old ids while the newcomers sit on reused fds.
        marks = {}
        for name, (p, t, _) in timers.items():
            marks[name] = sum((await p.request("timer_status", timer=t)).get("failed", {}).values())

        async def kept_pushing() -> bool:
            statuses = {
                name: await p.request("timer_status", timer=t) for name, (p, t, _) in timers.items()
            }
            sample([sum(s.get("failed", {}).values()) for s in statuses.values()])
            return all(sum(s.get("failed", {}).values()) >= marks[n] + 10 for n, s in statuses.items())

        await settle(kept_pushing, timeout=10, interval=0.05)
        info_after = {s["session"]: s for s in await admin.sessions()}
        finals = {name: await p.request("timer_stop", timer=t) for name, (p, t, _) in timers.items()}
        h.dead_session_pushes_counted = counter_delta(stats_before, await admin.stats(), "dead_session_pushes")
        h.log_lines = target.log_lines()[log_mark:]
        h.foreign = [
            {"client": c.name, "session": c.session, "got": e}
            for c in newcomers
            for e in c.events
            if e.get("to") not in (None, c.session) or e.get("ev") in ("tick", "push")
        ]
    finally:
        await dispose_all(pushers + victims + newcomers)

    h.failed_by_timer = {
        name: {int(k): v for k, v in status.get("failed", {}).items()} for name, status in finals.items()
    }
    facts["dead_pushes_observed_by_clients"] = h.total_failed
    facts["log_lines_during_dead_pushes"] = len(h.log_lines)
    if "fd_reuse_info" in target.capabilities:
        h.reused = [
            {"session": sid, "worker": s["worker"], "os_fd": s.get("os_fd")}
            for sid, s in info_after.items()
            if (s["worker"], s.get("os_fd")) in victim_slots
        ]
        facts["newcomers_on_reused_fds"] = h.reused
        facts["victim_slots"] = sorted(victim_slots, key=str)
        facts["newcomer_slots"] = sorted(
            ((s["worker"], s.get("os_fd")) for s in info_after.values() if s["session"] not in victim_ids), key=str
        )
    h.leftovers = await observe_leftovers(admin, baseline_fds)
    return h, facts


async def _none_listed(admin, sids: set[int]) -> bool:
    return not any(s["session"] in sids for s in await admin.sessions())


@pytest.mark.scenario("dead_session_push", seed="swoole: timers push to sessions that no longer exist")
@pytest.mark.requires("dead_session_stats")
def test_dead_session_push(target, admin, evidence, run_async):
    history, facts = run_async(drive(target, admin))
    evidence.add_facts(facts)
    evidence.figure(figure(history))
    evidence.record(check(history))
    evidence.verdict()
