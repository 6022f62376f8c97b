"""Scenarios: reload while timers push, with zero dropped sessions (seed: Swoole reload).

The seed: after ``reload()``, the old worker's timers keep firing and push to
sessions that are no longer there (a warning per push), or a second timer
stream starts next to the old one. Here every client subscribes to its own
10 ms tick; each tick carries its timer's sequence number and the generation
of the process that sent it.

``reload_ticks``
    200 clients ticking; a full reload while a task is in flight, with two more
    requests (one from a worker, through the app op) that must be merged into
    it; a task-worker-only reload; a reload asked for by a worker; a reload by
    signal. From the histories and the target's records: no session closed;
    per session, tick numbers strictly increase, none is lost, and no tick of
    an old generation arrives after one of a newer generation; the longest
    silence during each reload is bounded by ``max_wait_ms`` (and reported);
    no push reached a dead session; every old process exited with zero timers
    left; counters and generations are as expected.

``reload_disconnects``
    Clients leave (close frames and resets) and new ones arrive while a reload
    runs: no push is made to a session after its close is known, the new
    clients are served by the new generation (a new client the reload refuses
    or closes counts as not served), the others tick on undisturbed.

``reload_repeated``
    50 reloads in a row under ticks: the master's and each worker's fds and
    memory stay within a small bound of their baseline. A reload that kills a
    process or loses a session ends the series there (the leak check is then
    failed as not judged, and the retired-process checks say why).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest
import websockets

from scenarios.harness.admin import AdminClient
from scenarios.harness.checkers.reload import (
    NO_REPLY,
    DisconnectsHistory,
    RepeatedHistory,
    Ticking,
    TicksHistory,
    check_disconnects,
    check_repeated,
    check_ticks_history,
    tick_figure,
    tick_gaps,
)
from scenarios.harness.client import ScenarioClient, connect_many, dispose_all
from scenarios.harness.common import (
    counter_delta,
    counters_decreased,
    mark_sessions,
    state_changes,
    warm_up,
)
from scenarios.harness.reloads import (
    SIGNALS,
    ReloadWindow,
    alive,
    own_ticks,
    reload_by_admin,
    reload_by_signal,
    reload_status,
    summarize_ms,
    usage,
    wait_done,
)
from scenarios.harness.spec import observe_leftovers
from scenarios.harness.waiting import WaitTimeout, settle, until

TICK_MS = 10
MAX_WAIT_MS = 3000
TASK_MS = MAX_WAIT_MS // 2  # the task the first reload must wait for: long, and well inside max_wait_ms
CLOCK_SLACK_MS = 2  # timer granularity of a target that sleeps exactly sleep_ms
PROFILE = {"workers": 3, "task_workers": 2, "max_wait_ms": MAX_WAIT_MS}


async def start_ticks(clients: list[ScenarioClient], interval_ms: int = TICK_MS) -> dict[str, int]:
    replies = await asyncio.gather(*(c.request("timer_start", interval_ms=interval_ms) for c in clients))
    bad = [(c.name, r) for c, r in zip(clients, replies, strict=True) if not r.get("ok")]
    assert not bad, f"timer_start refused: {bad[:3]}"
    await until(lambda: all(len(own_ticks(c)) >= 3 for c in clients), timeout=20, what="every client ticking")
    return {c.name: r["timer"] for c, r in zip(clients, replies, strict=True)}


async def stop_ticks(clients: list[ScenarioClient], timers: dict[str, int]) -> dict[str, int]:
    """Stop every timer; each reply says how many ticks it sent (its last seq)."""
    finals = await asyncio.gather(*(c.request("timer_stop", timer=timers[c.name]) for c in clients))
    seqs = {c.name: int(f.get("seq", -1)) for c, f in zip(clients, finals, strict=True)}
    await settle(lambda: all(len(own_ticks(c)) >= seqs[c.name] for c in clients if not c.is_closed), timeout=10)
    return seqs


def worker_procs(procs: list[dict]) -> dict[str, dict]:
    return {p["name"]: p for p in procs if p["kind"] in ("worker", "task_worker")}


async def do_reload(target, admin: AdminClient, label: str, scope: str, how: str) -> ReloadWindow:
    if how == "signal" and "reload_signals" in target.capabilities:
        return await reload_by_signal(target, admin, SIGNALS[scope], label)
    return await reload_by_admin(admin, label, scope)


def ticking(c: ScenarioClient, finals: dict[str, int] | None = None) -> Ticking:
    """What the checkers read of a ticking client."""
    return Ticking(
        c.name, own_ticks(c), finals.get(c.name) if finals else None, c.is_closed, c.close_frame, c.excerpt(4)
    )


def tick_facts(evidence, clients: list[Ticking], windows: list[ReloadWindow]) -> None:
    evidence.fact("ticks_received", sum(len(c.ticks) for c in clients))
    evidence.fact("tick_gap_ms_during_reloads", {k: summarize_ms(v) for k, v in tick_gaps(clients, windows).items()})


async def old_left(admin: AdminClient, old_pids: dict[int, str]) -> dict[int, str]:
    """The replaced processes still listed or alive, after a bounded wait."""
    current = {int(p["pid"]) for p in await admin.processes()}

    def still_there() -> dict[int, str]:
        return {pid: name for pid, name in old_pids.items() if pid in current or alive(pid)}

    await settle(lambda: not still_there(), timeout=5)
    return still_there()


# -- reload_ticks ------------------------------------------------------------------------------


async def replied(request: Awaitable[dict]) -> dict:
    """A worker's reload op: its reply, or ``no_reply`` (the check "every reload request gets a
    reply" fails; the scenario goes on, so that every other check still says what it saw)."""
    try:
        return await request
    except WaitTimeout as exc:
        return {"ok": False, NO_REPLY: str(exc)}


