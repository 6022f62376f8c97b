"""The application interface: the hooks a server calls, Swoole-style.

Subclass :class:`Application` and override what you need. Each hook receives
the :class:`~reference_server.child.api.Server` of the process it runs in,
whose API has the same meaning in every process. A hook may be a coroutine
function; it is then run as a task (so two messages of one session may be
handled concurrently if the hook awaits).

Which process runs which hook:

============================  ==================================================
``on_worker_start``           every worker and task worker, once started
``on_open`` / ``on_message``  the worker that owns the session
``on_close``                  the worker that owned the session, after release
``on_task``                   a task worker; its return value (if not None)
                              is sent back as if ``finish`` had been called
``on_finish``                 the process that called ``task``
``on_pipe_message``           the process named by ``send_message``
``on_migrate_out``            the worker a session is leaving: stop the
                              session's timers, return their state (picklable)
``on_migrate_in``             the worker a session arrived in, with that
                              state: re-arm them (also called in the source,
                              with the same state, if the move failed)
``on_worker_exit``            a worker or task worker about to stop (shutdown,
                              or retired by a reload), its loop still running:
                              clear your timers here. On a reload, its sessions
                              are handed to the new generation *after* this
                              hook, through ``on_migrate_out``/``on_migrate_in``
                              (keep per-session state for them; timers the
                              hook leaves are cleared with one warning)
``on_worker_stop``            the same process, last thing before it exits
============================  ==================================================

Custom processes (``add_process``) are declared in :attr:`processes`.

Handler sets: a listening port may serve another set of session hooks than
the application's own (Swoole's ``$port->on('message', ...)``). Name them in
:attr:`Application.handler_sets`; ``listen(..., handler="name")`` picks one.
A session keeps the set of the port it came in through for its whole life,
across migrations and reloads, even if the port is removed or re-added with
another set. The application itself is the set named ``"default"``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .core.ports import DEFAULT_HANDLER

if TYPE_CHECKING:
    from websockets.http11 import Request

    from .child.api import Server


@dataclass(frozen=True)
class ProcessSpec:
    """A custom process: ``target(server)`` runs until it returns or the server stops.

    It is respawned if it exits or crashes while the server runs. A reload
    replaces it only if ``reloadable`` (as in Swoole, custom processes are
    not reloaded by default); then the old one stops before its successor
    starts, so two never run at once.
    """

    name: str
    target: Callable[[Server], Awaitable[None]]
    reloadable: bool = False


class HandlerSet:
    """The session hooks a port serves; each runs in the worker that owns the session."""

    def on_open(self, server: Server, session: int, request: Request) -> Any: ...
    def on_message(self, server: Server, session: int, data: str | bytes) -> Any: ...
    def on_close(self, server: Server, session: int, code: int, reason: str) -> Any: ...


class Application(HandlerSet):
    processes: list[ProcessSpec] = []
    #: Other handler sets, by name (``"default"`` is reserved for the application itself).
    handler_sets: dict[str, HandlerSet] = {}

    def handler_table(self) -> list[tuple[str, HandlerSet]]:
        """Every handler set with its number: 0 is the application, then by name.

        The numbers are what the session table stores; they are the same in
        every process because every process has the same application.
        """
        return [(DEFAULT_HANDLER, self), *sorted(
            ((n, h) for n, h in self.handler_sets.items() if n != DEFAULT_HANDLER), key=lambda item: item[0]
        )]

    def on_worker_start(self, server: Server) -> Any: ...
    def on_task(self, server: Server, task_id: int, src_worker: int, data: Any) -> Any: ...
    def on_finish(self, server: Server, task_id: int, data: Any) -> Any: ...
    def on_task_lost(self, server: Server, task_id: int, code: int, message: str) -> Any:
        """Task ``task_id``, submitted by this process, will never finish: its task worker died
        before its result came (``code`` is ``TASK_LOST``). It may have run in part. Called once,
        in the submitting process, instead of ``on_finish``."""
    def on_pipe_message(self, server: Server, src: str, data: Any) -> Any: ...
    def on_request(self, server: Server, src: str, data: Any) -> Any:
        """Answer ``server.request(dst, data)`` from another process (may be async)."""
        from .errors import ErrorCode, ServerError

        raise ServerError(ErrorCode.UNSUPPORTED, "this application answers no requests")

    def on_migrate_out(self, server: Server, session: int) -> Any:
        """The session is about to leave this worker: return its per-session state.

        Called just before the socket is handed over; whatever is returned
        must be picklable and is given to :meth:`on_migrate_in` in the
        worker that receives the session. Stop timers that belong to the
        session here: a timer left behind keeps firing in this process.
        May be a coroutine; the session is frozen only after it returns.
        """
        return None

    def on_migrate_in(self, server: Server, session: int, state: Any) -> Any:
        """The session now lives in this worker, with what ``on_migrate_out`` returned."""

    def on_worker_exit(self, server: Server) -> Any:
        """The process is leaving (a reload replaced it): clear its timers. A worker's sessions
        have already been handed over by then (each with what :meth:`on_migrate_out` returned);
        what is left of this process's own is the application's to clear."""
    def on_worker_stop(self, server: Server) -> Any: ...
    def on_admin(self, server: Server, op: str, body: dict[str, Any]) -> Any:
        """Application-specific admin operations (``POST /v1/app/{op}``).

        Return a JSON-able value, or raise ``ServerError``. The default knows none.
        """
        from .errors import ErrorCode, ServerError

        raise ServerError(ErrorCode.NOT_FOUND, f"unknown application operation {op!r}")
