"""BUG: a session's new owner resets its uid and protection when it adopts it.

What ``bind`` and ``protect`` set belongs to the session, not to the worker
that held it. Caught by scenarios/test_migration.py (migration_stream).
"""

from reference_server.core.registry import SessionTable
from tests.variants import patch


def apply() -> None:
    set_owner = SessionTable.set_owner

    def forgetful(self: SessionTable, sid: int, worker: int, owner_pid: int) -> None:
        set_owner(self, sid, worker, owner_pid)
        self.set_uid(sid, 0)
        self.set_protected(sid, False)

    patch(SessionTable, "set_owner", forgetful)
