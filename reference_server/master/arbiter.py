"""The master (arbiter): supervises every child and accepts every connection.

One synchronous loop, no threads, so that forking is always safe:

* Signals are queued by their handlers and handled in the loop, one at a time
  (SIGTERM/SIGINT: graceful shutdown; SIGCHLD: reap and respawn; SIGUSR1:
  reload workers and task workers; SIGUSR2: reload task workers only).
* Listening sockets live only here (``listeners.py``: ports are added and
  removed at run time, from any process, the admin API or the ports file).
  An accepted connection is given a session id in the shared table and handed
  to a worker over its ctl channel with SCM_RIGHTS, with the handler set of
  its port, or with a refusal (its port's connection limit is reached) that
  the worker answers with an HTTP 503; the master then closes its own copy,
  so the worker owns it alone.
* A child that exits while the server runs is logged with its cause (exit
  status or signal) and replaced at once; the sessions a dead worker owned are
  released from the table and counted as lost. A child that keeps crashing
  within a second of its start is respawned with a growing delay (up to 5 s).
* Reload (``core/reloads.py`` keeps the books): each process in scope gets a
  successor of the new generation in its slot. When the successor is ready,
  the old process is *retired*: marked stopping in the process directory (no
  new connections, tasks or sessions reach it), told ``retire``; it runs its
  exit hook, hands its sessions to the new generation, finishes its work and
  exits. One still alive ``max_wait_ms`` after its retirement is killed, with
  a warning. A request while a reload runs is merged into it. Custom
  processes are replaced only if declared reloadable, old first (no overlap).
* Children may call the master over ctl (``("call", token, method, args)``,
  answered with ``("reply", token, ok, value)``): ``reload``,
  ``reload_status``, ``listen``, ``unlisten``, ``listeners``, ``ports_file``,
  ``ports_file_apply``.
* Shutdown: stop accepting, tell every child to stop (workers send 1001 to
  their clients and wait up to ``close_timeout``), wait up to
  ``shutdown_timeout``, kill what is left, exit.
"""

from __future__ import annotations

import collections
import mmap
import os
import secrets
import selectors
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..app import Application, ProcessSpec
from ..child.boot import ChildBoot
from ..child.runtime import child_main
from ..config import Config
from ..core.ports import OnRemove, PortError, RefusalReason
from ..core.proctable import ProcKind, ProcState, ProcTable, proctable_size
from ..core.registry import SessionTable, TableFull, TornRecord, table_size
from ..core.reloads import ReloadBook, ReloadScope, ReloadState, Ticket
from ..errors import ErrorCode, ExitCode
from ..ipc import links as ipc
from ..ipc import messages as msg
from ..logs import Log
from .listeners import ListenerSet, open_listener

# master stats block: accepted, refused, respawns, sessions_lost, started_at, ready
_MSTATS = struct.Struct("<QQQQdB")
MSTATS_SIZE = 64


class BindError(OSError):
    """A listening socket could not be opened; the message names address and cause."""