async def drive_ticks(target) -> TicksHistory:
    """200 ticking clients through four reloads (merged, task workers only, from a worker, by signal)."""
    h = TicksHistory(MAX_WAIT_MS, TASK_MS, CLOCK_SLACK_MS)
    admin = AdminClient(target.admin_url, target.admin_token)
    baseline = await warm_up(target, admin)
    stats_before = await admin.stats()
    status_before = await reload_status(admin)
    clients = await connect_many(target.ws_url, "tick", 200)
    tasker, asker = clients[0], clients[1]
    snapshots = [stats_before]  # /v1/stats before and after each reload: no counter may go down
    old_pids: dict[int, str] = {}
    try:
        await mark_sessions(clients, 7000, groups="migrate" in target.capabilities)
        marked = await admin.sessions()
        h.marked = bool(marked)
        timers = await start_ticks(clients)
        procs0 = worker_procs(await admin.processes())
        old_pids.update({int(p["pid"]): n for n, p in procs0.items()})
        h.reloaded_before = bool(status_before["history"])
        h.first_gens = {n: p.get("generation") for n, p in procs0.items()}

        # 1. A full reload while a task runs, and two requests merged into it. Once the task has
        # started, it holds its old task worker for TASK_MS (contract 3.1: a task runs its full
        # sleep_ms, reload or not), so the reload runs that long. But the task's reply means
        # "queued": on a busy machine the reload can come first, the queued task goes to the
        # successor and the reload is over at once. So the other two requests leave together,
        # right after the first, and the checker judges each by when it arrived (its reply,
        # or the reload it started, against the first one's `finished`).
        task_sent = time.time()  # the task cannot start before its request leaves
        h.task = await tasker.request("task", data="in flight", sleep_ms=TASK_MS)
        window = ReloadWindow("full + merged requests", time.time())
        first = await admin.call("POST", "/v1/reload", {"scope": "all"})

        async def second_request() -> dict:
            reply = await admin.call("POST", "/v1/reload", {"scope": "all"})
            return {**reply, "_t": time.time()}

        second, third = await asyncio.gather(second_request(), replied(asker.request("reload", scope="task_workers")))
        window.record = await wait_done(admin, first["reload"])
        window.done = time.time()
        h.windows.append(window)
        for key, reply in (("second", second), ("third", third)):
            if reply.get("merged") is False and reply.get("reload") not in (None, first.get("reload")):
                h.merge_records[key] = await wait_done(admin, reply["reload"])  # it started a reload of its own
        snapshots.append(await admin.stats())
        h.merge = {"first": first, "second": second, "third": third}
        await settle(lambda: len(tasker.evs("task_result")) >= 1, timeout=5)
        h.task_results = [e for e in tasker.evs("task_result") if e.get("task") == h.task.get("task")]
        if h.task.get("ok") and h.task_results:
            h.task_held_ms = round((h.task_results[0]["_t"] - task_sent) * 1000, 1)

        # 2. Task workers only.
        procs1 = worker_procs(await admin.processes())
        old_pids.update({int(p["pid"]): n for n, p in procs1.items()})
        h.windows.append(await do_reload(target, admin, "task workers only", "task_workers", "signal"))
        snapshots.append(await admin.stats())
        procs2 = worker_procs(await admin.processes())
        h.workers_replaced = [
            n for n, p in procs1.items() if p["kind"] == "worker" and procs2.get(n, {}).get("pid") != p["pid"]
        ]
        h.task_workers_kept = [
            n for n, p in procs1.items() if p["kind"] == "task_worker" and procs2.get(n, {}).get("pid") == p["pid"]
        ]

        # 3. Asked for by a worker (the app op), 4. by signal (or the admin API).
        h.worker_reload_reply = await replied(clients[2].request("reload"))
        old_pids.update({int(p["pid"]): n for n, p in procs2.items()})
        if h.worker_reload_reply.get("ok"):
            window = ReloadWindow("from a worker", time.time())
            window.record = await wait_done(admin, h.worker_reload_reply["reload"])
            window.done = time.time()
            h.windows.append(window)
            snapshots.append(await admin.stats())
        procs3 = worker_procs(await admin.processes())
        old_pids.update({int(p["pid"]): n for n, p in procs3.items()})
        h.windows.append(await do_reload(target, admin, "full (signal)", "all", "signal"))
        snapshots.append(await admin.stats())
        # A timer the newest generation took over ticks from it within one interval: wait for
        # that tick (bounded), so that the last tick of each session shows who holds its timer.
        newest = h.windows[-1].record.get("generation")
        await settle(lambda: all(own_ticks(c) and own_ticks(c)[-1].get("gen") == newest for c in clients if not c.is_closed), timeout=5)

        finals = await stop_ticks(clients, timers)
        h.clients = [ticking(c, finals) for c in clients]
        stats_after = await admin.stats()
        h.dead_session_pushes = counter_delta(stats_before, stats_after, "dead_session_pushes")
        h.state_changes = state_changes(marked, await admin.sessions(), [c.session for c in clients])
        h.counters_decreased = counters_decreased([*snapshots, stats_after])
        h.snapshots = len(snapshots)
        status = await reload_status(admin)
        h.reload_counters = {k: status["counters"][k] - status_before["counters"][k] for k in status["counters"]}
        h.status_generation = status["generation"]
        procs_now = worker_procs(await admin.processes())
        h.process_generations = {n: p.get("generation") for n, p in procs_now.items()}
        h.last_tick_generations = [own_ticks(c)[-1].get("gen") for c in clients if own_ticks(c)]
        for pid in [int(p["pid"]) for p in procs_now.values()]:
            old_pids.pop(pid, None)
        h.old_processes = len(old_pids)
        h.old_left = await old_left(admin, old_pids)
    finally:
        await dispose_all(clients)
    h.leftovers = await observe_leftovers(admin, baseline)
    return h


