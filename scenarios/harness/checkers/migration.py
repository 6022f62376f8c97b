"""The checks of the migration scenarios (scenarios/test_migration.py; contract section 7).

A move is judged against what the scenario asked for and when (:class:`MoveLog`), and
against each client's traffic while its session moved (:class:`SessionStream`):

* every echo exactly once, in order, data intact, answered by a worker that owned the
  session at some instant between the request and the reply;
* the ticks of a session's own timer and the pushes addressed to it, numbered, without
  gap or repeat (the timer and the queue moved with the session);
* no session closed by a move, every WebSocket ping answered;
* ``migrations_in``/``migrations_out`` and each session's record count the moves.

The partial-frame, in-flight and error scenarios have histories of their own below.
Everything here is pure: histories in, named checks out.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass, field
from typing import Any

from ..evidence import Check
from ..figures import Answer, Figure, Lane, Mark, Series, answers_figure, rel
from ..spec import Leftovers, check_leftovers, named

# -- what was asked for --------------------------------------------------------------------------


@dataclass
class Move:
    """One move the scenario asked for (or one an affinity or rebalance report says it made)."""

    session: int
    t_start: float
    t_end: float
    dst: int
    via: str  # "admin", "app", "affinity", "rebalance"
    ok: bool
    src: int | None = None
    code: int | None = None
    name: str = ""


@dataclass
class MoveLog:
    """What the scenario asked for, and what came of it: the model a reply's worker is judged by."""

    initial: dict[int, int]  # session -> worker when the scenario began
    moves: list[Move] = field(default_factory=list)

    def record_report(self, report: dict[str, Any], t0: float, t1: float, via: str) -> None:
        """Moves made by affinity or rebalance (each within the call's window)."""
        for m in report.get("moved", []):
            self.moves.append(Move(m["session"], t0, t1, m["to"], via, True, src=m.get("from")))

    def successful(self, session: int) -> list[Move]:
        return sorted((m for m in self.moves if m.ok and m.session == session), key=lambda m: m.t_start)

    def owners_between(self, session: int, t0: float, t1: float) -> set[int]:
        """Every worker that may have owned ``session`` at some instant in [t0, t1]."""
        owner = self.initial[session]
        owners: set[int] = set()
        for m in self.successful(session):
            if m.t_end < t0:
                owner = m.dst
                continue
            if m.t_start > t1:
                break
            owners.update({owner, m.dst})  # a move overlaps the window: either side
            owner = m.dst
        if not owners:
            owners.add(owner)
        return owners

    def final_owner(self, session: int) -> int:
        moves = self.successful(session)
        return moves[-1].dst if moves else self.initial[session]


# -- what each client saw ----------------------------------------------------------------------------


@dataclass
class Sent:
    """One echo request: when it went out, the size and digest of its data, in how many fragments."""

    seq: int
    t: float
    size: int
    digest: str
    fragments: int


@dataclass
class EchoReply:
    """The reply to one echo request: when it came, the worker it names, its data's size and digest."""

    t: float
    worker: Any
    size: int | None  # None: the reply carried no string data
    digest: str | None


@dataclass
class SessionStream:
    """One client's traffic while its session moved."""

    name: str
    session: int
    sent: dict[int, Sent] = field(default_factory=dict)
    reply_order: list[int] = field(default_factory=list)  # echo sequence numbers, in the order replies came
    replies: dict[int, EchoReply] = field(default_factory=dict)
    pings: int = 0
    pongs: int = 0
    tick_seqs: list[int] = field(default_factory=list)  # the ticks of its own timer
    tick_times: list[float] = field(default_factory=list)  # when each of them arrived (for the figure)
    tick_total: int | None = None  # how many ticks the timer says it sent (timer_stop)
    push_seqs: list[int] = field(default_factory=list)  # the numbered admin pushes it received
    pushes_sent: int = 0  # how many were accepted for it (200)
    closed: dict[str, Any] | None = None  # close frame and tail, when the session was closed


def gap_or_repeat(seqs: list[int], expected_last: int | None = None) -> dict[str, Any] | None:
    """None if ``seqs`` is exactly 1..n (and n == expected_last when given); else what is wrong."""
    n = expected_last if expected_last is not None else (seqs[-1] if seqs else 0)
    if seqs == list(range(1, n + 1)):
        return None
    return {
        "count": len(seqs),
        "expected_last": n,
        "missing": sorted(set(range(1, n + 1)) - set(seqs))[:10],
        "repeated": sorted(s for s, k in collections.Counter(seqs).items() if k > 1)[:10],
        "first_jumps": [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1][:5],
    }


