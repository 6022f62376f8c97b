"""The worker role: the sessions this process owns.

A worker serves the connections the master hands it (:meth:`Worker.accept`, from the ctl
message :class:`~reference_server.ipc.messages.Accept`), is the host of their sessions
(``session.session.SessionHost``: opened, message, closing, lost, activity) and applies
the operations addressed to them (:meth:`Worker.deliver`: push, close, protect, bind,
group), whether they come from this process or over a peer link. Sessions that are moving
are the mover's (``session/mover.py``): it intercepts their operations first.

Counting rules kept here:

* a failed push counts in ``push_failed``; one to a session that is closing or gone
  (1004, 1005) also in ``dead_session_pushes``, with one rate-limited warning per session
  (never a storm); one that was on its way while the session closed counts in
  ``pushes_lost_in_flight`` instead (the sender checked the session before sending);
* a refused handshake counts in ``handshakes_refused`` and is logged at debug level only
  (a flood over a port's limit makes no log storm); a handshake that fails otherwise
  counts in ``handshake_failed``;
* a connection refused for want of descriptors (the worker holds its
  :func:`~reference_server.core.limits.descriptor_capacity`, or the descriptor did not
  arrive) is closed at once and counts in ``connections_shed``, logged once and then
  summarised. While full, the worker tells the master (:class:`~reference_server.ipc.messages.Load`),
  which sends new connections elsewhere or refuses them itself.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import time
from typing import TYPE_CHECKING, Any

from ..child.api import DEAD_CODES
from ..core.limits import descriptor_capacity, room_again
from ..errors import ErrorCode
from ..ipc import messages as msg
from ..logs import RateLimitedLog
from ..session.session import CloseCause, Session

if TYPE_CHECKING:
    from ..child.context import ChildContext

class Worker:
    """The sessions of one process and what happens to them."""

    def __init__(self, rt: ChildContext, handler_sets: list[Any]) -> None:
        self.rt = rt
        self.handler_sets = handler_sets
        self.dead_log = RateLimitedLog(rt.log, rt.counters)
        self.session_gone = asyncio.Event()
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        try:
            in_use = len(os.listdir("/proc/self/fd"))
        except OSError:
            in_use = 64
        #: Connections this worker holds at most (its open-file limit, less what it needs itself).
        self.capacity = descriptor_capacity(limit, in_use)
        self.full = False

    def shed(self, sid: int, why: str) -> None:
        """Refuse a connection the master handed over (its descriptor is closed, or never came)."""
        rt = self.rt
        try:
            rt.table.set_closed(sid)
        except KeyError:
            pass
        rt.ctl_send(msg.Closed(sid))
        rt.counters["connections_shed"] += 1
        self.dead_log.once("warning", "accept.shed", "shed", reason=why, capacity=self.capacity,
                           note="logged once; later ones are counted and summarised")
        self._note_load()

    def _note_load(self) -> None:
        """Tell the master when this worker becomes full, and when it has room again."""
        held = len(self.rt.sessions)
        if not self.full and held >= self.capacity:
            self.full = True
            self.rt.ctl_send(msg.Load(True))
        elif self.full and held <= room_again(self.capacity):
            self.full = False
            self.rt.ctl_send(msg.Load(False))

    def accept(self, sid: int, fd: int, local_port: int, handler: int, refuse: tuple[int, str] | None) -> None:
        """Serve a connection the master accepted (its handshake comes first).

        With ``refuse`` (code, message), the handshake is answered with an
        HTTP 503 naming the error instead (its port is at its connection
        limit, or was removed with policy close).
        """
        rt = self.rt
        if len(rt.sessions) >= self.capacity:
            os.close(fd)
            self.shed(sid, "at its connection capacity")
            return
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sess = Session(
            sid,
            self,
            max_message_size=rt.config.max_message_size,
            close_timeout=rt.config.close_timeout_ms / 1000.0,
            handshake_timeout=rt.config.handshake_timeout_ms / 1000.0,
            handler=handler,
            refuse=(refuse[0], ErrorCode(refuse[0]).name, refuse[1]) if refuse else None,
            max_output_bytes=rt.config.output_buffer_bytes,
        )
        rt.sessions[sid] = sess
        try:
            rt.table.set_os_fd(sid, fd)
        except KeyError:
            pass
        rt.log.debug("session.accept", sid=sid, fd=fd, local_port=local_port)
        sess.attach(rt.loop, sock)
        self._note_load()

    # -- SessionHost ----------------------------------------------------------------------

    def session_activity(self, sess: Session, now: float) -> None:
        try:
            self.rt.table.touch(sess.sid, now)
        except KeyError:
            pass

    def session_opened(self, sess: Session, request: Any) -> None:
        rt = self.rt
        try:
            rt.table.establish(sess.sid, time.time())
        except KeyError:
            return
        rt.counters["sessions_opened"] += 1
        info = rt.table.lookup(sess.sid)
        rt.log.info(
            "session.open",
            sid=sess.sid,
            worker=rt.index,
            remote=f"{info.remote_addr}:{info.remote_port}" if info else "",
            path=request.path,
        )
        rt.progressed()
        rt.channels.opened(sess)
        rt.call_hook("on_open", rt.api, sess.sid, request, target=self.handler_sets[sess.handler])

    def session_message(self, sess: Session, data: str | bytes) -> None:
        self.rt.counters["messages_received"] += 1
        self.rt.call_hook("on_message", self.rt.api, sess.sid, data, target=self.handler_sets[sess.handler])

    def session_closing(self, sess: Session) -> None:
        self.rt.channels.drop(sess)  # no broadcast frame is written once its close is known
        try:
            self.rt.table.set_closing(sess.sid)
        except KeyError:
            pass

    def session_lost(self, sess: Session) -> None:
        rt = self.rt
        rt.sessions.pop(sess.sid, None)
        try:
            info = rt.table.lookup(sess.sid)
            rt.table.set_closed(sess.sid)
        except KeyError:
            info = None
        rt.ctl_send(msg.Closed(sess.sid))
        if self.full:
            self._note_load()
        rt.counters["sessions_closed"] += 1
        if sess.close_cause == CloseCause.PROTOCOL_ERROR:
            rt.counters["protocol_errors"] += 1
        if sess.close_cause == CloseCause.SLOW_CONSUMER:
            rt.counters["slow_closed"] += 1
        if sess.close_cause == CloseCause.REFUSED:
            rt.counters["handshakes_refused"] += 1
        elif not sess.established:
            rt.counters["handshake_failed"] += 1
        log = rt.log.debug if sess.close_cause == CloseCause.REFUSED else rt.log.info
        log(
            "session.close",
            sid=sess.sid,
            worker=rt.index,
            code=sess.close_code,
            reason=sess.close_reason,
            cause=sess.close_cause,
            lived_s=round(time.time() - info.connect_time, 3) if info else None,
        )
        self.session_gone.set()
        rt.progressed()
        if sess.established:
            rt.call_hook(
                "on_close", rt.api, sess.sid, sess.close_code or 1006, sess.close_reason,
                target=self.handler_sets[sess.handler],
            )

    # -- operations on sessions -------------------------------------------------------------

    def close_local(
        self, sid: int, code: int, reason: str, last_message: str | bytes | None = None, cause: CloseCause = CloseCause.SERVER
    ) -> bool:
        sess = self.rt.sessions.get(sid)
        if sess is None:
            return False
        if last_message is not None and not sess.send(last_message):
            self.note_push_failed(sid, ErrorCode.SESSION_CLOSED)
        return sess.close(code, reason, cause)

    def deliver(
        self, op: msg.SessionOp, forwarded: bool = False, in_flight: bool = False, *, local: bool = False
    ) -> ErrorCode:
        """Apply an operation on a session this process owns (or let the mover route it).

        ``in_flight``: the operation was sent (routed, forwarded or held during a
        move) while the session was alive, so a failure means it closed meanwhile.
        """
        rt = self.rt
        if rt.mover.intercept(op, forwarded, local):
            return ErrorCode.OK
        sid = op.sid
        sess = rt.sessions.get(sid)
        if isinstance(op, msg.Push):
            if sess is not None and sess.send(op.data):
                return ErrorCode.OK
            code = ErrorCode.SESSION_CLOSED if sess is not None else ErrorCode.SESSION_NOT_EXIST
            self.note_push_failed(sid, code, in_flight=in_flight)
            return code
        if sess is None:
            return ErrorCode.SESSION_NOT_EXIST
        if isinstance(op, msg.Close):
            closed = self.close_local(sid, op.code, op.reason, op.last_message)
            return ErrorCode.OK if closed else ErrorCode.SESSION_CLOSED
        try:
            if isinstance(op, msg.Protect):
                rt.table.set_protected(sid, op.value)
            elif isinstance(op, msg.Bind):
                rt.table.set_uid(sid, op.value)
            else:
                rt.table.set_group(sid, op.value)
        except KeyError:
            return ErrorCode.SESSION_NOT_EXIST
        return ErrorCode.OK

    def note_push_failed(self, sid: int, code: ErrorCode, *, in_flight: bool = False) -> None:
        counters = self.rt.counters
        counters["push_failed"] += 1
        if in_flight:
            counters["pushes_lost_in_flight"] += 1
            self.rt.log.debug("push.lost_in_flight", sid=sid, code=int(code), error=code.name)
        elif code in DEAD_CODES:
            counters["dead_session_pushes"] += 1
            self.dead_log.once("warning", "push.dead_session", sid, sid=sid, code=int(code), error=code.name)

    async def close_all(self, code: int, reason: str, cause: CloseCause, timeout: float) -> None:
        """Close every session with a close frame; abort what has not answered within ``timeout``."""
        sessions = self.rt.sessions
        for sess in list(sessions.values()):
            sess.close(code, reason, cause=cause)
        deadline = time.monotonic() + timeout
        while sessions and time.monotonic() < deadline:
            self.session_gone.clear()
            try:
                await asyncio.wait_for(self.session_gone.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        for sess in list(sessions.values()):
            sess.abort(cause)