# -- reload_disconnects ------------------------------------------------------------------------


ARRIVALS = 20


async def drive_disconnects(target, rng) -> DisconnectsHistory:
    """Clients leave and arrive while a reload runs; the others tick on."""
    admin = AdminClient(target.admin_url, target.admin_token)
    baseline = await warm_up(target, admin)
    stats_before = await admin.stats()
    stay = await connect_many(target.ws_url, "stay", 80)
    leave = await connect_many(target.ws_url, "leave", 40)
    late: list[ScenarioClient] = []
    refused: list[str] = []
    try:
        timers = await start_ticks(stay + leave)

        async def leave_during(client: ScenarioClient, delay: float) -> None:
            await asyncio.sleep(delay)  # a client's own schedule, spread over the reload
            if rng.random() < 0.5:
                client.abort()
            else:
                await client.close(1000, "bye")

        async def arrive_during(i: int, delay: float) -> None:
            await asyncio.sleep(delay)  # a client's own schedule, spread over the reload
            try:
                c = await ScenarioClient.connect(target.ws_url, f"late{i}")
            except (OSError, websockets.exceptions.WebSocketException) as e:
                refused.append(f"late{i}: {e!r}")  # not served: the check counts it
                return
            late.append(c)
            reply = await c.request("whoami")
            if reply.get("ok"):
                c.session, c.worker = reply["session"], reply["worker"]
            # else the reload closed it before it was served: the checks say so

        window = ReloadWindow("with clients leaving and arriving", time.time())
        first = await admin.call("POST", "/v1/reload", {"scope": "all"})
        await asyncio.gather(
            *(leave_during(c, rng.uniform(0, 0.15)) for c in leave),
            *(arrive_during(i, rng.uniform(0, 0.15)) for i in range(ARRIVALS)),
        )
        window.record = await wait_done(admin, first["reload"])
        window.done = time.time()
        h = DisconnectsHistory(MAX_WAIT_MS, ARRIVALS, window, refused=refused)
        late_open = [c for c in late if not c.is_closed]  # a late client the reload closed is judged below
        late_timers = await start_ticks(late_open)
        h.late_connected, h.late_open, h.late_closed = len(late), len(late_open), len(late) - len(late_open)
        h.late_generations = [own_ticks(c)[-1].get("gen") for c in late_open]
        finals = await stop_ticks(stay + late_open, {**timers, **late_timers})
        h.stay = [ticking(c, {n: s for n, s in finals.items() if n.startswith("stay")}) for c in stay]
        h.late = [ticking(c) for c in late]
        h.dead_session_pushes = counter_delta(stats_before, await admin.stats(), "dead_session_pushes")
    finally:
        await dispose_all(stay + leave + late)
    h.leftovers = await observe_leftovers(admin, baseline)
    return h


