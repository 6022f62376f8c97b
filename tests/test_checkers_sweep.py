"""The checks of task_sweep on synthetic histories (scenarios/harness/checkers/sweep.py)."""

from __future__ import annotations

from scenarios.harness.checkers.sweep import SweepHistory, SweptClient, check, figure

MISSED = "each sweep saw every session that was live throughout it, on every worker"


def report(n: int, start: float, seen: list[int], closed: list[int] = ()) -> dict:
    return {"sweep": n, "started": start, "ended": start + 0.05, "seen": seen, "closed": list(closed),
            "info_missing": [], "errors": []}


def missed(h: SweepHistory) -> list:
    (c,) = [c for c in check(h) if c.name == MISSED]
    return c.details.get("missed", []) if not c.passed else []


def test_a_session_closed_by_a_sweep_is_not_owed_to_the_next_one_however_late_the_client_saw_its_close() -> None:
    # Sweep 2 closes session 7; the harness, busy, reads the close frame after sweep 3 has ended.
    doomed = SweptClient("doomed0", "doomed", 7, 0, opened_at=1.0, closed_at=2.5, close_frame=(4001, "swept"))
    h = SweepHistory(clients=[doomed], reports=[report(1, 1.5, [7]), report(2, 2.0, [7], closed=[7]), report(3, 2.2, [])])
    assert missed(h) == []


def test_a_live_session_a_sweep_did_not_see_is_missed_and_marked() -> None:
    kept = SweptClient("keep0", "keep", 8, 1, opened_at=1.0, closed_at=None)
    h = SweepHistory(clients=[kept], reports=[report(1, 1.5, [8]), report(2, 2.0, [])])
    assert [m["sweep"] for m in missed(h)] == [2]
    fig = figure(h)
    assert fig is not None and [m.check for m in fig.marks] == [MISSED]
