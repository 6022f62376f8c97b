"""BUG: ``connections`` lists only the calling process's own sessions (BASE mode).

A task process then sees no session at all. Caught by scenarios/test_task_sweep.py.
"""

from reference_server.child.api import Server
from tests.variants import patch


def apply() -> None:
    patch(Server, "connections", property(lambda self: iter(list(self._rt.sessions))))
