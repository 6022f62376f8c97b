"""The honesty probe's checkers (scenarios/harness/checkers/probe.py) on synthetic histories.

A target that answers every core probe as the contract says passes; one that answers a
declared capability's probes with UNSUPPORTED, or an undeclared one's with success (it
hides what it does), fails; so does a probe that got no answer, and one where the event it
waited for never came.
"""

from __future__ import annotations

import dataclasses

import pytest

from scenarios.harness.checkers import probe as pc
from scenarios.harness.codes import BAD_REQUEST, SESSION_NOT_EXIST, UNSUPPORTED
from scenarios.harness.evidence import Check
from scenarios.harness.probe import CORE_OPS, CORE_ROUTES, HTTP_PROBES, PROBES, OpProbe, RouteProbe


def failed(checks: list[Check]) -> list[str]:
    return [c.name for c in checks if not c.passed]


def _err(code: int) -> dict:
    return {"ok": False, "error": {"code": code, "name": "X", "message": "m"}}


def _good_reply(p: OpProbe) -> dict:
    if p.expect == "ok":
        return {"ok": True, **({p.carries: 1} if p.carries else {})}
    return _err(p.expect if isinstance(p.expect, int) else BAD_REQUEST)


def _good_route(r: RouteProbe) -> tuple[int, object]:
    if r.status == 200:
        return 200, ("metric 1\n" if r.text else {r.carries or "x": 1})
    return r.status, _err(r.code or 0)


def _core(**change) -> pc.CoreHistory:
    h = pc.CoreHistory(
        ops=[pc.OpAnswer(p, _good_reply(p)) for p in CORE_OPS],
        malformed={"re": None, **_err(4400)},
        after_malformed={"ok": True},
        task_reply={"ok": True, "task": 3},
        task_result={"ev": "task_result", "task": 3},
        routes=[pc.RouteAnswer(r, r.path, *_good_route(r)) for r in CORE_ROUTES],
        wrong_token=(401, _err(4401)),
        http=[pc.HttpAnswer(x, x.status, _err(x.code)) for x in HTTP_PROBES],
        timer_started={"ok": True, "timer": 1},
        tick={"ev": "tick", "timer": 1, "seq": 1},
        timer_stopped={"ok": True, "seq": 2},
        push_text="probe: verbatim text",
        push_answer=(200, {"ok": True}),
        push_received="probe: verbatim text",
        close_reply={"ok": True},
        close_frame=(4000, "probe"),
    )
    return dataclasses.replace(h, **change)


def test_core_a_correct_history_passes() -> None:
    checks = pc.check_core(_core())
    assert failed(checks) == []
    assert len(checks) == len(CORE_OPS) + len(CORE_ROUTES) + len(HTTP_PROBES) + 7


MALFORMED = "core: a malformed message gets BAD_REQUEST (4400) with re null"
STAYS_OPEN = "core: the session stays open after bad input"
TASK = "core: op task answers with its id, then a task_result event arrives"
TOKEN = "core: a wrong admin token is refused with 401"
TIMER = "core: timer_start answers a timer id, its ticks come, timer_stop answers its status with seq"
PUSH = "core: POST /v1/sessions/{id}/push delivers its data verbatim, as one text message"
CLOSE = "core: op close answers ok, then the session is closed with that code"


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"malformed": None}, [MALFORMED]),  # no reply at all
        ({"malformed": {"re": None, **_err(4501)}}, [MALFORMED]),
        ({"after_malformed": {}}, [STAYS_OPEN]),
        ({"task_result": None}, [TASK]),
        ({"wrong_token": (200, {"counters": {}})}, [TOKEN]),
        ({"tick": None}, [TIMER]),
        ({"timer_stopped": {"ok": True}}, [TIMER]),  # no seq in the stop answer
        ({"push_received": "probe: verbatim text\n"}, [PUSH]),  # not verbatim
        ({"close_frame": (1000, "")}, [CLOSE]),
    ],
)
def test_core_each_bug_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(pc.check_core(_core(**change))) == names


def test_core_an_op_answered_unsupported_fails_by_its_name() -> None:
    h = _core()
    whoami = h.ops[0]
    h.ops[0] = pc.OpAnswer(whoami.probe, _err(UNSUPPORTED))
    assert failed(pc.check_core(h)) == [f"core: {whoami.probe.describe()} answers as section 3 says"]


