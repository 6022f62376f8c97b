"""The placement plans (reference_server/core/placement.py), against their rules, with Hypothesis."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from reference_server.core.placement import (
    MAX_RESPAWN_DELAY,
    QUICK_CRASHES_ALLOWED,
    affinity_target,
    fewest_moves,
    rebalance_plan,
    respawn_delay,
    round_robin,
    running,
    task_successor,
    worker_successor,
)
from reference_server.core.proctable import ProcEntry, ProcKind, ProcState

# worker index -> how many sessions it holds (sessions are numbered per worker below)
LOADS = st.dictionaries(st.integers(0, 7), st.integers(0, 40), max_size=6)


def _sessions(loads: dict[int, int]) -> dict[int, list[int]]:
    return {w: [w * 1000 + i for i in range(n)] for w, n in loads.items()}


@given(LOADS)
def test_rebalance_evens_counts_out_with_the_fewest_moves(loads: dict[int, int]) -> None:
    by_worker = _sessions(loads)
    plan, planned = rebalance_plan(by_worker)
    after = dict(loads)
    for sid, src, dst in plan:
        assert sid in by_worker[src] and dst in by_worker and src != dst
        after[src] -= 1
        after[dst] += 1
    assert after == planned
    assert not planned or max(planned.values()) - min(planned.values()) <= 1
    assert len(plan) == fewest_moves(loads)
    assert len({sid for sid, _, _ in plan}) == len(plan)  # no session moves twice
    assert by_worker == _sessions(loads)  # the input is not touched


@given(LOADS)
def test_sessions_leave_only_workers_above_their_share_and_go_only_below_it(loads: dict[int, int]) -> None:
    plan, _ = rebalance_plan(_sessions(loads))
    if not loads:
        return
    share = sum(loads.values()) / len(loads)
    for _, src, dst in plan:
        assert loads[src] > share > loads[dst]


@given(st.lists(st.integers(0, 5), max_size=30), st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True))
def test_affinity_picks_the_worker_holding_most_of_the_group_lowest_on_a_tie(holders: list[int], workers: list[int]) -> None:
    target = affinity_target(holders, workers)
    counts = {w: holders.count(w) for w in workers}
    assert target in workers
    assert counts[target] == max(counts.values())
    assert target == min(w for w in workers if counts[w] == counts[target])


def test_affinity_without_a_running_worker_has_no_target() -> None:
    assert affinity_target([1, 2], []) is None


@given(st.integers(1, 7), st.integers(0, 100))
def test_round_robin_gives_each_candidate_one_turn_in_every_round(n: int, start: int) -> None:
    candidates = list(range(n))
    picks = [round_robin(candidates, turn) for turn in range(start, start + n)]
    assert sorted(picks) == candidates  # type: ignore[type-var]


def test_round_robin_without_candidates_picks_none() -> None:
    assert round_robin([], 3) is None


def test_respawn_waits_only_after_repeated_quick_crashes_and_doubles_up_to_a_bound() -> None:
    delays = [respawn_delay(n) for n in range(QUICK_CRASHES_ALLOWED + 8)]
    assert delays[: QUICK_CRASHES_ALLOWED + 1] == [0.0] * (QUICK_CRASHES_ALLOWED + 1)
    grown = delays[QUICK_CRASHES_ALLOWED + 1 :]
    assert grown[0] > 0 and all(b == min(2 * a, MAX_RESPAWN_DELAY) for a, b in itertools.pairwise(grown))
    assert grown[-1] == MAX_RESPAWN_DELAY


def _entry(kind: ProcKind, index: int, pid: int, generation: int = 1, state: ProcState = ProcState.READY) -> ProcEntry:
    return ProcEntry(slot=pid, state=state, kind=kind, index=index, pid=pid, generation=generation, started=0.0, name=f"{kind.label}-{index}")


def test_running_is_the_newest_ready_generation_of_that_index() -> None:
    entries = [
        _entry(ProcKind.WORKER, 0, 10, 1, ProcState.STOPPING),
        _entry(ProcKind.WORKER, 0, 11, 2),
        _entry(ProcKind.WORKER, 0, 12, 3, ProcState.EMPTY),
        _entry(ProcKind.TASK, 0, 13, 4),
    ]
    assert running(entries, ProcKind.WORKER, 0).pid == 11  # type: ignore[union-attr]
    assert running(entries, ProcKind.WORKER, 1) is None


def test_a_retiring_worker_hands_over_to_its_successor_else_to_the_others_in_turn() -> None:
    old = _entry(ProcKind.WORKER, 0, 10, 1, ProcState.STOPPING)
    others = [_entry(ProcKind.WORKER, 1, 21, 2), _entry(ProcKind.WORKER, 2, 22, 2)]
    assert worker_successor([old, _entry(ProcKind.WORKER, 0, 20, 2), *others], 0, me=10, turn=5).pid == 20  # type: ignore[union-attr]
    picks = {worker_successor([old, *others], 0, me=10, turn=t).pid for t in range(4)}  # type: ignore[union-attr]
    assert picks == {21, 22}
    assert worker_successor([old], 0, me=10, turn=0) is None


def test_a_retiring_task_worker_prefers_its_index_then_the_newest_generation() -> None:
    me = _entry(ProcKind.TASK, 1, 10, 1, ProcState.STOPPING)
    same = _entry(ProcKind.TASK, 1, 31, 2)
    newer = _entry(ProcKind.TASK, 0, 32, 3)
    older = _entry(ProcKind.TASK, 0, 33, 2)
    assert task_successor([me, older, newer, same], 1, me=10) is same
    assert task_successor([me, older, newer], 1, me=10) is newer
    assert task_successor([me], 1, me=10) is None
