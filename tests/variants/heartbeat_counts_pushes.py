"""BUG: what the server pushes counts as activity, so a silent client is never idle.

Caught by scenarios/test_heartbeat.py (push-only clients are not closed).
"""

import time

from reference_server.session.session import Session
from tests.variants import patch


def apply() -> None:
    original = Session.send

    def send(self, data):
        ok = original(self, data)
        if ok:
            self.last_recv = time.monotonic()
        return ok

    patch(Session, "send", send)
