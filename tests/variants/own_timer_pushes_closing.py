"""BUG: a session's own timer pushes without checking ``exists()`` (the seed's timer).

Its close is known (the close frame is out, the reply awaited), but the timer
keeps pushing to it until the session is gone; each push fails with 1004 and
counts as a dead-session push. Caught by scenarios/test_closing.py (closing_session).
"""

from reference_server.apps.contract import ContractApp
from tests.variants import patch


def apply() -> None:
    patch(ContractApp, "_may_push", lambda self, server, timer: True)
