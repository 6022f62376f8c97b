"""Tasks, as every process that submits them sees them (``Server.task``).

A submitter picks a task worker (the one asked for, else round robin over the ready ones),
sends it a :class:`~reference_server.ipc.messages.Task`, and remembers which process has it
until a :class:`~reference_server.ipc.messages.TaskDone` comes back. A task worker that dies
first (killed, crashed) takes its running and queued tasks with it: once everything it sent
has been handled, each of its tasks is reported lost, once, to the application
(``on_task_lost`` with ``TASK_LOST``, counted in ``tasks_lost``), never forgotten in silence.
The task worker sends
:class:`~reference_server.ipc.messages.Finish` (the application's ``on_finish`` runs here)
before ``TaskDone`` on the same link, so no result arrives after the task is forgotten. A
task worker that retires hands its queued tasks to its successor and says so with
:class:`~reference_server.ipc.messages.TaskMoved`. A retiring submitter waits for the
results of its tasks (:attr:`TaskBook.pending`) while their task workers live.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any

from ..core.proctable import ProcKind, ProcState
from ..errors import ErrorCode, ServerError
from ..ipc import messages as msg

if TYPE_CHECKING:
    from .context import ChildContext


class TaskBook:
    """The tasks this process submitted and still waits for."""

    def __init__(self, rt: ChildContext) -> None:
        self.rt = rt
        self._ids = itertools.count(1)
        self._rr = itertools.count()
        #: task id -> pid of the task worker that has it
        self.awaiting: dict[int, int] = {}

    def dispatch(self, data: Any, dst_worker: int) -> int:
        """Send ``data`` to task worker ``dst_worker`` (-1: any); the task id. Raises ServerError."""
        rt = self.rt
        workers = sorted(
            (e for e in rt.procs.entries() if e.kind is ProcKind.TASK and e.state is ProcState.READY),
            key=lambda e: e.index,
        )
        if not workers:
            raise ServerError(ErrorCode.NO_TASK_WORKER, "no task worker is running")
        if dst_worker >= 0:
            chosen = [e for e in workers if e.index == dst_worker]
            if not chosen:
                raise ServerError(ErrorCode.UNKNOWN_PROCESS, f"no task worker {dst_worker}")
            target = chosen[0]
        else:
            target = workers[next(self._rr) % len(workers)]
        task_id = next(self._ids)
        if not rt.links.send(target.pid, msg.Task(task_id, os.getpid(), rt.index, data)):
            rt.counters["ipc_send_failed"] += 1
            raise ServerError(ErrorCode.OWNER_UNREACHABLE, f"task worker {target.index} cannot be reached")
        rt.counters["tasks_dispatched"] += 1
        self.awaiting[task_id] = target.pid
        return task_id

    def on_finish(self, task_id: int, result: Any) -> None:
        self.rt.counters["tasks_finished"] += 1
        self.rt.call_hook("on_finish", self.rt.api, task_id, result)

    def on_done(self, task_id: int) -> None:
        self.awaiting.pop(task_id, None)
        self.rt.progressed()

    def on_moved(self, task_id: int, pid: int) -> None:
        if task_id in self.awaiting:
            self.awaiting[task_id] = pid

    def lost(self, pid: int) -> int:
        """Task worker ``pid`` is gone and what it sent has been handled: its tasks never finish.

        Each is reported once to the application (``on_task_lost``); the number reported.
        """
        gone = [task_id for task_id, owner in self.awaiting.items() if owner == pid]
        for task_id in gone:
            del self.awaiting[task_id]
            self.rt.counters["tasks_lost"] += 1
            self.rt.call_hook(
                "on_task_lost", self.rt.api, task_id, int(ErrorCode.TASK_LOST),
                f"task {task_id}: its task worker (pid {pid}) exited before the result came",
            )
        if gone:
            self.rt.log.warning("task.lost", tasks=len(gone), task_worker_pid=pid)
        return len(gone)

    def dead_owners(self) -> set[int]:
        """Task workers that have some of our tasks and no longer run."""
        return {pid for pid in set(self.awaiting.values()) if not self.rt.process_alive(pid)}

    def pending(self) -> bool:
        """Whether a result may still come (the tasks of a dead task worker are reported lost first)."""
        for pid in self.dead_owners():
            self.rt.task_worker_gone(pid)
        return bool(self.awaiting)
