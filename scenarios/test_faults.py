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
from scenarios.harness.admin import AdminClient, AdminError
from scenarios.harness.bystanders import AdminWatch, Watch, tick_times
from scenarios.harness.checkers.faults import (
    ADMIN_BOUND_S,
    BYSTANDER_GAP_S,
    NEW_BOUND_S,
    RELOAD_SLACK_S,
    REPLACEMENT_BOUND_S,
    STALL_NOTICE_S,
    TASK_OUTCOME_BOUND_S,
    VICTIM_BOUND_S,
    Bystander,
    TaskFate,
    TaskKillHistory,
    Victim,
    WorkerKillHistory,
    WorkerStallHistory,
    check_task_worker_kill,
    check_worker_kill,
    check_worker_stall,
    fault_figure,
    task_kill_figure,
)
from scenarios.harness.common import warm_up
from scenarios.harness.hostile import HostileClient
from scenarios.harness.spec import observe_leftovers
from scenarios.harness.waiting import settle

SEED = "Swoole BASE mode / Workerman: a worker's death takes its connections; ghosts and counters that go back"
SEED_STALL = "a stopped (SIGSTOP) worker keeps getting a share of new connections, which hang"
SEED_STALL_RELOAD = "a reload while a worker is stopped also force-kills a healthy worker (its sessions lost)"
SEED_TASK = "a killed task worker takes its running and queued tasks with it, and nobody tells the submitter"
PROFILE = {"workers": 3, "task_workers": 1}
PROFILE_TASK = {"workers": 2, "task_workers": 1}
LONG_TASK_MS = 4000  # running when its task worker is killed
QUEUED_TASK_MS = 100
QUEUED_TASKS = 5
TASK_RUNS_S = 0.5  # the kill comes this long after the tasks were accepted
PER_WORKER = 3  # sessions wanted on every worker before the kill
MAX_CONNECTS = 40  # connections opened at most to get them (a target may place them unevenly)
TICK_MS = 50
ECHO_EVERY_S = 0.1
NEW_PER_WORKER = 4  # new connections after the replacement, per worker
REPLY_BOUND_S = 5.0
#: How long a worker is stopped in fault_worker_stall.
STALL_S = 3.0
#: How long the other sessions are watched after the kill (longer than the gap bound).
OBSERVE_S = BYSTANDER_GAP_S + 0.5


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


async def others(admin: AdminClient, worker: int | None, *, but_kinds: tuple[str, ...] = ()) -> list[tuple[Any, Any]]:
    """(name, pid) of every process but the worker(s) of id ``worker`` and the kinds ``but_kinds``."""
    return sorted((p.get("name"), p["pid"]) for p in await admin.processes()
                  if not (p.get("kind") == "worker" and int(p["id"]) == worker) and p.get("kind") not in but_kinds)


class Spread:
    """Ticking sessions on every worker, and the worker chosen for the fault (the one with the most)."""

    sessions: dict[int, tuple[HostileClient, int]]
    victims: dict[int, tuple[HostileClient, Victim]]
    bystanders: list[tuple[HostileClient, Bystander]]
    victim_worker: int
    victim_pid: int
    victim_name: str

    @classmethod
    async def open(cls, target: Any, admin: AdminClient, workers: dict[int, dict[str, Any]],
                   clients: list[HostileClient]) -> Spread:
        self = cls()
        self.sessions = await open_spread(target, set(workers))
        clients += [c for c, _ in self.sessions.values()]
        for client, _ in self.sessions.values():
            await client.request("timer_start", interval_ms=TICK_MS, timeout=REPLY_BOUND_S)
        per_worker = Counter(w for _, w in self.sessions.values())
        self.victim_worker = max(sorted(per_worker), key=lambda w: per_worker[w])
        victim = workers[self.victim_worker]
        self.victim_pid = int(victim["pid"])
        self.victim_name = str(victim.get("name") or victim["pid"])
        self.bystanders = [(c, Bystander(sid, w)) for sid, (c, w) in self.sessions.items() if w != self.victim_worker]
        self.victims = {sid: (c, Victim(sid)) for sid, (c, w) in self.sessions.items() if w == self.victim_worker}
        # Ticks flow on every session before the fault.
        await settle(lambda: all(len(tick_times(c)) >= 3 for c, _ in self.sessions.values()), timeout=REPLY_BOUND_S,
                     interval=0.02)
        return self


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
        spread = await Spread.open(target, admin, workers, clients)
        sessions, victims, bystanders = spread.sessions, spread.victims, spread.bystanders
        h.victim_worker, h.victim_pid, victim_name = spread.victim_worker, spread.victim_pid, spread.victim_name
        h.bystanders = [b for _, b in bystanders]
        h.victims = [v for _, v in victims.values()]
        h.counters_before = dict((await admin.stats()).get("counters", {}))
        h.others_before = await others(admin, h.victim_worker)
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
    h.others_after = await others(admin, h.victim_worker)
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


