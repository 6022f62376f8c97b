"""BUG: during a reload, the old workers wait for a stopped peer as long as it takes.

The seed: a reload while a worker is stopped also force-killed a healthy worker. Each old
worker's sync round waits for every peer, the stopped one included, with no share of
max_wait_ms as its limit, and the stall is not marked in the process directory: the healthy
old workers are still waiting at their deadline and are killed. (Their sessions survive since
the reference hands them over while the sync round runs; before, they were lost with them.)
Caught by scenarios/test_faults.py (fault_worker_stall_reload).
"""

from reference_server.core.proctable import ProcTable
from reference_server.roles import retiring
from tests.variants import patch


def apply() -> None:
    def unmarked(self: ProcTable, pid: int, stalled: bool) -> None:
        return None

    patch(ProcTable, "set_stalled", unmarked)
    patch(retiring, "SYNC_TIMEOUT", 60.0)
    patch(retiring, "SILENT_PEER_SHARE", 20.0)
