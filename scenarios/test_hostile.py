"""Scenario: a hostile client cannot knock the server over (contract section 12; no capability).

The promise: whatever a client sends, every request gets exactly one reply in strict JSON,
values out of range are refused with 4400 naming the field, each session holds at most 100
timers and 100 outstanding tasks (4429 ``LIMIT_REACHED`` past them), and a client that does
not read is closed with 4429 once ``[limits] output_bytes`` of output waits for it, so the
server's memory stays bounded. Meanwhile every other session is served and no process exits.

The seeds: a uid past 2^63 that left a shared-table record marked mid-write (every read of it
then spun for half a second), JSON nested 5,000 deep and lone surrogates answered with a
traceback and no reply, a ``NaN`` request id echoed as invalid JSON, 100,000 timers from one
session, a task that holds the only task worker for an hour, and a client that never reads
growing its worker's memory without limit.

``drive`` records what came back (``scenarios/harness/hostile.py``); the checks are pure, in
``scenarios/harness/checkers/hostile.py`` (unit tests: ``tests/test_checkers_hostile.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from scenarios.harness.admin import AdminClient
from scenarios.harness.checkers.hostile import (
    BadAnswer,
    Bystander,
    HostileHistory,
    Storm,
    check_hostile,
    figure,
)
from scenarios.harness.common import warm_up
from scenarios.harness.hostile import BAD_REQUESTS, HostileClient, RssSampler
from scenarios.harness.spec import observe_leftovers
from scenarios.harness.waiting import settle

SEED = "Swoole/Workerman: no per-client bounds, values past int64, a client that never reads"
PROFILE = {"workers": 2, "task_workers": 1}
BYSTANDERS = 3
TICK_MS = 50
ECHO_EVERY_S = 0.1
REPLY_BOUND_S = 5.0
TIMER_STORM = 150
TIMER_INTERVAL_MS = 60_000  # none fires during the scenario: the timers a session holds only grow
TASK_STORM = 130
TASK_SLEEP_MS = 30  # 130 of them keep a one-at-a-time task worker busy about 4 s
STORM_BOUND_S = 15.0
RESULTS_BOUND_S = 60.0
PUSH_CHUNK = 256 * 1024
PUSH_BOUND_S = 5.0  # one push's answer
FLOOD_BUDGET_S = 90.0
CLOSE_BOUND_S = 8.0  # after it reads again: what waits is read in about a second
#: Reading again, the client stops waiting for the close frame once nothing has come for this long.
QUIET_S = 2.0


def _answer(value: Any) -> Any:
    """A reply as a storm records it: "ok", or its error code."""
    if value.get("ok") is True:
        return "ok"
    error = value.get("error") if isinstance(value.get("error"), dict) else {}
    return error.get("code")


async def _connect(target: Any, name: str) -> HostileClient:
    return await HostileClient.connect("127.0.0.1", target.port, name)


async def drive_bad(target: Any, h: HostileHistory, clients: list[HostileClient]) -> None:
    """Each bad request on its own, then a ping: the replies in between are the request's."""
    attacker = await _connect(target, "attacker")
    clients.append(attacker)
    for bad in BAD_REQUESTS:
        if bad.needs and bad.needs not in target.capabilities:
            continue
        record = BadAnswer(bad.what, bad.answers, bad.re_null)
        h.bad.append(record)
        mark = len(attacker.received)
        attacker.send_raw(bad.text)
        try:
            pong = await attacker.request("ping", timeout=REPLY_BOUND_S)
            record.open_after = pong.get("ok") is True
        except (ConnectionError, TimeoutError):
            record.open_after = False
        ping_id = attacker._ids

        def theirs(client: HostileClient = attacker, mark: int = mark, ping_id: int = ping_id) -> list[Any]:
            return [r for r in client.replies_since(mark) if not (isinstance(r.value, dict) and r.value.get("re") == ping_id)]

        await settle(lambda: bool(theirs()) or attacker.is_closed, timeout=REPLY_BOUND_S, interval=0.01)  # noqa: B023
        for r in theirs():
            if r.invalid:
                record.invalid.append(r.text)
            else:
                record.replies.append(r.value)
        if attacker.is_closed:  # the target closed it: go on with a new session
            attacker = await _connect(target, "attacker")
            clients.append(attacker)
    h.facts["bad_requests"] = {b.what: (b.replies[0] if len(b.replies) == 1 else b.replies or b.invalid) for b in h.bad}


async def drive_storm(target: Any, name: str, requests: list[str], storm: Storm, clients: list[HostileClient],
                      *, results: bool) -> None:
    """Send every request at once; the answers (and, for tasks, the results before each) in arrival order."""
    client = await _connect(target, name)
    clients.append(client)
    ids = set()
    for text in requests:
        client.send_raw(text)
    storm.sent = len(requests)
    for i in range(len(requests)):
        ids.add(f"{name}-{i}")

    def tally() -> None:
        storm.answers, storm.results_before, seen = [], [], 0
        for r in client.received:
            if not isinstance(r.value, dict):
                continue
            if r.value.get("ev") == "task_result":
                seen += 1
            elif r.value.get("re") in ids:
                storm.answers.append(_answer(r.value))
                storm.results_before.append(seen)
        storm.results = seen

    def answered() -> bool:
        tally()
        return len(storm.answers) >= storm.sent or client.is_closed

    await settle(answered, timeout=STORM_BOUND_S, interval=0.02)
    if results:
        await settle(lambda: answered() and storm.results >= storm.answers.count("ok"), timeout=RESULTS_BOUND_S,
                     interval=0.05)
    tally()
    client.abort()


