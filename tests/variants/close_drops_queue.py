"""BUG: close() drops the TCP connection at once: queued data and the close frame are lost.

Caught by scenarios/test_task_sweep.py (no notice, no 4001 close frame).
"""

from reference_server.session.session import Session
from tests.variants import patch


def apply() -> None:
    def close(self, code, reason, cause="server"):
        if self.closing or self.lost:
            return False
        self.close_code, self.close_reason = code, reason
        self._begin_closing(cause)
        if self.stream is not None:
            self.stream.abort()
        return True

    patch(Session, "close", close)
