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
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest
from websockets.frames import Opcode

from scenarios.harness.admin import AdminClient
from scenarios.harness.client import ScenarioClient, connect_many, dispose_all
from scenarios.harness.common import check_no_leaks, counter_delta, mark_sessions, state_changes, warm_up
from scenarios.harness.rawclient import RawClient, frame_bytes, text_frame
from scenarios.harness.traffic import MoveLog, Streamer, echo_problems, gap_or_repeat, numbered
from scenarios.harness.waiting import WaitTimeout, settle, until

TICK_MS = 10


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


async def per_session_checks(evidence, clients, streamers, log: MoveLog, pushes: dict[int, int], tick_totals: dict[str, int]) -> None:
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
    echo_bad = [p for s in streamers for p in echo_problems(s, log)]
    evidence.fact("echo_requests", sum(s.seq for s in streamers))
    evidence.fact("fragmented_requests", sum(1 for s in streamers for x in s.sent.values() if x.fragments > 1))
    evidence.fact("big_requests", sum(1 for s in streamers for x in s.sent.values() if x.size >= 90_000))
    evidence.check(
        "every echo arrives exactly once, in order, intact, from a worker that owned the session then",
        not echo_bad,
        expected="replies e1..en in order; data equal; worker within the schedule's owners",
        observed=f"{len(echo_bad)} problems",
        problems=echo_bad,
    )
    tick_bad = {}
    push_bad = {}
    for c in clients:
        gap = gap_or_repeat([e["seq"] for e in c.evs("tick") if e.get("to") == c.session], tick_totals.get(c.name))
        if gap:
            tick_bad[c.name] = gap
        gap = gap_or_repeat(numbered(c.evs("apush"), "n"), pushes.get(c.session, 0))
        if gap:
            push_bad[c.name] = gap
    evidence.fact("admin_pushes", sum(pushes.values()))
    evidence.check(
        "ticks from each session's own timer arrive without gap or repeat (the timer moved with it)",
        not tick_bad,
        expected="1..n where n is the timer's own count",
        observed=tick_bad or "all consecutive",
    )
    evidence.check(
        "pushes addressed to moving sessions arrive exactly once, in order",
        not push_bad,
        expected="1..n per session",
        observed=push_bad or "all consecutive",
    )
    closed = [{"client": c.name, "close_frame": c.close_frame, "tail": c.excerpt(5)} for c in clients if c.is_closed]
    evidence.check("no session is closed by moving it", not closed, expected="all open", observed=f"{len(closed)} closed", clients=closed)
    unanswered = {s.client.name: [s.pings, s.pongs] for s in streamers if s.pongs < s.pings}
    evidence.check("every WebSocket ping is answered", not unanswered, expected="pongs == pings", observed=unanswered or "all answered")


async def record_checks(evidence, admin: AdminClient, clients, log: MoveLog, stats_before) -> None:
    stats_after = await admin.stats()
    ok_moves = [m for m in log.moves if m.ok]
    delta_in = counter_delta(stats_before, stats_after, "migrations_in")
    delta_out = counter_delta(stats_before, stats_after, "migrations_out")
    evidence.fact("moves_ok", len(ok_moves))
    evidence.fact("moves_refused", [[m.session, m.dst, m.name] for m in log.moves if not m.ok][:20])
    evidence.check(
        "the stats count every move (migrations_in and migrations_out)",
        delta_in == delta_out == len(ok_moves),
        expected=len(ok_moves),
        observed={"migrations_in": delta_in, "migrations_out": delta_out},
    )
    records = {s["session"]: s for s in await admin.sessions()}
    wrong = []
    for c in clients:
        rec = records.get(c.session)
        want_worker = log.final_owner(c.session)
        want_moves = len(log.successful(c.session))
        if rec is None or rec.get("worker") != want_worker or rec.get("migrating"):
            wrong.append({"client": c.name, "record": rec, "expected_worker": want_worker})
        elif isinstance(rec.get("migrations"), int) and rec["migrations"] < want_moves:
            wrong.append({"client": c.name, "migrations": rec["migrations"], "expected_at_least": want_moves})
    evidence.check(
        "each session's record names exactly its final owner and counts its moves",
        not wrong,
        expected="worker = last move's target, not migrating",
        observed=f"{len(wrong)} wrong",
        records=wrong,
    )


# -- migration_stream -------------------------------------------------------------------


