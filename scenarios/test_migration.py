"""Scenarios: live sessions move between workers (seed: Workerman moving a connection's fd).

``migration_stream``
    Clients stream numbered echo requests (empty to 300 KB, some fragmented,
    pings in between), each gets a 10 ms tick from its own timer, and the
    admin API pushes numbered messages to them, while a seeded schedule moves
    them between workers again and again (through the admin API and through
    the app op "migrate me"). From the histories: every echo exactly once, in
    order, intact, from a worker that owned the session at that time; ticks
    and pushes without gap or repeat; no session closed; the stats and each
    session's record count the moves; no fd leaked.

``migration_partial_frames``
    A client stops in the middle of a frame (inside its header, inside its
    payload) or between the fragments of a message; the session is moved;
    the client finishes. The message must arrive whole, from the new worker.

``migration_pushes_in_flight``
    The target worker is kept busy so that the move stays in flight; pushes
    sent to the session meanwhile (and right after) arrive exactly once, in
    order.

``migration_errors``
    Each refusal comes with its code, and the session keeps working where it
    was: unknown session, unknown worker, already there, closing, handshake
    not done, a move already in progress, malformed requests.

``migration_affinity_rebalance``
    Under traffic, groups are gathered into one worker each, then a skewed
    spread is rebalanced; the per-session checks above still hold.

The promises are those of contract section 7 (moving a live session). Each scenario
drives the target into a history; the named checks are pure functions of it, in
``scenarios/harness/checkers/migration.py`` (unit tests: ``tests/test_checkers.py``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest
from websockets.frames import Opcode

from scenarios.harness.admin import AdminClient
from scenarios.harness.checkers.migration import (
    AffinityHistory,
    ErrorsHistory,
    InFlightHistory,
    MoveLog,
    PartialHistory,
    SessionStream,
    StreamHistory,
    check_affinity,
    check_errors,
    check_in_flight,
    check_partial,
    check_stream,
    errors_figure,
    in_flight_figure,
    ownership_figure,
    partial_figure,
)
from scenarios.harness.client import ScenarioClient, connect_many, dispose_all
from scenarios.harness.common import counter_delta, mark_sessions, state_changes, warm_up
from scenarios.harness.rawclient import RawClient, frame_bytes, text_frame
from scenarios.harness.spec import observe_leftovers
from scenarios.harness.traffic import Streamer, move_via_admin, move_via_app, numbered, stream_of
from scenarios.harness.waiting import WaitTimeout, settle, until

TICK_MS = 10
#: migration_stream: rounds of the move schedule (every fifth moves two sessions at once), and
#: the share of moves asked for by the session's own app rather than the admin API.
STREAM_ROUNDS = 45
VIA_APP = 0.25
#: migration_partial_frames: where a frame is cut (bytes): in the header, in the mask, in the payload.
FRAME_CUTS = (1, 3, 7, 9000)
#: migration_pushes_in_flight: tries to catch the move in flight, how long the target worker
#: blocks, and the pushes sent during the move and again right after it.
IN_FLIGHT_ATTEMPTS = 3
BLOCK_MS = 600
PUSHES_PER_PHASE = 15


async def warm_moves(target, admin: AdminClient, clients: list[ScenarioClient]) -> None:
    """Move a warm-up client through every worker, so every link a move uses exists."""
    workers = int(target.profile.get("workers", 1))
    for c in clients[:workers]:
        assert c.session is not None and c.worker is not None
        for step in range(1, workers + 1):
            dst = (c.worker + step) % workers
            await admin.request("POST", f"/v1/sessions/{c.session}/migrate", {"worker": dst})
        await c.request("migrate", worker=(c.worker + 1) % workers)


def other_worker(rng: random.Random, current: int, workers: int) -> int:
    return rng.choice([w for w in range(workers) if w != current])


async def admin_pusher(admin: AdminClient, clients: list[ScenarioClient], stop: asyncio.Event, rng: random.Random, sent: dict[int, int]) -> None:
    """Numbered pushes through the admin API (one sender, so their order is defined)."""
    while not stop.is_set():
        c = rng.choice(clients)
        assert c.session is not None
        n = sent.get(c.session, 0) + 1
        status, _ = await admin.request("POST", f"/v1/sessions/{c.session}/push", {"data": json.dumps({"ev": "apush", "n": n})})
        if status == 200:
            sent[c.session] = n


async def stop_ticks(clients: list[ScenarioClient], timers: dict[str, int]) -> dict[str, int]:
    """Stop every client's timer; return how many ticks each one says it sent."""
    finals = await asyncio.gather(*(c.request("timer_stop", timer=timers[c.name]) for c in clients))
    return {c.name: f.get("seq", -1) for c, f in zip(clients, finals, strict=True)}


