"""The task worker role: run tasks one at a time, in arrival order.

A task worker takes :class:`~reference_server.ipc.messages.Task` messages into a queue and
runs the application's ``on_task`` for each in turn. A non-``None`` return value, and each
``finish()`` the task calls, goes back to the submitter as a
:class:`~reference_server.ipc.messages.Finish`; :class:`~reference_server.ipc.messages.TaskDone`
follows on the same link when the task ends, whatever happened.

When a reload retires it, the task it is running finishes here; the queued ones, and any
that still arrive, go to its successor (the new task worker with the same id, else the
newest ready one), and each submitter is told with a
:class:`~reference_server.ipc.messages.TaskMoved`. With no successor it runs them itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from typing import TYPE_CHECKING, Any

from ..core.placement import task_successor
from ..core.proctable import ProcEntry
from ..errors import ErrorCode, ServerError
from ..ipc import links as ipc
from ..ipc import messages as msg

if TYPE_CHECKING:
    from ..child.context import ChildContext

#: The task running in this context: (task id, submitter pid).
_current_task: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("current_task", default=None)


class TaskWorker:
    """The queue and the loop of one task worker."""

    def __init__(self, rt: ChildContext) -> None:
        self.rt = rt
        self.queue: asyncio.Queue[msg.Task] = asyncio.Queue()
        self.running = False
        self.handed_back = 0

    def on_task(self, task: msg.Task) -> None:
        if not (self.rt.retiring and self.hand_back(task)):
            self.queue.put_nowait(task)

    async def run(self) -> None:
        """Run tasks one at a time, in arrival order, until cancelled."""
        rt = self.rt
        while True:
            task_id, src_pid, src_worker, data = await self.queue.get()
            token = _current_task.set((task_id, src_pid))
            self.running = True
            try:
                result = await rt.run_hook("on_task", rt.api, task_id, src_worker, data)
                rt.counters["tasks_done"] += 1
                if result is not None:
                    rt.links.send(src_pid, msg.Finish(task_id, result))
            finally:
                _current_task.reset(token)
                self.running = False
                rt.links.send(src_pid, msg.TaskDone(task_id))  # after any finish: same link
                rt.progressed()

    # -- retiring -----------------------------------------------------------------------------

    def successor(self) -> ProcEntry | None:
        """Where this task worker hands its queued tasks (``core/placement.task_successor``)."""
        return task_successor(self.rt.procs.entries(), self.rt.index, os.getpid())

    def hand_back_queued(self) -> None:
        """Hand every queued task to the successor (keep them if there is none)."""
        while not self.queue.empty():
            task = self.queue.get_nowait()
            if not self.hand_back(task):
                self.queue.put_nowait(task)  # nobody to take it: run it here
                return

    def hand_back(self, task: msg.Task) -> bool:
        target = self.successor()
        if target is None or not self.rt.links.send(target.pid, task):
            return False
        self.rt.links.send(task.src_pid, msg.TaskMoved(task.task_id, target.pid))
        self.handed_back += 1
        self.rt.counters["tasks_handed_back"] += 1
        return True


def finish_current_task(links: ipc.PeerLinks, data: Any) -> None:
    """``Server.finish()``: send ``data`` to the submitter of the task running here."""
    current = _current_task.get()
    if current is None:
        raise ServerError(ErrorCode.BAD_REQUEST, "finish() called outside a task")
    task_id, src_pid = current
    links.send(src_pid, msg.Finish(task_id, data))