def bind_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket at start-up (errors: :class:`BindError`, naming address and cause)."""
    try:
        return open_listener(host, port, backlog)
    except PortError as exc:
        raise BindError(int(exc.code), exc.message) from None


#: The refusal a worker sends as the HTTP 503 answer to a connection's handshake.
_REFUSALS = {
    RefusalReason.LIMIT: (ErrorCode.PORT_LIMIT, "port {port} is at its limit of {limit} connections"),
    RefusalReason.REMOVED: (ErrorCode.PORT_REMOVED, "port {port} was removed"),
}


class SharedState:
    """The one shared mapping: process directory, master stats, session table."""

    def __init__(self, capacity: int) -> None:
        self.size = proctable_size() + MSTATS_SIZE + table_size(capacity)
        self.mem = mmap.mmap(-1, self.size, flags=mmap.MAP_SHARED)
        view = memoryview(self.mem)
        p = proctable_size()
        self.procs = ProcTable(view[:p])
        self._mstats = view[p : p + MSTATS_SIZE]
        self.table = SessionTable(view[p + MSTATS_SIZE :], capacity, create=True)

    def write_master_stats(self, accepted, refused, respawns, lost, started, ready) -> None:
        _MSTATS.pack_into(self._mstats, 0, accepted, refused, respawns, lost, started, ready)

    def master_stats(self) -> dict[str, object]:
        a, r, s, lost, started, ready = _MSTATS.unpack_from(self._mstats, 0)
        return {
            "connections_accepted": a,
            "connections_refused": r,
            "respawns": s,
            "sessions_lost": lost,
            "started_at": started,
            "ready": bool(ready),
        }


@dataclass
class Child:
    pid: int
    kind: ProcKind
    index: int
    name: str
    ctl: socket.socket
    started: float
    spec: ProcessSpec | None = None
    ready: bool = False
    # (message bytes, connection or None, session id or None) waiting for room
    pending: collections.deque = field(default_factory=collections.deque)


@dataclass(eq=False)
class Slot:
    """A place for one child; survives the child's respawns and reloads."""

    kind: ProcKind
    index: int
    name: str
    spec: ProcessSpec | None = None
    extra_socket: socket.socket | None = None
    quick_crashes: int = 0
    respawn_at: float = 0.0
    generation: int = 1

    @property
    def reloadable(self) -> bool:
        if self.kind in (ProcKind.WORKER, ProcKind.TASK):
            return True
        return self.kind is ProcKind.CUSTOM and self.spec is not None and self.spec.reloadable


@dataclass(eq=False)
class Retiree:
    """An old-generation process on its way out during reload ``reload_id``."""

    child: Child
    slot: Slot
    reload_id: int
    waiting: bool = True  # for its successor to be ready (it still serves meanwhile)
    deadline: float = 0.0  # killed after this (monotonic), once retired
    killed: bool = False


