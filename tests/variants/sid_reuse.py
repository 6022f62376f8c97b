"""BUG: session ids behave like OS fds: the lowest free number is reused at once.

The serial part of the id never advances, so a new connection in a freed slot
gets exactly the id of the session that had it, and a push to the stale id
reaches the newcomer. Caught by scenarios/test_dead_session_push.py.
"""

from reference_server.core import registry
from tests.variants import patch


def apply() -> None:
    original = registry.SessionTable.allocate

    def allocate(self, **kw):
        sid = original(self, **kw)
        magic, layout, cap, hwm, _serial = registry._HEADER.unpack_from(self._buf, 0)
        registry._HEADER.pack_into(self._buf, 0, magic, layout, cap, hwm, 0)
        return sid

    patch(registry.SessionTable, "allocate", allocate)