def echo_problems(s: SessionStream, log: MoveLog) -> list[dict[str, Any]]:
    """Each echo exactly once, in order, data intact, from a worker that owned the session then."""
    problems: list[dict[str, Any]] = []
    expected = list(range(1, len(s.sent) + 1))
    if s.reply_order != expected:
        order = s.reply_order
        problems.append(
            {
                "client": s.name,
                "problem": "order",
                "missing": sorted(set(expected) - set(order))[:10],
                "duplicates": sorted(q for q, k in collections.Counter(order).items() if k > 1)[:10],
                "jumps": [(a, b) for a, b in itertools.pairwise(order) if b != a + 1][:5],
                "replies": len(order),
                "sent": len(s.sent),
            }
        )
    for seq, sent in s.sent.items():
        reply = s.replies.get(seq)
        if reply is None:
            continue
        if reply.size != sent.size or reply.digest != sent.digest:
            problems.append({"client": s.name, "problem": "data", "seq": seq, "size": sent.size, "got": reply.size})
            continue
        owners = log.owners_between(s.session, sent.t, reply.t)
        if reply.worker not in owners:
            problems.append(
                {"client": s.name, "problem": "worker", "seq": seq, "reply_worker": reply.worker, "owners_then": sorted(owners)}
            )
    return problems


def check_streams(streams: list[SessionStream], log: MoveLog) -> list[Check]:
    """The per-session promises of a move: echoes, ticks, pushes, pings, and no close."""
    echo_bad = [p for s in streams for p in echo_problems(s, log)]
    tick_bad = {s.name: g for s in streams if (g := gap_or_repeat(s.tick_seqs, s.tick_total))}
    push_bad = {s.name: g for s in streams if (g := gap_or_repeat(s.push_seqs, s.pushes_sent))}
    closed = [{"client": s.name, **s.closed} for s in streams if s.closed is not None]
    unanswered = {s.name: [s.pings, s.pongs] for s in streams if s.pongs < s.pings}
    echoes = sum(len(s.sent) for s in streams)
    return [
        named(
            "every echo arrives exactly once, in order, intact, from a worker that owned the session then",
            echoes > 0 and not echo_bad,
            expected="replies e1..en in order (n > 0); data equal; worker within the schedule's owners",
            observed=f"{len(echo_bad)} problems in {echoes} echoes",
            problems=echo_bad,
        ),
        named(
            "ticks from each session's own timer arrive without gap or repeat (the timer moved with it)",
            not tick_bad,
            expected="1..n where n is the timer's own count",
            observed=tick_bad or "all consecutive",
        ),
        named(
            "pushes addressed to moving sessions arrive exactly once, in order",
            not push_bad,
            expected="1..n per session",
            observed=push_bad or "all consecutive",
        ),
        named("no session is closed by moving it", not closed, expected="all open", observed=f"{len(closed)} closed", clients=closed),
        named("every WebSocket ping is answered", not unanswered, expected="pongs == pings", observed=unanswered or "all answered"),
    ]


def check_records(log: MoveLog, streams: list[SessionStream], counters: dict[str, int], records: dict[int, dict[str, Any]]) -> list[Check]:
    """The stats count every move; each session's record names its final owner and counts its moves."""
    ok_moves = [m for m in log.moves if m.ok]
    wrong = []
    for s in streams:
        rec = records.get(s.session)
        want_worker = log.final_owner(s.session)
        want_moves = len(log.successful(s.session))
        if rec is None or rec.get("worker") != want_worker or rec.get("migrating"):
            wrong.append({"client": s.name, "record": rec, "expected_worker": want_worker})
        elif isinstance(rec.get("migrations"), int) and rec["migrations"] < want_moves:
            wrong.append({"client": s.name, "migrations": rec["migrations"], "expected_at_least": want_moves})
    return [
        named(
            "the stats count every move (migrations_in and migrations_out)",
            counters.get("migrations_in") == counters.get("migrations_out") == len(ok_moves),
            expected=len(ok_moves),
            observed=counters,
        ),
        named(
            "each session's record names exactly its final owner and counts its moves",
            not wrong,
            expected="worker = last move's target, not migrating",
            observed=f"{len(wrong)} wrong",
            records=wrong,
        ),
    ]


