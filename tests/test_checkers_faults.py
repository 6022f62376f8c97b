"""The fault checks on synthetic histories: each outcome judged, each check able to fail."""

from __future__ import annotations

import pytest

from scenarios.harness.checkers.faults import (
    Bystander,
    Outcome,
    TaskFate,
    TaskKillHistory,
    Victim,
    WorkerKillHistory,
    WorkerStallHistory,
    check_task_worker_kill,
    check_worker_kill,
    check_worker_stall,
    decreased,
    judge_tasks_after_kill,
    judge_victims,
)
from scenarios.harness.spec import Leftovers


def _good(**changes) -> WorkerKillHistory:
    h = WorkerKillHistory(
        workers=3,
        victim_worker=0,
        victim_pid=100,
        killed_at=1000.0,
        victims=[Victim(7, closed_after_s=0.01, unlisted_after_s=0.05), Victim(8, closed_after_s=0.02, unlisted_after_s=0.05)],
        bystanders=[Bystander(9, 1, ticks=60, max_gap_s=0.06, echoes=30), Bystander(10, 2, ticks=60, max_gap_s=0.05, echoes=30)],
        replacement_pid=200,
        replacement_after_s=0.03,
        new_clients=12,
        new_served=12,
        new_on_replacement=4,
        others_before=[("master", 1), ("worker-1", 101)],
        others_after=[("master", 1), ("worker-1", 101)],
        counters_before={"sessions_opened": 9, "pushes": 0},
        counters_after={"sessions_opened": 21, "pushes": 0},
        leftovers=Leftovers(baseline_fds={"master": 10}, fds={"master": 10}),
    )
    for k, v in changes.items():
        setattr(h, k, v)
    return h


def _failed(h: WorkerKillHistory) -> list[str]:
    return [c.name for c in check_worker_kill(h) if not c.passed]


def test_a_clean_run_passes() -> None:
    assert _failed(_good()) == []


def test_kept_sessions_pass_too() -> None:
    h = _good(victims=[Victim(7, echo_after_s=0.2, echo_again=True)])
    assert _failed(h) == []


@pytest.mark.parametrize(
    ("victim", "outcome"),
    [
        (Victim(1, closed_after_s=0.1, unlisted_after_s=0.2), Outcome.CLOSED),
        (Victim(1, echo_after_s=0.1, echo_again=True), Outcome.KEPT),
        (Victim(1), Outcome.SILENT),
        (Victim(1, echo_after_s=0.1, echo_again=False), Outcome.SILENT),
        (Victim(1, closed_after_s=0.1), Outcome.GHOST),
        (Victim(1, closed_after_s=0.1, unlisted_after_s=6.0), Outcome.GHOST),
        (Victim(1, closed_after_s=6.0, unlisted_after_s=6.1), Outcome.CLOSED_LATE),
        (Victim(1, closed_after_s=2.0, echo_after_s=0.1, unlisted_after_s=2.1), Outcome.DROPPED_LATE),
    ],
)
def test_each_victim_outcome(victim: Victim, outcome: Outcome) -> None:
    assert victim.outcome() is outcome
    failed = _failed(_good(victims=[victim]))
    bad = any(n.startswith("each session of the killed worker") for n in failed)
    assert bad is (outcome not in (Outcome.KEPT, Outcome.CLOSED))


def test_outcomes_are_grouped_by_session() -> None:
    victims = [Victim(1, closed_after_s=0.1, unlisted_after_s=0.1), Victim(2), Victim(3, closed_after_s=0.1)]
    assert judge_victims(victims) == {"closed": [1], "silent": [2], "ghost": [3]}


def test_nothing_to_judge_fails() -> None:
    failed = _failed(_good(victims=[], killed_at=None))
    assert "the killed worker had sessions, and other workers had sessions too" in failed
    assert any(n.startswith("each session of the killed worker") for n in failed)