async def stream_scenario(target, admin: AdminClient, evidence) -> None:
    rng = evidence.rng()
    workers = int(target.profile["workers"])
    baseline_fds = await warm_up(target, admin, lambda cs: warm_moves(target, admin, cs))
    stats_before = await admin.stats()
    clients = await connect_many(target.ws_url, "stream", 3 * workers)
    try:
        log = MoveLog({c.session: c.worker for c in clients})
        await mark_sessions(clients, 5000, groups=True)
        marked = await admin.sessions()
        timers = {}
        for c in clients:
            timers[c.name] = (await c.request("timer_start", interval_ms=TICK_MS))["timer"]
        stop = asyncio.Event()
        streamers = [Streamer(c, random.Random(rng.random())) for c in clients]
        pushes: dict[int, int] = {}
        traffic = [asyncio.create_task(s.run(stop)) for s in streamers]
        pusher = asyncio.create_task(admin_pusher(admin, clients, stop, random.Random(rng.random()), pushes))

        async def schedule() -> None:
            where = dict(log.initial)
            for i in range(45):
                batch = rng.sample(clients, 2 if i % 5 == 0 else 1)
                steps = []
                for c in batch:
                    dst = other_worker(rng, where[c.session], workers)
                    where[c.session] = dst
                    if rng.random() < 0.25:
                        steps.append(log.via_app(c, dst))
                    else:
                        steps.append(log.via_admin(admin, c.session, dst))
                await asyncio.gather(*steps)
                await asyncio.sleep(rng.uniform(0.01, 0.05))  # the schedule's pace

        await schedule()
        stop.set()
        await asyncio.gather(*traffic, pusher)
        tick_totals = await stop_ticks(clients, timers)
        await per_session_checks(evidence, clients, streamers, log, pushes, tick_totals)
        refused = [m for m in log.moves if not m.ok]
        evidence.check(
            "every scheduled move succeeds",
            not refused,
            expected="no refusal (each move names a live session and another worker)",
            observed=[(m.session, m.dst, m.name) for m in refused],
        )
        await record_checks(evidence, admin, clients, log, stats_before)
        changed = state_changes(marked, await admin.sessions(), [c.session for c in clients])
        evidence.check(
            "uid, protection, group and handler set survive every move",
            not changed and bool(marked),
            expected="each session's uid, protected, group and handler as before its moves",
            observed=changed or "all kept",
        )
    finally:
        await dispose_all(clients)
    await check_no_leaks(admin, evidence, baseline_fds)


@pytest.mark.scenario("migration_stream", seed="workerman #1001: move a live connection's fd to another worker")
@pytest.mark.requires("migrate")
def test_migration_stream(target, admin, evidence, run_async):
    run_async(stream_scenario(target, admin, evidence))
    evidence.verdict()


# -- migration_partial_frames --------------------------------------------------------------


async def session_of(raw: RawClient) -> dict | None:
    """The client's session and worker (``whoami``); None if the target no longer serves it
    (a broken target may have lost it with an earlier part of the scenario): the check of that
    part then fails with the answer, rather than the scenario with no named check."""
    reply = await raw.request("whoami", f"w{time.monotonic_ns()}")
    return reply if reply.get("ok") and isinstance(reply.get("worker"), int) else None


