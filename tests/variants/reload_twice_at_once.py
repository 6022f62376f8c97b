"""BUG: a reload requested while one runs starts a second one next to it (nothing is merged).

Caught by scenarios/test_reload.py (reload_ticks).
"""

from reference_server.core.reloads import ReloadBook
from tests.variants import patch


def apply() -> None:
    original = ReloadBook.request

    def request(self, scope, source, *, now=None, mono=None):
        if self.current is not None:
            self.history.append(self.current)  # forgotten, still running
            self.current = None
        return original(self, scope, source, now=now, mono=mono)

    patch(ReloadBook, "request", request)