async def serve_during_stall(target: Any, h: WorkerStallHistory, clients: list[HostileClient]) -> None:
    """New connections while a worker is stopped: each must be served within NEW_BOUND_S."""
    for i in range(NEW_PER_WORKER * h.workers):
        if len(h.new_failures) >= 2:  # the check has failed: the rest would only wait their bound each
            break
        h.new_clients += 1
        try:
            client = await asyncio.wait_for(HostileClient.connect("127.0.0.1", target.port, f"during{i}"), NEW_BOUND_S)
            clients.append(client)
            reply = await client.request("echo", seq=1, data="during the stall", timeout=NEW_BOUND_S)
        except (ConnectionError, OSError, TimeoutError) as exc:
            h.new_failures.append(f"connection {i}: {exc!r}"[:160])
            continue
        if reply.get("ok") is True:
            h.new_served += 1
        else:
            h.new_failures.append(str(reply)[:120])


async def drive_worker_stall(target: Any, admin: AdminClient, *, reload: bool = False) -> WorkerStallHistory:
    """A worker stopped for STALL_S; with ``reload``, a reload of scope all is asked for during the stall."""
    h = WorkerStallHistory(max_wait_ms=int(target.profile["max_wait_ms"]))
    replaced = ("worker", "task_worker") if reload else ()
    baseline = await warm_up(target, admin)
    workers = {int(p["id"]): p for p in await admin.processes() if p.get("kind") == "worker"}
    h.workers = len(workers)
    if h.workers < 2:
        return h
    clients: list[HostileClient] = []
    watch: Watch | None = None
    answered: dict[int, float] = {}  # victim session -> when its echo sent during the stall was answered

    async def late_echo(client: HostileClient, v: Victim) -> None:
        try:
            reply = await client.request("echo", seq=1, data="during the stall", timeout=STALL_S + VICTIM_BOUND_S + 1.0)
            if reply.get("ok") is True:
                answered[v.session] = time.time()
        except (ConnectionError, TimeoutError):
            pass

    try:
        spread = await Spread.open(target, admin, workers, clients)
        victims, bystanders = spread.victims, spread.bystanders
        h.victim_worker, h.victim_pid = spread.victim_worker, spread.victim_pid
        h.bystanders = [b for _, b in bystanders]
        h.victims = [v for _, v in victims.values()]
        h.counters_before = dict((await admin.stats()).get("counters", {}))
        h.others_before = await others(admin, None, but_kinds=replaced)
        watch = Watch(bystanders, ECHO_EVERY_S)
        watch.start()
        admin_watch = AdminWatch(admin, routes=("/v1/sessions", "/v1/stats"), every_s=0.2, bound_s=2 * ADMIN_BOUND_S)
        async with nemesis.stopped(spread.victim_name, spread.victim_pid) as window:
            admin_watch.start()
            probes = [asyncio.create_task(late_echo(c, v)) for c, v in victims.values()]
            await nemesis.hold_until(window.start + STALL_NOTICE_S)
            await serve_during_stall(target, h, clients)
            if reload:
                asked = time.monotonic()
                bound = h.max_wait_ms / 1000.0 + RELOAD_SLACK_S + REPLY_BOUND_S
                try:
                    h.reload = await asyncio.wait_for(
                        admin.call("POST", "/v1/reload", {"scope": "all", "wait": True}), bound
                    )
                    h.reload_s = round(time.monotonic() - asked, 3)
                except TimeoutError:
                    h.reload = {"state": f"no answer within {bound} s"}
                except AdminError as exc:
                    h.reload = {"state": f"refused: {exc}"[:200]}
                except ConnectionError as exc:  # the admin API dropped the request (its process restarted?)
                    h.reload = {"state": f"no answer: the connection ended ({exc!r})"[:200]}
            await nemesis.hold_until(window.start + STALL_S)
            h.admin = await admin_watch.stop()
        assert window.end is not None
        resumed = window.end
        h.stall_s = resumed - window.start
        await asyncio.gather(*probes)
        for sid, (client, v) in victims.items():
            if sid in answered:
                v.echo_after_s = round(answered[sid] - resumed, 3)
                try:
                    again = await client.request("echo", seq=2, data="again", timeout=REPLY_BOUND_S)
                    v.echo_again = again.get("ok") is True
                except (ConnectionError, TimeoutError):
                    v.echo_again = False

        async def victims_unlisted() -> bool:
            listed = {int(x["session"]) for x in await admin.sessions()}
            for c, v in victims.values():
                if c.is_closed and v.unlisted_after_s is None and v.session not in listed:
                    v.unlisted_after_s = round(time.time() - resumed, 3)
            return all(v.unlisted_after_s is not None for c, v in victims.values() if c.is_closed)

        await settle(victims_unlisted, timeout=max(0.0, resumed + VICTIM_BOUND_S + 0.5 - time.time()), interval=0.05)
        await settle(lambda: watch.ticked_after(resumed + 0.5), timeout=REPLY_BOUND_S, interval=0.05)
    finally:
        if watch is not None:
            await watch.stop(since=time.time() - 60.0)
    for client, v in victims.values():
        if client.is_closed:
            v.closed_after_s = round(client.closed_at - resumed, 3)
            v.close_code = client.close_code
    h.others_after = await others(admin, None, but_kinds=replaced)
    h.counters_after = dict((await admin.stats()).get("counters", {}))
    h.bystanders_closed = [b.session for c, b in bystanders if c.is_closed]
    if h.reload is not None:
        h.facts["reload"] = {k: h.reload.get(k) for k in ("reload", "state", "duration_ms", "forced_kills", "sessions_lost")}
    h.facts["timeline"] = {
        "windows": [window.as_dict()],
        "sessions": {
            str(sid): {"worker": w, "ticks_ms": [round((t - window.start) * 1000) for t in tick_times(c)],
                       "closed_ms": round((c.closed_at - window.start) * 1000) if c.is_closed else None}
            for sid, (c, w) in spread.sessions.items()
        },
    }
    h.facts["outcomes"] = {str(v.session): v.outcome().value for v in h.victims}
    h.facts["admin_slowest_s"] = max((a[2] for a in h.admin), default=None)
    for c in clients:
        c.abort()
    h.leftovers = await observe_leftovers(admin, baseline)
    return h


