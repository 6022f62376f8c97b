"""BUG: the master does not notice a worker that stopped running, and keeps sending it connections.

Its share of new connections waits, unanswered, until the worker runs again (the seed: a
worker stopped with SIGSTOP keeps receiving a third of new connections, which hang).
Caught by scenarios/test_faults.py (fault_worker_stall).
"""

from reference_server.master.liveness import Liveness
from tests.variants import patch


def apply() -> None:
    def blind(self: Liveness, children, now: float) -> None:
        return None

    patch(Liveness, "tick", blind)
