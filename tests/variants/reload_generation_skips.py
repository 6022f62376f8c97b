"""BUG: reload n starts generation n + 2 (the master counted the first generation twice).

A generation number the schema cannot refuse (any integer >= 2 is a reload's
generation), so only the scenario's own check can see it.
Caught by scenarios/test_reload.py (reload_ticks): reload n starts generation n + 1.
"""

from reference_server.core.reloads import ReloadBook
from tests.variants import patch


def apply() -> None:
    request = ReloadBook.request

    def counted_twice(self: ReloadBook, *args, **kwargs):
        ticket = request(self, *args, **kwargs)
        if not ticket.merged:
            ticket.reload.generation = ticket.reload.id + 2
            self.generation = ticket.reload.generation
        return ticket

    patch(ReloadBook, "request", counted_twice)