@pytest.mark.scenario("fault_worker_stall", seed=SEED_STALL)
def test_fault_worker_stall(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "fault_worker_stall")
    admin = AdminClient(target.admin_url, target.admin_token)
    history = run_async(drive_worker_stall(target, admin), timeout=120)
    if history.workers < 2:
        pytest.skip(f"unsupported: the target lists {history.workers} worker(s); a stalled worker needs another")
    evidence.add_facts(history.facts)
    evidence.figure(fault_figure(history.facts.get("timeline", {}), history.facts.get("outcomes", {}), history.victim_worker))
    evidence.record(check_worker_stall(history))
    evidence.verdict()


@pytest.mark.scenario("fault_worker_stall_reload", seed=SEED_STALL_RELOAD)
@pytest.mark.requires("reload")
def test_fault_worker_stall_reload(target_factory, evidence, run_async) -> None:
    target = target_factory({**PROFILE, "max_wait_ms": 2000}, "fault_worker_stall_reload")
    admin = AdminClient(target.admin_url, target.admin_token)
    history = run_async(drive_worker_stall(target, admin, reload=True), timeout=120)
    if history.workers < 2:
        pytest.skip(f"unsupported: the target lists {history.workers} worker(s); a stalled worker needs another")
    evidence.add_facts(history.facts)
    evidence.figure(fault_figure(history.facts.get("timeline", {}), history.facts.get("outcomes", {}), history.victim_worker))
    evidence.record(check_worker_stall(history))
    evidence.verdict()


def task_outcomes(client: HostileClient, request: Any, since: float) -> list[tuple[str, int | None, float]]:
    """The task_result / task_failed events for request id ``request``: (kind, code, seconds after ``since``)."""
    out = []
    for r in client.received:
        v = r.value
        if isinstance(v, dict) and v.get("ev") in ("task_result", "task_failed") and v.get("re") == request:
            error = v.get("error") if isinstance(v.get("error"), dict) else {}
            out.append((str(v["ev"]), error.get("code"), round(r.at - since, 3)))
    return out


