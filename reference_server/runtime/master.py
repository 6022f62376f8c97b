"""The master (arbiter): supervises every child and accepts every connection.

One synchronous loop, no threads, so that forking is always safe:

* Signals are queued by their handlers and handled in the loop, one at a time
  (SIGTERM/SIGINT: graceful shutdown; SIGCHLD: reap and respawn).
* Listening sockets live only here. An accepted connection is given a session
  id in the shared table and handed to a worker over its ctl channel with
  SCM_RIGHTS; the master then closes its own copy, so the worker owns it alone.
* A child that exits while the server runs is logged with its cause (exit
  status or signal) and replaced at once; the sessions a dead worker owned are
  released from the table and counted as lost. A child that keeps crashing
  within a second of its start is respawned with a growing delay (up to 5 s).
* Shutdown: stop accepting, tell every child to stop (workers send 1001 to
  their clients and wait up to ``close_timeout``), wait up to
  ``shutdown_timeout``, kill what is left, exit.
"""

from __future__ import annotations

import collections
import errno
import mmap
import os
import secrets
import selectors
import signal
import socket
import struct
import time
from dataclasses import dataclass, field

from ..app import Application, ProcessSpec
from ..config import Config
from ..core.proctable import ProcKind, ProcState, ProcTable, proctable_size
from ..core.registry import SessionTable, TableFull, table_size
from ..errors import ExitCode
from . import ipc
from .logs import Log
from .process import ChildBoot, child_main

# master stats block: accepted, refused, respawns, sessions_lost, started_at, ready
_MSTATS = struct.Struct("<QQQQdB")
MSTATS_SIZE = 64


class BindError(OSError):
    """A listening socket could not be opened; the message names address and cause."""


def bind_listener(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        name = errno.errorcode.get(exc.errno or 0, "error")
        raise BindError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror} ({name})") from None
    sock.setblocking(False)
    sock.set_inheritable(False)
    return sock


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


