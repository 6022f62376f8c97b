"""BUG: every failed push logs a warning (the storm Swoole users report).

Caught by scenarios/test_dead_session_push.py (the log grows with dead pushes).
"""

from reference_server.child.runtime import Runtime
from tests.variants import patch


def apply() -> None:
    original = Runtime.note_push_failed

    def note_push_failed(self, sid, code):
        original(self, sid, code)
        self.log.warning("push.failed", sid=sid, code=int(code), error=code.name)

    patch(Runtime, "note_push_failed", note_push_failed)
