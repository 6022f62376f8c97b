"""The master's accepting: every connection, from its listener to a worker.

The listening sockets live only in the master (``listeners.py``). For each connection
accepted (up to 64 per wake-up of a listener), the acceptor:

1. picks a worker: round robin over the ready workers that are not retired, not full (a
   worker that holds all the connections its descriptors allow says so) and not stalled
   (``liveness.py``: it did not answer the master's ping in time); with none, the
   connection is closed at once and counted refused (``no_worker``, ``at_capacity``);
2. draws a session id from the shared table, with the handler set of the port (a full
   table: closed and counted refused);
3. sends the socket to the worker with :class:`~reference_server.ipc.messages.Accept`
   (``SCM_RIGHTS``), and closes its own copy, so the worker owns the connection alone.

A connection over its port's limit, or that arrives while its port is removed under
policy ``close``, still gets a session id and goes to a worker, with a refusal: the worker
answers its handshake with HTTP 503 naming the error (``PORT_LIMIT``, ``PORT_REMOVED``).
The client gets an answer it can read, and a slow client cannot hold the master.

At its own open-file limit (``accept`` fails with EMFILE), the master sheds: it closes a
descriptor it keeps spare for this, accepts one connection and closes it at once, and takes
the spare back; it then stops accepting on that listener for ``EMFILE_PAUSE`` (no busy loop).
Every refusal is logged once per reason and then summarised (no log storm under a flood).
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import time
from typing import Any, Protocol

from ..core.placement import round_robin
from ..core.ports import RefusalReason
from ..core.proctable import ProcKind
from ..core.registry import SessionTable, TableFull, TornRecord
from ..errors import ErrorCode
from ..ipc import messages as msg
from ..logs import Log, RateLimitedLog
from .children import Child
from .listeners import ListenerSet

#: The refusal a worker sends as the HTTP 503 answer to a connection's handshake.
REFUSALS = {
    RefusalReason.LIMIT: (ErrorCode.PORT_LIMIT, "port {port} is at its limit of {limit} connections"),
    RefusalReason.REMOVED: (ErrorCode.PORT_REMOVED, "port {port} was removed"),
}
#: Connections accepted from one listener per wake-up of the loop.
ACCEPT_BATCH = 64
#: How long a listener is not accepted from after the master ran out of descriptors.
EMFILE_PAUSE = 0.05


class AcceptorHost(Protocol):
    """What the acceptor needs of the master."""

    @property
    def log(self) -> Log: ...
    @property
    def table(self) -> SessionTable: ...
    @property
    def children(self) -> dict[int, Child]: ...
    def retired(self, pid: int) -> bool: ...
    def send_ctl(self, child: Child, message: tuple, conn: socket.socket | None = None) -> None: ...


class Acceptor:
    """Hands connections to workers and counts what it accepted and refused."""

    def __init__(self, host: AcceptorHost) -> None:
        self.host = host
        self._ports: ListenerSet | None = None  # attached once the listener set exists (it calls back here)
        self.accepted = 0
        self.refused = 0
        self._turn = 0
        self.refusals = RateLimitedLog(host.log, collections.Counter())
        self._spare: int | None = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.paused_until = 0.0  # monotonic: no accepting before this (EMFILE back-off)

    def tick(self, now: float) -> None:
        """From the master's loop: summaries of suppressed refusal logs."""
        self.refusals.flush(now)

    def _refuse(self, port: int, reason: RefusalReason, **fields: Any) -> None:
        self.refused += 1
        self.ports.book.refused(port, reason)
        self.refusals.once("warning", "accept.refused", reason.value, port=port, reason=reason.value,
                           note="logged once per reason; later ones are counted and summarised", **fields)

    def _shed_one(self, lsock: socket.socket, port: int) -> None:
        """Out of descriptors: free the spare, accept one connection and close it, take the spare back."""
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        try:
            conn, _ = lsock.accept()
            conn.close()
            self._refuse(port, RefusalReason.NO_DESCRIPTOR)
        except OSError:
            pass
        try:
            self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._spare = None  # taken again on a later shed

    @property
    def ports(self) -> ListenerSet:
        if self._ports is None:
            raise RuntimeError("the acceptor has no listener set attached")
        return self._ports

    def attach(self, ports: ListenerSet) -> None:
        self._ports = ports

    def accept(self, lsock: socket.socket, port: int) -> None:
        """Accept what is queued on ``lsock`` (at most ACCEPT_BATCH) and dispatch it."""
        if time.monotonic() < self.paused_until:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._shed_one(lsock, port)
                    self.paused_until = time.monotonic() + EMFILE_PAUSE
                else:
                    self.refusals.once("warning", "accept.failed", exc.errno, port=port, error=repr(exc))
                return
            self.dispatch(conn, addr, port, self.ports.book.admit(port))

    def pick_worker(self) -> Child | None:
        """The next ready worker with room, round robin by index; None if there is none."""
        host = self.host
        ready = sorted(
            (
                c
                for c in host.children.values()
                if c.kind is ProcKind.WORKER and c.ready and not c.full and not c.stalled and not host.retired(c.pid)
            ),
            key=lambda c: c.index,
        )
        self._turn += 1
        return round_robin(ready, self._turn)

    def _any_worker_ready(self) -> bool:
        host = self.host
        return any(c.kind is ProcKind.WORKER and c.ready and not host.retired(c.pid) for c in host.children.values())

    def dispatch(self, conn: socket.socket, addr: Any, port: int, refusal: RefusalReason | None = None) -> None:
        """Hand a connection to a worker: to be served, or (``refusal``) to be answered 503."""
        host = self.host
        book = self.ports.book
        worker = self.pick_worker()
        if worker is None:
            self._refuse(port, RefusalReason.AT_CAPACITY if self._any_worker_ready() else RefusalReason.NO_WORKER)
            conn.close()
            return
        handler = self.ports.handler_id(port)
        try:
            sid = host.table.allocate(
                worker=worker.index,
                owner_pid=worker.pid,
                remote_addr=addr[0],
                remote_port=addr[1],
                local_port=port,
                now=time.time(),
                handler=handler,
            )
        except TableFull as exc:
            self._refuse(port, RefusalReason.TABLE_FULL, detail=str(exc))
            conn.close()
            return
        refuse = None
        if refusal is not None:
            self.refused += 1
            book.refused(port, refusal)
            code, text = REFUSALS[refusal]
            listener = book.listeners.get(port)
            limit = listener.spec.max_connections if listener is not None else 0
            refuse = (int(code), text.format(port=port, limit=limit))
            host.log.debug("accept.refused", port=port, reason=refusal.value, sid=sid)
        else:
            self.accepted += 1
            book.opened(sid, port)
        host.send_ctl(worker, msg.Accept(sid, port, handler, refuse), conn)

    def close_port_sessions(self, sids: list[int], port: int) -> None:
        """Policy ``close`` of a removed port: each session's owner closes it with 1001."""
        host = self.host
        by_owner: dict[int, list[int]] = {}
        for sid in sids:
            try:
                info = host.table.get_client_info(sid)
            except TornRecord:  # its writer died mid-write: the owner's death frees it
                host.log.warning("registry.torn_record", sid=sid)
                continue
            if info is not None:
                by_owner.setdefault(info.owner_pid, []).append(sid)
        for pid, owned in by_owner.items():
            child = host.children.get(pid)
            if child is not None:  # one that is gone has lost its sessions already
                host.send_ctl(child, msg.CloseSessions(owned, 1001, f"port {port} was removed"))
