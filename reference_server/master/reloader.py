"""The master's side of a reload (the old process's side is ``roles/retiring.py``).

The books (requests, merges, generations, what retired) are ``core/reloads.py``; this
module runs the steps:

1. **Request** (SIGUSR1, SIGUSR2, or a child's ``reload`` call): while the server stops,
   refused; while a reload runs, merged into it (and widened if it asks for more).
2. **Successors first.** Each slot in scope gets a new child of the new generation; its
   current child becomes a *retiree*, which goes on serving while it waits. A custom
   process (reloaded only if declared ``reloadable``) is retired first and replaced once it
   has exited: two never run at once.
3. **Retire.** When a slot's successor is ready, the retiree is marked stopping in the
   process directory (no connection, task or session reaches it any more) and sent
   :class:`~reference_server.ipc.messages.Retire` with ``max_wait_ms``.
4. **Bound.** A retiree still alive ``max_wait_ms`` after its retirement is killed
   (``reload.force_kill``), and the sessions it still owned are counted lost.
5. **Done** when no retiree of the reload is left; callers that asked to wait get the
   reload's record.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..config import Config
from ..core.proctable import ProcKind, ProcState, ProcTable
from ..core.reloads import ReloadBook, ReloadScope, ReloadState, Ticket
from ..errors import ErrorCode
from ..ipc import messages as msg
from ..logs import Log
from .children import Child, Retiree, RetireePhase, Slot


class ReloaderHost(Protocol):
    """What the reloader needs of the master."""

    @property
    def config(self) -> Config: ...
    @property
    def log(self) -> Log: ...
    @property
    def procs(self) -> ProcTable: ...
    @property
    def slots(self) -> list[Slot]: ...
    @property
    def children(self) -> dict[int, Child]: ...
    @property
    def stopping(self) -> bool: ...
    def slot_of(self, pid: int) -> Slot | None: ...
    def forget_slot(self, pid: int) -> None: ...
    def spawn(self, slot: Slot) -> None: ...
    def send_ctl(self, child: Child, message: tuple) -> None: ...


class Reloader:
    """The reloads of one server: the book, the retirees, and who waits for an answer."""

    def __init__(self, host: ReloaderHost) -> None:
        self.host = host
        self.book = ReloadBook()
        self.retiring: dict[int, Retiree] = {}
        self._waiters: dict[int, list[tuple[int, int, bool]]] = {}  # reload id -> [(pid, token, merged)]

    def request(self, scope: ReloadScope, source: str) -> Ticket | None:
        """Start a reload of ``scope``, or merge into the one running (None while stopping)."""
        host = self.host
        if host.stopping:
            host.log.warning("reload.refused", source=source, reason="the server is stopping")
            return None
        ticket = self.book.request(scope, source)
        reload = ticket.reload
        host.log.info(
            "reload.request",
            reload=reload.id,
            source=source,
            scope=scope.value,
            merged=ticket.merged,
            widened=sorted(ticket.widened) if ticket.merged else None,
            generation=reload.generation,
        )
        for slot in host.slots:
            if slot.reloadable and slot.kind.label in ticket.widened:
                self._replace(slot, reload.id, reload.generation)
        self._maybe_finish()
        return ticket

    def serve_call(self, child: Child, token: int, args: object, reply: Callable[[bool, object], None]) -> None:
        """A child's ``reload`` call; with ``wait``, answered when the reload is done."""
        if not isinstance(args, dict):
            reply(False, (int(ErrorCode.BAD_REQUEST), "reload arguments must be a dict"))
            return
        try:
            scope = ReloadScope.parse(args.get("scope", "all"))
        except ValueError as exc:
            reply(False, (int(ErrorCode.BAD_REQUEST), str(exc)))
            return
        source = str(args.get("source") or child.name)[:64]
        ticket = self.request(scope, source)
        if ticket is None:
            reply(False, (int(ErrorCode.UNSUPPORTED), "the server is stopping: no reload"))
            return
        answer = {"merged": ticket.merged, **ticket.reload.as_dict()}
        if args.get("wait") and token and ticket.reload.state is ReloadState.RUNNING:
            self._waiters.setdefault(ticket.reload.id, []).append((child.pid, token, ticket.merged))
        else:  # not waiting, or already done (nothing in its scope was running)
            reply(True, answer)

    def status(self) -> dict[str, Any]:
        return {**self.book.status(), "retired": self.book.retired_totals()}

    def _replace(self, slot: Slot, reload_id: int, generation: int) -> None:
        """Give ``slot`` a successor of ``generation``; its current child retires once that is ready."""
        host = self.host
        slot.generation = generation
        old = next((c for pid, c in host.children.items() if host.slot_of(pid) is slot), None)
        if old is None:  # not running now (a respawn is pending): it restarts in the new generation
            return
        host.forget_slot(old.pid)
        retiree = Retiree(old, slot, reload_id)
        self.retiring[old.pid] = retiree
        reload = self.book.current
        if reload is not None:
            reload.replaced.append({"name": slot.name, "old_pid": old.pid, "generation": generation})
        if slot.kind is ProcKind.CUSTOM:
            self._retire(retiree)  # no overlap: its successor starts when it has exited
        else:
            host.spawn(slot)

    def retired(self, pid: int) -> bool:
        """Whether ``pid`` has been retired (it takes no new connection)."""
        retiree = self.retiring.get(pid)
        return retiree is not None and retiree.phase is not RetireePhase.WAITING

    def successor_ready(self, slot: Slot | None) -> None:
        """The child of ``slot`` is ready: the retiree it replaces may retire."""
        for retiree in list(self.retiring.values()):
            if retiree.phase is RetireePhase.WAITING and retiree.slot is slot:
                retiree.successor_ready = True
        self._retire_next()

    def _retire_next(self) -> None:
        """Retire what may go: task workers and custom processes at once; workers one at a time,
        once every successor of the reload serves (no start-up competes with a hand-over), the
        next when the previous has exited or has been at it for a quarter of ``max_wait_ms``;
        a stalled worker at once (it hands nothing over until it runs again)."""
        waiting = [r for r in self.retiring.values() if r.phase is RetireePhase.WAITING]
        for r in waiting:
            if r.successor_ready and (r.slot.kind is not ProcKind.WORKER or r.child.stalled):
                self._retire(r)
        workers = [r for r in waiting if r.slot.kind is ProcKind.WORKER and r.phase is RetireePhase.WAITING]
        if not workers or not all(r.successor_ready for r in workers):
            return
        patience = self.host.config.max_wait_ms / 4000.0
        now = time.monotonic()
        busy = [
            r for r in self.retiring.values()
            if r.phase is RetireePhase.RETIRED and r.slot.kind is ProcKind.WORKER and not r.child.stalled
            and now - r.retired_at < patience
        ]
        if not busy:
            self._retire(workers[0])

    def _retire(self, retiree: Retiree) -> None:
        host = self.host
        retiree.phase = RetireePhase.RETIRED
        max_wait = host.config.max_wait_ms
        retiree.retired_at = time.monotonic()
        retiree.deadline = retiree.retired_at + max_wait / 1000.0
        host.procs.set_state(retiree.child.pid, ProcState.STOPPING)
        host.log.info("reload.retire", name=retiree.child.name, pid=retiree.child.pid, reload=retiree.reload_id)
        host.send_ctl(retiree.child, msg.Retire(retiree.reload_id, max_wait))

    def deadlines(self) -> list[float]:
        """When the loop must wake: to kill an overdue retiree, or to retire the next worker."""
        retired = [r for r in self.retiring.values() if r.phase is RetireePhase.RETIRED]
        patience = self.host.config.max_wait_ms / 4000.0
        now = time.monotonic()
        return [r.deadline for r in retired] + [
            r.retired_at + patience for r in retired if r.retired_at + patience > now  # past ones: acted on
        ]

    def kill_overdue(self, now: float) -> None:
        self._retire_next()
        host = self.host
        for retiree in self.retiring.values():
            if retiree.phase is not RetireePhase.RETIRED or now < retiree.deadline:
                continue
            retiree.phase = RetireePhase.KILLED
            self.book.note_forced_kill()
            host.log.warning(
                "reload.force_kill",
                name=retiree.child.name,
                pid=retiree.child.pid,
                reload=retiree.reload_id,
                max_wait_ms=host.config.max_wait_ms,
                hint="the old process did not finish in max_wait_ms; its remaining sessions are lost",
            )
            try:
                os.kill(retiree.child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def exited(self, pid: int, cause: str, lost: int) -> bool:
        """A child exited: True if it was a retiree (then it is not respawned)."""
        retiree = self.retiring.pop(pid, None)
        if retiree is None:
            return False
        host = self.host
        reload = self.book.find(retiree.reload_id)
        if reload is not None:
            reload.sessions_lost += lost
        log = host.log.warning if lost or retiree.phase is RetireePhase.KILLED else host.log.info
        log("reload.retired", name=retiree.child.name, pid=retiree.child.pid, cause=cause, sessions_lost=lost)
        slot = retiree.slot
        if slot.kind is ProcKind.CUSTOM and not host.stopping and slot.respawn_at == 0.0:
            host.spawn(slot)
        self._retire_next()
        self._maybe_finish()
        return True

    def _maybe_finish(self) -> None:
        reload = self.book.current
        if reload is None or any(r.reload_id == reload.id for r in self.retiring.values()):
            return
        self.book.finish()
        self.host.log.info(
            "reload.done",
            reload=reload.id,
            generation=reload.generation,
            duration_ms=round(reload.duration_ms, 3),
            requests=len(reload.requests),
            merged=reload.merged,
            forced_kills=reload.forced_kills,
            sessions_lost=reload.sessions_lost,
        )
        answer = reload.as_dict()
        for pid, token, merged in self._waiters.pop(reload.id, []):
            child = self.host.children.get(pid)
            if child is not None:
                self.host.send_ctl(child, msg.Reply(token, True, {"merged": merged, **answer}))
