"""BUG: ``/v1/stats`` sums the live processes' counters only: those of retired processes are lost.

After a reload the old workers' counts vanish and the counters go down.
Caught by scenarios/test_reload.py (reload_ticks).
"""

from reference_server.child.api import Server
from tests.variants import patch


def apply() -> None:
    status = Server.reload_status

    async def forgetful(self: Server):
        answer = await status(self)
        answer["retired"] = {"counters": {}, "pids": answer["retired"]["pids"]}
        return answer

    patch(Server, "reload_status", forgetful)
