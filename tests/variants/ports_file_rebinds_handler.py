"""BUG: a ports-file entry whose handler set changed is re-bound (a new socket) instead of updated in place.

Caught by scenarios/test_ports.py (ports_file): contract 9.4 updates limit,
handler and policy in place.
"""

from reference_server.core.ports import ListenSpec
from tests.variants import patch


def apply() -> None:
    needs_rebind = ListenSpec.needs_rebind
    patch(ListenSpec, "needs_rebind", lambda self, other: needs_rebind(self, other) or self.handler != other.handler)
