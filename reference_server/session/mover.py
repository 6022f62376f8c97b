"""Live migration of a session from one worker to another: the protocol at both ends.

Roles: the *requester* (any process, :meth:`Server.move`), the *source* (the
session's owner) and the *target* (a worker). All messages travel over the
peer links, which keep order between any two processes; the socket rides with
its ``adopt`` message (``SCM_RIGHTS``).

1. **Freeze** (source). Check the request; call the application's
   ``on_migrate_out`` (it stops the session's timers and returns their state);
   set the record's MIGRATING flag; :meth:`Session.detach` the session (socket,
   unparsed bytes, parser state, unfinished message, unsent bytes, keepalive
   state); send ``adopt`` with the socket to the target. From here on,
   operations on the session that reach the source (push, close, protect,
   bind, group) are queued in arrival order.
2. **Adopt** (target). Refuse if stopping or past the adoption deadline.
   Otherwise restore the session, make itself the owner in *one* record write
   (which also clears MIGRATING and counts the move, so ``get_client_info``
   always names exactly one owner), answer ``adopted``, resume the socket, and
   call ``on_migrate_in`` with the exported state. Operations that reach the
   target directly are *held* until step 4.
3. **Forward** (source). On ``adopted``: close its own copy of the socket
   (``close``, never ``shutdown``: the connection lives on in the target, so
   no FIN is sent), send the queued operations as ``fwd``, and forward later
   ones as they come. Then a **barrier**: ``barrier`` to every other process,
   each of which answers ``barrier_ack`` on its own link to the source. Links
   are FIFO, so once every process has answered, each operation that any
   process addressed to the source before it could see the new owner has
   reached the source and been forwarded.
4. **Drain** (source to target). ``drained``: the target applies the held
   operations in arrival order.

The requester gets its answer at the end of step 3, when the target owns the
session; the barrier completes in the background, and one barrier round
covers every move that reached step 3 before it began (rounds batch under
load). A new move of the same session waits for its drain.

So, per sender, operations on a moving session are applied exactly once and
in the order they were issued, whichever owner each one was sent to.

Failures before the adoption (target gone, unreachable, refusing, or silent
past the deadline): the source re-attaches the socket where it stopped,
applies the queued operations, hands the exported state back to
``on_migrate_in`` in its own process, and the move fails with
``MIGRATION_FAILED``. The session never stops working.

A source remembers where each session went (a *tombstone*, kept for
:data:`TOMBSTONE_TTL`), so that a late operation still reaches the new owner.

Where each operation goes in each phase, and when the phases change, is
``core/handover.py`` (pure, and checked by a three-process simulation); this
module does the I/O around it.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import socket
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.handover import Handover, MovePhase, Route
from ..core.proctable import QUIET_KINDS, ProcEntry, ProcKind, ProcState
from ..errors import ErrorCode, ServerError
from ..ipc import messages as msg
from .session import Session, SessionSnapshot

if TYPE_CHECKING:
    from ..child.context import ChildContext

#: How long a target may take to adopt a session before it must refuse it.
ADOPT_DEADLINE = 5.0
#: After the deadline, how long the source still waits for an answer in flight.
ADOPT_GRACE = 1.0
#: How long the source waits for every process to answer a barrier.
BARRIER_TIMEOUT = 2.0
#: How long a target holds operations before applying them without ``drained``.
DRAIN_TIMEOUT = 5.0
#: How long a source keeps forwarding late operations for a session it gave away.
TOMBSTONE_TTL = 30.0

@dataclass
class Outgoing:
    """A session leaving this process (source side)."""

    sid: int
    session: Session
    sock: socket.socket
    snapshot: SessionSnapshot
    target_pid: int
    target_worker: int
    started: float
    adopted: asyncio.Future | None = None


class Mover:
    """The migration state of one process (a worker, or any requester)."""

    def __init__(self, rt: ChildContext) -> None:
        self.rt = rt
        #: The phases, queues, holds, tombstones and barrier rounds (core/handover.py).
        self.book: Handover[msg.SessionOp] = Handover()
        self.outgoing: dict[int, Outgoing] = {}  # the I/O side of the book's outbound moves
        self._arrivals: dict[int, asyncio.Event] = {}  # set once a held session is drained
        self._preparing: set[int] = set()  # sessions whose on_migrate_out is running
        self._round_timer: asyncio.TimerHandle | None = None
        self._tokens = itertools.count(1)
        #: How long a barrier round waits for silent processes (a retiring process shortens it).
        self.barrier_timeout = BARRIER_TIMEOUT

    # -- routing of session operations ------------------------------------------------

    def intercept(self, op: msg.SessionOp, forwarded: bool) -> bool:
        """Take care of ``op`` if its session is moving or moved; True if taken."""
        sid = op.sid
        route = self.book.route(sid, op, forwarded=forwarded, owned=sid in self.rt.sessions)
        if route is Route.FORWARD:
            self._forward(self.book.where(sid), op)
        return route is not Route.APPLY

    def _forward(self, pid: int, op: msg.SessionOp) -> None:
        if self.rt.links.send(pid, msg.Forwarded(op)):
            self.rt.counters["migration_forwards"] += 1
        else:
            self.rt.counters["ipc_send_failed"] += 1
            self.rt.log.warning("migration.forward_failed", sid=op.sid, op=type(op).__name__, to_pid=pid)

    # -- source side ----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No move of this process is under way (barrier rounds included)."""
        return not self._preparing and self.book.idle

    async def move_out(self, sid: int, to_worker: int, *, target: ProcEntry | None = None) -> dict[str, Any]:
        """Move session ``sid`` (owned here) to worker ``to_worker``; see the module docstring.

        ``target`` names the receiving process outright (a retiring worker
        hands its sessions to its successor, which has the same worker id).
        """
        rt = self.rt
        self._check_not_leaving(sid)
        arrival = self._arrivals.get(sid)
        if arrival is not None:  # it has just arrived: let its previous move finish first
            try:
                await asyncio.wait_for(arrival.wait(), DRAIN_TIMEOUT)
            except TimeoutError:
                pass
            self._check_not_leaving(sid)
        sess = rt.sessions.get(sid)
        if sess is None:
            if sid in self.book.tombstones:
                raise ServerError(ErrorCode.MOVED, f"session {sid} has moved on")
            if rt.table.lookup(sid) is not None:
                raise ServerError(ErrorCode.SESSION_CLOSED, f"session {sid} is closing")
            raise ServerError(ErrorCode.SESSION_NOT_EXIST, f"session {sid} does not exist")
        if not sess.established:
            raise ServerError(ErrorCode.NOT_ESTABLISHED, f"session {sid} has not completed its handshake")
        if not sess.movable:
            raise ServerError(ErrorCode.SESSION_CLOSED, f"session {sid} is closing")
        if target is None:
            if to_worker == rt.index and rt.kind is ProcKind.WORKER and not rt.retiring:
                raise ServerError(ErrorCode.ALREADY_THERE, f"session {sid} is already in worker {to_worker}")
            target = rt.find_worker(to_worker)
            if target is None:
                raise ServerError(ErrorCode.UNKNOWN_PROCESS, f"no running worker {to_worker}")

        # 1. freeze
        started = time.perf_counter()
        self._preparing.add(sid)  # the hook may await: a second request must see this move
        try:
            state = rt.app.on_migrate_out(rt.api, sid)
            if inspect.isawaitable(state):
                state = await state
        except Exception as exc:
            rt.log.error("app.hook_failed", hook="on_migrate_out", error=repr(exc), trace=traceback.format_exc())
            raise ServerError(ErrorCode.MIGRATION_FAILED, f"on_migrate_out failed: {exc!r}") from None
        finally:
            self._preparing.discard(sid)
        if not sess.movable or rt.sessions.get(sid) is not sess:  # it closed while the hook ran
            self._call_in(sid, state)
            raise ServerError(ErrorCode.SESSION_CLOSED, f"session {sid} is closing")
        try:
            rt.table.set_migrating(sid, True)
        except KeyError:
            self._call_in(sid, state)
            raise ServerError(ErrorCode.SESSION_NOT_EXIST, f"session {sid} does not exist") from None
        sock, snap = sess.detach()
        snap.app_state = state
        del rt.sessions[sid]
        rt.channels.drop(sess)  # frozen: broadcasts from now on reach it where it lands
        out = Outgoing(sid, sess, sock, snap, target.pid, to_worker, started)
        out.adopted = rt.loop.create_future()
        self.outgoing[sid] = out
        self.book.begin(sid, target.pid)
        deadline = time.monotonic() + ADOPT_DEADLINE
        sent = rt.links.send(
            target.pid, msg.Adopt(self.transfer_snapshot(snap), deadline, os.getpid(), rt.index), fds=[sock.fileno()]
        )
        if not sent:
            self._roll_back(out, "the target cannot be reached")
        ok, code, message = await self._wait_adopted(out, deadline)
        if not ok:
            if code == ErrorCode.SESSION_NOT_EXIST:  # the session died while in flight
                self._give_up(out)
                raise ServerError(ErrorCode.SESSION_NOT_EXIST, message)
            self._roll_back(out, message)

        # 3. forward, then the barrier (it completes in the background: the target owns
        # the session now, and anything addressed to it is held there until step 4).
        self.release_source_copy(out.sock)
        for op in self.book.adopted(sid):
            self._forward(out.target_pid, op)
        if self.book.join_round(sid):
            self._start_round()
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        rt.counters["migrations_out"] += 1
        rt.log.debug("session.migrated", sid=sid, to_worker=to_worker, ms=round(elapsed_ms, 3))
        return {"session": sid, "from": rt.index, "to": to_worker, "elapsed_ms": round(elapsed_ms, 3)}

    def _check_not_leaving(self, sid: int) -> None:
        if sid in self._preparing:
            raise ServerError(ErrorCode.MIGRATION_IN_PROGRESS, f"session {sid} is already moving")
        phase = self.book.leaving(sid)
        if phase is None:
            return
        if phase is MovePhase.FORWARDING:  # it already belongs to the target: the requester retries there
            raise ServerError(ErrorCode.MOVED, f"session {sid} has moved on")
        raise ServerError(ErrorCode.MIGRATION_IN_PROGRESS, f"session {sid} is already moving")

    def transfer_snapshot(self, snap: SessionSnapshot) -> SessionSnapshot:
        """What goes to the target (all of it; a seam for the broken variants)."""
        return snap

    def release_source_copy(self, sock: socket.socket) -> None:
        """Drop this process's copy of a handed-over socket: close, never shutdown (no FIN)."""
        sock.close()

    async def _wait_adopted(self, out: Outgoing, deadline: float) -> tuple[bool, int, str]:
        rt = self.rt
        assert out.adopted is not None
        while True:
            if out.adopted.done():
                return out.adopted.result()
            now = time.monotonic()
            if now > deadline + ADOPT_GRACE:
                info = rt.table.lookup(out.sid)
                if info is not None and info.owner_pid == out.target_pid:
                    # It adopted and its answer is still on the way: wait for it.
                    return await out.adopted
                return False, int(ErrorCode.MIGRATION_FAILED), "the target did not adopt the session in time"
            await asyncio.wait((out.adopted,), timeout=0.1)
            if out.adopted.done():
                continue
            if not rt.process_alive(out.target_pid):
                info = rt.table.lookup(out.sid)
                if info is not None and info.owner_pid == out.target_pid:
                    return False, int(ErrorCode.SESSION_NOT_EXIST), "the target died after adopting the session"
                return False, int(ErrorCode.MIGRATION_FAILED), "the target died before adopting the session"

    def on_adopted(self, sid: int, ok: bool, code: int, message: str) -> None:
        out = self.outgoing.get(sid)
        if out is not None and out.adopted is not None and not out.adopted.done():
            out.adopted.set_result((ok, code, message))

    def _roll_back(self, out: Outgoing, why: str) -> None:
        """The move failed before the adoption: the session goes on here. Raises MIGRATION_FAILED."""
        rt = self.rt
        del self.outgoing[out.sid]
        queued = self.book.failed(out.sid)
        sess = out.session
        rt.sessions[out.sid] = sess
        try:
            rt.table.set_migrating(out.sid, False)
        except KeyError:
            pass
        sess.reattach(out.sock, out.snapshot.tx_pending)
        rt.channels.catch_up(sess)  # what was broadcast while it was frozen
        self._call_in(out.sid, out.snapshot.app_state)
        for op in queued:
            rt.deliver(op, in_flight=True)
        rt.counters["migrations_failed"] += 1
        rt.log.warning("migration.failed", sid=out.sid, to_worker=out.target_worker, reason=why)
        raise ServerError(ErrorCode.MIGRATION_FAILED, why)

    def _give_up(self, out: Outgoing) -> None:
        """The session was lost with a dead target: drop our copy and what was queued."""
        rt = self.rt
        del self.outgoing[out.sid]
        out.sock.close()
        rt.counters["migrations_failed"] += 1
        for op in self.book.failed(out.sid):
            if isinstance(op, msg.Push):
                rt.note_push_failed(op.sid, ErrorCode.SESSION_NOT_EXIST, in_flight=True)
        rt.log.warning("migration.lost", sid=out.sid, to_worker=out.target_worker)

    def _call_in(self, sid: int, state: Any) -> None:
        self.rt.call_hook("on_migrate_in", self.rt.api, sid, state)

    # -- the barrier -----------------------------------------------------------------------

    def _start_round(self) -> None:
        """Ask every process that may have sent us an operation to answer on its link.

        Left out: this process; the targets of the moves in the round (their
        ``adopted`` came on that same link, after anything they sent us
        before); and the broker, which never addresses sessions.
        """
        rt = self.rt
        me = os.getpid()
        targets = {self.book.outbound[sid].target for sid in self.book.next_round if sid in self.book.outbound}
        token = next(self._tokens)
        asked = set()
        for entry in rt.procs.entries():
            if (
                entry.pid == me
                or entry.pid in targets
                or entry.state is ProcState.EMPTY
                or entry.kind in QUIET_KINDS
                or entry.stalled  # the master found it not answering: it could only time out
            ):
                continue
            if rt.links.send(entry.pid, msg.Barrier(token, me)):
                asked.add(entry.pid)
        self.book.start_round(token, asked)
        if not asked:
            self._end_round()
        else:
            self._round_timer = rt.loop.call_later(self.barrier_timeout, self._round_timeout, token)

    def on_barrier_ack(self, token: int, pid: int) -> None:
        if self.book.ack(token, pid):
            self._end_round()

    def peer_gone(self, pid: int) -> None:
        """A process exited (and what it sent was handled): it cannot send more, so it has answered."""
        rnd = self.book.round
        if rnd is not None and pid in rnd.waiting:
            self.on_barrier_ack(rnd.token, pid)

    def _round_timeout(self, token: int) -> None:
        rnd = self.book.round
        if rnd is not None and rnd.token == token:
            self.rt.log.warning("migration.barrier_timeout", silent_pids=sorted(rnd.waiting))
            self._end_round()

    def _end_round(self) -> None:
        if self._round_timer is not None:
            self._round_timer.cancel()
            self._round_timer = None
        for sid, target in self.book.end_round(time.monotonic() + TOMBSTONE_TTL):
            self.rt.links.send(target, msg.Drained(sid))
            self.outgoing.pop(sid, None)
        if self.book.next_round:
            self._start_round()
        self.rt.progressed()

    # -- target side -------------------------------------------------------------------------

    def adopt(self, snap: SessionSnapshot, deadline: float, src_pid: int, src_worker: int, fds: list[int]) -> None:
        rt = self.rt
        sid = snap.sid

        def refuse(code: ErrorCode, why: str) -> None:
            for fd in fds:
                os.close(fd)
            rt.links.send(src_pid, msg.Adopted(sid, False, int(code), why))
            rt.log.info("migration.refused", sid=sid, from_worker=src_worker, reason=why)

        if len(fds) != 1:
            refuse(ErrorCode.MIGRATION_FAILED, f"expected one socket, got {len(fds)}")
            return
        if rt.kind is not ProcKind.WORKER or rt.stopping.is_set() or rt.retiring:
            refuse(ErrorCode.MIGRATION_FAILED, f"{rt.name} is not accepting sessions")
            return
        if time.monotonic() > deadline:
            refuse(ErrorCode.MIGRATION_FAILED, "the adoption deadline had passed")
            return
        sock = socket.socket(fileno=fds[0])
        sock.setblocking(False)
        cfg = rt.config
        sess = Session.restore(
            snap,
            rt.host,
            rt.loop,
            sock,
            max_message_size=cfg.max_message_size,
            close_timeout=cfg.close_timeout_ms / 1000.0,
            handshake_timeout=cfg.handshake_timeout_ms / 1000.0,
            max_output_bytes=cfg.output_buffer_bytes,
        )
        try:
            rt.table.set_owner(sid, rt.index, os.getpid())
            rt.table.set_os_fd(sid, fds[0])
        except KeyError:
            sock.detach()  # keep the fd number valid for refuse() to close
            refuse(ErrorCode.SESSION_NOT_EXIST, f"session {sid} is gone from the registry")
            return
        rt.sessions[sid] = sess
        self.book.arrived(sid, src_pid, time.monotonic())
        self._arrivals[sid] = asyncio.Event()
        rt.links.send(src_pid, msg.Adopted(sid, True, 0, ""))
        rt.counters["migrations_in"] += 1
        sess.resume()
        rt.channels.catch_up(sess)  # its channels, from the last message it was given
        self._call_in(sid, snap.app_state)

    def on_drained(self, sid: int) -> None:
        if not self.book.holding(sid):
            return
        for op in self.book.drained(sid):
            self.rt.deliver(op, in_flight=True)
        arrival = self._arrivals.pop(sid, None)
        if arrival is not None:
            arrival.set()

    def housekeeping(self, now: float) -> None:
        """Release holds whose source went silent; expire tombstones."""
        for sid in self.book.overdue_holds(now, DRAIN_TIMEOUT):
            self.rt.log.warning("migration.drain_timeout", sid=sid, source_pid=self.book.holds[sid].source)
            self.on_drained(sid)
        self.book.expire(now)
