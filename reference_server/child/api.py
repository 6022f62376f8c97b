"""The Swoole-like API, callable from any process with the same meaning everywhere.

Reads (``connections``, ``exists``, ``is_established``, ``get_client_info``)
come straight from the shared session table: synchronous, never stale by more
than the owner's last write, and they always verify the session id.

Operations on a session (``push``, ``close``, ``protect``, ``bind``,
``set_group``) are
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

from ..core.limits import close_problem, int64_problem
from ..core.proctable import ProcEntry, ProcKind, ProcState
from ..core.registry import ClientInfo
from ..errors import CloseCode, ErrorCode, ServerError
from ..ipc import messages as msg
from .api_broadcast import Broadcasting
from .api_moves import SessionMoves

if TYPE_CHECKING:
    from .context import ChildContext

DEAD_CODES = (ErrorCode.SESSION_CLOSED, ErrorCode.SESSION_NOT_EXIST)


class Server(SessionMoves, Broadcasting):
    """The server object given to the application's hooks (``app.py``).

    Its migration methods are in ``api_moves.py`` and its broadcast methods in
    ``api_broadcast.py``; it is one object for the application.
    """

    def __init__(self, runtime: ChildContext) -> None:
        self._rt = runtime
        self._pid = os.getpid()  # made in the child it serves
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

    def log_failure(self, event: str, exc: BaseException, **fields: Any) -> None:
        """Log a failure of application code, rate-limited: one trace per place, then summaries."""
        self._rt.log_failure(event, exc, **fields)

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
        code, owner = self._rt.table.push_error(session)
        if code is not ErrorCode.OK:
            return self._push_failed(session, code)
        if owner == self._pid:
            code = self._rt.deliver(msg.Push(session, data), local=True)
            if code is not ErrorCode.OK:
                self.last_error = code  # counted by deliver()
                return False
        elif not self._rt.mover.send_to_owner(owner, msg.Push(session, data)):
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
        _refuse(close_problem(int(code), reason, client=False))
        info = self._rt.table.get_client_info(session)
        if info is None:
            lookup = self._rt.table.lookup(session)
            self.last_error = (
                ErrorCode.SESSION_CLOSED if lookup is not None else ErrorCode.SESSION_NOT_EXIST
            )
            return False
        if info.owner_pid == os.getpid():
            result = self._rt.deliver(msg.Close(session, int(code), reason, last_message), local=True)
            if result is not ErrorCode.OK:
                self.last_error = result
                return False
        elif not self._rt.mover.send_to_owner(info.owner_pid, msg.Close(session, int(code), reason, last_message)):
            self._rt.counters["ipc_send_failed"] += 1
            self.last_error = ErrorCode.OWNER_UNREACHABLE
            return False
        self._rt.counters["closes_requested"] += 1
        self.last_error = ErrorCode.OK
        return True

    def _owner_op(self, session: int, op: type[msg.Protect | msg.Bind | msg.Group], value: Any) -> bool:
        info = self._rt.table.get_client_info(session)
        if info is None:
            self.last_error = ErrorCode.SESSION_NOT_EXIST
            return False
        if info.owner_pid == os.getpid():
            self._rt.deliver(op(session, value), local=True)
        elif not self._rt.mover.send_to_owner(info.owner_pid, op(session, value)):
            self.last_error = ErrorCode.OWNER_UNREACHABLE
            return False
        self.last_error = ErrorCode.OK
        return True

    def protect(self, session: int, protected: bool = True) -> bool:
        """Exempt a session from the heartbeat (or undo it)."""
        return self._owner_op(session, msg.Protect, bool(protected))

    def bind(self, session: int, uid: int) -> bool:
        """Attach an application user id to a session (shown in ``get_client_info``)."""
        _refuse(int64_problem("uid", uid))
        return self._owner_op(session, msg.Bind, int(uid))

    def set_group(self, session: int, group: int) -> bool:
        """Put a session in an application group (a room, say): see :meth:`affinity`."""
        _refuse(int64_problem("group", group))
        return self._owner_op(session, msg.Group, int(group))

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
        return self._rt.links.send(entry.pid, msg.Pipe(self.name, data))

    async def request(self, dst: str, data: Any, timeout: float = 5.0) -> Any:
        """Ask the process named ``dst``: its ``on_request`` hook's return value."""
        entry = self._resolve(dst)
        if entry is None:
            raise ServerError(ErrorCode.UNKNOWN_PROCESS, f"no running process named {dst!r}")
        return await self._rt.call(entry.pid, "app_request", (self.name, data), timeout)

    def _resolve(self, dst: str) -> ProcEntry | None:
        """The process named ``dst``: the running one, the newest while a reload runs."""
        found = None
        for entry in self._rt.procs.entries():
            if entry.name != dst or entry.state is ProcState.EMPTY:
                continue
            rank = (entry.state is ProcState.READY, entry.generation)
            if found is None or rank > (found.state is ProcState.READY, found.generation):
                found = entry
        self.last_error = ErrorCode.OK if found is not None else ErrorCode.UNKNOWN_PROCESS
        return found

    async def gather_stats(self, timeout: float = 1.0) -> list[dict[str, Any]]:
        """Each running process's own stats, collected over IPC."""
        return await self._rt.gather_stats(timeout)

    # -- timers -----------------------------------------------------------------

    def tick(
        self, ms: float, callback: Callable[..., Any], *args: Any, label: str = "", first_ms: float | None = None
    ) -> int:
        """Call ``callback(timer_id, *args)`` every ``ms`` milliseconds in this process.

        ``first_ms``: the first call comes after this many ms (0: at once) instead of ``ms``;
        a timer that moved with its session keeps its phase this way (see :meth:`timer_due`).
        """
        return self._rt.timers.tick(ms, callback, *args, label=label, first_ms=first_ms)

    def timer_due(self, timer_id: int) -> float | None:
        """When this process's timer fires next, as a ``time.monotonic()`` value (the same clock
        in every process of the machine), or None if it does not exist."""
        return self._rt.timers.due(timer_id)

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
        self._rt.ctl_send(msg.Shutdown())

    def reload(self, *, task_workers_only: bool = False) -> bool:
        """Ask the master for a reload (Swoole's ``reload()``); False if the master is gone.

        Workers and task workers (and reloadable custom processes) are
        replaced by a new generation, or task workers only. A request while
        a reload runs is merged into it. Use :meth:`reload_async` to learn
        which reload it started or joined, or to wait for its end.
        """
        scope = "task_workers" if task_workers_only else "all"
        self._rt.ctl_send(msg.Call(0, "reload", {"scope": scope, "source": self.name}))
        return not self._rt.stopping.is_set()

    async def reload_async(
        self, *, task_workers_only: bool = False, wait: bool = False, timeout: float = 60.0
    ) -> dict[str, Any]:
        """Request a reload; return its record (``reload``, ``merged``, ``generation``, ``state``...).

        With ``wait``, return once it is done (every old process gone). Do not
        wait from a process the reload replaces: it is gone before the end.
        """
        scope = "task_workers" if task_workers_only else "all"
        args = {"scope": scope, "source": self.name, "wait": wait}
        return await self._rt.master_call("reload", args, timeout)

    async def broadcaster_outages(self) -> list[dict[str, Any]]:
        """Outages of broadcasters that died (the master keeps them; contract 13.5)."""
        return await self._rt.master_call("broadcast_outages", None, 5.0)

    async def reload_status(self) -> dict[str, Any]:
        """The running reload, the last ones, the counters and the newest generation."""
        return await self._rt.master_call("reload_status", None, 5.0)

    # -- listening ports (the master holds every listener; see master/listeners.py) ------------

    async def listen(
        self,
        port: int,
        host: str | None = None,
        *,
        reuse_port: bool = False,
        on_remove: str = "keep",
        max_connections: int = 0,
        handler: str = "default",
        backlog: int = 0,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Listen on ``port`` (0: a free one) from now on; the listener's record.

        When this returns, the port accepts connections. ``on_remove``: what
        ``unlisten`` does to the sessions that came in through this port
        (``keep`` them, or ``close`` them with 1001). ``max_connections``: a
        limit for this port alone (0: none); over it, a connection's
        handshake is answered 503 ``PORT_LIMIT``. ``handler``: the handler
        set its sessions serve (``Application.handler_sets``).

        Raises ``ServerError``: ``PORT_IN_USE`` (EADDRINUSE),
        ``PORT_PRIVILEGED`` (EACCES), ``BAD_ADDRESS``, ``ALREADY_LISTENING``,
        ``HANDLER_UNKNOWN``, ``BAD_REQUEST``; nothing changes then.
        """
        args: dict[str, Any] = {
            "port": port, "reuse_port": reuse_port, "on_remove": on_remove,
            "max_connections": max_connections, "handler": handler, "backlog": backlog,
        }
        if host is not None:
            args["host"] = host
        return await self._rt.master_call("listen", args, timeout)

    async def unlisten(self, port: int, *, on_remove: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """Stop listening on ``port``; when this returns the port is released.

        New connections are refused, another process can bind it, what was
        in its backlog was served (or answered 503 under ``close``).
        ``on_remove`` overrides the listener's policy for this removal.
        Raises ``ServerError`` ``NOT_LISTENING`` for a port it does not hold.
        """
        args: dict[str, Any] = {"port": port}
        if on_remove is not None:
            args["on_remove"] = on_remove
        return await self._rt.master_call("unlisten", args, timeout)

    async def listeners(self) -> dict[str, Any]:
        """``{"listeners": [...], "removed": [...], "orphans": {...}}`` with per-port figures."""
        return await self._rt.master_call("listeners", None, 5.0)

    async def ports_file(self, *, apply: bool = False) -> dict[str, Any]:
        """The ports file's status; with ``apply``, read and apply it now (its report)."""
        return await self._rt.master_call("ports_file_apply" if apply else "ports_file", None, 5.0)

    def handler_name(self, session: int) -> str | None:
        """The handler set ``session`` serves (that of the port it came in through)."""
        info = self._rt.table.lookup(session)
        if info is None or info.handler >= len(self._rt.handler_names):
            return None
        return self._rt.handler_names[info.handler]

    def worker_pids(self) -> dict[str, int]:
        return {e.name: e.pid for e in self._rt.procs.entries() if e.kind is ProcKind.WORKER}


def _refuse(problem: str | None) -> None:
    """A bad argument (``core/limits.py`` named the problem): BAD_REQUEST before anything is done."""
    if problem is not None:
        raise ServerError(ErrorCode.BAD_REQUEST, problem)
