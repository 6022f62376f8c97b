"""The migration checkers (scenarios/harness/checkers/migration.py) on synthetic histories.

A history of a correct server passes every check; each bug a migration scenario is
about (a lost or repeated echo, a reply from a worker that never owned the session, a
timer left behind, a push lost in flight, a miscounted move, a wrong refusal code, a
scenario where nothing moved) fails the check that names it, and only that one.
"""

from __future__ import annotations

import dataclasses

import pytest

from scenarios.harness.checkers import migration as m
from scenarios.harness.evidence import Check
from scenarios.harness.spec import Leftovers


def failed(checks: list[Check]) -> list[str]:
    return [c.name for c in checks if not c.passed]


ECHO = "every echo arrives exactly once, in order, intact, from a worker that owned the session then"
TICKS = "ticks from each session's own timer arrive without gap or repeat (the timer moved with it)"
PUSHES = "pushes addressed to moving sessions arrive exactly once, in order"
CLOSED = "no session is closed by moving it"
PINGS = "every WebSocket ping is answered"
SCHEDULED = "every scheduled move succeeds"
STATS = "the stats count every move (migrations_in and migrations_out)"
RECORDS = "each session's record names exactly its final owner and counts its moves"
KEPT = "uid, protection, group and handler set survive every move"


# Session 7 starts on worker 0 and moves to worker 1 during [10.0, 10.2].
def _log() -> m.MoveLog:
    return m.MoveLog({7: 0}, [m.Move(7, 10.0, 10.2, 1, "admin", True, src=0)])


def _stream(**change) -> m.SessionStream:
    sent = {1: m.Sent(1, 9.0, 5, "d1", 1), 2: m.Sent(2, 10.1, 90_000, "d2", 3), 3: m.Sent(3, 11.0, 0, "d3", 1)}
    replies = {1: m.EchoReply(9.1, 0, 5, "d1"), 2: m.EchoReply(10.3, 1, 90_000, "d2"), 3: m.EchoReply(11.1, 1, 0, "d3")}
    base = m.SessionStream(
        "c0", 7, sent, [1, 2, 3], replies, pings=2, pongs=2,
        tick_seqs=[1, 2, 3, 4], tick_total=4, push_seqs=[1, 2], pushes_sent=2,
    )
    return dataclasses.replace(base, **change)


def _history(**change) -> m.StreamHistory:
    base = m.StreamHistory(
        _log(), [_stream()], counters={"migrations_in": 1, "migrations_out": 1},
        records={7: {"session": 7, "worker": 1, "migrating": False, "migrations": 1}},
        marked=True, state_changes=[], leftovers=Leftovers([], {"worker-0": 9}, {"worker-0": 9}),
    )
    return dataclasses.replace(base, **change)


def test_owners_between_takes_either_side_of_an_overlapping_move() -> None:
    log = _log()
    assert log.owners_between(7, 8.0, 9.5) == {0}
    assert log.owners_between(7, 9.5, 10.1) == {0, 1}
    assert log.owners_between(7, 10.5, 12.0) == {1}
    assert log.final_owner(7) == 1


def test_stream_a_correct_history_passes() -> None:
    assert failed(m.check_stream(_history())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"streams": [_stream(reply_order=[1, 3])]}, [ECHO]),  # echo 2 lost with the bytes in flight
        ({"streams": [_stream(reply_order=[1, 2, 2, 3])]}, [ECHO]),  # replayed by both workers
        ({"streams": [_stream(reply_order=[2, 1, 3])]}, [ECHO]),
        # Echo 1, sent before any move, answered by worker 1: a worker that never owned the session then.
        ({"streams": [_stream(replies={**_stream().replies, 1: m.EchoReply(9.1, 1, 5, "d1")})]}, [ECHO]),
        ({"streams": [_stream(replies={**_stream().replies, 2: m.EchoReply(10.3, 1, 40_000, "dx")})]}, [ECHO]),
        ({"streams": [_stream(tick_seqs=[1, 2])]}, [TICKS]),  # the timer stayed in the old worker
        ({"streams": [_stream(tick_seqs=[1, 2, 2, 3, 4])]}, [TICKS]),
        ({"streams": [_stream(push_seqs=[1])]}, [PUSHES]),
        ({"streams": [_stream(closed={"close_frame": (1011, ""), "tail": []})]}, [CLOSED]),
        ({"streams": [_stream(pongs=1)]}, [PINGS]),
        ({"log": m.MoveLog({7: 0}, [*_log().moves, m.Move(7, 12.0, 12.1, 0, "admin", False, code=2010)])}, [SCHEDULED]),
        ({"counters": {"migrations_in": 1, "migrations_out": 0}}, [STATS]),
        ({"records": {7: {"session": 7, "worker": 0, "migrating": False}}}, [RECORDS]),
        ({"records": {7: {"session": 7, "worker": 1, "migrating": True}}}, [RECORDS]),
        ({"records": {}}, [RECORDS]),
        ({"state_changes": [{"session": 7, "uid": [5000, 0]}]}, [KEPT]),
        ({"leftovers": Leftovers([], {"worker-0": 9}, {"worker-0": 12})}, ["every process is back to its fd count (no fd leak)"]),
    ],
    ids=[
        "echo-lost", "echo-repeated", "echo-reordered", "echo-from-a-stranger", "echo-corrupt", "timer-left-behind",
        "tick-repeated", "push-lost", "closed", "ping-unanswered", "a-move-refused", "miscounted", "record-stale",
        "record-migrating", "record-gone", "uid-lost", "fd-leak",
    ],
)
def test_stream_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(m.check_stream(_history(**change))) == names


