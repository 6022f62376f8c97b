"""BUG: reload n starts generation n (the first reload "starts" generation 1 again).

Caught by scenarios/test_reload.py (reload_ticks): reload n starts generation n + 1.
"""

from reference_server.core.reloads import ReloadBook


def apply() -> None:
    request = ReloadBook.request

    def off_by_one(self: ReloadBook, *args, **kwargs):
        ticket = request(self, *args, **kwargs)
        if not ticket.merged:
            ticket.reload.generation = ticket.reload.id
            self.generation = ticket.reload.generation
        return ticket

    ReloadBook.request = off_by_one
