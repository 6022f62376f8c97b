"""The master (arbiter): supervises every child and accepts every connection.

One synchronous loop, no threads, so that forking is always safe:

* Signals are queued by their handlers and handled in the loop, one at a time
  (SIGTERM/SIGINT: graceful shutdown; SIGCHLD: reap and respawn; SIGUSR1:
  reload workers and task workers; SIGUSR2: reload task workers only).
* Listening sockets live only here (``listeners.py``: ports are added and
  removed at run time, from any process, the admin API or the ports file);
  what is accepted goes to a worker (``acceptor.py``).
* A child that exits while the server runs is logged with its cause (exit
  status or signal) and replaced at once; the sessions a dead worker owned are
  released from the table and counted as lost. A child that keeps crashing
  within a second of its start is respawned with a growing delay (up to 5 s).
* Reload: ``reloader.py`` (the master's steps), ``roles/retiring.py`` (the old
  process's), ``core/reloads.py`` (the books).
* Children may call the master over ctl (``Call``, answered with ``Reply``;
  ``ipc/messages.py``): ``reload``,
  ``reload_status``, ``listen``, ``unlisten``, ``listeners``, ``ports_file``,
  ``ports_file_apply``.
* Shutdown: stop accepting, tell every child to stop (workers send 1001 to
  their clients and wait up to ``close_timeout``), wait up to
  ``shutdown_timeout``, kill what is left, exit.
"""

from __future__ import annotations

import collections
import os
import secrets
import selectors
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from ..app import Application
from ..child.boot import ChildBoot
from ..child.main import child_main
from ..config import Config
from ..core.broadcast import Outage
from ..core.placement import respawn_delay
from ..core.ports import OnRemove, PortError
from ..core.proctable import ProcKind, ProcState, ProcTable
from ..core.registry import SessionTable
from ..core.reloads import ReloadScope
from ..errors import ErrorCode, ExitCode
from ..ipc import links as ipc
from ..ipc import messages as msg
from ..logs import Log
from .acceptor import Acceptor
from .children import Child, SharedState, Slot
from .listeners import ListenerSet, open_listener
from .liveness import Liveness
from .reloader import Reloader


class BindError(OSError):
    """A listening socket could not be opened; the message names address and cause."""