def test_stream_is_not_vacuous_when_nothing_moved_or_was_sent() -> None:
    nothing = _history(log=m.MoveLog({7: 0}), streams=[_stream(sent={}, reply_order=[], replies={})],
                       counters={"migrations_in": 0, "migrations_out": 0},
                       records={7: {"session": 7, "worker": 0, "migrating": False}})
    assert failed(m.check_stream(nothing)) == [ECHO, SCHEDULED]
    assert KEPT in failed(m.check_stream(_history(marked=False)))


# -- migration_affinity_rebalance ---------------------------------------------------------------------


def _affinity(**change) -> m.AffinityHistory:
    base = m.AffinityHistory(
        _log(), workers=2,
        reports={100: {"worker": 1, "moved": [{"session": 7, "to": 1}], "already_there": 1, "members": 2, "failed": []}},
        placement={100: [1]},
        rebalance={"before": {"0": 4, "1": 0}, "moved": [{"session": 1}, {"session": 2}], "failed": []},
        counts_after={0: 2, 1: 2},
        streams=[_stream(), _stream(name="c1", session=8, sent={}, reply_order=[], replies={}, tick_seqs=[], tick_total=0,
                                    push_seqs=[], pushes_sent=0), _stream(name="c2", session=9), _stream(name="c3", session=10)],
        counters={"migrations_in": 1, "migrations_out": 1},
        records={s: {"session": s, "worker": 1 if s == 7 else 0, "migrating": False} for s in (7, 8, 9, 10)},
    )
    base.log.initial.update({8: 0, 9: 0, 10: 0})
    for s in (9, 10):  # their streams are session 7's: moved from worker 0 to 1 during [10.0, 10.2]
        base.log.moves.append(m.Move(s, 10.0, 10.2, 1, "affinity", True))
        base.records[s]["worker"] = 1
    base.counters = {"migrations_in": 3, "migrations_out": 3}
    return dataclasses.replace(base, **change)


def test_affinity_a_correct_history_passes() -> None:
    assert failed(m.check_affinity(_affinity())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"placement": {100: [0, 1]}}, ["after affinity, every member of a group sits in the group's worker"]),
        ({"reports": {100: {"worker": 1, "moved": [], "already_there": 1, "members": 2, "failed": [7]}}, "placement": {100: [1]}},
         ["affinity reports what it moved and what failed"]),
        ({"counts_after": {0: 3, 1: 1}}, ["after rebalancing, the workers' session counts differ by at most one"]),
        ({"rebalance": {"moved": [{"session": s} for s in range(4)], "failed": []}}, ["rebalance moves no more sessions than needed"]),
        ({"reports": {}, "placement": {}},
         ["after affinity, every member of a group sits in the group's worker", "affinity reports what it moved and what failed"]),
    ],
    ids=["group-scattered", "a-member-failed", "uneven", "too-many-moves", "vacuous"],
)
def test_affinity_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(m.check_affinity(_affinity(**change))) == names


# -- migration_partial_frames -------------------------------------------------------------------------

CUT = "a frame cut in two by the migration arrives whole, from the new worker"
FRAG_PING = "a ping between the fragments of a message is answered with its own payload (RFC 6455, 5.4)"
FRAG = "a message fragmented across migrations arrives whole, from the last worker"
PING = "a ping cut by the migration is answered once by the new worker"


def _partial(**change) -> m.PartialHistory:
    base = m.PartialHistory(
        cuts=[{"cut": c, "moved": True, "echo_intact": True, "worker": 1, "expected_worker": 1, "closed": False} for c in (1, 3, 7, 9000)],
        fragmented={"pongs_ok": True, "served": True, "moves_ok": [True, True], "path": [0, 1, 0], "echo_intact": True, "worker": 0, "closed": False},
        ping={"moved": True, "pongs": 1, "closed": False},
    )
    return dataclasses.replace(base, **change)


