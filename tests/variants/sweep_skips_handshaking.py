"""BUG: ``connections`` lists only established sessions (the handshaking ones are skipped).

A session exists from its TCP accept (contract 1): a sweep must see it before
its handshake completes. Caught by scenarios/test_task_sweep.py.
"""

from reference_server.child.api import Server
from tests.variants import patch


def apply() -> None:
    patch(Server, "connections", property(lambda self: (i.session for i in self._rt.table.sessions(established_only=True))))
