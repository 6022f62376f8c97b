"""BUG: a reload closes the old workers' sessions (1001) instead of handing them over.

The common "graceful" reload: every client reconnects. Caught by
scenarios/test_reload.py (reload_ticks).
"""

from reference_server.errors import CloseCode
from reference_server.roles.retiring import Retirer
from reference_server.session.session import CloseCause
from tests.variants import patch


def apply() -> None:
    async def hand_over_sessions(self, budget: float) -> None:
        sessions = self.rt.sessions
        for sess in list(sessions.values()):
            sess.close(CloseCode.GOING_AWAY, "server reloading", cause=CloseCause.RETIRE)
        await self.host.wait_for(lambda: not sessions, until=budget)

    patch(Retirer, "hand_over_sessions", hand_over_sessions)