async def drain_streams(clients: list[ScenarioClient], streamers: list[Streamer], pushes: dict[int, int], tick_totals: dict[str, int]) -> list[SessionStream]:
    """Wait (bounded) for every reply, tick and push owed; each client's record for the checker."""
    await asyncio.gather(*(s.drain() for s in streamers))
    await settle(
        lambda: all(
            c.is_closed
            or (len(numbered(c.evs("apush"), "n")) >= pushes.get(c.session, 0)
            and len([e for e in c.evs("tick") if e.get("to") == c.session]) >= tick_totals.get(c.name, 0))
            for c in clients
        ),
        timeout=10,
    )
    return [stream_of(s, tick_total=tick_totals.get(s.client.name), pushes_sent=pushes.get(s.client.session or 0, 0)) for s in streamers]


def stream_facts(evidence, streams: list[SessionStream], log: MoveLog) -> None:
    evidence.fact("echo_requests", sum(len(s.sent) for s in streams))
    evidence.fact("fragmented_requests", sum(1 for s in streams for x in s.sent.values() if x.fragments > 1))
    evidence.fact("big_requests", sum(1 for s in streams for x in s.sent.values() if x.size >= 90_000))
    evidence.fact("admin_pushes", sum(s.pushes_sent for s in streams))
    evidence.fact("moves_ok", len([m for m in log.moves if m.ok]))
    evidence.fact("moves_refused", [[m.session, m.dst, m.name] for m in log.moves if not m.ok][:20])


def move_counters(before: dict, after: dict) -> dict[str, int]:
    return {name: counter_delta(before, after, name) for name in ("migrations_in", "migrations_out")}


# -- migration_stream -------------------------------------------------------------------


async def drive_stream(target, admin: AdminClient, rng: random.Random) -> StreamHistory:
    """Stream, tick and push to 3 clients per worker while a seeded schedule moves them; the history."""
    workers = int(target.profile["workers"])
    baseline_fds = await warm_up(target, admin, lambda cs: warm_moves(target, admin, cs))
    stats_before = await admin.stats()
    clients = await connect_many(target.ws_url, "stream", 3 * workers)
    try:
        h = StreamHistory(MoveLog({c.session: c.worker for c in clients}))
        await mark_sessions(clients, 5000, groups=True)
        marked = await admin.sessions()
        h.marked = bool(marked)
        timers = {}
        for c in clients:
            timers[c.name] = (await c.request("timer_start", interval_ms=TICK_MS))["timer"]
        stop = asyncio.Event()
        streamers = [Streamer(c, random.Random(rng.random())) for c in clients]
        pushes: dict[int, int] = {}
        traffic = [asyncio.create_task(s.run(stop)) for s in streamers]
        pusher = asyncio.create_task(admin_pusher(admin, clients, stop, random.Random(rng.random()), pushes))

        where = dict(h.log.initial)
        for i in range(STREAM_ROUNDS):
            batch = rng.sample(clients, 2 if i % 5 == 0 else 1)
            steps = []
            for c in batch:
                dst = other_worker(rng, where[c.session], workers)
                where[c.session] = dst
                if rng.random() < VIA_APP:
                    steps.append(move_via_app(h.log, c, dst))
                else:
                    steps.append(move_via_admin(h.log, admin, c.session, dst))
            await asyncio.gather(*steps)
            await asyncio.sleep(rng.uniform(0.01, 0.05))  # the schedule's pace, not a synchronisation

        stop.set()
        await asyncio.gather(*traffic, pusher)
        tick_totals = await stop_ticks(clients, timers)
        h.streams = await drain_streams(clients, streamers, pushes, tick_totals)
        h.counters = move_counters(stats_before, await admin.stats())
        after = await admin.sessions()
        h.records = {s["session"]: s for s in after}
        h.state_changes = state_changes(marked, after, [c.session for c in clients])
    finally:
        await dispose_all(clients)
    h.leftovers = await observe_leftovers(admin, baseline_fds)
    return h


