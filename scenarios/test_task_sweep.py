"""Scenario: a task process sweeps every connection of every worker (seed: Swoole task sweep).

Clients spread over the workers; a third of them are bound to uid 7, which the
sweep rule closes. While sweeps run, "churn" clients (also uid 7) leave on
their own, gracefully or with a TCP reset, so sessions vanish mid-sweep.

Checked from the histories and the sweep reports (contract section 4.3):

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
from scenarios.harness.client import ScenarioClient, connect_many, dispose_all
from scenarios.harness.common import check_no_leaks, counter_delta, warm_up
from scenarios.harness.waiting import settle, until

DOOMED_UID = 7
KEEP_UID = 1
PER_GROUP = 20
HALF_OPEN = 4  # TCP connections whose handshake never completes: sessions all the same (contract 1, 4.3)
SWEEP = {"uids": [DOOMED_UID], "interval_ms": 150, "pace_ms": 2, "notice": "swept"}
SWEPT_CODE = 4001


def tick_seqs(client: ScenarioClient) -> list[int]:
    return [e["seq"] for e in client.evs("tick") if e.get("to") == client.session]


async def warm_sweep(admin, clients: list[ScenarioClient]) -> None:
    """One sweep that closes a client on every worker, so the sweeper has met them all."""
    await asyncio.gather(*(c.request("bind", uid=DOOMED_UID) for c in clients))
    await admin.call("PUT", "/v1/sweep", {**SWEEP, "interval_ms": 50})
    await settle(lambda: all(c.is_closed for c in clients), timeout=10)
    await admin.call("DELETE", "/v1/sweep")


async def scenario(target, admin, evidence) -> None:
    rng = evidence.rng()
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
        workers = sorted({c.worker for c in everyone})
        evidence.fact("workers_used", workers)
        # A single-process target has one worker: the sweep must still see all of its sessions.
        running = [p for p in await admin.processes() if p.get("kind") == "worker"]
        evidence.check(
            "clients are spread over several workers (if the target runs several)",
            len(workers) >= min(2, len(running)),
            expected=f">= {min(2, len(running))} workers ({len(running)} running)",
            observed=workers,
        )
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
        all_swept = await settle(lambda: all(c.is_closed for c in doomed), timeout=8)
        evidence.fact("all_doomed_closed_in_time", all_swept)

        async def two_sweeps() -> bool:  # the first sweep may close every doomed client by itself
            state = await admin.call("GET", "/v1/sweep")
            return len([r for r in state.get("reports", []) if r["started"] >= rule_set_at]) >= 2

        await settle(two_sweeps, timeout=5, interval=0.05)
        sweep_state = await admin.call("GET", "/v1/sweep")
        await admin.call("DELETE", "/v1/sweep")
        # Untouched clients must still be served after the sweeps: a few more ticks each.
        counts = {c.name: len(tick_seqs(c)) for c in keep}
        await settle(lambda: all(len(tick_seqs(c)) >= counts[c.name] + 2 for c in keep), timeout=5)
        stats_after = await admin.stats()
        disturbed = [
            {"client": c.name, "closed": c.close_frame, "notices": len(c.evs("notice"))}
            for c in keep
            if c.is_closed or c.evs("notice")
        ]
        starved = [c.name for c in keep if len(tick_seqs(c)) < counts[c.name] + 2]
    finally:
        await dispose_all(everyone)

    reports = [r for r in sweep_state.get("reports", []) if r["started"] >= rule_set_at]
    evidence.fact("sweeps", len(reports))
    evidence.fact("sweep_rule", sweep_state.get("rule"))
    evidence.check("sweeps ran", len(reports) >= 2, expected=">= 2 sweep reports", observed=len(reports))

    by_session = {c.session: c for c in everyone}
    open_at = {c.session: c.history[0].t for c in everyone}
    missed, bad_missing, errors = [], [], []
    for rep in reports:
        seen = set(rep["seen"])
        for sid, client in by_session.items():
            live_through = open_at[sid] < rep["started"] and (
                client.closed_at is None or client.closed_at > rep["ended"]
            )
            if live_through and sid not in seen:
                missed.append({"sweep": rep["sweep"], "session": sid, "client": client.name, "worker": client.worker})
        for sid in rep["info_missing"]:
            client = by_session.get(sid)
            if client is not None and (client.closed_at is None or client.closed_at > rep["ended"]):
                bad_missing.append({"sweep": rep["sweep"], "session": sid, "client": client.name})
        errors += [{"sweep": rep["sweep"], "error": e} for e in rep["errors"]]
    evidence.check(
        "each sweep saw every session that was live throughout it, on every worker",
        not missed,
        expected="no live session missed",
        observed=f"{len(missed)} missed",
        missed=missed,
    )
    evidence.check(
        "get_client_info failed only for sessions that were closing",
        not bad_missing,
        expected="info for every live session",
        observed=bad_missing or "none failed for a live session",
    )
    evidence.check("sweeps reported no error while sessions closed under them", not errors, expected=[], observed=errors)

    wrong_close, wrong_order = [], []
    for c in doomed:
        if c.close_frame is None or c.close_frame[0] != SWEPT_CODE:
            wrong_close.append({"client": c.name, "session": c.session, "close_frame": c.close_frame, "tail": c.excerpt(4)})
            continue
        kinds = [e.get("ev") for e in c.events]
        seqs = tick_seqs(c)
        notices = kinds.count("notice")
        ok = (
            notices == 1
            and kinds[-1] == "notice"
            and seqs == list(range(1, len(seqs) + 1))
        )
        if not ok:
            wrong_order.append({"client": c.name, "notices": notices, "last": kinds[-3:], "ticks": seqs[-5:], "tail": c.excerpt(6)})
    evidence.check(
        f"every swept client got a close frame {SWEPT_CODE}",
        not wrong_close,
        expected=f"close frame {SWEPT_CODE} for {len(doomed)} clients",
        observed=f"{len(wrong_close)} without it",
        clients=wrong_close,
    )
    evidence.check(
        "every swept client got all its ticks, then the notice last, then the close frame",
        not wrong_order,
        expected="ticks 1..k without gap, one notice, nothing after it",
        observed=f"{len(wrong_order)} clients out of order",
        clients=wrong_order,
    )
    evidence.check(
        "clients the rule does not match stay open, get no notice, keep getting ticks",
        not disturbed and not starved,
        expected="untouched",
        observed={"disturbed": disturbed, "starved": starved},
    )
    closed_by_sweeps = sum(len(r["closed"]) for r in reports)
    delta = counter_delta(stats_before, stats_after, "sweep_closes")
    evidence.check(
        "stats count the sweep's closes",
        delta == closed_by_sweeps,
        expected=closed_by_sweeps,
        observed=delta,
    )
    await check_no_leaks(admin, evidence, baseline_fds)


@pytest.mark.scenario("task_sweep", seed="swoole: a task process checks all connections every second")
@pytest.mark.requires("task_sweep")
def test_task_sweep(target, admin, evidence, run_async):
    run_async(scenario(target, admin, evidence))
    evidence.verdict()


# -- task_sweep_handshaking ----------------------------------------------------------------------


async def handshaking(target, admin, evidence) -> None:
    """A session exists from its TCP accept: a sweep sees it before its handshake completes (1, 4.3)."""
    baseline_fds = await warm_up(target, admin)
    stuck = [await StuckClient.connect("127.0.0.1", target.port) for _ in range(HALF_OPEN)]
    listed: set[int] = set()
    reports: list[dict] = []
    try:

        async def all_listed() -> bool:
            nonlocal listed
            listed = {s["session"] for s in await admin.sessions() if s.get("state") == "connecting"}
            return len(listed) >= HALF_OPEN

        await settle(all_listed, timeout=5, interval=0.05)
        rule_set_at = time.time()
        await admin.call("PUT", "/v1/sweep", {"uids": [DOOMED_UID], "interval_ms": 100, "notice": "swept"})

        async def two_sweeps() -> bool:
            nonlocal reports
            reports = [r for r in (await admin.call("GET", "/v1/sweep"))["reports"] if r["started"] >= rule_set_at]
            return len(reports) >= 2

        await settle(two_sweeps, timeout=5, interval=0.05)
        await admin.call("DELETE", "/v1/sweep")
        still = {s["session"] for s in await admin.sessions() if s.get("state") == "connecting"}
    finally:
        for client in stuck:
            client.abort()
    evidence.check(
        "sessions whose handshake is not complete exist (listed as connecting)",
        len(listed) >= HALF_OPEN,
        expected=f">= {HALF_OPEN} sessions in state connecting",
        observed=sorted(listed),
    )
    evidence.check("sweeps ran", len(reports) >= 2, expected=">= 2 sweep reports", observed=len(reports))
    watched = listed & still  # mid-handshake from before the rule to after the sweeps
    unseen = [{"sweep": r["sweep"], "sessions": sorted(watched - set(r["seen"]))} for r in reports if watched - set(r["seen"])]
    evidence.check(
        "each sweep saw the sessions whose handshake is not complete",
        bool(watched) and bool(reports) and not unseen,
        expected=f"the {HALF_OPEN} connecting sessions in every report's 'seen'",
        observed=unseen or (f"all {len(watched)} seen by {len(reports)} sweeps" if watched else "none listed"),
    )
    await check_no_leaks(admin, evidence, baseline_fds)


@pytest.mark.scenario("task_sweep_handshaking", seed="swoole: connections lists a connection from onConnect, before the handshake")
@pytest.mark.requires("task_sweep")
def test_task_sweep_handshaking(target, admin, evidence, run_async):
    run_async(handshaking(target, admin, evidence), timeout=60)
    evidence.verdict()
