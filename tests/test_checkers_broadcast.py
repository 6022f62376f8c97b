"""The broadcast model and checkers on synthetic histories (scenarios/harness/broadcast.py,
scenarios/harness/checkers/broadcast.py).

The model (``check_histories``): each session gets each message of its channels exactly
once, in each publisher's order, never before its join or after its leave; a message
published while the session was surely a member is required unless its publish overlaps a
reported outage. Each violation is shown on a handful of receipts. Then each scenario's
checks: a correct history passes; each bug fails the check that names it; a history where
nothing was published or required fails.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from scenarios.harness import broadcast as bc_model
from scenarios.harness.broadcast import ALL, Membership, Published, Violations, check_histories
from scenarios.harness.checkers import broadcast as bc
from scenarios.harness.evidence import Check


def failed(checks: list[Check]) -> list[str]:
    return [c.name for c in checks if not c.passed]


@dataclass
class Recv:
    """What check_histories reads of a client (a BroadcastClient records the same)."""

    name: str = "c1"
    node: str = "a"
    opened_at: float = 1.0
    closed_at: float = 0.0
    aborted_at: float = 0.0
    memberships: list[Membership] = field(default_factory=list)
    received: list[tuple[float, str, str, int, str | None]] = field(default_factory=list)


def _pub(seq: int, start: float, channel: str = "news", ok: bool = True) -> Published:
    return Published("p", seq, channel, start, start + 0.01, ok)


# The client joined "news" at 2.0 (answer 2.1), left at 8.0 (answer 8.1); p published 1..3
# at 3, 4, 5 (members), 0 at 1.5 (before the join), 9 at 9.0 (after the leave).
MEMBER = Membership("news", 2.0, 2.1, 8.0, 8.1)
PUBLISHED = [_pub(1, 3.0), _pub(2, 4.0), _pub(3, 5.0)]


def _client(*seqs: tuple[float, int], **kw) -> Recv:
    return Recv(memberships=[MEMBER], received=[(t, "news", "p", s, None) for t, s in seqs], **kw)


def test_model_a_correct_history_has_no_violation() -> None:
    v = check_histories([_client((3.1, 1), (4.1, 2), (5.1, 3))], PUBLISHED, end=10.0)
    assert v.summary() == {"required": 3, "received": 3, "excused_by_outage": 0, "duplicates": 0,
                           "out_of_order": 0, "missing": 0, "forbidden": 0}


def test_model_names_each_violation() -> None:
    assert len(check_histories([_client((3.1, 1), (3.2, 1), (4.1, 2), (5.1, 3))], PUBLISHED, end=10.0).duplicates) == 1
    assert len(check_histories([_client((4.1, 2), (4.2, 1), (5.1, 3))], PUBLISHED, end=10.0).out_of_order) == 1
    missing = check_histories([_client((3.1, 1), (5.1, 3))], PUBLISHED, end=10.0).missing
    assert [m["seq"] for m in missing] == [2]
    after_leave = [*PUBLISHED, _pub(4, 9.0)]
    assert len(check_histories([_client((3.1, 1), (4.1, 2), (5.1, 3), (9.1, 4))], after_leave, end=10.0).forbidden) == 1
    # A message of another channel, or one never published, is forbidden too.
    other = Recv(memberships=[MEMBER], received=[(3.1, "sport", "p", 1, None)])
    assert len(check_histories([other], PUBLISHED, end=10.0).forbidden) == 1


def test_model_until_missing_stops_at_the_first_loss_and_details_only_the_first_losses() -> None:
    published = [_pub(i, 3.0 + i * 0.01) for i in range(1, 301)]
    nothing = _client()
    v = check_histories([nothing], published, end=10.0, until_missing=True)
    assert [m["seq"] for m in v.missing] == [1]
    full = check_histories([nothing], published, end=10.0)
    assert len(full.missing) == 300 and full.required == 300
    detailed = [m for m in full.missing if "received_around" in m]
    assert len(detailed) == bc_model.DETAILED_MISSING
    # Published out of order of start across publishers: each still found by its membership.
    mixed = [Published("q", 1, "news", 5.0, 5.01, True), Published("p", 1, "news", 3.0, 3.01, True)]
    v = check_histories([_client((3.1, 1))], mixed, end=10.0)
    assert [(m["publisher"], m["seq"]) for m in v.missing] == [("q", 1)]


def test_model_an_outage_excuses_a_loss_but_not_a_duplicate() -> None:
    v = check_histories([_client((3.1, 1), (5.1, 3))], PUBLISHED, end=10.0, outages=[(3.9, 4.2)])
    assert (v.required, v.excused, len(v.missing)) == (2, 1, 0)
    v = check_histories([_client((3.1, 1), (3.1, 1), (5.1, 3))], PUBLISHED, end=10.0, outages=[(3.9, 4.2)])
    assert len(v.duplicates) == 1


def test_model_a_publish_around_the_join_answer_is_not_required() -> None:
    around = [_pub(1, 2.05)]  # published between the join request and its answer: either way
    assert check_histories([_client()], around, end=10.0).required == 0
    assert not check_histories([_client((2.2, 1))], around, end=10.0).forbidden


def test_model_a_client_gone_before_the_end_is_owed_nothing() -> None:
    v = check_histories([_client((3.1, 1), aborted_at=3.5)], PUBLISHED, end=10.0)
    assert (v.required, len(v.missing)) == (0, 0)


def test_model_at_all_is_owed_from_the_open() -> None:
    c = Recv(opened_at=1.0, received=[(3.1, ALL, "p", 1, None)])
    v = check_histories([c], [_pub(1, 3.0, ALL), _pub(2, 4.0, ALL)], end=10.0)
    assert [m["seq"] for m in v.missing] == [2] and not v.forbidden


# -- broadcast_fanout ----------------------------------------------------------------------------

PUBLISH = "every publish succeeds (Redis and the publish op)"
SUBSCRIBE = "every subscribe and unsubscribe is answered ok"
DUPLICATE = "each session receives each message of its channels exactly once (no duplicate)"
MISSING = "each session receives every message published while it was surely in the channel"
ORDER = "messages of one publisher arrive in the order published"
FORBIDDEN = "a message reaches only sessions in its channel (never before the join, never after the leave)"
HANDSHAKE = "sessions mid-handshake receive nothing"
PUSH_ERRORS = "no push to a closing, closed or handshaking session is attempted (no push error counted)"
STATS = "stats agree with the histories (clients received <= deliveries counted <= what could have been sent)"
V_OK = Violations(required=300, received=320)


def _fanout(**change) -> bc.FanoutHistory:
    h = bc.FanoutHistory(verdict=V_OK, published=100, published_ok=100,
                         push_errors={"a": {"dead_session_pushes": 0, "push_failed": 0}}, delivered=330, upper=400)
    return dataclasses.replace(h, **change)


def test_fanout_a_correct_history_passes() -> None:
    assert failed(bc.check_fanout(_fanout())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"published_ok": 99}, [PUBLISH]),
        ({"published": 0, "published_ok": 0}, [PUBLISH]),
        ({"failures": ["subscribe news: timeout"]}, [SUBSCRIBE]),
        ({"verdict": dataclasses.replace(V_OK, duplicates=[{"seq": 1}])}, [DUPLICATE]),
        ({"verdict": dataclasses.replace(V_OK, missing=[{"seq": 1}])}, [MISSING]),
        ({"verdict": dataclasses.replace(V_OK, required=0)}, [MISSING]),  # nothing was owed: vacuous
        ({"verdict": dataclasses.replace(V_OK, out_of_order=[{"seq": 1}])}, [ORDER]),
        ({"verdict": dataclasses.replace(V_OK, forbidden=[{"seq": 1}])}, [FORBIDDEN]),
        ({"stuck_bytes": [(12, "81 0a")]}, [HANDSHAKE]),
        ({"push_errors": {"a": {"dead_session_pushes": 3, "push_failed": 0}}}, [PUSH_ERRORS]),
        ({"delivered": 300}, [STATS]),  # counted fewer than the clients received
        ({"delivered": 500}, [STATS]),
    ],
)
def test_fanout_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(bc.check_fanout(_fanout(**change))) == names


# -- broadcast_outage ----------------------------------------------------------------------------

REPORTED = "the target reports the outage window in /v1/stats broadcast.outages"
CAME_BACK = "the subscriber came back: messages published after the restart arrive"
EXACTLY_PUBSUB = "every message published outside the reported window arrives exactly once, in order"
DURABLE = "durable mode loses nothing to the outage (no message excused)"


def _outage(mode: str = "pubsub", **change) -> bc.OutageHistory:
    h = bc.OutageHistory(mode=mode, verdict=Violations(required=100, received=100, excused=0 if mode == "durable" else 6),
                         down_at=10.0, up_at=11.0, windows=[(10.1, 11.3)], published_ok=50, published_after_restart=20,
                         clients=2)
    return dataclasses.replace(h, **change)


@pytest.mark.parametrize("mode", ["pubsub", "durable"])
def test_outage_a_correct_history_passes(mode: str) -> None:
    assert failed(bc.check_outage(_outage(mode))) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"windows": []}, [REPORTED]),  # messages lost with no outage reported (contract 10.5)
        ({"windows": [(2.0, 3.0)]}, [REPORTED]),  # an outage, but not this one
        ({"published_after_restart": 0}, [CAME_BACK]),
        ({"lost_after_restart": [{"seq": 30}]}, [CAME_BACK]),
        ({"verdict": Violations(required=100, received=99, missing=[{"seq": 3}])}, [EXACTLY_PUBSUB]),
    ],
)
def test_outage_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(bc.check_outage(_outage(**change))) == names


def test_outage_durable_mode_excuses_nothing() -> None:
    h = _outage("durable", verdict=Violations(required=100, received=94, excused=6))
    assert failed(bc.check_outage(h)) == [DURABLE]


# -- broadcast_history ---------------------------------------------------------------------------

SINCE_REPLY = "subscribe since an id is answered with the history it served"
THEN_LIVE = "history then live: every message after the id exactly once, in order, no gap"
IDS = "every broadcast in durable mode carries its stream id, increasing"
FRESH = "a message added right after the subscribe reply to a channel new to the worker arrives"
PLAIN = "a plain subscribe (no since) gets nothing from before it and everything after it"


def _history(**change) -> bc.HistoryHistory:
    ids = [f"1-{i}" for i in range(41, 61)]
    h = bc.HistoryHistory(reply={"ok": True, "history": 30, "complete": True}, since_seq=40, last_seq=60,
                          seqs=list(range(41, 61)), ids=list(ids), published_ids=list(ids))
    return dataclasses.replace(h, **change)


def test_history_a_correct_history_passes() -> None:
    assert failed(bc.check_history(_history())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"reply": {"ok": True, "history": 30, "complete": False}}, [SINCE_REPLY]),
        ({"seqs": [*range(41, 50), *range(51, 61)]}, [THEN_LIVE]),  # a gap between history and live
        ({"seqs": [*range(41, 61), 60]}, [THEN_LIVE]),
        ({"since_seq": 60, "seqs": []}, [THEN_LIVE]),  # nothing after the id: vacuous
        ({"ids": [None] * 20}, [IDS]),
        ({"fresh_missing": [{"channel": "fresh-3"}]}, [FRESH]),
        ({"live": Violations(forbidden=[{"seq": 2}])}, [PLAIN]),  # got a message from before it
    ],
)
def test_history_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(bc.check_history(_history(**change))) == names


# -- broadcast_slow_consumer ---------------------------------------------------------------------

CLOSED_4429 = "a client that stops reading is closed with 4429 (slow consumer)"
READERS = "the clients that keep reading get every message, once and in order (outside reported outages)"
COUNTED = "the stats count the slow consumer closed (bc_slow_closed)"


def _slow(**change) -> bc.SlowHistory:
    h = bc.SlowHistory(sent=5, slow_close_code=4429, slow_closed=True, slow_received=2,
                       readers={"r1": [1, 2, 3, 4, 5], "r2": [1, 2, 3, 4, 5]}, slow_closed_counted=1)
    return dataclasses.replace(h, **change)


def test_slow_a_correct_history_passes() -> None:
    assert failed(bc.check_slow(_slow())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"slow_close_code": None, "slow_closed": True}, [CLOSED_4429]),  # dropped with no close frame
        ({"slow_close_code": None, "slow_closed": False}, [CLOSED_4429]),
        ({"readers": {"r1": [1, 2, 4, 5]}}, [READERS]),
        ({"readers": {"r1": [1, 3, 2, 4, 5]}}, [READERS]),
        ({"readers": {"r1": [1, 2, 4, 5]}, "excused": {3}}, []),  # lost inside a reported outage
        ({"readers": {}}, [READERS]),
        ({"slow_closed_counted": 0}, [COUNTED]),
    ],
)
def test_slow_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(bc.check_slow(_slow(**change))) == names


# -- broadcast_errors ----------------------------------------------------------------------------


def test_errors_checks() -> None:
    good = bc.ErrorsHistory(expected={"empty channel": 5002}, seen={"empty channel": (False, 5002, "BAD_CHANNEL")},
                            still={"ok": True})
    assert failed(bc.check_errors(good)) == []
    wrong = dataclasses.replace(good, seen={"empty channel": (False, 4400, "BAD_REQUEST")})
    assert failed(bc.check_errors(wrong)) == ["each bad broadcast request is refused with its code and name"]
    nameless = dataclasses.replace(good, seen={"empty channel": (False, 5002, None)})
    assert failed(bc.check_errors(nameless)) == ["each bad broadcast request is refused with its code and name"]
    nothing = dataclasses.replace(good, seen={})
    assert failed(bc.check_errors(nothing)) == ["each bad broadcast request is refused with its code and name"]
    assert failed(bc.check_errors(dataclasses.replace(good, still={}))) == ["the session goes on after bad requests"]


def test_model_a_subscribe_with_no_answer_in_time_makes_its_messages_neither_required_nor_forbidden() -> None:
    unknown = Membership("news", 2.0, unknown=True)  # the request timed out: the server may have subscribed it
    got = Recv(memberships=[unknown], received=[(4.1, "news", "p", 2, None)])
    v = check_histories([got], PUBLISHED, end=10.0)
    assert (v.required, len(v.missing), len(v.forbidden)) == (0, 0, 0)
    # Before the request, a receipt is still forbidden.
    early = Recv(memberships=[unknown], received=[(1.9, "news", "p", 1, None)])
    assert len(check_histories([early], [_pub(1, 1.5)], end=10.0).forbidden) == 1


def test_fanout_subscribe_failures_that_are_only_timeouts_are_a_timing_check() -> None:
    late = bc.FanoutHistory(Violations(), published=1, published_ok=1, failures=["churn: TimeoutError()"], timeouts=1)
    (check,) = [c for c in bc.check_fanout(late) if c.name == "every subscribe and unsubscribe is answered ok"]
    assert not check.passed and check.timing
    refused = bc.FanoutHistory(Violations(), published=1, published_ok=1, failures=["subscribe: {'ok': False}"], timeouts=0)
    (check,) = [c for c in bc.check_fanout(refused) if c.name == "every subscribe and unsubscribe is answered ok"]
    assert not check.passed and not check.timing