# -- reload_repeated ----------------------------------------------------------------------------


RELOADS = 50
FD_SLACK = 3
RSS_SLACK = 8 * 1024 * 1024


async def drive_repeated(target) -> tuple[RepeatedHistory, dict]:
    """One warm-up reload, then RELOADS in a row under ticks; usage before and after."""
    h = RepeatedHistory(RELOADS, MAX_WAIT_MS, FD_SLACK, RSS_SLACK)
    facts: dict = {}
    admin = AdminClient(target.admin_url, target.admin_token)
    await warm_up(target, admin)
    clients = await connect_many(target.ws_url, "rep", 30)
    try:
        timers = await start_ticks(clients, 20)
        # One reload first: the baseline is then taken from processes that have lived through one.
        h.windows = [await reload_by_admin(admin, "warm-up reload")]
        procs = await admin.processes()
        master = next(p for p in procs if p["kind"] == "master")
        h.baseline = {"master": usage(int(master["pid"]))}
        for name, p in worker_procs(procs).items():
            h.baseline[name] = usage(int(p["pid"]))
        started = time.monotonic()
        # A reload that had to kill a process (or lost a session) makes the leak check moot, and
        # 50 of them would outlast the scenario's bound: stop there, and fail the checks.
        h.stopped = None if not _unclean(h.windows[0].record) else 0
        for i in range(RELOADS if h.stopped is None else 0):
            h.windows.append(await reload_by_admin(admin, f"reload {i + 1}"))
            if _unclean(h.windows[-1].record):
                h.stopped = i + 1
                break
        elapsed = time.monotonic() - started
        finals = await stop_ticks(clients, timers)
        procs = await admin.processes()
        h.now = {"master": usage(int(master["pid"]))}
        for name, p in worker_procs(procs).items():
            h.now[name] = usage(int(p["pid"]))
        h.clients = [ticking(c, finals) for c in clients]
        facts["reloads_per_s"] = round((len(h.windows) - 1) / elapsed, 2) if elapsed > 0 else None
        facts["server_reload_ms"] = summarize_ms([w.record["duration_ms"] / 1000 for w in h.windows[1:]])
        facts["usage_baseline"] = h.baseline
        facts["usage_after"] = h.now
    finally:
        await dispose_all(clients)
    return h, facts


def _unclean(record: dict) -> bool:
    return bool(record.get("forced_kills") or record.get("sessions_lost"))


@pytest.mark.scenario("reload_ticks", seed="swoole-reload-timers")
@pytest.mark.requires("reload")
@pytest.mark.heavy("200 clients ticking every 10 ms: 20,000 messages a second for the harness to read")
def test_reload_ticks(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "reload_ticks")
    history = run_async(drive_ticks(target), timeout=150)
    evidence.fact("merge_requests", history.merge)
    evidence.fact("reloads", [w.as_dict() for w in history.windows])
    evidence.fact("old_processes", history.old_processes)
    tick_facts(evidence, history.clients, history.windows)
    evidence.figure(tick_figure(history.clients, history.windows))
    evidence.record(check_ticks_history(history))
    evidence.verdict()


@pytest.mark.scenario("reload_disconnects", seed="swoole-reload-timers")
@pytest.mark.requires("reload", "dead_session_stats")
@pytest.mark.heavy("120 clients ticking every 10 ms: 12,000 messages a second for the harness to read")
def test_reload_disconnects(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "reload_disconnects")
    history = run_async(drive_disconnects(target, evidence.rng()), timeout=120)
    w = history.window
    evidence.fact("reload", w.as_dict())
    tick_facts(evidence, history.stay, [w])
    evidence.figure(tick_figure(history.stay, [w], "The staying sessions' ticks (coloured by generation) across the reload"))
    evidence.record(check_disconnects(history))
    evidence.verdict()


@pytest.mark.scenario("reload_repeated", seed="swoole-reload-timers")
@pytest.mark.requires("reload")
def test_reload_repeated(target_factory, evidence, run_async) -> None:
    target = target_factory({**PROFILE, "workers": 2, "task_workers": 1}, "reload_repeated")
    history, facts = run_async(drive_repeated(target), timeout=150)
    evidence.add_facts(facts)
    tick_facts(evidence, history.clients, history.windows)
    evidence.figure(tick_figure(history.clients, history.windows))
    evidence.record(check_repeated(history))
    evidence.verdict()
