"""The hostile-client checks (scenarios/harness/checkers/hostile.py) on synthetic histories.

A history of a server that keeps contract 12 passes; each finding of issue 20 fails the check
that names it: no reply or a 4500 to a bad request, a ``NaN`` echoed as invalid JSON, a session
closed by bad input, timers and tasks without bound, a client that never reads kept open, memory
that grows with what is pushed to it, a bystander stalled, a process that exits.
"""

from __future__ import annotations

import dataclasses

import pytest

from scenarios.harness.checkers import hostile as hc
from scenarios.harness.evidence import Check
from scenarios.harness.spec import Leftovers


def failed(checks: list[Check]) -> list[str]:
    return [c.name for c in checks if not c.passed]


BAD = "every bad request gets exactly one reply, in strict JSON, with its code (4400 for a value out of range)"
OPEN = "the session stays open and answers after each bad request"
TIMERS = "a session holds at most 100 timers: the rest are refused with 4429 LIMIT_REACHED"
TASKS = ("a session has at most 100 tasks outstanding: the rest are refused with 4429, "
         "and every accepted task's result arrives")
SLOW = "a client that does not read is closed with 4429 once its waiting output passes the bound"
MEMORY = "no process grows past 2 x output_bytes + 48 MiB while a client does not read"
BYSTANDERS = "the other sessions are served throughout (ticks without a gap over 2 s, every echo answered)"
EXITS = "no process exits"
MIB = 1 << 20


def _refused(code: int = 4400, re: object = "b1") -> dict:
    return {"re": re, "ok": False, "error": {"code": code, "name": "X", "message": "m"}}


def _history(**change) -> hc.HostileHistory:
    h = hc.HostileHistory(
        bad=[
            hc.BadAnswer("uid past 2^63", (4400,), False, replies=[_refused()]),
            hc.BadAnswer("request id NaN", (4400,), True, replies=[_refused(re=None)]),
            hc.BadAnswer("echo of a lone surrogate", (4400, "ok"), False, replies=[{"re": "e1", "ok": True}]),
        ],
        timers=hc.Storm(sent=150, answers=["ok"] * 100 + [4429] * 50),
        tasks=hc.Storm(sent=130, answers=["ok"] * 100 + [4429] * 30, results_before=[0] * 130, results=100),
        output_bytes=8 * MIB,
        pushed_bytes=12 * MIB,
        push_failure=1004,
        nonreader_close=4429,
        growth={"worker-0": 9 * MIB, "worker-1": 2 * MIB},
        rss_samples=40,
        bystanders=[hc.Bystander("b0", ticks=200, max_gap_s=0.06, echoes=50)],
        processes_before=[("worker-0", 10)],
        processes_after=[("worker-0", 10)],
        leftovers=Leftovers([], {"worker-0": 10}, {"worker-0": 10}),
    )
    return dataclasses.replace(h, **change)


def test_a_server_that_keeps_section_12_passes() -> None:
    assert failed(hc.check_hostile(_history())) == []


@pytest.mark.parametrize(
    ("change", "names"),
    [
        # The seed: a uid past 2^63 got no reply (the record stayed marked), and the ping after it none either.
        ({"bad": [hc.BadAnswer("uid past 2^63", (4400,), False, replies=[], open_after=False)]}, [BAD, OPEN]),
        ({"bad": [hc.BadAnswer("JSON nested 5,000 deep", (4400,), True, replies=[_refused(4500, None)])]}, [BAD]),
        ({"bad": [hc.BadAnswer("request id NaN", (4400,), True, invalid=['{"re": NaN, "ok": true}'])]}, [BAD]),
        ({"bad": [hc.BadAnswer("request id NaN", (4400,), True, replies=[_refused(re="x")])]}, [BAD]),  # re not null
        ({"bad": [hc.BadAnswer("uid past 2^53", (4400,), False, replies=[{"re": "b2", "ok": True}])]}, [BAD]),
        ({"bad": [hc.BadAnswer("uid past 2^53", (4400,), False, replies=[_refused(), _refused()])]}, [BAD]),
        ({"bad": []}, [BAD, OPEN]),  # nothing sent: vacuous
        ({"timers": hc.Storm(sent=150, answers=["ok"] * 150)}, [TIMERS]),
        ({"timers": hc.Storm(sent=150, answers=["ok"] * 64 + [4400] * 86)}, [TIMERS]),  # a bound, but not 100/4429
        ({"timers": hc.Storm(sent=150, answers=["ok"] * 100 + [4429] * 40)}, [TIMERS]),  # 10 unanswered
        ({"tasks": hc.Storm(sent=130, answers=["ok"] * 130, results_before=[0] * 130, results=130)}, [TASKS]),
        ({"tasks": hc.Storm(sent=130, answers=["ok"] * 100 + [4429] * 30, results_before=[0] * 130, results=90)},
         [TASKS]),  # results lost
        ({"tasks": hc.Storm(sent=130, answers=["ok"] * 90 + [4429] * 40, results_before=[0] * 130, results=90)},
         [TASKS]),  # refused before the bound
        ({"nonreader_close": None}, [SLOW]),
        ({"nonreader_close": 4429, "pushed_bytes": 4 * MIB}, [SLOW]),  # closed before the bound: not this rule
        ({"growth": {"worker-0": 120 * MIB}}, [MEMORY]),
        ({"growth": {}}, [MEMORY]),
        ({"bystanders": [hc.Bystander("b0", ticks=200, max_gap_s=3.5, echoes=50)]}, [BYSTANDERS]),
        ({"bystanders": [hc.Bystander("b0", ticks=200, max_gap_s=0.06, echoes=50, echo_failures=["TimeoutError"])]},
         [BYSTANDERS]),
        ({"processes_after": [("worker-0", 11)]}, [EXITS]),
    ],
)
def test_each_finding_fails_its_check(change: dict, names: list[str]) -> None:
    assert failed(hc.check_hostile(_history(**change))) == names


def test_tasks_accepted_past_the_bound_only_as_results_came_back() -> None:
    """Out of order is fine (refusals may come first); more than 100 only with slots freed by results."""
    out_of_order = hc.Storm(sent=130, answers=[4429] * 30 + ["ok"] * 100, results_before=[0] * 130, results=100)
    assert failed(hc.check_hostile(_history(tasks=out_of_order))) == []
    freed = hc.Storm(sent=130, answers=["ok"] * 105 + [4429] * 25, results_before=[0] * 100 + [5] * 30, results=105)
    assert failed(hc.check_hostile(_history(tasks=freed))) == []
    unfreed = dataclasses.replace(freed, results_before=[0] * 130)
    assert failed(hc.check_hostile(_history(tasks=unfreed))) == [TASKS]


def test_bad_answer_problem_names_what_is_wrong() -> None:
    assert hc.BadAnswer("x", (4400,), False, replies=[_refused(4500)]).problem() == "code 4500"
    assert hc.BadAnswer("x", (4400,), False).problem() == "0 replies"
    assert hc.BadAnswer("x", (4400,), True, replies=[_refused(re=3)]).problem() == "re 3 (no id could be read: null)"
    assert hc.BadAnswer("x", (4501,), False, replies=[_refused(4501)]).problem() is None
