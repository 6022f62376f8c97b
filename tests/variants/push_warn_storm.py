"""BUG: every failed push logs a warning (the storm Swoole users report).

Caught by scenarios/test_dead_session_push.py (the log grows with dead pushes).
"""

from reference_server.roles.worker import Worker
from tests.variants import patch


def apply() -> None:
    original = Worker.note_push_failed

    def note_push_failed(self, sid, code, *, in_flight=False):
        original(self, sid, code, in_flight=in_flight)
        self.rt.log.warning("push.failed", sid=sid, code=int(code), error=code.name)

    patch(Worker, "note_push_failed", note_push_failed)
