"""The master's listening sockets: opened and closed at run time, and the ports file.

Every WebSocket listener lives in the master (PROCESS mode): workers never
hold a listening socket, so a reload, a crash or a respawn of a worker does
not touch any port, and ports added at run time survive reloads as they are.
Any process asks the master over ctl (``listen``, ``unlisten``,
``listeners``, ``ports_file``, ``ports_file_apply``); the admin API is one of
those processes. The books and the rules are ``core/ports.py``.

``listen`` binds and listens before it answers, so a connection attempt
that starts after the answer is served. Errors name the port and the cause
(``PORT_IN_USE``/``EADDRINUSE``, ``PORT_PRIVILEGED``/``EACCES``,
``BAD_ADDRESS``, ``ALREADY_LISTENING``...), and change nothing.

``unlisten`` releases the port before it answers:

1. the socket leaves the master's selector;
2. every connection already in its backlog is accepted and handed to a
   worker: served like any other under policy ``keep``, answered with an HTTP
   503 (``PORT_REMOVED``) under policy ``close``, never left hanging;
3. the socket is closed, in the same step of the master's loop. From then on
   a connection attempt is refused (``ECONNREFUSED``) and another process can
   bind the port (with ``SO_REUSEADDR``, as servers do, if sessions of the
   port are still open or in ``TIME_WAIT``: that is the kernel's rule).
   A connection whose TCP handshake completes in the microseconds between
   the last accept of step 2 and the close is reset by the kernel: the client
   sees ``ECONNRESET`` at once. This is also what spares ``SO_REUSEPORT``
   listeners the known failure (queued connections reset on close): the
   queue is emptied first;
4. under policy ``close``, every session that came in through the port is
   closed with 1001, by its owner (routed like any ``close``).

The ports file (``--ports-file``) is polled every ``--ports-file-poll-ms``
(its size, mtime and inode); a change is applied at once: the file's
listeners are made to match its ``[[listen]]`` entries (removals first), each
rejected entry is reported (log ``ports_file.rejected``, ``GET
/v1/ports-file``), the rest applied. A file that is not valid TOML changes
nothing. A file that disappears changes nothing either (write an empty file
to remove every file port). Write it atomically (a rename) so that a
half-written file is never read; a half-written file is reported as invalid
and applied once it is complete.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..config import Config
from ..core.ports import (
    ListenSpec,
    OnRemove,
    PortBook,
    PortError,
    PortsFileError,
    RefusalReason,
    Rejected,
    already_listening,
    bind_error,
    parse_ports_file,
    parse_spec,
    plan_ports,
)
from ..errors import ErrorCode
from ..logs import Log

#: dispatch(conn, addr, port, refusal): hand an accepted connection to a worker.
Dispatch = Callable[[socket.socket, Any, int, "RefusalReason | None"], None]
#: close_sessions(session ids, port): close each with 1001, at its owner.
CloseSessions = Callable[[list[int], int], None]


def open_listener(host: str, port: int, backlog: int, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking, non-inheritable listening socket (errors: :class:`PortError`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise bind_error(exc, host, port) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, host, port) from None
    sock.setblocking(False)
    sock.set_inheritable(False)
    return sock


@dataclass
class FileStatus:
    """What the last look at the ports file found and did."""

    path: str
    revision: int = 0  # applications of a changed file (valid or not)
    signature: tuple = ()
    sha256: str = ""
    applied_at: float = 0.0
    report: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "revision": self.revision, "sha256": self.sha256, "applied_at": self.applied_at,
                "last": self.report}


class ListenerSet:
    """The listeners of the master; ``dispatch`` and ``close_sessions`` are the master's."""

    def __init__(
        self,
        config: Config,
        selector: selectors.BaseSelector,
        log: Log,
        handlers: list[str],
        dispatch: Dispatch,
        close_sessions: CloseSessions,
    ) -> None:
        self.config = config
        self.selector = selector
        self.log = log
        self.handlers = handlers
        self._handler_ids = {name: i for i, name in enumerate(handlers)}
        self._dispatch = dispatch
        self._close_sessions = close_sessions
        self.book = PortBook()
        self.sockets: dict[int, socket.socket] = {}
        self.reserved: dict[int, str] = {}  # other ports of this server (admin, broker)
        self.registered = False  # sockets are in the selector (the loop runs)
        self.file = FileStatus(config.ports_file) if config.ports_file else None
        self.next_poll = 0.0

    # -- queries ------------------------------------------------------------------------

    def handler_id(self, port: int) -> int:
        listener = self.book.listeners.get(port)
        return self._handler_ids[listener.spec.handler] if listener is not None else 0

    def snapshot(self) -> dict[str, Any]:
        return self.book.snapshot()

    @property
    def main_port(self) -> int:
        return next(iter(self.sockets), 0)

    # -- listen / unlisten -----------------------------------------------------------------

    def parse(self, raw: Any, *, allow_ephemeral: bool = True) -> ListenSpec:
        return parse_spec(raw, default_host=self.config.host, handlers=self.handlers, allow_ephemeral=allow_ephemeral)

    def listen(self, spec: ListenSpec, source: str) -> dict[str, Any]:
        """Bind, listen, start accepting; the listener's record (errors: :class:`PortError`)."""
        if spec.port in self.book.listeners:
            raise already_listening(spec.port, self.book.listeners[spec.port])
        if spec.port in self.reserved:
            raise PortError(
                ErrorCode.PORT_IN_USE,
                spec.port,
                f"cannot listen on {spec.host}:{spec.port}: address already in use (EADDRINUSE): "
                f"it is this server's {self.reserved[spec.port]} port",
            )
        sock = open_listener(spec.host, spec.port, spec.backlog or self.config.backlog, reuse_port=spec.reuse_port)
        port = sock.getsockname()[1]  # the kernel's choice for port 0 is never one we hold
        spec = replace(spec, port=port)
        self.sockets[port] = sock
        listener = self.book.add(spec, source, time.time())
        if self.registered:
            self.selector.register(sock, selectors.EVENT_READ, ("listen", port))
        self.log.info("port.listen", port=port, host=spec.host, source=source, reuse_port=spec.reuse_port,
                      on_remove=spec.on_remove.value, max_connections=spec.max_connections, handler=spec.handler)
        return listener.as_dict()

    def unlisten(self, port: Any, on_remove: OnRemove | None = None, *, reason: str = "") -> dict[str, Any]:
        """Stop listening on ``port`` now (see the module docstring for the exact steps)."""
        listener = self.book.get(port)
        policy = on_remove or listener.spec.on_remove
        sock = self.sockets.pop(port)
        if self.registered:
            self.selector.unregister(sock)
        drained = self._drain(sock, port, policy, listener.spec.backlog or self.config.backlog)
        self._close_socket(sock)
        listener = self.book.remove(port, time.time())
        listener.drained = drained
        closing = self.book.sessions_of(listener) if policy is OnRemove.CLOSE else []
        if closing:
            self._close_sessions(closing, port)
        self.log.info("port.unlisten", port=port, policy=policy.value, drained=drained, closing=len(closing),
                      sessions_kept=0 if closing else listener.live, reason=reason or None)
        return {**listener.as_dict(), "policy": policy.value, "closing": len(closing)}

    def _drain(self, sock: socket.socket, port: int, policy: OnRemove, backlog: int) -> int:
        """Accept what is in the backlog: served (keep) or answered 503 (close).

        At most ``backlog + 1`` connections (what the queue can hold): under a
        flood of new ones the drain still ends, and the rest are reset by the close.
        """
        drained = 0
        refusal = RefusalReason.REMOVED if policy is OnRemove.CLOSE else None
        while drained <= backlog:
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return drained
            except OSError as exc:
                self.log.warning("accept.failed", port=port, error=repr(exc))
                return drained
            drained += 1
            self._dispatch(conn, addr, port, refusal if refusal is not None else self.book.admit(port))
        return drained

    def _close_socket(self, sock: socket.socket) -> None:
        """Release a listening socket (one place, so that a broken variant can keep it bound)."""
        sock.close()

    # -- life cycle ----------------------------------------------------------------------

    def register(self) -> None:
        for port, sock in self.sockets.items():
            self.selector.register(sock, selectors.EVENT_READ, ("listen", port))
            self.log.info("server.listening", host=self.book.listeners[port].spec.host, port=port)
        self.registered = True

    def close_all(self) -> None:
        """Shutdown: stop accepting on every port (nothing is drained: workers are stopping)."""
        for port, sock in list(self.sockets.items()):
            if self.registered:
                self.selector.unregister(sock)
            sock.close()
            del self.sockets[port]

    def close_in_child(self) -> None:
        for sock in self.sockets.values():
            sock.close()

    # -- the ports file --------------------------------------------------------------------

    def poll_file(self, now: float) -> dict[str, Any] | None:
        """Apply the ports file if it changed since the last look (called by the master's loop)."""
        if self.file is None or now < self.next_poll:
            return None
        self.next_poll = now + self.config.ports_file_poll_ms / 1000.0
        try:
            st = os.stat(self.file.path)
        except FileNotFoundError:
            if self.file.signature != ("missing",):
                self.file.signature = ("missing",)
                self.log.warning("ports_file.missing", path=self.file.path,
                                 hint="listeners are kept; write an empty file to remove every file port")
            return None
        except OSError as exc:
            self.log.warning("ports_file.unreadable", path=self.file.path, error=repr(exc))
            return None
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self.file.signature:
            return None
        self.file.signature = signature
        return self.apply_file()

    def apply_file(self) -> dict[str, Any]:
        """Read the ports file and make the file's listeners match it; the report."""
        assert self.file is not None
        self.file.revision += 1
        report: dict[str, Any] = {"revision": self.file.revision, "added": [], "removed": [], "updated": [],
                                  "rebound": [], "kept": [], "rejected": [], "error": None}
        try:
            with open(self.file.path, "rb") as f:
                raw = f.read()
            self.file.sha256 = hashlib.sha256(raw).hexdigest()
            wanted = parse_ports_file(raw.decode("utf-8"), default_host=self.config.host, handlers=self.handlers)
        except (OSError, UnicodeDecodeError, PortsFileError) as exc:
            report["error"] = {"code": int(ErrorCode.BAD_REQUEST), "name": ErrorCode.BAD_REQUEST.name,
                              "message": f"{self.file.path}: {exc}; nothing applied"}
            self.log.warning("ports_file.invalid", path=self.file.path, error=str(exc))
            return self._finish_file(report)
        plan = plan_ports(wanted.specs, self.book.listeners, wanted.entry_of)
        rejected: list[Rejected] = [*wanted.rejected, *plan.rejected]
        for port in plan.remove:
            self.unlisten(port, reason="ports file")
            report["removed"].append(port)
        for spec in plan.rebind:
            self.unlisten(spec.port, reason="ports file: new socket settings")
            if self._file_listen(spec, rejected, wanted.entry_of):
                report["rebound"].append(spec.port)
        for spec in plan.update:
            self.book.update(spec)
            report["updated"].append(spec.port)
        for spec in plan.add:
            if self._file_listen(spec, rejected, wanted.entry_of):
                report["added"].append(spec.port)
        report["kept"] = plan.keep
        report["rejected"] = [r.as_dict() for r in rejected]
        for r in rejected:
            self.log.warning("ports_file.rejected", path=self.file.path, entry=r.entry, port=r.port, code=int(r.code),
                             error=r.code.name, message=r.message)
        return self._finish_file(report)

    def _file_listen(self, spec: ListenSpec, rejected: list[Rejected], entry_of: dict[int, int]) -> bool:
        try:
            self.listen(spec, "file")
            return True
        except PortError as exc:
            rejected.append(exc.as_rejected(entry_of.get(spec.port)))
            return False

    def _finish_file(self, report: dict[str, Any]) -> dict[str, Any]:
        assert self.file is not None
        self.file.applied_at = time.time()
        self.file.report = report
        self.log.info("ports_file.applied", path=self.file.path, revision=report["revision"],
                      added=report["added"], removed=report["removed"], updated=report["updated"],
                      rebound=report["rebound"], rejected=len(report["rejected"]), invalid=report["error"] is not None)
        return report

    def file_status(self) -> dict[str, Any]:
        if self.file is None:
            raise PortError(ErrorCode.UNSUPPORTED, None, "no ports file: start the server with --ports-file PATH")
        return self.file.as_dict()
