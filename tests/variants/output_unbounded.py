"""BUG: a client that does not read is never closed: its output queues without bound.

Caught by scenarios/test_hostile.py (hostile_client): the non-reading client is not closed
with 4429, and its worker's memory grows with everything pushed to it.
"""

from reference_server.session.session import Session
from tests.variants import patch


def apply() -> None:
    def close_slow(self) -> int:
        return 0  # keep queueing

    patch(Session, "close_slow", close_slow)
