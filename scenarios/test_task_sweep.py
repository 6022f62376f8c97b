"""Scenario: a task process sweeps every connection of every worker (seed: Swoole task sweep).

Clients spread over the workers; a third of them are bound to uid 7, which the
sweep rule closes. While sweeps run, "churn" clients (also uid 7) leave on
their own, gracefully or with a TCP reset, so sessions vanish mid-sweep.

Checked from the histories and the sweep reports (contract section 4.3;
``scenarios/harness/checkers/sweep.py``):

* every session that was live for a whole sweep was seen by that sweep
  (the sweep sees every worker's sessions, not only its own process's);
* ``get_client_info`` failed only for sessions that were in fact closing;
* no sweep reported an error, whatever closed under its feet;
* each swept client got its ticks without a gap, then exactly one notice as
  the last message, then a close frame 4001;
* untouched clients stayed open and got no notice;
* afterwards no session is left and no process holds more fds than before.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from scenarios.harness.broadcast import StuckClient
from scenarios.harness.checkers.sweep import (
    HandshakingHistory,
    SweepHistory,
    SweptClient,
    check,
    check_handshaking,
    figure,
    handshaking_figure,
)
from scenarios.harness.client import ScenarioClient, connect_many, dispose_all
from scenarios.harness.common import counter_delta, warm_up
from scenarios.harness.spec import observe_leftovers
from scenarios.harness.waiting import settle, until

DOOMED_UID = 7
KEEP_UID = 1
PER_GROUP = 20
HALF_OPEN = 4  # TCP connections whose handshake never completes: sessions all the same (contract 1, 4.3)
SWEEP = {"uids": [DOOMED_UID], "interval_ms": 150, "pace_ms": 2, "notice": "swept"}


def tick_seqs(client: ScenarioClient) -> list[int]:
    return [e["seq"] for e in client.evs("tick") if e.get("to") == client.session]


async def warm_sweep(admin, clients: list[ScenarioClient]) -> None:
    """One sweep that closes a client on every worker, so the sweeper has met them all."""
    await asyncio.gather(*(c.request("bind", uid=DOOMED_UID) for c in clients))
    await admin.call("PUT", "/v1/sweep", {**SWEEP, "interval_ms": 50})
    await settle(lambda: all(c.is_closed for c in clients), timeout=10)
    await admin.call("DELETE", "/v1/sweep")


async def drive(target, admin, rng) -> SweepHistory:
    """Bind, tick, sweep while churn clients leave; the history."""
    h = SweepHistory()
    baseline_fds = await warm_up(target, admin, lambda clients: warm_sweep(admin, clients))
    stats_before = await admin.stats()
    url = target.ws_url
    keep, doomed, churn = await asyncio.gather(
        connect_many(url, "keep", PER_GROUP),
        connect_many(url, "doomed", PER_GROUP),
        connect_many(url, "churn", PER_GROUP),
    )
    everyone = keep + doomed + churn
    try:
        h.workers_used = sorted({c.worker for c in everyone})
        # A single-process target has one worker: the sweep must still see all of its sessions.
        h.workers_running = len([p for p in await admin.processes() if p.get("kind") == "worker"])
        for group, uid in ((keep, KEEP_UID), (doomed, DOOMED_UID), (churn, DOOMED_UID)):
            replies = await asyncio.gather(*(c.request("bind", uid=uid) for c in group))
            assert all(r.get("ok") for r in replies), replies
        await asyncio.gather(*(c.request("timer_start", interval_ms=20) for c in everyone))
        await until(
            lambda: all(len(tick_seqs(c)) >= 2 for c in everyone),
            timeout=10,
            what="every client receiving its ticks",
        )

        rule_set_at = time.time()
        status, body = await admin.request("PUT", "/v1/sweep", SWEEP)
        assert status == 200, f"PUT /v1/sweep answered {status}: {body}"

        async def leave(client: ScenarioClient, delay: float) -> None:
            await asyncio.sleep(delay)  # the churn schedule, not a synchronisation
            if client.is_closed:
                return
            if rng.random() < 0.5:
                client.abort()
            else:
                await client.close(1000, "bye")

        await asyncio.gather(*(leave(c, rng.uniform(0, 0.6)) for c in churn))
        await settle(lambda: all(c.is_closed for c in doomed), timeout=8)

        async def two_sweeps() -> bool:  # the first sweep may close every doomed client by itself
            state = await admin.call("GET", "/v1/sweep")
            return len([r for r in state.get("reports", []) if r["started"] >= rule_set_at]) >= 2

        await settle(two_sweeps, timeout=5, interval=0.05)
        sweep_state = await admin.call("GET", "/v1/sweep")
        await admin.call("DELETE", "/v1/sweep")
        # Untouched clients must still be served after the sweeps: a few more ticks each.
        counts = {c.name: len(tick_seqs(c)) for c in keep}
        await settle(lambda: all(len(tick_seqs(c)) >= counts[c.name] + 2 for c in keep), timeout=5)
        h.sweep_closes_counted = counter_delta(stats_before, await admin.stats(), "sweep_closes")
        h.disturbed = [
            {"client": c.name, "closed": c.close_frame, "notices": len(c.evs("notice"))}
            for c in keep
            if c.is_closed or c.evs("notice")
        ]
        h.starved = [c.name for c in keep if len(tick_seqs(c)) < counts[c.name] + 2]
    finally:
        await dispose_all(everyone)
    h.reports = [r for r in sweep_state.get("reports", []) if r["started"] >= rule_set_at]
    for group, clients in (("keep", keep), ("doomed", doomed), ("churn", churn)):
        for c in clients:
            h.clients.append(
                SweptClient(
                    c.name, group, c.session, c.worker, c.history[0].t, c.closing_since, c.close_frame,
                    [e.get("ev") for e in c.events], tick_seqs(c), c.excerpt(6),
                )
            )
    h.leftovers = await observe_leftovers(admin, baseline_fds)
    return h


@pytest.mark.scenario("task_sweep", seed="swoole: a task process checks all connections every second")
@pytest.mark.requires("task_sweep")
def test_task_sweep(target, admin, evidence, run_async):
    history = run_async(drive(target, admin, evidence.rng()))
    evidence.fact("workers_used", history.workers_used)
    evidence.fact("sweeps", len(history.reports))
    evidence.figure(figure(history))
    evidence.record(check(history))
    evidence.verdict()


# -- task_sweep_handshaking ----------------------------------------------------------------------


async def drive_handshaking(target, admin) -> HandshakingHistory:
    """A session exists from its TCP accept: a sweep sees it before its handshake completes (1, 4.3)."""
    h = HandshakingHistory(HALF_OPEN)
    baseline_fds = await warm_up(target, admin)
    stuck = [await StuckClient.connect("127.0.0.1", target.port) for _ in range(HALF_OPEN)]
    try:

        async def all_listed() -> bool:
            h.listed = {s["session"] for s in await admin.sessions() if s.get("state") == "connecting"}
            return len(h.listed) >= HALF_OPEN

        await settle(all_listed, timeout=5, interval=0.05)
        rule_set_at = time.time()
        await admin.call("PUT", "/v1/sweep", {"uids": [DOOMED_UID], "interval_ms": 100, "notice": "swept"})

        async def two_sweeps() -> bool:
            h.reports = [r for r in (await admin.call("GET", "/v1/sweep"))["reports"] if r["started"] >= rule_set_at]
            return len(h.reports) >= 2

        await settle(two_sweeps, timeout=5, interval=0.05)
        await admin.call("DELETE", "/v1/sweep")
        h.still = {s["session"] for s in await admin.sessions() if s.get("state") == "connecting"}
    finally:
        for client in stuck:
            client.abort()
    h.leftovers = await observe_leftovers(admin, baseline_fds)
    return h


@pytest.mark.scenario("task_sweep_handshaking", seed="swoole: connections lists a connection from onConnect, before the handshake")
@pytest.mark.requires("task_sweep")
def test_task_sweep_handshaking(target, admin, evidence, run_async):
    history = run_async(drive_handshaking(target, admin), timeout=60)
    evidence.figure(handshaking_figure(history))
    evidence.record(check_handshaking(history))
    evidence.verdict()