@pytest.mark.scenario("migration_stream", seed="workerman #1001: move a live connection's fd to another worker")
@pytest.mark.requires("migrate")
def test_migration_stream(target, admin, evidence, run_async):
    history = run_async(drive_stream(target, admin, evidence.rng()))
    stream_facts(evidence, history.streams, history.log)
    evidence.figure(ownership_figure(history.log, history.streams))
    evidence.record(check_stream(history))
    evidence.verdict()


# -- migration_partial_frames --------------------------------------------------------------


async def session_of(raw: RawClient) -> dict | None:
    """The client's session and worker (``whoami``); None if the target no longer serves it
    (a broken target may have lost it with an earlier part of the scenario): the check of that
    part then fails with the answer, rather than the scenario with no named check."""
    reply = await raw.request("whoami", f"w{time.monotonic_ns()}")
    return reply if reply.get("ok") and isinstance(reply.get("worker"), int) else None


async def drive_partial(target, admin: AdminClient) -> PartialHistory:
    """Cut frames, fragmented messages and a ping across moves; what arrived, part by part."""
    workers = int(target.profile["workers"])
    h = PartialHistory()
    raws = [await RawClient.connect(target.ws_url, f"raw{i}") for i in range(6)]
    try:
        # A frame cut in two: inside the header, inside the mask, inside the payload.
        for raw, cut in zip(raws[:4], FRAME_CUTS, strict=True):
            me = await session_of(raw)
            if me is None:
                h.cuts.append({"cut": cut, "moved": False, "unserved": raw.name, "closed": raw.is_closed})
                continue
            data = f"cut-at-{cut}:" + "z" * 20_000
            frame = text_frame(json.dumps({"op": "echo", "id": f"c{cut}", "seq": cut, "data": data}))
            await raw.ping_and_wait(suffix=frame[:cut])
            dst = (me["worker"] + 1) % workers
            status, body = await admin.request("POST", f"/v1/sessions/{me['session']}/migrate", {"worker": dst})
            await raw.write(frame[cut:])
            reply = await _reply_or_none(raw, f"c{cut}")
            h.cuts.append(
                {
                    "cut": cut,
                    "moved": status == 200,
                    "move": body if status != 200 else None,
                    "echo_intact": reply.get("data") == data,
                    "worker": reply.get("worker"),
                    "expected_worker": dst,
                    "closed": raw.is_closed,
                }
            )
        h.fragmented = await _fragmented_across_moves(raws[4], admin, workers)
        h.ping = await _ping_across_a_move(raws[5], admin, workers)
    finally:
        for raw in raws:
            await raw.dispose()
    return h


async def _fragmented_across_moves(raw: RawClient, admin: AdminClient, workers: int) -> dict:
    """A message in three fragments, moved between them, the middle fragment's frame cut as well."""
    me = await session_of(raw) or {"session": None, "worker": 0}
    data = "frag:" + "y" * 30_000
    text = json.dumps({"op": "echo", "id": "f1", "seq": 1, "data": data})
    parts = [text[:10_000], text[10_000:20_000], text[20_000:]]
    frames = [
        text_frame(parts[0], fin=False),
        text_frame(parts[1], fin=False, continuation=True),
        text_frame(parts[2], fin=True, continuation=True),
    ]
    path = [me["worker"]]
    moved = []
    # The pings between fragments tell the scenario the server read each piece; RFC 6455
    # (5.4) lets control frames come between the fragments of a message.
    pongs_ok = me["session"] is not None and await _pong_between_fragments(raw, prefix=frames[0])
    for frame, half in ((frames[1], True), (frames[2], False)):
        if not pongs_ok:
            break
        dst = (path[-1] + 1) % workers
        status, _ = await admin.request("POST", f"/v1/sessions/{me['session']}/migrate", {"worker": dst})
        moved.append(status == 200)
        path.append(dst)
        if half:
            cut = len(frame) // 2
            await raw.write(frame[:cut], ends_frame=False)
            await raw.write(frame[cut:])
            pongs_ok = await _pong_between_fragments(raw)
        else:
            await raw.write(frame)
    out: dict = {"pongs_ok": pongs_ok, "served": me["session"] is not None, "moves_ok": moved, "path": path}
    if not pongs_ok:
        out["pongs"] = [p[:48].hex() + ("..." if len(p) > 48 else "") for p in raw.pongs]
    else:
        reply = await _reply_or_none(raw, "f1")
        out.update(echo_intact=reply.get("data") == data, worker=reply.get("worker"))
    out["closed"] = raw.is_closed
    return out