def bind_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket at start-up (errors: :class:`BindError`, naming address and cause)."""
    try:
        return open_listener(host, port, backlog)
    except PortError as exc:
        raise BindError(int(exc.code), exc.message) from None


class Master:
    """The arbiter: one loop over listeners, ctl channels and queued signals."""

    def __init__(self, config: Config, app: Application, log: Log) -> None:
        self.config = config
        self.app = app
        self.log = log
        self.token = secrets.token_hex(8)
        self.shared = SharedState(config.max_connections)
        self.table: SessionTable = self.shared.table
        self.procs: ProcTable = self.shared.procs
        self.selector = selectors.DefaultSelector()
        self.handlers = [name for name, _ in app.handler_table()]
        self.acceptor = Acceptor(self)
        self.reloader = Reloader(self)
        self.liveness: Liveness = Liveness(log, self.send_ctl, self.procs)
        self.ports = ListenerSet(
            config, self.selector, log, self.handlers, self.acceptor.dispatch, self.acceptor.close_port_sessions
        )
        self.acceptor.attach(self.ports)
        self.children: dict[int, Child] = {}
        self.slots: list[Slot] = []
        self._slot_of: dict[int, Slot] = {}
        self.broker_url = config.redis_url
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = ExitCode.OK
        self._signals: collections.deque[int] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        self._respawns = self._lost = 0
        self._started = time.time()
        self._announced_ready = False
        #: Outages of the broadcaster's death (contract 13.5): from the last time it had forwarded
        #: all it heard until its replacement's subscription is confirmed (its Ready).
        self.broadcaster_outages: collections.deque[Outage] = collections.deque(maxlen=50)

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
            self.spawn(slot)
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
        waiting += self.reloader.deadlines()
        ping = self.liveness.deadline(self.children.values())
        if ping is not None and not self.stopping:
            waiting.append(ping)
        if self.ports.file is not None and not self.stopping:
            waiting.append(self.ports.next_poll)
        if waiting:
            timeout = max(0.0, min(timeout, min(waiting) - now))
        for key, mask in self.selector.select(timeout):
            what, data = key.data
            if what == "listen":
                if self.ports.sockets.get(data) is key.fileobj:  # not removed earlier in this batch
                    self.acceptor.accept(key.fileobj, data)
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
                self.spawn(slot)
        self.reloader.kill_overdue(now)
        self.acceptor.tick(now)
        if not self.stopping:
            self.liveness.tick(self.children.values(), now)
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
            self.reloader.request(ReloadScope.ALL, "SIGUSR1")
        elif signum == signal.SIGUSR2:
            self.reloader.request(ReloadScope.TASK_WORKERS, "SIGUSR2")
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
            self.send_ctl(child, msg.Stop(reason))

    # -- what the acceptor and the reloader use -------------------------------------------

    def retired(self, pid: int) -> bool:
        return self.reloader.retired(pid)

    def slot_of(self, pid: int) -> Slot | None:
        return self._slot_of.get(pid)

    def forget_slot(self, pid: int) -> None:
        del self._slot_of[pid]

    def _free(self, sid: int) -> None:
        self.table.free(sid)
        self.ports.book.closed(sid)

    # -- ctl channels -----------------------------------------------------------------

    def send_ctl(self, child: Child, message: tuple, conn: socket.socket | None = None) -> None:
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
            self.reloader.book.note_retired(child.pid, message.report)

    _CHILD_MESSAGES: dict[type, Callable[[Master, Child, Any], None]] = {
        msg.Closed: lambda self, child, m: self._free(m.sid),
        msg.Ready: lambda self, child, m: self._on_ready(child),
        msg.Shutdown: lambda self, child, m: self.begin_shutdown(f"requested by {child.name}"),
        msg.Call: lambda self, child, m: self._serve_call(child, m.token, m.method, m.args),
        msg.Retired: lambda self, child, m: self._on_retired(child, m),
        msg.Load: lambda self, child, m: setattr(child, "full", bool(m.full)),
        msg.Pong: lambda self, child, m: self.liveness.pong(child, time.monotonic()),
    }

    def _on_ready(self, child: Child) -> None:
        child.ready = True
        if child.kind is ProcKind.BROADCASTER:  # its subscription is confirmed: an outage of its death ends
            for outage in self.broadcaster_outages:
                if not outage.end:
                    outage.end = time.time()
        self.procs.set_state(child.pid, ProcState.READY)
        slot = self._slot_of.get(child.pid)
        self.log.info("process.ready", name=child.name, pid=child.pid, generation=slot.generation if slot else None)
        if slot is not None and time.monotonic() - child.started > 1.0:
            slot.quick_crashes = 0
        self.reloader.successor_ready(slot)
        if not self._announced_ready and all(c.ready for c in self.children.values()):
            self._announced_ready = True
            self.log.info("server.ready", port=self.port, pid=os.getpid())

    def _serve_call(self, child: Child, token: int, method: str, args: object) -> None:
        """A child's request to the master; answered on its ctl unless ``token`` is 0."""

        def reply(ok: bool, value: object) -> None:
            if token:
                self.send_ctl(child, msg.Reply(token, ok, value))

        if method == "reload":
            self.reloader.serve_call(child, token, args, reply)
        elif method == "reload_status":
            reply(True, self.reloader.status())
        elif method == "broadcast_outages":
            reply(True, [o.as_dict() for o in self.broadcaster_outages])
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

    # -- children ------------------------------------------------------------------------

    def spawn(self, slot: Slot) -> None:
        parent_end, child_end = ipc.ctl_pair()
        counter_row = self.shared.counters.allocate()
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
            extras={"master_stats": self.shared.master_stats, "broadcast_heard": self.shared.write_heard},
            counters=self.shared.counters,
            counter_row=counter_row,
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
        child = Child(pid, slot.kind, slot.index, slot.name, parent_end, now, spec=slot.spec, counter_row=counter_row)
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
        self.shared.counters.harvest(child.counter_row)  # what it counted still counts (contract 4.2)
        lost = self.table.free_owned_by(pid)
        for sid in lost:
            self.ports.book.closed(sid)
        self._lost += len(lost)
        if self.reloader.exited(pid, cause, len(lost)):
            return
        if self.stopping:
            self.log.info("process.exit", name=child.name, pid=pid, cause=cause)
            return
        if child.kind is ProcKind.BROADCASTER:
            # Nobody hears Redis until a replacement subscribes: what was published since the dead
            # one last had forwarded everything may be lost (pub/sub), so it is an outage.
            heard = self.shared.heard_at()
            start = heard if 0.0 < heard <= time.time() else time.time()
            self.broadcaster_outages.append(Outage(start=start, error=f"broadcaster {cause}", attempts=1))
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
        delay = respawn_delay(slot.quick_crashes)
        if delay:
            slot.respawn_at = time.monotonic() + delay
            self.log.warning("process.respawn_delayed", name=slot.name, delay_s=delay)
        else:
            self.spawn(slot)

    def _publish_stats(self) -> None:
        self.shared.write_master_stats(
            self.acceptor.accepted, self.acceptor.refused, self._respawns, self._lost, self._started, self._announced_ready
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

