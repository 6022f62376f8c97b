"""BUG: the sessions of a worker that died stay in the session table: ghosts.

The master forgets to release a dead worker's sessions, so ``/v1/sessions`` lists sessions
whose connections are gone (every sweep and push then trips over them).
Caught by scenarios/test_faults.py (fault_worker_kill).
"""

from reference_server.core.registry import SessionTable
from tests.variants import patch


def apply() -> None:
    def keep_them(self: SessionTable, pid: int) -> list[int]:
        return []

    patch(SessionTable, "free_owned_by", keep_them)