async def drive_nonreader(target: Any, admin: AdminClient, h: HostileHistory, clients: list[HostileClient]) -> None:
    """A client stops reading; another session pushes to it until the target closes it (or the budget ends)."""
    nonreader = await _connect(target, "nonreader")
    pusher = await _connect(target, "pusher")
    clients += [nonreader, pusher]
    sid = (await nonreader.request("whoami"))["session"]
    nonreader.stop_reading()
    pids = {str(p.get("name") or p["pid"]): int(p["pid"]) for p in await admin.processes()}
    sampler = RssSampler(pids)
    sampler.start()
    chunk = "p" * PUSH_CHUNK
    total = 4 * h.output_bytes + (64 << 20)
    deadline = time.monotonic() + FLOOD_BUDGET_S
    try:
        while h.pushed_bytes < total and time.monotonic() < deadline:
            try:
                reply = await pusher.request("push", to=sid, data=chunk, timeout=PUSH_BOUND_S)
            except TimeoutError:
                h.push_failure = f"no answer in {PUSH_BOUND_S} s"
                break
            if reply.get("ok") is not True:
                h.push_failure = _answer(reply)
                break
            h.pushed_bytes += PUSH_CHUNK
    finally:
        h.growth = await sampler.stop()
        h.rss_samples = sampler.samples
    nonreader.start_reading()
    await settle(lambda: nonreader.close_code is not None or nonreader.is_closed or nonreader.quiet_for() > QUIET_S,
                 timeout=CLOSE_BOUND_S, interval=0.05)
    h.nonreader_close, h.nonreader_closed = nonreader.close_code, nonreader.is_closed
    nonreader.abort()
    h.facts["flood"] = {"pushed_mib": round(h.pushed_bytes / 2**20, 1), "bound_mib": round(h.output_bytes / 2**20, 1),
                        "growth_mib": {n: round(g / 2**20, 1) for n, g in h.growth.items()}}


async def serve_bystanders(bystanders: list[HostileClient], records: list[Bystander], stop: asyncio.Event) -> None:
    """Echo on every bystander every ECHO_EVERY_S until stopped; failures are recorded."""
    n = 0
    while not stop.is_set():
        n += 1
        for b, rec in zip(bystanders, records, strict=True):
            try:
                reply = await b.request("echo", seq=n, data="bystander", timeout=REPLY_BOUND_S)
                rec.echoes += 1
                if reply.get("ok") is not True:
                    rec.echo_failures.append(str(reply)[:120])
            except (ConnectionError, TimeoutError) as exc:
                rec.echo_failures.append(repr(exc)[:120])
        try:
            await asyncio.wait_for(stop.wait(), ECHO_EVERY_S)
        except TimeoutError:
            pass


def tick_gaps(client: HostileClient, end: float) -> tuple[int, float]:
    """Ticks received, and the longest gap between two of them (or after the last one, until ``end``)."""
    times = [r.at for r in client.received if isinstance(r.value, dict) and r.value.get("ev") == "tick"]
    if not times:
        return 0, float("inf")
    gaps = [b - a for a, b in itertools.pairwise(times)] + [end - times[-1]]
    return len(times), max(gaps)


async def drive(target: Any, admin: AdminClient) -> HostileHistory:
    h = HostileHistory(output_bytes=target.manifest.output_bytes)
    baseline = await warm_up(target, admin)
    h.processes_before = sorted((p["name"], p["pid"]) for p in await admin.processes())
    before = await admin.stats()
    clients: list[HostileClient] = []
    bystanders = [await _connect(target, f"bystander-{i}") for i in range(BYSTANDERS)]
    records = [Bystander(b.name) for b in bystanders]
    for b in bystanders:
        await b.request("timer_start", interval_ms=TICK_MS)
    stop = asyncio.Event()
    echoes = asyncio.create_task(serve_bystanders(bystanders, records, stop))
    try:
        started = time.time()
        await drive_bad(target, h, clients)
        h.phases.append(("bad requests", started, started := time.time()))
        timers = [f'{{"op":"timer_start","id":"timers-{i}","interval_ms":{TIMER_INTERVAL_MS}}}' for i in range(TIMER_STORM)]
        await drive_storm(target, "timers", timers, h.timers, clients, results=False)
        h.phases.append(("timer storm", started, started := time.time()))
        tasks = [f'{{"op":"task","id":"tasks-{i}","data":{i},"sleep_ms":{TASK_SLEEP_MS}}}' for i in range(TASK_STORM)]
        await drive_storm(target, "tasks", tasks, h.tasks, clients, results=True)
        h.phases.append(("task storm", started, started := time.time()))
        await drive_nonreader(target, admin, h, clients)
        h.phases.append(("a client that does not read", started, time.time()))
    finally:
        stop.set()
        await echoes
        end = time.time()
        for b, rec in zip(bystanders, records, strict=True):
            rec.ticks, rec.max_gap_s = tick_gaps(b, end)
            h.tick_times[b.name] = [r.at for r in b.received if isinstance(r.value, dict) and r.value.get("ev") == "tick"]
            b.abort()
        for c in clients:
            c.abort()
    h.bystanders = records
    after = await admin.stats()
    if "slow_closed" in after.get("counters", {}):
        h.slow_closed = int(after["counters"]["slow_closed"]) - int(before["counters"].get("slow_closed", 0))
    h.processes_after = sorted((p["name"], p["pid"]) for p in await admin.processes())
    h.leftovers = await observe_leftovers(admin, baseline)
    return h


@pytest.mark.scenario("hostile_client", seed=SEED)
def test_hostile_client(target_factory, evidence, run_async) -> None:
    target = target_factory(PROFILE, "hostile")
    admin = AdminClient(target.admin_url, target.admin_token)
    history = run_async(drive(target, admin), timeout=300)
    evidence.add_facts(history.facts)
    evidence.figure(figure(history))
    evidence.record(check_hostile(history))
    evidence.verdict()
