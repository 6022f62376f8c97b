"""Retiring: what a worker or task worker does once a reload has replaced it.

The master sends :class:`~reference_server.ipc.messages.Retire` when the process's
successor is ready, and sends it nothing new from then on. The steps, in order:

1. A worker hands every live session to the new generation by migration
   (``session/mover.py``, in batches: one adopt message and one barrier round for up to
   ``BATCH_MAX`` sessions): its successor with the same id, else the next ready new worker.
   Sessions still in their handshake are handed over once established; a move that fails
   is retried after 50 ms. The application's ``on_migrate_out``/``on_migrate_in`` carry
   per-session state: the contract app's tick timers stop as their session leaves and start
   again at their phase where it lands, so a session's ticks pause only while it moves.
   Meanwhile:
2. A sync round (every process answers on its own link) makes sure that no task or
   message addressed to this process before it was marked stopping is still on its way
   (one for a session that has left is forwarded to it).
3. A task worker hands its queued, unstarted tasks to its successor (and any that still
   arrive); the task it is running finishes here.
4. ``on_worker_exit`` runs (the sessions are gone by then); timers it left are cleared with
   one warning naming them.
5. It waits for the results of tasks it dispatched (their ``on_finish`` runs here) and for
   its migrations' barrier rounds, then stops; its last ctl message to the master is the
   report (:class:`~reference_server.ipc.messages.Retired`: sessions handed over, timers
   left, counters, which the master keeps so that stats stay whole).

What is left at ``RETIRE_BUDGET`` of ``max_wait_ms`` (sessions that could not be moved) is
closed with 1001; the master kills a process still alive at ``max_wait_ms``. A silent peer
(blocked, or dying in the same reload) delays a sync or barrier round by at most
``SILENT_PEER_SHARE`` of ``max_wait_ms``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..child.sync import SYNC_TIMEOUT
from ..core.placement import worker_successor
from ..core.proctable import ProcEntry, ProcKind
from ..errors import CloseCode, ErrorCode, ServerError
from ..session.mover import BATCH_MAX
from ..session.session import CloseCause

if TYPE_CHECKING:
    from ..child.context import ChildContext
    from ..child.tasks import TaskBook
    from ..session.mover import Mover
    from .taskworker import TaskWorker

#: Batches of sessions a retiring worker has in flight at once: two, so that it freezes the next
#: while its successor adopts one (each up to ``BATCH_MAX`` sessions). More only queue at the
#: successor, which adopts them one after the other, and a frozen session waits meanwhile.
HANDOVER_BATCHES = 2
#: Share of ``max_wait_ms`` after which a retiring process closes what it could not hand over.
RETIRE_BUDGET = 0.9
#: While retiring, the share of ``max_wait_ms`` a sync or barrier round waits for a silent peer.
SILENT_PEER_SHARE = 0.25
#: How long a failed hand-over waits before it is tried again.
RETRY_AFTER = 0.05


#: The smallest batch worth a message of its own.
BATCH_MIN = 8


def batch_size(waiting: int) -> int:
    """Sessions per batch: small while few wait (a session's ticks pause from its freeze to its
    adoption, so the first batches leave after a few freezes), larger as more wait (fewer
    messages and rounds, so that thousands leave well within ``max_wait_ms``): an eighth of
    those waiting, within ``BATCH_MIN`` .. ``BATCH_MAX``."""
    return max(BATCH_MIN, min(BATCH_MAX, waiting // 8))


class RetiringHost(Protocol):
    """What retiring needs of its process, beyond a service's context."""

    @property
    def mover(self) -> Mover: ...
    @property
    def tasks(self) -> TaskBook: ...
    @property
    def task_worker(self) -> TaskWorker | None: ...
    async def run_exit_hook(self) -> None: ...
    def clear_leftover_timers(self) -> int: ...
    async def sync_peers(self, timeout: float = SYNC_TIMEOUT) -> list[int]: ...
    async def wait_for(self, condition: Callable[[], bool], *, until: float | None = None) -> bool: ...
    def request_stop(self, reason: str) -> None: ...