@dataclass
class Slot:
    """A place for one child; survives the child's respawns."""

    kind: ProcKind
    index: int
    name: str
    spec: ProcessSpec | None = None
    extra_socket: socket.socket | None = None
    quick_crashes: int = 0
    respawn_at: float = 0.0


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
        self.listeners: dict[int, socket.socket] = {}  # local port -> socket
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

    # -- start-up -----------------------------------------------------------------

    def bind(self) -> None:
        """Open every listening socket before anything forks (errors: BindError)."""
        cfg = self.config
        ws = bind_listener(cfg.host, cfg.port, cfg.backlog)
        self.listeners[ws.getsockname()[1]] = ws
        if cfg.admin_port:
            admin = bind_listener(cfg.admin_host, cfg.admin_port, 128)
            self.slots.append(Slot(ProcKind.ADMIN, 0, "admin", extra_socket=admin))
        if not cfg.redis_url and cfg.embedded_broker:
            broker = bind_listener("127.0.0.1", 0, 128)
            self.broker_url = f"redis://127.0.0.1:{broker.getsockname()[1]}/0"
            self.slots.insert(0, Slot(ProcKind.BROKER, 0, "broker", extra_socket=broker))
        for i in range(cfg.workers):
            self.slots.append(Slot(ProcKind.WORKER, i, f"worker-{i}"))
        for i in range(cfg.task_workers):
            self.slots.append(Slot(ProcKind.TASK, i, f"task-{i}"))
        for i, spec in enumerate(self.app.processes):
            self.slots.append(Slot(ProcKind.CUSTOM, i, f"custom-{spec.name}", spec=spec))

    @property
    def port(self) -> int:
        return next(iter(self.listeners))

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, self._queue_signal)
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        for port, sock in self.listeners.items():
            self.selector.register(sock, selectors.EVENT_READ, ("listen", port))
            self.log.info("server.listening", host=self.config.host, port=port)
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
        if waiting:
            timeout = max(0.0, min(timeout, min(waiting) - now))
        for key, mask in self.selector.select(timeout):
            what, data = key.data
            if what == "listen":
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
        elif signum == signal.SIGHUP:
            self.log.info("signal.ignored", signal="SIGHUP", hint="reload arrives with a later contract capability")

    def begin_shutdown(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.shutdown_timeout_ms / 1000.0
        self.log.info("server.shutdown", reason=reason, timeout_ms=self.config.shutdown_timeout_ms)
        for port, sock in list(self.listeners.items()):
            self.selector.unregister(sock)
            sock.close()
            del self.listeners[port]
        # Workers first get the order; the broker is told too but may outlive them briefly.
        for child in list(self.children.values()):
            self._send_ctl(child, ("stop", reason))

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
            self._dispatch(conn, addr, port)

    def _pick_worker(self) -> Child | None:
        ready = sorted(
            (c for c in self.children.values() if c.kind is ProcKind.WORKER and c.ready),
            key=lambda c: c.index,
        )
        if not ready:
            return None
        self._rr += 1
        return ready[self._rr % len(ready)]

    def _dispatch(self, conn: socket.socket, addr, port: int) -> None:
        worker = self._pick_worker()
        if worker is None:
            self._refused += 1
            self.log.warning("accept.refused", port=port, reason="no worker ready")
            conn.close()
            return
        try:
            sid = self.table.allocate(
                worker=worker.index,
                owner_pid=worker.pid,
                remote_addr=addr[0],
                remote_port=addr[1],
                local_port=port,
                now=time.time(),
            )
        except TableFull as exc:
            self._refused += 1
            self.log.warning("accept.refused", port=port, reason=str(exc))
            conn.close()
            return
        self._accepted += 1
        self._send_ctl(worker, ("accept", sid, port), conn)

    # -- ctl channels -----------------------------------------------------------------

    def _send_ctl(self, child: Child, message: tuple, conn: socket.socket | None = None) -> None:
        """Send a ctl message (with a connection's fd for ``accept``); queue it if full."""
        entry = (ipc.ctl_encode(message), conn, message[1] if message[0] == "accept" else None)
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
                self.table.free(sid)
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
                self.selector.unregister(child.ctl)
                return
            message, fds = received
            for fd in fds:
                os.close(fd)
            self._on_child_message(child, message)

    def _on_child_message(self, child: Child, message: tuple) -> None:
        kind = message[0]
        if kind == "closed":
            self.table.free(message[1])
        elif kind == "ready":
            child.ready = True
            self.procs.set_state(child.pid, ProcState.READY)
            slot = self._slot_of.get(child.pid)
            if slot is not None and time.monotonic() - child.started > 1.0:
                slot.quick_crashes = 0
            if not self._announced_ready and all(c.ready for c in self.children.values()):
                self._announced_ready = True
                self.log.info("server.ready", port=self.port, pid=os.getpid())
        elif kind == "shutdown":
            self.begin_shutdown(f"requested by {child.name}")
        else:
            self.log.warning("ctl.unknown", name=child.name, kind=str(kind))

    # -- children ------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        parent_end, child_end = ipc.ctl_pair()
        boot = ChildBoot(
            kind=slot.kind,
            index=slot.index,
            name=slot.name,
            generation=1,
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
            kind=slot.kind, index=slot.index, pid=pid, generation=1, started=time.time(), name=slot.name
        )
        self.selector.register(parent_end, selectors.EVENT_READ, ("ctl", pid))
        self.log.info("process.spawn", name=slot.name, pid=pid, kind=slot.kind.label)

    def _close_in_child(self, keep: socket.socket | None) -> None:
        """In a fresh child: drop every master-owned descriptor it must not hold."""
        signal.set_wakeup_fd(-1)
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        for sock in self.listeners.values():
            sock.close()
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
                self.table.free(sid)
        child.ctl.close()
        self.procs.remove(pid)
        lost = self.table.free_owned_by(pid)
        self._lost += len(lost)
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
        for sock in self.listeners.values():
            sock.close()
        for slot in self.slots:
            if slot.extra_socket is not None:
                slot.extra_socket.close()
        signal.set_wakeup_fd(-1)
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