async def _ping_across_a_move(raw: RawClient, admin: AdminClient, workers: int) -> dict:
    """A client ping whose frame is cut by a move: how many pongs came back."""
    me = await session_of(raw)
    token = b"across-a-move"
    status = 0
    if me is not None:
        ping = frame_bytes(Opcode.PING, token)  # built once: each frame has its own mask
        await raw.write(ping[:4], ends_frame=False)
        status, _ = await admin.request("POST", f"/v1/sessions/{me['session']}/migrate", {"worker": (me["worker"] + 1) % workers})
        await raw.write(ping[4:])
        await settle(lambda: token in raw.pongs, timeout=5)
    return {"moved": status == 200, "pongs": raw.pongs.count(token), "closed": raw.is_closed}


@pytest.mark.scenario("migration_partial_frames", seed="workerman #1001: bytes read but not parsed travel with the fd")
@pytest.mark.requires("migrate")
def test_migration_partial_frames(target, admin, evidence, run_async):
    history = run_async(drive_partial(target, admin))
    evidence.figure(partial_figure(history))
    evidence.record(check_partial(history))
    evidence.verdict()


# -- migration_pushes_in_flight ---------------------------------------------------------------


async def place(admin: AdminClient, client: ScenarioClient, worker: int) -> None:
    if client.worker != worker:
        await admin.call("POST", f"/v1/sessions/{client.session}/migrate", {"worker": worker})
        client.worker = worker


async def drive_in_flight(target, admin: AdminClient) -> InFlightHistory:
    """Keep a move in flight (its target worker busy) and push meanwhile and right after; the history."""
    workers = int(target.profile["workers"])
    h = InFlightHistory()
    clients = await connect_many(target.ws_url, "flight", 2)
    victim, blocker = clients
    try:
        await place(admin, victim, 0)
        await place(admin, blocker, 1)

        async def push_next() -> bool:
            status, _ = await admin.request(
                "POST", f"/v1/sessions/{victim.session}/push", {"data": json.dumps({"ev": "apush", "n": h.pushes_sent + 1})}
            )
            h.pushes_sent += status == 200
            return status == 200

        for attempt in range(IN_FLIGHT_ATTEMPTS):
            if victim.worker == blocker.worker:
                await place(admin, victim, next(w for w in range(workers) if w != blocker.worker))
            # The target worker blocks its loop, so the move waits for it, in flight.
            await blocker.send({"op": "block", "id": f"b{attempt}", "ms": BLOCK_MS})
            move = asyncio.create_task(admin.request("POST", f"/v1/sessions/{victim.session}/migrate", {"worker": blocker.worker}))
            seen = await settle(lambda: _migrating(admin, victim.session), timeout=2, interval=0.005)
            during = 0
            if seen:
                for _ in range(PUSHES_PER_PHASE):
                    during += await push_next()
            status, body = await move
            for _ in range(PUSHES_PER_PHASE):  # right after the move: held by the target until the source has drained
                await push_next()
            await until(lambda a=attempt: blocker.replies.get(f"b{a}"), timeout=5, what="the block to end")
            h.attempts.append({"window_seen": seen, "pushed_during": during, "move_status": status, "move": body})
            if status == 200:
                victim.worker = blocker.worker
            if seen and during:
                break
        await settle(lambda: len(numbered(victim.evs("apush"), "n")) >= h.pushes_sent, timeout=10)
        h.push_seqs = numbered(victim.evs("apush"), "n")
        h.after = await victim.request("echo", seq=1, data="after")
        h.expected_worker = victim.worker
        h.closed = victim.is_closed
    finally:
        await dispose_all(clients)
    return h


@pytest.mark.scenario("migration_pushes_in_flight", seed="pushes addressed to a session while its fd moves")
@pytest.mark.requires("migrate")
def test_migration_pushes_in_flight(target, admin, evidence, run_async):
    history = run_async(drive_in_flight(target, admin))
    evidence.fact("attempts", history.attempts)
    evidence.figure(in_flight_figure(history))
    evidence.record(check_in_flight(history))
    evidence.verdict()


# -- migration_errors -----------------------------------------------------------------------