@pytest.mark.parametrize(
    "bystander",
    [
        Bystander(9, 1, ticks=60, max_gap_s=2.5, echoes=30),
        Bystander(9, 1, ticks=0, max_gap_s=float("inf")),
        Bystander(9, 1, ticks=60, max_gap_s=0.05, echoes=29, echo_failures=["TimeoutError()"]),
    ],
)
def test_a_disturbed_bystander_fails(bystander: Bystander) -> None:
    assert _failed(_good(bystanders=[bystander])) == ["sessions on the other workers see no gap over 2 s and every echo answered"]


@pytest.mark.parametrize(
    "changes",
    [
        {"replacement_pid": None, "replacement_after_s": None},
        {"replacement_pid": 100},  # the same pid: nothing replaced it
        {"replacement_after_s": 12.0},
        {"new_served": 11},
        {"new_on_replacement": 0},
        {"new_clients": 0, "new_served": 0},
    ],
)
def test_the_replacement_must_serve(changes: dict) -> None:
    assert _failed(_good(**changes)) == [
        "a replacement worker of the same id is listed within 10 s and serves new connections"
    ]


def test_another_process_exiting_fails() -> None:
    assert _failed(_good(others_after=[("master", 1), ("worker-1", 102)])) == ["no other process exits"]


def test_a_counter_going_down_fails() -> None:
    h = _good(counters_after={"sessions_opened": 6, "pushes": 0})
    assert _failed(h) == ["no standard counter decreases (what the killed worker counted still counts)"]
    assert decreased({"sessions_opened": 9, "my_own": 3}, {"sessions_opened": 9}) == {}
    assert decreased({"pushes": 2}, {}) == {"pushes": [2, None]}


def test_leftovers_fail() -> None:
    h = _good(leftovers=Leftovers(baseline_fds={"master": 10}, fds={"master": 12}, sessions=[{"session": 7}]))
    assert len(_failed(h)) == 2


# -- fault_worker_stall -------------------------------------------------------------------------

def _stall(**changes) -> WorkerStallHistory:
    h = WorkerStallHistory(
        workers=3,
        victim_worker=0,
        victim_pid=100,
        stall_s=4.6,
        victims=[Victim(7, echo_after_s=0.01, echo_again=True)],
        bystanders=[Bystander(9, 1, ticks=90, max_gap_s=0.06, echoes=40)],
        admin=[("/v1/sessions", 200, 0.01), ("/v1/stats", 200, 1.01)],
        new_clients=12,
        new_served=12,
        others_before=[("master", 1), ("worker-0", 100)],
        others_after=[("master", 1), ("worker-0", 100)],
        counters_before={"sessions_opened": 9},
        counters_after={"sessions_opened": 21},
        leftovers=Leftovers(baseline_fds={"master": 10}, fds={"master": 10}),
    )
    for k, v in changes.items():
        setattr(h, k, v)
    return h


def _stall_failed(h: WorkerStallHistory) -> list[str]:
    return [c.name for c in check_worker_stall(h) if not c.passed]


def test_a_clean_stall_passes() -> None:
    assert _stall_failed(_stall()) == []
    assert _stall_failed(_stall(victims=[Victim(7, closed_after_s=0.3, unlisted_after_s=0.4)])) == []


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        ({"stall_s": 1.0}, "the stalled worker had sessions, other workers had sessions too, and the stall lasted"),
        ({"victims": [Victim(7)]}, "each session of the stalled worker is kept (answered once it runs again) or closed and gone"),
        ({"victims": [Victim(7, echo_after_s=0.1, echo_again=True, closed_after_s=0.5, unlisted_after_s=0.6)]},
         "each session of the stalled worker is kept (answered once it runs again) or closed and gone"),
        ({"bystanders": [Bystander(9, 1, ticks=90, max_gap_s=2.2)]},
         "sessions on the other workers see no gap over 2 s and every echo answered"),
        ({"admin": [("/v1/stats", 200, 2.5)]}, "the admin API answers within 2 s during the stall"),
        ({"admin": [("/v1/stats", 500, 0.1)]}, "the admin API answers within 2 s during the stall"),
        ({"new_served": 8}, "new connections made during the stall are served (none is sent to the stalled worker)"),
        ({"new_clients": 0, "new_served": 0}, "new connections made during the stall are served (none is sent to the stalled worker)"),
        ({"others_after": [("master", 1), ("worker-0", 101)]}, "no other process exits"),
        ({"counters_after": {"sessions_opened": 3}}, "no standard counter decreases"),
    ],
)
def test_each_stall_check_can_fail(changes: dict, check: str) -> None:
    failed = _stall_failed(_stall(**changes))
    assert check in failed, failed
    if "victims" not in changes and "stall_s" not in changes:
        assert failed == [check]


