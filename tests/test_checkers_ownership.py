"""The ownership model's rules (scenarios/harness/checkers/ownership.py) on synthetic answers.

Each rule accepts what the contract says and names what it does not: a migrate answered
wrongly for each case (another worker, its own, one that does not exist, a closed
session), an echo from the wrong worker, a push accepted for a closed session, pushes
lost, repeated or reordered, and a run that moved nothing.
"""

from __future__ import annotations

import pytest

from scenarios.harness.checkers.ownership import (
    ModelRun,
    Owned,
    check_model,
    judge_echo,
    judge_migrate,
    judge_push,
    judge_received,
)

WORKERS = 3


def _err(code: int) -> dict:
    return {"ok": False, "error": {"code": code}}


@pytest.mark.parametrize(
    ("model", "dst", "status", "body", "good"),
    [
        (Owned(7, 0), 1, 200, {"ok": True, "from": 0, "to": 1}, True),
        (Owned(7, 0), 1, 200, {"ok": True, "from": 2, "to": 1}, False),  # names the wrong source
        (Owned(7, 0), 1, 409, _err(2010), False),
        (Owned(7, 0), 0, 409, _err(2010), True),
        (Owned(7, 0), 0, 200, {"ok": True, "from": 0, "to": 0}, False),  # "moved" to itself
        (Owned(7, 0), 3, 404, _err(2003), True),
        (Owned(7, 0), -1, 404, _err(2003), True),
        (Owned(7, 0), 3, 500, _err(5000), False),
        (Owned(7, 0, open=False), 1, 409, _err(1004), True),
        (Owned(7, 0, open=False), 1, 404, _err(1005), True),
        (Owned(7, 0, open=False), 1, 200, {"ok": True, "from": 0, "to": 1}, False),  # moved a dead session
    ],
)
def test_judge_migrate(model: Owned, dst: int, status: int, body: dict, good: bool) -> None:
    assert (judge_migrate(model, dst, WORKERS, status, body) is None) is good


def test_judge_echo() -> None:
    m = Owned(7, 1)
    assert judge_echo(m, "1:x", {"ok": True, "data": "1:x", "worker": 1}) is None
    assert "model says 1" in judge_echo(m, "1:x", {"ok": True, "data": "1:x", "worker": 0})
    assert "broken" in judge_echo(m, "1:x", {"ok": True, "data": "1:", "worker": 1})


def test_judge_push() -> None:
    assert judge_push(Owned(7, 0), 200, {"ok": True}) is None
    assert judge_push(Owned(7, 0), 404, _err(1005)) is not None
    assert judge_push(Owned(7, 0, open=False), 404, _err(1005)) is None
    assert judge_push(Owned(7, 0, open=False), 409, _err(1004)) is None
    assert judge_push(Owned(7, 0, open=False), 200, {"ok": True}) is not None


@pytest.mark.parametrize(
    ("got", "closed", "good"),
    [([1, 2, 3], False, True), ([1, 3], False, False), ([1, 2, 2, 3], False, False), ([2, 1, 3], False, False),
     ([1, 2, 3], True, False)],
)
def test_judge_received(got: list[int], closed: bool, good: bool) -> None:
    assert (judge_received(Owned(7, 0, pushes=3), got, closed) is None) is good


def test_check_model_passes_an_exercised_run_without_disagreement() -> None:
    run = ModelRun(steps=["connect 7 -> worker 0"], counts={"connect": 1, "migrated": 2, "echo": 3, "push": 1})
    assert all(c.passed for c in check_model(run))


def test_check_model_fails_a_disagreement_and_a_run_that_moved_nothing() -> None:
    run = ModelRun(counts={"connect": 4, "echo": 3, "push": 1}, failure="echo from worker 0, model says 1")
    assert [c.name for c in check_model(run) if not c.passed] == [
        "the server agrees with the ownership model in every step",
        "the model was exercised: sessions moved, echoed and were pushed to",
    ]
