"""Scenario: timers keep pushing to sessions that are gone (seed: Swoole "session does not exist").

Pusher clients start fast timers that push to victim sessions on every worker.
The victims leave, half with a close handshake and half with a TCP reset; the
timers keep pushing to their ids. New clients then connect, and are likely to
get the very OS fds the victims had.

Checked (contract sections 3.4 and 6):

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

import pytest

from scenarios.harness.client import ScenarioClient, connect_many, dispose_all
from scenarios.harness.common import check_no_leaks, counter_delta, warm_up
from scenarios.harness.waiting import settle, until

PUSHERS = 3
VICTIMS = 24
TICK_MS = 10
MIN_FAILS_PER_TIMER = 30
DEAD_CODES = {1004, 1005}


async def scenario(target, admin, evidence) -> None:
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
        for i, victim in enumerate(victims):
            if i % 2:
                victim.abort()
            else:
                await victim.close(1000, "leaving")
        victim_ids = {v.session for v in victims}
        gone = await settle(
            lambda: _none_listed(admin, victim_ids), timeout=10, interval=0.05
        )
        evidence.check("the server notices every victim is gone", gone, expected=True, observed=gone)

        async def enough_failures() -> bool:
            statuses = await asyncio.gather(*(p.request("timer_status", timer=t) for p, t, _ in timers.values()))
            return all(sum(s.get("failed", {}).values()) >= MIN_FAILS_PER_TIMER for s in statuses)

        await settle(enough_failures, timeout=15, interval=0.05)

        one_off = await pushers[0].request("push", to=victims[0].session, data="anyone there?")

        newcomers = await connect_many(url, "newcomer", VICTIMS)
        # Let the timers keep pushing to the old ids while the newcomers sit on reused fds.
        marks = {}
        for name, (p, t, _) in timers.items():
            marks[name] = sum((await p.request("timer_status", timer=t)).get("failed", {}).values())

        async def kept_pushing() -> bool:
            statuses = {
                name: await p.request("timer_status", timer=t) for name, (p, t, _) in timers.items()
            }
            return all(sum(s.get("failed", {}).values()) >= marks[n] + 10 for n, s in statuses.items())

        await settle(kept_pushing, timeout=10, interval=0.05)
        info_after = {s["session"]: s for s in await admin.sessions()}
        finals = {name: await p.request("timer_stop", timer=t) for name, (p, t, _) in timers.items()}
        stats_after = await admin.stats()
        log_lines = target.log_lines()[log_mark:]
        foreign = [
            {"client": c.name, "session": c.session, "got": e}
            for c in newcomers
            for e in c.events
            if e.get("to") not in (None, c.session) or e.get("ev") in ("tick", "push")
        ]
    finally:
        await dispose_all(pushers + victims + newcomers)

    wrong_codes, never_1005 = [], []
    total_failed = 0
    for name, status in finals.items():
        failed = {int(k): v for k, v in status.get("failed", {}).items()}
        total_failed += sum(failed.values())
        if set(failed) - DEAD_CODES:
            wrong_codes.append({"timer_to": name, "failed": failed})
        if not failed.get(1005):
            never_1005.append({"timer_to": name, "failed": failed})
    evidence.fact("dead_pushes_observed_by_clients", total_failed)
    evidence.check(
        "failed pushes to dead sessions report 1004 or 1005 only",
        not wrong_codes,
        expected=sorted(DEAD_CODES),
        observed=wrong_codes or "only 1004/1005",
    )
    evidence.check(
        "once a session is gone for good, pushes report 1005 SESSION_NOT_EXIST",
        not never_1005,
        expected="1005 for every timer",
        observed=never_1005 or "all saw 1005",
    )
    error = one_off.get("error") or {}
    evidence.check(
        "a one-off push to a dead session fails with 1005 SESSION_NOT_EXIST",
        one_off.get("ok") is False and error.get("code") == 1005 and error.get("name") == "SESSION_NOT_EXIST",
        expected={"ok": False, "code": 1005, "name": "SESSION_NOT_EXIST"},
        observed=one_off,
    )
    counted = counter_delta(stats_before, stats_after, "dead_session_pushes")
    evidence.check(
        "stats count every dead-session push the clients saw",
        counted >= total_failed + 1,
        expected=f">= {total_failed + 1}",
        observed=counted,
    )
    evidence.check(
        "enough dead pushes happened for the log check to mean something",
        total_failed >= VICTIMS * MIN_FAILS_PER_TIMER,
        expected=f">= {VICTIMS * MIN_FAILS_PER_TIMER}",
        observed=total_failed,
    )
    budget = 5 * (2 * VICTIMS) + 20
    evidence.fact("log_lines_during_dead_pushes", len(log_lines))
    evidence.check(
        "no warning storm: the log does not grow with the number of dead pushes",
        len(log_lines) <= budget,
        expected=f"<= {budget} lines for {2 * VICTIMS} sessions and {total_failed} dead pushes",
        observed=len(log_lines),
        sample=log_lines[:15],
    )
    evidence.check(
        "a new client never receives what was meant for another session",
        not foreign,
        expected="nothing addressed elsewhere",
        observed=f"{len(foreign)} foreign messages",
        messages=foreign,
    )
    if "fd_reuse_info" in target.capabilities:
        reused = [
            {"session": sid, "worker": s["worker"], "os_fd": s.get("os_fd")}
            for sid, s in info_after.items()
            if (s["worker"], s.get("os_fd")) in victim_slots
        ]
        evidence.fact("newcomers_on_reused_fds", reused)
        evidence.fact("victim_slots", sorted(victim_slots, key=str))
        evidence.fact(
            "newcomer_slots",
            sorted(((s["worker"], s.get("os_fd")) for s in info_after.values() if s["session"] not in victim_ids), key=str),
        )
        evidence.check(
            "the scenario reproduced OS fd reuse (a newcomer got a victim's fd)",
            bool(reused),
            expected=">= 1 newcomer on a victim's (worker, fd)",
            observed=len(reused),
        )
    await check_no_leaks(admin, evidence, baseline_fds)


async def _none_listed(admin, sids: set[int]) -> bool:
    return not any(s["session"] in sids for s in await admin.sessions())


@pytest.mark.scenario("dead_session_push", seed="swoole: timers push to sessions that no longer exist")
@pytest.mark.requires("dead_session_stats")
def test_dead_session_push(target, admin, evidence, run_async):
    run_async(scenario(target, admin, evidence))
    evidence.verdict()
