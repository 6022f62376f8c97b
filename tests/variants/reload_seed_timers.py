"""BUG (the seed's own): old workers' timers outlive the reload, and "is it alive?" is a private set.

As in Swoole: the framework does not clear timers left after the exit hook
(they run until the old process is gone), the application clears nothing in
``on_worker_exit`` and does not stop a session's timer when the session
leaves, and it decides whether to push by looking in its own set of sessions
instead of asking ``exists``. The old worker's ticks then keep coming after
the new worker's (duplicates, generations interleaved) and go to sessions
that have closed. Caught by scenarios/test_reload.py (reload_ticks, and
reload_disconnects through the variant ``reload_seed_dead_pushes``).
"""

from reference_server.apps.contract import ContractApp
from reference_server.child.runtime import Runtime
from tests.variants import patch


def apply() -> None:
    def keep_timers(self) -> int:
        return len(self.timers)  # left running until the process exits

    patch(Runtime, "clear_leftover_timers", keep_timers)

    def on_worker_exit(self, server) -> None:
        pass  # clears nothing

    patch(ContractApp, "on_worker_exit", on_worker_exit)

    def on_migrate_out(self, server, session):
        mine = self.by_owner.get(session)
        if mine is None:
            return None
        return self._export(mine)  # exports the subscription, but leaves its timer running here

    patch(ContractApp, "on_migrate_out", on_migrate_out)

    # "My sessions": a private set, filled when a session talks to or arrives in this worker,
    # emptied on_close, which only the session's current owner sees.
    original_message = ContractApp.on_message
    original_in = ContractApp.on_migrate_in
    original_close = ContractApp.on_close

    def on_message(self, server, session, data):
        self.__dict__.setdefault("mine", set()).add(session)
        return original_message(self, server, session, data)

    def on_migrate_in(self, server, session, state):
        self.__dict__.setdefault("mine", set()).add(session)
        return original_in(self, server, session, state)

    def on_close(self, server, session, code, reason):
        self.__dict__.setdefault("mine", set()).discard(session)
        return original_close(self, server, session, code, reason)

    patch(ContractApp, "on_message", on_message)
    patch(ContractApp, "on_migrate_in", on_migrate_in)
    patch(ContractApp, "on_close", on_close)

    def may_push(self, server, timer) -> bool:
        return timer.to in self.__dict__.get("mine", set())  # instead of server.exists(timer.to)

    patch(ContractApp, "_may_push", may_push)
