"""Which workers answer: the master's view of a worker that stopped running (SIGSTOP, a stuck loop).

A worker that does not run still has its control socket, so sending it a connection
succeeds, and the connection then waits, unanswered, for as long as the worker does not run.
The master therefore pings every ready worker over ctl (:class:`~reference_server.ipc.messages.Ping`,
every ``PING_EVERY`` seconds, one at a time); a worker whose answer
(:class:`~reference_server.ipc.messages.Pong`) is ``STALL_AFTER`` seconds late is **stalled**:
the acceptor sends it no new connection, the process directory marks it (``ProcEntry.stalled``)
so that sync and barrier rounds do not wait for it (they would only time out), and a reload does
not wait for it (it is killed at its deadline like any retiree that does not go). Its answer,
when it comes, ends the stall.

Both transitions are logged (``process.stalled``, ``process.resumed`` with how long it lasted).
A worker blocked by a long synchronous hook is stalled too, for the same reason: it cannot
take a connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..core.proctable import ProcKind, ProcTable
from ..ipc import messages as msg
from ..logs import Log
from .children import Child

#: How often a ready worker is pinged (seconds).
PING_EVERY = 0.25
#: How late an answer may be before the worker counts as stalled (seconds).
STALL_AFTER = 1.0


class Liveness:
    """Pings workers and marks the ones that do not answer (``Child.stalled``)."""

    def __init__(self, log: Log, send: Callable[[Child, tuple], None], procs: ProcTable) -> None:
        self.log = log
        self.send = send
        self.procs = procs
        self._n = 0

    def tick(self, children: Iterable[Child], now: float) -> None:
        """From the master's loop: ping who is due, mark who is late."""
        for child in children:
            if child.kind is not ProcKind.WORKER or not child.ready:
                continue
            if child.ping_at == 0.0:
                if now >= child.next_ping:
                    self._n += 1
                    child.ping_at = now
                    self.send(child, msg.Ping(self._n))
            elif not child.stalled and now - child.ping_at > STALL_AFTER:
                child.stalled = True
                self.procs.set_stalled(child.pid, True)
                self.log.warning("process.stalled", name=child.name, pid=child.pid, late_s=round(now - child.ping_at, 3),
                                 note="no new connection goes to it until it answers")

    def pong(self, child: Child, now: float) -> None:
        """Its answer came: it runs."""
        if child.stalled:
            child.stalled = False
            self.procs.set_stalled(child.pid, False)
            self.log.info("process.resumed", name=child.name, pid=child.pid, stalled_s=round(now - child.ping_at, 3))
        child.ping_at = 0.0
        child.next_ping = now + PING_EVERY

    @staticmethod
    def deadline(children: Iterable[Child]) -> float | None:
        """When the loop must wake next for a ping or a stall (monotonic), if any worker is ready."""
        times = [
            (c.ping_at + STALL_AFTER if c.ping_at else c.next_ping)
            for c in children
            if c.kind is ProcKind.WORKER and c.ready and not c.stalled
        ]
        return min(times, default=None)
