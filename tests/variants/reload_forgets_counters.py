"""BUG: the counters of a process that a reload retired die with it; ``/v1/stats`` goes down.

The master frees a retired process's row of the shared counter table without adding it to the
totals of exited processes (as a server that sums only its live processes' counters does).
Caught by scenarios/test_reload.py (reload_ticks).
"""

from reference_server.master.arbiter import Master
from tests.variants import patch


def apply() -> None:
    exited = Master._child_exited

    def forgetful(self: Master, pid: int, status: int) -> None:
        child = self.children.get(pid)
        if child is not None and pid in self.reloader.retiring:
            row = self.shared.counters.row_view(child.counter_row)
            row[:] = memoryview(bytes(len(row) * 8)).cast("Q")
        exited(self, pid, status)

    patch(Master, "_child_exited", forgetful)