async def drive_errors(target, admin: AdminClient) -> ErrorsHistory:
    """Ask for every kind of move the contract refuses; each answer, then the subject and the processes."""
    workers = int(target.profile["workers"])
    h = ErrorsHistory()
    clients = await connect_many(target.ws_url, "err", 3)
    subject, blocker, gone = clients
    raw: RawClient | None = None
    idle = None
    try:
        await place(admin, blocker, 1)
        await place(admin, subject, 0)
        h.processes_before = sorted((p["name"], p["pid"]) for p in await admin.processes())

        async def attempt(label: str, sid: int, body) -> None:
            status, reply = await admin.request("POST", f"/v1/sessions/{sid}/migrate", body)
            err = reply.get("error", {}) if isinstance(reply, dict) else {}
            h.outcomes[label] = {"status": status, "code": err.get("code"), "name": err.get("name")}

        await attempt("unknown session", 987654321, {"worker": 1})
        await attempt("unknown worker", subject.session, {"worker": workers + 5})
        await attempt("negative worker", subject.session, {"worker": -1})
        await attempt("already there", subject.session, {"worker": 0})
        await attempt("worker is not a number", subject.session, {"worker": "two"})
        await attempt("no body", subject.session, None)
        status, body = await admin.request("POST", f"/v1/sessions/{subject.session}/migrate", raw=b"{not json")
        h.outcomes["garbage body"] = {"status": status, "code": body.get("error", {}).get("code") if isinstance(body, dict) else None}
        app_reply = await subject.request("migrate", worker=workers + 5)
        h.outcomes["app op, unknown worker"] = {"code": app_reply.get("error", {}).get("code")}
        app_reply = await subject.request("migrate", worker="x")
        h.outcomes["app op, bad worker"] = {"code": app_reply.get("error", {}).get("code")}

        # A session that is gone: closed by its client.
        gone_sid = gone.session
        await gone.close()
        await settle(lambda: _absent(admin, gone_sid), timeout=5)
        await attempt("closed session", gone_sid, {"worker": 2})

        # A session whose close handshake is under way: the server closed it, the client does not answer.
        raw = await RawClient.connect(target.ws_url, "closing")
        me = await session_of(raw)
        if me is not None:
            raw._mid_frame = True  # hold back the close frame the protocol owes the server
            await raw.write(text_frame(json.dumps({"op": "close", "id": "x", "code": 4000})), ends_frame=False)
            await until(lambda: raw.close_frame is not None, timeout=5, what="the server's close frame")
            await attempt("closing session", me["session"], {"worker": (me["worker"] + 1) % workers})

        # A TCP connection that never completed its handshake.
        _reader, idle = await asyncio.open_connection("127.0.0.1", target.port)
        connecting = await until(lambda: _connecting_session(admin), timeout=5, what="a connecting session")
        await attempt("handshake not done", connecting, {"worker": 1})

        # Two moves of one session at once: the first waits for a busy target.
        await blocker.send({"op": "block", "id": "b", "ms": 500})
        first = asyncio.create_task(admin.request("POST", f"/v1/sessions/{subject.session}/migrate", {"worker": 1}))
        await settle(lambda: _migrating(admin, subject.session), timeout=2, interval=0.005)
        await attempt("already moving", subject.session, {"worker": 2})
        first_status, _ = await first
        await until(lambda: blocker.replies.get("b"), timeout=5, what="the block to end")

        h.expected_worker = 1 if first_status == 200 else 0
        h.after = await subject.request("echo", seq=1, data="still here")
        h.closed = subject.is_closed
        h.processes_after = sorted((p["name"], p["pid"]) for p in await admin.processes())
    finally:
        if idle is not None:
            idle.close()
        if raw is not None:
            await raw.dispose()
        await dispose_all(clients)
    return h


async def _reply_or_none(raw: RawClient, req_id: str) -> dict:
    """The reply to ``req_id``, or ``{"no_reply": True}``: a server that lost the request's bytes never answers."""
    try:
        return await raw.wait_reply(req_id, timeout=5)
    except WaitTimeout:
        return {"no_reply": True}


async def _pong_between_fragments(raw: RawClient, prefix: bytes = b"") -> bool:
    """Ping (after ``prefix``) while a message is unfinished; whether its pong came back."""
    try:
        await raw.ping_and_wait(prefix=prefix, timeout=5)
    except WaitTimeout:
        return False
    return True


async def _absent(admin: AdminClient, sid: int) -> bool:
    status, _ = await admin.request("GET", f"/v1/sessions/{sid}")
    return status == 404