async def drive_task_worker_kill(target: Any, admin: AdminClient) -> TaskKillHistory:
    h = TaskKillHistory()
    baseline = await warm_up(target, admin)
    task_workers = sorted((p for p in await admin.processes() if p.get("kind") == "task_worker"), key=lambda p: p["id"])
    h.task_workers = len(task_workers)
    if not task_workers:
        return h
    victim = task_workers[0]
    h.victim_pid = int(victim["pid"])
    victim_name = str(victim.get("name") or victim["pid"])
    watch = await Watch.open(target.port, 2, tick_ms=TICK_MS, echo_every_s=ECHO_EVERY_S)
    submitter = await HostileClient.connect("127.0.0.1", target.port, "submitter")
    killed = 0.0
    try:
        h.counters_before = dict((await admin.stats()).get("counters", {}))
        h.others_before = await others(admin, None, but_kinds=("task_worker",))
        watch.start()
        requests = []
        for i, sleep_ms in enumerate([LONG_TASK_MS] + [QUEUED_TASK_MS] * QUEUED_TASKS):
            reply = await submitter.request("task", data=i, sleep_ms=sleep_ms, timeout=REPLY_BOUND_S)
            if reply.get("ok") is True:
                requests.append((submitter._ids, sleep_ms))
        submitted = time.time()
        await nemesis.hold_until(submitted + TASK_RUNS_S)  # the long task runs, the others wait behind it
        window = await nemesis.kill(victim_name, h.victim_pid)
        killed = window.start
        # In flight: nothing had come for the long task before the signal (what came after is the kill's doing).
        h.in_flight_at_kill = bool(requests) and not [o for o in task_outcomes(submitter, requests[0][0], killed)
                                                      if o[2] < 0]
        h.tasks = [TaskFate(req, sleep_ms) for req, sleep_ms in requests]

        def settled() -> bool:
            return all(task_outcomes(submitter, t.request, killed) for t in h.tasks)

        async def replaced() -> bool:
            for p in await admin.processes():
                if p.get("kind") == "task_worker" and p["id"] == victim["id"] and int(p["pid"]) != h.victim_pid:
                    h.replacement_pid = int(p["pid"])
                    h.replacement_after_s = round(time.time() - killed, 3)
                    return True
            return False

        # Both at once: the replacement is timed from the kill, not from the last outcome.
        await asyncio.gather(
            settle(settled, timeout=TASK_OUTCOME_BOUND_S, interval=0.05),
            settle(replaced, timeout=REPLACEMENT_BOUND_S + 1.0, interval=0.05),
        )
        await settle(lambda: _ready(admin), timeout=REPLACEMENT_BOUND_S, interval=0.05)
        for i in range(2):
            reply = await submitter.request("task", data=f"after-{i}", sleep_ms=0, timeout=REPLY_BOUND_S)
            if reply.get("ok") is not True:
                h.after.append(f"refused: {str(reply)[:160]}")
                continue
            req = submitter._ids
            await settle(lambda req=req: task_outcomes(submitter, req, killed), timeout=REPLY_BOUND_S, interval=0.02)
            got = task_outcomes(submitter, req, killed)
            h.after.append(got[0][0] if got else "no outcome")
        # One more moment for duplicates: a second outcome for a task would arrive behind these.
        later = time.time() + 0.2
        await settle(lambda: watch.ticked_after(later), timeout=REPLY_BOUND_S, interval=0.05)
    finally:
        h.bystanders = await watch.stop(since=killed - 1.0 if killed else time.time())
        watch.abort()
        submitter.abort()
    for t in h.tasks:
        t.outcomes = task_outcomes(submitter, t.request, killed)
    h.others_after = await others(admin, None, but_kinds=("task_worker",))
    h.counters_after = dict((await admin.stats()).get("counters", {}))
    baseline.pop(victim_name, None)
    h.leftovers = await observe_leftovers(admin, baseline)
    h.facts["tasks"] = {str(t.request): {"sleep_ms": t.sleep_ms, "outcomes": t.outcomes} for t in h.tasks}
    h.facts["timeline"] = {"windows": [window.as_dict()]}
    h.facts["replacement"] = {"pid": h.replacement_pid, "after_s": h.replacement_after_s, "new_tasks": h.after}
    return h


@pytest.mark.scenario("fault_task_worker_kill", seed=SEED_TASK)
def test_fault_task_worker_kill(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE_TASK, "fault_task_worker_kill")
    admin = AdminClient(target.admin_url, target.admin_token)
    history = run_async(drive_task_worker_kill(target, admin), timeout=120)
    if history.task_workers < 1:
        pytest.skip("unsupported: the target lists no task worker")
    evidence.add_facts(history.facts)
    evidence.figure(task_kill_figure(history))
    evidence.record(check_task_worker_kill(history))
    evidence.verdict()


@pytest.mark.scenario("fault_worker_kill", seed=SEED)
def test_fault_worker_kill(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "fault_worker_kill")
    admin = AdminClient(target.admin_url, target.admin_token)
    history = run_async(drive_worker_kill(target, admin), timeout=120)
    if history.workers < 2:
        pytest.skip(f"unsupported: the target lists {history.workers} worker(s); a worker kill needs two")
    evidence.add_facts(history.facts)
    evidence.figure(fault_figure(history.facts.get("timeline", {}), history.facts.get("outcomes", {}), history.victim_worker))
    evidence.record(check_worker_kill(history))
    evidence.verdict()