class Master:
    def __init__(self, config: Config, app: Application, log: Log) -> None:
        self.config = config
        self.app = app
        self.log = log
        self.token = secrets.token_hex(8)
        self.shared = SharedState(config.max_connections)
        self.table = self.shared.table
        self.procs = self.shared.procs
        self.selector = selectors.DefaultSelector()
        self.handlers = [name for name, _ in app.handler_table()]
        self.ports = ListenerSet(config, self.selector, log, self.handlers, self._dispatch, self._close_port_sessions)
        self.children: dict[int, Child] = {}
        self.slots: list[Slot] = []
        self._slot_of: dict[int, Slot] = {}
        self.broker_url = config.redis_url
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = ExitCode.OK
        self._signals: collections.deque[int] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        self._rr = 0
        self._accepted = self._refused = self._respawns = self._lost = 0
        self._started = time.time()
        self._announced_ready = False
        self.reloads = ReloadBook()
        self.retiring: dict[int, Retiree] = {}
        self._reload_waiters: dict[int, list[tuple[int, int, bool]]] = {}  # reload id -> [(pid, token, merged)]

    # -- start-up -----------------------------------------------------------------

    def bind(self) -> None:
        """Open every listening socket before anything forks (errors: BindError)."""
        cfg = self.config
        try:
            self.ports.listen(self.ports.parse({"port": cfg.port}), "config")
        except PortError as exc:
            raise BindError(int(exc.code), exc.message) from None
        if cfg.admin_port:
            admin = bind_listener(cfg.admin_host, cfg.admin_port, 128)
            self.ports.reserved[admin.getsockname()[1]] = "admin API"
            self.slots.append(Slot(ProcKind.ADMIN, 0, "admin", extra_socket=admin))
        if not cfg.redis_url and cfg.embedded_broker:
            broker = bind_listener("127.0.0.1", 0, 128)
            self.ports.reserved[broker.getsockname()[1]] = "embedded broker"
            self.broker_url = f"redis://127.0.0.1:{broker.getsockname()[1]}/0"
            self.slots.insert(0, Slot(ProcKind.BROKER, 0, "broker", extra_socket=broker))
        if self.broker_url and cfg.broadcast_mode != "off":
            self.slots.append(Slot(ProcKind.BROADCASTER, 0, "broadcaster"))
        if cfg.ports_file:  # its entries are applied before anything forks; rejected ones are reported
            self.ports.poll_file(time.monotonic())
        for i in range(cfg.workers):
            self.slots.append(Slot(ProcKind.WORKER, i, f"worker-{i}"))
        for i in range(cfg.task_workers):
            self.slots.append(Slot(ProcKind.TASK, i, f"task-{i}"))
        for i, spec in enumerate(self.app.processes):
            self.slots.append(Slot(ProcKind.CUSTOM, i, f"custom-{spec.name}", spec=spec))

    @property
    def port(self) -> int:
        return self.ports.main_port

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, self._queue_signal)
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self.ports.register()
        self.log.info(
            "server.start",
            workers=self.config.workers,
            task_workers=self.config.task_workers,
            broker=self.broker_url or "none",
            admin_port=self.config.admin_port or None,
        )
        for slot in self.slots:
            self._spawn(slot)
        try:
            while self.children or not self.stopping:
                self._loop_once()
        finally:
            self._close_everything()
        self.log.info("server.stop", code=int(self.exit_code))
        return int(self.exit_code)

    # -- the loop --------------------------------------------------------------------

    def _loop_once(self) -> None:
        timeout = 0.5
        now = time.monotonic()
        if self.stopping:
            timeout = max(0.0, min(timeout, self.stop_deadline - now))
        waiting = [s.respawn_at for s in self.slots if s.respawn_at]
        waiting += [r.deadline for r in self.retiring.values() if r.deadline and not r.killed]
        if self.ports.file is not None and not self.stopping:
            waiting.append(self.ports.next_poll)
        if waiting:
            timeout = max(0.0, min(timeout, min(waiting) - now))
        for key, mask in self.selector.select(timeout):
            what, data = key.data
            if what == "listen":
                if self.ports.sockets.get(data) is key.fileobj:  # not removed earlier in this batch
                    self._accept(key.fileobj, data)
            elif what == "ctl":
                if mask & selectors.EVENT_READ:
                    self._read_ctl(data)
                if mask & selectors.EVENT_WRITE:
                    self._flush_pending(data)
            elif what == "wake":
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
        while self._signals:
            self._handle_signal(self._signals.popleft())
        self._reap()
        now = time.monotonic()
        for slot in self.slots:
            if slot.respawn_at and now >= slot.respawn_at and not self.stopping:
                slot.respawn_at = 0.0
                self._spawn(slot)
        self._kill_overdue(now)
        if not self.stopping:
            self.ports.poll_file(now)
        if self.stopping and now >= self.stop_deadline and self.children:
            for child in self.children.values():
                self.log.warning("process.kill", name=child.name, pid=child.pid, reason="shutdown timeout")
                try:
                    os.kill(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.stop_deadline = now + 5.0
        self._publish_stats()

    def _queue_signal(self, signum: int, frame) -> None:
        self._signals.append(signum)

    def _handle_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.begin_shutdown(signal.Signals(signum).name)
        elif signum == signal.SIGUSR1:
            self.request_reload(ReloadScope.ALL, "SIGUSR1")
        elif signum == signal.SIGUSR2:
            self.request_reload(ReloadScope.TASK_WORKERS, "SIGUSR2")
        elif signum == signal.SIGHUP:
            self.log.info("signal.ignored", signal="SIGHUP", hint="reload with SIGUSR1 (all) or SIGUSR2 (task workers)")

    def begin_shutdown(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.shutdown_timeout_ms / 1000.0
        self.log.info("server.shutdown", reason=reason, timeout_ms=self.config.shutdown_timeout_ms)
        self.ports.close_all()
        # Workers first get the order; the broker is told too but may outlive them briefly.
        for child in list(self.children.values()):
            self._send_ctl(child, msg.Stop(reason))

    # -- accepting --------------------------------------------------------------------

    def _accept(self, lsock: socket.socket, port: int) -> None:
        for _ in range(64):
            try:
                conn, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("accept.failed", port=port, error=repr(exc))
                return
            self._dispatch(conn, addr, port, self.ports.book.admit(port))

    def _pick_worker(self) -> Child | None:
        ready = sorted(
            (
                c
                for c in self.children.values()
                if c.kind is ProcKind.WORKER and c.ready and not self._retired(c.pid)
            ),
            key=lambda c: c.index,
        )
        if not ready:
            return None
        self._rr += 1
        return ready[self._rr % len(ready)]

    def _dispatch(self, conn: socket.socket, addr, port: int, refusal: RefusalReason | None = None) -> None:
        """Hand a connection to a worker: to be served, or (``refusal``) to be answered 503."""
        book = self.ports.book
        worker = self._pick_worker()
        if worker is None:
            self._refused += 1
            book.refused(port, RefusalReason.NO_WORKER)
            self.log.warning("accept.refused", port=port, reason="no worker ready")
            conn.close()
            return
        handler = self.ports.handler_id(port)
        try:
            sid = self.table.allocate(
                worker=worker.index,
                owner_pid=worker.pid,
                remote_addr=addr[0],
                remote_port=addr[1],
                local_port=port,
                now=time.time(),
                handler=handler,
            )
        except TableFull as exc:
            self._refused += 1
            book.refused(port, RefusalReason.TABLE_FULL)
            self.log.warning("accept.refused", port=port, reason=str(exc))
            conn.close()
            return
        refuse = None
        if refusal is not None:
            self._refused += 1
            book.refused(port, refusal)
            code, text = _REFUSALS[refusal]
            listener = book.listeners.get(port)
            limit = listener.spec.max_connections if listener is not None else 0
            refuse = (int(code), text.format(port=port, limit=limit))
            self.log.debug("accept.refused", port=port, reason=refusal.value, sid=sid)
        else:
            self._accepted += 1
            book.opened(sid, port)
        self._send_ctl(worker, msg.Accept(sid, port, handler, refuse), conn)

    def _close_port_sessions(self, sids: list[int], port: int) -> None:
        """Policy ``close`` of a removed port: each session's owner closes it with 1001."""
        by_owner: dict[int, list[int]] = {}
        for sid in sids:
            try:
                info = self.table.get_client_info(sid)
            except TornRecord:  # its writer died mid-write: the owner's death frees it
                self.log.warning("registry.torn_record", sid=sid)
                continue
            if info is not None:
                by_owner.setdefault(info.owner_pid, []).append(sid)
        for pid, owned in by_owner.items():
            child = self.children.get(pid)
            if child is not None:  # one that is gone has lost its sessions already
                self._send_ctl(child, msg.CloseSessions(owned, 1001, f"port {port} was removed"))

    def _free(self, sid: int) -> None:
        self.table.free(sid)
        self.ports.book.closed(sid)

    # -- ctl channels -----------------------------------------------------------------

    def _send_ctl(self, child: Child, message: tuple, conn: socket.socket | None = None) -> None:
        """Send a ctl message (with a connection's fd for :class:`~.messages.Accept`); queue it if full."""
        entry = (ipc.ctl_encode(message), conn, message.sid if isinstance(message, msg.Accept) else None)
        if child.pending or not self._try_send(child, *entry):
            if not child.pending:
                self.selector.modify(
                    child.ctl, selectors.EVENT_READ | selectors.EVENT_WRITE, ("ctl", child.pid)
                )
            child.pending.append(entry)

    def _try_send(self, child: Child, data: bytes, conn: socket.socket | None, sid: int | None) -> bool:
        """True when the message left (or can never leave: the child is gone)."""
        try:
            if conn is not None:
                socket.send_fds(child.ctl, [data], [conn.fileno()])
            else:
                child.ctl.send(data)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            # The child is gone; its SIGCHLD cleans up. An undelivered connection dies here.
            self.log.debug("ctl.send_failed", name=child.name, error=repr(exc))
            if sid is not None:
                self._free(sid)
        if conn is not None:
            conn.close()
        return True

    def _flush_pending(self, pid: int) -> None:
        child = self.children.get(pid)
        if child is None:
            return
        while child.pending:
            if not self._try_send(child, *child.pending[0]):
                return
            child.pending.popleft()
        self.selector.modify(child.ctl, selectors.EVENT_READ, ("ctl", pid))

    def _read_ctl(self, pid: int) -> None:
        child = self.children.get(pid)
        if child is None:
            return
        while True:
            try:
                received = ipc.ctl_recv(child.ctl)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                received = None
            if received is None:  # the child is gone; SIGCHLD does the rest
                try:
                    self.selector.unregister(child.ctl)
                except (KeyError, ValueError):
                    pass
                return
            message, fds = received
            for fd in fds:
                os.close(fd)
            self._on_child_message(child, message)

    def _on_child_message(self, child: Child, message: tuple) -> None:
        """One ctl message from a child, dispatched by its type (``ipc/messages.py``, child -> master)."""
        handler = self._CHILD_MESSAGES.get(type(message))
        if handler is None:
            self.log.warning("ctl.unknown", name=child.name, kind=type(message).__name__)
        else:
            handler(self, child, message)

    def _on_retired(self, child: Child, message: msg.Retired) -> None:
        if isinstance(message.report, dict):
            self.reloads.note_retired(child.pid, message.report)

    _CHILD_MESSAGES: dict[type, Callable[[Master, Child, Any], None]] = {
        msg.Closed: lambda self, child, m: self._free(m.sid),
        msg.Ready: lambda self, child, m: self._on_ready(child),
        msg.Shutdown: lambda self, child, m: self.begin_shutdown(f"requested by {child.name}"),
        msg.Call: lambda self, child, m: self._serve_call(child, m.token, m.method, m.args),
        msg.Retired: lambda self, child, m: self._on_retired(child, m),
    }

    def _on_ready(self, child: Child) -> None:
        child.ready = True
        self.procs.set_state(child.pid, ProcState.READY)
        slot = self._slot_of.get(child.pid)
        if slot is not None and time.monotonic() - child.started > 1.0:
            slot.quick_crashes = 0
        for retiree in list(self.retiring.values()):
            if retiree.waiting and retiree.slot is slot:
                self._retire(retiree)
        if not self._announced_ready and all(c.ready for c in self.children.values()):
            self._announced_ready = True
            self.log.info("server.ready", port=self.port, pid=os.getpid())

    def _serve_call(self, child: Child, token: int, method: str, args: object) -> None:
        """A child's request to the master; answered on its ctl unless ``token`` is 0."""

        def reply(ok: bool, value: object) -> None:
            if token:
                self._send_ctl(child, msg.Reply(token, ok, value))

        if method == "reload":
            if not isinstance(args, dict):
                reply(False, (int(ErrorCode.BAD_REQUEST), "reload arguments must be a dict"))
                return
            try:
                scope = ReloadScope.parse(args.get("scope", "all"))
            except ValueError as exc:
                reply(False, (int(ErrorCode.BAD_REQUEST), str(exc)))
                return
            source = str(args.get("source") or child.name)[:64]
            ticket = self.request_reload(scope, source)
            if ticket is None:
                reply(False, (int(ErrorCode.UNSUPPORTED), "the server is stopping: no reload"))
                return
            answer = {"merged": ticket.merged, **ticket.reload.as_dict()}
            if args.get("wait") and token and ticket.reload.state is ReloadState.RUNNING:
                self._reload_waiters.setdefault(ticket.reload.id, []).append((child.pid, token, ticket.merged))
            else:  # not waiting, or already done (nothing in its scope was running)
                reply(True, answer)
        elif method == "reload_status":
            reply(True, {**self.reloads.status(), "retired": self.reloads.retired_totals()})
        elif method in ("listen", "unlisten", "listeners", "ports_file", "ports_file_apply"):
            try:
                reply(True, self._serve_ports_call(method, args, child))
            except PortError as exc:
                reply(False, (int(exc.code), exc.message))
        else:
            reply(False, (int(ErrorCode.NOT_FOUND), f"unknown master call {method!r}"))

    def _serve_ports_call(self, method: str, args: object, child: Child) -> object:
        """``listen``/``unlisten``/``listeners``/``ports_file``/``ports_file_apply`` (errors: PortError)."""
        if self.stopping and method in ("listen", "unlisten", "ports_file_apply"):
            raise PortError(ErrorCode.UNSUPPORTED, None, "the server is stopping: its ports are closed")
        if method == "listen":
            listener = self.ports.listen(self.ports.parse(args), "api")
            self.log.info("port.requested", by=child.name, port=listener["port"])
            return listener
        if method == "unlisten":
            if not isinstance(args, dict):
                raise PortError(ErrorCode.BAD_REQUEST, None, "unlisten needs an object with 'port'")
            policy = args.get("on_remove")
            try:
                on_remove = OnRemove(policy) if policy is not None else None
            except ValueError:
                raise PortError(
                    ErrorCode.BAD_REQUEST, args.get("port"), f"on_remove {policy!r}: must be 'keep' or 'close'"
                ) from None
            return self.ports.unlisten(args.get("port"), on_remove, reason=f"requested by {child.name}")
        if method == "listeners":
            return self.ports.snapshot()
        if method == "ports_file":
            return self.ports.file_status()
        self.ports.file_status()  # ports_file_apply: raises if there is no ports file
        return self.ports.apply_file()

    # -- reload ----------------------------------------------------------------------------

    def request_reload(self, scope: ReloadScope, source: str) -> Ticket | None:
        """Start a reload of ``scope``, or merge into the one running (None while stopping)."""
        if self.stopping:
            self.log.warning("reload.refused", source=source, reason="the server is stopping")
            return None
        ticket = self.reloads.request(scope, source)
        reload = ticket.reload
        self.log.info(
            "reload.request",
            reload=reload.id,
            source=source,
            scope=scope.value,
            merged=ticket.merged,
            widened=sorted(ticket.widened) if ticket.merged else None,
            generation=reload.generation,
        )
        for slot in self.slots:
            if slot.reloadable and slot.kind.label in ticket.widened:
                self._replace(slot, reload.id, reload.generation)
        self._maybe_finish_reload()
        return ticket

    def _replace(self, slot: Slot, reload_id: int, generation: int) -> None:
        """Give ``slot`` a successor of ``generation``; its current child retires once that is ready."""
        slot.generation = generation
        old = next((c for pid, c in self.children.items() if self._slot_of.get(pid) is slot), None)
        if old is None:  # not running now (a respawn is pending): it restarts in the new generation
            return
        del self._slot_of[old.pid]
        retiree = Retiree(old, slot, reload_id)
        self.retiring[old.pid] = retiree
        reload = self.reloads.current
        if reload is not None:
            reload.replaced.append({"name": slot.name, "old_pid": old.pid, "generation": generation})
        if slot.kind is ProcKind.CUSTOM:
            self._retire(retiree)  # no overlap: its successor starts when it has exited
        else:
            self._spawn(slot)

    def _retired(self, pid: int) -> bool:
        retiree = self.retiring.get(pid)
        return retiree is not None and not retiree.waiting

    def _retire(self, retiree: Retiree) -> None:
        retiree.waiting = False
        max_wait = self.config.max_wait_ms
        retiree.deadline = time.monotonic() + max_wait / 1000.0
        self.procs.set_state(retiree.child.pid, ProcState.STOPPING)
        self.log.info("reload.retire", name=retiree.child.name, pid=retiree.child.pid, reload=retiree.reload_id)
        self._send_ctl(retiree.child, msg.Retire(retiree.reload_id, max_wait))

    def _kill_overdue(self, now: float) -> None:
        for retiree in self.retiring.values():
            if retiree.waiting or retiree.killed or now < retiree.deadline:
                continue
            retiree.killed = True
            self.reloads.note_forced_kill()
            self.log.warning(
                "reload.force_kill",
                name=retiree.child.name,
                pid=retiree.child.pid,
                reload=retiree.reload_id,
                max_wait_ms=self.config.max_wait_ms,
                hint="the old process did not finish in max_wait_ms; its remaining sessions are lost",
            )
            try:
                os.kill(retiree.child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _retiree_exited(self, retiree: Retiree, cause: str, lost: int) -> None:
        reload = self.reloads.find(retiree.reload_id)
        if reload is not None:
            reload.sessions_lost += lost
        log = self.log.warning if lost or retiree.killed else self.log.info
        log("reload.retired", name=retiree.child.name, pid=retiree.child.pid, cause=cause, sessions_lost=lost)
        slot = retiree.slot
        if slot.kind is ProcKind.CUSTOM and not self.stopping and slot.respawn_at == 0.0:
            self._spawn(slot)
        self._maybe_finish_reload()

    def _maybe_finish_reload(self) -> None:
        reload = self.reloads.current
        if reload is None or any(r.reload_id == reload.id for r in self.retiring.values()):
            return
        self.reloads.finish()
        self.log.info(
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
        for pid, token, merged in self._reload_waiters.pop(reload.id, []):
            child = self.children.get(pid)
            if child is not None:
                self._send_ctl(child, msg.Reply(token, True, {"merged": merged, **answer}))

    # -- children ------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        parent_end, child_end = ipc.ctl_pair()
        boot = ChildBoot(
            kind=slot.kind,
            index=slot.index,
            name=slot.name,
            generation=slot.generation,
            config=self.config,
            token=self.token,
            table=self.table,
            procs=self.procs,
            ctl=child_end,
            log=self.log,
            app=self.app,
            master_pid=os.getpid(),
            spec=slot.spec,
            extra_socket=slot.extra_socket,
            broker_url=self.broker_url,
            extras={"master_stats": self.shared.master_stats},
        )
        pid = os.fork()
        if pid == 0:  # child
            try:
                parent_end.close()
                self._close_in_child(keep=slot.extra_socket)
                child_end.setblocking(False)
            except BaseException:
                os._exit(1)
            child_main(boot)  # never returns
        child_end.close()
        parent_end.setblocking(False)
        now = time.monotonic()
        child = Child(pid, slot.kind, slot.index, slot.name, parent_end, now, spec=slot.spec)
        self.children[pid] = child
        self._slot_of[pid] = slot
        self.procs.put(
            kind=slot.kind, index=slot.index, pid=pid, generation=slot.generation, started=time.time(), name=slot.name
        )
        self.selector.register(parent_end, selectors.EVENT_READ, ("ctl", pid))
        self.log.info("process.spawn", name=slot.name, pid=pid, kind=slot.kind.label, generation=slot.generation)

    def _close_in_child(self, keep: socket.socket | None) -> None:
        """In a fresh child: drop every master-owned descriptor it must not hold."""
        signal.set_wakeup_fd(-1)
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.ports.close_in_child()
        for slot in self.slots:
            if slot.extra_socket is not None and slot.extra_socket is not keep:
                slot.extra_socket.close()
        for child in self.children.values():
            child.ctl.close()
            for _, conn, _ in child.pending:
                if conn is not None:
                    conn.close()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._child_exited(pid, status)

    def _child_exited(self, pid: int, status: int) -> None:
        if pid in self.children:
            self._read_ctl(pid)  # its last words (a retirement report) come before its exit
        child = self.children.pop(pid, None)
        slot = self._slot_of.pop(pid, None)
        retiree = self.retiring.pop(pid, None)
        if child is None:
            return
        if os.WIFSIGNALED(status):
            cause = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
            code = -os.WTERMSIG(status)
        else:
            code = os.WEXITSTATUS(status)
            cause = f"exit status {code}"
        try:
            self.selector.unregister(child.ctl)
        except (KeyError, ValueError):
            pass
        for _, conn, sid in child.pending:
            if conn is not None:
                conn.close()
            if sid is not None:
                self._free(sid)
        child.ctl.close()
        self.procs.remove(pid)
        lost = self.table.free_owned_by(pid)
        for sid in lost:
            self.ports.book.closed(sid)
        self._lost += len(lost)
        if retiree is not None:
            self._retiree_exited(retiree, cause, len(lost))
            return
        if self.stopping:
            self.log.info("process.exit", name=child.name, pid=pid, cause=cause)
            return
        self.log.error(
            "process.died",
            name=child.name,
            pid=pid,
            cause=cause,
            sessions_lost=len(lost),
            lived_s=round(time.monotonic() - child.started, 3),
        )
        if slot is None:
            return
        self._respawns += 1
        if time.monotonic() - child.started < 1.0:
            slot.quick_crashes += 1
        else:
            slot.quick_crashes = 0
        if slot.quick_crashes > 3:
            delay = min(5.0, 0.25 * 2 ** (slot.quick_crashes - 3))
            slot.respawn_at = time.monotonic() + delay
            self.log.warning("process.respawn_delayed", name=slot.name, delay_s=delay)
        else:
            self._spawn(slot)

    def _publish_stats(self) -> None:
        self.shared.write_master_stats(
            self._accepted, self._refused, self._respawns, self._lost, self._started, self._announced_ready
        )

    def _close_everything(self) -> None:
        self.ports.close_all()
        for slot in self.slots:
            if slot.extra_socket is not None:
                slot.extra_socket.close()
        signal.set_wakeup_fd(-1)
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

