"""The Swoole-like API, callable from any process with the same meaning everywhere.

Reads (``connections``, ``exists``, ``is_established``, ``get_client_info``)
come straight from the shared session table: synchronous, never stale by more
than the owner's last write, and they always verify the session id.

Operations on a session (``push``, ``close``, ``protect``, ``bind``) are
performed by the session's owner. From the owner they act at once; from any
other process they are checked against the table and routed to the owner,
which re-checks when they arrive (the session may have closed meanwhile: that
push is then counted as a dead-session push by the owner). Operations from
one process to one owner are applied in the order they were called.

A failing operation returns False and sets :attr:`Server.last_error` to an
:class:`~reference_server.errors.ErrorCode`; a push to a dead session is
counted (``dead_session_pushes``) and logged once per session, never per call.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..core.proctable import ProcEntry, ProcKind, ProcState
from ..core.registry import ClientInfo
from ..errors import CloseCode, ErrorCode, ServerError

if TYPE_CHECKING:
    from .process import Runtime

DEAD_CODES = (ErrorCode.SESSION_CLOSED, ErrorCode.SESSION_NOT_EXIST)


class Server:
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self.last_error: ErrorCode = ErrorCode.OK

    # -- identity -------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self._rt.kind.label

    @property
    def worker_id(self) -> int:
        """Index of this process among its kind (worker 0..N-1, task worker 0..M-1)."""
        return self._rt.index

    @property
    def name(self) -> str:
        return self._rt.name

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def generation(self) -> int:
        return self._rt.generation

    @property
    def config(self):  # -> Config
        return self._rt.config

    @property
    def log(self):  # -> Log
        return self._rt.log

    @property
    def counters(self):
        return self._rt.counters

    def processes(self, kind: str | None = None) -> list[ProcEntry]:
        """The server's processes (from the shared process directory)."""
        entries = list(self._rt.procs.entries())
        if kind is not None:
            entries = [e for e in entries if e.kind.label == kind]
        return entries

    # -- reads ----------------------------------------------------------------

    @property
    def connections(self) -> Iterator[int]:
        """Live scan of every existing session id, across all workers."""
        return (info.session for info in self._rt.table.sessions())

    def sessions(self, *, established_only: bool = False) -> list[ClientInfo]:
        return list(self._rt.table.sessions(established_only=established_only))

    def exists(self, session: int) -> bool:
        return self._rt.table.exists(session)

    def is_established(self, session: int) -> bool:
        return self._rt.table.is_established(session)

    def get_client_info(self, session: int) -> ClientInfo | None:
        return self._rt.table.get_client_info(session)

    # -- session operations ---------------------------------------------------

    def push(self, session: int, data: str | bytes) -> bool:
        """Send one message to a session; see the module docstring for routing."""
        code, info = self._rt.table.push_error(session)
        if code is not ErrorCode.OK:
            return self._push_failed(session, code)
        assert info is not None
        if info.owner_pid == os.getpid():
            sess = self._rt.sessions.get(session)
            if sess is None or not sess.send(data):
                return self._push_failed(session, ErrorCode.SESSION_CLOSED)
        elif not self._rt.links.send(info.owner_pid, ("push", session, data)):
            self._rt.counters["ipc_send_failed"] += 1
            return self._push_failed(session, ErrorCode.OWNER_UNREACHABLE)
        self._rt.counters["pushes"] += 1
        self.last_error = ErrorCode.OK
        return True

    def _push_failed(self, session: int, code: ErrorCode) -> bool:
        self.last_error = code
        self._rt.note_push_failed(session, code)
        return False

    def close(
        self,
        session: int,
        code: int = CloseCode.NORMAL,
        reason: str = "",
        *,
        last_message: str | bytes | None = None,
    ) -> bool:
        """Close a session with a proper close frame; pushes queued before go out first.

        ``last_message``, if given, is sent immediately before the close frame,
        atomically at the owner: nothing (a timer's push, say) can come between
        them. ``push(notice)`` followed by ``close()`` from another process
        gives no such guarantee, since the owner may run its own timers between
        the two routed operations.
        """
        info = self._rt.table.get_client_info(session)
        if info is None:
            lookup = self._rt.table.lookup(session)
            self.last_error = (
                ErrorCode.SESSION_CLOSED if lookup is not None else ErrorCode.SESSION_NOT_EXIST
            )
            return False
        if info.owner_pid == os.getpid():
            if not self._rt.close_local(session, int(code), reason, last_message):
                self.last_error = ErrorCode.SESSION_CLOSED
                return False
        elif not self._rt.links.send(info.owner_pid, ("close", session, int(code), reason, last_message)):
            self._rt.counters["ipc_send_failed"] += 1
            self.last_error = ErrorCode.OWNER_UNREACHABLE
            return False
        self._rt.counters["closes_requested"] += 1
        self.last_error = ErrorCode.OK
        return True

    def _owner_op(self, session: int, op: str, value: Any) -> bool:
        info = self._rt.table.get_client_info(session)
        if info is None:
            self.last_error = ErrorCode.SESSION_NOT_EXIST
            return False
        if info.owner_pid == os.getpid():
            self._rt.apply_owner_op(session, op, value)
        elif not self._rt.links.send(info.owner_pid, (op, session, value)):
            self.last_error = ErrorCode.OWNER_UNREACHABLE
            return False
        self.last_error = ErrorCode.OK
        return True

    def protect(self, session: int, protected: bool = True) -> bool:
        """Exempt a session from the heartbeat (or undo it)."""
        return self._owner_op(session, "protect", bool(protected))

    def bind(self, session: int, uid: int) -> bool:
        """Attach an application user id to a session (shown in ``get_client_info``)."""
        return self._owner_op(session, "bind", int(uid))

    # -- tasks and messages ---------------------------------------------------

    def task(self, data: Any, dst_worker: int = -1) -> int:
        """Hand ``data`` to a task worker; return the task id, or -1 (see last_error)."""
        try:
            task_id = self._rt.dispatch_task(data, dst_worker)
        except ServerError as exc:
            self.last_error = exc.code
            return -1
        self.last_error = ErrorCode.OK
        return task_id

    def finish(self, data: Any) -> None:
        """Send the result of the current task back to the process that submitted it."""
        self._rt.finish_current_task(data)

    def send_message(self, dst: str, data: Any) -> bool:
        """Deliver ``data`` to ``on_pipe_message`` of the process named ``dst`` (e.g. ``task-0``)."""
        entry = self._resolve(dst)
        if entry is None:
            return False
        return self._rt.links.send(entry.pid, ("pipe", self.name, data))

    async def request(self, dst: str, data: Any, timeout: float = 5.0) -> Any:
        """Ask the process named ``dst``: its ``on_request`` hook's return value."""
        entry = self._resolve(dst)
        if entry is None:
            raise ServerError(ErrorCode.UNKNOWN_PROCESS, f"no running process named {dst!r}")
        return await self._rt.call(entry.pid, "app_request", (self.name, data), timeout)

    def _resolve(self, dst: str) -> ProcEntry | None:
        for entry in self._rt.procs.entries():
            if entry.name == dst and entry.state is not ProcState.EMPTY:
                self.last_error = ErrorCode.OK
                return entry
        self.last_error = ErrorCode.UNKNOWN_PROCESS
        return None

    async def gather_stats(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Each running process's own stats, collected over IPC."""
        return await self._rt.gather_stats(timeout)

    # -- timers -----------------------------------------------------------------

    def tick(self, ms: float, callback: Callable[..., Any], *args: Any, label: str = "") -> int:
        """Call ``callback(timer_id, *args)`` every ``ms`` milliseconds in this process."""
        return self._rt.timers.tick(ms, callback, *args, label=label)

    def after(self, ms: float, callback: Callable[..., Any], *args: Any, label: str = "") -> int:
        return self._rt.timers.after(ms, callback, *args, label=label)

    def clear(self, timer_id: int) -> bool:
        return self._rt.timers.clear(timer_id)

    def clear_all(self) -> int:
        """Clear every timer of *this* process (not of other processes)."""
        return self._rt.timers.clear_all()

    @property
    def timer_count(self) -> int:
        return len(self._rt.timers)

    # -- server control ---------------------------------------------------------

    def shutdown(self) -> None:
        """Ask the master for a graceful shutdown of the whole server."""
        self._rt.ctl_send(("shutdown",))

    def worker_pids(self) -> dict[str, int]:
        return {e.name: e.pid for e in self._rt.procs.entries() if e.kind is ProcKind.WORKER}
