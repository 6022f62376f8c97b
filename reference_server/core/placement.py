"""Where sessions go: the plans behind ``affinity`` and ``rebalance`` (contract section 7).

Pure functions, no I/O: they take who holds what and answer the moves; the
runtime (``child/api.py``) runs the moves. The master's choices are here too: which
worker gets a new connection (round robin over the ready ones, ``master/acceptor.py``)
and how long a crashing child waits before it is respawned. Rules:

* **Affinity.** Without a worker given, a group goes to the worker that already
  holds most of its members, the lowest index on a tie, so the fewest move.
* **Rebalance.** As few moves as make the workers' counts differ by at most one:
  sessions only leave workers above their share, and only go to workers below
  it. With ``T`` sessions on ``n`` workers, each worker's share is ``T // n``,
  and the ``T % n`` fullest keep one more; the number of moves is the sum of
  what each worker holds above its share, which no plan can beat.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from .proctable import ProcEntry, ProcKind, ProcState

Move = tuple[int, int, int]  # (session, from worker, to worker)
T = TypeVar("T")

#: Crashes within a second of the start after which a respawn is delayed, and the longest delay.
QUICK_CRASHES_ALLOWED = 3
MAX_RESPAWN_DELAY = 5.0


def round_robin(candidates: Sequence[T], turn: int) -> T | None:
    """The candidate whose turn it is (``turn`` counts up by one per pick); None without candidates."""
    if not candidates:
        return None
    return candidates[turn % len(candidates)]


def running(entries: Iterable[ProcEntry], kind: ProcKind, index: int) -> ProcEntry | None:
    """The ready process ``kind`` number ``index``: the newest generation while a reload runs."""
    found = None
    for entry in entries:
        if entry.kind is kind and entry.index == index and entry.state is ProcState.READY:
            if found is None or entry.generation > found.generation:
                found = entry
    return found


def worker_successor(entries: Sequence[ProcEntry], index: int, me: int, turn: int) -> ProcEntry | None:
    """Where a retiring worker ``index`` (pid ``me``) sends a session: its successor (the ready
    worker with its index), else the ready workers but itself in turn."""
    entry = running(entries, ProcKind.WORKER, index)
    if entry is not None and entry.pid != me:
        return entry
    ready = [e for e in entries if e.kind is ProcKind.WORKER and e.state is ProcState.READY and e.pid != me]
    return round_robin(ready, turn)


def task_successor(entries: Iterable[ProcEntry], index: int, me: int) -> ProcEntry | None:
    """Where a retiring task worker ``index`` (pid ``me``) hands its queued tasks: the ready task
    worker with its index, else the newest generation, then the lowest index."""
    ready = sorted(
        (e for e in entries if e.kind is ProcKind.TASK and e.state is ProcState.READY and e.pid != me),
        key=lambda e: (e.index != index, -e.generation, e.index),
    )
    return ready[0] if ready else None


def respawn_delay(quick_crashes: int) -> float:
    """How long the master waits before it respawns a child that crashed ``quick_crashes`` times in a row,
    each within a second of its start: at once up to QUICK_CRASHES_ALLOWED, then 0.5 s, 1 s, 2 s, ...
    up to MAX_RESPAWN_DELAY."""
    if quick_crashes <= QUICK_CRASHES_ALLOWED:
        return 0.0
    return min(MAX_RESPAWN_DELAY, 0.25 * 2 ** (quick_crashes - QUICK_CRASHES_ALLOWED))


def affinity_target(holders: Iterable[int], workers: Sequence[int]) -> int | None:
    """The running worker that holds most of ``holders`` (a worker per member); None without workers."""
    counts = {w: 0 for w in workers}
    for worker in holders:
        if worker in counts:
            counts[worker] += 1
    if not counts:
        return None
    return max(sorted(counts), key=lambda w: counts[w])


def rebalance_plan(by_worker: Mapping[int, Sequence[int]]) -> tuple[list[Move], dict[int, int]]:
    """The fewest moves that even ``by_worker`` (worker -> its sessions) out; and the counts after.

    Each step moves the last session of the fullest worker (lowest index on a
    tie) to the emptiest (lowest index on a tie), until the counts differ by at
    most one. A session moves at most once.
    """
    pools = {w: list(sids) for w, sids in by_worker.items()}
    counts = {w: len(sids) for w, sids in pools.items()}
    plan: list[Move] = []
    while counts:
        high = max(sorted(counts), key=lambda w: counts[w])
        low = min(sorted(counts), key=lambda w: counts[w])
        if counts[high] - counts[low] <= 1:
            break
        plan.append((pools[high].pop(), high, low))
        counts[high] -= 1
        counts[low] += 1
    return plan, counts


def fewest_moves(counts: Mapping[int, int]) -> int:
    """How many moves any plan needs at least to even ``counts`` out (module docstring)."""
    n = len(counts)
    if n == 0:
        return 0
    total = sum(counts.values())
    share, extra = divmod(total, n)
    fullest = sorted(counts, key=lambda w: -counts[w])
    targets = {w: share + (1 if i < extra else 0) for i, w in enumerate(fullest)}
    return sum(max(0, counts[w] - targets[w]) for w in counts)