def test_core_an_http_probe_without_answer_fails() -> None:
    h = _core()
    x = h.http[2]
    h.http[2] = pc.HttpAnswer(x.probe, 0, "no answer: TimeoutError()")
    assert failed(pc.check_core(h)) == [f"core: admin API, {x.probe.what}: {x.probe.status} with code {x.probe.code}"]


def test_core_a_push_to_no_session_answered_ok_fails() -> None:
    h = _core()
    i = next(i for i, a in enumerate(h.ops) if a.probe.op == "push")
    h.ops[i] = pc.OpAnswer(h.ops[i].probe, {"ok": True})
    assert len(failed(pc.check_core(h))) == 1
    h.ops[i] = pc.OpAnswer(h.ops[i].probe, _err(SESSION_NOT_EXIST))
    assert failed(pc.check_core(h)) == []


# -- capabilities --------------------------------------------------------------------------------

UNDEFINED = "an op the contract does not define is still UNSUPPORTED"


def _cap(name: str, declared: bool) -> pc.CapabilityHistory:
    probe = PROBES[name]
    if declared:
        ops = [pc.OpAnswer(p, _good_reply(p)) for p in probe.ops]
        routes = [pc.RouteAnswer(r, r.path, *_good_route(r)) for r in probe.routes]
    else:
        ops = [pc.OpAnswer(p, _err(UNSUPPORTED)) for p in probe.ops]
        routes = [pc.RouteAnswer(r, r.path, 404, _err(4404)) for r in probe.routes]
    return pc.CapabilityHistory(name, declared, ops, routes, nonexistent=_err(UNSUPPORTED))


@pytest.mark.parametrize("name", ["migrate", "reload", "dynamic_ports", "redis_broadcast", "task_sweep"])
@pytest.mark.parametrize("declared", [True, False])
def test_capability_answered_as_declared_passes(name: str, declared: bool) -> None:
    assert failed(pc.check_capability(_cap(name, declared))) == []


def test_capability_declared_but_unsupported_fails_each_probe() -> None:
    h = _cap("migrate", True)
    h.ops = [pc.OpAnswer(a.probe, _err(UNSUPPORTED)) for a in h.ops]
    assert len(failed(pc.check_capability(h))) == len(h.ops)


def test_capability_hidden_fails_each_probe_it_answers() -> None:
    """Not declared, yet it answers: the target hides a capability from the scenarios that test it."""
    h = _cap("reload", False)
    h.routes = [pc.RouteAnswer(r.probe, r.path, 200, {"history": []}) for r in h.routes]
    assert failed(pc.check_capability(h)) == [f"reload (not declared): {r.probe.method} {r.path}" for r in h.routes]


def test_capability_an_undefined_op_answered_ok_fails() -> None:
    h = dataclasses.replace(_cap("reload", True), nonexistent={"ok": True})
    assert failed(pc.check_capability(h)) == [UNDEFINED]


DEAD = "dead_session_stats (declared): a push to a dead session fails with 1005 and is counted"
FD = "fd_reuse_info (declared): the session record carries an integer os_fd and worker"


@pytest.mark.parametrize(
    ("dead_push", "passed"),
    [((_err(1005), 1), True), ((_err(1005), 0), False), ((_err(1004), 1), False), (None, False)],
)
def test_dead_session_stats_counted(dead_push, passed: bool) -> None:
    h = dataclasses.replace(_cap("dead_session_stats", True), dead_push=dead_push)
    assert failed(pc.check_capability(h)) == ([] if passed else [DEAD])


@pytest.mark.parametrize(
    ("record", "passed"),
    [((200, {"os_fd": 12, "worker": 0}), True), ((200, {"os_fd": "12", "worker": 0}), False),
     ((200, {"os_fd": 12}), False), ((404, _err(1005)), False), (None, False)],
)
def test_fd_reuse_info_record(record, passed: bool) -> None:
    h = dataclasses.replace(_cap("fd_reuse_info", True), fd_record=record)
    assert failed(pc.check_capability(h)) == ([] if passed else [FD])


def test_undeclared_dead_session_stats_makes_no_count_check() -> None:
    names = {c.name for c in pc.check_capability(_cap("dead_session_stats", False))}
    assert names == {UNDEFINED}
