"""Scenarios: a process of the target fails (contract section 13; no capability).

``fault_worker_kill`` (13.1). The promise: when one worker is killed with SIGKILL, the sessions of
the other workers do not notice; each session of the killed worker is either kept (its
connection lives elsewhere and is still answered) or closed promptly and gone from the session
list, never left open and silent, never a ghost; a worker of the same id replaces it and serves
new connections; no other process goes down with it; and what it counted still counts.

The seeds: a Swoole BASE-mode or Workerman worker that dies takes its connections with it,
and a server that keeps a dead worker's sessions in its tables lists ghosts that every sweep and
push then trips over; counters kept only in the dead process's memory go back in time.

``drive_*`` record what happened (the fault windows with it, for the evidence's picture); the
checks are pure, in ``scenarios/harness/checkers/faults.py`` (unit tests:
``tests/test_checkers_faults.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from scenarios.harness import nemesis
from scenarios.harness.admin import AdminClient
from scenarios.harness.bystanders import Watch, tick_times
from scenarios.harness.checkers.faults import (
    BYSTANDER_GAP_S,
    REPLACEMENT_BOUND_S,
    VICTIM_BOUND_S,
    Bystander,
    Victim,
    WorkerKillHistory,
    check_worker_kill,
)
from scenarios.harness.common import warm_up
from scenarios.harness.hostile import HostileClient
from scenarios.harness.spec import observe_leftovers
from scenarios.harness.waiting import settle

SEED = "Swoole BASE mode / Workerman: a worker's death takes its connections; ghosts and counters that go back"
PROFILE = {"workers": 3, "task_workers": 1}
PER_WORKER = 3  # sessions wanted on every worker before the kill
MAX_CONNECTS = 40  # connections opened at most to get them (a target may place them unevenly)
TICK_MS = 50
ECHO_EVERY_S = 0.1
NEW_PER_WORKER = 4  # new connections after the replacement, per worker
REPLY_BOUND_S = 5.0
#: How long the other sessions are watched after the kill (longer than the gap bound).
OBSERVE_S = BYSTANDER_GAP_S + 1.0


async def _connect(target: Any, name: str) -> HostileClient:
    return await HostileClient.connect("127.0.0.1", target.port, name)


async def open_spread(target: Any, workers: set[int]) -> dict[int, tuple[HostileClient, int]]:
    """Sessions until every worker has PER_WORKER of them (or MAX_CONNECTS): session -> (client, worker)."""
    sessions: dict[int, tuple[HostileClient, int]] = {}
    count: Counter[int] = Counter()
    for i in range(MAX_CONNECTS):
        if all(count[w] >= PER_WORKER for w in workers):
            break
        client = await _connect(target, f"s{i}")
        who = await client.request("whoami", timeout=REPLY_BOUND_S)
        sessions[int(who["session"])] = (client, int(who["worker"]))
        count[int(who["worker"])] += 1
    return sessions


async def _ready(admin: AdminClient) -> bool:
    status, _ = await admin.request("GET", "/ready")
    return status == 200


async def serve_new(target: Any, admin: AdminClient, h: WorkerKillHistory, clients: list[HostileClient]) -> None:
    """New connections after the replacement: each must answer; count those the replacement owns."""
    for i in range(NEW_PER_WORKER * h.workers):
        h.new_clients += 1
        try:
            client = await _connect(target, f"new{i}")
            clients.append(client)
            who = await client.request("whoami", timeout=REPLY_BOUND_S)
            reply = await client.request("echo", seq=1, data="new", timeout=REPLY_BOUND_S)
        except (ConnectionError, OSError, TimeoutError) as exc:
            h.new_failures.append(repr(exc)[:120])
            continue
        if reply.get("ok") is True:
            h.new_served += 1
            h.new_on_replacement += int(who.get("worker") == h.victim_worker)
        else:
            h.new_failures.append(str(reply)[:120])


async def drive_worker_kill(target: Any, admin: AdminClient) -> WorkerKillHistory:
    h = WorkerKillHistory()
    baseline = await warm_up(target, admin)
    workers = {int(p["id"]): p for p in await admin.processes() if p.get("kind") == "worker"}
    h.workers = len(workers)
    if h.workers < 2:
        return h
    clients: list[HostileClient] = []
    watch: Watch | None = None
    killed = 0.0
    try:
        sessions = await open_spread(target, set(workers))
        clients += [c for c, _ in sessions.values()]
        for client, _ in sessions.values():
            await client.request("timer_start", interval_ms=TICK_MS, timeout=REPLY_BOUND_S)
        per_worker = Counter(w for _, w in sessions.values())
        h.victim_worker = max(sorted(per_worker), key=lambda w: per_worker[w])
        victim = workers[h.victim_worker]
        h.victim_pid = int(victim["pid"])
        victim_name = str(victim.get("name") or victim["pid"])
        bystanders = [(c, Bystander(sid, w)) for sid, (c, w) in sessions.items() if w != h.victim_worker]
        victims = {sid: (c, Victim(sid)) for sid, (c, w) in sessions.items() if w == h.victim_worker}
        h.bystanders = [b for _, b in bystanders]
        h.victims = [v for _, v in victims.values()]
        # Ticks flow on every session before the fault.
        await settle(lambda: all(len(tick_times(c)) >= 3 for c, _ in sessions.values()), timeout=REPLY_BOUND_S,
                     interval=0.02)
        h.counters_before = dict((await admin.stats()).get("counters", {}))
        h.others_before = sorted((p.get("name"), p["pid"]) for p in await admin.processes()
                                 if not (p.get("kind") == "worker" and int(p["id"]) == h.victim_worker))
        watch = Watch(bystanders, ECHO_EVERY_S)
        watch.start()
        window = await nemesis.kill(victim_name, h.victim_pid)
        h.killed_at = killed = window.start

        async def probe(client: HostileClient, v: Victim) -> None:
            try:
                reply = await client.request("echo", seq=1, data="after the kill", timeout=VICTIM_BOUND_S)
                if reply.get("ok") is True:
                    v.echo_after_s = round(time.time() - killed, 3)
            except (ConnectionError, TimeoutError):
                pass

        await asyncio.gather(*(probe(c, v) for c, v in victims.values()))

        async def victims_unlisted() -> bool:
            listed = {int(s["session"]) for s in await admin.sessions()}
            now = time.time()
            for c, v in victims.values():
                if c.is_closed and v.unlisted_after_s is None and v.session not in listed:
                    v.unlisted_after_s = round(now - killed, 3)
            return all(v.unlisted_after_s is not None for c, v in victims.values() if c.is_closed)

        await settle(victims_unlisted, timeout=max(0.0, killed + VICTIM_BOUND_S + 0.5 - time.time()), interval=0.05)

        async def replaced() -> bool:
            for p in await admin.processes():
                if p.get("kind") == "worker" and int(p["id"]) == h.victim_worker and int(p["pid"]) != h.victim_pid:
                    h.replacement_pid = int(p["pid"])
                    h.replacement_after_s = round(time.time() - killed, 3)
                    return True
            return False

        await settle(replaced, timeout=REPLACEMENT_BOUND_S + 1.0, interval=0.05)
        await settle(lambda: _ready(admin), timeout=REPLACEMENT_BOUND_S, interval=0.05)
        await serve_new(target, admin, h, clients)
        for client, v in victims.values():
            if v.echo_after_s is not None and not client.is_closed:
                try:
                    v.echo_again = (await client.request("echo", seq=2, data="again", timeout=REPLY_BOUND_S)).get("ok") is True
                except (ConnectionError, TimeoutError):
                    v.echo_again = False
        # Watch the others long enough after the kill that a stall past the gap bound shows.
        await settle(lambda: watch.ticked_after(killed + OBSERVE_S),
                     timeout=max(0.0, killed + OBSERVE_S + REPLY_BOUND_S - time.time()), interval=0.05)
    finally:
        if watch is not None:
            await watch.stop(since=killed - 1.0 if killed else time.time())
    for client, v in victims.values():
        if client.is_closed:
            v.closed_after_s = round(client.closed_at - killed, 3)
            v.close_code = client.close_code
    h.others_after = sorted((p.get("name"), p["pid"]) for p in await admin.processes()
                            if not (p.get("kind") == "worker" and int(p["id"]) == h.victim_worker))
    h.counters_after = dict((await admin.stats()).get("counters", {}))
    h.facts["timeline"] = {
        "windows": [window.as_dict()],
        "sessions": {
            str(sid): {"worker": w, "ticks_ms": [round((t - killed) * 1000) for t in tick_times(c)],
                       "closed_ms": round((c.closed_at - killed) * 1000) if c.is_closed else None}
            for sid, (c, w) in sessions.items()
        },
    }
    for c in clients:
        c.abort()
    baseline.pop(victim_name, None)  # its replacement is a new process: compared with nothing (contract 5)
    h.leftovers = await observe_leftovers(admin, baseline)
    h.facts["outcomes"] = {str(v.session): v.outcome().value for v in h.victims}
    h.facts["replacement"] = {"pid": h.replacement_pid, "after_s": h.replacement_after_s,
                              "new_on_replacement": h.new_on_replacement, "new": h.new_clients}
    return h


@pytest.mark.scenario("fault_worker_kill", seed=SEED)
def test_fault_worker_kill(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "fault_worker_kill")
    admin = AdminClient(target.admin_url, target.admin_token)
    history = run_async(drive_worker_kill(target, admin), timeout=120)
    if history.workers < 2:
        pytest.skip(f"unsupported: the target lists {history.workers} worker(s); a worker kill needs two")
    evidence.add_facts(history.facts)
    evidence.record(check_worker_kill(history))
    evidence.verdict()