# -- migration_stream -----------------------------------------------------------------------------


@dataclass
class StreamHistory:
    """What ``migration_stream`` observed: the moves, the traffic, the counters and records after."""

    log: MoveLog
    streams: list[SessionStream] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)  # migrations_in/out growth over the scenario
    records: dict[int, dict[str, Any]] = field(default_factory=dict)  # /v1/sessions after the traffic stopped
    marked: bool = False  # the sessions were given uids, protection and groups before the moves
    state_changes: list[dict[str, Any]] = field(default_factory=list)
    leftovers: Leftovers = field(default_factory=Leftovers)


def check_stream(h: StreamHistory) -> list[Check]:
    refused = [(m.session, m.dst, m.name) for m in h.log.moves if not m.ok]
    return [
        *check_streams(h.streams, h.log),
        named(
            "every scheduled move succeeds",
            bool(h.log.moves) and not refused,
            expected="at least one move, and no refusal (each move names a live session and another worker)",
            observed=refused or f"{len(h.log.moves)} moves",
        ),
        *check_records(h.log, h.streams, h.counters, h.records),
        named(
            "uid, protection, group and handler set survive every move",
            h.marked and not h.state_changes,
            expected="each session's uid, protected, group and handler as before its moves",
            observed=h.state_changes or ("all kept" if h.marked else "the sessions were not marked"),
        ),
        *check_leftovers(h.leftovers),
    ]


# -- migration_affinity_rebalance -------------------------------------------------------------------


@dataclass
class AffinityHistory:
    """What ``migration_affinity_rebalance`` observed."""

    log: MoveLog
    workers: int
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)  # group -> /v1/affinity report
    placement: dict[int, list[Any]] = field(default_factory=dict)  # group -> workers its members sit in after
    rebalance: dict[str, Any] = field(default_factory=dict)  # the /v1/rebalance report
    counts_after: dict[int, int] = field(default_factory=dict)  # worker -> sessions after rebalancing
    streams: list[SessionStream] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    records: dict[int, dict[str, Any]] = field(default_factory=dict)


def check_affinity(h: AffinityHistory) -> list[Check]:
    reports, rebalance = h.reports, h.rebalance
    counts = h.counts_after
    sessions = len(h.streams)
    needed = sessions - sessions // h.workers if h.workers else 0
    return [
        named(
            "after affinity, every member of a group sits in the group's worker",
            bool(reports) and all(h.placement.get(r) == [rep.get("worker")] for r, rep in reports.items()),
            expected={r: [rep.get("worker")] for r, rep in reports.items()} or "at least one group",
            observed=h.placement,
        ),
        named(
            "affinity reports what it moved and what failed",
            bool(reports)
            and all(len(rep.get("moved", [])) + rep.get("already_there", 0) == rep.get("members") and not rep.get("failed") for rep in reports.values()),
            expected="moved + already_there == members, no failure",
            observed={r: [len(rep.get("moved", [])), rep.get("already_there"), rep.get("members"), rep.get("failed")] for r, rep in reports.items()},
        ),
        named(
            "after rebalancing, the workers' session counts differ by at most one",
            bool(counts) and max(counts.values()) - min(counts.values()) <= 1 and not rebalance.get("failed"),
            expected="max - min <= 1",
            observed={"counts": counts, "failed": rebalance.get("failed")},
        ),
        named(
            "rebalance moves no more sessions than needed",
            len(rebalance.get("moved", [])) == needed,
            expected=needed,
            observed=len(rebalance.get("moved", [])),
        ),
        *check_streams(h.streams, h.log),
        *check_records(h.log, h.streams, h.counters, h.records),
    ]


# -- migration_partial_frames ------------------------------------------------------------------------


@dataclass
class PartialHistory:
    """What ``migration_partial_frames`` observed, part by part.

    ``cuts``: one entry per frame cut in two by a move (``moved``, ``echo_intact``,
    ``worker``, ``expected_worker``, ``closed``). ``fragmented``: the message sent in
    three fragments across two moves (``pongs_ok``: the pings between fragments were
    answered; ``moves_ok``, ``echo_intact``, ``worker``, ``path``, ``closed``).
    ``ping``: a ping frame cut by a move (``moved``, ``pongs``, ``closed``).
    """

    cuts: list[dict[str, Any]] = field(default_factory=list)
    fragmented: dict[str, Any] = field(default_factory=dict)
    ping: dict[str, Any] = field(default_factory=dict)


