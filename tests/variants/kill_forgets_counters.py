"""BUG: the counters of a worker killed by a signal die with it; ``/v1/stats`` goes down.

The master frees a killed process's row of the shared counter table without adding it to the
totals (as a server that keeps counters only in each process's memory does).
Caught by scenarios/test_faults.py (fault_worker_kill).
"""

import os

from reference_server.master.arbiter import Master
from tests.variants import patch


def apply() -> None:
    exited = Master._child_exited

    def forgetful(self: Master, pid: int, status: int) -> None:
        child = self.children.get(pid)
        if child is not None and os.WIFSIGNALED(status):
            row = self.shared.counters.row_view(child.counter_row)
            row[:] = memoryview(bytes(len(row) * 8)).cast("Q")
        exited(self, pid, status)

    patch(Master, "_child_exited", forgetful)
