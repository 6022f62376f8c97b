"""BUG: pushes that reach the old worker while the session is moving are dropped.

The source treats a session it is handing over as gone, so whatever was
addressed to it in that window is lost (counted as a dead-session push).
Caught by scenarios/test_migration.py (migration_pushes_in_flight).
"""

from reference_server.core.handover import MovePhase
from reference_server.errors import ErrorCode
from reference_server.ipc import messages as msg
from reference_server.session.mover import Mover
from tests.variants import patch


def apply() -> None:
    original = Mover.intercept

    def intercept(self, op, forwarded, local=False):
        if self.book.leaving(op.sid) is MovePhase.QUEUEING:
            if isinstance(op, msg.Push):
                self.rt.note_push_failed(op.sid, ErrorCode.SESSION_NOT_EXIST)
            return True
        return original(self, op, forwarded, local)

    patch(Mover, "intercept", intercept)
