"""BUG: a reload closes the old workers' sessions (1001) instead of handing them over.

The common "graceful" reload: every client reconnects. Caught by
scenarios/test_reload.py (reload_ticks).
"""

from reference_server.child.runtime import Runtime
from reference_server.errors import CloseCode
from tests.variants import patch


def apply() -> None:
    async def hand_over_sessions(self, budget: float) -> None:
        for sess in list(self.sessions.values()):
            sess.close(CloseCode.GOING_AWAY, "server reloading", cause="retire")
        await self._wait_for(lambda: not self.sessions, until=budget)

    patch(Runtime, "_hand_over_sessions", hand_over_sessions)