def check_partial(h: PartialHistory) -> list[Check]:
    frag = h.fragmented
    checks = [
        named(
            "a frame cut in two by the migration arrives whole, from the new worker",
            bool(h.cuts)
            and all(r.get("moved") and r.get("echo_intact") and r.get("worker") == r.get("expected_worker") and not r.get("closed") for r in h.cuts),
            expected="moved, echo intact, reply from the target",
            observed=h.cuts,
        ),
        named(
            "a ping between the fragments of a message is answered with its own payload (RFC 6455, 5.4)",
            bool(frag.get("pongs_ok")),
            expected="a pong carrying the ping's payload, while the message is unfinished",
            observed="answered" if frag.get("pongs_ok") else {k: frag.get(k) for k in ("pongs", "closed", "served")},
        ),
    ]
    if frag.get("pongs_ok"):  # else the message never finished: the check above names why
        checks.append(
            named(
                "a message fragmented across migrations arrives whole, from the last worker",
                bool(frag.get("moves_ok")) and all(frag["moves_ok"]) and bool(frag.get("echo_intact"))
                and frag.get("worker") == (frag.get("path") or [None])[-1] and not frag.get("closed"),
                expected="both moves ok, one intact message",
                observed={k: frag.get(k) for k in ("moves_ok", "echo_intact", "worker", "path", "closed")},
            )
        )
    ping = h.ping
    checks.append(
        named(
            "a ping cut by the migration is answered once by the new worker",
            bool(ping.get("moved")) and ping.get("pongs") == 1 and not ping.get("closed"),
            expected="one pong",
            observed=ping,
        )
    )
    return checks


# -- migration_pushes_in_flight -------------------------------------------------------------------


@dataclass
class InFlightHistory:
    """What ``migration_pushes_in_flight`` observed.

    ``attempts``: per try, whether the record showed the move in flight (``window_seen``),
    how many pushes went out meanwhile (``pushed_during``) and the move's answer.
    """

    attempts: list[dict[str, Any]] = field(default_factory=list)
    pushes_sent: int = 0
    push_seqs: list[int] = field(default_factory=list)
    after: dict[str, Any] = field(default_factory=dict)  # the echo reply once the move is done
    expected_worker: int | None = None
    closed: bool = False


def check_in_flight(h: InFlightHistory) -> list[Check]:
    gap = gap_or_repeat(h.push_seqs, h.pushes_sent)
    return [
        named(
            "the move stayed in flight while pushes were sent (the scenario's own precondition)",
            any(a.get("window_seen") and a.get("pushed_during") for a in h.attempts),
            expected="the record showed migrating=true and pushes went out meanwhile",
            observed=h.attempts,
        ),
        named(
            "pushes sent while the session moves arrive exactly once, in order",
            h.pushes_sent > 0 and gap is None,
            expected=f"1..{h.pushes_sent} (at least one)",
            observed=gap or "1..n",
        ),
        named(
            "the session works in its new worker afterwards",
            h.after.get("ok") is True and h.after.get("worker") == h.expected_worker and not h.closed,
            expected={"worker": h.expected_worker},
            observed=h.after,
        ),
    ]


# -- migration_errors ------------------------------------------------------------------------------