async def _migrating(admin: AdminClient, sid: int) -> bool:
    status, rec = await admin.request("GET", f"/v1/sessions/{sid}")
    return status == 200 and bool(rec.get("migrating"))


async def _connecting_session(admin: AdminClient) -> int | None:
    for s in await admin.sessions():
        if s.get("state") == "connecting":
            return s["session"]
    return None


@pytest.mark.scenario("migration_errors", seed="every refused move has its code, and the session goes on")
@pytest.mark.requires("migrate")
def test_migration_errors(target, admin, evidence, run_async):
    history = run_async(drive_errors(target, admin))
    evidence.fact("refusals", history.outcomes)
    evidence.figure(errors_figure(history))
    evidence.record(check_errors(history))
    evidence.verdict()


# -- migration_affinity_rebalance ---------------------------------------------------------------


async def drive_affinity(target, admin: AdminClient, rng: random.Random) -> AffinityHistory:
    """Under traffic: gather each group in one worker, skew everything into worker 0, rebalance; the history."""
    workers = int(target.profile["workers"])
    stats_before = await admin.stats()
    clients = await connect_many(target.ws_url, "room", 6 * workers)
    try:
        h = AffinityHistory(MoveLog({c.session: c.worker for c in clients}), workers)
        rooms = {c.name: 100 + (i // workers) % 3 for i, c in enumerate(clients)}  # each room spans the workers
        await asyncio.gather(*(c.request("join", group=rooms[c.name]) for c in clients))
        timers = {}
        for c in clients:
            timers[c.name] = (await c.request("timer_start", interval_ms=20))["timer"]
        stop = asyncio.Event()
        streamers = [Streamer(c, random.Random(rng.random())) for c in clients]
        pushes: dict[int, int] = {}
        traffic = [asyncio.create_task(s.run(stop)) for s in streamers]
        pusher = asyncio.create_task(admin_pusher(admin, clients, stop, random.Random(rng.random()), pushes))

        for room in sorted(set(rooms.values())):
            t0 = time.time()
            report = await admin.call("POST", "/v1/affinity", {"group": room})
            h.log.record_report(report, t0, time.time(), "affinity")
            h.reports[room] = report
        placement = {s["session"]: s["worker"] for s in await admin.sessions()}
        h.placement = {  # a session the target lost is listed as None
            room: sorted({placement.get(c.session) for c in clients if rooms[c.name] == room}, key=lambda w: (w is None, w or 0))
            for room in h.reports
        }

        # Skew: everything into worker 0, then rebalance.
        t0 = time.time()
        skew = await admin.call("POST", "/v1/affinity", {"sessions": [c.session for c in clients], "worker": 0})
        h.log.record_report(skew, t0, time.time(), "affinity")
        t0 = time.time()
        h.rebalance = await admin.call("POST", "/v1/rebalance")
        h.log.record_report(h.rebalance, t0, time.time(), "rebalance")
        h.counts_after = {w: 0 for w in range(workers)}
        for s in await admin.sessions():
            h.counts_after[s["worker"]] = h.counts_after.get(s["worker"], 0) + 1

        stop.set()
        await asyncio.gather(*traffic, pusher)
        tick_totals = await stop_ticks(clients, timers)
        h.streams = await drain_streams(clients, streamers, pushes, tick_totals)
        h.counters = move_counters(stats_before, await admin.stats())
        h.records = {s["session"]: s for s in await admin.sessions()}
    finally:
        await dispose_all(clients)
    return h


@pytest.mark.scenario("migration_affinity_rebalance", seed="workerman: gather a room in one worker; even out workers")
@pytest.mark.requires("migrate")
def test_migration_affinity_rebalance(target, admin, evidence, run_async):
    history = run_async(drive_affinity(target, admin, evidence.rng()))
    evidence.fact(
        "affinity_reports",
        {r: {k: v for k, v in rep.items() if k != "moved"} | {"moved": len(rep.get("moved", []))} for r, rep in history.reports.items()},
    )
    evidence.fact("rebalance", {"before": history.rebalance.get("before"), "moved": len(history.rebalance.get("moved", [])), "after": history.counts_after})
    stream_facts(evidence, history.streams, history.log)
    evidence.figure(ownership_figure(history.log, history.streams))
    evidence.record(check_affinity(history))
    evidence.verdict()