# -- fault_task_worker_kill ------------------------------------------------------------------------

def _tasks(**changes) -> TaskKillHistory:
    h = TaskKillHistory(
        task_workers=1,
        victim_pid=50,
        in_flight_at_kill=True,
        tasks=[TaskFate(1, 4000, [("task_failed", 2004, 0.01)]), TaskFate(2, 100, [("task_result", None, 0.3)])],
        replacement_pid=51,
        replacement_after_s=0.02,
        after=["task_result", "task_result"],
        bystanders=[Bystander(9, 0, ticks=50, max_gap_s=0.06, echoes=20)],
        others_before=[("master", 1)],
        others_after=[("master", 1)],
        counters_before={"tasks_dispatched": 6},
        counters_after={"tasks_dispatched": 8},
        leftovers=Leftovers(baseline_fds={"master": 10}, fds={"master": 10}),
    )
    for k, v in changes.items():
        setattr(h, k, v)
    return h


def test_a_clean_task_worker_kill_passes() -> None:
    assert [c.name for c in check_task_worker_kill(_tasks()) if not c.passed] == []


@pytest.mark.parametrize(
    ("fates", "problem"),
    [
        ([TaskFate(1, 4000)], "no outcome"),
        ([TaskFate(1, 4000, [("task_failed", 2004, 0.1), ("task_result", None, 0.2)])], "more than one outcome"),
        ([TaskFate(1, 4000, [("task_failed", 2004, 11.0)])], "late"),
        ([TaskFate(1, 4000, [("task_failed", 4500, 0.1)])], "wrong code"),
    ],
)
def test_each_task_problem_is_named(fates: list[TaskFate], problem: str) -> None:
    assert list(judge_tasks_after_kill(fates)) == [problem]
    failed = [c.name for c in check_task_worker_kill(_tasks(tasks=[*fates, TaskFate(2, 100, [("task_result", None, 1)])]))
              if not c.passed]
    assert failed == ["every task accepted before the kill gets exactly one task_result or task_failed (2004) within 5 s"]


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        ({"in_flight_at_kill": False}, "a task was running when its task worker was killed, with more queued behind it"),
        ({"replacement_pid": None}, "a replacement task worker of the same id runs new tasks"),
        ({"replacement_after_s": 10.5}, "a replacement task worker of the same id runs new tasks"),
        ({"after": ["task_result", "no outcome"]}, "a replacement task worker of the same id runs new tasks"),
        ({"after": []}, "a replacement task worker of the same id runs new tasks"),
        ({"bystanders": [Bystander(9, 0, ticks=50, max_gap_s=3.0)]}, "sessions see no gap over 2 s and every echo answered"),
        ({"others_after": [("master", 2)]}, "no other process exits"),
        ({"counters_after": {"tasks_dispatched": 5}}, "no standard counter decreases"),
    ],
)
def test_each_task_check_can_fail(changes: dict, check: str) -> None:
    assert [c.name for c in check_task_worker_kill(_tasks(**changes)) if not c.passed] == [check]