#: Each refused move: (HTTP status of the admin API, or None for the app op; error code). Contract 7.4.
EXPECTED_REFUSALS: dict[str, tuple[int | None, int]] = {
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


@dataclass
class ErrorsHistory:
    """What ``migration_errors`` observed: each attempt's status and code, then the subject and the processes."""

    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> {"status", "code", "name"}
    after: dict[str, Any] = field(default_factory=dict)  # the subject's echo reply after every refusal
    expected_worker: int | None = None
    closed: bool = False
    processes_before: list[Any] = field(default_factory=list)
    processes_after: list[Any] = field(default_factory=list)


def check_errors(h: ErrorsHistory) -> list[Check]:
    wrong = {}
    for label, (status, code) in EXPECTED_REFUSALS.items():
        got = h.outcomes.get(label, {})
        if (status is not None and got.get("status") != status) or got.get("code") != code:
            wrong[label] = {"expected": [status, code], "observed": h.outcomes.get(label)}
    same = h.processes_before == h.processes_after and bool(h.processes_before)
    return [
        named(
            "each refused move answers with its status and error code",
            not wrong,
            expected={k: list(v) for k, v in EXPECTED_REFUSALS.items()},
            observed=wrong or "all as expected",
        ),
        named(
            "after every refusal the session works where it was",
            h.after.get("ok") is True and h.after.get("worker") == h.expected_worker and not h.closed,
            expected={"worker": h.expected_worker},
            observed=h.after,
        ),
        named(
            "the server is still serving everyone (no process died)",
            same,
            expected="the same processes, with the same pids, before and after the refusals",
            observed="the same" if same else {"before": h.processes_before, "after": h.processes_after},
        ),
    ]


# -- figures ---------------------------------------------------------------------------------------

MOVE_CHECK = "every scheduled move succeeds"
ECHO_CHECK = "every echo arrives exactly once, in order, intact, from a worker that owned the session then"
TICK_CHECK = "ticks from each session's own timer arrive without gap or repeat (the timer moved with it)"
MAX_PROBLEM_MARKS = 10


def ownership_figure(log: MoveLog, streams: list[SessionStream], title: str = "") -> Figure | None:
    """Each session's owner over time (bars by worker, a move's own window in grey), its echo replies
    as dots coloured by the worker that answered; refused moves and replies from a worker that did not
    own the session then are marked."""
    times = [m.t_start for m in log.moves] + [r.t for s in streams for r in s.replies.values()]
    times += [t for s in streams for t in (s.tick_times[:1] + s.tick_times[-1:])]
    if not times:
        return None
    origin, end = min(times), max([m.t_end for m in log.moves] + times)
    fig = Figure("owners", title or "Each session's owner over time (bars) and who answered its echoes (dots)", "lanes",
                 y_label="session", origin=origin)
    names = {s.session: s.name for s in streams}
    problems = refused = 0
    for session, first in log.initial.items():
        lane = Lane(names.get(session, f"s{session}"))
        owner, since = first, origin
        for m in log.successful(session):
            lane.bars.append((rel(since, origin), rel(m.t_start, origin), f"worker {owner}"))
            lane.bars.append((rel(m.t_start, origin), rel(m.t_end, origin), "moving"))
            owner, since = m.dst, m.t_end
        lane.bars.append((rel(since, origin), rel(end, origin), f"worker {owner}"))
        fig.lanes.append(lane)
        for m in log.moves:
            if m.session == session and not m.ok and refused < MAX_PROBLEM_MARKS:
                refused += 1
                fig.marks.append(Mark(rel(m.t_start, origin), f"move refused ({m.code})", lane.name, check=MOVE_CHECK))
    for s in streams:
        row = next((x for x in fig.lanes if x.name == s.name), None)
        if row is None:
            continue
        for r in s.replies.values():
            row.points.append((rel(r.t, origin), f"worker {r.worker}"))
        for p in echo_problems(s, log):  # the check's own findings, each where it happened
            if problems >= MAX_PROBLEM_MARKS:
                break
            if p["problem"] == "worker":
                t, label = s.replies[p["seq"]].t, f"reply from {p['reply_worker']}, owner {p['owners_then']}"
            elif p["problem"] == "data":
                t, label = s.replies[p["seq"]].t, f"e{p['seq']} came back changed"
            elif p["missing"] and p["missing"][0] in s.sent:
                t, label = s.sent[p["missing"][0]].t, f"e{p['missing'][0]} never answered"  # where it was sent
            else:
                continue
            problems += 1
            fig.marks.append(Mark(rel(t, origin), label, s.name, check=ECHO_CHECK))
        tick = tick_problem(s)
        if tick is not None:
            at, what = tick
            fig.marks.append(Mark(rel(at if at is not None else origin, origin), what, s.name, check=TICK_CHECK))
    return fig


def tick_problem(s: SessionStream) -> tuple[float | None, str] | None:
    """Where a session's own ticks first went wrong (the arrival that breaks 1, 2, 3..., or the last
    tick when they stop short of the timer's count), and how; None if they did not."""
    if gap_or_repeat(s.tick_seqs, s.tick_total) is None:
        return None
    times = s.tick_times if len(s.tick_times) == len(s.tick_seqs) else []
    for i, seq in enumerate(s.tick_seqs):
        if seq != i + 1:
            after = f"#{s.tick_seqs[i - 1]}" if i else "the start"
            return (times[i] if times else None), f"tick #{seq} after {after}"
    last = s.tick_seqs[-1] if s.tick_seqs else 0
    of = f"of {s.tick_total}" if s.tick_total is not None and s.tick_total >= 0 else "(timer_stop gave no count)"
    return (times[-1] if times else None), f"ticks stop at #{last} {of}"


REFUSAL_CHECK = "each refused move answers with its status and error code"


def errors_figure(h: ErrorsHistory) -> Figure | None:
    """Each move that must be refused: refused with its status and code, or not (what came back)."""
    answers = []
    for label, (status, code) in EXPECTED_REFUSALS.items():
        got = h.outcomes.get(label, {})
        good = not ((status is not None and got.get("status") != status) or got.get("code") != code)
        answers.append(Answer(label, good, f"{got.get('status')} {got.get('code')} (want {status} {code})", REFUSAL_CHECK))
    return answers_figure("refusals", "Each move the contract refuses: answered with its status and code?", answers)


CUT_CHECK = "a frame cut in two by the migration arrives whole, from the new worker"


def partial_figure(h: PartialHistory) -> Figure | None:
    """Each part of the scenario (a frame cut by a move, a message fragmented across two moves with
    pings between, a ping cut by a move): came through as it should, or not."""
    answers = [
        Answer(f"frame cut by a move #{i + 1}",
               bool(r.get("moved") and r.get("echo_intact") and r.get("worker") == r.get("expected_worker") and not r.get("closed")),
               f"moved={r.get('moved')} intact={r.get('echo_intact')} worker={r.get('worker')}", CUT_CHECK)
        for i, r in enumerate(h.cuts)
    ]
    frag = h.fragmented
    if frag:
        answers.append(Answer("ping between fragments", bool(frag.get("pongs_ok")), f"pongs={frag.get('pongs')}",
                              "a ping between the fragments of a message is answered with its own payload (RFC 6455, 5.4)"))
        if frag.get("pongs_ok"):
            answers.append(Answer("message fragmented across two moves",
                                  bool(frag.get("moves_ok")) and all(frag["moves_ok"]) and bool(frag.get("echo_intact")),
                                  f"intact={frag.get('echo_intact')} worker={frag.get('worker')}",
                                  "a message fragmented across migrations arrives whole, from the last worker"))
    if h.ping:
        answers.append(Answer("ping cut by a move", bool(h.ping.get("moved")) and h.ping.get("pongs") == 1,
                              f"pongs={h.ping.get('pongs')}", "a ping cut by the migration is answered once by the new worker"))
    return answers_figure("parts", "Each cut frame, fragmented message and ping across moves: through whole?", answers)


IN_FLIGHT_CHECK = "pushes sent while the session moves arrive exactly once, in order"


def in_flight_figure(h: InFlightHistory) -> Figure | None:
    """The numbered pushes as they arrived (sequence number by arrival), against 1..n; the first gap or
    repeat marked."""
    if not h.push_seqs and not h.pushes_sent:
        return None
    fig = Figure("pushes", f"The {h.pushes_sent} numbered pushes sent while the session moved, as they arrived", "series",
                 x_label="arrival, in order", y_label="push number",
                 series=[Series("expected", [(0.0, 1.0), (float(max(h.pushes_sent - 1, 0)), float(h.pushes_sent))], "line"),
                         Series("arrived", [(float(i), float(q)) for i, q in enumerate(h.push_seqs)])])
    for i, q in enumerate(h.push_seqs):
        if q != i + 1:
            fig.marks.append(Mark(float(i), f"{q} where {i + 1} was due", y=float(q), check=IN_FLIGHT_CHECK))
            break
    else:
        if len(h.push_seqs) < h.pushes_sent:
            fig.marks.append(Mark(float(len(h.push_seqs)), f"{h.pushes_sent - len(h.push_seqs)} never came",
                                  y=float(len(h.push_seqs)), check=IN_FLIGHT_CHECK))
    return fig