class Retirer:
    """The retirement of one process (at most one; a second order is ignored)."""

    def __init__(self, rt: ChildContext, host: RetiringHost) -> None:
        self.rt = rt
        self.host = host
        self.report: dict[str, Any] = {}
        self._rr = itertools.count()

    async def retire(self, reload_id: int, max_wait_ms: int) -> None:
        """Replaced by a reload: the steps of the module docstring, then stop."""
        rt, host = self.rt, self.host
        started = time.monotonic()
        budget = started + RETIRE_BUDGET * max_wait_ms / 1000.0
        report = self.report = {
            "reload": reload_id,
            "name": rt.name,
            "kind": rt.kind.label,
            "pid": os.getpid(),
            "generation": rt.generation,
            "sessions_at_retire": len(rt.sessions),
            "handed_over": 0,
            "handover_retries": 0,
            "closed_unmovable": 0,
            "tasks_handed_back": 0,
            "timers_after_exit_hook": 0,
            "timers_at_exit": 0,
        }
        rt.log.info("reload.retiring", reload=reload_id, sessions=len(rt.sessions), timers=len(rt.timers))
        patience = min(SYNC_TIMEOUT, SILENT_PEER_SHARE * max_wait_ms / 1000.0)
        host.mover.barrier_timeout = min(host.mover.barrier_timeout, patience)
        phases: dict[str, float] = {}
        mark = [started]

        def phase(name: str) -> None:
            now = time.monotonic()
            phases[name] = round((now - mark[0]) * 1000.0, 3)
            mark[0] = now

        if rt.kind in (ProcKind.WORKER, ProcKind.TASK):
            # The sessions leave first, each with its own timers (on_migrate_out stops them as it
            # goes, on_migrate_in starts them again at their phase): a session's ticks pause only
            # while it moves, not for the whole hand-over. The sync round runs meanwhile: a
            # message that reaches this process for a session that left is forwarded.
            handover = rt.spawn(self.hand_over_sessions(budget))
            await host.sync_peers(patience)
            phase("sync")
            worker = host.task_worker
            if worker is not None:
                worker.hand_back_queued()
            await handover
            phase("handover")
            await host.run_exit_hook()
            report["timers_after_exit_hook"] = len(rt.timers)
            host.clear_leftover_timers()
            phase("exit_hook")
            await host.wait_for(lambda: not (worker is not None and worker.running) and not host.tasks.pending())
            phase("tasks")
            if worker is not None:
                report["tasks_handed_back"] = worker.handed_back
        report["phases_ms"] = phases
        report["timers_at_exit"] = len(rt.timers)
        report["duration_ms"] = round((time.monotonic() - started) * 1000.0, 3)
        rt.log.info("reload.handover_done", reload=reload_id, **{k: v for k, v in report.items() if k != "reload"})
        host.request_stop("reload")

    def successor(self) -> ProcEntry | None:
        """Where a retiring worker sends a session (``core/placement.worker_successor``)."""
        rt = self.rt
        return worker_successor(list(rt.procs.entries()), rt.index, os.getpid(), next(self._rr))

    async def hand_over_sessions(self, budget: float) -> None:
        """Move every session to the new generation; close with 1001 what is left at ``budget``.

        Sessions go in batches (``Mover.move_many``: one adopt message and one barrier round
        for up to ``BATCH_MAX`` sessions), at most :data:`HANDOVER_BATCHES` batches at once.
        """
        rt, host, report = self.rt, self.host, self.report
        moving: set[int] = set()
        batches: set[asyncio.Task] = set()
        retry_at: dict[int, float] = {}
        chosen: list[ProcEntry | None] = [None]  # the successor, looked up again after a failure

        async def batch(sids: list[int]) -> None:
            try:
                target = chosen[0] = chosen[0] or self.successor()
                if target is None:
                    for sid in sids:
                        retry_at[sid] = time.monotonic() + RETRY_AFTER
                    return
                results = await host.mover.move_many(sids, target)
                for sid, result in results.items():
                    if not isinstance(result, ServerError):
                        report["handed_over"] += 1
                    elif result.code in (ErrorCode.MIGRATION_FAILED, ErrorCode.MIGRATION_IN_PROGRESS):
                        report["handover_retries"] += 1
                        retry_at[sid] = time.monotonic() + RETRY_AFTER
                        chosen[0] = None
                    # otherwise it closed or left on its own: nothing to hand over
            finally:
                moving.difference_update(sids)
                rt.progressed()

        def settled() -> bool:
            now = time.monotonic()
            ready = [
                sid
                for sid, sess in rt.sessions.items()
                if sid not in moving and retry_at.get(sid, 0.0) <= now and sess.established and sess.movable
            ]
            size = batch_size(len(ready))
            while ready and len(batches) < HANDOVER_BATCHES:
                sids, ready = ready[:size], ready[size:]
                moving.update(sids)
                task = rt.spawn(batch(sids))
                batches.add(task)
                task.add_done_callback(batches.discard)
            return not rt.sessions and not moving and host.mover.idle

        if await host.wait_for(settled, until=budget):
            return
        for sess in list(rt.sessions.values()):
            report["closed_unmovable"] += 1
            if sess.closing:
                sess.abort(CloseCause.RETIRE_BUDGET)
            else:
                sess.close(CloseCode.GOING_AWAY, "server reloading", cause=CloseCause.RETIRE)
        rt.log.warning(
            "reload.unmovable_sessions",
            count=report["closed_unmovable"],
            hint="sessions that could not be handed over in time were closed with 1001",
        )
        await host.wait_for(lambda: not rt.sessions and not moving and host.mover.idle)
