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

**Batches** (:meth:`Mover.move_many`, a retiring worker's hand-over): up to
:data:`BATCH_MAX` sessions to one target are frozen one after the other and go
in one ``adopt`` message (their sockets with it, in order); one ``adopted``
answers each of them, one barrier round covers them and one ``drained``
releases them. Each session succeeds or fails on its own, as in a single move.

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
#: Sessions one ``adopt`` message may carry (their sockets ride with it; the kernel takes 253).
BATCH_MAX = 64

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

    def intercept(self, op: msg.SessionOp, forwarded: bool, local: bool = False) -> bool:
        """Take care of ``op`` if its session is moving or moved; True if taken.

        ``local``: this process issued it (see ``core/handover.py`` on held sessions)."""
        sid = op.sid
        route = self.book.route(sid, op, forwarded=forwarded, owned=sid in self.rt.sessions, local=local)
        if route is Route.FORWARD:
            self._forward(self.book.where(sid), op)
        return route is not Route.APPLY

    def send_to_owner(self, pid: int, op: msg.SessionOp) -> bool:
        """Send an operation this process issued to the session's owner elsewhere (and remember
        it, so that this process's later operations on the session never overtake it)."""
        self.book.sent(op.sid, time.monotonic() + TOMBSTONE_TTL)
        return self.rt.links.send(pid, op)

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
        sess = self._movable(sid)
        if target is None:
            if to_worker == rt.index and rt.kind is ProcKind.WORKER and not rt.retiring:
                raise ServerError(ErrorCode.ALREADY_THERE, f"session {sid} is already in worker {to_worker}")
            target = rt.find_worker(to_worker)
            if target is None:
                raise ServerError(ErrorCode.UNKNOWN_PROCESS, f"no running worker {to_worker}")
        out = await self._freeze(sid, sess, target, to_worker)
        (result,) = await self._hand_over(target, [out])
        if isinstance(result, ServerError):
            raise result
        return result

    async def move_many(self, sids: list[int], target: ProcEntry) -> dict[int, dict[str, Any] | ServerError]:
        """Move several sessions to ``target`` at once: one ``adopt`` message carries them all
        (their sockets ride together, at most :data:`BATCH_MAX`), and one barrier round covers
        them. A retiring worker hands its sessions over this way. Each session gets its own
        outcome (what :meth:`move_out` returns, or the error it would raise); a session that
        just arrived here and is still held is answered ``MIGRATION_IN_PROGRESS`` (try again).
        """
        if len(sids) > BATCH_MAX:
            raise ValueError(f"at most {BATCH_MAX} sessions per batch")
        results: dict[int, dict[str, Any] | ServerError] = {}
        outs: list[Outgoing] = []
        for sid in sids:
            try:
                self._check_not_leaving(sid)
                if sid in self._arrivals:
                    raise ServerError(ErrorCode.MIGRATION_IN_PROGRESS, f"session {sid} has just arrived")
                outs.append(await self._freeze(sid, self._movable(sid), target, target.index))
            except ServerError as exc:
                results[sid] = exc
        if outs:
            for out, result in zip(outs, await self._hand_over(target, outs), strict=True):
                results[out.sid] = result
        return results

    def _movable(self, sid: int) -> Session:
        """The session ``sid`` if this process may move it now, else the error that says why."""
        rt = self.rt
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
        return sess

    async def _freeze(self, sid: int, sess: Session, target: ProcEntry, to_worker: int) -> Outgoing:
        """Step 1 up to the send: the application's hook, MIGRATING, detach; operations queue from here."""
        rt = self.rt
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
        return out

    async def _hand_over(self, target: ProcEntry, outs: list[Outgoing]) -> list[dict[str, Any] | ServerError]:
        """Steps 1 (the send) to 3 for frozen sessions, all in one ``adopt`` message to ``target``."""
        rt = self.rt
        deadline = time.monotonic() + ADOPT_DEADLINE
        snaps = tuple(self.transfer_snapshot(out.snapshot) for out in outs)
        sent = rt.links.send(
            target.pid, msg.Adopt(snaps, deadline, os.getpid(), rt.index), fds=[out.sock.fileno() for out in outs]
        )
        if sent:
            answers = await self._wait_adopted(outs, target.pid, deadline)
        else:
            answers = [(False, int(ErrorCode.MIGRATION_FAILED), "the target cannot be reached")] * len(outs)
        results: list[dict[str, Any] | ServerError] = []
        barrier = False
        for out, (ok, code, message) in zip(outs, answers, strict=True):
            if not ok:
                if code == ErrorCode.SESSION_NOT_EXIST:  # the session died while in flight
                    self._give_up(out)
                    results.append(ServerError(ErrorCode.SESSION_NOT_EXIST, message))
                else:
                    results.append(self._roll_back(out, message))
                continue
            # 3. forward, then the barrier (it completes in the background: the target owns
            # the session now, and anything addressed to it is held there until step 4).
            self.release_source_copy(out.sock)
            for op in self.book.adopted(out.sid):
                self._forward(out.target_pid, op)
            barrier = self.book.join_round(out.sid) or barrier
            elapsed_ms = (time.perf_counter() - out.started) * 1000.0
            rt.counters["migrations_out"] += 1
            rt.log.debug("session.migrated", sid=out.sid, to_worker=out.target_worker, ms=round(elapsed_ms, 3))
            results.append(
                {"session": out.sid, "from": rt.index, "to": out.target_worker, "elapsed_ms": round(elapsed_ms, 3)}
            )
        if barrier:  # one round for the whole batch
            self._start_round()
        return results

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

    async def _wait_adopted(self, outs: list[Outgoing], target_pid: int, deadline: float) -> list[tuple[bool, int, str]]:
        """The target's answer for each move (one ``adopted`` message answers them all)."""
        rt = self.rt
        futures = [out.adopted for out in outs if out.adopted is not None]
        while not all(f.done() for f in futures):
            now = time.monotonic()
            if now > deadline + ADOPT_GRACE or not rt.process_alive(target_pid):
                dead = not rt.process_alive(target_pid)
                for out in outs:
                    assert out.adopted is not None
                    if out.adopted.done():
                        continue
                    info = rt.table.lookup(out.sid)
                    adopted = info is not None and info.owner_pid == target_pid
                    if dead and adopted:
                        answer = (False, int(ErrorCode.SESSION_NOT_EXIST), "the target died after adopting the session")
                    elif dead:
                        answer = (False, int(ErrorCode.MIGRATION_FAILED), "the target died before adopting the session")
                    elif adopted:
                        continue  # it adopted and its answer is still on the way: wait for it
                    else:
                        answer = (False, int(ErrorCode.MIGRATION_FAILED), "the target did not adopt the session in time")
                    out.adopted.set_result(answer)
                if all(f.done() for f in futures):
                    break
            await asyncio.wait([f for f in futures if not f.done()], timeout=0.1)
        return [out.adopted.result() for out in outs if out.adopted is not None]

    def on_adopted(self, answers: tuple[tuple[int, bool, int, str], ...]) -> None:
        for sid, ok, code, message in answers:
            out = self.outgoing.get(sid)
            if out is not None and out.adopted is not None and not out.adopted.done():
                out.adopted.set_result((ok, code, message))

    def _roll_back(self, out: Outgoing, why: str) -> ServerError:
        """The move failed before the adoption: the session goes on here. Returns MIGRATION_FAILED."""
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
        return ServerError(ErrorCode.MIGRATION_FAILED, why)

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
        drained: dict[int, list[int]] = {}
        for sid, target in self.book.end_round(time.monotonic() + TOMBSTONE_TTL):
            drained.setdefault(target, []).append(sid)
            self.outgoing.pop(sid, None)
        for target, sids in drained.items():  # one message per target for the whole round
            self.rt.links.send(target, msg.Drained(tuple(sids)))
        if self.book.next_round:
            self._start_round()
        self.rt.progressed()

    # -- target side -------------------------------------------------------------------------

    def adopt(
        self, snaps: tuple[SessionSnapshot, ...], deadline: float, src_pid: int, src_worker: int, fds: list[int]
    ) -> None:
        """Step 2 for every session of one ``adopt`` message (``fds[i]`` is ``snaps[i]``'s socket).

        One ``adopted`` message answers them all, sent before any of them resumes, so that the
        source hears of each adoption before anything the session does here.
        """
        rt = self.rt
        answers: list[tuple[int, bool, int, str]] = []
        arrived: list[tuple[Session, SessionSnapshot]] = []

        def refuse(sid: int, fd: int | None, code: ErrorCode, why: str) -> None:
            if fd is not None:
                os.close(fd)
            answers.append((sid, False, int(code), why))
            rt.log.info("migration.refused", sid=sid, from_worker=src_worker, reason=why)

        if len(fds) != len(snaps):
            for fd in fds:
                os.close(fd)
            for snap in snaps:
                refuse(snap.sid, None, ErrorCode.MIGRATION_FAILED, f"expected {len(snaps)} sockets, got {len(fds)}")
        elif rt.kind is not ProcKind.WORKER or rt.stopping.is_set() or rt.retiring:
            for snap, fd in zip(snaps, fds, strict=True):
                refuse(snap.sid, fd, ErrorCode.MIGRATION_FAILED, f"{rt.name} is not accepting sessions")
        elif time.monotonic() > deadline:
            for snap, fd in zip(snaps, fds, strict=True):
                refuse(snap.sid, fd, ErrorCode.MIGRATION_FAILED, "the adoption deadline had passed")
        else:
            for snap, fd in zip(snaps, fds, strict=True):
                sess = self._restore(snap, fd, src_pid)
                if sess is None:
                    refuse(snap.sid, fd, ErrorCode.SESSION_NOT_EXIST, f"session {snap.sid} is gone from the registry")
                    continue
                arrived.append((sess, snap))
                answers.append((snap.sid, True, 0, ""))
        rt.links.send(src_pid, msg.Adopted(tuple(answers)))
        for sess, _ in arrived:
            rt.counters["migrations_in"] += 1
            sess.resume()
        rt.channels.catch_up_many(sess for sess, _ in arrived)  # from the last message each was given
        for _, snap in arrived:
            self._call_in(snap.sid, snap.app_state)

    def _restore(self, snap: SessionSnapshot, fd: int, src_pid: int) -> Session | None:
        """Rebuild one session around its socket and make this process its owner (None: it is gone)."""
        rt = self.rt
        sid = snap.sid
        sock = socket.socket(fileno=fd)
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
            rt.table.set_os_fd(sid, fd)
        except KeyError:
            sock.detach()  # keep the fd number valid for the refusal to close
            return None
        rt.sessions[sid] = sess
        self.book.arrived(sid, src_pid, time.monotonic())
        self._arrivals[sid] = asyncio.Event()
        return sess

    def on_drained(self, sids: tuple[int, ...]) -> None:
        for sid in sids:
            if not self.book.holding(sid):
                continue
            for op in self.book.drained(sid):
                self.rt.deliver(op, in_flight=True)
            arrival = self._arrivals.pop(sid, None)
            if arrival is not None:
                arrival.set()

    def housekeeping(self, now: float) -> None:
        """Release holds whose source went silent; expire tombstones."""
        for sid in self.book.overdue_holds(now, DRAIN_TIMEOUT):
            self.rt.log.warning("migration.drain_timeout", sid=sid, source_pid=self.book.holds[sid].source)
            self.on_drained((sid,))
        self.book.expire(now)