async def partial_scenario(target, admin: AdminClient, evidence) -> None:
    workers = int(target.profile["workers"])
    raws = [await RawClient.connect(target.ws_url, f"raw{i}") for i in range(6)]
    try:
        cut_results = []
        # A frame cut in two: inside the header, inside the mask, inside the payload.
        for raw, cut in zip(raws[:4], (1, 3, 7, 9000), strict=True):
            me = await session_of(raw)
            if me is None:
                cut_results.append({"cut": cut, "moved": False, "unserved": raw.name, "closed": raw.is_closed})
                continue
            data = f"cut-at-{cut}:" + "z" * 20_000
            frame = text_frame(json.dumps({"op": "echo", "id": f"c{cut}", "seq": cut, "data": data}))
            await raw.ping_and_wait(suffix=frame[:cut])
            dst = (me["worker"] + 1) % workers
            status, body = await admin.request("POST", f"/v1/sessions/{me['session']}/migrate", {"worker": dst})
            await raw.write(frame[cut:])
            reply = await _reply_or_none(raw, f"c{cut}")
            cut_results.append(
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
        evidence.check(
            "a frame cut in two by the migration arrives whole, from the new worker",
            all(r["moved"] and r.get("echo_intact") and r.get("worker") == r.get("expected_worker") and not r["closed"] for r in cut_results),
            expected="moved, echo intact, reply from the target",
            observed=cut_results,
        )

        # A message fragmented across two migrations, with a cut fragment frame as well.
        raw = raws[4]
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
        for frame_bytes_now, half in ((frames[1], True), (frames[2], False)):
            if not pongs_ok:
                break
            dst = (path[-1] + 1) % workers
            status, body = await admin.request("POST", f"/v1/sessions/{me['session']}/migrate", {"worker": dst})
            moved.append(status == 200)
            path.append(dst)
            if half:
                cut = len(frame_bytes_now) // 2
                await raw.write(frame_bytes_now[:cut], ends_frame=False)
                await raw.write(frame_bytes_now[cut:])
                pongs_ok = await _pong_between_fragments(raw)
            else:
                await raw.write(frame_bytes_now)
        evidence.check(
            "a ping between the fragments of a message is answered with its own payload (RFC 6455, 5.4)",
            pongs_ok,
            expected="a pong carrying the ping's payload, while the message is unfinished",
            observed="answered" if pongs_ok else {"pongs": [p[:48].hex() + ("..." if len(p) > 48 else "") for p in raw.pongs],
                                                  "closed": raw.is_closed, "served": me["session"] is not None},
        )
        if pongs_ok:
            reply = await _reply_or_none(raw, "f1")
            result = {"moves_ok": moved, "echo_intact": reply.get("data") == data, "worker": reply.get("worker"), "path": path,
                      "closed": raw.is_closed}
            evidence.check(
                "a message fragmented across migrations arrives whole, from the last worker",
                all(moved) and result["echo_intact"] and result["worker"] == path[-1] and not raw.is_closed,
                expected="both moves ok, one intact message",
                observed=result,
            )

        # A client ping in flight across a move is answered once.
        raw = raws[5]
        me = await session_of(raw)
        token = b"across-a-move"
        status = 0
        if me is not None:
            ping = frame_bytes(Opcode.PING, token)  # built once: each frame has its own mask
            await raw.write(ping[:4], ends_frame=False)
            status, _ = await admin.request(
                "POST", f"/v1/sessions/{me['session']}/migrate", {"worker": (me["worker"] + 1) % workers}
            )
            await raw.write(ping[4:])
            await settle(lambda: token in raw.pongs, timeout=5)
        evidence.check(
            "a ping cut by the migration is answered once by the new worker",
            status == 200 and raw.pongs.count(token) == 1 and not raw.is_closed,
            expected="one pong",
            observed={"moved": status == 200, "pongs": raw.pongs.count(token), "closed": raw.is_closed},
        )
    finally:
        for raw in raws:
            await raw.dispose()


@pytest.mark.scenario("migration_partial_frames", seed="workerman #1001: bytes read but not parsed travel with the fd")
@pytest.mark.requires("migrate")
def test_migration_partial_frames(target, admin, evidence, run_async):
    run_async(partial_scenario(target, admin, evidence))
    evidence.verdict()


# -- migration_pushes_in_flight ---------------------------------------------------------------


async def place(admin: AdminClient, client: ScenarioClient, worker: int) -> None:
    if client.worker != worker:
        await admin.call("POST", f"/v1/sessions/{client.session}/migrate", {"worker": worker})
        client.worker = worker


async def in_flight_scenario(target, admin: AdminClient, evidence) -> None:
    workers = int(target.profile["workers"])
    clients = await connect_many(target.ws_url, "flight", 2)
    victim, blocker = clients
    try:
        await place(admin, victim, 0)
        await place(admin, blocker, 1)
        attempts = []
        sent = 0

        async def push_next() -> bool:
            nonlocal sent
            status, _ = await admin.request(
                "POST", f"/v1/sessions/{victim.session}/push", {"data": json.dumps({"ev": "apush", "n": sent + 1})}
            )
            sent += status == 200
            return status == 200

        for attempt in range(3):
            if victim.worker == blocker.worker:
                await place(admin, victim, next(w for w in range(workers) if w != blocker.worker))
            # The target worker blocks its loop, so the move waits for it, in flight.
            await blocker.send({"op": "block", "id": f"b{attempt}", "ms": 600})
            move = asyncio.create_task(
                admin.request("POST", f"/v1/sessions/{victim.session}/migrate", {"worker": blocker.worker})
            )
            seen = await settle(lambda: _migrating(admin, victim.session), timeout=2, interval=0.005)
            during = 0
            if seen:
                for _ in range(15):
                    during += await push_next()
            status, body = await move
            for _ in range(15):  # right after the move: held by the target until the source has drained
                await push_next()
            await until(lambda a=attempt: blocker.replies.get(f"b{a}"), timeout=5, what="the block to end")
            attempts.append({"window_seen": seen, "pushed_during": during, "move_status": status, "move": body})
            if status == 200:
                victim.worker = blocker.worker
            if seen and during:
                break
        evidence.fact("attempts", attempts)
        await settle(lambda: len(numbered(victim.evs("apush"), "n")) >= sent, timeout=10)
        got = numbered(victim.evs("apush"), "n")
        evidence.check(
            "the move stayed in flight while pushes were sent (the scenario's own precondition)",
            any(a["window_seen"] and a["pushed_during"] for a in attempts),
            expected="the record showed migrating=true and pushes went out meanwhile",
            observed=attempts,
        )
        evidence.check(
            "pushes sent while the session moves arrive exactly once, in order",
            gap_or_repeat(got, sent) is None,
            expected=f"1..{sent}",
            observed=gap_or_repeat(got, sent) or "1..n",
        )
        reply = await victim.request("echo", seq=1, data="after")
        evidence.check(
            "the session works in its new worker afterwards",
            reply.get("ok") and reply.get("worker") == victim.worker and not victim.is_closed,
            expected={"worker": victim.worker},
            observed=reply,
        )
    finally:
        await dispose_all(clients)


@pytest.mark.scenario("migration_pushes_in_flight", seed="pushes addressed to a session while its fd moves")
@pytest.mark.requires("migrate")
def test_migration_pushes_in_flight(target, admin, evidence, run_async):
    run_async(in_flight_scenario(target, admin, evidence))
    evidence.verdict()


# -- migration_errors -----------------------------------------------------------------------


async def errors_scenario(target, admin: AdminClient, evidence) -> None:
    workers = int(target.profile["workers"])
    clients = await connect_many(target.ws_url, "err", 3)
    subject, blocker, gone = clients
    raw: RawClient | None = None
    idle = None
    try:
        await place(admin, blocker, 1)
        await place(admin, subject, 0)
        procs_before = sorted((p["name"], p["pid"]) for p in await admin.processes())
        outcomes: dict[str, dict] = {}

        async def attempt(label: str, sid: int, body) -> None:
            status, reply = await admin.request("POST", f"/v1/sessions/{sid}/migrate", body)
            err = reply.get("error", {}) if isinstance(reply, dict) else {}
            outcomes[label] = {"status": status, "code": err.get("code"), "name": err.get("name")}

        await attempt("unknown session", 987654321, {"worker": 1})
        await attempt("unknown worker", subject.session, {"worker": workers + 5})
        await attempt("negative worker", subject.session, {"worker": -1})
        await attempt("already there", subject.session, {"worker": 0})
        await attempt("worker is not a number", subject.session, {"worker": "two"})
        await attempt("no body", subject.session, None)
        status, body = await admin.request("POST", f"/v1/sessions/{subject.session}/migrate", raw=b"{not json")
        outcomes["garbage body"] = {"status": status, "code": body.get("error", {}).get("code") if isinstance(body, dict) else None}
        app_reply = await subject.request("migrate", worker=workers + 5)
        outcomes["app op, unknown worker"] = {"code": app_reply.get("error", {}).get("code")}
        app_reply = await subject.request("migrate", worker="x")
        outcomes["app op, bad worker"] = {"code": app_reply.get("error", {}).get("code")}

        # A session that is gone: closed by its client.
        gone_sid = gone.session
        await gone.close()
        await settle(lambda: _absent(admin, gone_sid), timeout=5)
        await attempt("closed session", gone_sid, {"worker": 2})

        # A session whose close handshake is under way: the server closed it, the client does not answer.
        raw = await RawClient.connect(target.ws_url, "closing")
        me = await session_of(raw)
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
        subject.worker = 1 if first_status == 200 else 0

        expected = {
            "unknown session": (404, 1005),
            "unknown worker": (404, 2003),
            "negative worker": (404, 2003),
            "already there": (409, 2010),
            "worker is not a number": (400, 4400),
            "no body": (400, 4400),
            "garbage body": (400, 4400),
            "app op, unknown worker": (None, 2003),
            "app op, bad worker": (None, 4400),
            "closed session": (404, 1005),
            "closing session": (409, 1004),
            "handshake not done": (409, 8503),
            "already moving": (409, 2011),
        }
        wrong = {
            label: {"expected": exp, "observed": outcomes.get(label)}
            for label, exp in expected.items()
            if (exp[0] is not None and outcomes.get(label, {}).get("status") != exp[0])
            or outcomes.get(label, {}).get("code") != exp[1]
        }
        evidence.check(
            "each refused move answers with its status and error code",
            not wrong,
            expected={k: v for k, v in expected.items()},
            observed=wrong or "all as expected",
        )
        reply = await subject.request("echo", seq=1, data="still here")
        evidence.check(
            "after every refusal the session works where it was",
            reply.get("ok") is True and reply.get("worker") == subject.worker and not subject.is_closed,
            expected={"worker": subject.worker},
            observed=reply,
        )
        procs_after = sorted((p["name"], p["pid"]) for p in await admin.processes())
        evidence.check(
            "the server is still serving everyone (no process died)",
            procs_before == procs_after,
            expected="the same processes, with the same pids, before and after the refusals",
            observed="the same" if procs_before == procs_after else {"before": procs_before, "after": procs_after},
        )
    finally:
        if idle is not None:
            idle.close()
        if raw is not None:
            await raw.dispose()
        await dispose_all(clients)


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
    run_async(errors_scenario(target, admin, evidence))
    evidence.verdict()


# -- migration_affinity_rebalance ---------------------------------------------------------------


async def affinity_scenario(target, admin: AdminClient, evidence) -> None:
    rng = evidence.rng()
    workers = int(target.profile["workers"])
    stats_before = await admin.stats()
    clients = await connect_many(target.ws_url, "room", 6 * workers)
    try:
        log = MoveLog({c.session: c.worker for c in clients})
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

        reports = {}
        for room in sorted(set(rooms.values())):
            t0 = time.time()
            report = await admin.call("POST", "/v1/affinity", {"group": room})
            log.record_report(report, t0, time.time(), "affinity")
            reports[room] = report
        placement = {s["session"]: s["worker"] for s in await admin.sessions()}
        scattered = {  # a session the target lost is listed as None
            room: sorted({placement.get(c.session) for c in clients if rooms[c.name] == room}, key=lambda w: (w is None, w or 0))
            for room in reports
        }
        evidence.fact("affinity_reports", {r: {k: v for k, v in rep.items() if k != "moved"} | {"moved": len(rep["moved"])} for r, rep in reports.items()})
        evidence.check(
            "after affinity, every member of a group sits in the group's worker",
            all(ws == [reports[r]["worker"]] for r, ws in scattered.items()),
            expected={r: [rep["worker"]] for r, rep in reports.items()},
            observed=scattered,
        )
        evidence.check(
            "affinity reports what it moved and what failed",
            all(len(rep["moved"]) + rep["already_there"] == rep["members"] and not rep["failed"] for rep in reports.values()),
            expected="moved + already_there == members, no failure",
            observed={r: [len(rep["moved"]), rep["already_there"], rep["members"], rep["failed"]] for r, rep in reports.items()},
        )

        # Skew: everything into worker 0, then rebalance.
        t0 = time.time()
        skew = await admin.call("POST", "/v1/affinity", {"sessions": [c.session for c in clients], "worker": 0})
        log.record_report(skew, t0, time.time(), "affinity")
        t0 = time.time()
        rebalance = await admin.call("POST", "/v1/rebalance")
        log.record_report(rebalance, t0, time.time(), "rebalance")
        counts = {w: 0 for w in range(workers)}
        for s in await admin.sessions():
            counts[s["worker"]] = counts.get(s["worker"], 0) + 1
        evidence.fact("rebalance", {"before": rebalance["before"], "moved": len(rebalance["moved"]), "after": counts})
        evidence.check(
            "after rebalancing, the workers' session counts differ by at most one",
            max(counts.values()) - min(counts.values()) <= 1 and not rebalance["failed"],
            expected="max - min <= 1",
            observed={"counts": counts, "failed": rebalance["failed"]},
        )
        evidence.check(
            "rebalance moves no more sessions than needed",
            len(rebalance["moved"]) == len(clients) - len(clients) // workers,
            expected=len(clients) - len(clients) // workers,
            observed=len(rebalance["moved"]),
        )
        stop.set()
        await asyncio.gather(*traffic, pusher)
        tick_totals = await stop_ticks(clients, timers)
        await per_session_checks(evidence, clients, streamers, log, pushes, tick_totals)
        await record_checks(evidence, admin, clients, log, stats_before)
    finally:
        await dispose_all(clients)


@pytest.mark.scenario("migration_affinity_rebalance", seed="workerman: gather a room in one worker; even out workers")
@pytest.mark.requires("migrate")
def test_migration_affinity_rebalance(target, admin, evidence, run_async):
    run_async(affinity_scenario(target, admin, evidence))
    evidence.verdict()
