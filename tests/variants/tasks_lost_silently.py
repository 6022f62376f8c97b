"""BUG: the tasks of a task worker that died are forgotten, and nobody tells the submitter.

The seed: a killed task worker loses its running and queued tasks with no word to the
submitter (Swoole's onFinish simply never comes). The session's outstanding tasks also stay
counted against its bound forever.
Caught by scenarios/test_faults.py (fault_task_worker_kill).
"""

from reference_server.child.tasks import TaskBook
from tests.variants import patch


def apply() -> None:
    def forget(self: TaskBook, pid: int) -> int:
        gone = [task_id for task_id, owner in self.awaiting.items() if owner == pid]
        for task_id in gone:
            del self.awaiting[task_id]
        return len(gone)

    patch(TaskBook, "lost", forget)