def test_partial_a_correct_history_passes() -> None:
    assert failed(m.check_partial(_partial())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        # The seed: bytes read but not parsed stay in the old worker; the rest arrives as garbage.
        ({"cuts": [{"cut": 7, "moved": True, "echo_intact": False, "worker": None, "expected_worker": 1, "closed": True}]}, [CUT]),
        ({"cuts": []}, [CUT]),
        ({"fragmented": {"pongs_ok": False, "pongs": [], "closed": True, "served": True}}, [FRAG_PING]),
        ({"fragmented": {**_partial().fragmented, "worker": 1}}, [FRAG]),
        ({"fragmented": {**_partial().fragmented, "moves_ok": []}}, [FRAG]),
        ({"ping": {"moved": True, "pongs": 0, "closed": False}}, [PING]),
        ({"ping": {"moved": True, "pongs": 2, "closed": False}}, [PING]),
    ],
    ids=["frame-garbled", "no-cut-tried", "pings-between-fragments-lost", "fragment-from-wrong-worker", "no-move", "ping-lost", "ping-twice"],
)
def test_partial_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(m.check_partial(_partial(**change))) == names


# -- migration_pushes_in_flight ------------------------------------------------------------------------

IN_FLIGHT = "the move stayed in flight while pushes were sent (the scenario's own precondition)"
EXACTLY_ONCE = "pushes sent while the session moves arrive exactly once, in order"
WORKS = "the session works in its new worker afterwards"


def _flight(**change) -> m.InFlightHistory:
    base = m.InFlightHistory(
        attempts=[{"window_seen": True, "pushed_during": 15, "move_status": 200}],
        pushes_sent=30, push_seqs=list(range(1, 31)), after={"ok": True, "worker": 1}, expected_worker=1,
    )
    return dataclasses.replace(base, **change)


def test_in_flight_a_correct_history_passes() -> None:
    assert failed(m.check_in_flight(_flight())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"attempts": [{"window_seen": False, "pushed_during": 0}] * 3}, [IN_FLIGHT]),
        ({"push_seqs": list(range(1, 16)) + list(range(17, 31))}, [EXACTLY_ONCE]),  # one lost in the hand-over
        ({"push_seqs": [*range(1, 31), 16]}, [EXACTLY_ONCE]),  # delivered by both sides
        ({"push_seqs": list(range(16, 31)) + list(range(1, 16))}, [EXACTLY_ONCE]),  # held ones overtaken
        ({"pushes_sent": 0, "push_seqs": []}, [EXACTLY_ONCE]),
        ({"after": {"ok": True, "worker": 0}}, [WORKS]),
        ({"closed": True}, [WORKS]),
    ],
    ids=["never-in-flight", "lost", "repeated", "reordered", "vacuous", "wrong-worker", "closed"],
)
def test_in_flight_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(m.check_in_flight(_flight(**change))) == names


# -- migration_errors ------------------------------------------------------------------------------------

REFUSALS = "each refused move answers with its status and error code"


def _errors(**change) -> m.ErrorsHistory:
    base = m.ErrorsHistory(
        outcomes={label: {"status": status, "code": code} for label, (status, code) in m.EXPECTED_REFUSALS.items()},
        after={"ok": True, "worker": 1}, expected_worker=1,
        processes_before=[["worker-0", 10], ["worker-1", 11]], processes_after=[["worker-0", 10], ["worker-1", 11]],
    )
    return dataclasses.replace(base, **change)


def test_errors_a_correct_history_passes() -> None:
    assert failed(m.check_errors(_errors())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"outcomes": {**_errors().outcomes, "closing session": {"status": 200, "code": None}}}, [REFUSALS]),
        ({"outcomes": {**_errors().outcomes, "garbage body": {"status": 500, "code": None}}}, [REFUSALS]),
        ({"outcomes": {k: v for k, v in _errors().outcomes.items() if k != "already moving"}}, [REFUSALS]),
        ({"after": {"ok": False}}, ["after every refusal the session works where it was"]),
        ({"processes_after": [["worker-0", 10], ["worker-1", 99]]}, ["the server is still serving everyone (no process died)"]),
        ({"processes_before": [], "processes_after": []}, ["the server is still serving everyone (no process died)"]),
    ],
    ids=["closing-moved", "garbage-500", "one-not-tried", "subject-broken", "a-worker-died", "vacuous"],
)
def test_errors_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(m.check_errors(_errors(**change))) == names
